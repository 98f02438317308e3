"""Shared by the pytest-benchmark suites: run modes, device timing, bytes/FLOPs bookkeeping.

Modes (environment, read at collection):

* no GPU visible: CPU cases only, small (batch 1, fp32, B0 shapes), few rounds — a smoke run.
* GPU, default: the full matrix of each suite (B0, B4, B7 shapes; batch 1 and 256 (B7: 64);
  fp16 and fp32).
* GPU, ``EFFNET_BENCH_QUICK=1`` (or ``pytest --bench-quick``): B0 only, batch 1 and 256, fp16 —
  what ``benchmarks/gpu_check.sh`` runs.
* ``EFFNET_BENCH_MODELS=efficientnet_b0,efficientnet_b4`` overrides the models,
  ``EFFNET_BENCH_ROUNDS=N`` the timed rounds, ``EFFNET_BENCH_CPU=1`` adds the CPU cases on a GPU
  machine.

GPU timing: ``benchmark.pedantic`` with a setup that, before every round, flushes the L2 cache
(zeroing a buffer of twice its size, as ``triton.testing.do_bench`` does) and rotates to the
next of several input copies; the round itself is timed with CUDA events (``cuda_event_clock``
replaces pytest-benchmark's host timer for GPU cases, so its min/median/stddev are GPU times).
The flush is queued, not waited for, so the kernel under test starts right behind it and no
launch gap is measured. Warm-up rounds run first (autotuning, cudnn.benchmark). CPU timing is
pytest-benchmark's own wall clock.

Every case records in ``benchmark.extra_info``: the shape, ``bytes`` (each input once, each
output once — the minimum, the same for every implementation of the op), ``flops``, and from
the median: ``ms``, ``gbps`` (bytes / median), ``tflops``, and ``pct_copy_bw`` against the copy
bandwidth measured once per session on the same device.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from effnet_kernels.bench.timing import copy_bandwidth_gbps, cuda_event_clock

HAS_GPU = torch.cuda.is_available()


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def quick() -> bool:
    return _flag("EFFNET_BENCH_QUICK")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def env_models(default: tuple[str, ...]) -> tuple[str, ...]:
    v = os.environ.get("EFFNET_BENCH_MODELS")
    if not v:
        return default
    return tuple(m if m.startswith("efficientnet_") else f"efficientnet_{m}"
                 for m in (s.strip() for s in v.split(",")) if m)


def gpu_models() -> tuple[str, ...]:
    return env_models(("efficientnet_b0",) if quick() else
                      ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7"))


def gpu_batches(model: str) -> tuple[int, ...]:
    return (256 if model != "efficientnet_b7" else 64, 1)


def gpu_dtypes() -> tuple[torch.dtype, ...]:
    return (torch.float16,) if quick() else (torch.float16, torch.float32)


def rounds(device: str, gpu_default: int | None = None) -> tuple[int, int]:
    """(timed rounds, warm-up rounds); ``EFFNET_BENCH_ROUNDS`` overrides the timed rounds."""
    n = os.environ.get("EFFNET_BENCH_ROUNDS")
    if n:
        return int(n), (1 if device == "cpu" else 5)
    if device == "cpu":
        return 5, 1
    return gpu_default or (20 if quick() else 50), 5


def run_cpu_cases() -> bool:
    return not HAS_GPU or _flag("EFFNET_BENCH_CPU")


# ----------------------------------------------------------------------------- timing
COPY_GBPS: dict[str, float] = {}  # device type -> GB/s measured in this session


def copy_gbps(device_type: str) -> float:
    """Copy bandwidth of the device (GB/s, read + write), measured once per session."""
    if device_type not in COPY_GBPS:
        COPY_GBPS[device_type] = copy_bandwidth_gbps(device_type)
    return COPY_GBPS[device_type]


_flush_buf: dict[int, torch.Tensor] = {}


def l2_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 * (1 << 20))


def _flush_buffer(device: torch.device) -> torch.Tensor:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _flush_buf:
        _flush_buf[idx] = torch.empty(max(2 * l2_bytes(device), 64 << 20) // 4,
                                      dtype=torch.float32, device=device)
    return _flush_buf[idx]


def n_copies(input_bytes: int, device: torch.device) -> int:
    """Input copies to rotate through: enough that one pass exceeds 2 × L2 (at most 8)."""
    if device.type != "cuda":
        return 1
    return max(1, min(8, -(-2 * l2_bytes(device) // max(1, input_bytes))))


def measure(benchmark, fn, inputs: list[tuple], *, device: torch.device, nbytes: int,
            flops: int, copy_gbps: float | None, info: dict | None = None,
            flush_l2: bool = True, gpu_rounds: int | None = None) -> float | None:
    """Time ``fn(*inputs[i])`` with ``benchmark.pedantic`` (see the module docstring) and record
    bytes, FLOPs, GB/s and % of copy bandwidth in ``benchmark.extra_info``."""
    cuda = device.type == "cuda"
    n_rounds, n_warm = rounds(device.type, gpu_rounds)
    nxt = itertools.cycle(range(len(inputs)))
    target = fn
    if cuda:
        flush = _flush_buffer(device) if flush_l2 else None
        event_timer = hasattr(benchmark, "_timer")
        if event_timer:  # pytest-benchmark's runner: start = timer(); fn(); end - start
            benchmark._timer = cuda_event_clock

        def setup():
            if flush is not None:
                flush.zero_()
            if not event_timer:
                torch.cuda.synchronize(device)
            return inputs[next(nxt)], {}

        if not event_timer:  # fallback: host time of a synchronised call
            def target(*a):
                out = fn(*a)
                torch.cuda.synchronize(device)
                return out
        torch.cuda.synchronize(device)
    else:
        def setup():
            return inputs[next(nxt)], {}

    benchmark.extra_info.update(info or {})
    benchmark.extra_info.update({"bytes": int(nbytes), "flops": int(flops),
                                 "timer": "cuda_events" if cuda else "wall"})
    with torch.inference_mode():
        benchmark.pedantic(target, setup=setup, rounds=n_rounds, warmup_rounds=n_warm)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return None
    med = stats.stats.median
    benchmark.extra_info.update({
        "ms": med * 1e3, "gbps": nbytes / med / 1e9, "tflops": flops / med / 1e12,
        "copy_gbps": copy_gbps,
        "pct_copy_bw": 100 * nbytes / med / 1e9 / copy_gbps if copy_gbps else None})
    return med


def skip_unless_backend(backend: str, device: torch.device) -> None:
    """Skip (with the reason) when an effnet_kernels backend cannot run on ``device``."""
    from effnet_kernels import ops

    try:
        ops.resolve_backend(backend, device)
    except (RuntimeError, ValueError) as e:
        pytest.skip(str(e))


def dtype_id(dt: torch.dtype) -> str:
    return DTYPE_NAMES[dt]


def gpu_cases(shapes, sid):
    """pytest params ``(model, shape, batch, dtype)`` for every GPU model × ``shapes(model)`` ×
    batch × dtype of the run mode, ids from ``sid(model, shape, batch, dtype)``; one skipped
    param (with the reason) when no GPU is visible."""
    if not HAS_GPU:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA GPU visible: the GPU "
                                                          "cases are not generated"))]
    return [pytest.param((m, s, b, dt), id=sid(m, s, b, dt))
            for m in gpu_models() for s in shapes(m) for b in gpu_batches(m)
            for dt in gpu_dtypes()]


def cpu_cases(shapes, sid, model: str = "efficientnet_b0"):
    """pytest params for the CPU smoke cases: ``model``'s shapes, batch 1, fp32."""
    if not run_cpu_cases():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="GPU machine: CPU cases run only with EFFNET_BENCH_CPU=1"))]
    return [pytest.param((model, s, 1, torch.float32), id=sid(model, s, 1, torch.float32))
            for s in shapes(model)]
