"""Drop-in modules: FusedDWConvBNAct built from real conv/BN/act modules, and fold_bn."""

import pytest
import torch
from torch import nn

from helpers import rel_err
from effnet_kernels import ops
from effnet_kernels.models.efficientnet import ConvBNAct
from effnet_kernels.nn import FusedDWConvBNAct, fold_bn

BACKENDS = ["torch", pytest.param("cpu", marks=pytest.mark.skipif(
    not ops.extension_available(), reason="effnet_kernels._C not built"))]


def random_bn(C, eps=1e-5, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(C, eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g))
        bn.running_mean.copy_(torch.randn(C, generator=g))
        bn.running_var.copy_(torch.rand(C, generator=g) + 0.2)
    return bn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,stride,act", [(3, 1, nn.SiLU()), (5, 2, nn.ReLU6()), (3, 2, None)])
def test_from_modules_matches_eager(backend, k, stride, act):
    C = 40
    conv = nn.Conv2d(C, C, k, stride, (k - 1) // 2, groups=C, bias=False)
    bn = random_bn(C)
    eager = nn.Sequential(conv, bn, act if act is not None else nn.Identity()).eval()
    m = FusedDWConvBNAct.from_modules(conv, bn, act, backend=backend)
    assert m.backend == backend and f"backend='{backend}'" in repr(m)
    x = torch.randn(2, C, 13, 11)  # NCHW input: the module changes the layout itself
    with torch.no_grad():
        ref = eager(x)
        y, pool = m(x, return_pool=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-5
    assert rel_err(pool, ref.mean((2, 3))) <= 1e-5
    assert rel_err(m.forward_native(x), ref) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_modules_same_padding(backend):
    # ek's ConvBNAct in TF "same" mode, stride 2 on odd and even sizes.
    blk = ConvBNAct(24, 24, 5, 2, groups=24, act="silu", padding_mode="same").eval()
    blk.bn.load_state_dict(random_bn(24).state_dict())
    m = FusedDWConvBNAct.from_modules(blk.conv, blk.bn, blk.act, padding="same", backend=backend)
    for hw in [(15, 12), (16, 9)]:
        x = torch.randn(1, 24, *hw)
        with torch.no_grad():
            assert rel_err(m(x), blk(x)) <= 1e-5


def test_timm_conv2d_same_is_recognised():
    timm_layers = pytest.importorskip("timm.layers")
    conv = timm_layers.create_conv2d(16, 16, 3, stride=2, padding="same", depthwise=True)
    assert type(conv).__name__ == "Conv2dSame"
    m = FusedDWConvBNAct.from_modules(conv, random_bn(16), nn.SiLU(), backend="torch")
    assert m.padding == "same"
    eager = nn.Sequential(conv, random_bn(16), nn.SiLU()).eval()
    x = torch.randn(1, 16, 10, 9)
    with torch.no_grad():
        assert rel_err(m(x), eager(x)) <= 1e-5


def test_conv_bias_is_folded():
    conv = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=True)
    bn = random_bn(8)
    m = FusedDWConvBNAct.from_modules(conv, bn, None, backend="torch")
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert rel_err(m(x), bn(conv(x))) <= 1e-5


def test_refuses_non_depthwise_and_bad_configs():
    with pytest.raises(ValueError, match="not depthwise"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 16, 3, groups=8), random_bn(16))
    with pytest.raises(ValueError, match="not depthwise"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 8, 3), random_bn(8))
    with pytest.raises(ValueError, match="dilation"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 8, 3, dilation=2, groups=8), random_bn(8))
    with pytest.raises(ValueError, match="stride"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 8, 3, 3, 1, groups=8), random_bn(8))
    with pytest.raises(ValueError, match="unsupported activation"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 8, 3, 1, 1, groups=8), random_bn(8), nn.GELU())
    with pytest.raises(TypeError):
        FusedDWConvBNAct.from_modules(nn.Linear(8, 8), random_bn(8))
    with pytest.raises(RuntimeError, match="not available"):
        FusedDWConvBNAct.from_modules(nn.Conv2d(8, 8, 3, 1, 1, groups=8), random_bn(8),
                                      backend="cuda")


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_with_conv_bias(bias):
    conv = nn.Conv2d(6, 4, 3, padding=1, bias=bias)
    bn = random_bn(4)
    w, b = fold_bn(conv.weight, bn, conv.bias)
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        assert rel_err(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x))) <= 1e-5


def test_squeeze_excite_from_torchvision_timm_and_ek():
    from torchvision.ops.misc import SqueezeExcitation as TvSE

    from effnet_kernels.models.efficientnet import SqueezeExcitation as EkSE
    from effnet_kernels.nn import SqueezeExcite

    timm_se = pytest.importorskip("timm.models._efficientnet_blocks").SqueezeExcite
    x = torch.randn(2, 32, 5, 7)
    sources = [TvSE(32, 8, activation=nn.SiLU), EkSE(32, 8), timm_se(32, rd_ratio=0.25,
                                                                      act_layer=nn.SiLU)]
    for src in sources:
        for backend in ("torch", "cpu") if ops.extension_available() else ("torch",):
            m = SqueezeExcite.from_modules(src.eval(), backend=backend)
            with torch.no_grad():
                ref = src(x)
                assert rel_err(m(x), ref) <= 1e-5, type(src).__name__
                assert rel_err(m.forward_native(x), ref) <= 1e-5
                assert rel_err(m.gate(x.mean((2, 3))) [:, :, None, None] * x, ref) <= 1e-5
    with pytest.raises(ValueError, match="SiLU"):
        SqueezeExcite.from_modules(TvSE(32, 8, activation=nn.ReLU))
    with pytest.raises(TypeError, match="not a known SE module"):
        SqueezeExcite.from_modules(nn.Linear(3, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_conv_bn_act_module(backend):
    from effnet_kernels.nn import PointwiseConvBNAct

    conv, bn = nn.Conv2d(24, 40, 1, bias=False), random_bn(40)
    m = PointwiseConvBNAct.from_modules(conv, bn, nn.SiLU(), backend=backend)
    assert f"backend='{backend}'" in repr(m)
    x, res = torch.randn(2, 24, 5, 3), torch.randn(2, 40, 5, 3)
    gate = torch.rand(2, 24)
    with torch.no_grad():
        eager = nn.functional.silu(bn(conv(x * gate[:, :, None, None])))
        assert rel_err(m(x, gate=gate), eager) <= 1e-5
        assert rel_err(m(x, gate=gate, residual=res), eager + res) <= 1e-5
        assert rel_err(m(x, gate=gate, pool_only=True), eager.mean((2, 3))) <= 1e-5
    with pytest.raises(ValueError, match="1x1"):
        PointwiseConvBNAct.from_modules(nn.Conv2d(24, 40, 3), bn)
    with pytest.raises(RuntimeError, match="no 'cpu'|not available|no 'cuda'"):
        PointwiseConvBNAct.from_modules(conv, bn, backend="cuda")
