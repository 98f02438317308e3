"""Model benchmark CLI (``python -m effnet_kernels bench``), layer shapes and roofline traffic.

Method (DESIGN.md §5): every number is a median after warm-up, on random data, with the
baselines measured in the same process and run; next to img/s we print how far a forward is
from its memory floor — the minimum bytes it must move over the copy bandwidth of the device,
measured in the same run (``dst.copy_(src)`` of a large tensor; bytes = read + write).

Two floors per model (activations read once and written once per fused group, weights once per
forward, BN folded):

* ``kernel``: one kernel per op-group, the kernels this library builds — stem conv+BN+act;
  per MBConv block expand 1×1+BN+act, depthwise+BN+act+SE-squeeze, SE gate, project 1×1 with
  the gate on load + BN (+ residual read); head 1×1+BN+act+global pool (the head map never
  written); classifier. For B0@224 fp16: 26.3 MiB (27.6 MB) of activations per image
  (FACTS.md: "≈ 26 MB").
* ``block``: one kernel per MBConv block (reads the block input once, writes its output once;
  the expanded tensor and the SE pool never leave the chip). A lower bound, not a plan: the SE
  pool needs the whole depthwise output before the projection can start.

Backends (``--backends``; default all of the device's):

GPU  ``eager_fp32_nchw`` torchvision (or the equivalent ek model) as users run it, fp32 NCHW;
     ``eager_cudnn_<dtype>_cl`` channels_last, ``cudnn.benchmark``, BN folded, in ``--dtype``
     (``eager_cudnn_fp16_cl`` is the "cuDNN FP16" baseline); ``compile_max_autotune``
     (``compile_default`` with ``--quick``) = ``torch.compile`` of that model; ``ours_cuda``,
     ``ours_triton`` = ``effnet_kernels.optimize(model, backend=...)`` once it exists.
CPU  ``eager`` (torchvision, NCHW, BN not folded), ``compile`` (torch.compile of it),
     ``onnxruntime`` (optional: ``pip install onnxruntime onnx``; exported from the same
     weights), ``ours_cpu``. ``--quick`` leaves out ``compile`` on the CPU (minutes to compile).

INT8 (``--dtype int8``; rows with dtype "int8"):

* ``ours_cuda``, ``ours_triton`` (GPU) = ``quantize(optimize(model, backend=b, dtype=fp16),
  [one random batch], backend=b)`` (``effnet_kernels.quant``): int8 activations between ops,
  float16 stem / SE / classifier. On the CPU ``ours_torch_ref`` = the same with b = "torch",
  float32: the exact *integer reference* (torch ops), a correctness oracle and not a kernel —
  about 0.1–0.15 s per B0@224 image on one core. By default it runs only where a batch is at
  most 4 GMAC (B0@224: batch ≤ 10) and is listed as skipped elsewhere; naming it in
  ``--backends`` runs it at every size. Calibration: one N(0, 1) batch of 4 images at the
  benchmark's resolution, i.e. the benchmark's own input distribution (random-init weights give
  vanishing activations: the numbers measure speed, never accuracy).
* ``int8_intmm_cudnn_fp16`` (CPU: ``int8_intmm_fp32``) = the best INT8 path without our
  kernels: the BN-folded eager model (channels_last) with every 1×1 conv (expand, project,
  head) as ``torch._int_mm`` (cuBLASLt int8 GEMM, int32 out; on the CPU torch's own int8 GEMM)
  on the activations viewed as an (N·H·W, C) matrix, dynamically quantised per tensor
  (symmetric absmax, int8) with per-output-channel symmetric int8 weights, then dequantised
  + bias in float32 (``addcmul``) and the activation in fp16 (CPU: fp32) torch ops; the stem,
  depthwise convs, SE and classifier stay cuDNN FP16 (CPU: fp32). ``torch._int_mm`` on CUDA
  needs M > 16 and K, N multiples of 8 (every EfficientNet width is); a layer whose shape it
  cannot take falls back to ``F.conv2d`` in the float dtype, counted in the row's ``note``.
  Why ``_int_mm`` and not an int8 cuDNN graph: the cuDNN frontend (nvidia-cudnn-frontend) is
  not installed, and cuDNN's legacy int8 convolutions want NHWC int8 with C a multiple of 4
  and have little depthwise support, so a per-layer int8 GEMM is what PyTorch offers without
  custom kernels (recorded in the JSON's ``int8`` entry). On the CPU (torch 2.14)
  ``torch._int_mm`` works but is about 10× slower than the fp32 GEMM of the same shape, so the
  CPU row measures torch's int8 GEMM, not what int8 can do on a CPU.
* Each int8 row is compared across dtypes: with int8 the fp16 (CPU: fp32) rows of
  ``eager_cudnn_cl`` and ``ours_cuda`` / ``ours_triton`` (CPU: ``eager`` and ``ours_cpu``) are
  measured too, whatever ``--dtype`` and ``--backends`` say, and the int8 rows' speedups are
  over those (``x eager_cudnn_fp16_cl``; ``x ours_fp16`` / ``x ours_fp32`` = over the fastest
  ours row of that float dtype at the same model and batch) and over the int8 baseline
  (``x int8_intmm_*``). The int8 roofline counts 1 byte per activation element and per weight.

Timing: the first call (compilation, autotuning) and a few warm-up calls are not timed; then at
least ``--min-reps`` calls and ``--min-time`` seconds, each timed alone (GPU: CUDA events around
the call, synchronised; CPU: wall clock); ms/batch is their median. Every model gets the same
random weights. The table's "% floor" is floor time / measured time for one kernel per op-group
(the JSON also has the block floor); "x <baseline>" is the img/s ratio over that baseline at the
same model, batch and dtype (``eager_fp32_nchw``: any dtype; int8: see above). Backends that
cannot run here (missing package, no ``ek.optimize`` yet) are listed as not available, not
failed; a failing backend is reported and the run goes on (exit status 1).

The JSON (``--json PATH``; a directory gets ``YYYY-MM-DD-<device>-<commit>.json``) holds
``{"device", "commit", "torch", "cuda", "triton", "date", "results": [{"model", "resolution",
"batch", "dtype", "backend", "img_per_s", "ms_per_batch", "peak_mem_mb", ...}], "roofline":
[...], "skipped": [...], ...}`` (int8 rows also have a ``note``: calibration, substitutions,
``_int_mm`` fallbacks; with int8 the ``int8`` entry describes the baseline). ``--plot PATH``
draws img/s per backend and batch (matplotlib). ``--load JSON`` prints the table (and
``--plot``) of an earlier run without measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "BlockShape",
    "DWLayer",
    "ModelShapes",
    "add_parser",
    "add_roofline",
    "copy_bandwidth_gbps",
    "cuda_event_clock",
    "dw_layers",
    "dwconv_bytes",
    "dwconv_flops",
    "eager_model",
    "environment",
    "floor_ms",
    "fold_model_bn",
    "format_table",
    "int8_float_dtype",
    "int8_intmm_model",
    "intmm_paths",
    "git_commit",
    "main",
    "model_shapes",
    "model_traffic",
    "ours_torch_skip_reason",
    "result_filename",
    "run",
    "set_inplace_act",
    "speedups",
]

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ELEM_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
DEFAULT_MODELS = ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7")
QUICK_MODELS = ("efficientnet_b0", "efficientnet_b4")
MiB = 1 << 20


# ============================================================================ layer shapes
def conv_out(size: int, k: int, stride: int) -> int:
    """Output size of a k×k conv with symmetric (k−1)/2 padding (stride 2 halves, rounding up)."""
    p = (k - 1) // 2
    return (size + 2 * p - k) // stride + 1


@dataclass(frozen=True)
class BlockShape:
    """One MBConv block at a given input size (symmetric padding)."""

    stage: int  # 1..7
    index: int  # block index inside the stage
    in_ch: int
    mid_ch: int  # expanded width (= in_ch without expansion)
    out_ch: int
    se_ch: int  # squeeze width; 0 = no SE (Lite)
    kernel: int
    stride: int
    h: int
    w: int
    ho: int
    wo: int

    @property
    def expand(self) -> bool:
        return self.mid_ch != self.in_ch

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class ModelShapes:
    name: str
    resolution: int
    stem_ch: int
    stem_hw: tuple[int, int]
    blocks: tuple[BlockShape, ...]
    head_in: int
    head_ch: int
    head_hw: tuple[int, int]
    num_classes: int


def model_shapes(model: str, resolution: int | None = None, num_classes: int = 1000) -> ModelShapes:
    """Every layer shape of ``model`` (an ek model name) at ``resolution`` (default: its own)."""
    from .models.efficientnet import (
        CONFIGS,
        head_channels,
        make_divisible,
        stage_settings,
        stem_channels,
    )

    if model not in CONFIGS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(sorted(CONFIGS))}")
    cfg = CONFIGS[model]
    res = int(resolution or cfg.resolution)
    h = w = conv_out(res, 3, 2)
    stem = (h, w)
    blocks = []
    for si, st in enumerate(stage_settings(cfg), start=1):
        for j in range(st.repeats):
            cin = st.in_ch if j == 0 else st.out_ch
            s = st.stride if j == 0 else 1
            mid = make_divisible(cin * st.expand_ratio) if st.expand_ratio != 1 else cin
            ho, wo = conv_out(h, st.kernel, s), conv_out(w, st.kernel, s)
            se = 0 if cfg.lite else max(1, int(cin * 0.25))
            blocks.append(BlockShape(si, j, cin, mid, st.out_ch, se, st.kernel, s, h, w, ho, wo))
            h, w = ho, wo
    return ModelShapes(model, res, stem_channels(cfg), stem, tuple(blocks), blocks[-1].out_ch,
                       head_channels(cfg), (h, w), num_classes)


@dataclass(frozen=True)
class DWLayer:
    """A depthwise conv layer shape: C channels, H×W input, k×k, stride, Ho×Wo output."""

    model: str
    resolution: int
    stage: int
    block: int
    c: int
    h: int
    w: int
    k: int
    stride: int
    ho: int
    wo: int

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.c, self.h, self.w, self.k, self.stride)

    @property
    def name(self) -> str:
        return f"C{self.c}_{self.h}x{self.w}_k{self.k}s{self.stride}"


def dw_layers(model: str, resolution: int | None = None, distinct: bool = True) -> list[DWLayer]:
    """The depthwise layers of ``model`` in network order (only the first of equal shapes)."""
    ms = model_shapes(model, resolution)
    out, seen = [], set()
    for b in ms.blocks:
        layer = DWLayer(model, ms.resolution, b.stage, b.index, b.mid_ch, b.h, b.w, b.kernel,
                        b.stride, b.ho, b.wo)
        if distinct and layer.key in seen:
            continue
        seen.add(layer.key)
        out.append(layer)
    return out


def dwconv_bytes(n: int, c: int, h: int, w: int, ho: int, wo: int, k: int, elem_size: int,
                 pool: bool = True) -> int:
    """Bytes ``dwconv_bias_act`` must move: x once, y once, weight and bias once (all in the
    activation dtype), and with ``pool`` the float32 (N, C) pool."""
    return elem_size * (n * c * h * w + n * c * ho * wo + c * k * k + c) + (4 * n * c if pool else 0)


def dwconv_flops(n: int, c: int, ho: int, wo: int, k: int) -> int:
    """Multiply-adds of the depthwise conv, counted as 2 FLOPs (bias, act and pool not counted)."""
    return 2 * k * k * n * c * ho * wo


def model_traffic(model: str | ModelShapes, resolution: int | None = None,
                  elem_size: int = 2) -> dict:
    """Minimum traffic and work of one forward (see the module docstring).

    Returns per-image activation bytes for one kernel per op-group (``act_bytes_kernel``) and one
    kernel per block (``act_bytes_block``), the BN-folded ``weight_bytes`` read once per forward,
    ``macs`` and ``flops`` (= 2·macs) per image. Pools and SE gates are float32.
    """
    ms = model if isinstance(model, ModelShapes) else model_shapes(model, resolution)
    e = elem_size
    H0, W0 = ms.stem_hw
    img = 3 * ms.resolution * ms.resolution
    stem_out = ms.stem_ch * H0 * W0
    kern = e * (img + stem_out)
    block = e * (img + stem_out)
    weights = ms.stem_ch * 27 + ms.stem_ch
    macs = 27 * ms.stem_ch * H0 * W0
    for b in ms.blocks:
        x_in, hw, hwo = b.in_ch * b.h * b.w, b.h * b.w, b.ho * b.wo
        mid_in, mid_out, y = b.mid_ch * hw, b.mid_ch * hwo, b.out_ch * hwo
        if b.expand:  # expand 1×1 + BN + act: read x, write the expanded map
            kern += e * (x_in + mid_in)
            weights += b.mid_ch * b.in_ch + b.mid_ch
            macs += b.in_ch * b.mid_ch * hw
        kern += e * (mid_in + mid_out)  # depthwise + BN + act (+ pool)
        weights += b.mid_ch * b.kernel * b.kernel + b.mid_ch
        macs += b.mid_ch * b.kernel * b.kernel * hwo
        if b.se_ch:
            kern += 4 * b.mid_ch  # pool written
            kern += 4 * b.mid_ch + 4 * b.mid_ch  # SE gate kernel: pool read, gate written
            kern += 4 * b.mid_ch  # gate read by the projection
            weights += 2 * b.se_ch * b.mid_ch + b.se_ch + b.mid_ch
            macs += 2 * b.se_ch * b.mid_ch
        kern += e * (mid_out + y + (y if b.residual else 0))  # project (+ residual) + BN
        weights += b.out_ch * b.mid_ch + b.out_ch
        macs += b.mid_ch * b.out_ch * hwo
        block += e * (x_in + y)
    Hh, Wh = ms.head_hw
    head_in = ms.head_in * Hh * Wh
    weights += ms.head_ch * ms.head_in + ms.head_ch + ms.num_classes * ms.head_ch + ms.num_classes
    macs += ms.head_in * ms.head_ch * Hh * Wh + ms.head_ch * ms.num_classes
    tail = e * head_in + 4 * ms.head_ch + 4 * ms.head_ch + e * ms.num_classes
    kern += tail  # head conv+BN+act+pool (pool written, fp32), classifier (pool read, logits)
    block += tail
    return {"model": ms.name, "resolution": ms.resolution, "elem_size": e,
            "act_bytes_kernel": kern, "act_bytes_block": block, "weight_bytes": e * weights,
            "params_folded": weights, "macs": macs, "flops": 2 * macs}


def floor_ms(traffic: dict, batch: int, copy_gbps: float | None, kind: str = "kernel"):
    """Memory floor of a batch: (batch · activation bytes + weight bytes) / copy bandwidth."""
    if not copy_gbps:
        return None
    nbytes = batch * traffic[f"act_bytes_{kind}"] + traffic["weight_bytes"]
    return nbytes / (copy_gbps * 1e9) * 1e3


# ============================================================================ timing
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
    import torch

    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return _EventStamp(ev)


def copy_bandwidth_gbps(device="cuda", nbytes: int | None = None, reps: int | None = None) -> float:
    """Device copy bandwidth in GB/s (10⁹ B/s): median of ``dst.copy_(src)``, bytes = 2 · size.

    GPU: 1 GiB, CUDA events. CPU: 128 MiB (larger than any last-level cache here), wall time."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    nbytes = nbytes or ((1 << 30) if cuda else 128 * MiB)
    reps = reps or (20 if cuda else 5)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    if cuda:
        torch.cuda.synchronize(device)
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            dst.copy_(src)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def time_forward(fn, x, device, *, min_time: float, min_reps: int, max_reps: int = 1000,
                 warmup: int = 3) -> list[float]:
    """Milliseconds of each timed call of ``fn(x)`` after ``warmup`` calls: at least
    ``min_reps`` and until ``min_time`` seconds have passed. GPU: CUDA events around each call
    (synchronised), CPU: wall time."""
    import torch

    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn(x)
    if cuda:
        torch.cuda.synchronize(device)
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_reps or (time.perf_counter() < t_end and len(times) < max_reps):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(x)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


