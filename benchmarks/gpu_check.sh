#!/usr/bin/env bash
# GPU check: ONE run on a lent GPU machine (no network, no .git, ~10 minutes), every step under
# its own timeout and a hard deadline, results in OUTDIR after every step.
#
#   bash benchmarks/gpu_check.sh OUTDIR              # on the GPU machine (README "GPU check")
#   bash benchmarks/gpu_check.sh OUTDIR --rehearse   # the same machinery on a CPU machine
#
# Steps, in order (name: cap in seconds; EFFNET_GPU_CHECK_BUDGET_<NAME>=S overrides a cap):
#   env 30                 nvidia-smi -q, Python / torch / CUDA / Triton versions, GPU properties
#   build 300              the extension in place (CUDA, sm_90); on failure the rest is skipped
#   smoke 90               benchmarks/gpu/smoke.py: every op x backend x dtype, one B0 per backend
#   sanitizer_memcheck 75  compute-sanitizer over benchmarks/gpu/sanitizer_driver.py
#   sanitizer_racecheck 75
#   tests 150              -m cuda plus the Triton test files, pytest-xdist, 120 s per test
#   bench_model 90         B0 batch 1 and 256 fp16: cuDNN channels_last, ours cuda, ours triton
#   bench_dwconv 60        benchmarks/bench_dwconv.py, quick (EFFNET_BENCH_QUICK=1)
#   bench_int8 75          B0 int8 vs fp16 vs cuDNN fp16 vs torch._int_mm
#   bench_train 60, bench_compile 150, bench_b4 80, bench_autotune 120: only when that much
#                          time is left (bench_train: B0 batch 32 training steps, eager vs ours)
#
# Time: EFFNET_GPU_CHECK_DEADLINE (seconds from the start, default 540). A step runs under
# `timeout -k 5` (its whole process group is killed) for min(its cap, time left - 8 s); a step
# that times out is recorded (rc 124 / 137, timed_out) and the next one runs; a step with less
# time left than it needs is recorded as skipped. The script ends by the deadline.
#
# OUTDIR (<= 6 files, rewritten after every step): summary.json (every step: status, rc,
# seconds, timed_out, skipped + reason; commit, device, versions, deadline, start/end),
# logs.tar.gz (every log and output, including bench_int8.json, bench_train.json, bench_b4.json,
# env.json, ...),
# smoke.json, junit.xml, bench_model.json, bench_kernels.json (bench_dwconv's pytest-benchmark
# JSON). Logs are written to a scratch directory outside OUTDIR; only the archive goes there.
#
# Commit measured: EFFNET_COMMIT, else the first line of benchmarks/.gpu_check_commit
# (git-ignored, "<sha>" or "<sha>-dirty", written as README "GPU check" says), else
# `git rev-parse HEAD` (+ -dirty from git status), else "unknown". The benchmarks get
# EFFNET_COMMIT=<10-digit sha>[-dirty].
#
# --rehearse: GPU steps become their CPU / Triton-interpreter counterparts (smoke on the "cpu",
# "torch" and interpreted "triton" backends with tiny shapes; the sanitizer driver on the CPU
# kernels without compute-sanitizer; a tiny test selection; benchmarks on the CPU at resolution
# 32, batch 1) or are skipped with the reason; the build reuses an in-place effnet_kernels/_C*.so
# (else builds the CPU-only extension). EFFNET_GPU_CHECK_INJECT_HANG=<step> makes that step hang
# (for tests of the deadline). PYTHON (default python3) is the interpreter.
set -uo pipefail

STEPS=(env build smoke sanitizer_memcheck sanitizer_racecheck tests bench_model bench_dwconv
       bench_int8 bench_train bench_compile bench_b4 bench_autotune)

note() {  # note TEXT: a remark for this step's entry in summary.json
  echo "$*" >> "$SCR/notes.$STEP"
  echo "note: $*"
}

# ------------------------------------------------------------------------------- step bodies
# Each runs in `bash gpu_check.sh --run-step NAME` under its timeout, cwd = the repository root.
BENCH_CPU=(--device cpu --threads 1 --resolution 32 --batch 1 --min-time 0.05 --min-reps 3)
BENCH_GPU=(--quick --batch 1,256)

