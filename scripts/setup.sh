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
  cpu_index=https://download.pytorch.org/whl/cpu
  reachable() {  # the CPU wheel index, looked up once with a short timeout
    "$venv/bin/python" -c "import socket; socket.setdefaulttimeout(3); \
socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null
  }
  if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = "Darwin" ] || ! reachable; then
    # GPU machines and macOS take PyPI's build; offline mirrors provide their own CPU wheel.
    "${pip[@]}" "torch==$torch_version"
  else
    "${pip[@]}" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple \
      "torch==$torch_version"
  fi
fi

extras=""
if [ "$#" -gt 0 ]; then extras="[$(IFS=,; echo "$*")]"; fi
"${pip[@]}" -e ".${extras}"
echo "mrisr installed in $venv ($("$venv/bin/mrisr" --version))"