# ============================================================================ environment
def git_commit(root: Path | None = None) -> str:
    """``EFFNET_COMMIT``, else the short commit of the source tree (the package's, else the
    working directory's) + "-dirty" when the code in it — effnet_kernels/, csrc/, setup.py —
    differs from that commit, else "unknown"."""
    env = os.environ.get("EFFNET_COMMIT")
    if env:
        return env[:12]
    roots = [root] if root else [Path(__file__).resolve().parents[1], Path.cwd()]
    for r in roots:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=r, text=True,
                                 capture_output=True, timeout=10, check=False)
            if sha.returncode != 0:
                continue
            # the measured code: the package and the kernels, untracked files included
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "effnet_kernels",
                                    "csrc", "setup.py"], cwd=r, text=True, capture_output=True,
                                   timeout=10, check=False)
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """device, commit, torch, cuda, triton, date, host CPU and threads of this process."""
    import torch

    device = torch.device(device)
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = None
    ncpu = os.cpu_count()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU: {cpu_name()} ({ncpu} cores, {torch.get_num_threads()} threads)"
    extra = {}
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        extra = {"capability": f"{cap[0]}.{cap[1]}",
                 "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,  # torch defaults, as users run
                          "matmul": torch.backends.cuda.matmul.allow_tf32}}
    return {**extra, "device": name, "device_type": device.type, "commit": git_commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_v,
            "date": datetime.date.today().isoformat(), "host_cpu": cpu_name(), "cpu_count": ncpu,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def _slug(s: str) -> str:
    s = re.sub(r"^(nvidia|amd)\s+", "", s.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def result_filename(env: dict) -> str:
    """``YYYY-MM-DD-<gpu>-<commit>.json``; CPU runs are named ``...-cpu<cores>-<commit>.json``."""
    dev = (_slug(env["device"]) if env.get("device_type") == "cuda"
           else f"cpu{env.get('cpu_count') or ''}")
    return f"{env['date']}-{dev}-{env['commit']}.json"


# ============================================================================ backends
GPU_BACKENDS = ("eager_fp32_nchw", "eager_cudnn_cl", "compile", "ours_cuda", "ours_triton",
                "int8_intmm")
CPU_BACKENDS = ("eager", "compile", "onnxruntime", "ours_cpu", "ours_torch", "int8_intmm")
# which kinds run at dtype int8, and which run only then
INT8_KINDS = {"cuda": ("ours_cuda", "ours_triton", "int8_intmm"),
              "cpu": ("ours_torch", "int8_intmm")}
INT8_ONLY = ("ours_torch", "int8_intmm")
# the float rows every int8 row is compared with (measured whenever int8 is)
INT8_COMPANIONS = {"cuda": ("eager_cudnn_cl", "ours_cuda", "ours_triton"),
                   "cpu": ("eager", "ours_cpu")}
INT8_CALIB_BATCH = 4  # images in the one random calibration batch of ours int8
OURS_TORCH_MAX_MACS = 4e9  # ours_torch_ref by default only for batches up to this (CPU)
INT8_BASELINE_WHY = (
    "each 1x1 conv (expand, project, head) as torch._int_mm (cuBLASLt int8 GEMM on CUDA, "
    "torch's int8 GEMM on the CPU) on per-tensor dynamically quantised activations and "
    "per-channel int8 weights, dequantised in torch ops; stem, depthwise, SE and classifier "
    "in the float dtype (cuDNN FP16 on a GPU). Not an int8 cuDNN graph: nvidia-cudnn-frontend "
    "is not installed and cuDNN's legacy int8 convolutions have little depthwise support, so "
    "an int8 GEMM per 1x1 layer is PyTorch's best int8 path without custom kernels")


def int8_float_dtype(device_type: str) -> str:
    """The float dtype the int8 rows are compared with (and run their float parts in)."""
    return "fp16" if device_type == "cuda" else "fp32"


def ours_torch_skip_reason(model: str, resolution: int, batch: int) -> str | None:
    """Why ``ours_torch_ref`` (the integer reference, about 0.3 s per GMAC on one core) is not
    run by default at this size, or None when the batch is at most ``OURS_TORCH_MAX_MACS``."""
    gmac = model_traffic(model, resolution)["macs"] * batch / 1e9
    if gmac <= OURS_TORCH_MAX_MACS / 1e9:
        return None
    return (f"the integer reference (an oracle, ~0.3 s per GMAC on one core) runs by default "
            f"only up to {OURS_TORCH_MAX_MACS / 1e9:g} GMAC per batch, this one is {gmac:.1f}; "
            "name ours_torch_ref in --backends to run it")


class Unavailable(Exception):
    """A backend that cannot run here (missing dependency, not implemented yet)."""


def backend_name(kind: str, dtype: str, quick: bool, device_type: str) -> str:
    if kind == "int8_intmm":
        return "int8_intmm_cudnn_fp16" if device_type == "cuda" else "int8_intmm_fp32"
    if kind == "ours_torch":
        return "ours_torch_ref"  # the integer reference, not a kernel
    if device_type == "cuda":
        if kind == "eager_cudnn_cl":
            return f"eager_cudnn_{dtype}_cl"
        if kind == "compile":
            return "compile_default" if quick else "compile_max_autotune"
    return kind


def _parse_backends(spec: str | None, device_type: str, quick: bool) -> list[str]:
    """Backend kinds from user names (the printed names are accepted too)."""
    kinds = GPU_BACKENDS if device_type == "cuda" else CPU_BACKENDS
    if not spec:
        if device_type == "cpu" and quick:  # CPU inductor compiles B0 for minutes on 2 cores
            return [k for k in kinds if k != "compile"]
        return list(kinds)
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        kind = name
        if name.startswith("int8_intmm"):
            kind = "int8_intmm"
        elif name == "ours_torch_ref":
            kind = "ours_torch"
        elif device_type == "cuda":
            if re.fullmatch(r"eager_cudnn_(fp32|fp16|bf16)_cl", name):
                kind = "eager_cudnn_cl"
            elif name in ("compile_default", "compile_max_autotune"):
                kind = "compile"
        if kind not in kinds:
            valid = ("eager_fp32_nchw, eager_cudnn_cl (eager_cudnn_<dtype>_cl), compile "
                     "(compile_default/compile_max_autotune), ours_cuda, ours_triton, "
                     "int8_intmm (int8_intmm_cudnn_fp16)"
                     if device_type == "cuda" else
                     "eager, compile, onnxruntime, ours_cpu, ours_torch (ours_torch_ref), "
                     "int8_intmm (int8_intmm_fp32)")
            raise SystemExit(f"bench: unknown backend {name!r} for {device_type}; valid: {valid}")
        if kind not in out:
            out.append(kind)
    return out


def set_inplace_act(model):
    """Activations in place, as torchvision builds them (less memory traffic in eager)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6)):
            m.inplace = True
    return model


def fold_model_bn(model):
    """A copy of an ek EfficientNet with every ConvBNAct's BN folded into its conv (BN → Identity)."""
    import copy

    import torch
    from torch import nn

    from .models.efficientnet import ConvBNAct
    from .nn import fold_bn

    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, ConvBNAct) and isinstance(mod.bn, nn.BatchNorm2d):
            c = mod.conv
            w, b = fold_bn(c.weight, mod.bn, c.bias)
            conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                             groups=c.groups, bias=True)
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)
            mod.conv, mod.bn = conv, nn.Identity()
    return m


