"""Memory-efficient training ops: ``torch.ops.effnet_train.*`` with autograd and fake kernels.

The trainable fused model (:mod:`effnet_kernels.training`) never stores an activated tensor
between layers. Every conv output ``z`` (before its BatchNorm) is what flows to the next layer,
together with that BatchNorm's per-channel ``(mean, scale, beta)``; the consumer applies the
"BN-act prologue" ``act((z − mean)·scale + beta)`` on load and recomputes it in backward. So
what autograd saves per MBConv block is the block input, the expand and the depthwise conv
outputs and the projection output — never the BN output, the activation, the SE-scaled tensor
or the head activation map (eager PyTorch saves each of those too).

The ops (schemas in ``SCHEMAS``; float32 math for fp16/bf16/fp32, float64 stays float64; the
statistics, ``mean``/``scale``/``beta`` and the SE pool and gate are float32 (float64 for
float64 input); 4-D tensors channels_last):

* ``batch_stats(z) -> (mean, var)``: per-channel mean and biased variance over (N, H, W).

Every op except ``se_gate`` also takes ``backend`` ("auto", "cpu", "triton", "torch"; see
``BACKENDS``).
* ``bn_act(z, mean, scale, beta, act, residual?) -> y``: ``act((z − mean)·scale + beta)
  [+ residual]`` (a block's output: projection BN + residual; the stem when it is needed).
* ``bn_act_pool(z, mean, scale, beta, act) -> pool``: the (N, C) spatial mean of the same
  (the SE squeeze, and the head: conv_head BN + act + global pool), the map never written.
* ``dwconv(x, weight, mean?, scale?, beta?, act, stride, padding) -> z``: depthwise k×k conv
  (no bias) of ``prologue(x)``, zero padding ``(left, right, top, bottom)``.
* ``pwconv(x, weight, mean?, scale?, beta?, act, gate?) -> z``: 1×1 conv as a GEMM of
  ``prologue(x) · gate[n, c]`` (the SE excite applied on load, in backward too).
* ``se_gate(pool, w1, b1, w2, b2) -> gate``: ``sigmoid(W2·silu(W1·pool + b1) + b2)``.

``prologue(x)`` is ``x`` when ``mean`` is None. Saved for backward: the 4-D input of each op
(``z`` or ``x``) and the per-channel vectors; backward recomputes the prologue, the activation
and the gated input. BatchNorm in training mode is then the composition ``batch_stats`` →
``scale = γ/√(var + ε)`` → prologue, whose autograd gradient is BatchNorm's.

**Implementation status.** Fused C++ CPU kernels (backend ``"cpu"``, and ``"auto"`` on
float32 CPU tensors): ``effnet::bn_act_apply`` — the BN-act prologue (+ the SE gate) in one
pass, forward and its recomputation in backward —, ``effnet::bn_act_backward`` — its backward
in one pass —, ``effnet::batch_stats`` and its backward ``effnet::batch_stats_backward`` (one pass
instead of four), and the depthwise conv with its input's prologue fused,
``effnet::dwconv_train`` / ``effnet::dwconv_train_backward`` (the activated input never
written: forward through a ring of activated rows and the engine's AVX-512 / AVX2 depthwise row
kernel; backward dx, dweight, dscale, dbeta in one pass over x and dz; float64 too on "cpu", for
gradcheck). Two Triton kernels with the same contracts
(``effnet_kernels/triton/train.py``, operators ``torch.ops.effnet_train_triton.*``; backend
``"triton"``, and ``"auto"`` on CUDA tensors), tested through the interpreter, **not yet run on
a GPU**. Everything else is an ATen composition (the 1×1 convs' matmul, the depthwise conv
on the other backends — F.conv2d and ``aten.convolution_backward`` —, the pool's mean, the
residual add, the SE MLP, and on a GPU the statistics); backend ``"torch"`` is ATen only. No CUDA C++ training kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import ACTIVATIONS, apply_act

__all__ = ["SCHEMAS", "BACKENDS", "batch_stats", "bn_act", "bn_act_pool", "dwconv", "pwconv",
           "se_gate", "act_grad"]

# The C++ CPU kernels of the "cpu" backend (csrc/<name>/<name>_cpu.cpp).
CPU_KERNELS = ("bn_act_apply", "bn_act_backward", "batch_stats", "batch_stats_backward",
               "dwconv_train", "dwconv_train_backward")


def _has_cpu_kernel() -> bool:
    from . import registry

    return all(registry._has_cpp_kernel(op, "CPU") for op in CPU_KERNELS)


def _has_triton() -> bool:
    from . import registry

    return registry.triton_importable()


# Backends of the training ops: "torch" = the ATen compositions below; "cpu" = the same with the
# C++ kernels of CPU_KERNELS for the BN-act prologue, its backward and the batch statistics
# (float32 CPU tensors); "triton" = the same with the Triton kernels of triton/train.py for the
# BN-act prologue and its backward (CUDA tensors, or CPU ones under TRITON_INTERPRET=1).
BACKENDS = (*(("cpu",) if _has_cpu_kernel() else ()), *(("triton",) if _has_triton() else ()),
            "torch")
CHOICES = ("auto", *BACKENDS)


def _fake_bn_act_backward(x, dy, mean, scale, beta, act, gate):
    c = x.shape[1]
    dgate = x.new_empty((x.shape[0], c) if gate is not None else (0, 0), dtype=torch.float32)
    return (_empty_nhwc(x, x.shape), x.new_empty((c,), dtype=torch.float32),
            x.new_empty((c,), dtype=torch.float32), dgate)


def _fake_bn_act_apply(x, mean, scale, beta, act, gate):
    return _empty_nhwc(x, x.shape, torch.float32)


def _fake_dwconv_train(x, weight, mean, scale, beta, act, stride, padding):
    from .registry import dwconv_out_size

    N, C, H, W = x.shape
    return _empty_nhwc(x, (N, C, *dwconv_out_size(H, W, weight.shape[-1], stride, padding)))


def _fake_dwconv_train_backward(vec_dtype):
    """dscale / dbeta in x's dtype (C++: float32 or float64) or float32 (Triton)."""
    def fake(x, dz, weight, mean, scale, beta, act, stride, padding):
        c = x.shape[1] if mean is not None else 0
        return (_empty_nhwc(x, x.shape), weight.new_empty(weight.shape),
                x.new_empty((c,), dtype=vec_dtype or x.dtype),
                x.new_empty((c,), dtype=vec_dtype or x.dtype))
    return fake


