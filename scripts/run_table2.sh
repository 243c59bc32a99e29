#!/usr/bin/env bash
# Train the equal-budget runs of paper Table 2 (configs/table2/*.yaml; base.yaml is
# Cur-Random), $1 at a time (default 2) with one CPU thread each, then evaluate them with
# configs/eval_table2.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
parallel="${1:-2}"
mrisr="${MRISR_VENV:-.venv}/bin/mrisr"
ls configs/table2/*.yaml | OMP_NUM_THREADS=1 xargs -P "$parallel" -I{} \
  "$mrisr" train {} --resume auto --set run.threads=1 -q
"$mrisr" evaluate configs/eval_table2.yaml -q
