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