_KERNEL_SCHEMAS = {
    "bn_act_apply": "(Tensor x, Tensor mean, Tensor scale, Tensor beta, str act, Tensor? gate) "
                    "-> Tensor",
    "bn_act_backward": "(Tensor x, Tensor dy, Tensor mean, Tensor scale, Tensor beta, str act, "
                       "Tensor? gate) -> (Tensor, Tensor, Tensor, Tensor)",
    "dwconv_train": "(Tensor x, Tensor weight, Tensor? mean, Tensor? scale, Tensor? beta, "
                    "str act, int stride, int[] padding) -> Tensor",
    "dwconv_train_backward": "(Tensor x, Tensor dz, Tensor weight, Tensor? mean, Tensor? scale, "
                             "Tensor? beta, str act, int stride, int[] padding) -> (Tensor, "
                             "Tensor, Tensor, Tensor)",
}
if "triton" in BACKENDS:  # the Triton launchers as operators (fake kernels: torch.compile)
    def _triton_launcher(name):
        def run(*args):
            from .triton import train as triton_train

            return getattr(triton_train, name)(*args)
        return run

    for _name, _fake in (("bn_act_apply", _fake_bn_act_apply),
                         ("bn_act_backward", _fake_bn_act_backward),
                         ("dwconv_train", _fake_dwconv_train),
                         ("dwconv_train_backward", _fake_dwconv_train_backward(torch.float32))):
        torch.library.custom_op(f"effnet_train_triton::{_name}", _triton_launcher(_name),
                                mutates_args=(), schema=_KERNEL_SCHEMAS[_name]) \
            .register_fake(_fake)

if "cpu" in BACKENDS:
    torch.library.register_fake("effnet::bn_act_backward")(_fake_bn_act_backward)
    torch.library.register_fake("effnet::bn_act_apply")(_fake_bn_act_apply)

    @torch.library.register_fake("effnet::batch_stats")
    def _(z):
        return z.new_empty((z.shape[1],)), z.new_empty((z.shape[1],))

    @torch.library.register_fake("effnet::batch_stats_backward")
    def _(z, mean, dmean, dvar):
        return _empty_nhwc(z, z.shape)

    torch.library.register_fake("effnet::dwconv_train")(_fake_dwconv_train)
    torch.library.register_fake("effnet::dwconv_train_backward")(
        _fake_dwconv_train_backward(None))

