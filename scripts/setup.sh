#!/usr/bin/env bash
# Create a virtual environment (default .venv, or $MRISR_VENV) and install mrisr into it.
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build on a machine
# without an NVIDIA GPU: there the CPU build is taken. Extra arguments name pip extras
# (e.g. "test").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MRISR_VENV:-.venv}"
python="${PYTHON:-python3}"
torch_version="${MRISR_TORCH_VERSION:-2.13.0}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = "Darwin" ]; then
    "${pip[@]}" "torch==$torch_version"
  else
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==$torch_version" \
      || "${pip[@]}" "torch==$torch_version"
  fi
fi

extras=""
if [ "$#" -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
"${pip[@]}" -e ".${extras}"
echo "mrisr installed in $venv ($("$venv/bin/mrisr" --version))"