step_env() {
  local rc=0
  if [ "$MODE" = gpu ]; then
    nvidia-smi -q > "$SCR/nvidia-smi.txt" || rc=$?  # stdout only; stderr goes to the log
  else
    note "rehearsal: nvidia-smi skipped (no GPU)"
  fi
  "$PY" benchmarks/gpu/env_info.py > "$SCR/env.json" || rc=$?
  cat "$SCR/env.json"
  return $rc
}

step_build() {
  local check='import json, sys, effnet_kernels as ek
i = ek.build_info(); print(json.dumps(i))
sys.exit(0 if i["extension"] and (i["has_cuda"] or sys.argv[1] != "gpu") else 1)'
  if [ "$MODE" = gpu ]; then
    MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} EFFNET_CUDA=1 \
      "$PY" setup.py build_ext --inplace || return $?
  elif compgen -G "effnet_kernels/_C*.so" > /dev/null; then
    note "rehearsal: reused the in-place build $(ls effnet_kernels/_C*.so) (not rebuilt)"
  else
    note "rehearsal: no in-place build: built the CPU-only extension (EFFNET_CUDA=0)"
    MAX_JOBS=${MAX_JOBS:-2} EFFNET_CUDA=0 "$PY" setup.py build_ext --inplace || return $?
  fi
  "$PY" -c "$check" "$MODE"
}

step_smoke() {
  EFFNET_TRITON_AUTOTUNE=0 "$PY" benchmarks/gpu/smoke.py --json "$SCR/smoke.json"
}

sanitizer() {  # sanitizer TOOL
  if [ "$MODE" = rehearse ]; then
    note "rehearsal: compute-sanitizer skipped (no GPU); the driver ran on the CPU kernels"
    "$PY" benchmarks/gpu/sanitizer_driver.py --device cpu
    return $?
  fi
  local cs
  cs=$(command -v compute-sanitizer || ls "$(dirname "$(command -v nvcc)")/compute-sanitizer" \
       /usr/local/cuda/bin/compute-sanitizer 2> /dev/null | head -n 1)
  [ -n "$cs" ] || { echo "compute-sanitizer not found" >&2; return 127; }
  # exit 99: the sanitizer found errors; 1: the driver got a wrong result. No caching
  # allocator: each tensor is its own cudaMalloc, so an access past its end is caught.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool "$1" --error-exitcode 99 --print-limit 100 \
    "$PY" benchmarks/gpu/sanitizer_driver.py
}
step_sanitizer_memcheck() { sanitizer memcheck; }
step_sanitizer_racecheck() { sanitizer racecheck; }

step_tests() {
  # the CUDA tests and every Triton test (by name: the Triton cases of each op's test file,
  # which run on CUDA tensors on a GPU)
  local args=(-p no:cacheprovider -p gpu_check_select -q -rs --junitxml="$SCR/junit.xml"
              --keep-marked cuda --keep-keyword triton)
  if "$PY" -c "import xdist" 2> /dev/null; then
    args+=(-n "$([ "$MODE" = gpu ] && echo 8 || echo 2)")
  else
    note "pytest-xdist not installed: one process"
  fi
  if "$PY" -c "import pytest_timeout" 2> /dev/null; then
    args+=(--timeout 120)
  else
    note "pytest-timeout not installed: no per-test timeout"
  fi
  if [ "$MODE" = gpu ]; then
    args+=(tests)
  else  # a tiny selection: the cuda-marked bias_act tests (skipped here) and two Triton ones
    note "rehearsal: a tiny selection of tests"
    args+=(tests/test_bias_act.py tests/test_se_gate.py -k "cuda or empty")
  fi
  PYTHONPATH="$ROOT/benchmarks/gpu:$PYTHONPATH" "$PY" -m pytest "${args[@]}"
}

# The bench CLI has no CUDA-graph option (ek.optimize(cuda_graph=True) exists, the CLI does not
# expose it), so no row is measured with CUDA graphs. Triton autotuning is off
# (EFFNET_TRITON_AUTOTUNE=0) except in bench_autotune.
bench() {  # bench JSON_NAME ARGS...: the model benchmark CLI
  local json=$1; shift
  EFFNET_TRITON_AUTOTUNE=${EFFNET_TRITON_AUTOTUNE:-0} "$PY" -m effnet_kernels bench "$@" \
    --json "$SCR/$json"
}