def eager_model(base, name: str):
    """(model, impl): torchvision's own model of that name carrying ``base``'s weights — eager
    PyTorch as users run it — or, where torchvision lacks it, a copy of the ek model."""
    import copy

    try:
        import torchvision.models as tvm

        ctor = getattr(tvm, name, None)
        if ctor is not None:
            tv = ctor(weights=None)
            tv.load_state_dict(_tv_state_dict(base, tv))
            return tv.eval(), "torchvision"
    except (ImportError, RuntimeError):
        pass
    return copy.deepcopy(base).eval(), "effnet_kernels"


# ---------------------------------------------------------------------------- int8 baseline
def _int_mm_works(device) -> bool:
    """Whether ``torch._int_mm`` runs on this device (once per device type)."""
    import torch

    device = torch.device(device)
    if device.type not in _INT_MM_OK:
        try:
            a = torch.ones(32, 32, dtype=torch.int8, device=device)
            ok = bool((torch._int_mm(a, a.t()) == 32).all())
        except (RuntimeError, AttributeError, NotImplementedError):
            ok = False
        _INT_MM_OK[device.type] = ok
    return _INT_MM_OK[device.type]


_INT_MM_OK: dict[str, bool] = {}


def _intmm_conv_class():
    """The module class (built on first use: torch is imported lazily in this file)."""
    global _IntMMConv1x1
    if _IntMMConv1x1 is not None:
        return _IntMMConv1x1
    import torch
    import torch.nn.functional as F
    from torch import nn

    class IntMMConv1x1(nn.Module):
        """A BN-folded 1×1 conv as ``torch._int_mm``: the channels_last input viewed as an
        (N·H·W, Cin) matrix, quantised per tensor (symmetric absmax → int8 in [−127, 127],
        scale computed on the device, no host sync), times the per-output-channel symmetric
        int8 weight (Cout, Cin) transposed (column-major, the layout cuBLASLt's int8 GEMM
        wants), int32 accumulators dequantised + bias in float32 (one ``addcmul``), then cast to
        the float dtype. Shapes ``torch._int_mm`` cannot take (CUDA: M ≤ 16, K or N not a
        multiple of 8; or no ``_int_mm`` on the device) run ``F.conv2d`` in the float dtype;
        ``last_path`` says which ran last ("int_mm" / "conv2d")."""

        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            w = conv.weight.detach()
            cout, cin = w.shape[0], w.shape[1]
            w32 = w.float().reshape(cout, cin)
            amax = w32.abs().amax(dim=1)
            s_w = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
            wq = torch.round(w32 / s_w[:, None]).clamp_(-127, 127).to(torch.int8)
            b = conv.bias.detach() if conv.bias is not None else torch.zeros(cout, device=w.device)
            self.register_buffer("weight_q", wq.contiguous())  # (Cout, Cin)
            self.register_buffer("w_scale", s_w)
            self.register_buffer("bias32", b.float().clone())
            self.register_buffer("weight", w.clone())  # the float fallback
            self.register_buffer("bias", b.to(w.dtype).clone())
            self.in_ch, self.out_ch = cin, cout
            self.last_path = None

        def _int_mm_ok(self, m: int, device) -> bool:
            if not _int_mm_works(device):
                return False
            if device.type == "cuda":
                return m > 16 and self.in_ch % 8 == 0 and self.out_ch % 8 == 0
            return m > 0

        def forward(self, x):
            n, c, h, w = x.shape
            m = n * h * w
            if not self._int_mm_ok(m, x.device):
                self.last_path = "conv2d"
                return F.conv2d(x, self.weight, self.bias)
            self.last_path = "int_mm"
            a = x.permute(0, 2, 3, 1).reshape(m, c)  # a view when x is channels_last
            if a.is_cuda:  # one reduction kernel
                amax = torch.linalg.vector_norm(a, float("inf")).float()
            else:  # CPU: aminmax is ~20x faster than the inf-norm in torch 2.14
                lo, hi = torch.aminmax(a)
                amax = torch.maximum(hi, -lo).float()
            # 127 / amax, kept finite in the activation dtype (fp16: ≤ 65504; amax = 0 → max)
            inv = (127.0 / amax).clamp_(max=torch.finfo(a.dtype).max).to(a.dtype)
            q = (a * inv).round_().clamp_(-127, 127).to(torch.int8)
            acc = torch._int_mm(q, self.weight_q.t())  # (M, Cout) int32
            y = torch.addcmul(self.bias32, acc, self.w_scale / inv.float())  # float32
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
            return y.view(n, h, w, self.out_ch).permute(0, 3, 1, 2)  # channels_last

        def extra_repr(self) -> str:
            return f"{self.in_ch} -> {self.out_ch}, last_path={self.last_path!r}"

    _IntMMConv1x1 = IntMMConv1x1
    return IntMMConv1x1


