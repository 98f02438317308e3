"""Typed wrappers over ``torch.ops.effnet.*``, their fake kernels, and backend dispatch.

Every op takes ``backend=``:

* ``"cuda"``   the csrc CUDA kernels (needs the CUDA build of ``effnet_kernels._C``),
* ``"triton"`` the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
* ``"cpu"``    the csrc CPU kernels,
* ``"torch"``  ``effnet_kernels.reference`` (plain PyTorch),
* ``"auto"``   cuda, else triton, else torch for CUDA tensors; cpu, else torch for CPU tensors.

An explicitly requested backend that is not available raises ``RuntimeError`` naming what is
missing; nothing falls back silently. Arguments are validated here, once, with the same messages
for every backend (the C++ kernels check again for C++ callers).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import reference

try:
    from . import _C  # noqa: F401  (registers torch.ops.effnet.*)

    _C_ERROR: str | None = None
except ImportError as e:  # the package works without its compiled core
    _C = None
    _C_ERROR = f"{type(e).__name__}: {e}"

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")
ACTIVATIONS = reference.ACTIVATIONS
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_FOUND


_AVAILABLE: dict[tuple[str, bool], tuple[str, ...]] = {}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run ops on tensors of ``device``, best first (excluding "auto")."""
    device = torch.device(device)
    key = (device.type, triton_interpreting())
    if key not in _AVAILABLE:  # fixed for the process: computed once per device type
        _AVAILABLE[key] = tuple(_available_backends(device))
    return list(_AVAILABLE[key])


def _available_backends(device: torch.device) -> list[str]:
    out = []
    if device.type == "cuda":
        if cuda_kernels_built():
            out.append("cuda")
        if triton_importable():
            out.append("triton")
    else:
        if extension_available():
            out.append("cpu")
        if triton_importable() and triton_interpreting():
            out.append("triton")
    out.append("torch")
    return out


def _why_unavailable(backend: str, device: torch.device) -> str:
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
        if not triton_importable():
            return "triton is not installed"
        return ("the 'triton' backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                f"triton is imported, for CPU tensors); got a tensor on {device}")
    return f"unknown backend {backend!r}"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend for ``backend`` on tensors of ``device``; raises if unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    avail = available_backends(device)
    if backend == "auto":
        return avail[0]
    if backend not in avail:
        raise RuntimeError(f"backend {backend!r} is not available: "
                           f"{_why_unavailable(backend, device)}")
    return backend


# ----------------------------------------------------------------------------- checks
def _check_nhwc(x: torch.Tensor, op: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{op}: {name} must be channels_last contiguous "
                         "(use x.contiguous(memory_format=torch.channels_last))")