step_bench_model() {
  if [ "$MODE" = gpu ]; then
    bench bench_model.json "${BENCH_GPU[@]}" --models efficientnet_b0 --dtype fp16 \
      --backends eager_cudnn_cl,ours_cuda,ours_triton
  else
    bench bench_model.json "${BENCH_CPU[@]}" --models efficientnet_b0 --dtype fp32 \
      --backends eager,ours_cpu
  fi
}

step_bench_dwconv() {
  [ "$MODE" = gpu ] || note "rehearsal: the CPU cases of the suite"
  EFFNET_BENCH_QUICK=1 EFFNET_TRITON_AUTOTUNE=0 "$PY" -m pytest -p no:cacheprovider -q \
    benchmarks/bench_dwconv.py --benchmark-only --benchmark-json="$SCR/bench_kernels.json"
}

# INT8 (issue 7): ours int8 (cuda / triton) vs ours fp16 vs cuDNN fp16 vs torch._int_mm + cuDNN
# fp16, untuned Triton tiles (one config per kernel).
step_bench_int8() {
  if [ "$MODE" = gpu ]; then
    bench bench_int8.json "${BENCH_GPU[@]}" --models efficientnet_b0 --dtype fp16,int8 \
      --backends eager_cudnn_cl,ours_cuda,ours_triton,int8_intmm
  else
    bench bench_int8.json "${BENCH_CPU[@]}" --models efficientnet_b0 --dtype fp32,int8 \
      --backends eager,ours_cpu,ours_torch,int8_intmm
  fi
}

# Training (issue 17): eager vs ek.optimize_for_training steps (Triton training kernels on a
# GPU), img/s, bytes saved for backward, peak memory.
step_bench_train() {
  if [ "$MODE" = gpu ]; then
    bench bench_train.json --train --device cuda --models efficientnet_b0 --batch 32 --rounds 3
  else
    bench bench_train.json --train --device cpu --threads 1 --models efficientnet_b0 --batch 2 \
      --resolution 32 --rounds 2
  fi
}

step_bench_compile() {  # torch.compile (default mode with --quick) of the cuDNN fp16 model
  bench bench_compile.json "${BENCH_GPU[@]}" --models efficientnet_b0 --dtype fp16 \
    --backends compile
}

step_bench_b4() {
  if [ "$MODE" = gpu ]; then
    bench bench_b4.json "${BENCH_GPU[@]}" --models efficientnet_b4 --dtype fp16 \
      --backends eager_cudnn_cl,ours_cuda,ours_triton
  else
    bench bench_b4.json "${BENCH_CPU[@]}" --models efficientnet_b4 --dtype fp32 \
      --backends eager,ours_cpu
  fi
}

step_bench_autotune() {  # Triton autotuning on; Triton prints each tuning's time and config
  local rc=0
  EFFNET_TRITON_AUTOTUNE=1 TRITON_PRINT_AUTOTUNING=1 bench bench_autotune.json \
    "${BENCH_GPU[@]}" --models efficientnet_b0 --dtype fp16 --backends ours_triton || rc=$?
  note "$(grep -ci "autotuning" "$LOGS/bench_autotune.log") autotuning lines in the log"
  return $rc
}

run_step_body() {  # run_step_body NAME: one step's body (gpu_check.sh --run-step NAME)
  STEP=$1
  if [ "${EFFNET_GPU_CHECK_INJECT_HANG:-}" = "$STEP" ]; then
    echo "EFFNET_GPU_CHECK_INJECT_HANG=$STEP: hanging"
    sleep 100000
  fi
  "step_$STEP"
}

