"""What the benchmark times: one small builder per backend kind, in a registry (:data:`BUILDERS`).

A builder takes a :class:`BuildContext` (the model with its weights, batch, dtype, device,
threads, and a cache of what was already built for this model) and returns a :class:`Runner`:
a callable, its input, how many warm-up calls it needs, and an optional note. A backend that
cannot run here raises :class:`Unavailable` with the reason (a missing package, a dtype it
lacks); the run lists it as not available, not failed. The optional packages (torchvision,
onnxruntime, openvino) are imported by the builders that use them, so that a missing one
disables only its rows.

GPU  ``eager_fp32_nchw`` torchvision (or the equivalent ek model) as users run it;
     ``eager_cudnn_<dtype>_cl`` channels_last, cudnn.benchmark, BN folded (the "cuDNN FP16"
     baseline); ``compile_max_autotune`` (``compile_default`` with --quick) of that model;
     ``ours_cuda``, ``ours_triton`` = ``ek.optimize(model, backend=...)``.
CPU  ``eager`` (torchvision, NCHW, BN not folded), ``compile`` (torch.compile of it),
     ``onnxruntime`` (all graph optimisations, ``intra_op_num_threads`` = the threads),
     ``openvino`` (LATENCY hint, ``INFERENCE_NUM_THREADS`` = the threads, precision hint f32 for
     fp32 and bf16 for bf16), both from one ONNX export of the same weights; ``ours_cpu``.
INT8 ``ours_*`` = ``ek.quantize(ek.optimize(model, backend=b), [one N(0,1) batch], backend=b)``
     (CPU: ``ours_torch_ref``, the exact integer reference, an oracle and not a kernel);
     ``int8_intmm_*`` = :mod:`effnet_kernels.bench.intmm`.
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import effnet_kernels as ek

from .. import ops
from .intmm import fold_model_bn, int8_intmm_model, intmm_note, set_inplace_act
from .shapes import model_traffic

__all__ = ["BUILDERS", "BuildContext", "Runner", "Unavailable", "backend_name", "eager_model",
           "int8_float_dtype", "ours_torch_skip_reason", "parse_backends"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GPU_BACKENDS = ("eager_fp32_nchw", "eager_cudnn_cl", "compile", "ours_cuda", "ours_triton",
                "int8_intmm")
CPU_BACKENDS = ("eager", "compile", "onnxruntime", "openvino", "ours_cpu", "ours_torch",
                "int8_intmm")
# which kinds run at dtype int8, and which run only then
INT8_KINDS = {"cuda": ("ours_cuda", "ours_triton", "int8_intmm"),
              "cpu": ("ours_cpu", "ours_torch", "int8_intmm", "onnxruntime", "openvino")}
INT8_ONLY = ("ours_torch", "int8_intmm")
# the float rows every int8 row is compared with (measured whenever int8 is)
INT8_COMPANIONS = {"cuda": ("eager_cudnn_cl", "ours_cuda", "ours_triton"),
                   "cpu": ("eager", "ours_cpu")}
INT8_CALIB_BATCH = 4  # images in the one random calibration batch of ours int8
OURS_TORCH_MAX_MACS = 4e9  # ours_torch_ref by default only for batches up to this (CPU)
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class Unavailable(Exception):
    """A backend that cannot run here (missing dependency, dtype it lacks)."""


@dataclass
class Runner:
    """One timed thing: ``fn(x)`` after ``warmup`` untimed calls. ``note`` is a string, or a
    callable of ``fn`` evaluated after the first call; ``extra`` goes into the result row."""

    fn: Callable
    x: Any
    warmup: int
    note: str | Callable | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class BuildContext:
    """What a builder needs: ``base`` (the ek model, random weights), its name, the input size,
    batch and dtype name ("fp32", "fp16", "bf16", "int8"), the device, ``quick``, the CPU
    ``threads``, ``x`` (the float32 input on the device) and ``cache`` (models already built
    for this model, kept across batches and dtypes)."""

    base: nn.Module
    model: str
    resolution: int
    batch: int
    dtype: str
    device: torch.device
    quick: bool
    threads: int
    x: torch.Tensor
    cache: dict

    def cached(self, key, build: Callable):
        """``cache[key]``, built by ``build()`` the first time."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def input(self, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
        x = self.x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


BUILDERS: dict[str, Callable[[BuildContext], Runner]] = {}


def _builder(*kinds: str):
    def register(fn):
        for k in kinds:
            BUILDERS[k] = fn
        return fn

    return register


