"""EfficientNet B0–B7 and EfficientNet-Lite0–4: one config table, one builder.

Plain trainable PyTorch modules (Conv2d / BatchNorm2d / SiLU or ReLU6). Parameter counts and
channel/repeat tables equal torchvision's B0–B7 and timm's Lite0–4. The fused inference model is
built from these modules elsewhere (``effnet_kernels.optimize``); this file needs only torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import conv_pads

__all__ = [
    "ALPHA",
    "BASE_RESOLUTION",
    "BASE_STAGES",
    "BETA",
    "CONFIGS",
    "FAMILIES",
    "GAMMA",
    "PUBLISHED_TOP1",
    "ConvBNAct",
    "EfficientNet",
    "EfficientNetConfig",
    "MBConv",
    "SqueezeExcitation",
    "StageSetting",
    "TOP1_SOURCES",
    "check_resolution",
    "compound_config",
    "create_model",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "get_config",
    "head_channels",
    "list_models",
    "make_divisible",
    "phi_point",
    "stage_settings",
    "stem_channels",
]


@dataclass(frozen=True)
class EfficientNetConfig:
    """Compound-scaling coefficients and per-family choices of one model."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool = False
    act: str = "silu"
    bn_eps: float = 1e-5  # default only; conversions take eps from the source
    bn_momentum: float = 0.1


@dataclass(frozen=True)
class StageSetting:
    """One stage after scaling: MBConv expand ratio, kernel, first-block stride, widths, repeats."""

    expand_ratio: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    repeats: int


# B0 base stages: (expand ratio, kernel, stride, out channels, repeats); SE ratio 0.25 (B only).
BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def _b(n, w, d, r, p, eps=1e-5, mom=0.1):
    return EfficientNetConfig(f"efficientnet_b{n}", w, d, r, p, bn_eps=eps, bn_momentum=mom)


def _lite(n, w, d, r, p):
    return EfficientNetConfig(f"efficientnet_lite{n}", w, d, r, p, lite=True, act="relu6")


CONFIGS: dict[str, EfficientNetConfig] = {
    c.name: c
    for c in (
        _b(0, 1.0, 1.0, 224, 0.2),
        _b(1, 1.0, 1.1, 240, 0.2),
        _b(2, 1.1, 1.2, 260, 0.3),
        _b(3, 1.2, 1.4, 300, 0.3),
        _b(4, 1.4, 1.8, 380, 0.4),
        _b(5, 1.6, 2.2, 456, 0.4, 1e-3, 0.01),  # torchvision's BN choice for B5–B7
        _b(6, 1.8, 2.6, 528, 0.5, 1e-3, 0.01),
        _b(7, 2.0, 3.1, 600, 0.5, 1e-3, 0.01),
        _lite(0, 1.0, 1.0, 224, 0.2),
        _lite(1, 1.0, 1.1, 240, 0.2),
        _lite(2, 1.1, 1.2, 260, 0.3),
        _lite(3, 1.2, 1.4, 280, 0.3),
        _lite(4, 1.4, 1.8, 300, 0.3),
    )
}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (≥ divisor), never below 0.9·v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def get_config(config: str | EfficientNetConfig) -> EfficientNetConfig:
    """``config`` itself, or the table's config of that model name (ValueError if unknown)."""
    if isinstance(config, EfficientNetConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"unknown model {config!r}; valid names: {', '.join(list_models())}")
    return CONFIGS[config]


# ----------------------------------------------------------------------------- compound scaling
# Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs" (ICML 2019), eq. 3 and §3.3:
# depth d = α^φ, width w = β^φ, resolution r = γ^φ, α·β²·γ² ≈ 2 (FLOPs ~ 2^φ); the grid search
# on B0 gave α = 1.2, β = 1.1, γ = 1.15. B1–B7 (the table above) are hand-rounded points near
# that curve, not its exact points.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224  # B0 / Lite0
FAMILIES = {"efficientnet": False, "efficientnet_lite": True}  # family name → lite
# What a custom point may ask for: outside these it is not an EfficientNet any more (and a
# typo such as width_mult=11 would build a 1.3-billion-parameter model).
WIDTH_RANGE = (0.1, 8.0)
DEPTH_RANGE = (0.1, 8.0)
PHI_RANGE = (-5.0, 10.0)
RESOLUTION_RANGE = (32, 2048)
RESOLUTION_MULTIPLE = 8  # φ's resolution γ^φ·224 is rounded to this