# ------------------------------------------------------------------------------- set-up
# Everything below runs inside main(): bash has read the whole function before it starts, so
# the script can be edited while it runs without changing the run.
main() {
  USAGE="usage: gpu_check.sh OUTDIR [--rehearse]"
  [ $# -ge 1 ] && [ $# -le 2 ] || { echo "$USAGE" >&2; exit 2; }
  OUT=$1
  MODE=gpu
  case "${2:-}" in
    "") ;;
    --rehearse) MODE=rehearse ;;
    *) echo "$USAGE" >&2; exit 2 ;;
  esac
  START=$(date +%s)
  DEADLINE=${EFFNET_GPU_CHECK_DEADLINE:-540}
  if ! [[ "$DEADLINE" =~ ^[0-9]+$ ]]; then
    echo "EFFNET_GPU_CHECK_DEADLINE must be seconds" >&2
    exit 2
  fi
  KILL_GRACE=5                # timeout -k: SIGKILL this long after SIGTERM
  MARGIN=$((KILL_GRACE + 3))  # a step ends this long before the deadline: grace + publishing
  SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$OUT" || exit 2
  OUT=$(cd "$OUT" && pwd)
  cd "$ROOT" || exit 2
  SCR=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
  LOGS=$SCR
  PY=${PYTHON:-python3}
  SUMMARY_PY=$(command -v python3 || echo "$PY")  # summary.py needs only the standard library
  export MODE SCR LOGS ROOT PY SELF
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

  # The commit measured, and whether the tree differed from it.
  DIRTY=unknown
  if [ -n "${EFFNET_COMMIT:-}" ]; then
    RAW=$EFFNET_COMMIT; CSRC=env
  elif [ -s benchmarks/.gpu_check_commit ]; then
    RAW=$(head -n 1 benchmarks/.gpu_check_commit); CSRC=file
  elif RAW=$(git rev-parse HEAD 2> /dev/null); then
    CSRC=git
    if [ -n "$(git status --porcelain -- effnet_kernels csrc setup.py 2> /dev/null)" ]; then
      RAW="$RAW-dirty"
    fi
  else
    RAW=unknown; CSRC=none
  fi
  RAW=$(echo "$RAW" | tr -d '[:space:]')
  COMMIT=${RAW%-dirty}
  if [ "$CSRC" != none ]; then
    if [ "$COMMIT" != "$RAW" ]; then DIRTY=true; else DIRTY=false; fi
  fi
  # what the benchmarks record (their JSON and file names): short commit + "-dirty"
  export EFFNET_COMMIT="${COMMIT:0:10}$([ "$DIRTY" = true ] && echo -dirty)"

  # ------------------------------------------------------------------------------- bookkeeping
  publish() {  # publish [--final]: OUTDIR's files, logs.tar.gz and summary.json, now
    local f
    for f in smoke.json junit.xml bench_model.json bench_kernels.json; do
      [ -f "$SCR/$f" ] && cp -f "$SCR/$f" "$OUT/$f"
    done
    # a runaway log must not make the archive too big to come back: keep its last 4 MiB
    find "$SCR" -type f \( -name '*.log' -o -name '*.txt' \) -size +4M -print0 |
      while IFS= read -r -d '' f; do
        tail -c 4M "$f" > "$f.tail" && mv -f "$f.tail" "$f"
      done
    tar -czf "$SCR.tar.gz" -C "$SCR" . && mv -f "$SCR.tar.gz" "$OUT/logs.tar.gz"
    "$SUMMARY_PY" benchmarks/gpu/summary.py --out "$OUT/summary.json" --records "$SCR/steps.tsv" \
      --planned "$(IFS=,; echo "${STEPS[*]}")" --commit "$COMMIT" --commit-source "$CSRC" \
      --dirty "$DIRTY" --mode "$MODE" --deadline "$DEADLINE" --start "$START" \
      --env-json "$SCR/env.json" "$@" ||
      echo "gpu_check: summary.json not written" >&2
  }

  record() {  # record NAME RC SECONDS TIMED_OUT SKIPPED REASON LIMIT: one line of steps.tsv
    local note=""
    [ -f "$SCR/notes.$1" ] && note=$(paste -sd ';' "$SCR/notes.$1")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//[$'\t\n']/ }" \
      "$7" "${note//[$'\t\n']/ }" >> "$SCR/steps.tsv"
  }

  skip_reason() {  # skip_reason NAME: why this step does not run in this mode (empty: it runs)
    [ "$MODE" = rehearse ] || return 0
    case $1 in
      sanitizer_racecheck) echo "rehearsal: compute-sanitizer needs a GPU" ;;
      bench_compile) echo "rehearsal: torch.compile of B0 takes minutes on this CPU" ;;
      bench_autotune) echo "rehearsal: Triton autotuning needs a GPU" ;;
    esac
  }

  BUILD_FAILED=""  # why the steps after the build do not run
  FAILED=()
  CUR=""           # the running step's timeout process
  LAST_RC=""       # the last step's rc ("" when it was skipped)
  on_signal() {  # killed from outside: stop the running step, leave what we have
    echo "gpu_check: interrupted" >&2
    if [ -n "$CUR" ]; then
      kill -TERM "$CUR" 2> /dev/null
      # let the step's timeout kill its group and the logs be flushed before they are packed
      local i
      for i in 1 2 3 4 5 6 7; do kill -0 "$CUR" 2> /dev/null || break; sleep 1; done
      record "$STEP" 143 0 0 0 "interrupted: gpu_check.sh got a signal" ""
    fi
    publish --final
    rm -rf "$SCR"
    exit 143
  }
  trap on_signal TERM INT

  run_step() {  # run_step NAME CAP MIN [optional]: run one step within its cap and the deadline
    # (MIN: the least time worth starting it with, >= 1)
    STEP=$1
    local cap=$2 min=$3 optional=${4:-} var reason left limit t0 rc ms timed_out=0
    var="EFFNET_GPU_CHECK_BUDGET_${STEP^^}"
    cap=${!var:-$cap}
    [ -n "$optional" ] && min=$cap  # an optional step runs only with its whole cap left
    left=$((START + DEADLINE - $(date +%s) - MARGIN))
    limit=$((cap < left ? cap : left))
    if [ -n "$BUILD_FAILED" ]; then
      reason=$BUILD_FAILED
    else
      reason=$(skip_reason "$STEP")
    fi
    if [ -z "$reason" ] && [ "$cap" -le 0 ]; then  # (timeout 0 would mean no limit at all)
      reason="$var=$cap"
    elif [ -z "$reason" ] && [ -n "$optional" ] && [ "$left" -lt "$min" ]; then
      reason="optional, runs only with ${min}s left: ${left}s were left"
    elif [ -z "$reason" ] && [ "$limit" -lt "$min" ]; then
      reason="not enough time: ${left}s left (deadline less a ${MARGIN}s margin), needs ${min}s"
    fi
    if [ -n "$reason" ]; then
      echo "== $STEP: skipped ($reason)"
      record "$STEP" "" 0 0 1 "$reason" ""
      LAST_RC=""
      publish
      return
    fi
    echo "== $STEP: up to ${limit}s ($(date -u +%H:%M:%S))"
    t0=$(date +%s%N)
    # timeout puts itself and the step in a new process group and signals the whole group
    timeout -k "$KILL_GRACE" "$limit" bash "$SELF" --run-step "$STEP" > "$LOGS/$STEP.log" 2>&1 &
    CUR=$!
    wait "$CUR"
    rc=$?
    CUR=""
    LAST_RC=$rc
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && timed_out=1
    record "$STEP" "$rc" "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" "$timed_out" 0 "" \
      "$limit"
    if [ "$rc" != 0 ]; then
      FAILED+=("$STEP")
      tail -n 15 "$LOGS/$STEP.log" | sed 's/^/   | /'
    fi
    echo "== $STEP: rc=$rc in $((ms / 1000)) s$([ $timed_out = 1 ] && echo " (timed out)")"
    publish
  }

  echo "gpu_check ($MODE): commit $COMMIT (dirty: $DIRTY, from $CSRC), deadline ${DEADLINE}s," \
    "OUT=$OUT, python $PY"
  publish
  run_step env 30 5
  run_step build 300 20
  if [ -n "$LAST_RC" ] && [ "$LAST_RC" != 0 ]; then
    BUILD_FAILED="the build failed (rc $LAST_RC)"
  elif [ -z "$LAST_RC" ]; then
    BUILD_FAILED="the build did not run"
  fi
  run_step smoke 90 10
  run_step sanitizer_memcheck 75 15
  run_step sanitizer_racecheck 75 15
  run_step tests 150 20
  run_step bench_model 90 15
  run_step bench_dwconv 60 10
  run_step bench_int8 75 15
  run_step bench_train 60 0 optional
  run_step bench_compile 150 0 optional
  run_step bench_b4 80 0 optional
  run_step bench_autotune 120 0 optional
  publish --final
  rm -rf "$SCR"
  echo "gpu_check: done in $(($(date +%s) - START)) s; failed steps:" \
    "${FAILED[*]:-none}${BUILD_FAILED:+ ($BUILD_FAILED)}; files in $OUT:" \
    "$(ls "$OUT" | paste -sd ' ')"
  [ ${#FAILED[@]} = 0 ] && [ -z "$BUILD_FAILED" ]
}

# internal: `gpu_check.sh --run-step NAME` is one step, run by run_step under its timeout
if [ "${1:-}" = "--run-step" ]; then run_step_body "$2"; else main "$@"; fi; exit $?
