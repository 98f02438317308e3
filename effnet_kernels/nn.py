"""Drop-in inference modules built on ``effnet_kernels.ops``, and BN folding.

Each module follows one pattern (vLLM's CustomOp): it holds frozen, BN-folded weights, validates
them and binds its op's operator once at construction (``registry.bind``; ``extra_repr`` shows
the backend), checks only its input per call, and keeps ``forward_native`` (plain PyTorch,
``effnet_kernels.reference``) as the reference.
Modules accept NCHW or channels_last inputs (the ops need channels_last; a layout change is made
here if needed) and return channels_last outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

from . import checks, ops, reference, registry

__all__ = ["fold_bn", "act_name", "call", "run_sequential", "BoundOp", "FusedDWConvBNAct", "SqueezeExcite",
           "PointwiseConvBNAct"]

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


def input_ok(x, w: Tensor, channels: int) -> bool:
    """The common case of a module's input in a few attribute reads: a 4-D tensor with the
    layer's dtype, device and channel count (the full checks run only when this is False, to
    raise the precise error; the layout is made channels_last by the caller)."""
    return isinstance(x, Tensor) and x.dtype == w.dtype and x.dim() == 4 and \
        x.shape[1] == channels and x.device == w.device


def pointwise_extras_ok(x: Tensor, w: Tensor, gate, residual, pool_only: bool) -> bool:
    """A pointwise layer's gate, residual and pool_only in their common case (see
    ``input_ok``); ``w`` is the (Cout, Cin) weight. Also used by the int8 layers."""
    N, _, H, W = x.shape
    return (gate is None or (isinstance(gate, Tensor) and gate.dtype == torch.float32
                             and gate.shape == (N, w.shape[1]) and gate.device == x.device)) \
        and (residual is None or (isinstance(residual, Tensor) and residual.dtype == x.dtype
                                  and residual.shape == (N, w.shape[0], H, W)
                                  and residual.device == x.device)) \
        and not (pool_only and H * W == 0)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks)


def call(m: nn.Module, *args, **kwargs):
    """``m(*args, **kwargs)``, through ``m.forward`` directly when no forward hook (on ``m`` or
    global) could see the difference: the fused containers call their layers this way and save
    ``nn.Module.__call__``'s bookkeeping (~0.6 µs a call, ~75 calls per B0 forward). With a
    hook (calibration, analysis, a user's), the ordinary call."""
    return m(*args, **kwargs) if _hooked(m) else m.forward(*args, **kwargs)


def run_sequential(seq: nn.Sequential, x):
    """``seq(x)`` for nested ``nn.Sequential`` containers, each layer through ``call``."""
    if _hooked(seq):
        return seq(x)
    for m in seq:
        x = run_sequential(m, x) if type(m) is nn.Sequential else call(m, x)
    return x


def as_nhwc(x):
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, Tensor) and \
        x.dim() == 4 else x


