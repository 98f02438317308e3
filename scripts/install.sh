#!/usr/bin/env bash
# Sets up .venv from scratch: the pinned dependencies, then effnet_kernels built against that torch.
#   EFFNET_CUDA=0|1, TORCH_CUDA_ARCH_LIST (default "8.0;8.6;8.9;9.0"), MAX_JOBS pass through to setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel
.venv/bin/pip install -q -r requirements.txt
# Editable: the extension is built in place (effnet_kernels/_C*.so), so the installed package IS this
# tree and `pytest` tests the code it sits next to (tests/conftest.py checks that).
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/pip install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
.venv/bin/effnet-kernels info