def int8_float_dtype(device_type: str) -> str:
    """The float dtype the int8 rows are compared with (and run their float parts in)."""
    return "fp16" if device_type == "cuda" else "fp32"


def _float_dtype(ctx: BuildContext) -> torch.dtype:
    name = int8_float_dtype(ctx.device.type) if ctx.dtype == "int8" else ctx.dtype
    return DTYPES[name]


# ---------------------------------------------------------------------------- eager, compile
def _tv_state_dict(ek_model: nn.Module, tv_model: nn.Module) -> dict:
    """ek weights under torchvision's keys (same tensors in the same order, shapes checked)."""
    src = list(ek_model.state_dict().items())
    dst = list(tv_model.state_dict().items())
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
        raise RuntimeError("torchvision model layout differs from the ek model")
    return {k: v for (k, _), (_, v) in zip(dst, src)}


def eager_model(base: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(model, impl): torchvision's own model of that name carrying ``base``'s weights — eager
    PyTorch as users run it — or, where torchvision lacks it, a copy of the ek model."""
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


def _folded_cl(ctx: BuildContext, dtype: torch.dtype) -> nn.Module:
    return set_inplace_act(fold_model_bn(ctx.base)).to(device=ctx.device, dtype=dtype,
                                                        memory_format=torch.channels_last)


@_builder("eager", "eager_fp32_nchw")
def _eager(ctx: BuildContext) -> Runner:
    dt = _float_dtype(ctx)

    def build():
        m, impl = eager_model(ctx.base, ctx.model)
        return m.to(device=ctx.device, dtype=dt), impl

    m, impl = ctx.cached(("eager", ctx.dtype), build)
    return Runner(m, ctx.input(dt), 3, extra={"eager_impl": impl})


@_builder("eager_cudnn_cl")
def _eager_cudnn_cl(ctx: BuildContext) -> Runner:
    dt = _float_dtype(ctx)
    m = ctx.cached(("eager_cudnn_cl", ctx.dtype), lambda: _folded_cl(ctx, dt))
    return Runner(m, ctx.input(dt, channels_last=True), 5)


@_builder("compile")
def _compile(ctx: BuildContext) -> Runner:
    dt, cuda = _float_dtype(ctx), ctx.device.type == "cuda"

    def build():
        if cuda:  # the cuDNN baseline's model
            return torch.compile(_folded_cl(ctx, dt), mode=None if ctx.quick else "max-autotune",
                                 dynamic=False)
        src = eager_model(ctx.base, ctx.model)[0].to(dtype=dt)  # as users would compile it
        return torch.compile(src, dynamic=False)

    return Runner(ctx.cached(("compile", ctx.dtype), build), ctx.input(dt, channels_last=cuda), 3)


# ---------------------------------------------------------------------------- ONNX peers
def _onnx_model(ctx: BuildContext) -> bytes:
    """The fp32 ONNX export of ``base`` (batch dimension dynamic), once per model."""

    def export():
        buf = io.BytesIO()
        m = copy.deepcopy(ctx.base).float().cpu().eval()
        x = torch.randn(1, 3, ctx.resolution, ctx.resolution)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["logits"],
                                  opset_version=17, dynamo=False,
                                  dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
            except Exception as e:  # noqa: BLE001  (exporter missing or failing: say why)
                return Unavailable(f"ONNX export failed: {type(e).__name__}: {e}")
        return buf.getvalue()

    out = ctx.cached(("onnx",), export)
    if isinstance(out, Unavailable):
        raise out
    return out


def _cpu_only(ctx: BuildContext, name: str) -> None:
    if ctx.device.type != "cpu":
        raise Unavailable(f"{name} is a CPU baseline here")


def calibration_batch(resolution: int) -> torch.Tensor:
    """The one calibration batch every int8 row is calibrated on (ours and the peers alike)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(INT8_CALIB_BATCH, 3, resolution, resolution, generator=g)


def _onnx_int8_model(ctx: BuildContext) -> bytes:
    """ONNX Runtime's static INT8 of the fp32 export: ``quantize_static``, QDQ, per-channel
    weights, activations u8 / weights s8 (ORT's choice for x86 VNNI), MinMax, calibrated on
    :func:`calibration_batch` (ours int8's batch), once per model."""

    def build():
        import os
        import tempfile

        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              QuantFormat, QuantType, quantize_static)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"x": calibration_batch(ctx.resolution).numpy()}])

            def get_next(self):
                return next(self.batches, None)

        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
            with open(src, "wb") as fh:
                fh.write(_onnx_model(ctx))
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            with open(dst, "rb") as fh:
                return fh.read()

    return ctx.cached(("onnx_int8",), build)