_IntMMConv1x1 = None


def int8_intmm_model(base, dtype=None, device="cpu"):
    """The ``int8_intmm_*`` baseline from an ek EfficientNet (see the module docstring): BN
    folded (:func:`fold_model_bn`), activations in place, ``dtype`` (default float16 on a GPU,
    float32 on the CPU), channels_last, on ``device``; every 1×1 ConvBNAct conv (expand,
    project, head) replaced by an ``IntMMConv1x1``. Stem, depthwise convs, SE and classifier
    stay float. ``intmm_paths(model)`` counts which path each 1×1 layer took in the last
    forward."""
    import torch

    from .models.efficientnet import ConvBNAct

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    cls = _intmm_conv_class()
    m = set_inplace_act(fold_model_bn(base)).to(device=device, dtype=dtype,
                                                memory_format=torch.channels_last)
    for mod in m.modules():
        if isinstance(mod, ConvBNAct):
            c = mod.conv
            if c.kernel_size == (1, 1) and c.groups == 1 and c.stride == (1, 1):
                mod.conv = cls(c)
    return m.eval()


def intmm_paths(model) -> dict:
    """{"int_mm": n, "conv2d": n} over the 1×1 layers of an ``int8_intmm_model`` (last forward)."""
    out = {"int_mm": 0, "conv2d": 0}
    for mod in model.modules():
        if getattr(mod, "last_path", None) in out:
            out[mod.last_path] += 1
    return out


