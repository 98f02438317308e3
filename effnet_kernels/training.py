"""``ek.optimize_for_training()``: a trainable, memory-efficient EfficientNet over the source's
own parameters.

``t = ek.optimize_for_training(model, bn="batch", backend="auto", dtype=None)`` returns a
:class:`TrainableEfficientNet` whose submodules *are* the source's (registered under the same
names): its ``parameters()`` are the source's Parameter objects and its ``state_dict()`` keys are
the source's, so an optimizer, an EMA or a checkpoint built on the source keeps working, and the
BatchNorm running statistics it updates are the source's buffers. Only the forward differs: it
runs the ops of :mod:`effnet_kernels.train_ops`, which save the conv outputs once and recompute
BatchNorm, activations and the SE-scaled tensor in backward (see that module). At 224² fp32 a B0
step saves ~32 % of the activation bytes eager PyTorch saves for backward (``effnet-kernels
bench --train``).

What runs, per MBConv block (``z`` conv outputs before their BN; ``BN·act`` applied on load)::

    expand   z1 = pwconv(x)                        [x: the block input, or the previous
             (mean1, var1) = batch_stats(z1)         projection's z with its BN on load]
    dw       z2 = dwconv(act(BN1(z1)))             BN1 + act recomputed in backward
    SE       gate = se_gate(bn_act_pool(z2, BN2))  the squeeze reads z2, writes (N, C)
    project  z3 = pwconv(act(BN2(z2)) · gate)      the gated tensor never stored
    output   bn_act(z3, BN3, residual=x)           (drop_path(BN3(z3)) + x with stochastic depth)

The stem conv and the classifier are PyTorch's ``F.conv2d`` / ``F.linear``; the head is
``pwconv`` + ``bn_act_pool``. **Kernels**: three C++ CPU kernels for float32 CPU tensors
(``backend="auto"`` or ``"cpu"``): ``effnet::bn_act_apply`` (BN + activation (+ the SE gate)
on load, one pass, forward and recomputation), ``effnet::bn_act_backward`` (its backward, one
pass) and ``effnet::batch_stats``; everything else — the convs and their backward, the SE MLP,
the pool's mean — is an ATen composition (see ``t.backends``). On CUDA tensors ``"auto"``
runs the Triton versions of the two BN-act kernels (``backend="triton"``; tested through the
interpreter, not yet on a GPU); no CUDA C++ training kernel exists.

BatchNorm (``bn``):

* ``"batch"``: in ``train()`` mode the batch mean and biased variance (``batch_stats``)
  normalise; the running statistics are updated as ``nn.BatchNorm2d`` does (``momentum``, or the
  cumulative average when it is None; the unbiased variance; ``num_batches_tracked``). In
  ``eval()`` mode the running statistics are used.
* ``"frozen"``: FrozenBatchNorm semantics: the running statistics *and* the affine γ, β are
  fixed; ``optimize_for_training`` sets ``requires_grad=False`` on the source's BN weights and
  biases (they would receive no gradient; DDP and optimizers then skip them).

Dropout and stochastic depth are the source's (same rates, training mode only, the same
random draws in the same order as the source's forward for effnet_kernels, torchvision and timm
sources; efficientnet_pytorch's drop connect draws rand + floor where this draws
``bernoulli_``: the same distribution, other numbers). ``dtype`` (default: the parameters'
dtype, or the autocast dtype inside ``torch.autocast``) is the activation dtype; parameters
stay as they are (bf16 compute over float32 master weights), statistics, BN vectors and the SE
gate are float32.

Several processes: wrap the module in DDP as any other. ``bn="frozen"`` needs nothing more.
With ``bn="batch"`` each rank normalises with its own batch's statistics (as ``nn.BatchNorm2d``
does under DDP); ``nn.SyncBatchNorm`` — statistics across ranks — is not supported:
``optimize_for_training`` refuses a source that contains ``SyncBatchNorm`` layers (use
``bn="frozen"``, or train the plain model with SyncBatchNorm).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import train_ops
from .models.efficientnet import ConvBNAct, EfficientNet, MBConv, drop_path

__all__ = ["optimize_for_training", "TrainableEfficientNet", "BN_MODES"]

BN_MODES = ("batch", "frozen")
_ACT_OF = {"silu": "silu", "relu6": "relu6", "identity": "identity"}
CL = torch.channels_last


class _Pending:
    """A tensor between layers: ``z`` and, unless ``bn`` is None, the BN-act the consumer
    applies on load (``(mean, scale, beta, act)``)."""

    __slots__ = ("z", "bn")

    def __init__(self, z: Tensor, bn: tuple | None = None) -> None:
        self.z, self.bn = z, bn

    def materialize(self, backend: str) -> Tensor:
        return self.z if self.bn is None else train_ops.bn_act(self.z, *self.bn,
                                                                backend=backend)

    def prologue(self) -> tuple:
        return (None, None, None, "identity") if self.bn is None else self.bn


class TrainableEfficientNet(nn.Module):
    """The trainable fused EfficientNet built by :func:`optimize_for_training` (module doc).

    Its children are the source's modules, under the source's names (an effnet_kernels model:
    ``stem``, ``blocks``, ``head``, ``pool``, ``dropout``, ``classifier``; a torchvision one:
    ``features``, ``avgpool``, ``classifier``; ...): parameters, buffers and state_dict keys are
    the source's. ``bn_mode`` is
    the BatchNorm mode, ``dtype`` the activation dtype (None: the parameters' or autocast's),
    ``backend`` the training ops' backend and ``backends`` what runs each part.
    """

    def __init__(self, source: nn.Module, plan: EfficientNet, bn: str,
                 dtype: torch.dtype | None, backend: str = "auto") -> None:
        super().__init__()
        for name, child in source.named_children():  # the source's modules, under its names
            self.add_module(name, child)
        # The effnet_kernels structure the forward walks: the source itself, or for a
        # torchvision / timm / efficientnet_pytorch source an EfficientNet whose parameters and
        # buffers are the source's tensors (``_alias``); not a submodule (no second copy of the
        # keys), re-aliased after device / dtype moves.
        object.__setattr__(self, "_plan", plan)
        object.__setattr__(self, "_aliases", _alias_pairs(source, plan))
        self.bn_mode, self.dtype, self.backend = bn, dtype, backend
        self.name = plan.config.name
        self.train(source.training)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        _alias(self._aliases)  # moved buffers are new tensors in the source's modules
        return out

    # -- BatchNorm
    def _bn(self, bn: nn.BatchNorm2d, z: Tensor, act: str) -> tuple:
        """(mean, scale, beta, act) of ``bn`` for the conv output ``z``; updates the running
        statistics in batch mode (training)."""
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        if self.bn_mode == "batch" and self.training:
            mean, var = train_ops.batch_stats(z, backend=self.backend)
            _update_running_stats(bn, mean.detach(), var.detach(), z.numel() // z.shape[1])
        else:
            mean, var = bn.running_mean, bn.running_var
            if self.bn_mode == "frozen":
                gamma, beta = gamma.detach(), beta.detach()
        f32 = torch.float64 if z.dtype == torch.float64 else torch.float32
        scale = gamma.to(f32) * torch.rsqrt(var.to(f32) + bn.eps)
        return mean.to(f32), scale, beta.to(f32), act

    def _w(self, conv: nn.Conv2d, dt: torch.dtype) -> Tensor:
        return conv.weight.to(dt)

    # -- forward
    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return self._plan.stem.conv.weight.dtype

    def _check_input(self, x) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        cin = self._plan.stem.conv.in_channels
        if x.dim() != 4 or x.shape[1] != cin:
            raise ValueError(f"input must be (N, {cin}, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.device != self._plan.stem.conv.weight.device:
            raise RuntimeError(f"input is on {x.device} but the model is on "
                               f"{self._plan.stem.conv.weight.device}")

    def forward_features(self, x: Tensor) -> _Pending:
        """Stem and blocks: the last block's output (pending its BN, see ``_Pending``)."""
        self._check_input(x)
        dt = self._compute_dtype(x)
        x = x.to(dt, memory_format=CL)
        stem = self._plan.stem
        left, right, top, bottom = stem.pad_for(x.shape[-2], x.shape[-1])
        if left == right and top == bottom:
            z = F.conv2d(x, self._w(stem.conv, dt), None, stem.stride, (top, left))
        else:
            z = F.conv2d(F.pad(x, (left, right, top, bottom)), self._w(stem.conv, dt), None,
                         stem.stride)
        cur = _Pending(z.contiguous(memory_format=CL),
                       self._bn(stem.bn, z, _ACT_OF[stem.act_name]))
        for stage in self._plan.blocks:
            for blk in stage:
                cur = self._block(blk, cur, dt)
        return cur

    def _block(self, blk: MBConv, cur: _Pending, dt: torch.dtype) -> _Pending:
        be = self.backend
        if blk.expand is not None:
            z1 = train_ops.pwconv(cur.z, self._w(blk.expand.conv, dt), *cur.prologue(),
                                  backend=be)
            src = _Pending(z1, self._bn(blk.expand.bn, z1, _ACT_OF[blk.expand.act_name]))
        else:
            src = cur
        dw = blk.dw
        z2 = train_ops.dwconv(src.z, self._w(dw.conv, dt), *src.prologue(), dw.stride,
                              dw.pad_for(src.z.shape[-2], src.z.shape[-1]), backend=be)
        bn2 = self._bn(dw.bn, z2, _ACT_OF[dw.act_name])
        gate = None
        if blk.se is not None:
            se = blk.se
            pool = train_ops.bn_act_pool(z2, *bn2, backend=be)
            gate = train_ops.se_gate(pool, se.fc1.weight, se.fc1.bias, se.fc2.weight,
                                     se.fc2.bias)
        z3 = train_ops.pwconv(z2, self._w(blk.project.conv, dt), *bn2, gate, backend=be)
        bn3 = self._bn(blk.project.bn, z3, _ACT_OF[blk.project.act_name])
        if not blk.use_residual:
            return _Pending(z3, bn3)
        x = cur.materialize(be)
        if self.training and blk.drop_path_rate > 0.0:
            out = drop_path(train_ops.bn_act(z3, *bn3, backend=be), blk.drop_path_rate,
                            True) + x
        else:
            out = train_ops.bn_act(z3, *bn3, residual=x, backend=be)
        return _Pending(out)

    def forward_head(self, cur: _Pending) -> Tensor:
        """The head conv + BN + act + global pool: the float32 (N, C_head) embedding."""
        dt = cur.z.dtype
        head = self._plan.head
        be = self.backend
        zh = train_ops.pwconv(cur.z, self._w(head.conv, dt), *cur.prologue(), backend=be)
        return train_ops.bn_act_pool(zh, *self._bn(head.bn, zh, _ACT_OF[head.act_name]),
                                     backend=be)

    def forward(self, x: Tensor) -> Tensor:
        cur = self.forward_features(x)
        dt = cur.z.dtype
        plan = self._plan
        pooled = F.dropout(self.forward_head(cur).to(dt), plan.dropout.p, self.training)
        if isinstance(plan.classifier, nn.Linear):
            c = plan.classifier
            return F.linear(pooled, c.weight.to(dt), None if c.bias is None else c.bias.to(dt))
        return plan.classifier(pooled)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, bn={self.bn_mode!r}, dtype={self.dtype}, "
                f"backend={self.backend!r}")

    @property
    def backends(self) -> dict[str, str]:
        """What runs each part of a step on the parameters' device now (float32 there)."""
        dev = self._plan.stem.conv.weight.device.type
        be = self.backend
        if be == "auto":
            be = ("triton" if dev == "cuda" and "triton" in train_ops.BACKENDS else
                  "cpu" if dev == "cpu" and "cpu" in train_ops.BACKENDS else "torch")
        kernel = {"cpu": "cpu (C++ kernel effnet::{}, float32)",
                  "triton": "triton (kernel effnet_train_triton::{})"}.get(be)
        return {"bn_act_backward": kernel.format("bn_act_backward") if kernel
                else "torch (ATen ops)",
                "depthwise convs": "cpu (C++ kernels effnet::dwconv_train / "
                                   "dwconv_train_backward, float32, BN-act prologue fused)"
                if be == "cpu" else "triton (kernels effnet_train_triton::dwconv_train / "
                                    "dwconv_train_backward, BN-act prologue fused)"
                if be == "triton" else "torch (F.conv2d, aten.convolution_backward)",
                "1x1 convs": "torch (matmul)",
                "batch_stats": "cpu (C++ kernels effnet::batch_stats / batch_stats_backward, "
                               "float32)" if be == "cpu" else "torch (ATen var_mean)",
                "bn_act prologue (forward, recomputed in backward)":
                    kernel.format("bn_act_apply") if kernel else "torch (ATen ops)",
                "se_gate, pool mean, residual add": "torch (ATen ops)"}


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """``nn.BatchNorm2d``'s running-statistics update for one training batch."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative moving average
        factor = 1.0 / float(bn.num_batches_tracked.item())
    else:
        factor = bn.momentum
    unbiased = var * (count / (count - 1))
    bn.running_mean.mul_(1.0 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1.0 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


# ----------------------------------------------------------------------------- building
def _alias_pairs(source: nn.Module, plan: EfficientNet) -> list[tuple[nn.Module, nn.Module]]:
    """(plan module, source module) pairs whose tensors are shared (none when plan is source)."""
    if plan is source:
        return []
    layout = _foreign_layout(source)[1]
    return [(plan.get_submodule(d), source.get_submodule(s)) for d, s in layout(plan)]


def _alias(pairs) -> None:
    """Make each plan module's parameters and buffers the source module's own tensor objects."""
    for dst, src in pairs:
        for name in dst._parameters:
            dst._parameters[name] = src._parameters[name]
        for name in dst._buffers:
            if src._buffers.get(name) is not None:
                dst._buffers[name] = src._buffers[name]


def _foreign_layout(model: nn.Module):
    """(converter, key layout, per-block stochastic-depth rates, classifier dropout) of a
    torchvision / timm / efficientnet_pytorch EfficientNet, or None."""
    from . import convert

    tv = sys.modules.get("torchvision.models.efficientnet")
    if tv is not None and isinstance(model, tv.EfficientNet):
        rates = [m.stochastic_depth.p for m in model.modules() if isinstance(m, tv.MBConv)]
        drop = next((m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)), 0.0)
        return convert.from_torchvision, convert._torchvision_layout, rates, drop
    tm = sys.modules.get("timm.models.efficientnet")
    if tm is not None and isinstance(model, tm.EfficientNet):
        rates = [float(getattr(getattr(b, "drop_path", None), "drop_prob", 0.0) or 0.0)
                 for stage in model.blocks for b in stage]
        return convert.from_timm, convert._timm_layout, rates, float(model.drop_rate)
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):  # lukemelas
        gp = model._global_params
        n = len(model._blocks)
        rate = float(gp.drop_connect_rate or 0.0)
        return (convert.from_efficientnet_pytorch, convert._lukemelas_layout,
                [rate * i / n for i in range(n)], float(gp.dropout_rate or 0.0))
    return None


def _plan_for(model: nn.Module) -> EfficientNet:
    """The effnet_kernels structure to run ``model`` with: the model itself, or an alias of a
    torchvision / timm / efficientnet_pytorch model over its own tensors."""
    from .features import is_backbone
    from .optimize import FusedEfficientNet

    if isinstance(model, FusedEfficientNet):
        raise TypeError("model is a FusedEfficientNet (ek.optimize's frozen inference model: BN "
                        "folded, weights copied into buffers); pass the source model to "
                        "ek.optimize_for_training instead")
    if isinstance(model, TrainableEfficientNet):
        raise TypeError("model is already a TrainableEfficientNet")
    if isinstance(model, EfficientNet):
        return model
    if is_backbone(model):
        raise TypeError("feature backbones (features_only) are not supported by "
                        "ek.optimize_for_training yet; pass the classification model (its "
                        "num_classes=0 embedding model is supported)")
    foreign = _foreign_layout(model) if isinstance(model, nn.Module) else None
    if foreign is None:
        raise TypeError(
            f"ek.optimize_for_training does not know {type(model).__module__}."
            f"{type(model).__qualname__}; expected an effnet_kernels EfficientNet, "
            "torchvision.models.EfficientNet, timm.models.EfficientNet or an "
            "efficientnet_pytorch EfficientNet")
    converter, _, rates, drop = foreign
    plan = converter(model)  # the structure (and, for now, copies of the tensors)
    blocks = [b for stage in plan.blocks for b in stage]
    if len(rates) != len(blocks):
        raise ValueError(f"source has {len(rates)} blocks with stochastic depth, the converted "
                         f"model {len(blocks)}")
    for b, r in zip(blocks, rates):
        b.drop_path_rate = r
    plan.dropout.p = drop
    _alias(_alias_pairs(model, plan))  # now the source's own tensors
    return plan


def _check_source(model: EfficientNet) -> EfficientNet:
    """The layers of the effnet_kernels structure ``model``; clear errors otherwise."""

    for name, m in model.named_modules():
        if isinstance(m, nn.SyncBatchNorm):
            raise ValueError(f"{name} is an nn.SyncBatchNorm: cross-rank BatchNorm statistics "
                             "are not supported by the fused training ops; use bn='frozen' on a "
                             "model with nn.BatchNorm2d, or train the plain model")
        if isinstance(m, ConvBNAct):
            if not isinstance(m.bn, nn.BatchNorm2d) or not m.bn.track_running_stats:
                raise ValueError(f"{name}.bn must be an nn.BatchNorm2d with running "
                                 f"statistics, got {m.bn!r}")
            if m.act_name not in _ACT_OF:
                raise ValueError(f"{name}: activation {m.act_name!r} is not supported")
            if m.conv.bias is not None:
                raise ValueError(f"{name}.conv has a bias; the fused ops expect bias-free convs "
                                 "followed by BatchNorm")
        elif isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Dropout, nn.SiLU,
                            nn.ReLU6, nn.Identity, nn.AdaptiveAvgPool2d, nn.Sequential,
                            EfficientNet, MBConv)) or type(m).__name__ == "SqueezeExcitation":
            continue
        else:
            raise ValueError(f"{name} ({type(m).__name__}) is not a layer the fused training "
                             "model knows; it would be skipped, so it is refused")
    if type(model.pool) is not nn.AdaptiveAvgPool2d:
        raise ValueError(f"pool must be nn.AdaptiveAvgPool2d, got {type(model.pool).__name__}")
    return model


def optimize_for_training(model: nn.Module, bn: str = "batch", backend: str = "auto",
                          dtype: torch.dtype | None = None) -> TrainableEfficientNet:
    """A trainable, memory-efficient fused model over ``model``'s own parameters (module doc).

    Args:
        model: an effnet_kernels EfficientNet (B0–B7, Lite0–4, any ``num_classes`` incl. 0,
            symmetric or "same" padding), or a torchvision / timm / efficientnet_pytorch
            EfficientNet (the structure is read through :mod:`effnet_kernels.convert`, then every
            parameter and buffer is the source's own tensor; its stochastic-depth rates and
            dropout are the source's). Its parameters and buffers are shared, not copied.
        bn: ``"batch"`` (train-mode BatchNorm, running statistics updated) or ``"frozen"``
            (fixed affine; sets ``requires_grad=False`` on the BN weights and biases).
        backend: ``"auto"`` (the C++ kernels for float32 CPU tensors, the Triton BN-act
            kernels for CUDA tensors, ATen otherwise), ``"cpu"`` (the C++ kernels; other dtypes
            / devices raise), ``"triton"`` (CUDA tensors, or CPU ones under TRITON_INTERPRET=1),
            ``"torch"`` (ATen compositions only, any device). "cuda" has no training kernels and
            raises ``RuntimeError``.
        dtype: activation dtype (float32, bfloat16, float16); None: the parameters' dtype, or
            the autocast dtype under ``torch.autocast``.

    Raises:
        TypeError: not an effnet_kernels EfficientNet (an ``ek.optimize`` model included).
        ValueError: unknown ``bn`` or ``dtype``, a layer the fused model does not know.
        RuntimeError: a backend without training kernels.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16,
                                           torch.float64):
        raise ValueError(f"dtype must be torch.float32, bfloat16, float16 (or float64), or None; "
                         f"got {dtype!r}")
    from .registry import CHOICES

    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if backend not in ("auto", *train_ops.BACKENDS):
        raise RuntimeError(f"backend {backend!r}: the training ops have no {backend!r} kernels "
                           f"yet; available here: {train_ops.CHOICES}")
    plan = _check_source(_plan_for(model))
    device = plan.stem.conv.weight.device
    if backend == "cpu" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpu' runs the C++ training kernels on CPU tensors; the "
                           f"model is on {device} (use 'auto' or 'torch')")
    if backend == "triton" and device.type != "cuda" and not train_ops._triton_interpreting():
        raise RuntimeError(f"backend 'triton' runs the Triton training kernels on CUDA tensors "
                           f"(CPU ones only under TRITON_INTERPRET=1); the model is on {device}")
    if bn == "frozen":
        for m in plan.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.requires_grad_(False)
    return TrainableEfficientNet(model, plan, bn, dtype, backend)
