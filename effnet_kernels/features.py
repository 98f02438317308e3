"""Fused backbone outputs: multi-scale feature maps and the pooled embedding.

``ek.optimize(m, features_only=True, out_indices=(0, 1, 2, 3, 4))`` returns a
:class:`FusedFeatures`: the list of feature maps at the end of each resolution stage, timm's
``features_only`` convention for EfficientNet (indices 0–4 = stages 0, 1, 2, 4, 6, reductions
2–32; ``f.feature_info.channels()`` / ``.reduction()`` as timm's, see
``effnet_kernels.models.features``). Only the stem and the stages up to the last requested
index are built and run. ``ek.optimize(m, num_classes=0)`` returns a :class:`FusedEmbedding`:
the pooled head output (conv_head + BN + act + global average pool in one ``pointwise_conv``
pass), timm's ``num_classes=0`` / ``forward_head(pre_logits=True)``.

Both are frozen like :class:`~effnet_kernels.optimize.FusedEfficientNet` (same backends, dtypes,
CUDA graphs, ``torch.compile``; outputs in the model's dtype, feature maps channels_last).
Sources: anything ``ek.optimize`` takes, a plain backbone (``ek.create_model(name,
features_only=True)`` or ``num_classes=0``), or an already optimized model — float or INT8
(``ek.quantize``) — whose modules are then shared, not copied; INT8 feature maps come back
dequantised to the float dtype::

    q = ek.quantize(ek.optimize(m), calibration_batches)
    qf = ek.optimize(q, features_only=True)        # float feature maps from the int8 model
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from . import reference
from .models.features import EfficientNetFeatures, FeatureInfo, feature_points, model_points
from .nn import call, run_sequential
from .optimize import (FusedEfficientNet, _setup, _to_ek, frozen_train, fused_head, fused_trunk,
                       sync_backends)

__all__ = ["FusedFeatures", "FusedEmbedding", "optimize_backbone", "is_backbone"]


class _FusedBackbone(nn.Module):
    """What :class:`FusedFeatures` and :class:`FusedEmbedding` share: the fused (or INT8) stem
    and stages, dtype/device, the frozen mode, backends, and FusedEfficientNet's input checks
    and CUDA-graph capture/replay (the same functions, bound to this class)."""

    graph_cache_size = FusedEfficientNet.graph_cache_size
    graph_warmup_iters = FusedEfficientNet.graph_warmup_iters

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, *, backends: dict[str, str],
                 substitutions: dict[str, str], cuda_graph: bool, name: str,
                 requested_backend: str) -> None:
        super().__init__()
        self.stem, self.blocks = stem, blocks
        self.backends = {"stem_conv": "torch (F.conv2d)",
                         **{k: v for k, v in backends.items()
                            if k not in ("stem_conv", "classifier")}}
        self.substitutions = dict(substitutions)
        self.name, self.requested_backend = name, requested_backend
        if cuda_graph and self.device.type != "cuda":
            raise RuntimeError("cuda_graph=True needs the model on a CUDA device; its weights "
                               f"are on {self.device}")
        self.cuda_graph = bool(cuda_graph)
        self._graphs: OrderedDict = OrderedDict()
        super().train(False)

    _check_input = FusedEfficientNet._check_input
    _capture = FusedEfficientNet._capture
    _forward_graphed = FusedEfficientNet._forward_graphed
    reset_cuda_graphs = FusedEfficientNet.reset_cuda_graphs

    def __getstate__(self):
        # copy.deepcopy / pickle: captured graphs are not copyable; a copy re-captures.
        return {**self.__dict__, "_graphs": OrderedDict()}

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of the stem weights, the activations and the outputs."""
        return self.stem.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.stem.weight.device

    def train(self, mode: bool = True):
        return frozen_train(self, mode)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)  # the BoundOp modules bind again on a new device
        sync_backends(self)
        return out

    def fused_blocks(self) -> list[nn.Module]:
        return [m for st in self.blocks for m in st]

    def _trunk_input(self, x: Tensor) -> Tensor:
        """The stem output for ``x`` (cast to the model's dtype, channels_last: the one
        layout change)."""
        return call(self.stem, x.to(self.dtype, memory_format=torch.channels_last))

    def forward(self, x: Tensor):
        if self.cuda_graph and not torch.compiler.is_compiling():
            return self._forward_graphed(x)
        return self.forward_eager(x)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, dtype={self.dtype}, device={self.device}, "
                f"requested_backend={self.requested_backend!r}, cuda_graph={self.cuda_graph}, "
                f"backends: {self.backends}")


def _stage_output(x: Tensor, stage: nn.Sequential, dtype: torch.dtype) -> Tensor:
    """A stage's output as a float feature map: int8 outputs (the INT8 model) dequantised with
    the last block's output quantisation, in ``dtype``."""
    if x.is_floating_point():
        return x
    scale, zp = stage[-1].project.out_q
    return reference.dequantize(x, scale, zp).to(dtype)


