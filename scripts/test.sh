#!/usr/bin/env bash
# Set up (if needed) with the test extras and run the whole test suite.
# Tests on real scans read $MRISR_DATA (default ../shared/data) and skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
exec "${MRISR_VENV:-.venv}/bin/python" -m pytest "$@"