_NS = "effnet_train"
SCHEMAS = {
    "batch_stats": "(Tensor z, str backend) -> (Tensor, Tensor)",
    "bn_act": "(Tensor z, Tensor mean, Tensor scale, Tensor beta, str act, Tensor? residual, "
              "str backend) -> Tensor",
    "bn_act_pool": "(Tensor z, Tensor mean, Tensor scale, Tensor beta, str act, str backend) "
                   "-> Tensor",
    "dwconv": "(Tensor x, Tensor weight, Tensor? mean, Tensor? scale, Tensor? beta, str act, "
              "int stride, int[] padding, str backend) -> Tensor",
    "pwconv": "(Tensor x, Tensor weight, Tensor? mean, Tensor? scale, Tensor? beta, str act, "
              "Tensor? gate, str backend) -> Tensor",
    "se_gate": "(Tensor pool, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor",
}
CL = torch.channels_last


def _ct(t: Tensor) -> torch.dtype:
    """Compute dtype: float64 stays float64, everything else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _nhwc(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=CL)


def _empty_nhwc(like: Tensor, shape, dtype=None) -> Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=CL)


def _as_nhwc_out(v: Tensor, dtype: torch.dtype) -> Tensor:
    """``v`` in ``dtype`` with the strides of a fresh channels_last tensor (what the fake kernels
    promise): ``v`` itself when it already is one (a fresh result), else a copy."""
    if v.dtype == dtype and v.dim() == 4:
        n, c, h, w = v.shape
        if v.stride() == (h * w * c, 1, w * c, c) and v.storage_offset() == 0:
            return v
    out = _empty_nhwc(v, v.shape, dtype)
    out.copy_(v)
    return out


def _rows(t: Tensor) -> Tensor:
    """(N, C, H, W) channels_last → the (N·H·W, C) matrix view."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _c4(v: Tensor) -> Tensor:
    return v.view(1, -1, 1, 1)


def act_grad(v: Tensor, act: str, g: Tensor) -> Tensor:
    """``g · act'(v)`` with PyTorch's own backward kernels (one pass; ReLU/ReLU6: 0 at the
    kinks, as eager)."""
    if act == "silu":
        return torch.ops.aten.silu_backward(g, v)
    if act == "relu6":
        return torch.ops.aten.hardtanh_backward(g, v, 0.0, 6.0)
    if act == "relu":
        return torch.ops.aten.threshold_backward(g, v, 0.0)
    if act == "identity":
        return g
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def _check_act(act: str, op: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {act!r}; expected one of {ACTIVATIONS}")


# ----------------------------------------------------------------------------- the prologue
def _pre(x: Tensor, mean: Tensor | None, scale: Tensor | None, beta: Tensor | None) -> Tensor:
    """The BN affine ``(x − mean)·scale + beta`` in the compute dtype (x itself without BN)."""
    ct = _ct(x)
    if mean is None:
        return x.to(ct)
    # x·scale + (beta − mean·scale): one pass, nn.BatchNorm2d's own CPU formula
    scale = scale.to(ct)
    return torch.addcmul(_c4(beta.to(ct) - mean.to(ct) * scale), x.to(ct), _c4(scale))


def _prologue(x: Tensor, mean, scale, beta, act: str, gate: Tensor | None = None,
              backend: str = "torch") -> Tensor:
    """``act(BN(x)) · gate`` in the compute dtype; one pass of a bn_act_apply kernel where
    ``_kernels`` picks one."""
    ops = _kernels(backend, x, None, mean)
    if ops is not None:
        return ops.bn_act_apply(_nhwc(x), mean.float(), scale.float(), beta.float(), act,
                                None if gate is None else gate.float())
    v = _pre(x, mean, scale, beta)
    y = apply_act(v, act) if mean is not None else v
    return y if gate is None else y * gate.to(y.dtype)[:, :, None, None]


def _kernels(backend: str, x: Tensor, dy: Tensor | None = None, mean=0):
    """The operators of the BN-act kernels to run — ``torch.ops.effnet`` (C++, "cpu"),
    ``torch.ops.effnet_train_triton`` ("triton") — or None for the ATen composition ("torch",
    no BN, and "auto" where no kernel applies). An explicit backend that cannot take these
    tensors raises."""
    if mean is None or backend == "torch":
        return None
    f32 = x.dtype == torch.float32 and (dy is None or dy.dtype == torch.float32)
    if backend == "cpu":
        if not (f32 and x.device.type == "cpu"):
            raise RuntimeError("training ops backend 'cpu': the C++ kernels take float32 CPU "
                               f"tensors, got {x.dtype} on {x.device}")
        return torch.ops.effnet
    low = x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if backend == "triton":
        if not low or not (x.is_cuda or _triton_interpreting()):
            raise RuntimeError("training ops backend 'triton': the Triton kernels take float32 / "
                               "float16 / bfloat16 CUDA tensors (CPU ones under "
                               f"TRITON_INTERPRET=1), got {x.dtype} on {x.device}")
        return torch.ops.effnet_train_triton
    if x.is_cuda and low and "triton" in BACKENDS:  # "auto"
        return torch.ops.effnet_train_triton
    if x.device.type == "cpu" and f32 and "cpu" in BACKENDS:
        return torch.ops.effnet
    return None


def _triton_interpreting() -> bool:
    from .registry import triton_interpreting

    return triton_interpreting()


def _prologue_backward(x: Tensor, mean, scale, beta, act: str, gate, dy: Tensor, needs,
                       backend: str = "torch"):
    """Gradients of ``_prologue`` for ``dy`` (compute dtype): (dx, dmean, dscale, dbeta,
    dgate), each None unless ``needs`` (five bools) asks for it; one pass of a bn_act_backward
    kernel where ``_kernels`` picks one."""
    ops = _kernels(backend, x, dy, mean)
    if ops is not None:
        dx, dscale, dbeta, dgate = ops.bn_act_backward(
            _nhwc(x), _nhwc(dy), mean.float(), scale.float(), beta.float(), act,
            None if gate is None else gate.float())
        return (dx if needs[0] else None,
                (-dbeta * scale.float()).to(mean.dtype) if needs[1] else None,
                dscale.to(scale.dtype) if needs[2] else None,
                dbeta.to(beta.dtype) if needs[3] else None,
                dgate.to(gate.dtype) if gate is not None and needs[4] else None)
    dgate = None
    v = _pre(x, mean, scale, beta)
    if gate is not None:
        if needs[4]:
            a = apply_act(v, act) if mean is not None else v
            dgate = (dy * a).sum(dim=(2, 3)).to(gate.dtype)
        dy = dy * gate.to(dy.dtype)[:, :, None, None]
    if mean is None:
        return (dy.to(x.dtype) if needs[0] else None), None, None, None, dgate
    dv = act_grad(v, act, dy)
    dx = (dv * _c4(scale.to(dv.dtype))).to(x.dtype) if needs[0] else None
    dbeta = dv.sum(dim=(0, 2, 3)) if (needs[1] or needs[3]) else None
    dmean = (-dbeta * scale.to(dv.dtype)).to(mean.dtype) if needs[1] else None
    dscale = ((dv * (x.to(dv.dtype) - _c4(mean.to(dv.dtype)))).sum(dim=(0, 2, 3))
              .to(scale.dtype) if needs[2] else None)
    return dx, dmean, dscale, (dbeta.to(beta.dtype) if needs[3] else None), dgate


# ----------------------------------------------------------------------------- batch_stats
@torch.library.custom_op(f"{_NS}::batch_stats", mutates_args=(), schema=SCHEMAS["batch_stats"])
def _batch_stats(z: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    if backend in ("cpu", "auto") and _kernels(backend, z) is torch.ops.effnet:
        return torch.ops.effnet.batch_stats(_nhwc(z))
    var, mean = torch.var_mean(_rows(_nhwc(z)).to(_ct(z)), dim=0, correction=0)
    return mean, var


@_batch_stats.register_fake
def _(z, backend):
    c = z.shape[1]
    return z.new_empty((c,), dtype=_ct(z)), z.new_empty((c,), dtype=_ct(z))


def _batch_stats_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0])
    ctx.backend = inputs[1]