@_builder("onnxruntime")
def _onnxruntime(ctx: BuildContext) -> Runner:
    _cpu_only(ctx, "onnxruntime")
    if ctx.dtype not in ("fp32", "int8"):
        raise Unavailable(f"onnxruntime rows are fp32 and int8 only (the ONNX export is fp32), "
                          f"not {ctx.dtype}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable("onnxruntime is not installed (pip install onnxruntime onnx)") from e
    int8 = ctx.dtype == "int8"

    def session():
        so = ort.SessionOptions()
        so.intra_op_num_threads = ctx.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = _onnx_int8_model(ctx) if int8 else _onnx_model(ctx)
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    sess = ctx.cached(("onnxruntime", int8), session)
    note = (f"ONNX Runtime {ort.__version__}, CPUExecutionProvider, ORT_ENABLE_ALL, "
            f"intra_op_num_threads={ctx.threads}" +
            (f"; quantize_static QDQ per-channel U8S8 MinMax on the {INT8_CALIB_BATCH}-image "
             "N(0,1) calibration batch of ours int8" if int8 else ""))
    return Runner(lambda inp: sess.run(None, {"x": inp}), ctx.x.cpu().numpy(), 2, note)


@_builder("openvino")
def _openvino(ctx: BuildContext) -> Runner:
    _cpu_only(ctx, "openvino")
    if ctx.dtype == "int8":
        raise Unavailable("openvino int8 needs NNCF's post-training quantization "
                          "(not wired here: pip install nncf; the fp32/bf16 rows run)")
    if ctx.dtype not in OPENVINO_PRECISION:
        raise Unavailable(f"openvino rows are fp32 and bf16 only, not {ctx.dtype}")
    try:
        import openvino as ov
    except ImportError as e:
        raise Unavailable("openvino is not installed (pip install openvino)") from e
    core = ctx.cached(("openvino_core",), ov.Core)
    model = core.read_model(_onnx_model(ctx))
    model.reshape([ctx.batch, 3, ctx.resolution, ctx.resolution])  # static shape: its best case
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": ctx.threads,
              "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[ctx.dtype]}
    compiled = core.compile_model(model, "CPU", config)
    req = compiled.create_infer_request()
    got = {k: compiled.get_property(k) for k in config}  # what the plugin made of the config
    note = f"OpenVINO {ov.__version__.split('-')[0]}, CPU, " + ", ".join(
        f"{k}={getattr(v, 'to_string', lambda v=v: v)()}" for k, v in got.items()) + \
        "; fp32 input"
    ran = str(getattr(got["INFERENCE_PRECISION_HINT"], "to_string", lambda: got[
        "INFERENCE_PRECISION_HINT"])())
    if ran != OPENVINO_PRECISION[ctx.dtype]:  # e.g. bf16 on a CPU without AVX512_BF16 / AMX
        note += f" (asked {OPENVINO_PRECISION[ctx.dtype]}: this CPU runs {ran})"
    return Runner(lambda inp: req.infer({0: inp}), ctx.x.cpu().numpy(), 2, note)


# ---------------------------------------------------------------------------- int8 baseline
@_builder("int8_intmm")
def _int8_intmm(ctx: BuildContext) -> Runner:
    dt = _float_dtype(ctx)  # the float parts in the device's int8 float dtype
    m = ctx.cached(("int8_intmm",), lambda: int8_intmm_model(ctx.base, dt, ctx.device))
    return Runner(m, ctx.input(dt, channels_last=True), 5, intmm_note)


# ---------------------------------------------------------------------------- ours
def _optimized(ctx: BuildContext, backend: str, dtype_name: str) -> nn.Module:
    return ctx.cached(("ours", backend, dtype_name), lambda: ek.optimize(
        copy.deepcopy(ctx.base).to(ctx.device), backend=backend, dtype=DTYPES[dtype_name]))


def _ours_int8(ctx: BuildContext, backend: str) -> Runner:
    """``ek.quantize(ek.optimize(base, backend, float dtype), [calib], backend)``."""
    fdt = int8_float_dtype(ctx.device.type)

    def build():
        f = _optimized(ctx, backend, fdt)
        calib = calibration_batch(ctx.resolution)
        try:
            return ek.quantize(f, [calib.to(device=ctx.device, dtype=DTYPES[fdt])],
                               backend=backend)
        except RuntimeError as e:  # the int8 ops have no kernels on this backend / device
            return Unavailable(f"ek.quantize(backend={backend!r}): {e}")

    q = ctx.cached(("ours_int8", backend), build)
    if isinstance(q, Unavailable):
        raise q
    subs = "; ".join(f"{op}: {v}" for op, v in getattr(q, "substitutions", {}).items()) or "none"
    ref = ("the exact integer reference (torch ops): an oracle, not a kernel; "
           if backend == "torch" else "")
    note = (f"{ref}ek.quantize(backend={backend!r}), float parts {fdt}, calibrated on one "
            f"N(0,1) batch of {INT8_CALIB_BATCH} at {ctx.resolution}px; substitutions: {subs}")
    xin = ctx.input(DTYPES[fdt], channels_last=True)
    return Runner(q, xin, 1 if backend == "torch" else 5, note)


def _ours_builder(backend: str) -> Callable[[BuildContext], Runner]:
    """The builder of ``ours_<backend>``: ``ek.optimize(base, backend=backend, dtype=dtype)``."""

    def build(ctx: BuildContext) -> Runner:
        avail = ops.available_backends(ctx.device)
        if backend not in avail:
            raise Unavailable(f"backend {backend!r} is not available on {ctx.device.type} "
                              f"(available: {', '.join(avail) or 'none'})")
        if ctx.dtype == "int8":
            return _ours_int8(ctx, backend)
        dt = DTYPES[ctx.dtype]
        return Runner(_optimized(ctx, backend, ctx.dtype), ctx.input(dt, channels_last=True), 5)

    return build


BUILDERS.update({f"ours_{b}": _ours_builder(b) for b in ("cpu", "cuda", "triton", "torch")})


# ---------------------------------------------------------------------------- names, policy
def backend_name(kind: str, dtype: str, quick: bool, device_type: str) -> str:
    """The printed name of a backend kind at a dtype."""
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


def _kind_of(name: str, device_type: str) -> str:
    """The kind of a user-given backend name (printed names are accepted too)."""
    if name.startswith("int8_intmm"):
        return "int8_intmm"
    if name == "ours_torch_ref":
        return "ours_torch"
    if device_type == "cuda":
        if re.fullmatch(r"eager_cudnn_(fp32|fp16|bf16)_cl", name):
            return "eager_cudnn_cl"
        if name in ("compile_default", "compile_max_autotune"):
            return "compile"
    return name


def parse_backends(spec: str | None, device_type: str, quick: bool) -> list[str]:
    """Backend kinds from a comma list of names (None: every kind of the device; on the CPU
    with ``quick`` without ``compile``). ValueError names the valid ones."""
    kinds = GPU_BACKENDS if device_type == "cuda" else CPU_BACKENDS
    if not spec:
        if device_type == "cpu" and quick:  # CPU inductor compiles B0 for minutes on 2 cores
            return [k for k in kinds if k != "compile"]
        return list(kinds)
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        kind = _kind_of(name, device_type)
        if kind not in kinds:
            valid = ("eager_fp32_nchw, eager_cudnn_cl (eager_cudnn_<dtype>_cl), compile "
                     "(compile_default/compile_max_autotune), ours_cuda, ours_triton, "
                     "int8_intmm (int8_intmm_cudnn_fp16)"
                     if device_type == "cuda" else
                     "eager, compile, onnxruntime, openvino, ours_cpu, ours_torch "
                     "(ours_torch_ref), int8_intmm (int8_intmm_fp32)")
            raise ValueError(f"unknown backend {name!r} for {device_type}; valid: {valid}")
        if kind not in out:
            out.append(kind)
    return out


def ours_torch_skip_reason(model: str, resolution: int, batch: int) -> str | None:
    """Why ``ours_torch_ref`` (the integer reference, about 0.3 s per GMAC on one core) is not
    run by default at this size, or None when the batch is at most ``OURS_TORCH_MAX_MACS``."""
    gmac = model_traffic(model, resolution)["macs"] * batch / 1e9
    if gmac <= OURS_TORCH_MAX_MACS / 1e9:
        return None
    return (f"the integer reference (an oracle, ~0.3 s per GMAC on one core) runs by default "
            f"only up to {OURS_TORCH_MAX_MACS / 1e9:g} GMAC per batch, this one is {gmac:.1f}; "
            "name ours_torch_ref in --backends to run it")