# Published ImageNet top-1 (%), each at the model's own resolution in the table above.
# B0–B7: the EfficientNet paper, Table 2. Lite0–4: the TensorFlow EfficientNet-Lite README
# (github.com/tensorflow/tpu, models/official/efficientnet/lite/README.md, float models).
PUBLISHED_TOP1: dict[str, float] = {
    "efficientnet_b0": 77.1, "efficientnet_b1": 79.1, "efficientnet_b2": 80.1,
    "efficientnet_b3": 81.6, "efficientnet_b4": 82.9, "efficientnet_b5": 83.6,
    "efficientnet_b6": 84.0, "efficientnet_b7": 84.3,
    "efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6,
    "efficientnet_lite3": 79.8, "efficientnet_lite4": 81.5,
}
TOP1_SOURCES = {False: "the EfficientNet paper (Tan & Le 2019), Table 2",
                True: "the TensorFlow EfficientNet-Lite README (github.com/tensorflow/tpu)"}


def _number(name: str, v, lo: float, hi: float) -> float:
    """``v`` as a float if it is a real number in [lo, hi], else ValueError saying so."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {v!r}")
    return v


def check_resolution(resolution) -> int:
    """``resolution`` as an int if it is a whole number of pixels in RESOLUTION_RANGE."""
    lo, hi = RESOLUTION_RANGE
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Real) or \
            not math.isfinite(resolution) or resolution != int(resolution):
        raise ValueError(f"resolution must be a whole number of pixels, got {resolution!r}")
    if not lo <= resolution <= hi:
        raise ValueError(f"resolution must be between {lo} and {hi} pixels, got {resolution!r}")
    return int(resolution)


def phi_point(phi: float) -> tuple[float, float, int]:
    """(width, depth, resolution) of compound coefficient φ: β^φ and α^φ rounded to 4 decimals
    (so that the printed numbers rebuild the same model), 224·γ^φ rounded to a multiple of 8."""
    phi = _number("phi", phi, *PHI_RANGE)
    res = round(BASE_RESOLUTION * GAMMA**phi / RESOLUTION_MULTIPLE) * RESOLUTION_MULTIPLE
    return round(BETA**phi, 4), round(ALPHA**phi, 4), max(RESOLUTION_RANGE[0], res)


def _size_reference(lite: bool, width: float, depth: float) -> EfficientNetConfig:
    """The largest named model of the family that the point contains (width and depth both ≥
    its own); the family's smallest when there is none. The table grows in both along its
    order, so this is the last such entry."""
    family = [c for c in CONFIGS.values() if c.lite == lite]
    inside = [c for c in family if c.width <= width + 1e-9 and c.depth <= depth + 1e-9]
    return inside[-1] if inside else family[0]


def compound_config(family: str = "efficientnet", *, phi: float | None = None,
                    width_mult: float | None = None, depth_mult: float | None = None,
                    resolution: int | None = None) -> EfficientNetConfig:
    """The config of a compound-scaled point of ``family`` ("efficientnet" or
    "efficientnet_lite").

    Either ``phi`` (width β^φ, depth α^φ, resolution 224·γ^φ; see :func:`phi_point`) or
    ``width_mult`` / ``depth_mult`` (default 1.0 each); ``resolution`` (the model's default
    input size; default 224, or φ's) may be given with either. The model is built by the same
    rules as the table's (:func:`stage_settings`: make_divisible widths, ceil repeats, SE on
    the block input width, Lite's fixed stem/head and first/last stage). Per-size choices
    (dropout, BN eps/momentum) are those of the largest named model of the family the point
    contains (B0's below B0). A point with the width and depth of a named model *is* that
    model (its config, name included, at ``resolution``: its pretrained weights fit).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    lite = FAMILIES[family]
    if phi is not None:
        if width_mult is not None or depth_mult is not None:
            raise ValueError("give either phi or width_mult/depth_mult, not both (phi sets "
                             "width = 1.1**phi and depth = 1.2**phi)")
        width, depth, res = phi_point(phi)
    else:
        width = 1.0 if width_mult is None else _number("width_mult", width_mult, *WIDTH_RANGE)
        depth = 1.0 if depth_mult is None else _number("depth_mult", depth_mult, *DEPTH_RANGE)
        res = BASE_RESOLUTION
    res = res if resolution is None else check_resolution(resolution)
    ref = _size_reference(lite, width, depth)
    if (ref.width, ref.depth) == (width, depth):
        return replace(ref, resolution=res)
    name = f"{family}_w{width:g}_d{depth:g}"
    return replace(ref, name=name, width=width, depth=depth, resolution=res)


def stem_channels(config: str | EfficientNetConfig) -> int:
    """Stem width: 32 for Lite (not scaled), make_divisible(32·width) otherwise."""
    cfg = get_config(config)
    return 32 if cfg.lite else make_divisible(32 * cfg.width)


def head_channels(config: str | EfficientNetConfig) -> int:
    """Head width: 1280 for Lite (not scaled), make_divisible(1280·width) otherwise."""
    cfg = get_config(config)
    return 1280 if cfg.lite else make_divisible(1280 * cfg.width)


def stage_settings(config: str | EfficientNetConfig) -> list[StageSetting]:
    """The seven scaled stages. Repeats = ceil(r·depth); Lite keeps the first and last at r."""
    cfg = get_config(config)
    stages, in_ch = [], stem_channels(cfg)
    for i, (e, k, s, c, r) in enumerate(BASE_STAGES):
        fixed = cfg.lite and i in (0, len(BASE_STAGES) - 1)
        out_ch = make_divisible(c * cfg.width)
        stages.append(
            StageSetting(e, k, s, in_ch, out_ch, r if fixed else math.ceil(r * cfg.depth))
        )
        in_ch = out_ch
    return stages


_ACTS = {"silu": nn.SiLU, "relu6": nn.ReLU6, "identity": nn.Identity}


class ConvBNAct(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → activation.

    ``padding_mode="symmetric"`` pads (k−1)/2 on every side (torchvision, timm); ``"same"`` pads
    like TensorFlow for the actual input size (extra pixel right/bottom), via ``F.pad``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str = "silu",
        bn_eps: float = 1e-5,
        padding_mode: str = "symmetric",
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
        if padding_mode not in ("symmetric", "same"):
            raise ValueError(f"padding_mode must be 'symmetric' or 'same', got {padding_mode!r}")
        self.kernel, self.stride = kernel, stride
        self.padding_mode, self.act_name = padding_mode, act
        pad = (kernel - 1) // 2 if padding_mode == "symmetric" else 0
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = _ACTS[act]()

    def pad_for(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding this layer applies to an h×w input."""
        return conv_pads(self.padding_mode, h, w, self.kernel, self.stride)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode == "same":
            pad = self.pad_for(x.shape[-2], x.shape[-1])
            if any(pad):
                x = F.pad(x, pad)
        return self.act(self.bn(self.conv(x)))

    def extra_repr(self) -> str:
        return f"act={self.act_name!r}, padding_mode={self.padding_mode!r}"


class SqueezeExcitation(nn.Module):
    """x · sigmoid(fc2(act(fc1(mean_hw(x))))), fc1/fc2 1×1 convs with bias."""

    def __init__(self, channels: int, squeeze_channels: int, act: str = "silu") -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.act = _ACTS[act]()

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth, per sample: zero with probability p, scale survivors by 1/(1−p)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    noise.bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return x * noise


class MBConv(nn.Module):
    """Inverted residual: [1×1 expand] → k×k depthwise → [SE] → 1×1 project (+ residual).

    ``se_ratio`` is relative to the block *input* width: squeeze = max(1, int(in_ch·se_ratio));
    None or 0 disables SE. Stochastic depth applies in training, on residual blocks only.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        se_ratio: float | None = 0.25,
        act: str = "silu",
        bn_eps: float = 1e-5,
        padding_mode: str = "symmetric",
        drop_path_rate: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_ch, self.out_ch, self.kernel, self.stride = in_ch, out_ch, kernel, stride
        self.expand_ratio, self.drop_path_rate = expand_ratio, drop_path_rate
        self.use_residual = stride == 1 and in_ch == out_ch
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "padding_mode": padding_mode}
        mid = make_divisible(in_ch * expand_ratio) if expand_ratio != 1 else in_ch
        self.expand = ConvBNAct(in_ch, mid, 1, act=act, **bn) if expand_ratio != 1 else None
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act, **bn)
        self.se = SqueezeExcitation(mid, max(1, int(in_ch * se_ratio)), act) if se_ratio else None
        self.project = ConvBNAct(mid, out_ch, 1, act="identity", **bn)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        if self.use_residual:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate:.4g}"


class EfficientNet(nn.Module):
    """EfficientNet-B0–B7 / Lite0–4: stem → 7 stages of MBConv → head → pool → dropout → Linear.

    Args:
        config: a model name from :func:`list_models` or an :class:`EfficientNetConfig`.
        padding_mode: ``"symmetric"`` (torchvision/timm) or ``"same"`` (TensorFlow-trained weights).
        bn_eps, bn_momentum: default from the config (torchvision's values).
        dropout: classifier dropout; default from the config.
        drop_path_rate: stochastic depth; block i of N drops with p = drop_path_rate·i/N.
    """

    def __init__(
        self,
        config: str | EfficientNetConfig,
        num_classes: int = 1000,
        padding_mode: str = "symmetric",
        bn_eps: float | None = None,
        dropout: float | None = None,
        drop_path_rate: float = 0.2,
        bn_momentum: float | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config = get_config(config)
        self.padding_mode, self.num_classes = padding_mode, num_classes
        self.bn_eps = cfg.bn_eps if bn_eps is None else bn_eps
        self.bn_momentum = cfg.bn_momentum if bn_momentum is None else bn_momentum
        common = {
            "bn_eps": self.bn_eps,
            "bn_momentum": self.bn_momentum,
            "padding_mode": padding_mode,
        }
        stages = stage_settings(cfg)
        self.stem = ConvBNAct(3, stem_channels(cfg), 3, 2, act=cfg.act, **common)
        total, idx, blocks = sum(s.repeats for s in stages), 0, []
        for st in stages:
            stage = []
            for j in range(st.repeats):
                stage.append(
                    MBConv(
                        st.in_ch if j == 0 else st.out_ch,
                        st.out_ch,
                        st.expand_ratio,
                        st.kernel,
                        st.stride if j == 0 else 1,
                        se_ratio=None if cfg.lite else 0.25,
                        act=cfg.act,
                        drop_path_rate=drop_path_rate * idx / total,
                        **common,
                    )
                )
                idx += 1
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(stages[-1].out_ch, head_channels(cfg), 1, act=cfg.act, **common)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout if dropout is None else dropout)
        # num_classes=0: no classifier, the forward returns the pooled embedding (as timm)
        self.classifier = (nn.Linear(head_channels(cfg), num_classes) if num_classes
                           else nn.Identity())
        if self.stem.conv.weight.device.type != "meta":  # a meta model has no values to init
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's init: kaiming-normal fan_out convs, BN 1/0, Linear U(±1/√out), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, blocks, head conv+BN+act: the (N, C_head, ⌈H/32⌉, ⌈W/32⌉) map before pooling."""
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.pool(self.forward_features(x)), 1)
        return self.classifier(self.dropout(x))