def _batch_stats_backward(ctx, dmean, dvar):
    z, mean = ctx.saved_tensors
    if ctx.backend in ("cpu", "auto") and _kernels(ctx.backend, z) is torch.ops.effnet:
        return torch.ops.effnet.batch_stats_backward(
            _nhwc(z), mean, None if dmean is None else dmean.float(),
            None if dvar is None else dvar.float()), None
    m = z.numel() // z.shape[1]
    ct = mean.dtype
    dz = torch.zeros((), dtype=ct, device=z.device)
    if dvar is not None:
        dz = (z.to(ct) - _c4(mean)) * _c4(dvar.to(ct) * (2.0 / m))
    if dmean is not None:
        dz = dz + _c4(dmean.to(ct) / m)
    return _as_nhwc_out(dz.expand(z.shape), z.dtype), None


_batch_stats.register_autograd(_batch_stats_backward, setup_context=_batch_stats_setup)


def batch_stats(z: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-channel (mean, biased variance) of z (N, C, H, W) over (N, H, W), float32 (float64
    for float64 z); float32 CPU z on "auto" / "cpu": the C++ kernel effnet::batch_stats."""
    if not isinstance(z, Tensor) or z.dim() != 4 or not z.is_floating_point():
        raise ValueError(f"batch_stats: z must be a 4-D float tensor, got {_desc(z)}")
    if z.numel() // max(z.shape[1], 1) < 2:
        raise ValueError(f"batch_stats: expected more than 1 value per channel when training, "
                         f"got input size {tuple(z.shape)}")
    return _batch_stats(z, _check_backend(backend))


# ----------------------------------------------------------------------------- bn_act
@torch.library.custom_op(f"{_NS}::bn_act", mutates_args=(), schema=SCHEMAS["bn_act"])
def _bn_act(z, mean, scale, beta, act, residual, backend):
    y = _prologue(z, mean, scale, beta, act, None, backend)
    if residual is not None:
        y = y + residual.to(y.dtype)
    return _as_nhwc_out(y, z.dtype)


@_bn_act.register_fake
def _(z, mean, scale, beta, act, residual, backend):
    return _empty_nhwc(z, z.shape)


def _vec_setup(ctx, inputs, output):
    z, mean, scale, beta, act = inputs[:5]
    ctx.act, ctx.backend = act, inputs[-1]
    ctx.save_for_backward(z, mean, scale, beta)


def _bn_act_backward(ctx, dy):
    z, mean, scale, beta = ctx.saved_tensors
    needs = (*ctx.needs_input_grad[:4], False)
    dx, dmean, dscale, dbeta, _ = _prologue_backward(z, mean, scale, beta, ctx.act, None,
                                                     dy.to(_ct(z)), needs, ctx.backend)
    dres = dy if ctx.needs_input_grad[5] else None
    return (None if dx is None else dx.to(z.dtype)), dmean, dscale, dbeta, None, dres, None


_bn_act.register_autograd(_bn_act_backward, setup_context=_vec_setup)


def bn_act(z: Tensor, mean: Tensor, scale: Tensor, beta: Tensor, act: str = "silu",
           residual: Tensor | None = None, backend: str = "auto") -> Tensor:
    """``act((z − mean)·scale + beta) [+ residual]`` in z's dtype, channels_last."""
    _check_vecs(z, (mean, scale, beta), "bn_act")
    _check_act(act, "bn_act")
    if residual is not None and (not isinstance(residual, Tensor)
                                 or residual.shape != z.shape or residual.dtype != z.dtype):
        raise ValueError(f"bn_act: residual must be a {z.dtype} tensor of shape "
                         f"{tuple(z.shape)}, got {_desc(residual)}")
    return _bn_act(_nhwc(z), mean, scale, beta, act,
                   None if residual is None else _nhwc(residual), _check_backend(backend))


# ----------------------------------------------------------------------------- bn_act_pool
@torch.library.custom_op(f"{_NS}::bn_act_pool", mutates_args=(), schema=SCHEMAS["bn_act_pool"])
def _bn_act_pool(z, mean, scale, beta, act, backend):
    return _prologue(z, mean, scale, beta, act, None, backend).mean(dim=(2, 3))


@_bn_act_pool.register_fake
def _(z, mean, scale, beta, act, backend):
    return z.new_empty(z.shape[:2], dtype=_ct(z))


def _bn_act_pool_backward(ctx, dpool):
    z, mean, scale, beta = ctx.saved_tensors
    hw = z.shape[2] * z.shape[3]
    dy = (dpool.to(_ct(z)) / hw)[:, :, None, None].expand(z.shape)
    needs = (*ctx.needs_input_grad[:4], False)
    dx, dmean, dscale, dbeta, _ = _prologue_backward(z, mean, scale, beta, ctx.act, None, dy,
                                                     needs, ctx.backend)
    return (None if dx is None else _as_nhwc_out(dx, z.dtype)), dmean, dscale, dbeta, None, \
        None


_bn_act_pool.register_autograd(_bn_act_pool_backward, setup_context=_vec_setup)


def bn_act_pool(z: Tensor, mean: Tensor, scale: Tensor, beta: Tensor,
                act: str = "silu", backend: str = "auto") -> Tensor:
    """The (N, C) float32 spatial mean of ``act((z − mean)·scale + beta)``."""
    _check_vecs(z, (mean, scale, beta), "bn_act_pool")
    _check_act(act, "bn_act_pool")
    if z.shape[2] * z.shape[3] == 0:
        raise ValueError(f"bn_act_pool: z has no pixels, shape {tuple(z.shape)}")
    return _bn_act_pool(_nhwc(z), mean, scale, beta, act, _check_backend(backend))


# ----------------------------------------------------------------------------- dwconv
def _dw_conv(xt: Tensor, w: Tensor, stride: int, padding: Sequence[int]) -> Tensor:
    left, right, top, bottom = padding
    if left == right and top == bottom:
        return F.conv2d(xt, w, None, stride, (top, left), groups=xt.shape[1])
    return F.conv2d(F.pad(xt, (left, right, top, bottom)), w, None, stride, groups=xt.shape[1])


def _dw_ops(backend: str, x: Tensor, mean=0):
    """The operators of the fused depthwise kernels (``dwconv_train`` and its backward: the
    prologue applied on load, the activated input never written), or None for the ATen
    composition: ``torch.ops.effnet`` (C++) on backend "cpu" (float32 / float64 CPU tensors)
    and "auto" on float32 CPU tensors; ``torch.ops.effnet_train_triton`` where ``_kernels``
    picks Triton (backend "triton", "auto" on CUDA tensors). An explicit backend that cannot
    take x raises when there is a BN prologue to run; without one (``mean`` None) it falls back
    to ATen, as the other ops do."""
    if backend == "torch":
        return None
    if mean is None:
        try:
            return _dw_ops(backend, x)
        except RuntimeError:
            return None
    if backend == "triton" or x.device.type != "cpu":
        return _kernels(backend, x)
    if backend == "cpu" and x.dtype == torch.float64 and "cpu" in BACKENDS:
        return torch.ops.effnet
    ops = _kernels(backend, x)
    return ops if ops is not None and x.dtype == torch.float32 else None


def _dw_args(x: Tensor, weight, mean, scale, beta):
    """The weight and BN vectors in the compute dtype (x's for float32 / float64)."""
    dt = _ct(x)
    return (weight.to(dt), *(None if v is None else v.to(dt) for v in (mean, scale, beta)))


@torch.library.custom_op(f"{_NS}::dwconv", mutates_args=(), schema=SCHEMAS["dwconv"])
def _dwconv(x, weight, mean, scale, beta, act, stride, padding, backend):
    ops = _dw_ops(backend, x, mean)
    if ops is not None:
        return ops.dwconv_train(_nhwc(x), *_dw_args(x, weight, mean, scale, beta), act, stride,
                                padding)
    xt = _prologue(x, mean, scale, beta, act, None, backend).to(x.dtype)
    return _as_nhwc_out(_dw_conv(_nhwc(xt), weight.to(x.dtype), stride, padding), x.dtype)


@_dwconv.register_fake
def _(x, weight, mean, scale, beta, act, stride, padding, backend):
    from .registry import dwconv_out_size

    N, C, H, W = x.shape
    return _empty_nhwc(x, (N, C, *dwconv_out_size(H, W, weight.shape[-1], stride, padding)))


def _dwconv_setup(ctx, inputs, output):
    x, weight, mean, scale, beta, ctx.act, ctx.stride, ctx.padding, ctx.backend = inputs
    ctx.save_for_backward(x, weight, mean, scale, beta)


def _dwconv_backward(ctx, dz):
    x, weight, mean, scale, beta = ctx.saved_tensors
    stride, (left, right, top, bottom) = ctx.stride, ctx.padding
    need = ctx.needs_input_grad
    ops = _dw_ops(ctx.backend, x, mean)
    if ops is not None:
        dx, dw, dscale, dbeta = ops.dwconv_train_backward(
            x, _nhwc(dz.to(x.dtype)), *_dw_args(x, weight, mean, scale, beta), ctx.act, stride,
            ctx.padding)
        bn = mean is not None
        return (dx if need[0] else None, dw.to(weight.dtype) if need[1] else None,
                (-dbeta * scale.to(dbeta.dtype)).to(mean.dtype) if bn and need[2] else None,
                dscale.to(scale.dtype) if bn and need[3] else None,
                dbeta.to(beta.dtype) if bn and need[4] else None, None, None, None, None)
    xt = _nhwc(_prologue(x, mean, scale, beta, ctx.act, None, ctx.backend).to(x.dtype))
    sym = left == right and top == bottom
    xin = xt if sym else F.pad(xt, (left, right, top, bottom))
    pad = [top, left] if sym else [0, 0]
    dz = dz.to(x.dtype)
    dxt, dw, _ = torch.ops.aten.convolution_backward(
        _nhwc(dz), xin, weight.to(x.dtype), None, [stride, stride], pad, [1, 1], False, [0, 0],
        x.shape[1], [any(need[:1]) or any(need[2:5]), need[1], False])
    dx = dmean = dscale = dbeta = None
    if dxt is not None:
        if not sym:
            dxt = dxt[:, :, top:top + x.shape[2], left:left + x.shape[3]]
        dx, dmean, dscale, dbeta, _ = _prologue_backward(
            x, mean, scale, beta, ctx.act, None, dxt.to(_ct(x)), (*need[:1], *need[2:5], False),
            ctx.backend)
        dx = None if dx is None else _as_nhwc_out(dx, x.dtype)
    return dx, (None if dw is None else dw.to(weight.dtype)), dmean, dscale, dbeta, None, None, \
        None, None


_dwconv.register_autograd(_dwconv_backward, setup_context=_dwconv_setup)


def dwconv(x: Tensor, weight: Tensor, mean: Tensor | None = None, scale: Tensor | None = None,
           beta: Tensor | None = None, act: str = "identity", stride: int = 1,
           padding: Sequence[int] = (1, 1, 1, 1), backend: str = "auto") -> Tensor:
    """Depthwise k×k conv (weight (C, 1, k, k), no bias) of ``act(BN(x))`` (or of x when
    ``mean`` is None), zero padding ``(left, right, top, bottom)``, stride 1 or 2; returns the
    conv output z (N, C, Ho, Wo) channels_last in x's dtype."""
    op = "dwconv"
    C = _check_x(x, op)
    if not isinstance(weight, Tensor) or weight.dim() != 4 or tuple(weight.shape[:2]) != (C, 1) \
            or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"{op}: weight must be ({C}, 1, k, k) with odd k, got {_desc(weight)}")
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride!r}")
    pads = [int(p) for p in padding]
    k = weight.shape[-1]
    if len(pads) != 4 or not all(0 <= p < k for p in pads):
        raise ValueError(f"{op}: padding must be (left, right, top, bottom) in [0, {k - 1}], "
                         f"got {padding!r}")
    if x.shape[2] + pads[2] + pads[3] < k or x.shape[3] + pads[0] + pads[1] < k:
        raise ValueError(f"{op}: input {tuple(x.shape[2:])} with padding {pads} is smaller than "
                         f"the {k}x{k} kernel")
    _check_prologue(x, mean, scale, beta, act, op)
    return _dwconv(_nhwc(x), weight, mean, scale, beta, act, int(stride), pads,
                   _check_backend(backend))


