"""Drop-in inference modules built on ``effnet_kernels.ops``, and BN folding.

Each module follows one pattern (vLLM's CustomOp): it holds frozen, BN-folded weights, resolves
its backend once at construction (``extra_repr`` shows it), runs that backend in ``forward``, and
keeps ``forward_native`` (plain PyTorch, ``effnet_kernels.reference``) as the reference.
Modules accept NCHW or channels_last inputs (the ops need channels_last; a layout change is made
here if needed) and return channels_last outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops, reference

__all__ = ["fold_bn", "act_name", "FusedDWConvBNAct", "SqueezeExcite", "PointwiseConvBNAct"]

_ACT_TYPES = ((nn.SiLU, "silu"), (nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.Identity, "identity"))


def fold_bn(conv_weight: Tensor, bn: nn.modules.batchnorm._BatchNorm,
            conv_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold eval-mode BN into the preceding conv/linear (bias ``conv_bias``, default none).

    w' = w·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε); computed in float64, returned in the
    weight's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn needs BatchNorm running statistics (track_running_stats=True)")
    if conv_weight.shape[0] != bn.num_features:
        raise ValueError(
            f"conv has {conv_weight.shape[0]} output channels, BN has {bn.num_features}"
        )
    dev, f64, c = conv_weight.device, torch.float64, bn.num_features
    with torch.no_grad():
        gamma = (
            torch.ones(c, dtype=f64, device=dev) if bn.weight is None else bn.weight.to(dev, f64)
        )
        beta = torch.zeros(c, dtype=f64, device=dev) if bn.bias is None else bn.bias.to(dev, f64)
        scale = gamma / torch.sqrt(bn.running_var.to(dev, f64) + bn.eps)
        w = conv_weight.to(f64) * scale.view(-1, *([1] * (conv_weight.ndim - 1)))
        mean = bn.running_mean.to(dev, f64)
        if conv_bias is not None:
            mean = mean - conv_bias.detach().to(dev, f64)
        b = beta - mean * scale
    return w.to(conv_weight.dtype), b.to(conv_weight.dtype)


def act_name(act: nn.Module | str | None) -> str:
    """The ops' name for an activation module (SiLU, ReLU6, ReLU, Identity/None) or name."""
    if act is None:
        return "identity"
    if isinstance(act, str):
        if act not in ops.ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {ops.ACTIVATIONS}")
        return act
    for t, name in _ACT_TYPES:
        if isinstance(act, t):
            return name
    raise ValueError(f"unsupported activation module {type(act).__name__}; expected one of "
                     "nn.SiLU, nn.ReLU6, nn.ReLU, nn.Identity or None")


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max(((size + s - 1) // s - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class FusedDWConvBNAct(nn.Module):
    """Depthwise k×k conv + folded BN + activation (+ the SE squeeze) as one kernel.

    ``forward(x)`` returns y; ``forward(x, return_pool=True)`` returns ``(y, pool)`` with pool the
    float32 (N, C) spatial mean of y (``ops.dwconv_bias_act``). ``padding`` is ``"same"`` (TF,
    computed from each input's size), or ``(left, right, top, bottom)``.
    """

    def __init__(self, weight: Tensor, bias: Tensor, stride: int = 1, padding="symmetric",
                 act: str = "silu", backend: str = "auto") -> None:
        super().__init__()
        if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
            raise ValueError(f"weight must be (C, 1, k, k), got {tuple(weight.shape)}")
        k = weight.shape[-1]
        self.kernel_size, self.stride, self.act = k, int(stride), act_name(act)
        if padding == "same":
            self.padding = "same"
        else:
            self.padding = reference.normalize_padding(None if padding == "symmetric" else padding,
                                                       k)
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.backend = ops.resolve_backend(backend, weight.device)
        # Validate the configuration now, not at the first forward.
        probe = torch.empty(1, weight.shape[0], k, k, dtype=weight.dtype, device=weight.device)
        ops._check_dwconv(probe.contiguous(memory_format=torch.channels_last), self.weight,
                          self.bias, self.stride, self.padding if self.padding != "same" else None,
                          self.act)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None,
                     act: nn.Module | str | None = None, *, padding=None,
                     backend: str = "auto") -> FusedDWConvBNAct:
        """Fold ``bn`` (optional) into the depthwise ``conv`` and fuse ``act``.

        ``padding`` defaults to the conv's own (symmetric) padding; pass ``"same"`` for a conv
        that TF-"same" pads dynamically (timm's ``Conv2dSame`` is recognised), or an explicit
        ``(left, right, top, bottom)``.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be nn.Conv2d, got {type(conv).__name__}")
        C = conv.in_channels
        if conv.groups != C or conv.out_channels != C:
            raise ValueError(f"conv is not depthwise: groups={conv.groups}, in={C}, "
                             f"out={conv.out_channels} (need groups == in == out)")
        kh, kw = conv.kernel_size
        if kh != kw or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
            raise ValueError("only square kernels, square strides and dilation 1 are supported, "
                             f"got kernel {conv.kernel_size}, stride {conv.stride}, "
                             f"dilation {conv.dilation}")
        if padding is None:
            if type(conv).__name__ in ("Conv2dSame", "Conv2dSameExport"):  # timm, dynamic pad
                padding = "same"
            elif conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                raise ValueError(f"conv padding {conv.padding!r} with padding_mode "
                                 f"{conv.padding_mode!r} is not supported; pass padding=")
            else:
                ph, pw = conv.padding
                padding = (pw, pw, ph, ph)
        w, b = conv.weight.detach(), conv.bias
        if bn is not None:
            w, b = fold_bn(w, bn, b)
        elif b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        return cls(w, b, conv.stride[0], padding, act_name(act), backend)

    def _pads(self, x: Tensor) -> tuple[int, int, int, int]:
        if self.padding != "same":
            return self.padding
        k, s = self.kernel_size, self.stride
        return (*_same_pad(x.shape[-1], k, s), *_same_pad(x.shape[-2], k, s))

    def forward(self, x: Tensor, return_pool: bool = False):
        x = x.contiguous(memory_format=torch.channels_last)
        return ops.dwconv_bias_act(x, self.weight, self.bias, self.stride, self._pads(x), self.act,
                                   return_pool, backend=self.backend)

    def forward_native(self, x: Tensor, return_pool: bool = False):
        return reference.dwconv_bias_act(x, self.weight, self.bias, self.stride, self._pads(x),
                                         self.act, return_pool)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, act={self.act!r}, backend={self.backend!r}")


def _module_attr(m: nn.Module, *names):
    return next((getattr(m, n) for n in names if getattr(m, n, None) is not None), None)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: x · sigmoid(fc2(silu(fc1(mean_hw(x))))), the MLP as one kernel.

    ``forward(x)`` is the drop-in (returns the scaled x, channels_last); ``gate(pooled)`` returns
    just the (N, C) float32 gate from a precomputed pool — what the fused MBConv uses, with the
    pool from ``dwconv_bias_act(return_pool=True)`` and the gate applied inside the projection.
    """

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                 backend: str = "auto") -> None:
        super().__init__()
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            t = t.detach()
            self.register_buffer(name, (t.reshape(t.shape[0], -1) if t.dim() > 1 else t).clone())
        self.backend = ops._resolve_for_op("se_gate", backend, w1.device)
        ops.se_gate(torch.zeros(1, self.w1.shape[1], device=w1.device), self.w1, self.b1, self.w2,
                    self.b2, backend="torch")  # validate shapes now

    @classmethod
    def from_modules(cls, se: nn.Module, backend: str = "auto") -> SqueezeExcite:
        """From torchvision's ``SqueezeExcitation``, timm's ``SqueezeExcite`` or effnet_kernels'
        ``SqueezeExcitation`` (SiLU inside, sigmoid gate)."""
        fc1 = _module_attr(se, "fc1", "conv_reduce")
        fc2 = _module_attr(se, "fc2", "conv_expand")
        act = _module_attr(se, "activation", "act1", "act")
        if not isinstance(fc1, nn.Conv2d) or not isinstance(fc2, nn.Conv2d):
            raise TypeError(f"{type(se).__name__} is not a known SE module (need fc1/fc2 or "
                            "conv_reduce/conv_expand 1x1 convs)")
        if act is not None and act_name(act) != "silu":
            raise ValueError(f"SE activation must be SiLU, got {type(act).__name__}")
        gate = _module_attr(se, "scale_activation", "gate")
        if gate is not None and not (isinstance(gate, nn.Sigmoid) or gate is torch.sigmoid):
            raise ValueError(f"SE gate must be a sigmoid, got {gate!r}")
        z = lambda c: (c.bias.detach() if c.bias is not None  # noqa: E731
                       else torch.zeros(c.out_channels, dtype=c.weight.dtype,
                                        device=c.weight.device))
        return cls(fc1.weight, z(fc1), fc2.weight, z(fc2), backend)

    def gate(self, pooled: Tensor) -> Tensor:
        return ops.se_gate(pooled, self.w1, self.b1, self.w2, self.b2, backend=self.backend)

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x.float().mean((2, 3)))
        return (x * g[:, :, None, None].to(x.dtype)).contiguous(memory_format=torch.channels_last)

    def forward_native(self, x: Tensor) -> Tensor:
        g = reference.se_gate(x.float().mean((2, 3)), self.w1, self.b1, self.w2, self.b2)
        return (x * g[:, :, None, None].to(x.dtype)).contiguous(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        return f"{self.w1.shape[1]} -> {self.w1.shape[0]} -> {self.w2.shape[0]}, " \
               f"backend={self.backend!r}"


class PointwiseConvBNAct(nn.Module):
    """1×1 conv + folded BN + act as a fused GEMM (``ops.pointwise_conv``).

    ``forward(x, gate=None, residual=None, pool_only=False)``: ``gate`` (N, Cin) float32 scales
    the input on load (the SE excite), ``residual`` is added after the activation, and
    ``pool_only`` returns only the float32 (N, Cout) spatial mean (the head).
    """

    def __init__(self, weight: Tensor, bias: Tensor, act: str = "identity",
                 backend: str = "auto") -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().reshape(weight.shape[0], -1).clone())
        self.register_buffer("bias", bias.detach().clone())
        self.act = act_name(act)
        self.backend = ops._resolve_for_op("pointwise_conv", backend, weight.device)
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"bias must be ({self.weight.shape[0]},), got {tuple(bias.shape)}")

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None,
                     act: nn.Module | str | None = None, *,
                     backend: str = "auto") -> PointwiseConvBNAct:
        """Fold ``bn`` (optional) into the 1×1 ``conv`` (groups 1, stride 1, no padding)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be nn.Conv2d, got {type(conv).__name__}")
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 \
                or conv.padding not in ((0, 0), "valid"):
            raise ValueError("conv must be a 1x1, stride-1, groups-1 conv without padding, got "
                             f"kernel {conv.kernel_size}, stride {conv.stride}, groups "
                             f"{conv.groups}, padding {conv.padding}")
        w, b = conv.weight.detach(), conv.bias
        if bn is not None:
            w, b = fold_bn(w, bn, b)
        elif b is None:
            b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        return cls(w, b, act_name(act), backend)

    def forward(self, x: Tensor, gate: Tensor | None = None, residual: Tensor | None = None,
                pool_only: bool = False) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
        return ops.pointwise_conv(x, self.weight, self.bias, self.act, gate, residual, pool_only,
                                  backend=self.backend)

    def forward_native(self, x: Tensor, gate: Tensor | None = None,
                       residual: Tensor | None = None, pool_only: bool = False) -> Tensor:
        return reference.pointwise_conv(x, self.weight, self.bias, self.act, gate, residual,
                                        pool_only)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, act={self.act!r}, "
                f"backend={self.backend!r}")
