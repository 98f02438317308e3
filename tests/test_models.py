"""effnet_kernels.models: config table, parameter counts, padding, stochastic depth, train mode."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels.models import (
    CONFIGS,
    ConvBNAct,
    EfficientNet,
    MBConv,
    create_model,
    efficientnet_b0,
    efficientnet_lite0,
    head_channels,
    list_models,
    make_divisible,
    stage_settings,
    stem_channels,
)

PARAMS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "efficientnet_lite0": 4_652_008,
    # timm efficientnet_lite1..4 (pretrained=False), checked against timm below
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}
B_MODELS = [f"efficientnet_b{i}" for i in range(8)]
LITE_MODELS = [f"efficientnet_lite{i}" for i in range(5)]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@functools.cache
def cached(name, padding_mode="symmetric"):
    """Read-only eval models shared between tests (never train or modify these)."""
    torch.manual_seed(0)
    return create_model(name, padding_mode=padding_mode).eval()


def test_list_models():
    assert list_models() == sorted(B_MODELS + LITE_MODELS)


@pytest.mark.parametrize("name", B_MODELS + LITE_MODELS)
def test_param_count(name):
    m = cached(name) if name in ("efficientnet_b0", "efficientnet_lite0") else None
    if m is None:  # same constructor, no weight init: large models build in milliseconds
        with torch.device("meta"):
            m = create_model(name)
    assert n_params(m) == PARAMS[name]


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite4"])
def test_lite_param_count_matches_timm(name):
    timm = pytest.importorskip("timm")
    ref = timm.create_model(name, pretrained=False)
    with torch.device("meta"):
        m = create_model(name)
    assert n_params(m) == n_params(ref) == PARAMS[name]
    assert [len(s) for s in m.blocks] == [len(s) for s in ref.blocks]


@pytest.mark.parametrize("name", B_MODELS)
def test_stages_match_torchvision(name):
    from torchvision.models.efficientnet import _efficientnet_conf

    cfg = CONFIGS[name]
    tv, _ = _efficientnet_conf(name, width_mult=cfg.width, depth_mult=cfg.depth)
    ours = [
        (s.expand_ratio, s.kernel, s.stride, s.in_ch, s.out_ch, s.repeats)
        for s in stage_settings(name)
    ]
    theirs = [
        (c.expand_ratio, c.kernel, c.stride, c.input_channels, c.out_channels, c.num_layers)
        for c in tv
    ]
    assert ours == theirs
    assert head_channels(name) == 4 * theirs[-1][4]


def test_b7_table_spot_check():
    st = stage_settings("efficientnet_b7")
    assert [s.out_ch for s in st] == [32, 48, 80, 160, 224, 384, 640]
    assert [s.repeats for s in st] == [4, 7, 7, 10, 10, 13, 4]
    assert (stem_channels("efficientnet_b7"), head_channels("efficientnet_b7")) == (64, 2560)
    with torch.device("meta"):
        m = create_model("efficientnet_b7")
    assert [len(s) for s in m.blocks] == [4, 7, 7, 10, 10, 13, 4]
    blk = m.blocks[3][0]  # 80 → 160, stride 2, 3×3, expanded 480, SE squeeze 80 // 4
    assert (blk.in_ch, blk.out_ch, blk.stride, blk.kernel) == (80, 160, 2, 3)
    assert blk.dw.conv.weight.shape == (480, 1, 3, 3) and blk.se.fc1.out_channels == 20
    assert not blk.use_residual and m.blocks[3][1].use_residual


def test_lite_table_spot_check():
    st = stage_settings("efficientnet_lite4")
    assert [s.out_ch for s in st] == [24, 32, 56, 112, 160, 272, 448]
    assert [s.repeats for s in st] == [1, 4, 4, 6, 6, 8, 1]  # first and last not depth-scaled
    m = cached("efficientnet_lite0")
    assert m.stem.conv.out_channels == 32 and m.head.conv.out_channels == 1280
    assert all(b.se is None and b.dw.act_name == "relu6" for s in m.blocks for b in s)
    assert isinstance(m.stem.act, torch.nn.ReLU6)


def test_config_table():
    got = {n: (c.width, c.depth, c.resolution, c.dropout) for n, c in CONFIGS.items()}
    assert got == {
        "efficientnet_b0": (1.0, 1.0, 224, 0.2),
        "efficientnet_b1": (1.0, 1.1, 240, 0.2),
        "efficientnet_b2": (1.1, 1.2, 260, 0.3),
        "efficientnet_b3": (1.2, 1.4, 300, 0.3),
        "efficientnet_b4": (1.4, 1.8, 380, 0.4),
        "efficientnet_b5": (1.6, 2.2, 456, 0.4),
        "efficientnet_b6": (1.8, 2.6, 528, 0.5),
        "efficientnet_b7": (2.0, 3.1, 600, 0.5),
        "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
        "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
        "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
        "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
        "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
    }
    with torch.device("meta"):
        assert create_model("efficientnet_b5").bn_eps == 1e-3
        assert create_model("efficientnet_b4").bn_eps == 1e-5
        assert create_model("efficientnet_b2", bn_eps=1e-3).blocks[0][0].dw.bn.eps == 1e-3
        assert create_model("efficientnet_b3").dropout.p == 0.3


@pytest.mark.parametrize(
    "v,want",
    [
        (3, 8),
        (10, 16),
        (11.9, 16),
        (12, 16),
        (17.6, 16),
        (35.2, 32),
        (32 * 1.8, 56),
        (40 * 1.4, 56),
        (112 * 1.1, 120),
        (1280 * 1.1, 1408),
    ],
)
def test_make_divisible_cases(v, want):
    assert make_divisible(v) == want


def test_make_divisible_matches_torchvision():
    from torchvision.models._utils import _make_divisible

    for i in range(1, 4000):
        v = i * 0.37
        assert make_divisible(v) == _make_divisible(v, 8), v


@pytest.mark.parametrize(
    "name", ["efficientnet_b0", "efficientnet_b3", "efficientnet_lite0", "efficientnet_lite2"]
)
@pytest.mark.parametrize("padding_mode", ["symmetric", "same"])
def test_forward_shapes(name, padding_mode):
    m = cached(name, padding_mode)
    x = torch.randn(2, 3, 67, 53)
    with torch.no_grad():
        feats, out = m.forward_features(x), m(x)
    # every stride-2 layer maps n → ceil(n/2) in both padding modes: 67 → 3, 53 → 2
    assert feats.shape == (2, head_channels(name), 3, 2)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    torch.testing.assert_close(out, m.classifier(feats.mean((2, 3))), rtol=1e-5, atol=1e-5)


def test_num_classes_and_custom_config():
    m = efficientnet_lite0(num_classes=7, dropout=0.0)
    assert m.classifier.out_features == 7 and m.dropout.p == 0.0
    assert m(torch.randn(1, 3, 33, 35)).shape == (1, 7)


def test_init_like_torchvision():
    m = cached("efficientnet_b0")
    conv = m.blocks[1][0].expand.conv  # kaiming normal, fan_out = 96
    assert abs(conv.weight.std().item() - math.sqrt(2 / 96)) < 0.01
    assert (m.blocks[1][0].dw.bn.weight == 1).all() and (m.blocks[1][0].dw.bn.bias == 0).all()
    r = 1 / math.sqrt(1000)
    assert m.classifier.weight.abs().max() <= r and (m.classifier.bias == 0).all()
    assert (m.blocks[0][0].se.fc1.bias == 0).all()


def test_stochastic_depth_rates():
    m = efficientnet_b0(drop_path_rate=0.2)
    blocks = [b for s in m.blocks for b in s]
    assert len(blocks) == 16
    assert [b.drop_path_rate for b in blocks] == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_stochastic_depth_semantics():
    torch.manual_seed(0)
    blk = MBConv(16, 16, 6, 3, 1, drop_path_rate=0.5)
    blk.eval()  # BN on running stats, so the residual branch is deterministic
    x = torch.randn(256, 16, 5, 5)
    with torch.no_grad():
        branch = blk(x) - x
        blk.training = True  # only the block itself in training mode: drop path on
        out = blk(x) - x
    dropped = out.flatten(1).abs().amax(1) == 0
    kept = ~dropped
    assert 64 < int(dropped.sum()) < 192  # p = 0.5 per sample
    torch.testing.assert_close(out[kept], 2 * branch[kept])  # survivors scaled by 1/(1-p)
    with torch.no_grad():  # non-residual blocks never drop
        nb = MBConv(16, 24, 6, 3, 2, drop_path_rate=0.9).eval()
        ref = nb(x)
        nb.training = True
        torch.testing.assert_close(nb(x), ref)


def test_train_forward_backward():
    torch.manual_seed(0)
    m = efficientnet_b0(num_classes=10).train()
    x = torch.randn(3, 3, 35, 29)
    bn = m.blocks[2][1].dw.bn
    before = bn.running_mean.clone()
    loss = F.cross_entropy(m(x), torch.tensor([1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.stem.conv.weight.grad.abs().sum() > 0
    assert not torch.equal(before, bn.running_mean)


def _same_pad_ref(n, k, s):
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("k,s", [(3, 2), (5, 2), (3, 1), (5, 1), (1, 1)])
@pytest.mark.parametrize("h,w", [(224, 224), (225, 223), (16, 17), (7, 8), (1, 2)])
def test_same_padding_matches_hand_computed(k, s, h, w):
    torch.manual_seed(0)
    layer = ConvBNAct(5, 6, k, s, act="identity", padding_mode="same").eval()
    assert layer.conv.padding == (0, 0)
    pl, pr = _same_pad_ref(w, k, s)
    pt, pb = _same_pad_ref(h, k, s)
    assert layer.pad_for(h, w) == (pl, pr, pt, pb)
    x = torch.randn(2, 5, h, w)
    ref = layer.bn(F.conv2d(F.pad(x, (pl, pr, pt, pb)), layer.conv.weight, stride=s))
    with torch.no_grad():
        out = layer(x)
    assert out.shape[-2:] == (math.ceil(h / s), math.ceil(w / s))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_same_padding_known_values():
    stem = ConvBNAct(3, 32, 3, 2, padding_mode="same")
    assert stem.pad_for(224, 224) == (0, 1, 0, 1)  # TF puts the extra pixel right/bottom
    assert stem.pad_for(225, 225) == (1, 1, 1, 1)
    assert ConvBNAct(8, 8, 5, 2, groups=8, padding_mode="same").pad_for(14, 15) == (
        2,
        2,
        1,
        2,
    )  # w 15: total 4; h 14: total 3
    assert ConvBNAct(8, 8, 5, 2, padding_mode="symmetric").pad_for(14, 15) == (2, 2, 2, 2)


@pytest.mark.parametrize("k,s,groups", [(3, 2, 1), (5, 2, 8), (3, 1, 8), (5, 1, 1)])
@pytest.mark.parametrize("h,w", [(31, 30), (20, 21)])
def test_same_padding_matches_timm(k, s, groups, h, w):
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    ours = ConvBNAct(8, 16, k, s, groups=groups, act="silu", padding_mode="same").eval()
    ref = timm_layers.create_conv2d(8, 16, k, stride=s, groups=groups, padding="same", bias=False)
    if s == 2:
        assert isinstance(ref, timm_layers.Conv2dSame)
    with torch.no_grad():
        ref.weight.copy_(ours.conv.weight)
        x = torch.randn(2, 8, h, w)
        torch.testing.assert_close(ours(x), F.silu(ours.bn(ref(x))), rtol=1e-6, atol=1e-6)


def test_symmetric_differs_from_same_on_even_input():
    torch.manual_seed(0)
    a = ConvBNAct(3, 4, 3, 2, padding_mode="symmetric").eval()
    b = ConvBNAct(3, 4, 3, 2, padding_mode="same").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert a(x).shape == b(x).shape and not torch.allclose(a(x), b(x))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="efficientnet_b0.*efficientnet_lite4"):
        create_model("efficientnet_b9")
    with pytest.raises(ValueError, match="padding_mode"):
        ConvBNAct(3, 8, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="act"):
        ConvBNAct(3, 8, 3, act="gelu")
    with pytest.raises(ValueError, match="unknown model"):
        EfficientNet("resnet50")
