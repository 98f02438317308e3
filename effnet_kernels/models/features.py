"""Backbone outputs of the plain models: timm's ``features_only`` convention for EfficientNet.

A *feature point* is the output of the last stage of each resolution: the stage whose next stage
starts with a stride-2 block, and the last stage. For every B0–B7 / Lite0–4 model these are the
stages 0, 1, 2, 4, 6 (module names ``blocks.0`` … ``blocks.6``, reductions 2, 4, 8, 16, 32): the
feature indices 0–4 of timm's ``features_only=True`` EfficientNet, same channels, same order.
The stem output and the head conv are not feature points (as in timm).

:class:`FeatureInfo` answers ``channels()`` / ``reduction()`` / ``module_name()`` like timm's;
:class:`EfficientNetFeatures` is the plain trainable backbone (stem and the stages up to the
last requested feature; later stages, the head and the classifier are dropped, so nothing
unused is left for DDP to complain about). The fused one is ``effnet_kernels.features``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["EfficientNetFeatures", "FeatureInfo", "feature_points", "model_points",
           "check_out_indices"]


def feature_points(stem_stride: int, strides: Sequence[int],
                   channels: Sequence[int]) -> list[dict]:
    """The feature points of a model whose stages start with stride ``strides[i]`` and end with
    ``channels[i]`` channels: one dict per point, ``{"stage", "num_chs", "reduction",
    "module"}``, in forward order."""
    if len(strides) != len(channels) or not strides:
        raise ValueError(f"need one stride and one channel count per stage, got {len(strides)} "
                         f"strides and {len(channels)} channel counts")
    points, red = [], int(stem_stride)
    for i, (s, c) in enumerate(zip(strides, channels)):
        red *= int(s)
        if i == len(strides) - 1 or strides[i + 1] != 1:
            points.append({"stage": i, "num_chs": int(c), "reduction": red,
                           "module": f"blocks.{i}"})
    return points


def model_points(model: nn.Module) -> list[dict]:
    """The feature points of a plain model or backbone (its ``stem`` and ``blocks`` stages)."""
    stages = list(model.blocks)
    return feature_points(model.stem.stride, [st[0].stride for st in stages],
                          [st[-1].out_ch for st in stages])


def check_out_indices(out_indices, num_points: int) -> tuple[int, ...]:
    """``out_indices`` as a tuple of non-negative, strictly increasing feature indices
    (negative ones count from the end, as in Python; None: all); ValueError otherwise."""
    if out_indices is None:
        return tuple(range(num_points))
    try:
        idx = tuple(int(i) for i in out_indices)
    except TypeError as e:
        raise ValueError(f"out_indices must be a sequence of ints, got {out_indices!r}") from e
    if not idx:
        raise ValueError("out_indices is empty: ask for at least one feature map")
    bad = [i for i in idx if not -num_points <= i < num_points]
    if bad:
        raise ValueError(f"out_indices {bad} out of range: this model has {num_points} feature "
                         f"maps (indices 0..{num_points - 1})")
    idx = tuple(i % num_points for i in idx)
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ValueError(f"out_indices must be strictly increasing (features come out in "
                         f"forward order), got {tuple(out_indices)}")
    return idx


class FeatureInfo:
    """timm-style description of the returned feature maps: ``channels()``, ``reduction()``,
    ``module_name()`` (a list over ``out_indices``, or one value for ``idx``), ``get_dicts()``,
    ``out_indices``; ``info[i]`` is the dict of feature point ``i`` (all points, as in timm)."""

    def __init__(self, points: list[dict], out_indices: Sequence[int] | None = None) -> None:
        self.info = [dict(p) for p in points]
        self.out_indices = check_out_indices(out_indices, len(points))

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, Sequence):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def get_dicts(self) -> list[dict]:
        return [dict(self.info[i]) for i in self.out_indices]

    @property
    def stages(self) -> list[int]:
        """The stage index of each returned feature map."""
        return self.get("stage")

    def __getitem__(self, i: int) -> dict:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return (f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, "
                f"reduction={self.reduction()})")


class EfficientNetFeatures(nn.Module):
    """Trainable multi-scale backbone: ``model``'s stem and stages up to the last requested
    feature point (shared, not copied); ``forward(x)`` returns the list of feature maps at
    ``out_indices`` (timm's ``features_only`` convention, see the module doc).

    Attributes: ``stem``, ``blocks`` (the kept stages), ``feature_info`` (:class:`FeatureInfo`),
    ``out_indices``, ``config``, ``padding_mode``, ``bn_eps``, ``bn_momentum``.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.feature_info = FeatureInfo(model_points(model), out_indices)
        self.out_indices = self.feature_info.out_indices
        self._taps = frozenset(self.feature_info.stages)
        self.config, self.padding_mode = model.config, model.padding_mode
        self.bn_eps, self.bn_momentum = model.bn_eps, model.bn_momentum
        self.stem = model.stem
        self.blocks = nn.Sequential(*list(model.blocks)[:max(self._taps) + 1])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self._taps:
                out.append(x)
        return out

    def extra_repr(self) -> str:
        return f"out_indices={self.out_indices}, channels={self.feature_info.channels()}"