# ----------------------------------------------------------------------------- pwconv
@torch.library.custom_op(f"{_NS}::pwconv", mutates_args=(), schema=SCHEMAS["pwconv"])
def _pwconv(x, weight, mean, scale, beta, act, gate, backend):
    xt = _nhwc(_prologue(x, mean, scale, beta, act, gate, backend).to(x.dtype))
    N, _, H, W = x.shape
    z = _rows(xt) @ weight.reshape(weight.shape[0], -1).to(x.dtype).t()
    return z.view(N, H, W, -1).permute(0, 3, 1, 2)


@_pwconv.register_fake
def _(x, weight, mean, scale, beta, act, gate, backend):
    N, _, H, W = x.shape
    return _empty_nhwc(x, (N, weight.shape[0], H, W))


def _pwconv_setup(ctx, inputs, output):
    x, weight, mean, scale, beta, ctx.act, gate, ctx.backend = inputs
    ctx.save_for_backward(x, weight, mean, scale, beta, gate)


def _pwconv_backward(ctx, dz):
    x, weight, mean, scale, beta, gate = ctx.saved_tensors
    need = ctx.needs_input_grad
    w2 = weight.reshape(weight.shape[0], -1).to(x.dtype)
    dzr = _rows(_nhwc(dz.to(x.dtype)))
    dw = None
    if need[1]:
        xt = _nhwc(_prologue(x, mean, scale, beta, ctx.act, gate, ctx.backend).to(x.dtype))
        dw = (dzr.t() @ _rows(xt)).reshape(weight.shape).to(weight.dtype)
    dx = dmean = dscale = dbeta = dgate = None
    if need[0] or any(need[2:5]) or need[6]:
        N, _, H, W = x.shape
        dxt = (dzr @ w2).view(N, H, W, -1).permute(0, 3, 1, 2).to(_ct(x))
        dx, dmean, dscale, dbeta, dgate = _prologue_backward(
            x, mean, scale, beta, ctx.act, gate, dxt, (need[0], *need[2:5], need[6]),
            ctx.backend)
        dx = None if dx is None else _as_nhwc_out(dx, x.dtype)
    return dx, dw, dmean, dscale, dbeta, None, dgate, None


