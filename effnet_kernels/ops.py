"""The ops: typed, validated wrappers over the registered operators.

Every op takes ``backend=`` (``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"``, ``"torch"``; see
:mod:`effnet_kernels.registry`, which decides what runs where). Arguments are validated here,
once, with the same messages for every backend (:mod:`effnet_kernels.checks`); then the op's
registered operator for that backend runs. The modules of :mod:`effnet_kernels.nn` bind an
operator once at construction and check only their input per call.

Float ops: ``bias_act``, ``dwconv_bias_act``, ``se_gate``, ``pointwise_conv``. INT8 ops (contract
and exact arithmetic: ``reference.py``, "INT8"): ``dwconv_int8``, ``pointwise_int8``,
``quantize_per_tensor``.
"""

from __future__ import annotations

import torch

from . import checks, registry
from .checks import ACTIVATIONS, FLOAT_DTYPES  # noqa: F401  (public names)
from .registry import (  # noqa: F401  (public names)
    cuda_kernels_built,
    dwconv_out_size,
    extension_available,
    extension_error,
    triton_importable,
    triton_interpreting,
)

BACKENDS = registry.CHOICES
available_backends = registry.device_backends
resolve_backend = registry.resolve_device
_C = registry._C


_OPERATORS: dict[tuple, torch._ops.OpOverload] = {}


def _impl(op: str, backend: str, device: torch.device):
    """The operator running ``op`` for ``backend`` on ``device`` (resolved once per device
    type; raises like ``registry.resolve``)."""
    key = (op, backend, device.type, registry.triton_interpreting())
    fn = _OPERATORS.get(key)
    if fn is None:
        fn = _OPERATORS[key] = registry.bind(op, backend, device).fn
    return fn


# ----------------------------------------------------------------------------- float ops
def bias_act(x: torch.Tensor, bias: torch.Tensor, act: str = "silu", *,
             backend: str = "auto") -> torch.Tensor:
    """y = act(x + bias[c]) for channels_last x (N, C, H, W); act in ``ACTIVATIONS``.

    float32 / float16 / bfloat16 in, same dtype out (channels_last), float32 math.
    """
    op = "bias_act"
    checks.nhwc(x, op)
    checks.vector(bias, x.shape[1], op, "bias", x.dtype, x.device)
    checks.act(act, op)
    return _impl(op, backend, x.device)(x, bias, act)


def check_dwconv(x, weight, bias, stride, padding, act) -> tuple[int, int, int, int]:
    """Every argument of ``dwconv_bias_act``; returns the normalised pads."""
    op = "dwconv_bias_act"
    checks.nhwc(x, op)
    k = checks.dw_weight(weight, x.shape[1], op, x.dtype, x.device)
    checks.vector(bias, x.shape[1], op, "bias", x.dtype, x.device)
    checks.act(act, op)
    return checks.dw_geometry(x.shape[2], x.shape[3], k, stride, padding, op)


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
    pads = check_dwconv(x, weight, bias, stride, padding, act)
    y, pool = _impl("dwconv_bias_act", backend, x.device)(x, weight, bias, stride, list(pads),
                                                          act, return_pool)
    return (y, pool) if return_pool else y


def check_se(pooled, w1, b1, w2, b2) -> tuple[torch.Tensor, torch.Tensor]:
    """Every argument of ``se_gate``; returns w1, w2 as matrices."""
    op = "se_gate"
    if not isinstance(pooled, torch.Tensor) or pooled.dim() != 2:
        raise ValueError(f"{op}: pooled must be 2-D (N, C), got {checks._shape(pooled)}")
    if pooled.dtype != torch.float32:
        raise TypeError(f"{op}: pooled must be float32, got {pooled.dtype}")
    C = pooled.shape[1]
    m1 = checks.matrix(w1, None, C, op, "w1")
    S = m1.shape[0]
    m2 = checks.matrix(w2, C, S, op, "w2")
    if m2.dtype != m1.dtype:
        raise TypeError(f"{op}: w2 dtype {m2.dtype} does not match w1 dtype {m1.dtype}")
    for t, name in ((m1, "w1"), (m2, "w2")):
        checks.same_device(t, pooled.device, op, name, "pooled")
    checks.vector(b1, S, op, "b1", m1.dtype, pooled.device)
    checks.vector(b2, C, op, "b2", m1.dtype, pooled.device)
    return m1, m2


