"""Clocks of the benchmarks: device copy bandwidth, timed bursts of calls, and a CUDA-event clock
for pytest-benchmark.

A *burst* is ``n`` back-to-back calls timed as one interval (GPU: CUDA events around the burst,
one synchronisation at its end; CPU: wall clock); its time per call is what one round of the
interleaved measurement (:mod:`effnet_kernels.bench.runner`) records for a runner.
"""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["MiB", "burst_ms", "copy_bandwidth_gbps", "cuda_event_clock"]

MiB = 1 << 20


class _EventStamp:
    """A CUDA event; ``end - start`` synchronises on ``end`` and returns seconds of GPU time."""

    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event

    def __sub__(self, other: _EventStamp) -> float:
        self.event.synchronize()
        return other.event.elapsed_time(self.event) / 1e3


def cuda_event_clock() -> _EventStamp:
    """A clock for pytest-benchmark's runner (``start = clock(); fn(); end - start``) that measures
    GPU time between two CUDA events on the current stream instead of host time."""
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return _EventStamp(ev)


CPU_SETTLE_S = 0.05  # idle before each CPU burst (see burst_ms)


def burst_ms(fn, x, n: int, device: torch.device) -> float:
    """Milliseconds per call of ``n`` back-to-back calls ``fn(x)``, timed as one interval
    (GPU: CUDA events on the current stream, synchronised at the end; CPU: wall clock)."""
    if n < 1:
        raise ValueError(f"a burst needs at least one call, got n={n}")
    if device.type == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(n):
            fn(x)
        e.record()
        e.synchronize()
        return s.elapsed_time(e) / n
    # CPU: idle a moment first, so that the previous runner's worker threads, which spin for a
    # while after each call (ONNX Runtime's pool, OpenMP), are asleep and do not take this
    # runner's cores: on 2 cores, ours int8 measured 6.1 ms interleaved with ONNX Runtime and
    # 4.0 ms alone (Lite0, batch 1, 2 threads). The same pause before every runner's burst.
    time.sleep(CPU_SETTLE_S)
    t0 = time.perf_counter()
    for _ in range(n):
        fn(x)
    return (time.perf_counter() - t0) * 1e3 / n


def copy_bandwidth_gbps(device="cuda", nbytes: int | None = None, reps: int | None = None) -> float:
    """Device copy bandwidth in GB/s (10⁹ B/s): median of ``dst.copy_(src)``, bytes = 2 · size.

    GPU: 1 GiB, CUDA events. CPU: 128 MiB (larger than any last-level cache here), wall time."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    nbytes = nbytes or ((1 << 30) if cuda else 128 * MiB)
    reps = reps or (20 if cuda else 5)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    if cuda:
        torch.cuda.synchronize(device)
    times = [burst_ms(dst.copy_, src, 1, device) / 1e3 for _ in range(reps)]
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9