_pwconv.register_autograd(_pwconv_backward, setup_context=_pwconv_setup)


def pwconv(x: Tensor, weight: Tensor, mean: Tensor | None = None, scale: Tensor | None = None,
           beta: Tensor | None = None, act: str = "identity",
           gate: Tensor | None = None, backend: str = "auto") -> Tensor:
    """1×1 conv (weight (Cout, Cin) or (Cout, Cin, 1, 1), no bias) of ``act(BN(x))·gate`` (each
    part optional) as a GEMM; returns z (N, Cout, H, W) channels_last in x's dtype. The gated
    input is recomputed in backward, never stored."""
    op = "pwconv"
    C = _check_x(x, op)
    if not isinstance(weight, Tensor) or weight.dim() not in (2, 4) or weight.shape[1] != C \
            or (weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1)):
        raise ValueError(f"{op}: weight must be (Cout, {C}) or (Cout, {C}, 1, 1), got "
                         f"{_desc(weight)}")
    _check_prologue(x, mean, scale, beta, act, op)
    if gate is not None and (not isinstance(gate, Tensor) or gate.shape != (x.shape[0], C)
                             or not gate.is_floating_point() or gate.device != x.device):
        raise ValueError(f"{op}: gate must be a float ({x.shape[0]}, {C}) tensor on {x.device}, "
                         f"got {_desc(gate)}")
    return _pwconv(_nhwc(x), weight, mean, scale, beta, act, gate, _check_backend(backend))