class _Job:
    def __init__(self, model, batch, dtype, kind, name):
        self.model, self.batch, self.dtype, self.kind, self.name = model, batch, dtype, kind, name


def _make_runner(kind: str, base, model: str, dtype: str, device, quick: bool,
                 batch: int, resolution: int, cache: dict):
    """(fn, x, warmup) for one backend; ``cache`` keeps built models across batch sizes."""
    import torch

    tdt = getattr(torch, DTYPES.get(dtype, "int8"))  # int8 jobs use their float dtype below
    cl = torch.channels_last
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    key = (kind, dtype)

    if kind in ("eager_fp32_nchw", "eager"):
        if key not in cache:
            m, cache["eager_impl"] = eager_model(base, model)
            cache[key] = m.to(device=device, dtype=tdt)
        return cache[key], x.to(tdt), 3

    if kind == "eager_cudnn_cl":
        if key not in cache:
            cache[key] = set_inplace_act(fold_model_bn(base)).to(device=device, dtype=tdt,
                                                                  memory_format=cl)
        return cache[key], x.to(tdt).contiguous(memory_format=cl), 5

    if kind == "compile":
        if key not in cache:
            if device.type == "cuda":
                src = set_inplace_act(fold_model_bn(base)).to(device=device, dtype=tdt,
                                                               memory_format=cl)
                mode = None if quick else "max-autotune"
            else:  # the eager model, as users would compile it
                src = eager_model(base, model)[0].to(dtype=tdt)
                mode = None
            cache[key] = torch.compile(src, mode=mode, dynamic=False)
        xin = x.to(tdt)
        if device.type == "cuda":
            xin = xin.contiguous(memory_format=cl)
        return cache[key], xin, 3

    if kind == "onnxruntime":
        if dtype != "fp32":
            raise Unavailable("onnxruntime runs fp32 only here")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise Unavailable("onnxruntime is not installed (pip install onnxruntime)") from e
        if (key, batch) not in cache:
            cache[(key, batch)] = _onnx_session(base, x, ort)
        sess = cache[(key, batch)]
        xn = x.numpy()

        def run_ort(inp, sess=sess):
            return sess.run(None, {"x": inp})

        return run_ort, xn, 2

    if kind == "int8_intmm":  # dtype int8: float parts in the device's int8 float dtype
        fdt = getattr(torch, DTYPES[int8_float_dtype(device.type)])
        if key not in cache:
            cache[key] = int8_intmm_model(base, fdt, device)
            cache[("note", key)] = _intmm_note
        return cache[key], x.to(fdt).contiguous(memory_format=cl), 5

    if kind.startswith("ours_"):
        import effnet_kernels as ek

        if not hasattr(ek, "optimize"):
            raise Unavailable("effnet_kernels.optimize does not exist yet (the fused model)")
        backend = kind[len("ours_"):]
        if dtype == "int8":
            return _ours_int8(kind, backend, base, device, x, resolution, cache)
        if key not in cache:
            cache[key] = ek.optimize(__import__("copy").deepcopy(base).to(device), backend=backend,
                                     dtype=tdt)
        return cache[key], x.to(tdt).contiguous(memory_format=cl), 5
    raise ValueError(f"unknown backend kind {kind!r}")


def _intmm_note(model) -> str:
    p = intmm_paths(model)
    return (f"{p['int_mm']} 1x1 convs via torch._int_mm, {p['conv2d']} fell back to F.conv2d "
            "(shape torch._int_mm cannot take, or no _int_mm on this device)")


def _ours_int8(kind: str, backend: str, base, device, x, resolution: int, cache: dict):
    """ours INT8: ``quantize(optimize(base, backend, float dtype), [calib], backend)``."""
    import copy

    import torch

    import effnet_kernels as ek

    try:
        from effnet_kernels import quant
    except ImportError as e:
        raise Unavailable(f"effnet_kernels.quant cannot be imported: {e}") from e
    try:
        quant.quant_backends(backend, device)  # RuntimeError naming what is missing
    except RuntimeError as e:
        raise Unavailable(str(e)) from e
    fdt_name = int8_float_dtype(device.type)
    fdt = getattr(torch, DTYPES[fdt_name])
    key = (kind, "int8")
    if key not in cache:
        f = cache.get((kind, fdt_name))  # the float model of the same backend, if built
        if f is None:
            f = ek.optimize(copy.deepcopy(base).to(device), backend=backend, dtype=fdt)
        g = torch.Generator().manual_seed(1)
        calib = torch.randn(INT8_CALIB_BATCH, 3, resolution, resolution, generator=g)
        q = quant.quantize(f, [calib.to(device=device, dtype=fdt)], backend=backend)
        cache[key] = q
        subs = "; ".join(f"{op}: {v}" for op, v in q.substitutions.items()) or "none"
        ref = ("the exact integer reference (torch ops): an oracle, not a kernel; "
               if backend == "torch" else "")
        cache[("note", key)] = (f"{ref}ek.quantize(backend={backend!r}), float parts "
                                f"{fdt_name}, calibrated on one N(0,1) batch of "
                                f"{INT8_CALIB_BATCH} at {resolution}px; substitutions: {subs}")
    xin = x.to(fdt).contiguous(memory_format=torch.channels_last)
    return cache[key], xin, (1 if backend == "torch" else 5)


def _tv_state_dict(ek_model, tv_model) -> dict:
    """ek weights under torchvision's keys (same tensors in the same order, shapes checked)."""
    src = list(ek_model.state_dict().items())
    dst = list(tv_model.state_dict().items())
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
        raise RuntimeError("torchvision model layout differs from the ek model")
    return {k: v for (k, _), (_, v) in zip(dst, src)}


def _onnx_session(base, x, ort):
    import copy
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    m = copy.deepcopy(base).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["logits"],
                              opset_version=17, dynamo=False)
        except Exception as e:  # exporter missing or failing: say why, go on
            raise Unavailable(f"ONNX export failed: {type(e).__name__}: {e}") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


