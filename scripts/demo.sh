#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default data: `mrisr demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# --overwrite: a second run replaces the files the first one wrote in ./mrisr-demo/
exec "${MRISR_VENV:-.venv}/bin/mrisr" demo --overwrite "$@"