# ----------------------------------------------------------------------------- se_gate
def _se_parts(pool, w1, b1, w2, b2):
    ct = pool.dtype
    h = pool @ w1.reshape(w1.shape[0], -1).to(ct).t() + b1.to(ct)
    return h, F.silu(h)


@torch.library.custom_op(f"{_NS}::se_gate", mutates_args=(), schema=SCHEMAS["se_gate"])
def _se_gate(pool, w1, b1, w2, b2):
    _, a = _se_parts(pool, w1, b1, w2, b2)
    return torch.sigmoid(a @ w2.reshape(w2.shape[0], -1).to(pool.dtype).t() + b2.to(pool.dtype))


@_se_gate.register_fake
def _(pool, w1, b1, w2, b2):
    return pool.new_empty((pool.shape[0], w2.shape[0]))


def _se_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _se_backward(ctx, dgate):
    pool, w1, b1, w2, b2, gate = ctx.saved_tensors
    ct = pool.dtype
    h, a = _se_parts(pool, w1, b1, w2, b2)
    m1, m2 = w1.reshape(w1.shape[0], -1).to(ct), w2.reshape(w2.shape[0], -1).to(ct)
    du = dgate.to(ct) * gate * (1.0 - gate)  # through the sigmoid
    dh = act_grad(h, "silu", du @ m2)
    return (dh @ m1, (dh.t() @ pool).reshape(w1.shape).to(w1.dtype), dh.sum(0).to(b1.dtype),
            (du.t() @ a).reshape(w2.shape).to(w2.dtype), du.sum(0).to(b2.dtype))


