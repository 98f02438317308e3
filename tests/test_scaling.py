"""Compound-scaled models (``create_model("efficientnet", phi=/width_mult=...)``)."""

import copy
import math

import pytest
import torch
from helpers import HAS_GPU, needs_ext, needs_triton, rel_err

import effnet_kernels as ek
from effnet_kernels import ops
from effnet_kernels.bench.shapes import model_traffic
from effnet_kernels.models import (CONFIGS, PUBLISHED_TOP1, compound_config, create_model,
                                   make_divisible, stage_settings)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_table_points_are_the_named_models(name):
    """The family at a named model's width, depth and resolution is that model: same config
    (name, dropout, BN), same parameter count and parameter shapes."""
    c = CONFIGS[name]
    family = "efficientnet_lite" if c.lite else "efficientnet"
    cfg = compound_config(family, width_mult=c.width, depth_mult=c.depth,
                          resolution=c.resolution)
    assert cfg == c
    a, b = meta(name), meta(family, width_mult=c.width, depth_mult=c.depth)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert n_params(a) == n_params(b)


def test_custom_points_follow_the_table_rules():
    m = meta("efficientnet", width_mult=1.05, depth_mult=1.3, resolution=232)
    cfg = m.config
    assert (cfg.name, cfg.width, cfg.depth, cfg.resolution) == \
        ("efficientnet_w1.05_d1.3", 1.05, 1.3, 232)
    assert m.stem.conv.out_channels == make_divisible(32 * 1.05) == 32
    assert m.head.conv.out_channels == make_divisible(1280 * 1.05) == 1344
    repeats = [len(s) for s in m.blocks]
    assert repeats == [math.ceil(r * 1.3) for r in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 4, 4, 6, 2]
    assert [s.out_ch for s in stage_settings(cfg)] == [make_divisible(c * 1.05) for c in
                                                      (16, 24, 40, 80, 112, 192, 320)]
    blk = m.blocks[3][1]  # SE squeeze on the block's input width
    assert blk.se.fc1.out_channels == max(1, int(blk.in_ch * 0.25))
    # per-size choices from the largest named model inside the point: B1 (1.0, 1.1)
    assert m.dropout.p == 0.2 and m.bn_eps == 1e-5
    assert meta("efficientnet", width_mult=1.5, depth_mult=2.0).dropout.p == 0.4  # B4
    big = meta("efficientnet", width_mult=1.7, depth_mult=2.3)  # B5: torchvision's BN
    assert (big.dropout.p, big.bn_eps, big.bn_momentum) == (0.4, 1e-3, 0.01)
    assert meta("efficientnet", width_mult=0.5, depth_mult=0.5).dropout.p == 0.2  # < B0: B0's


def test_lite_custom_points_keep_the_lite_rules():
    m = meta("efficientnet_lite", width_mult=1.3, depth_mult=1.6)
    assert m.config.lite and m.config.name == "efficientnet_lite_w1.3_d1.6"
    assert m.stem.conv.out_channels == 32 and m.head.conv.out_channels == 1280  # not scaled
    repeats = [len(s) for s in m.blocks]
    assert repeats[0] == 1 and repeats[-1] == 1  # first and last stage not repeated more
    assert repeats[1:-1] == [math.ceil(r * 1.6) for r in (2, 2, 3, 3, 4)]
    assert all(b.se is None and b.dw.act_name == "relu6" for s in m.blocks for b in s)
    assert m.dropout.p == 0.3  # Lite3 (1.2, 1.4) is inside