def list_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`."""
    return sorted(CONFIGS)


def _resolve_config(name: str, phi=None, width_mult=None, depth_mult=None,
                    resolution=None) -> EfficientNetConfig:
    """The config ``create_model`` builds: a table name (``resolution`` may change its default
    input size) or a family with its compound-scaling arguments (:func:`compound_config`)."""
    if name in FAMILIES:
        return compound_config(name, phi=phi, width_mult=width_mult, depth_mult=depth_mult,
                               resolution=resolution)
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}, or a "
                         f"family to scale ({', '.join(FAMILIES)}) with phi= or "
                         "width_mult=/depth_mult=")
    if phi is not None or width_mult is not None or depth_mult is not None:
        family = "efficientnet_lite" if CONFIGS[name].lite else "efficientnet"
        raise ValueError(f"{name} is a fixed point of the table; phi/width_mult/depth_mult "
                         f"scale a family: create_model({family!r}, phi=...)")
    cfg = CONFIGS[name]
    return cfg if resolution is None else replace(cfg, resolution=check_resolution(resolution))


def _build(name: str, features_only: bool = False, out_indices=None, *, phi=None,
           width_mult=None, depth_mult=None, resolution=None, **kwargs) -> nn.Module:
    """The model ``name`` (kwargs go to :class:`EfficientNet`; ``num_classes=0`` drops the
    classifier: the forward returns the pooled embedding); with ``features_only=True`` the
    multi-scale backbone :class:`~effnet_kernels.models.features.EfficientNetFeatures` over it,
    returning the feature maps at ``out_indices`` (default all five, timm's convention)."""
    from .features import EfficientNetFeatures

    cfg = _resolve_config(name, phi, width_mult, depth_mult, resolution)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices needs features_only=True")
    model = EfficientNet(cfg, **kwargs)
    if not features_only:
        return model
    return EfficientNetFeatures(model, out_indices)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name (see :func:`list_models`), or a compound-scaled one of a family:

        create_model("efficientnet_b3")                       # the table's B3
        create_model("efficientnet_b0", resolution=256)       # B0, default input size 256
        create_model("efficientnet", phi=1.5)                 # width 1.1^1.5, depth 1.2^1.5, 280 px
        create_model("efficientnet_lite", width_mult=1.1, depth_mult=1.3, resolution=256)

    ``phi`` / ``width_mult`` / ``depth_mult`` / ``resolution``: see :func:`compound_config`
    (nonsense values raise ValueError). Other kwargs go to :class:`EfficientNet`, except
    ``features_only`` / ``out_indices`` (a multi-scale backbone, see ``_build``)."""
    return _build(name, **kwargs)


def _constructor(name: str):
    def build(**kwargs) -> nn.Module:
        return _build(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name} (random init); kwargs go to :class:`EfficientNet`, except "
                     "``features_only`` / ``out_indices`` (a multi-scale backbone).")
    return build


efficientnet_b0 = _constructor("efficientnet_b0")
efficientnet_b1 = _constructor("efficientnet_b1")
efficientnet_b2 = _constructor("efficientnet_b2")
efficientnet_b3 = _constructor("efficientnet_b3")
efficientnet_b4 = _constructor("efficientnet_b4")
efficientnet_b5 = _constructor("efficientnet_b5")
efficientnet_b6 = _constructor("efficientnet_b6")
efficientnet_b7 = _constructor("efficientnet_b7")
efficientnet_lite0 = _constructor("efficientnet_lite0")
efficientnet_lite1 = _constructor("efficientnet_lite1")
efficientnet_lite2 = _constructor("efficientnet_lite2")
efficientnet_lite3 = _constructor("efficientnet_lite3")
efficientnet_lite4 = _constructor("efficientnet_lite4")
