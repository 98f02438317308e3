"""The op registry: the one place that knows which backend runs which op.

Every op has one schema (``SCHEMAS``; the compiled library declares the same ones in
``csrc/registration.cpp``, a test keeps the two equal) and up to four implementations, each a
registered operator, so ``opcheck``, fake tensors, ``torch.compile`` and ``torch.export`` see
every backend the same way:

============  ==================================  ============================================
backend       operator                            implementation
============  ==================================  ============================================
``"cuda"``    ``torch.ops.effnet.<op>`` (CUDA)    csrc/<op>/<op>_cuda.cu (compiled core ``_C``)
``"cpu"``     ``torch.ops.effnet.<op>`` (CPU)     csrc/<op>/<op>_cpu.cpp (compiled core ``_C``)
``"triton"``  ``torch.ops.effnet_triton.<op>``    effnet_kernels/triton/ (CUDA tensors, or CPU
                                                  tensors under ``TRITON_INTERPRET=1``)
``"torch"``   ``torch.ops.effnet_torch.<op>``     effnet_kernels/reference.py (plain PyTorch)
============  ==================================  ============================================

Which C++ kernels exist is read from the dispatcher (a kernel registered for the op's CPU or
CUDA key), not from a table, so adding a kernel in csrc/ is enough to make it available.

``"auto"`` picks, per op, the first available of cuda → triton → torch for CUDA tensors and of
cpu → torch for CPU tensors (the Triton interpreter is a test tool, never chosen by "auto"),
except where measured otherwise (``_AUTO_ORDER_FOR``: the int8 ops on the CPU keep the
reference while their C++ kernels are slower than it).
An explicitly requested backend that is unavailable, or that lacks the op, raises
``RuntimeError`` naming what is missing — nothing falls back silently. The one stated
substitution: a model built with ``backend="cuda"`` runs an op that has no CUDA C++ kernel
(the 1×1 GEMMs) on Triton, and says so (``resolve(..., substitute=True)``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import reference

try:
    from . import _C  # noqa: F401  (registers torch.ops.effnet.*)

    _C_ERROR: str | None = None
except ImportError as e:  # the package works without its compiled core
    _C = None
    _C_ERROR = f"{type(e).__name__}: {e}"

BACKENDS = ("cuda", "triton", "cpu", "torch")
CHOICES = ("auto", *BACKENDS)
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
# Measured exceptions to "auto" on the CPU: the C++ CPU int8 kernels' scalar builds (every CPU
# without AVX-512 VNNI) are exact, straightforward ports of the integer reference, 1.2-1.8x
# slower than the reference's vectorised ATen ops (1 thread: dwconv_int8 96ch 56x56 2.99 vs
# 2.49 ms, pointwise_int8 24->144 5.29 vs 3.01 ms, quantize 0.94 vs 0.82 ms; INT8 Lite0 71 vs
# 46 ms): there "auto" keeps the reference for them (backend="cpu" still runs them). With
# AVX-512 VNNI (csrc/engine/engine_int8.cpp) the C++ kernels are the fast ones: "auto" = cpu.
_INT8_OPS = ("dwconv_int8", "pointwise_int8", "quantize_per_tensor")
def _vnni_active() -> bool:
    """AVX-512 VNNI here and the AVX-512 level active at import (EFFNET_CPU_ISA)."""
    if _C is None or not getattr(_C, "cpu_has_int8_vnni", lambda: False)():
        return False
    try:
        return _C.cpu_isa() == "avx512"
    except ValueError:  # an invalid EFFNET_CPU_ISA: the kernels' first call reports it
        return False


_HAS_VNNI = _vnni_active()
_AUTO_ORDER_FOR = {} if _HAS_VNNI else {("cpu", op): ("torch", "cpu") for op in _INT8_OPS}
_SUBSTITUTE = {"cuda": "triton"}  # a model's op without a CUDA C++ kernel runs on Triton

# The schemas, exactly as csrc/registration.cpp declares them (tests/test_registry.py checks).
SCHEMAS = {
    "bias_act": "(Tensor x, Tensor bias, str act) -> Tensor",
    "dwconv_bias_act": "(Tensor x, Tensor weight, Tensor bias, int stride, int[] padding, "
                       "str act, bool return_pool) -> (Tensor, Tensor)",
    "se_gate": "(Tensor pooled, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor",
    "pointwise_conv": "(Tensor x, Tensor weight, Tensor bias, str act, Tensor? gate, "
                      "Tensor? residual, bool pool_only) -> Tensor",
    "dwconv_int8": "(Tensor x, Tensor weight, Tensor scale, Tensor bias, int stride, "
                   "int[] padding, int in_zp, float out_inv_scale, int out_zp, str act, "
                   "bool return_pool) -> (Tensor, Tensor)",
    "pointwise_int8": "(Tensor x, Tensor weight, Tensor scale, Tensor bias, int in_zp, "
                      "float out_inv_scale, int out_zp, str act, Tensor? gate, "
                      "Tensor? residual, float res_scale, int res_zp, bool pool_only) -> Tensor",
    "quantize_per_tensor": "(Tensor x, float inv_scale, int zp) -> Tensor",
}
# Extra trailing arguments of one backend's operator (not part of the op's contract): the Triton
# int8 GEMM takes the precomputed Σw zero-point correction, which a model caches per layer.
_EXTRA_ARGS = {("triton", "pointwise_int8"): ", Tensor? w_sum=None"}
OPS = tuple(SCHEMAS)


# ----------------------------------------------------------------------------- fake kernels
def dwconv_out_size(H: int, W: int, k: int, stride: int, padding) -> tuple[int, int]:
    """Output (Ho, Wo) of a k×k conv with ``stride`` and (left, right, top, bottom) padding."""
    left, right, top, bottom = padding
    return (H + top + bottom - k) // stride + 1, (W + left + right - k) // stride + 1


def _nhwc_like(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    return x.new_empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


def _dw_fake(x, weight, *args):
    # dwconv_bias_act(x, w, bias, stride, padding, act, return_pool) and dwconv_int8(x, w, scale,
    # bias, stride, padding, in_zp, out_inv_scale, out_zp, act, return_pool).
    stride, padding = (args[1], args[2]) if len(args) == 5 else (args[2], args[3])
    N, C, H, W = x.shape
    Ho, Wo = dwconv_out_size(H, W, weight.shape[-1], stride, padding)
    pool = x.new_empty((N, C) if args[-1] else (0,), dtype=torch.float32)
    return _nhwc_like(x, (N, C, Ho, Wo)), pool


def _pw_fake(x, weight, bias, act, gate, residual, pool_only):
    N, _, H, W = x.shape
    if pool_only:
        return x.new_empty((N, weight.shape[0]), dtype=torch.float32)
    return _nhwc_like(x, (N, weight.shape[0], H, W))


def _pw_int8_fake(x, weight, scale, bias, in_zp, out_inv_scale, out_zp, act, gate, residual,
                  res_scale, res_zp, pool_only, w_sum=None):
    return _pw_fake(x, weight, bias, act, gate, residual, pool_only)


_FAKES: dict[str, Callable] = {
    "bias_act": lambda x, bias, act: torch.empty_like(x, memory_format=torch.channels_last),
    "dwconv_bias_act": _dw_fake,
    "se_gate": lambda pooled, w1, b1, w2, b2: pooled.new_empty(
        (pooled.shape[0], w2.shape[0]), dtype=torch.float32),
    "pointwise_conv": _pw_fake,
    "dwconv_int8": _dw_fake,
    "pointwise_int8": _pw_int8_fake,
    "quantize_per_tensor": lambda x, inv_scale, zp: (
        _nhwc_like(x, x.shape, torch.int8) if x.dim() == 4
        else x.new_empty(x.shape, dtype=torch.int8)),  # contiguous, as every backend returns
}


# ----------------------------------------------------------------------------- Python backends
def _with_pool(out, x: torch.Tensor):
    """The (y, pool) schema convention: pool is an empty (0,) float32 tensor when not asked."""
    y, pool = out if isinstance(out, tuple) else (out, None)
    return y, (pool if pool is not None else x.new_empty((0,), dtype=torch.float32))


def _reference_impl(op: str) -> Callable:
    fn = getattr(reference, op)
    if op in ("dwconv_bias_act", "dwconv_int8"):
        def dw(x, *args):
            return _with_pool(fn(x, *args), x)
        return dw
    return fn


def _triton_impl(op: str) -> Callable:
    module = {"bias_act": "bias_act", "dwconv_bias_act": "dwconv", "se_gate": "se",
              "pointwise_conv": "pointwise"}.get(op, "quant")

    @functools.cache
    def launcher():
        return getattr(importlib.import_module(f".triton.{module}", __package__), op)

    if op in ("dwconv_bias_act", "dwconv_int8"):
        def dw(x, *args):
            return _with_pool(launcher()(x, *args), x)
        return dw
    if op == "pointwise_int8":
        n = SCHEMAS[op].split(") ->")[0].count(",") + 1  # the op's own arguments

        def pw(*args, w_sum=None):
            # the dispatcher passes the trailing w_sum positionally, or not at all (default)
            args, extra = args[:n], args[n:]
            return launcher()(*args, w_sum=extra[0] if extra else w_sum)
        return pw
    return lambda *args: launcher()(*args)


_LIBS: list[torch.library.Library] = []


def _define_python_ops(namespace: str, backend: str, make_impl: Callable,
                       keys: tuple[str, ...]) -> None:
    lib = torch.library.Library(namespace, "DEF")
    _LIBS.append(lib)  # a Library unregisters its ops when garbage collected
    for op, schema in SCHEMAS.items():
        lib.define(op + schema.replace(") ->", _EXTRA_ARGS.get((backend, op), "") + ") ->", 1))
        for key in keys:
            lib.impl(op, make_impl(op), key)
        torch.library.register_fake(f"{namespace}::{op}", _FAKES[op], lib=lib)


_define_python_ops("effnet_torch", "torch", _reference_impl, ("CompositeExplicitAutograd",))
_TRITON_FOUND = importlib.util.find_spec("triton") is not None
if _TRITON_FOUND:
    _define_python_ops("effnet_triton", "triton", _triton_impl, ("CPU", "CUDA"))
if _C is not None:
    for _op, _fake in _FAKES.items():
        if hasattr(torch.ops.effnet, _op):
            torch.library.register_fake(f"effnet::{_op}", _fake)


# ----------------------------------------------------------------------------- availability
def extension_available() -> bool:
    """True when the compiled core ``effnet_kernels._C`` imported."""
    return _C is not None


def extension_error() -> str | None:
    """Why ``effnet_kernels._C`` did not import, or None."""
    return _C_ERROR


_CUDA_BUILT = _C is not None and bool(_C.build_info()["has_cuda"])


def cuda_kernels_built() -> bool:
    """True when ``_C`` was compiled with its CUDA sources."""
    return _CUDA_BUILT


def triton_importable() -> bool:
    return _TRITON_FOUND


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _has_cpp_kernel(op: str, key: str) -> bool:
    return _C is not None and hasattr(torch.ops.effnet, op) and \
        torch._C._dispatch_has_kernel_for_dispatch_key(f"effnet::{op}", key)


# Which backends implement each op in this build, read once from the dispatcher (plain data, so
# torch.compile traces the resolution below as constants).
_OP_BACKENDS = {op: tuple(b for b in BACKENDS
                          if (b == "cuda" and _CUDA_BUILT and _has_cpp_kernel(op, "CUDA"))
                          or (b == "cpu" and _has_cpp_kernel(op, "CPU"))
                          or (b == "triton" and _TRITON_FOUND) or b == "torch")
                for op in SCHEMAS}


def op_backends(op: str) -> tuple[str, ...]:
    """The backends that implement ``op`` in this build (installed or not on this device)."""
    _check_op(op)
    return _OP_BACKENDS[op]


def device_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run ops on tensors of ``device`` here, best first (not "auto")."""
    device_type = torch.device(device).type
    out = []
    if device_type == "cuda":
        out += ["cuda"] if _CUDA_BUILT else []
        out += ["triton"] if _TRITON_FOUND else []
    elif device_type == "cpu":
        out += ["cpu"] if _C is not None else []
        out += ["triton"] if _TRITON_FOUND and triton_interpreting() else []
    return [*out, "torch"]  # other devices (meta, ...): the plain-PyTorch reference only