def test_phi_shorthand_on_the_papers_coefficients():
    assert compound_config(phi=0) == CONFIGS["efficientnet_b0"]
    half = compound_config(phi=0.5)
    assert (half.width, half.depth, half.resolution) == (1.0488, 1.0954, 240)
    one = compound_config(phi=1)  # β, α = B2's width and depth; γ·224 = 257.6 → 256
    assert one.name == "efficientnet_b2" and one.resolution == 256
    lite = meta("efficientnet_lite", phi=2).config
    assert (lite.width, lite.depth, lite.resolution, lite.lite) == (1.21, 1.44, 296, True)
    assert compound_config(phi=1, resolution=300).resolution == 300
    # FLOPs ~ (α·β²·γ²)^φ = 1.92^φ per step of φ, off by the rounding of widths, repeats and
    # resolutions (measured: 1.65–2.23 per step from φ = 0 to 7; 0.77 → 77.5 GFLOPs)
    f = [model_traffic(compound_config(phi=p))["flops"] for p in range(8)]
    assert all(1.6 < b / a < 2.3 for a, b in zip(f, f[1:]))
    assert 1.8 < (f[-1] / f[0]) ** (1 / 7) < 2.0


def test_named_models_take_a_resolution_but_not_multipliers():
    m = meta("efficientnet_b0", resolution=256)
    assert m.config.name == "efficientnet_b0" and m.config.resolution == 256
    assert n_params(m) == n_params(meta("efficientnet_b0"))
    with pytest.raises(ValueError, match="fixed point of the table.*create_model"):
        create_model("efficientnet_b3", phi=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"width_mult": 0}, "width_mult must be between 0.1 and 8"),
    ({"width_mult": -1.0}, "width_mult must be between"),
    ({"depth_mult": float("nan")}, "depth_mult must be between"),
    ({"depth_mult": 100}, "depth_mult must be between 0.1 and 8"),
    ({"width_mult": "1.1"}, "width_mult must be a number"),
    ({"width_mult": True}, "width_mult must be a number"),
    ({"phi": 50}, "phi must be between"),
    ({"phi": float("inf")}, "phi must be between"),
    ({"phi": 1, "width_mult": 1.1}, "either phi or width_mult"),
    ({"resolution": 16}, "resolution must be between 32 and 2048"),
    ({"resolution": 224.5}, "whole number of pixels"),
    ({"resolution": float("inf")}, "whole number of pixels"),
    ({"resolution": "224"}, "whole number of pixels"),
])
def test_nonsense_multipliers_and_resolutions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("efficientnet", **kwargs)


def test_unknown_family_or_model_names_the_valid_ones():
    with pytest.raises(ValueError, match="efficientnet_lite4, or a family to scale"):
        create_model("efficientnet_xl", phi=1)
    with pytest.raises(ValueError, match="unknown family"):
        compound_config("resnet")


def _tiny(family):
    """A small custom point: every stage one block (depth 0.1), narrow (width 0.1: 8–32
    channels)."""
    torch.manual_seed(0)
    m = create_model(family, width_mult=0.1, depth_mult=0.1, resolution=32).eval()
    for mod in m.modules():  # non-trivial folded BN
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m


BACKENDS = [
    "torch",
    pytest.param("cpu", marks=needs_ext),
    pytest.param("triton", marks=needs_triton),  # the interpreter on the CPU
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("family", ["efficientnet", "efficientnet_lite"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_models_run_through_optimize(family, backend):
    m = _tiny(family)
    assert [len(s) for s in m.blocks] == [1] * 7 and m.config.name.endswith("_w0.1_d0.1")
    dev = "cuda" if backend == "cuda" or (backend == "triton" and HAS_GPU) else "cpu"
    if backend not in ops.available_backends(dev):
        pytest.skip(f"backend {backend!r} is not available on {dev}")
    x = torch.randn(1, 3, 13, 11)  # small: the Triton interpreter's cost is per program
    with torch.no_grad():
        ref = m(x)
    f = ek.optimize(copy.deepcopy(m).to(dev), backend=backend)
    with torch.no_grad():
        out = f(x.to(dev)).cpu()
    assert out.shape == (1, 1000)
    assert rel_err(out, ref) <= (1e-5 if dev == "cpu" else 2e-3)  # GPU: TF32 stem conv
