"""ek.optimize_for_training: a training step equals eager PyTorch (logits, the gradient of every
parameter, running statistics) for B0 and Lite0 with bn="batch" and "frozen"; dropout and
stochastic depth draw as the source does; parameters, buffers and state_dict are the source's;
eval mode; bf16 (dtype= and autocast); torch.compile; the saved-bytes ratio; refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effnet_kernels as ek
from effnet_kernels.bench.train import saved_bytes
from effnet_kernels.models.efficientnet import EfficientNet, EfficientNetConfig


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN affine and running statistics (init values hide errors: β = 0, μ = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def freeze_bn(model: nn.Module) -> None:
    """Eager FrozenBatchNorm: BN in eval mode, affine fixed."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)


def pair(name, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    kw = {"num_classes": 10, "dropout": 0.0, "drop_path_rate": 0.0, **kw}
    eager = randomize_bn(ek.create_model(name, **kw)).to(dtype).train()
    return eager, copy.deepcopy(eager)


def step(model, x, target):
    out = model(x)
    F.cross_entropy(out.float(), target).backward()
    return out


def assert_grads_equal(eager, ours, rtol):
    """Every parameter's gradient: max |Δ| ≤ rtol·(max |g| of that parameter + 1e-3·max |g|
    over the model). The second term is for gradients that are exactly zero in exact
    arithmetic and rounding noise in both (e.g. the BN bias of a layer whose every consumer
    is a conv followed by batch-statistics BN)."""
    gmax = max(p.grad.abs().max().item() for p in eager.parameters() if p.grad is not None)
    for (n, p), (_, q) in zip(eager.named_parameters(), ours.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is None:
            continue
        err = (p.grad - q.grad).abs().max().item()
        assert err <= rtol * (p.grad.abs().max().item() + 1e-3 * gmax), (n, err)


def assert_buffers_equal(eager, ours, rtol):
    for (n, b), (_, c) in zip(eager.named_buffers(), ours.named_buffers()):
        torch.testing.assert_close(c, b, rtol=rtol, atol=rtol, msg=n)


@pytest.mark.parametrize("name,bn,dtype", [
    ("efficientnet_b0", "batch", torch.float32),
    ("efficientnet_b0", "frozen", torch.float32),
    ("efficientnet_lite0", "frozen", torch.float32),
    # ReLU6's kinks: a value a rounding away from 0 or 6 takes the other branch in one of two
    # fp32 computations of the batch-normalised value (a discontinuity, not an error); float64
    # shows the gradients are the same function.
    ("efficientnet_lite0", "batch", torch.float64),
])
def test_step_equals_eager(name, bn, dtype):
    eager, src = pair(name, dtype)
    ours = ek.optimize_for_training(src, bn=bn)
    if bn == "frozen":
        freeze_bn(eager)
    x = torch.randn(3, 3, 40, 45, dtype=dtype)  # odd, non-square; stride-32 maps 2×2
    target = torch.randint(0, 10, (3,))
    out_e, out_o = step(eager, x, target), step(ours, x, target)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out_o, out_e, rtol=tol, atol=tol)
    assert_grads_equal(eager, src, tol)
    assert_buffers_equal(eager, src, tol)
    if bn == "batch":  # statistics moved, and by the same amount
        assert src.stem.bn.num_batches_tracked.item() == 1
    else:
        assert all(p.grad is None for m in src.modules() if isinstance(m, nn.BatchNorm2d)
                   for p in (m.weight, m.bias))


def test_dropout_and_drop_path_draw_as_the_source():
    """Same seed, same draws: stochastic depth per residual block and the classifier dropout
    are the source's own (rates, order, training only)."""
    eager, src = pair("efficientnet_b0", dropout=0.3, drop_path_rate=0.5)
    ours = ek.optimize_for_training(src, bn="frozen")
    freeze_bn(eager)
    x, target = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    torch.manual_seed(5)
    out_e = step(eager, x, target)
    torch.manual_seed(5)
    out_o = step(ours, x, target)
    torch.testing.assert_close(out_o, out_e, rtol=1e-4, atol=1e-4)
    assert_grads_equal(eager, src, 1e-4)
    torch.manual_seed(6)
    assert not torch.allclose(ours(x), out_o)  # random in training
    ours.eval()
    eager.eval()
    torch.testing.assert_close(ours(x), eager(x), rtol=1e-4, atol=1e-4)  # off in eval


def test_shares_the_source():
    src = ek.efficientnet_lite0(num_classes=7).train()
    t = ek.optimize_for_training(src)
    assert [id(p) for p in t.parameters()] == [id(p) for p in src.parameters()]
    assert list(t.state_dict()) == list(src.state_dict())
    opt = torch.optim.SGD(src.parameters(), lr=0.1)  # built on the source
    x = torch.randn(2, 3, 64, 64)
    before = src.classifier.weight.detach().clone()
    F.cross_entropy(t(x), torch.tensor([1, 2])).backward()
    opt.step()
    assert not torch.equal(before, src.classifier.weight)
    assert src.stem.bn.num_batches_tracked.item() == 1  # the source's buffer
    sd = copy.deepcopy(t.state_dict())
    src2 = ek.efficientnet_lite0(num_classes=7)
    src2.load_state_dict(sd)  # a checkpoint of the trainable model loads into the source
    t.load_state_dict(src2.state_dict())


def test_torchvision_source():
    """A torchvision B0 trains over its own tensors: its state_dict keys, its Parameter objects,
    a step equal to its own eager step (its stochastic depth rates, same draws), and after a
    move (.to) the buffers are still shared."""
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    # float64: with stochastic depth on, the comparison is of the same function (fp32 rounding
    # is ~2e-4 of a dropped block's small gradients here)
    eager = randomize_bn(tvm.efficientnet_b0(num_classes=10)).train().double()
    src = copy.deepcopy(eager)
    ours = ek.optimize_for_training(src)
    assert list(ours.state_dict()) == list(src.state_dict())
    assert [id(p) for p in ours.parameters()] == [id(p) for p in src.parameters()]
    x, target = torch.randn(3, 3, 40, 45, dtype=torch.float64), torch.randint(0, 10, (3,))
    torch.manual_seed(3)
    out_e = step(eager, x, target)
    torch.manual_seed(3)
    out_o = step(ours, x, target)
    torch.testing.assert_close(out_o, out_e, rtol=1e-9, atol=1e-9)
    assert_grads_equal(eager, src, 1e-9)
    assert_buffers_equal(eager, src, 1e-9)
    ours.to(torch.float32)
    with torch.no_grad():
        ours(x.float())
    assert src.features[0][1].num_batches_tracked.item() == 2  # the source's, after the move


def test_timm_source():
    """A timm tf_efficientnet_lite0 (TF "same" padding, ReLU6, BatchNormAct2d) with stochastic
    depth and dropout: its keys, and a step equal to its own (float64)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    eager = randomize_bn(timm.create_model("tf_efficientnet_lite0", num_classes=4, drop_rate=0.2,
                                           drop_path_rate=0.3)).train().double()
    src = copy.deepcopy(eager)
    ours = ek.optimize_for_training(src)
    assert list(ours.state_dict()) == list(src.state_dict())
    x, target = torch.randn(2, 3, 41, 36, dtype=torch.float64), torch.tensor([1, 3])
    torch.manual_seed(4)
    out_e = step(eager, x, target)
    torch.manual_seed(4)
    out_o = step(ours, x, target)
    torch.testing.assert_close(out_o, out_e, rtol=1e-9, atol=1e-9)
    assert_grads_equal(eager, src, 1e-9)
    assert_buffers_equal(eager, src, 1e-9)


def test_efficientnet_pytorch_source():
    """A lukemelas EfficientNet-B0 (static TF "same" padding at its image size): its keys, and
    a step equal to its own (float64; drop connect off — its draws, rand + floor, are not
    torch.bernoulli's: same rates, other random numbers)."""
    lm = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    eager = randomize_bn(lm.EfficientNet.from_name(
        "efficientnet-b0", num_classes=5, image_size=64, drop_connect_rate=0.0,
        dropout_rate=0.0)).train().double()
    src = copy.deepcopy(eager)
    ours = ek.optimize_for_training(src)
    assert list(ours.state_dict()) == list(src.state_dict())
    x, target = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([1, 3])
    torch.testing.assert_close(step(ours, x, target), step(eager, x, target), rtol=1e-9,
                               atol=1e-9)
    assert_grads_equal(eager, src, 1e-9)
    assert_buffers_equal(eager, src, 1e-9)


def test_eval_uses_running_stats():
    eager, src = pair("efficientnet_b0")
    ours = ek.optimize_for_training(src, bn="batch").eval()
    eager.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), eager(x), rtol=1e-4, atol=1e-4)
    assert src.stem.bn.num_batches_tracked.item() == 0