_se_gate.register_autograd(_se_backward, setup_context=_se_setup)


def se_gate(pool: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """SE excite ``sigmoid(W2·silu(W1·pool + b1) + b2)``: pool (N, C) float32/float64, w1
    (S, C[, 1, 1]), b1 (S,), w2 (C, S[, 1, 1]), b2 (C,); returns (N, C) in pool's dtype."""
    if not isinstance(pool, Tensor) or pool.dim() != 2 or pool.dtype not in (torch.float32,
                                                                               torch.float64):
        raise ValueError(f"se_gate: pool must be a float32/float64 (N, C) tensor, got "
                         f"{_desc(pool)}")
    C = pool.shape[1]
    S = w1.shape[0]
    if w1.shape[1] != C or w2.shape[:2] != (C, S) or b1.shape != (S,) or b2.shape != (C,):
        raise ValueError(f"se_gate: expected w1 ({S}, {C}), b1 ({S},), w2 ({C}, {S}), b2 ({C},);"
                         f" got {_desc(w1)}, {_desc(b1)}, {_desc(w2)}, {_desc(b2)}")
    return _se_gate(pool, w1, b1, w2, b2)


# ----------------------------------------------------------------------------- checks
def _desc(t) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return type(t).__name__


def _check_backend(backend: str) -> str:
    if backend not in CHOICES:
        raise ValueError(f"training ops: backend must be one of {CHOICES}, got {backend!r}")
    return backend


def _check_x(x, op: str) -> int:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{op}: x must be a 4-D (N, C, H, W) float tensor, got {_desc(x)}")
    return x.shape[1]


def _check_vecs(z, vecs, op: str) -> None:
    C = _check_x(z, op)
    for name, v in zip(("mean", "scale", "beta"), vecs):
        if not isinstance(v, Tensor) or v.shape != (C,) or not v.is_floating_point() \
                or v.device != z.device:
            raise ValueError(f"{op}: {name} must be a float ({C},) tensor on {z.device}, got "
                             f"{_desc(v)}")


def _check_prologue(x, mean, scale, beta, act, op: str) -> None:
    given = [t is not None for t in (mean, scale, beta)]
    if any(given) and not all(given):
        raise ValueError(f"{op}: pass all of mean, scale and beta (the input's BN) or none")
    _check_act(act, op)
    if all(given):
        _check_vecs(x, (mean, scale, beta), op)