class BoundOp(nn.Module):
    """A module that runs the op ``op`` through the operator ``bind`` chose once (the backend
    resolved by ``registry.bind`` for the module's device; ``self.backend`` names it).

    Moving the module to another device type (``.to()``, ``.cuda()``, ``.cpu()``) binds again
    for the new device with the backend asked for: ``"auto"`` picks that device's best, an
    explicit backend that cannot run there makes every call raise the registry's error (never a
    silent switch to another backend). Forwards read their tensors through ``self._buffers`` (one
    dict lookup, and always the module's current tensors, also under ``functional_call``)."""

    op: str

    def bind(self, backend: str, device: torch.device | None = None, *,
             substitute: bool = False) -> None:
        device = torch.device(device) if device is not None else next(self.buffers()).device
        self._requested = (backend, substitute)
        self._bound_device_type = device.type
        try:
            bound = registry.bind(self.op, backend, device, substitute=substitute)
        except RuntimeError as e:
            if not getattr(self, "_moving", False):
                raise
            self.backend, self._fn = backend, _raiser(f"{self.op} moved to {device}: {e}")
            return
        self.backend, self._fn = bound.backend, bound.fn

    def rebind_as(self, backend: str, substitute: bool = False) -> None:
        """What a later device move binds again for: a model built for ``backend`` (resolved
        per op by the registry, e.g. "auto") gives its modules that request, not the concrete
        backend it resolved to on the first device."""
        self._requested = (backend, substitute)

    def __getstate__(self):
        # pickle / deepcopy: the bound operator is a handle, not data (pybind functions do not
        # pickle); __setstate__ binds the same backend again.
        state = self.__dict__.copy()
        state.pop("_fn", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        ref = next(iter(self._buffers.values()), None)
        if ref is None or "backend" not in state:
            return
        try:
            self._fn = registry.bind(self.op, self.backend, ref.device).fn
        except RuntimeError as e:  # e.g. unpickled where that backend is missing
            self._fn = _raiser(f"{self.op} (unpickled): {e}")

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        device = next(self.buffers(), None)
        if device is not None and hasattr(self, "_requested") \
                and device.device.type != self._bound_device_type:
            self._moving = True
            try:
                self.bind(self._requested[0], device.device, substitute=self._requested[1])
            finally:
                self._moving = False
        return out


def _raiser(message: str):
    def fn(*args, **kwargs):
        raise RuntimeError(message)
    return fn


class FusedDWConvBNAct(BoundOp):
    """Depthwise k×k conv + folded BN + activation (+ the SE squeeze) as one kernel.

    ``forward(x)`` returns y; ``forward(x, return_pool=True)`` returns ``(y, pool)`` with pool the
    float32 (N, C) spatial mean of y (``ops.dwconv_bias_act``). ``padding`` is ``"same"`` (TF,
    computed from each input's size), or ``(left, right, top, bottom)``.
    """

    op = "dwconv_bias_act"

    def __init__(self, weight: Tensor, bias: Tensor, stride: int = 1, padding="symmetric",
                 act: str = "silu", backend: str = "auto", *, substitute: bool = False) -> None:
        super().__init__()
        if not isinstance(weight, Tensor) or weight.dim() != 4 or weight.shape[1] != 1 \
                or weight.shape[2] != weight.shape[3]:
            raise ValueError(f"weight must be (C, 1, k, k), got {checks._shape(weight)}")
        if weight.dtype not in checks.FLOAT_DTYPES:
            raise TypeError(f"{self.op}: weight must be one of {checks.FLOAT_DTYPES}, got "
                            f"{weight.dtype}")
        self.kernel_size = checks.dw_weight(weight, weight.shape[0], self.op, weight.dtype,
                                            weight.device)
        self.stride, self.act = checks.stride(stride, self.op), act_name(act)
        checks.vector(bias, weight.shape[0], self.op, "bias", weight.dtype, weight.device)
        k = self.kernel_size
        self.padding = "same" if padding == "same" else reference.normalize_padding(
            None if padding == "symmetric" else padding, k)
        if self.padding != "same":
            checks.dw_geometry(k, k, k, self.stride, self.padding, self.op)  # pads in [0, k-1]
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.bind(backend, substitute=substitute)
        self._pads_cache: dict[torch.Size, list[int]] = {}

    def _pads(self, x: Tensor) -> list[int]:
        """The (left, right, top, bottom) pads for x's size, checked once per size."""
        size = x.shape[2:]
        pads = self._pads_cache.get(size)
        if pads is None:
            H, W = size
            p = (reference.conv_pads("same", H, W, self.kernel_size, self.stride)
                 if self.padding == "same" else self.padding)
            pads = list(checks.dw_geometry(H, W, self.kernel_size, self.stride, p, self.op))
            self._pads_cache[size] = pads
        return pads

    def _check_input(self, x: Tensor) -> None:
        w = self.weight
        checks.nhwc(x, self.op, dtypes=(w.dtype,))
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"{self.op}: x has {x.shape[1]} channels, the layer {w.shape[0]}")
        checks.same_device(x, w.device, self.op, "x", "the layer")

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

    def forward(self, x: Tensor, return_pool: bool = False):
        buf = self._buffers
        w = buf["weight"]
        if not input_ok(x, w, w.shape[0]):
            self._check_input(as_nhwc(x))  # raises
        x = x.contiguous(memory_format=torch.channels_last)
        y, pool = self._fn(x, w, buf["bias"], self.stride, self._pads(x), self.act, return_pool)
        return (y, pool) if return_pool else y

    def forward_native(self, x: Tensor, return_pool: bool = False):
        return reference.dwconv_bias_act(x, self.weight, self.bias, self.stride, self._pads(x),
                                         self.act, return_pool)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, act={self.act!r}, backend={self.backend!r}")


def _module_attr(m: nn.Module, *names):
    return next((getattr(m, n) for n in names if getattr(m, n, None) is not None), None)


