#!/usr/bin/env bash
# GPU check, run on the lent GPU machine (torch preinstalled there, no network):
#   build the extension against the machine's torch, run the test suite (CUDA tests included),
#   run the benchmarks in quick mode, and leave logs + JSON in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR [--dry-run]
#
# --dry-run prints the steps without running them (how it is checked on a machine without a GPU).
# EFFNET_COMMIT names the commit measured when .git did not travel with the tree.
# Budget: under 8 minutes on an H100 (build ~1-2 min with MAX_JOBS=16, tests, quick benchmarks).
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [--dry-run]}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
COMMIT=${EFFNET_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
FAILED=()

step() {  # step NAME LOGFILE CMD...: run CMD, tee its output to OUT/LOGFILE, remember failures
  local name=$1 log=$2; shift 2
  echo "== $name: $*"
  [ $DRY = 1 ] && return 0
  local t0=$(date +%s)
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  tail -n 5 "$OUT/$log"
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
  [ $rc = 0 ] || FAILED+=("$name")
}

export PYTHONUNBUFFERED=1
step nvidia-smi nvidia-smi.txt nvidia-smi
step build build.log env MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  EFFNET_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -v .
# python -P keeps the source tree off sys.path, so the installed package (with _C) is imported.
step info info.json "$PY" -P -m effnet_kernels info --json
step tests tests.log "$PY" -P -m pytest -q -rs --rootdir=. -p no:cacheprovider tests \
  --junitxml="$OUT/tests.xml"
# Kernel and model benchmarks in quick mode (B0 shapes, batch 1 and 256, fp16; benchmarks/benchutil.py).
for b in benchmarks/bench_*.py; do
  [ -e "$b" ] || continue
  n=$(basename "$b" .py)
  step "$n" "$n.log" env EFFNET_BENCH_QUICK=1 EFFNET_COMMIT="$COMMIT" "$PY" -P -m pytest -q \
    -p no:cacheprovider "$b" --benchmark-only --benchmark-json="$OUT/$n.json" \
    -o python_files="bench_*.py"
done
# Whole models against the baselines: B0 and B4, batch 1 and 256, fp16, every backend.
step bench bench.log env EFFNET_COMMIT="$COMMIT" "$PY" -P -m effnet_kernels bench --quick \
  --json "$OUT/bench.json"
# INT8 (issue 7): B0, ours int8 (cuda / triton) vs ours fp16 vs cuDNN fp16 vs torch._int_mm +
# cuDNN fp16. One Triton config per kernel (EFFNET_TRITON_AUTOTUNE=0): autotuning every int8
# GEMM shape of B0 would not fit the budget, so these int8 numbers are for untuned tiles.
step bench_int8 bench_int8.log env EFFNET_COMMIT="$COMMIT" EFFNET_TRITON_AUTOTUNE=0 "$PY" -P \
  -m effnet_kernels bench --quick --models efficientnet_b0 --batch 1,256 --dtype fp16,int8 \
  --json "$OUT/bench_int8.json"

if [ $DRY = 0 ]; then
  "$PY" - "$OUT" "$COMMIT" "${FAILED[*]:-}" <<'PY'
import json, sys, datetime
out, commit, failed = sys.argv[1], sys.argv[2], sys.argv[3].split()
try:
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
except Exception as e:  # noqa: BLE001
    dev, versions = f"torch import failed: {e}", {}
json.dump({"commit": commit, "device": dev, "date": datetime.date.today().isoformat(),
           "failed_steps": failed, **versions}, open(f"{out}/summary.json", "w"), indent=2)
PY
fi
echo "gpu_check: commit $COMMIT, failed steps: ${FAILED[*]:-none}"
[ ${#FAILED[@]} = 0 ]