def _check_channel_vector(v: torch.Tensor, x: torch.Tensor, op: str, name: str) -> None:
    C = x.shape[1]
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != C:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{op}: {name} must have shape ({C},), got {shape}")
    if v.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match x dtype {x.dtype}")
    if v.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def _check_act(act: str, op: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {act!r}; expected one of {ACTIVATIONS}")


def dwconv_out_size(H: int, W: int, k: int, stride: int, padding) -> tuple[int, int]:
    """Output (Ho, Wo) of a k×k conv with ``stride`` and (left, right, top, bottom) padding."""
    left, right, top, bottom = padding
    return (H + top + bottom - k) // stride + 1, (W + left + right - k) // stride + 1


# ----------------------------------------------------------------------------- fake kernels
if _C is not None:

    @torch.library.register_fake("effnet::bias_act")
    def _bias_act_fake(x, bias, act):
        return torch.empty_like(x, memory_format=torch.channels_last)

    @torch.library.register_fake("effnet::dwconv_bias_act")
    def _dwconv_bias_act_fake(x, weight, bias, stride, padding, act, return_pool):
        N, C, H, W = x.shape
        Ho, Wo = dwconv_out_size(H, W, weight.shape[-1], stride, padding)
        y = x.new_empty((N, C, Ho, Wo)).contiguous(memory_format=torch.channels_last)
        pool = x.new_empty((N, C) if return_pool else (0,), dtype=torch.float32)
        return y, pool

    @torch.library.register_fake("effnet::se_gate")
    def _se_gate_fake(pooled, w1, b1, w2, b2):
        return pooled.new_empty((pooled.shape[0], w2.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("effnet::pointwise_conv")
    def _pointwise_conv_fake(x, weight, bias, act, gate, residual, pool_only):
        N, _, H, W = x.shape
        if pool_only:
            return x.new_empty((N, weight.shape[0]), dtype=torch.float32)
        return x.new_empty((N, weight.shape[0], H, W)).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- ops
def bias_act(x: torch.Tensor, bias: torch.Tensor, act: str = "silu", *,
             backend: str = "auto") -> torch.Tensor:
    """y = act(x + bias[c]) for channels_last x (N, C, H, W); act in ``ACTIVATIONS``.

    float32 / float16 / bfloat16 in, same dtype out (channels_last), float32 math.
    """
    _check_nhwc(x, "bias_act")
    _check_channel_vector(bias, x, "bias_act", "bias")
    _check_act(act, "bias_act")
    b = resolve_backend(backend, x.device)
    if b in ("cuda", "cpu"):
        return torch.ops.effnet.bias_act(x, bias, act)
    if b == "triton":
        from .triton import bias_act as tb

        return tb.bias_act(x, bias, act)
    return reference.bias_act(x, bias, act)


def _check_dwconv(x, weight, bias, stride, padding, act) -> tuple[int, int, int, int]:
    op = "dwconv_bias_act"
    _check_nhwc(x, op)
    C = x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[0] != C \
            or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: weight must have shape ({C}, 1, k, k) for a depthwise conv over "
                         f"{C} channels, got {shape}")
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"{op}: kernel size must be odd, got {k}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight dtype {weight.dtype} does not match x dtype {x.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    _check_channel_vector(bias, x, op, "bias")
    _check_act(act, op)
    return _check_dw_geometry(x, k, stride, padding, op)


def _check_dw_geometry(x, k: int, stride, padding, op: str) -> tuple[int, int, int, int]:
    """Stride, padding and output size of a k×k depthwise conv on x; the normalised pads."""
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")
    pads = reference.normalize_padding(padding, k)
    if any(p < 0 or p >= k for p in pads):
        raise ValueError(f"{op}: each padding must be in [0, k-1] = [0, {k - 1}], got {pads}")
    Ho, Wo = dwconv_out_size(x.shape[2], x.shape[3], k, stride, pads)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: input {tuple(x.shape[2:])} with padding {pads} is smaller than "
                         f"the {k}x{k} kernel")
    return pads


def dwconv_bias_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1,
                    padding=None, act: str = "silu", return_pool: bool = False, *,
                    backend: str = "auto"):
    """Depthwise k×k conv + bias + act on channels_last x (BN folded into weight and bias).

    weight (C, 1, k, k) with odd k (3 and 5 have specialised kernels), stride 1 or 2, padding
    ``None`` (symmetric (k−1)/2), an int, or ``(left, right, top, bottom)`` with each in
    [0, k−1] (TF "same" puts the extra pixel right/bottom). Returns y (N, C, Ho, Wo),
    channels_last, x's dtype; with ``return_pool=True`` returns ``(y, pool)`` where pool is the
    float32 (N, C) spatial mean of the activated output, computed in the same pass.
    """
    pads = _check_dwconv(x, weight, bias, stride, padding, act)
    b = resolve_backend(backend, x.device)
    if b in ("cuda", "cpu"):
        y, pool = torch.ops.effnet.dwconv_bias_act(x, weight, bias, stride, list(pads), act,
                                                   return_pool)
    elif b == "triton":
        from .triton import dwconv as td

        y, pool = td.dwconv_bias_act(x, weight, bias, stride, pads, act, return_pool)
    else:
        out = reference.dwconv_bias_act(x, weight, bias, stride, pads, act, return_pool)
        y, pool = out if return_pool else (out, None)
    return (y, pool) if return_pool else y


