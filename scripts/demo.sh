#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default data: `mrisr demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec "${MRISR_VENV:-.venv}/bin/mrisr" demo "$@"