def why_unavailable(backend: str, device: torch.device) -> str:
    """Why ``backend`` cannot run on tensors of ``device`` (for error messages)."""
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs CUDA tensors, got a tensor on {device}"
        if _C is None:
            return f"the compiled extension effnet_kernels._C is missing ({_C_ERROR})"
        return ("effnet_kernels._C was built without CUDA (rebuild with a CUDA torch and nvcc, "
                "or EFFNET_CUDA=1)")
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend needs CPU tensors, got a tensor on {device}"
        return f"the compiled extension effnet_kernels._C is missing ({_C_ERROR})"
    if backend == "triton":
        if not _TRITON_FOUND:
            return "triton is not installed"
        return ("the 'triton' backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                f"triton is imported, for CPU tensors); got a tensor on {device}")
    return f"unknown backend {backend!r}"


def _check_op(op: str) -> None:
    if op not in SCHEMAS:
        raise ValueError(f"unknown op {op!r}; the ops are {OPS}")


def check_backend_name(backend: str) -> None:
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")


def resolve_device(backend: str, device: torch.device | str) -> str:
    """The concrete backend for ``backend`` on tensors of ``device``, whatever the op;
    raises ``RuntimeError`` when it is unavailable there."""
    check_backend_name(backend)
    device = torch.device(device)
    avail = device_backends(device)
    if backend == "auto":
        return next(b for b in _AUTO_ORDER.get(device.type, ("torch",)) if b in avail)
    if backend not in avail:
        raise RuntimeError(f"backend {backend!r} is not available: "
                           f"{why_unavailable(backend, device)}")
    return backend


