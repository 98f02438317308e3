"""Layer shapes, bytes, FLOPs and memory floors (rooflines) of the EfficientNet models.

Shapes are read from the model itself: :func:`model_shapes` builds the model of that name
(``effnet_kernels.models``, from its ``CONFIGS`` entry) on the meta device, so no tensor is
allocated, and walks its modules. There is no second copy of the architecture here.

Two floors per model (activations read once and written once per fused group, weights once per
forward, BN folded):

* ``kernel``: one kernel per op-group, the kernels this library builds: stem conv+BN+act; per
  MBConv block expand 1×1+BN+act, depthwise+BN+act+SE-squeeze, SE gate, project 1×1 with the
  gate on load + BN (+ residual read); head 1×1+BN+act+global pool (the head map never
  written); classifier. B0@224 fp16: 26.3 MiB of activations per image (FACTS.md: "≈ 26 MB").
* ``block``: one kernel per MBConv block (reads the block input once, writes its output once).
  A lower bound, not a plan: the SE pool needs the whole depthwise output first.

A floor time is those bytes over the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..models.efficientnet import CONFIGS, EfficientNet, EfficientNetConfig, MBConv, get_config

__all__ = ["ELEM_SIZE", "BlockShape", "DWLayer", "ModelShapes", "add_roofline", "conv_out",
           "dw_layers", "dwconv_bytes", "dwconv_flops", "floor_ms", "model_shapes",
           "model_traffic", "param_count"]

ELEM_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def conv_out(size: int, k: int, stride: int) -> int:
    """Output size of a k×k conv with symmetric (k−1)/2 padding (stride 2 halves, rounding up)."""
    p = (k - 1) // 2
    return (size + 2 * p - k) // stride + 1


@dataclass(frozen=True)
class BlockShape:
    """One MBConv block at a given input size (symmetric padding)."""

    stage: int  # 1..7
    index: int  # block index inside the stage
    in_ch: int
    mid_ch: int  # expanded width (= in_ch without expansion)
    out_ch: int
    se_ch: int  # squeeze width; 0 = no SE (Lite)
    kernel: int
    stride: int
    h: int
    w: int
    ho: int
    wo: int

    @property
    def expand(self) -> bool:
        return self.mid_ch != self.in_ch

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class ModelShapes:
    """Every layer shape of one model at one input resolution."""

    name: str
    resolution: int
    stem_ch: int
    stem_hw: tuple[int, int]
    blocks: tuple[BlockShape, ...]
    head_in: int
    head_ch: int
    head_hw: tuple[int, int]
    num_classes: int


@functools.lru_cache(maxsize=None)
def _meta_model(model: str | EfficientNetConfig, num_classes: int) -> EfficientNet:
    """The ek model of that name (or config) on the meta device (shapes only, no memory)."""
    cfg = get_config(model)
    with torch.device("meta"):
        return EfficientNet(cfg, num_classes=num_classes)


def param_count(model: str | EfficientNetConfig, num_classes: int = 1000) -> int:
    """Parameters of the trainable model (BN not folded), from its meta-device copy."""
    return sum(p.numel() for p in _meta_model(model, num_classes).parameters())


def _block_shape(stage: int, index: int, blk: MBConv, h: int, w: int) -> BlockShape:
    mid = blk.dw.conv.in_channels
    se = blk.se.fc1.out_channels if blk.se is not None else 0
    ho, wo = conv_out(h, blk.kernel, blk.stride), conv_out(w, blk.kernel, blk.stride)
    return BlockShape(stage, index, blk.in_ch, mid, blk.out_ch, se, blk.kernel, blk.stride,
                      h, w, ho, wo)


def model_shapes(model: str | EfficientNetConfig, resolution: int | None = None,
                 num_classes: int = 1000) -> ModelShapes:
    """Every layer shape of ``model`` (an ek model name, or the config of a compound-scaled
    one) at ``resolution`` (default: its own)."""
    m = _meta_model(model, num_classes)
    res = int(resolution or m.config.resolution)
    stem = m.stem.conv
    h = w = conv_out(res, stem.kernel_size[0], stem.stride[0])
    stem_hw, blocks = (h, w), []
    for si, stage in enumerate(m.blocks, start=1):
        for j, blk in enumerate(stage):
            b = _block_shape(si, j, blk, h, w)
            blocks.append(b)
            h, w = b.ho, b.wo
    return ModelShapes(m.config.name, res, stem.out_channels, stem_hw, tuple(blocks),
                       m.head.conv.in_channels, m.head.conv.out_channels, (h, w),
                       m.classifier.out_features)


@dataclass(frozen=True)
class DWLayer:
    """A depthwise conv layer shape: C channels, H×W input, k×k, stride, Ho×Wo output."""

    model: str
    resolution: int
    stage: int
    block: int
    c: int
    h: int
    w: int
    k: int
    stride: int
    ho: int
    wo: int

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.c, self.h, self.w, self.k, self.stride)

    @property
    def name(self) -> str:
        return f"C{self.c}_{self.h}x{self.w}_k{self.k}s{self.stride}"


def dw_layers(model: str, resolution: int | None = None, distinct: bool = True) -> list[DWLayer]:
    """The depthwise layers of ``model`` in network order (only the first of equal shapes)."""
    ms = model_shapes(model, resolution)
    out, seen = [], set()
    for b in ms.blocks:
        layer = DWLayer(model, ms.resolution, b.stage, b.index, b.mid_ch, b.h, b.w, b.kernel,
                        b.stride, b.ho, b.wo)
        if distinct and layer.key in seen:
            continue
        seen.add(layer.key)
        out.append(layer)
    return out


def dwconv_bytes(n: int, c: int, h: int, w: int, ho: int, wo: int, k: int, elem_size: int,
                 pool: bool = True) -> int:
    """Bytes ``dwconv_bias_act`` must move: x once, y once, weight and bias once (all in the
    activation dtype), and with ``pool`` the float32 (N, C) pool."""
    return elem_size * (n * c * h * w + n * c * ho * wo + c * k * k + c) + (4 * n * c if pool else 0)


def dwconv_flops(n: int, c: int, ho: int, wo: int, k: int) -> int:
    """Multiply-adds of the depthwise conv, counted as 2 FLOPs (bias, act and pool not counted)."""
    return 2 * k * k * n * c * ho * wo


def _block_traffic(b: BlockShape, e: int) -> tuple[int, int, int, int]:
    """(kernel-floor bytes, block-floor bytes, folded parameters, MACs) of one MBConv block."""
    x_in, hw, hwo = b.in_ch * b.h * b.w, b.h * b.w, b.ho * b.wo
    mid_in, mid_out, y = b.mid_ch * hw, b.mid_ch * hwo, b.out_ch * hwo
    kern = params = macs = 0
    if b.expand:  # expand 1×1 + BN + act: read x, write the expanded map
        kern += e * (x_in + mid_in)
        params += b.mid_ch * b.in_ch + b.mid_ch
        macs += b.in_ch * b.mid_ch * hw
    kern += e * (mid_in + mid_out)  # depthwise + BN + act (+ pool)
    params += b.mid_ch * b.kernel * b.kernel + b.mid_ch
    macs += b.mid_ch * b.kernel * b.kernel * hwo
    if b.se_ch:  # float32: pool written, pool read + gate written by the SE kernel, gate read
        kern += 4 * 4 * b.mid_ch
        params += 2 * b.se_ch * b.mid_ch + b.se_ch + b.mid_ch
        macs += 2 * b.se_ch * b.mid_ch
    kern += e * (mid_out + y + (y if b.residual else 0))  # project (+ residual) + BN
    params += b.out_ch * b.mid_ch + b.out_ch
    macs += b.mid_ch * b.out_ch * hwo
    return kern, e * (x_in + y), params, macs


def model_traffic(model: str | EfficientNetConfig | ModelShapes, resolution: int | None = None,
                  elem_size: int = 2) -> dict:
    """Minimum traffic and work of one forward (see the module docstring).

    Returns per-image activation bytes for one kernel per op-group (``act_bytes_kernel``) and one
    kernel per block (``act_bytes_block``), the BN-folded ``weight_bytes`` read once per forward
    (``params_folded`` parameters), ``macs`` and ``flops`` (= 2·macs) per image. Pools and SE
    gates are float32.
    """
    ms = model if isinstance(model, ModelShapes) else model_shapes(model, resolution)
    e = elem_size
    h0, w0 = ms.stem_hw
    kern = block = e * (3 * ms.resolution * ms.resolution + ms.stem_ch * h0 * w0)
    params = ms.stem_ch * 27 + ms.stem_ch
    macs = 27 * ms.stem_ch * h0 * w0
    for b in ms.blocks:
        k, bl, p, m = _block_traffic(b, e)
        kern, block, params, macs = kern + k, block + bl, params + p, macs + m
    hh, wh = ms.head_hw
    params += ms.head_ch * ms.head_in + ms.head_ch + ms.num_classes * ms.head_ch + ms.num_classes
    macs += ms.head_in * ms.head_ch * hh * wh + ms.head_ch * ms.num_classes
    # head conv+BN+act+pool (pool written, fp32), classifier (pool read, logits written)
    tail = e * ms.head_in * hh * wh + 4 * ms.head_ch + 4 * ms.head_ch + e * ms.num_classes
    return {"model": ms.name, "resolution": ms.resolution, "elem_size": e,
            "act_bytes_kernel": kern + tail, "act_bytes_block": block + tail,
            "weight_bytes": e * params, "params_folded": params, "macs": macs, "flops": 2 * macs}


def floor_ms(traffic: dict, batch: int, copy_gbps: float | None, kind: str = "kernel"):
    """Memory floor of a batch: (batch · activation bytes + weight bytes) / copy bandwidth."""
    if not copy_gbps:
        return None
    nbytes = batch * traffic[f"act_bytes_{kind}"] + traffic["weight_bytes"]
    return nbytes / (copy_gbps * 1e9) * 1e3


def _roofline_entry(model: str, res: int, dt: str, bw: float | None) -> dict:
    t = model_traffic(model, res, ELEM_SIZE[dt])
    return {"model": model, "resolution": res, "dtype": dt,
            "act_mb_per_img_kernel": t["act_bytes_kernel"] / 1e6,
            "act_mb_per_img_block": t["act_bytes_block"] / 1e6,
            "weight_mb": t["weight_bytes"] / 1e6, "gflops_per_img": t["flops"] / 1e9,
            "copy_gbps": bw,  # floors per image (activations) and per forward (weights)
            "floor_ms_per_img_kernel": t["act_bytes_kernel"] / (bw * 1e6) if bw else None,
            "floor_ms_per_img_block": t["act_bytes_block"] / (bw * 1e6) if bw else None,
            "floor_ms_weights": t["weight_bytes"] / (bw * 1e6) if bw else None}


def add_roofline(doc: dict, models=(), resolution: int | None = None) -> None:
    """Fill ``doc["roofline"]`` (per model and dtype) and each result's floors and % of them,
    for the (model, resolution) pairs of the results plus ``models`` (at ``resolution``)."""
    bw = doc.get("copy_gbps")
    dts = sorted({r["dtype"] for r in doc["results"]} or {"fp32"})
    pairs = list(dict.fromkeys([(r["model"], r["resolution"]) for r in doc["results"]] +
                               [(m, resolution or CONFIGS[m].resolution) for m in models]))
    doc["roofline"] = [_roofline_entry(m, res, dt, bw) for m, res in pairs for dt in dts]
    for r in doc["results"]:
        t = model_traffic(r["model"], r["resolution"], ELEM_SIZE[r["dtype"]])
        fk, fb = floor_ms(t, r["batch"], bw, "kernel"), floor_ms(t, r["batch"], bw, "block")
        r["floor_ms_kernel"], r["floor_ms_block"] = fk, fb
        r["pct_of_floor_kernel"] = 100 * fk / r["ms_per_batch"] if fk else None
        r["pct_of_floor_block"] = 100 * fb / r["ms_per_batch"] if fb else None