class FusedFeatures(_FusedBackbone):
    """Frozen fused multi-scale backbone (see the module doc): ``forward(x)`` returns the list
    of feature maps at ``out_indices`` (channels_last, in ``dtype``). ``blocks`` holds only the
    stages up to the last requested feature point. ``feature_info`` as timm's."""

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, feature_info: FeatureInfo,
                 **kwargs) -> None:
        super().__init__(stem, blocks, **kwargs)
        self.feature_info = feature_info
        self.out_indices = feature_info.out_indices
        self._taps = frozenset(feature_info.stages)

    @property
    def num_kernels(self) -> int:
        """Kernels per forward: stem conv + bias_act and each kept block's fused ops."""
        return 2 + sum(b.num_kernels for b in self.fused_blocks())

    def forward_eager(self, x: Tensor) -> list[Tensor]:
        """The forward without CUDA graphs."""
        self._check_input(x)
        with torch.no_grad():
            x, out = self._trunk_input(x), []
            for i, stage in enumerate(self.blocks):
                x = run_sequential(stage, x)
                if i in self._taps:
                    out.append(_stage_output(x, stage, self.dtype))
            return out

    def extra_repr(self) -> str:
        return f"{self.feature_info}, {super().extra_repr()}"


class FusedEmbedding(_FusedBackbone):
    """Frozen fused embedding model (see the module doc): ``forward(x)`` returns the pooled
    head output (N, ``num_features``) in ``dtype``."""

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, head: nn.Module,
                 **kwargs) -> None:
        super().__init__(stem, blocks, **kwargs)
        self.head = head

    @property
    def num_features(self) -> int:
        """Width of the embedding (the head's output channels)."""
        return self.head.weight.shape[0]

    @property
    def num_kernels(self) -> int:
        """Kernels per forward: stem conv + bias_act, each block's fused ops, the head pool."""
        return 2 + sum(b.num_kernels for b in self.fused_blocks()) + 1

    def forward_eager(self, x: Tensor) -> Tensor:
        """The forward without CUDA graphs."""
        self._check_input(x)
        with torch.no_grad():
            x = run_sequential(self.blocks, self._trunk_input(x))
            return call(self.head, x, pool_only=True).to(self.dtype)  # float32 pool → dtype


# ----------------------------------------------------------------------------- building
def is_backbone(model: nn.Module) -> bool:
    """True for a model without classifier: a plain backbone (``features_only``), a model
    built with ``num_classes=0`` (effnet_kernels or timm: its classifier is ``nn.Identity``),
    or one of this module's fused models (which ``optimize_backbone`` refuses clearly)."""
    return isinstance(model, (EfficientNetFeatures, _FusedBackbone)) or \
        isinstance(getattr(model, "classifier", None), nn.Identity)


def _fused_points(stem: nn.Module, stages) -> list[dict]:
    """The feature points of fused (or INT8) stages; the float stem / first depthwise conv of
    the INT8 model sit in ``float_stem`` / ``float_dw``."""
    def stride(m):
        return getattr(m, "float_stem", getattr(m, "float_dw", m)).stride

    return feature_points(stride(stem), [stride(st[0].dw) for st in stages],
                          [st[-1].project.weight.shape[0] for st in stages])


def optimize_backbone(model: nn.Module, backend: str = "auto", dtype: torch.dtype | None = None,
                      cuda_graph: bool = False, features_only: bool = False, out_indices=None,
                      num_classes: int | None = None) -> _FusedBackbone:
    """``ek.optimize`` for the backbone outputs (its arguments; see the module doc)."""
    if num_classes not in (None, 0):
        raise ValueError(f"num_classes={num_classes!r}: ek.optimize keeps the source's "
                         "classifier; num_classes can only be 0 (no classifier: the pooled "
                         "embedding) or None")
    if features_only and num_classes == 0:
        raise ValueError("features_only=True and num_classes=0 ask for two different outputs "
                         "(feature maps, pooled embedding); pick one")
    if out_indices is not None and not (features_only or isinstance(model, EfficientNetFeatures)):
        raise ValueError("out_indices needs features_only=True")
    if isinstance(model, _FusedBackbone):
        raise TypeError(f"model is already a {type(model).__name__}; pass the source model "
                        "(INT8 backbone: ek.optimize(ek.quantize(ek.optimize(m), batches), "
                        "features_only=True))")
    if isinstance(model, FusedEfficientNet):  # float or INT8: share its modules
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype={dtype} differs from the optimized model's {model.dtype}; "
                             "optimize the source model with that dtype instead")
        if backend not in ("auto", model.requested_backend):
            raise ValueError(f"backend={backend!r} differs from the optimized model's "
                             f"{model.requested_backend!r}; optimize the source model instead")
        stem, stages, head = model.stem, list(model.blocks), model.head
        kw = {"backends": model.backends, "substitutions": model.substitutions,
              "cuda_graph": cuda_graph or model.cuda_graph, "name": model.name,
              "requested_backend": model.requested_backend}
    else:
        src = _to_ek(model)
        if isinstance(src, EfficientNetFeatures):
            if num_classes == 0:
                raise ValueError("a features_only backbone has no head to pool: build the "
                                 "model with num_classes=0 instead")
            features_only = True
            out_indices = src.out_indices if out_indices is None else out_indices
        dtype, be, subs = _setup(src, backend, dtype, cuda_graph, stacklevel=4)
        n = None
        if features_only:  # fuse only the stages up to the last requested feature point
            n = max(FeatureInfo(model_points(src), out_indices).stages) + 1
        stem, stages = fused_trunk(src, dtype, be, backend, n)
        head = None if features_only else fused_head(src, dtype, be, backend)
        kw = {"backends": be, "substitutions": subs, "cuda_graph": cuda_graph,
              "name": src.config.name, "requested_backend": backend}
    if not features_only:
        return FusedEmbedding(stem, nn.Sequential(*stages), head, **kw)
    info = FeatureInfo(_fused_points(stem, stages), out_indices)
    return FusedFeatures(stem, nn.Sequential(*stages[:max(info.stages) + 1]), info, **kw)