def resolve(op: str, backend: str, device: torch.device | str, *,
            substitute: bool = False) -> tuple[str, str | None]:
    """``(backend, note)``: the backend ``op`` runs on for ``backend`` on tensors of ``device``.

    ``note`` is None, or why the op runs on another backend than requested (only with
    ``substitute=True``: a model's op without a CUDA C++ kernel runs on Triton). Raises
    ``ValueError`` for an unknown op or backend name, ``RuntimeError`` for an unavailable one.
    """
    _check_op(op)
    check_backend_name(backend)
    device = torch.device(device)
    has = op_backends(op)
    avail = device_backends(device)
    if backend == "auto":
        order = _AUTO_ORDER_FOR.get((device.type, op)) or _AUTO_ORDER.get(device.type, ("torch",))
        return next(b for b in order if b in avail and b in has), None
    resolve_device(backend, device)
    if backend in has:
        return backend, None
    alt = _SUBSTITUTE.get(backend) if substitute else None
    if alt is None or alt not in has:
        raise RuntimeError(f"{op} has no {backend!r} implementation; it has {has} "
                           "(or use 'auto')")
    if alt not in avail:
        raise RuntimeError(f"backend={backend!r}: {op} has no {backend!r} kernel and would run "
                           f"on {alt!r}, which is not available: {why_unavailable(alt, device)}")
    return alt, f"{alt!r} (no {backend!r} kernel)"


def resolve_all(op_names, backend: str, device: torch.device | str
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Per-op backends for a model: ``({op: backend}, {op: substitution note})``."""
    out, subs = {}, {}
    for op in op_names:
        out[op], note = resolve(op, backend, device, substitute=True)
        if note:
            subs[op] = note
    return out, subs


def implementation(op: str, backend: str) -> torch._ops.OpOverload:
    """The registered operator that runs ``op`` on ``backend`` (no availability check)."""
    _check_op(op)
    namespace = {"cuda": "effnet", "cpu": "effnet", "triton": "effnet_triton",
                 "torch": "effnet_torch"}[backend]
    return getattr(getattr(torch.ops, namespace), op).default


@dataclass(frozen=True)
class Bound:
    """An op bound to its backend once (vLLM CustomOp style): call ``fn`` per forward."""

    op: str
    backend: str
    fn: torch._ops.OpOverload
    note: str | None = None


def bind(op: str, backend: str, device: torch.device | str, *,
         substitute: bool = False) -> Bound:
    """Resolve ``op`` on ``backend`` for ``device`` once and return its operator."""
    b, note = resolve(op, backend, device, substitute=substitute)
    return Bound(op, b, implementation(op, b), note)
