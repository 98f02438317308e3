#!/usr/bin/env bash
# Compile every Triton kernel config ahead of time for sm_90a, without a GPU, under Triton 3.6.0
# (the GPU machine's version; a venv cached in .venv-triton36, no torch needed) and under the
# main environment's Triton (.venv, or $PYTHON), so that version drift shows up before GPU time
# is spent. Prints, per version, one line per compile (registers, spills, shared memory) and a
# per-kernel table; writes build/triton_aot-<version>.json. Extra arguments go to
# benchmarks/triton_aot.py (e.g. --jobs 2, --kernel dwconv, --full). Exit 1 if any compile fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
V36=.venv-triton36

if ! "$V36/bin/python" -c 'import sys, triton; sys.exit(triton.__version__ != "3.6.0")' \
    2>/dev/null; then
  rm -rf "$V36"
  "$PY" -m venv "$V36"
  "$V36/bin/pip" install -q triton==3.6.0 numpy
fi

mkdir -p build
rc=0
for py in "$V36/bin/python" "$PY"; do
  ver=$("$py" -c 'import triton; print(triton.__version__)')
  echo "== Triton $ver ($py)"
  "$py" benchmarks/triton_aot.py --json "build/triton_aot-$ver.json" "$@" || rc=1
done
exit $rc