def test_cumulative_momentum():
    """momentum=None: the running statistics are the cumulative average, as nn.BatchNorm2d."""
    eager, src = pair("efficientnet_lite0")
    for m in (*eager.modules(), *src.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    ours = ek.optimize_for_training(src)
    for seed in (1, 2):
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            eager(x)
            ours(x)
    assert_buffers_equal(eager, src, 1e-4)


def test_bf16():
    """dtype=torch.bfloat16 and torch.autocast: bf16 activations over float32 parameters, float32
    gradients; their distance to the float32 step's is at most twice eager autocast's (the
    numerics rule of docs/ARCHITECTURE.md; a random-init B0 is chaotic in bf16)."""
    eager, src = pair("efficientnet_b0")
    amp = copy.deepcopy(eager)
    x, target = torch.randn(2, 3, 48, 48), torch.tensor([3, 4])
    step(eager, x, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step(amp, x, target)

    def flat(m):
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    ref = flat(eager)
    eager_err = 1.0 - F.cosine_similarity(flat(amp), ref, dim=0).item()
    for mode in ("dtype", "autocast"):
        src.zero_grad(set_to_none=True)
        if mode == "dtype":
            out = step(ek.optimize_for_training(src, dtype=torch.bfloat16), x, target)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = step(ek.optimize_for_training(src), x, target)
        assert out.dtype == torch.bfloat16
        assert all(p.grad.dtype == torch.float32 for p in src.parameters())
        got = flat(src)
        assert torch.isfinite(got).all()
        assert 1.0 - F.cosine_similarity(got, ref, dim=0).item() <= 2 * eager_err + 1e-3, mode


def tiny_model(**kw) -> EfficientNet:
    cfg = EfficientNetConfig("tiny", width=0.25, depth=0.1, resolution=32, dropout=0.0)
    return randomize_bn(EfficientNet(cfg, num_classes=5, drop_path_rate=0.0, **kw))


def test_torch_compile():
    """fullgraph compile of a training step's forward and backward through AOTAutograd (the
    ops' fake kernels, autograd formulas, the running-statistics mutation functionalized),
    equal to the uncompiled step. backend="aot_eager": Inductor's code generation around the
    opaque ops adds minutes here and nothing the ops decide (the Inductor run is in
    README.md, "Training")."""
    src = tiny_model().train()
    src2 = copy.deepcopy(src)
    ours, ours2 = ek.optimize_for_training(src), ek.optimize_for_training(src2)
    x, target = torch.randn(2, 3, 40, 40), torch.tensor([0, 3])
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    step(compiled, x, target)
    step(ours2, x, target)
    assert_grads_equal(src2, src, 1e-4)
    assert_buffers_equal(src2, src, 1e-4)


@pytest.mark.skipif("triton" not in ek.train_ops.BACKENDS
                    or not ek.registry.triton_interpreting(),
                    reason="needs triton (run through TRITON_INTERPRET=1 on the CPU)")
def test_triton_backend_step():
    """backend="triton" (the Triton BN-act kernels, here through the interpreter) gives the
    ATen composition's step: gradients and running statistics."""
    src = tiny_model().train()
    src2 = copy.deepcopy(src)
    # 40²: the last stage keeps 2×2 per image (with 1×1 and batch 2 the batch statistics of
    # two values make BN's backward ill-conditioned: any two float32 sums differ visibly)
    x, target = torch.randn(2, 3, 40, 40), torch.tensor([1, 4])
    ours = ek.optimize_for_training(src, backend="triton")
    assert ours.backends["bn_act_backward"].startswith("triton")
    step(ours, x, target)
    step(ek.optimize_for_training(src2, backend="torch"), x, target)
    assert_grads_equal(src2, src, 1e-4)
    assert_buffers_equal(src2, src, 1e-4)


def test_saved_bytes_ratio():
    """Bytes saved for backward (unique storages) at 64² batch 2, B0: at most half of eager's
    (``effnet-kernels bench --train`` measures 224²)."""
    m = ek.efficientnet_b0().train()
    x = torch.randn(2, 3, 64, 64)
    eager = saved_bytes(m, x)
    ours = saved_bytes(ek.optimize_for_training(m), x)
    assert ours["parameters"] <= 1.01 * eager["parameters"]  # the weights, as eager
    assert ours["activations"] <= 0.5 * eager["activations"], (ours, eager)


def test_refusals():
    m = ek.efficientnet_lite0()
    f = ek.optimize(m, backend="torch")
    with pytest.raises(RuntimeError, match="optimize_for_training"):
        f.train()
    with pytest.raises(TypeError, match="FusedEfficientNet"):
        ek.optimize_for_training(f)
    with pytest.raises(TypeError, match="does not know"):
        ek.optimize_for_training(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="bn must be one of"):
        ek.optimize_for_training(m, bn="sync")
    with pytest.raises(RuntimeError, match="no 'cuda' kernels"):
        ek.optimize_for_training(m, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ek.optimize_for_training(m, backend="fast")
    odd = ek.efficientnet_lite0()
    odd.blocks[1][0].dw.act = nn.GELU()
    with pytest.raises(ValueError, match=r"blocks\.1\.0\.dw\.act \(GELU\)"):
        ek.optimize_for_training(odd)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(ek.efficientnet_lite0())
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        ek.optimize_for_training(sync)
    t = ek.optimize_for_training(m)
    with pytest.raises(ValueError, match=r"input must be \(N, 3, H, W\)"):
        t(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        t.train()(torch.randn(1, 3, 32, 32))  # the last stage is 1×1: as nn.BatchNorm2d