# Which backends implement which op (an op missing from a backend is an error, not a fallback).
_OP_BACKENDS = {
    "se_gate": ("cuda", "triton", "cpu", "torch"),
    "pointwise_conv": ("triton", "cpu", "torch"),
}


def _resolve_for_op(op: str, backend: str, device: torch.device) -> str:
    supported = _OP_BACKENDS[op]
    if backend == "auto":
        return next(b for b in available_backends(device) if b in supported)
    b = resolve_backend(backend, device)
    if b not in supported:
        raise RuntimeError(f"{op} has no {b!r} implementation; use one of {supported} "
                           "(or 'auto')")
    return b


def _check_matrix(t, rows, cols, op, name, dtypes=FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    m = t.reshape(t.shape[0], -1) if t.dim() == 4 and t.shape[2:] == (1, 1) else t
    if m.dim() != 2 or (rows is not None and m.shape[0] != rows) or (cols is not None and
                                                                     m.shape[1] != cols):
        want = f"({rows if rows is not None else 'R'}, {cols if cols is not None else 'C'})"
        raise ValueError(f"{op}: {name} must have shape {want} (or with trailing 1, 1), "
                         f"got {tuple(t.shape)}")
    if m.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be one of {dtypes}, got {m.dtype}")
    return m


def _check_vector(v, n, op, name, dtype, device):
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != n:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{op}: {name} must have shape ({n},), got {shape}")
    if v.dtype != dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match {dtype}")
    if v.device != device:
        raise RuntimeError(f"{op}: {name} is on {v.device} but the input is on {device}")


def _check_gate(gate, N: int, Cin: int, op: str, device) -> None:
    """The SE gate of the pointwise ops: float32 (N, Cin) on x's device."""
    if not isinstance(gate, torch.Tensor) or tuple(gate.shape) != (N, Cin):
        raise ValueError(f"{op}: gate must have shape ({N}, {Cin}), got "
                         f"{tuple(gate.shape) if isinstance(gate, torch.Tensor) else gate}")
    if gate.dtype != torch.float32:
        raise TypeError(f"{op}: gate must be float32, got {gate.dtype}")
    if gate.device != device:
        raise RuntimeError(f"{op}: gate is on {gate.device} but x is on {device}")


def se_gate(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """SE excite: sigmoid(W2·silu(W1·pooled + b1) + b2) → (N, C) float32.

    pooled (N, C) float32 (``dwconv_bias_act(..., return_pool=True)``'s pool); w1 (S, C) and
    w2 (C, S) (1×1 conv weights with trailing 1, 1 accepted), b1 (S,), b2 (C,); the four weights
    share one float dtype. Math in float32.
    """
    op = "se_gate"
    if not isinstance(pooled, torch.Tensor) or pooled.dim() != 2:
        raise ValueError(f"{op}: pooled must be 2-D (N, C), got "
                         f"{tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else pooled}")
    if pooled.dtype != torch.float32:
        raise TypeError(f"{op}: pooled must be float32, got {pooled.dtype}")
    C = pooled.shape[1]
    m1 = _check_matrix(w1, None, C, op, "w1")
    S = m1.shape[0]
    m2 = _check_matrix(w2, C, S, op, "w2")
    if m2.dtype != m1.dtype:
        raise TypeError(f"{op}: w2 dtype {m2.dtype} does not match w1 dtype {m1.dtype}")
    for t, name in ((m1, "w1"), (m2, "w2")):
        if t.device != pooled.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but pooled is on {pooled.device}")
    _check_vector(b1, S, op, "b1", m1.dtype, pooled.device)
    _check_vector(b2, C, op, "b2", m1.dtype, pooled.device)
    b = _resolve_for_op(op, backend, pooled.device)
    if b in ("cuda", "cpu"):
        return torch.ops.effnet.se_gate(pooled, m1, b1, m2, b2)
    if b == "triton":
        from .triton import se as ts

        return ts.se_gate(pooled, m1, b1, m2, b2)
    return reference.se_gate(pooled, m1, b1, m2, b2)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   act: str = "identity", gate: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, pool_only: bool = False, *,
                   backend: str = "auto") -> torch.Tensor:
    """1×1 conv over channels_last x as a GEMM (N·H·W, Cin) × (Cin, Cout), fused:

    y = act((x · gate[n, cin]) @ Wᵀ + bias) + residual. ``gate`` (N, Cin) float32 scales the
    input on load (the SE excite; the scaled tensor is never written); ``residual``
    (N, Cout, H, W) channels_last in x's dtype. Returns y (N, Cout, H, W) channels_last in x's
    dtype, or with ``pool_only=True`` only the float32 (N, Cout) spatial mean of y (the head
    conv + BN + SiLU + global pool; y is never written). weight (Cout, Cin) or
    (Cout, Cin, 1, 1) and bias (Cout,) in x's dtype.
    """
    op = "pointwise_conv"
    _check_nhwc(x, op)
    N, Cin, H, W = x.shape
    w = _check_matrix(weight, None, Cin, op, "weight")
    Cout = w.shape[0]
    if w.dtype != x.dtype:
        raise TypeError(f"{op}: weight dtype {w.dtype} does not match x dtype {x.dtype}")
    if w.device != x.device:
        raise RuntimeError(f"{op}: weight is on {w.device} but x is on {x.device}")
    _check_vector(bias, Cout, op, "bias", x.dtype, x.device)
    _check_act(act, op)
    if gate is not None:
        _check_gate(gate, N, Cin, op, x.device)
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != (N, Cout, H, W):
            raise ValueError(f"{op}: residual must have shape ({N}, {Cout}, {H}, {W}), got "
                             f"{tuple(residual.shape) if isinstance(residual, torch.Tensor) else residual}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: residual dtype {residual.dtype} does not match x dtype "
                            f"{x.dtype}")
        if residual.device != x.device:
            raise RuntimeError(f"{op}: residual is on {residual.device} but x is on {x.device}")
        if not residual.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"{op}: residual must be channels_last contiguous")
    if pool_only and H * W == 0:
        raise ValueError(f"{op}: pool_only needs a non-empty spatial size, got {H}x{W}")
    b = _resolve_for_op(op, backend, x.device)
    if b == "cpu":
        return torch.ops.effnet.pointwise_conv(x, w, bias, act, gate, residual, pool_only)
    if b == "triton":
        from .triton import pointwise as tp

        return tp.pointwise_conv(x, w, bias, act, gate, residual, pool_only)
    return reference.pointwise_conv(x, w, bias, act, gate, residual, pool_only)


