"""Plain-PyTorch versions of every op: the test oracle (run in float64) and the "torch" backend.

Each function takes the same arguments as its namesake in ``effnet_kernels.ops`` and follows the
same numerics contract: float16/bfloat16/float32 inputs are computed in float32 and cast back,
float64 inputs stay float64 (that is the oracle). Outputs are channels_last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "relu6", "relu", "identity")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def apply_act(v: torch.Tensor, act: str) -> torch.Tensor:
    """act(v) for one of ``ACTIVATIONS``."""
    if act == "silu":
        return F.silu(v)
    if act == "relu6":
        return v.clamp(0.0, 6.0)
    if act == "relu":
        return v.clamp_min(0.0)
    if act == "identity":
        return v
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def bias_act(x: torch.Tensor, bias: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """y = act(x + bias[c]) for x (N, C, H, W); channels_last output in x's dtype."""
    ct = _compute_dtype(x)
    y = apply_act(x.to(ct) + bias.to(ct).view(1, -1, 1, 1), act)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


def conv_pads(mode: str, h: int, w: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a k×k conv with ``stride`` on an h×w input:
    ``"symmetric"`` pads (k−1)/2 on every side (torchvision, timm); ``"same"`` pads like
    TensorFlow: max((ceil(x/s) − 1)·s + k − x, 0) in all per axis, the extra pixel right/bottom."""
    if mode == "symmetric":
        p = (kernel - 1) // 2
        return (p, p, p, p)
    if mode != "same":
        raise ValueError(f"padding mode must be 'symmetric' or 'same', got {mode!r}")
    th, tw = (max(((x + stride - 1) // stride - 1) * stride + kernel - x, 0) for x in (h, w))
    return (tw // 2, tw - tw // 2, th // 2, th - th // 2)


def normalize_padding(padding, kernel: int) -> tuple[int, int, int, int]:
    """``None`` → symmetric (k−1)/2; an int p → (p, p, p, p); else (left, right, top, bottom)."""
    if padding is None:
        p = (kernel - 1) // 2
        return (p, p, p, p)
    if isinstance(padding, int):
        return (padding,) * 4
    pads = tuple(int(p) for p in padding)
    if len(pads) != 4:
        raise ValueError(f"padding must be None, an int or (left, right, top, bottom), got {padding!r}")
    return pads


def dwconv_bias_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1,
                    padding=None, act: str = "silu", return_pool: bool = False):
    """Depthwise k×k conv (weight (C, 1, k, k), BN folded into weight/bias) + bias + act.

    Zero padding ``(left, right, top, bottom)``; returns y (channels_last, x's dtype) and, with
    ``return_pool``, also the float32 (float64 for float64 input) (N, C) spatial mean of y as
    computed before the cast to x's dtype.
    """
    ct = _compute_dtype(x)
    k = weight.shape[-1]
    left, right, top, bottom = normalize_padding(padding, k)
    xp = F.pad(x.to(ct), (left, right, top, bottom))
    v = F.conv2d(xp, weight.to(ct), bias.to(ct), stride=stride, groups=x.shape[1])
    v = apply_act(v, act)
    y = v.to(x.dtype).contiguous(memory_format=torch.channels_last)
    if not return_pool:
        return y
    return y, v.mean(dim=(2, 3)).to(torch.float64 if ct == torch.float64 else torch.float32)


def se_gate(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor) -> torch.Tensor:
    """gate = sigmoid(W2·silu(W1·pooled + b1) + b2): (N, C) float32 (float64 for float64 input).

    pooled (N, C); w1 (S, C) (or (S, C, 1, 1)), b1 (S,), w2 (C, S) (or (C, S, 1, 1)), b2 (C,).
    """
    ct = _compute_dtype(pooled)
    h = F.silu(pooled.to(ct) @ w1.reshape(w1.shape[0], -1).to(ct).t() + b1.to(ct))
    return torch.sigmoid(h @ w2.reshape(w2.shape[0], -1).to(ct).t() + b2.to(ct))


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   act: str = "identity", gate: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, pool_only: bool = False) -> torch.Tensor:
    """1×1 conv as a GEMM: y = act((x · gate[n, cin]) @ Wᵀ + bias) + residual.

    x (N, Cin, H, W); weight (Cout, Cin) or (Cout, Cin, 1, 1); gate (N, Cin) or None;
    residual (N, Cout, H, W) or None. Returns y channels_last in x's dtype, or with
    ``pool_only`` just the float32 (N, Cout) spatial mean of y (before any cast).
    """
    ct = _compute_dtype(x)
    xs = x.to(ct)
    if gate is not None:
        xs = xs * gate.to(ct)[:, :, None, None]
    w = weight.reshape(weight.shape[0], -1).to(ct)
    v = apply_act(F.conv2d(xs, w[:, :, None, None], bias.to(ct)), act)
    if residual is not None:
        v = v + residual.to(ct)
    if pool_only:
        return v.mean(dim=(2, 3)).to(torch.float64 if ct == torch.float64 else torch.float32)
    return v.to(x.dtype).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- INT8
# The exact integer reference of the INT8 ops (the oracle for their CUDA and Triton kernels, and
# the "torch" backend of ek.quantize). Conventions, shared by every implementation:
#
# * An activation tensor is int8 with one (scale, zero point) per tensor: real = scale·(q − zp),
#   −128 ≤ zp ≤ 127. Real 0 is exactly zp, so zero padding is "skip the tap".
# * A weight is int8, symmetric per output channel (depthwise: per channel), in [−127, 127]; the
#   ops take ``scale[c] = s_in · s_w[c]`` (float32), so dequantising an int32 accumulator is one
#   multiply.
# * requantise(v) = clamp(floor(v · inv_scale + 0.5) + zp, −128, 127), v and inv_scale float32,
#   each step rounded to float32 in this order (round half up, not half to even).
# * Accumulation is exact: the integer products Σ (q − zp)·w are computed here with float
#   convolutions that cannot round (float32 over at most 514 products per chunk — every partial
#   sum is an integer below 2²⁴ — float64 otherwise) and converted to int32; kernels use int32.
#   Everything after the accumulator (scale, bias, act, residual, requantise, pool) is float32.
#   A kernel whose float32 epilogue contracts a multiply-add into an FMA can differ from this
#   reference by one step of rounding at exact ties: kernels must match it within 1 LSB.
#
# Inputs are assumed validated (effnet_kernels.ops checks them).
QMIN, QMAX = -128, 127


def requantize(v: torch.Tensor, inv_scale: float, zp: int) -> torch.Tensor:
    """int8 clamp(floor(v·inv_scale + 0.5) + zp, −128, 127) of float32 ``v`` (layout kept)."""
    t = torch.floor(v.float() * torch.tensor(inv_scale, dtype=torch.float32) + 0.5)
    return (t + zp).clamp_(QMIN, QMAX).to(torch.int8)


def quantize_per_tensor(x: torch.Tensor, inv_scale: float, zp: int) -> torch.Tensor:
    """Float x → int8 with ``requantize`` (channels_last when x is 4-D)."""
    q = requantize(x, inv_scale, zp)
    return q.contiguous(memory_format=torch.channels_last) if q.dim() == 4 else q.contiguous()


def dequantize(q: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """float32 scale·(q − zp)."""
    return (q.to(torch.int32) - zp).float() * torch.tensor(scale, dtype=torch.float32)


# Largest number of int8 products whose float32 sum is exact in any order: every partial sum of
# n terms |(x − zp)·w| ≤ 255·128 stays below 2²⁴ for n ≤ 514.
_F32_EXACT_TERMS = (1 << 24) // (255 * 128)


def _exact_conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, groups: int = 1
                ) -> torch.Tensor:
    """conv2d of integer-valued tensors, exactly: float32 (fast) while each output sums at most
    ``_F32_EXACT_TERMS`` products (chunks of input channels otherwise, their exact float32
    results added in int32), float64 beyond."""
    terms = w.shape[1] * w.shape[2] * w.shape[3]
    if terms <= _F32_EXACT_TERMS:
        return F.conv2d(x.float(), w.float(), stride=stride, groups=groups).to(torch.int32)
    if groups == 1 and w.shape[2] * w.shape[3] == 1 and stride == 1:
        # a 1×1 conv: (N·H·W, Cin) @ (Cin, Cout) in K chunks, each exact in float32
        N, C, H, W = x.shape
        xm = x.permute(0, 2, 3, 1).reshape(-1, C).float()
        wt = w.reshape(w.shape[0], C).t().float()
        step = _F32_EXACT_TERMS
        acc = None
        for c0 in range(0, C, step):
            part = (xm[:, c0:c0 + step] @ wt[c0:c0 + step]).to(torch.int32)
            acc = part if acc is None else acc.add_(part)
        return acc.reshape(N, H, W, -1).permute(0, 3, 1, 2)
    return F.conv2d(x.double(), w.double(), stride=stride, groups=groups).round().to(torch.int32)


def dwconv_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                stride: int, padding, in_zp: int, out_inv_scale: float, out_zp: int,
                act: str = "silu", return_pool: bool = False):
    """INT8 depthwise k×k conv + bias + act + requantise (+ the SE pool).

    x int8 (N, C, H, W) channels_last with zero point ``in_zp``; weight int8 (C, 1, k, k);
    scale, bias float32 (C,)::

        acc[n, c, p] = Σ_{taps inside the image} (x − in_zp) · w            (int32, exact)
        a = act(acc · scale[c] + bias[c])                                   (float32)
        y = requantize(a, out_inv_scale, out_zp)                            (int8, channels_last)
        pool[n, c] = mean over p of a                                       (float32)

    Returns y, or (y, pool) with ``return_pool``.
    """
    k = weight.shape[-1]
    left, right, top, bottom = normalize_padding(padding, k)
    xc = F.pad(x.to(torch.int32) - in_zp, (left, right, top, bottom))  # padding: real 0
    acc = _exact_conv(xc, weight, stride=stride, groups=x.shape[1])
    v = acc.float() * scale.float().view(1, -1, 1, 1) + bias.float().view(1, -1, 1, 1)
    a = apply_act(v, act)
    y = requantize(a, out_inv_scale, out_zp).contiguous(memory_format=torch.channels_last)
    if not return_pool:
        return y
    return y, a.mean(dim=(2, 3))


def gate_int8(x: torch.Tensor, gate: torch.Tensor, zp: int) -> torch.Tensor:
    """The SE gate applied to int8 x in its own quantisation (same scale and zero point):
    clamp(floor((x − zp)·gate[n, c] + 0.5) + zp, −128, 127). gate (N, C) float32 in [0, 1]."""
    t = torch.floor((x.to(torch.int32) - zp).float() * gate.float()[:, :, None, None] + 0.5)
    return (t + zp).clamp_(QMIN, QMAX).to(torch.int8)


def pointwise_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor, in_zp: int, out_inv_scale: float, out_zp: int,
                   act: str = "identity", gate: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, res_scale: float = 1.0,
                   res_zp: int = 0, pool_only: bool = False) -> torch.Tensor:
    """INT8 1×1 conv as a GEMM with the SE gate prologue and a requantising epilogue.

    x int8 (N, Cin, H, W) channels_last (zero point ``in_zp``); weight int8 (Cout, Cin) (or
    (Cout, Cin, 1, 1)); scale, bias float32 (Cout,); gate float32 (N, Cin) or None; residual
    int8 (N, Cout, H, W) channels_last with (res_scale, res_zp) or None::

        xg = gate_int8(x, gate, in_zp) if gate is given else x                 (int8)
        acc[m, co] = Σ_ci (xg − in_zp) · w[co, ci]                             (int32, exact)
        a = act(acc · scale[co] + bias[co]) + res_scale · (residual − res_zp)  (float32)
        y = requantize(a, out_inv_scale, out_zp)                               (int8)

    Returns y (N, Cout, H, W) channels_last, or with ``pool_only`` the float32 (N, Cout)
    spatial mean of ``a`` (out_inv_scale / out_zp unused).
    """
    xg = gate_int8(x, gate, in_zp) if gate is not None else x
    w = weight.reshape(weight.shape[0], -1)
    acc = _exact_conv(xg.to(torch.int32) - in_zp, w[:, :, None, None])
    a = apply_act(acc.float() * scale.float().view(1, -1, 1, 1)
                  + bias.float().view(1, -1, 1, 1), act)
    if residual is not None:
        a = a + dequantize(residual, res_scale, res_zp)
    if pool_only:
        return a.mean(dim=(2, 3))
    return requantize(a, out_inv_scale, out_zp).contiguous(memory_format=torch.channels_last)