def se_gate(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """SE excite: sigmoid(W2·silu(W1·pooled + b1) + b2) → (N, C) float32.

    pooled (N, C) float32 (``dwconv_bias_act(..., return_pool=True)``'s pool); w1 (S, C) and
    w2 (C, S) (1×1 conv weights with trailing 1, 1 accepted), b1 (S,), b2 (C,); the four weights
    share one float dtype. Math in float32.
    """
    m1, m2 = check_se(pooled, w1, b1, w2, b2)
    return _impl("se_gate", backend, pooled.device)(pooled, m1, b1, m2, b2)


def check_pointwise_weights(weight, bias, Cin: int, op: str, wdtype: torch.dtype,
                            bias_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 1×1 conv weight (Cout, Cin) (or (Cout, Cin, 1, 1)) of ``wdtype`` and its (Cout,) bias
    of ``bias_dtype``; returns the weight as a matrix."""
    dtypes = checks.INT8 if wdtype == torch.int8 else FLOAT_DTYPES
    w = checks.matrix(weight, None, Cin, op, "weight", dtypes=dtypes)
    if w.dtype != wdtype:
        raise TypeError(f"{op}: weight dtype {w.dtype} does not match x dtype {wdtype}")
    checks.same_device(w, device, op, "weight")
    checks.vector(bias, w.shape[0], op, "bias", bias_dtype, device)
    return w


def check_pointwise_input(x, Cout: int, gate, residual, pool_only: bool, op: str,
                          dtypes=FLOAT_DTYPES) -> None:
    """x, the gate and the residual of a pointwise op (weights checked separately)."""
    checks.nhwc(x, op, dtypes=dtypes)
    N, Cin, H, W = x.shape
    if gate is not None:
        checks.gate(gate, N, Cin, op, x.device)
    if residual is not None:
        checks.residual(residual, (N, Cout, H, W), op, x.dtype, x.device)
    checks.pool_only_size(H, W, pool_only, op)


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
    checks.nhwc(x, op)
    w = check_pointwise_weights(weight, bias, x.shape[1], op, x.dtype, x.dtype, x.device)
    checks.act(act, op)
    check_pointwise_input(x, w.shape[0], gate, residual, pool_only, op)
    return _impl(op, backend, x.device)(x, w, bias, act, gate, residual, pool_only)


# ----------------------------------------------------------------------------- INT8 ops
def check_qparams(op: str, **qp) -> list:
    """Zero points (``*_zp``) in [−128, 127] and scales (others) finite and > 0 in float32,
    in the order given."""
    return [checks.zero_point(v, op, k) if k.endswith("zp") else checks.positive_f32(v, op, k)
            for k, v in qp.items()]


def check_dwconv_int8(x, weight, scale, bias, stride, padding, act) -> tuple[int, int, int, int]:
    """The tensors, stride, padding and act of ``dwconv_int8``; returns the normalised pads."""
    op = "dwconv_int8"
    checks.nhwc(x, op, dtypes=checks.INT8)
    C = x.shape[1]
    k = checks.dw_weight(weight, C, op, torch.int8, x.device)
    checks.vector(scale, C, op, "scale", torch.float32, x.device)
    checks.vector(bias, C, op, "bias", torch.float32, x.device)
    checks.act(act, op)
    return checks.dw_geometry(x.shape[2], x.shape[3], k, stride, padding, op)


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
    pads = check_dwconv_int8(x, weight, scale, bias, stride, padding, act)
    in_zp, out_inv_scale, out_zp = check_qparams(op, in_zp=in_zp, out_inv_scale=out_inv_scale,
                                                 out_zp=out_zp)
    y, pool = _impl(op, backend, x.device)(x, weight.contiguous(), scale, bias, stride,
                                           list(pads), in_zp, out_inv_scale, out_zp, act,
                                           return_pool)
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
    (Cout,) = Σ_ci weight[co, ci], the zero-point correction) saves the Triton kernel computing
    it per call when the weights are constant (other backends ignore it)."""
    op = "pointwise_int8"
    checks.nhwc(x, op, dtypes=checks.INT8)
    w = check_pointwise_weights(weight, bias, x.shape[1], op, torch.int8, torch.float32,
                                x.device)
    Cout = w.shape[0]
    checks.vector(scale, Cout, op, "scale", torch.float32, x.device)
    checks.act(act, op)
    in_zp, out_inv_scale, out_zp = check_qparams(op, in_zp=in_zp, out_inv_scale=out_inv_scale,
                                                 out_zp=out_zp)
    check_pointwise_input(x, Cout, gate, residual, pool_only, op, dtypes=checks.INT8)
    if residual is not None:
        res_scale, res_zp = check_qparams(op, res_scale=res_scale, res_zp=res_zp)
    if w_sum is not None:
        checks.vector(w_sum, Cout, op, "w_sum", torch.int32, x.device)
    fn = _impl(op, backend, x.device)
    args = (x, w, scale, bias, in_zp, out_inv_scale, out_zp, act, gate, residual,
            float(res_scale), int(res_zp), pool_only)
    return fn(*args, w_sum) if fn.namespace == "effnet_triton" else fn(*args)


def quantize_per_tensor(x: torch.Tensor, inv_scale: float, zp: int, *,
                        backend: str = "auto") -> torch.Tensor:
    """Float x → int8 clamp(floor(x·inv_scale + 0.5) + zp, −128, 127), channels_last for 4-D x
    (``reference.requantize``)."""
    op = "quantize_per_tensor"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    inv_scale, zp = check_qparams(op, inv_scale=inv_scale, zp=zp)
    return _impl(op, backend, x.device)(x, inv_scale, zp)