class SqueezeExcite(BoundOp):
    """Squeeze-and-excitation: x · sigmoid(fc2(silu(fc1(mean_hw(x))))), the MLP as one kernel.

    ``forward(x)`` is the drop-in (returns the scaled x, channels_last); ``gate(pooled)`` returns
    just the (N, C) float32 gate from a precomputed pool — what the fused MBConv uses, with the
    pool from ``dwconv_bias_act(return_pool=True)`` and the gate applied inside the projection.
    """

    op = "se_gate"

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                 backend: str = "auto") -> None:
        super().__init__()
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            t = t.detach()
            self.register_buffer(name, (t.reshape(t.shape[0], -1) if t.dim() > 1 else t).clone())
        ops.check_se(torch.zeros(1, self.w1.shape[1], device=w1.device), self.w1, self.b1,
                     self.w2, self.b2)  # validate the weights now
        self.bind(backend)

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
        buf = self._buffers
        w1 = buf["w1"]
        if not (isinstance(pooled, Tensor) and pooled.dtype == torch.float32
                and pooled.dim() == 2 and pooled.shape[1] == w1.shape[1]
                and pooled.device == w1.device):
            C = w1.shape[1]
            if not isinstance(pooled, Tensor) or pooled.dim() != 2 or pooled.shape[1] != C \
                    or pooled.dtype != torch.float32:
                raise ValueError(f"se_gate: pooled must be float32 (N, {C}), got "
                                 f"{checks._shape(pooled)} {getattr(pooled, 'dtype', '')}")
            checks.same_device(pooled, w1.device, "se_gate", "pooled", "the layer")
        return self._fn(pooled, w1, buf["b1"], buf["w2"], buf["b2"])

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x.float().mean((2, 3)))
        return (x * g[:, :, None, None].to(x.dtype)).contiguous(memory_format=torch.channels_last)

    def forward_native(self, x: Tensor) -> Tensor:
        g = reference.se_gate(x.float().mean((2, 3)), self.w1, self.b1, self.w2, self.b2)
        return (x * g[:, :, None, None].to(x.dtype)).contiguous(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        return f"{self.w1.shape[1]} -> {self.w1.shape[0]} -> {self.w2.shape[0]}, " \
               f"backend={self.backend!r}"


class PointwiseConvBNAct(BoundOp):
    """1×1 conv + folded BN + act as a fused GEMM (``ops.pointwise_conv``).

    ``forward(x, gate=None, residual=None, pool_only=False)``: ``gate`` (N, Cin) float32 scales
    the input on load (the SE excite), ``residual`` is added after the activation, and
    ``pool_only`` returns only the float32 (N, Cout) spatial mean (the head).
    """

    op = "pointwise_conv"

    def __init__(self, weight: Tensor, bias: Tensor, act: str = "identity",
                 backend: str = "auto", *, substitute: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().reshape(weight.shape[0], -1).clone())
        self.register_buffer("bias", bias.detach().clone())
        self.act = act_name(act)
        w = self.weight
        ops.check_pointwise_weights(w, self.bias, w.shape[1], self.op, w.dtype, w.dtype,
                                    w.device)
        self.bind(backend, substitute=substitute)

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
        buf = self._buffers
        w = buf["weight"]
        if residual is not None:
            residual = as_nhwc(residual)
        if not (input_ok(x, w, w.shape[1])
                and pointwise_extras_ok(x, w, gate, residual, pool_only)):
            self._check_input(as_nhwc(x), gate, residual, pool_only)  # raises
        x = x.contiguous(memory_format=torch.channels_last)
        return self._fn(x, w, buf["bias"], self.act, gate, residual, pool_only)

    def _check_input(self, x, gate, residual, pool_only: bool) -> None:
        w = self.weight
        checks.nhwc(x, self.op, dtypes=(w.dtype,))
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"{self.op}: x has {x.shape[1]} channels, the layer {w.shape[1]}")
        checks.same_device(x, w.device, self.op, "x", "the layer")
        ops.check_pointwise_input(x, w.shape[0], gate, residual, pool_only, self.op)

    def forward_native(self, x: Tensor, gate: Tensor | None = None,
                       residual: Tensor | None = None, pool_only: bool = False) -> Tensor:
        return reference.pointwise_conv(x, self.weight, self.bias, self.act, gate, residual,
                                        pool_only)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, act={self.act!r}, "
                f"backend={self.backend!r}")