# ============================================================================ the run
def _progress(total: int, quiet: bool):
    try:
        if quiet:
            raise ImportError
        from tqdm import tqdm

        return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        return _PlainProgress(total, quiet)


class _PlainProgress:
    """What is printed when tqdm is not installed: one line per run."""

    def __init__(self, total, quiet):
        self.total, self.n, self.quiet = total, 0, quiet

    def set_description_str(self, s):
        if not self.quiet:
            print(f"[{self.n + 1}/{self.total}] {s}", file=sys.stderr, flush=True)

    def update(self, k=1):
        self.n += k

    def write(self, s):
        print(s, file=sys.stderr, flush=True)

    def close(self):
        pass


def run(args, checkpoint=None) -> dict:
    """Measure every (model, batch, dtype, backend) of ``args``; return the JSON document.

    ``checkpoint(doc)`` is called after every measurement (the CLI rewrites ``--json`` then, so
    a run cut short keeps what it measured)."""
    import gc

    import torch

    import effnet_kernels as ek
    from effnet_kernels.models.efficientnet import CONFIGS

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    quick = args.quick
    models = args.models
    batches = args.batch
    dtypes = args.dtype
    kinds = _parse_backends(args.backends, device.type, quick)
    min_time = args.min_time if args.min_time is not None else (0.3 if quick else 1.0)
    min_reps = args.min_reps if args.min_reps is not None else (5 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
    env = environment(device)
    doc = {**env, "quick": quick, "min_time_s": min_time, "results": [], "roofline": [],
           "skipped": [], "errors": []}
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(f"bench on {env['device']} · torch {env['torch']} · CUDA {env['cuda']} · "
        f"triton {env['triton']} · commit {env['commit']}")

    copy_gbps = copy_bandwidth_gbps(device, nbytes=args.copy_bytes)
    doc["copy_gbps"] = copy_gbps
    say(f"copy bandwidth (dst.copy_(src), read + write): {copy_gbps:.1f} GB/s")

    # jobs: eager_fp32_nchw is dtype-independent (fp32 only); everything else per dtype;
    # int8 only for the INT8 kinds, which run nothing else
    int8 = "int8" in dtypes
    fdt = int8_float_dtype(device.type)
    int8_kinds = INT8_KINDS[device.type]
    jobs = []
    for model in models:
        if int8 and fdt not in dtypes:  # the int8 rows' cross-dtype baselines (first, so that
            # ours int8 quantizes the float model already built)
            jobs += [_Job(model, b, fdt, kind, backend_name(kind, fdt, quick, device.type))
                     for kind in INT8_COMPANIONS[device.type] for b in batches]
        for kind in kinds:
            if kind == "eager_fp32_nchw":
                jobs += [_Job(model, b, "fp32", kind, kind) for b in batches]
                continue
            for dt in dtypes:
                if (kind not in int8_kinds) if dt == "int8" else (kind in INT8_ONLY):
                    continue
                jobs += [_Job(model, b, dt, kind, backend_name(kind, dt, quick, device.type))
                         for b in batches]
    if device.type == "cpu" and quick and not args.backends:
        say("compile: not run with --quick on the CPU (inductor compiles B0 for minutes on a "
            "small machine); name it in --backends to include it")
    explicit = set(_parse_backends(args.backends, device.type, quick)) if args.backends else set()
    if int8:
        doc["int8"] = {"compare_dtype": fdt, "float_parts_dtype": fdt,
                       "baseline": backend_name("int8_intmm", "int8", quick, device.type),
                       "baseline_method": INT8_BASELINE_WHY,
                       "int_mm_on_device": _int_mm_works(device),
                       "companions": [backend_name(k, fdt, quick, device.type)
                                      for k in INT8_COMPANIONS[device.type]],
                       "calibration": f"one N(0,1) batch of {INT8_CALIB_BATCH} images"}
        say(f"int8: ours + {doc['int8']['baseline']}, compared with the {fdt} rows of "
            f"{', '.join(doc['int8']['companions'])}")
    elif explicit & set(INT8_ONLY):
        names = sorted(backend_name(k, "int8", quick, device.type)
                       for k in explicit & set(INT8_ONLY))
        doc["skipped"].append({"backend": ",".join(names), "dtype": ",".join(dtypes),
                               "reason": "int8-only backend; add int8 to --dtype"})
        say(f"{', '.join(names)}: int8 only — add int8 to --dtype")

    bar = _progress(len(jobs), args.quiet)
    unavailable: dict[tuple, str] = {}
    for model in models:
        res = args.resolution or CONFIGS[model].resolution
        torch.manual_seed(0)
        base = ek.create_model(model).eval()
        cache: dict = {}
        for job in [j for j in jobs if j.model == model]:
            bar.set_description_str(f"{model}@{res} b{job.batch} {job.dtype} {job.name}")
            ukey = (job.kind, job.dtype)
            if ukey in unavailable:
                bar.update(1)
                continue
            reason = (ours_torch_skip_reason(model, res, job.batch)
                      if job.kind == "ours_torch" and "ours_torch" not in explicit else None)
            if reason:
                doc["skipped"].append({"model": model, "batch": job.batch, "backend": job.name,
                                       "dtype": job.dtype, "reason": reason})
                bar.write(f"{model} b{job.batch} {job.dtype} {job.name}: skipped — {reason}")
                bar.update(1)
                continue
            try:
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t_build = time.perf_counter()
                with torch.no_grad():  # models are built outside inference mode
                    fn, x, warmup = _make_runner(job.kind, base, model, job.dtype, device,
                                                 quick, job.batch, res, cache)
                with torch.inference_mode():
                    fn(x)  # first call: compiles / autotunes; not timed
                    build_s = time.perf_counter() - t_build
                    note = cache.get(("note", (job.kind, job.dtype)))
                    note = note(fn) if callable(note) else note
                    times = time_forward(fn, x, device, min_time=min_time, min_reps=min_reps,
                                         warmup=warmup)
                peak = torch.cuda.max_memory_allocated(device) / MiB if cuda else None
                del x
            except Unavailable as e:
                unavailable[ukey] = str(e)
                doc["skipped"].append({"model": model, "backend": job.name, "dtype": job.dtype,
                                       "reason": str(e)})
                bar.write(f"{job.name} ({job.dtype}): not available — {e}")
                bar.update(1)
                continue
            except Exception as e:  # noqa: BLE001  (one failing backend must not end the run)
                oom = cuda and isinstance(e, torch.cuda.OutOfMemoryError)
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                (doc["skipped"] if oom else doc["errors"]).append(
                    {"model": model, "batch": job.batch, "backend": job.name, "dtype": job.dtype,
                     "reason" if oom else "error": msg})
                bar.write(f"{model} b{job.batch} {job.dtype} {job.name}: "
                          f"{'out of memory' if oom else 'FAILED'} — {msg}")
                bar.update(1)
                if cuda:
                    torch.cuda.empty_cache()
                continue
            ms = statistics.median(times)
            doc["results"].append({
                "model": model, "resolution": res, "batch": job.batch, "dtype": job.dtype,
                "backend": job.name, "img_per_s": job.batch / ms * 1e3, "ms_per_batch": ms,
                "peak_mem_mb": peak, "reps": len(times), "ms_min": min(times),
                "ms_max": max(times), "build_s": round(build_s, 3),
                **({"eager_impl": cache["eager_impl"]} if job.kind in ("eager", "eager_fp32_nchw")
                   else {}), **({"note": note} if note else {})})
            bar.update(1)
            if checkpoint is not None:
                checkpoint(doc)
        del base, cache
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    bar.close()
    add_roofline(doc, models, args.resolution)
    return doc


def add_roofline(doc: dict, models=(), resolution: int | None = None) -> None:
    """Fill ``doc["roofline"]`` (per model and dtype) and each result's floors and % of them,
    for the (model, resolution) pairs of the results plus ``models`` (at ``resolution``)."""
    from .models.efficientnet import CONFIGS

    bw = doc.get("copy_gbps")
    dts = sorted({r["dtype"] for r in doc["results"]} or {"fp32"})
    pairs = list(dict.fromkeys([(r["model"], r["resolution"]) for r in doc["results"]] +
                               [(m, resolution or CONFIGS[m].resolution) for m in models]))
    doc["roofline"] = []
    for model, res in pairs:
        for dt in dts:
            t = model_traffic(model, res, ELEM_SIZE[dt])
            doc["roofline"].append({
                "model": model, "resolution": res, "dtype": dt,
                "act_mb_per_img_kernel": t["act_bytes_kernel"] / 1e6,
                "act_mb_per_img_block": t["act_bytes_block"] / 1e6,
                "weight_mb": t["weight_bytes"] / 1e6, "gflops_per_img": t["flops"] / 1e9,
                "copy_gbps": bw,  # floors per image (activations) and per forward (weights)
                "floor_ms_per_img_kernel": t["act_bytes_kernel"] / (bw * 1e6) if bw else None,
                "floor_ms_per_img_block": t["act_bytes_block"] / (bw * 1e6) if bw else None,
                "floor_ms_weights": t["weight_bytes"] / (bw * 1e6) if bw else None})
    for r in doc["results"]:
        t = model_traffic(r["model"], r["resolution"], ELEM_SIZE[r["dtype"]])
        fk, fb = floor_ms(t, r["batch"], bw, "kernel"), floor_ms(t, r["batch"], bw, "block")
        r["floor_ms_kernel"], r["floor_ms_block"] = fk, fb
        r["pct_of_floor_kernel"] = 100 * fk / r["ms_per_batch"] if fk else None
        r["pct_of_floor_block"] = 100 * fb / r["ms_per_batch"] if fb else None


# ============================================================================ output
def _baseline_kind(name: str) -> str | None:
    if name in ("eager_fp32_nchw", "eager", "onnxruntime"):
        return name
    if re.fullmatch(r"eager_cudnn_\w+_cl", name):
        return "eager_cudnn_cl"
    if name.startswith("compile"):
        return "compile"
    if name.startswith("int8_intmm"):
        return "int8_intmm"
    return None


def _doc_int8_dtype(doc: dict) -> str:
    """The float dtype a run's int8 rows are compared with."""
    if doc.get("int8", {}).get("compare_dtype"):
        return doc["int8"]["compare_dtype"]
    cpu = doc.get("device_type") == "cpu" or str(doc.get("device", "")).startswith("CPU")
    return int8_float_dtype("cpu" if cpu else "cuda")


def speedups(doc: dict) -> list[dict]:
    """Each result with ``speedup`` {baseline name: img/s ratio}: same model, resolution, batch
    and dtype, except the fp32-only ``eager_fp32_nchw`` which every dtype is compared with.

    int8 rows are also compared across dtypes, with the rows of the float dtype the int8 models
    use (fp16 on a GPU, fp32 on the CPU): every baseline of that dtype (``eager_cudnn_fp16_cl``,
    ``eager``, ...) and ``ours_<dtype>`` = the fastest ``ours_*`` row of that dtype; and with the
    int8 baseline (``int8_intmm_*``), an int8 row itself."""
    rows = []
    fdt = _doc_int8_dtype(doc)
    for r in doc["results"]:
        sp = {}
        for b in doc["results"]:
            if b is r:
                continue
            if (b["model"], b["resolution"], b["batch"]) != (r["model"], r["resolution"],
                                                              r["batch"]):
                continue
            cross = r["dtype"] == "int8" and b["dtype"] == fdt
            ratio = r["img_per_s"] / b["img_per_s"]
            if _baseline_kind(b["backend"]) is None:
                if cross and b["backend"].startswith("ours_"):
                    key = f"ours_{fdt}"  # over the fastest ours row of that dtype
                    sp[key] = min(sp.get(key, math.inf), ratio)
                continue
            if b["dtype"] != r["dtype"] and b["backend"] != "eager_fp32_nchw" and not cross:
                continue
            sp[b["backend"]] = ratio
        rows.append({**r, "speedup": sp})
    return rows


def format_table(doc: dict) -> str:
    rows = speedups(doc)
    if not rows:
        return "(no results)"
    base_cols = []
    for r in doc["results"]:
        if _baseline_kind(r["backend"]) and r["backend"] not in base_cols:
            base_cols.append(r["backend"])
    for r in rows:  # the int8 rows' "ours_<float dtype>" column
        base_cols += [k for k in r["speedup"] if k not in base_cols]
    head = ["model", "res", "batch", "dtype", "backend", "img/s", "ms/batch", "peak MB",
            "% floor"] + [f"x {b}" for b in base_cols]
    lines = []
    for r in rows:
        pct = r.get("pct_of_floor_kernel")
        cells = [r["model"].replace("efficientnet_", ""), str(r["resolution"]), str(r["batch"]),
                 r["dtype"], r["backend"], f"{r['img_per_s']:.1f}", f"{r['ms_per_batch']:.3f}",
                 "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}",
                 "-" if pct is None else f"{pct:.1f}"]
        cells += [f"{r['speedup'][b]:.2f}" if b in r["speedup"] else "-" for b in base_cols]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 5 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
    return "\n".join(out)


def format_roofline(doc: dict) -> str:
    out = []
    bw = doc.get("copy_gbps")
    for f in doc.get("roofline", []):
        line = (f"roofline {f['model']}@{f['resolution']} {f['dtype']}: "
                f"{f['act_mb_per_img_kernel']:.1f} MB/img (one kernel per op-group), "
                f"{f['act_mb_per_img_block']:.1f} MB/img (one kernel per block), "
                f"+ {f['weight_mb']:.1f} MB weights/forward, {f['gflops_per_img']:.2f} GFLOP/img")
        if bw:
            line += (f"; at {bw:.0f} GB/s copy: floor {f['floor_ms_per_img_kernel']:.4f} / "
                     f"{f['floor_ms_per_img_block']:.4f} ms/img + {f['floor_ms_weights']:.4f} "
                     "ms/forward for the weights")
        out.append(line)
    best: dict = {}
    for r in doc["results"]:
        k = (r["model"], r["batch"], r["dtype"])
        if r.get("floor_ms_kernel") and (k not in best or r["ms_per_batch"] < best[k]["ms_per_batch"]):
            best[k] = r
    for (model, batch, dt), r in sorted(best.items()):
        out.append(f"  {model} b{batch} {dt}: best {r['backend']} {r['ms_per_batch']:.3f} ms = "
                   f"{r['pct_of_floor_kernel']:.1f}% of the op-group floor "
                   f"({r['floor_ms_kernel']:.3f} ms), {r['pct_of_floor_block']:.1f}% of the "
                   f"block floor ({r['floor_ms_block']:.3f} ms)")
    return "\n".join(out)


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise SystemExit("bench: --plot needs matplotlib, which is not installed "
                         "(pip install matplotlib), or drop --plot") from e


def _series(r: dict) -> str:
    """Plot label: the backend, plus the dtype where the name does not already say it."""
    named = r["backend"].startswith(("eager_fp32", "eager_cudnn", "int8_intmm"))
    return r["backend"] if named else f"{r['backend']} {r['dtype']}"


def plot(doc: dict, path: str | Path) -> None:
    """Grouped bars, one panel per (model, dtype): img/s per backend at each batch (log y)."""
    _check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    panels = sorted({(r["model"], r["resolution"]) for r in res})
    if not panels:
        raise SystemExit("bench: nothing to plot (no results)")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, rr) in zip(axes[0], panels):
        rows = [r for r in res if r["model"] == model and r["resolution"] == rr]
        batches = sorted({r["batch"] for r in rows})
        series = list(dict.fromkeys(_series(r) for r in rows))
        width = 0.8 / max(1, len(series))
        for i, s in enumerate(series):
            ys = []
            for b in batches:
                m = [r["img_per_s"] for r in rows if r["batch"] == b and _series(r) == s]
                ys.append(m[0] if m else 0.0)
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(batches))]
            ax.bar(xs, ys, width, label=s)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_yscale("log")
        ax.set_ylabel("images / s")
        ax.set_title(f"{model} @ {rr}")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc.get('device')} · commit {doc.get('commit')} · {doc.get('date')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================ CLI
def _csv(kind):
    def parse(s: str):
        vals = [v.strip() for v in s.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        return [kind(v) for v in vals]

    return parse


def _model_name(s: str) -> str:
    from .models.efficientnet import CONFIGS

    s = s.lower()
    for cand in (s, f"efficientnet_{s}"):
        if cand in CONFIGS:
            return cand
    raise argparse.ArgumentTypeError(f"unknown model {s!r}; valid: {', '.join(sorted(CONFIGS))}")


def _dtype_name(s: str) -> str:
    s = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(s, s)
    if s not in ("fp32", "fp16", "bf16", "int8"):
        raise argparse.ArgumentTypeError(f"dtype must be fp32, fp16, bf16 or int8, got {s!r}")
    return s


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--models", type=_csv(_model_name), default=None,
                   help="comma list, e.g. b0,b4 or efficientnet_b7 (default B0,B4,B7; "
                        "--quick: B0,B4), each at its own resolution")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="override every model's input resolution (e.g. small for smoke tests)")
    p.add_argument("--batch", type=_csv(_positive_int), default=None,
                   help="comma list of batch sizes (default 1,64,256; --quick: 1,256)")
    p.add_argument("--dtype", type=_csv(_dtype_name), default=None,
                   help="comma list of fp32, fp16, bf16, int8; default fp16 on a GPU, fp32 on "
                        "the CPU. int8: ours (ek.quantize) and the torch._int_mm baseline, plus "
                        "the fp16 (CPU: fp32) rows of cuDNN/eager and ours they are compared "
                        "with (measured even when not asked for)")
    p.add_argument("--backends", default=None,
                   help="comma list (default: all of the device's). GPU: eager_fp32_nchw, "
                        "eager_cudnn_cl, compile, ours_cuda, ours_triton, int8_intmm (int8 "
                        "only); CPU: eager, compile, onnxruntime, ours_cpu, ours_torch (int8 "
                        "only: the integer reference, by default only for batches <= 4 GMAC), "
                        "int8_intmm (int8 only)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (torch.set_num_threads; also ONNX Runtime's)")
    p.add_argument("--quick", action="store_true",
                   help="B0,B4 · batch 1,256 · fp16 (CPU: fp32) · torch.compile default mode "
                        "(compile_default) · 0.3 s per measurement; CPU: no compile unless asked")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of timed calls per measurement (default 1.0; --quick 0.3)")
    p.add_argument("--min-reps", type=_positive_int, default=None,
                   help="at least this many timed calls (default 5 GPU, 3 CPU)")
    p.add_argument("--copy-bytes", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None,
                   help="write results JSON here (a directory: YYYY-MM-DD-<device>-<commit>.json)")
    p.add_argument("--plot", default=None, help="write a PNG of img/s per backend and batch")
    p.add_argument("--load", default=None,
                   help="print (and --plot) the results of an earlier --json instead of measuring")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the table")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``python -m effnet_kernels``'s subparsers."""
    p = subparsers.add_parser("bench", help="benchmark whole models against the baselines",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    p.set_defaults(fn=cmd_bench)
    return p


def _finish_args(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA GPU is visible")
    if dev.type not in ("cuda", "cpu"):
        raise SystemExit(f"bench: --device must be cuda or cpu, got {args.device!r}")
    args.models = args.models or list(QUICK_MODELS if args.quick else DEFAULT_MODELS)
    args.batch = args.batch or ([1, 256] if args.quick else [1, 64, 256])
    args.dtype = args.dtype or (["fp16"] if dev.type == "cuda" else ["fp32"])


def cmd_bench(args) -> int:
    if args.plot:
        _check_matplotlib()  # fail before measuring, not after
    if args.load:
        try:
            doc = json.loads(Path(args.load).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"bench: cannot read {args.load}: {e}") from e
        add_roofline(doc)  # recomputed: the byte counts may have been refined since
    else:
        _finish_args(args)
        _parse_backends(args.backends, __import__("torch").device(args.device).type, args.quick)

        def checkpoint(doc):
            if args.json:
                part = {**doc}
                add_roofline(part, args.models, args.resolution)
                _write_json(part, args.json)

        doc = run(args, checkpoint)
    print()
    print(f"{doc.get('device')} · commit {doc.get('commit')} · torch {doc.get('torch')} · "
          f"CUDA {doc.get('cuda')} · triton {doc.get('triton')} · {doc.get('date')} "
          "(medians; speedup = img/s ratio)")
    print(format_table(doc))
    print(format_roofline(doc))
    notes = dict.fromkeys((r["backend"], r["note"]) for r in doc["results"] if r.get("note"))
    for backend, note in notes:
        print(f"note: {backend}: {note}")
    if doc.get("int8"):
        print(f"int8 baseline {doc['int8']['baseline']}: {doc['int8']['baseline_method']}")
    for s in doc.get("skipped", []):
        print(f"not available: {s.get('backend')} {s.get('dtype', '')}: {s['reason']}")
    for e in doc.get("errors", []):
        print(f"FAILED: {e['model']} b{e['batch']} {e['dtype']} {e['backend']}: {e['error']}")
    if args.json and not args.load:
        print(f"wrote {_write_json(doc, args.json)}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 1 if doc.get("errors") else 0


def _write_json(doc: dict, dest: str) -> Path:
    path = Path(dest)
    if path.is_dir():
        path = path / result_filename(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet_kernels bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    args = p.parse_args(argv)
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