# ----------------------------------------------------------------------------- INT8 ops
# Contract and exact arithmetic: reference.py ("INT8"). Backends: dwconv_int8 has CUDA, Triton
# and the torch reference; pointwise_int8 Triton and the torch reference; there are no CPU (csrc)
# int8 kernels: on CPU tensors "auto" is the torch reference (the integer oracle).
_OP_BACKENDS.update({
    "dwconv_int8": ("cuda", "triton", "torch"),
    "pointwise_int8": ("triton", "torch"),
    "quantize_per_tensor": ("triton", "torch"),
})


def _resolve_int8(op: str, backend: str, device: torch.device) -> str:
    if backend == "auto" and device.type == "cpu":
        return "torch"
    return _resolve_for_op(op, backend, device)


def _check_int8_nhwc(x, op: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.int8:
        raise TypeError(f"{op}: {name} must be int8, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{op}: {name} must be channels_last contiguous "
                         "(use x.contiguous(memory_format=torch.channels_last))")


def _check_zp(zp, op: str, name: str) -> int:
    if isinstance(zp, bool) or not isinstance(zp, int) or not -128 <= zp <= 127:
        raise ValueError(f"{op}: {name} must be an int in [-128, 127], got {zp!r}")
    return zp


def _check_inv_scale(v, op: str, name: str) -> float:
    """A float > 0 that stays finite and > 0 as float32 (an inverse scale or a scale: the
    kernels and the reference use it as float32, so 1e39 (→ inf) and 1e-46 (→ 0) are refused)."""
    import math
    import struct

    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    if ok:
        try:
            f32 = struct.unpack("f", struct.pack("f", v))[0]
            ok = math.isfinite(f32) and f32 > 0
        except OverflowError:  # some Pythons raise instead of rounding to inf
            ok = False
    if not ok:
        raise ValueError(f"{op}: {name} must be a float > 0 that is finite and > 0 in "
                         f"float32, got {v!r}")
    return float(v)


def _check_qvec(v, n: int, op: str, name: str, device) -> None:
    _check_vector(v, n, op, name, torch.float32, device)


if _C is not None and hasattr(torch.ops.effnet, "dwconv_int8"):

    @torch.library.register_fake("effnet::dwconv_int8")
    def _dwconv_int8_fake(x, weight, scale, bias, stride, padding, in_zp, out_inv_scale, out_zp,
                          act, return_pool):
        N, C, H, W = x.shape
        Ho, Wo = dwconv_out_size(H, W, weight.shape[-1], stride, padding)
        y = x.new_empty((N, C, Ho, Wo)).contiguous(memory_format=torch.channels_last)
        pool = x.new_empty((N, C) if return_pool else (0,), dtype=torch.float32)
        return y, pool

    @torch.library.register_fake("effnet::pointwise_int8")
    def _pointwise_int8_fake(x, weight, scale, bias, in_zp, out_inv_scale, out_zp, act, gate,
                             residual, res_scale, res_zp, pool_only):
        N, _, H, W = x.shape
        if pool_only:
            return x.new_empty((N, weight.shape[0]), dtype=torch.float32)
        return x.new_empty((N, weight.shape[0], H, W)).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("effnet::quantize_per_tensor")
    def _quantize_per_tensor_fake(x, inv_scale, zp):
        q = x.new_empty(x.shape, dtype=torch.int8)
        return q.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else q


def dwconv_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                stride: int = 1, padding=None, in_zp: int = 0, out_inv_scale: float = 1.0,
                out_zp: int = 0, act: str = "silu", return_pool: bool = False, *,
                backend: str = "auto"):
    """INT8 depthwise k×k conv + bias + act + requantise (+ the SE pool), see
    ``reference.dwconv_int8``: x int8 channels_last (zero point ``in_zp``), weight int8
    (C, 1, k, k), scale = s_in·s_w[c] and bias float32 (C,); output int8 channels_last in
    (1/out_inv_scale, out_zp); with ``return_pool`` also the float32 (N, C) mean of the float
    activated values."""
    op = "dwconv_int8"
    _check_int8_nhwc(x, op)
    C = x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[0] != C \
            or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: weight must have shape ({C}, 1, k, k), got {shape}")
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"{op}: kernel size must be odd, got {k}")
    if weight.dtype != torch.int8:
        raise TypeError(f"{op}: weight must be int8, got {weight.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    _check_qvec(scale, C, op, "scale", x.device)
    _check_qvec(bias, C, op, "bias", x.device)
    _check_act(act, op)
    pads = _check_dw_geometry(x, k, stride, padding, op)
    in_zp, out_zp = _check_zp(in_zp, op, "in_zp"), _check_zp(out_zp, op, "out_zp")
    out_inv_scale = _check_inv_scale(out_inv_scale, op, "out_inv_scale")
    weight = weight.contiguous()
    b = _resolve_int8(op, backend, x.device)
    if b == "cuda":
        y, pool = torch.ops.effnet.dwconv_int8(x, weight, scale, bias, stride, list(pads), in_zp,
                                               out_inv_scale, out_zp, act, return_pool)
    elif b == "triton":
        from .triton import quant as tq

        y, pool = tq.dwconv_int8(x, weight, scale, bias, stride, pads, in_zp, out_inv_scale,
                                 out_zp, act, return_pool)
    else:
        out = reference.dwconv_int8(x, weight, scale, bias, stride, pads, in_zp, out_inv_scale,
                                    out_zp, act, return_pool)
        y, pool = out if return_pool else (out, None)
    return (y, pool) if return_pool else y


def pointwise_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor, in_zp: int = 0, out_inv_scale: float = 1.0,
                   out_zp: int = 0, act: str = "identity", gate: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, res_scale: float = 1.0,
                   res_zp: int = 0, pool_only: bool = False, *,
                   w_sum: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """INT8 1×1 conv (int8×int8→int32 GEMM) with the SE gate prologue and a dequantise + bias +
    act + residual + requantise epilogue, see ``reference.pointwise_int8``. x int8 channels_last
    (zero point ``in_zp``); weight int8 (Cout, Cin) (or (Cout, Cin, 1, 1)); scale =
    s_in·s_w[co] and bias float32 (Cout,); gate float32 (N, Cin); residual int8 channels_last
    in (res_scale, res_zp). Returns int8 y in (1/out_inv_scale, out_zp), or with ``pool_only``
    the float32 (N, Cout) spatial mean of the float epilogue values. ``w_sum`` (optional, int32
    (Cout,) = Σ_ci weight[co, ci], the zero-point correction) saves the Triton launcher
    computing it per call when the weights are constant."""
    op = "pointwise_int8"
    _check_int8_nhwc(x, op)
    N, Cin, H, W = x.shape
    w = _check_matrix(weight, None, Cin, op, "weight", dtypes=(torch.int8,))
    Cout = w.shape[0]
    if w.device != x.device:
        raise RuntimeError(f"{op}: weight is on {w.device} but x is on {x.device}")
    _check_qvec(scale, Cout, op, "scale", x.device)
    _check_qvec(bias, Cout, op, "bias", x.device)
    _check_act(act, op)
    in_zp, out_zp = _check_zp(in_zp, op, "in_zp"), _check_zp(out_zp, op, "out_zp")
    out_inv_scale = _check_inv_scale(out_inv_scale, op, "out_inv_scale")
    if gate is not None:
        _check_gate(gate, N, Cin, op, x.device)
    if residual is not None:
        _check_int8_nhwc(residual, op, "residual")
        if tuple(residual.shape) != (N, Cout, H, W):
            raise ValueError(f"{op}: residual must have shape ({N}, {Cout}, {H}, {W}), got "
                             f"{tuple(residual.shape)}")
        if residual.device != x.device:
            raise RuntimeError(f"{op}: residual is on {residual.device} but x is on {x.device}")
        res_zp = _check_zp(res_zp, op, "res_zp")
        res_scale = _check_inv_scale(res_scale, op, "res_scale")
    if pool_only and H * W == 0:
        raise ValueError(f"{op}: pool_only needs a non-empty spatial size, got {H}x{W}")
    if w_sum is not None:
        _check_vector(w_sum, Cout, op, "w_sum", torch.int32, x.device)
    b = _resolve_int8(op, backend, x.device)
    if b == "triton":
        from .triton import quant as tq

        return tq.pointwise_int8(x, w, scale, bias, in_zp, out_inv_scale, out_zp, act, gate,
                                 residual, float(res_scale), int(res_zp), pool_only,
                                 w_sum=w_sum)
    return reference.pointwise_int8(x, w, scale, bias, in_zp, out_inv_scale, out_zp, act, gate,
                                    residual, float(res_scale), int(res_zp), pool_only)


def quantize_per_tensor(x: torch.Tensor, inv_scale: float, zp: int, *,
                        backend: str = "auto") -> torch.Tensor:
    """Float x → int8 clamp(floor(x·inv_scale + 0.5) + zp, −128, 127), channels_last for 4-D x
    (``reference.requantize``): Triton or the torch reference ("auto" on the CPU: torch)."""
    op = "quantize_per_tensor"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    zp = _check_zp(zp, op, "zp")
    inv_scale = _check_inv_scale(inv_scale, op, "inv_scale")
    b = _resolve_int8(op, backend, x.device)
    if b == "triton":
        from .triton import quant as tq

        return tq.quantize_per_tensor(x, inv_scale, zp)
    return reference.quantize_per_tensor(x, inv_scale, zp)
