"""Backbone outputs: ek.optimize(m, features_only=True, out_indices=...) and num_classes=0.

Against timm's ``features_only=True`` / ``num_classes=0`` models carrying the same weights
(randomised BN statistics, odd non-square inputs) for B0, B3 and a tf_ Lite model; channels and
reductions as timm's; only the needed stages built and run; the plain backbones
(``ek.create_model(..., features_only=True / num_classes=0)``); every backend (Triton
interpreted), bf16, the INT8 model (float features), torchvision's FeaturePyramidNetwork on top;
refusals. CUDA graphs are in the ``cuda``-marked test.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels.features import FusedEmbedding, FusedFeatures
from effnet_kernels.models import EfficientNetFeatures
from helpers import differing_samples, needs_ext, needs_triton, rel_err, sqnr_db
from test_optimize import BEST_CPU, FP32_TOL, randomize

timm = pytest.importorskip("timm")

# (timm name, input H, W): odd and non-square; B3 smaller, for time
TIMM_CASES = [("efficientnet_b0", 225, 197), ("efficientnet_b3", 113, 97),
              ("tf_efficientnet_lite0", 225, 197)]


@functools.lru_cache(maxsize=1)
def _timm_case(name: str):
    """(timm full model, timm features_only model with its weights, ek model, input)."""
    torch.manual_seed(0)
    full = randomize(timm.create_model(name, pretrained=False), 21).eval()
    feats = timm.create_model(name, pretrained=False, features_only=True).eval()
    missing, unexpected = feats.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.split(".")[0] in ("conv_head", "bn2", "classifier")
                               for k in unexpected)
    _, h, w = next(c for c in TIMM_CASES if c[0] == name)
    return full, feats, ek.from_timm(full), differing_samples(2, h, w)


@pytest.mark.parametrize("name", [c[0] for c in TIMM_CASES])
@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_ext)])
def test_features_match_timm(name, backend):
    _, tfeat, m, x = _timm_case(name)
    f = ek.optimize(m, backend=backend, features_only=True)
    assert isinstance(f, FusedFeatures) and not f.training
    assert f.feature_info.channels() == tfeat.feature_info.channels()
    assert f.feature_info.reduction() == tfeat.feature_info.reduction()
    assert f.feature_info.module_name() == tfeat.feature_info.module_name()
    with torch.no_grad():
        ref = tfeat(x)
    out = f(x)
    assert len(out) == len(ref) == 5
    for i, (a, b) in enumerate(zip(out, ref)):
        assert a.shape == b.shape and a.dtype == torch.float32, i
        assert rel_err(a, b) <= FP32_TOL, (i, rel_err(a, b))


@pytest.mark.parametrize("out_indices", [(1, 3), (0,), (2, 4), (-1,)])
def test_out_indices_match_timm(out_indices):
    full, _, m, x = _timm_case("efficientnet_b0")
    tfeat = timm.create_model("efficientnet_b0", features_only=True, out_indices=out_indices)
    tfeat.load_state_dict(full.state_dict(), strict=False)
    f = ek.optimize(m, backend=BEST_CPU, features_only=True, out_indices=out_indices)
    assert f.feature_info.channels() == tfeat.feature_info.channels()
    assert f.feature_info.reduction() == tfeat.feature_info.reduction()
    with torch.no_grad():
        ref = tfeat.eval()(x)
    out = f(x)
    assert len(out) == len(ref) == len(out_indices)
    assert all(rel_err(a, b) <= FP32_TOL for a, b in zip(out, ref))
    # only the stem and the stages up to the last requested feature point are kept
    assert len(f.blocks) == f.feature_info.stages[-1] + 1


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_lite0"])
def test_embedding_matches_timm_pre_logits(name):
    full, _, m, x = _timm_case(name)
    e = ek.optimize(m, backend=BEST_CPU, num_classes=0)
    assert isinstance(e, FusedEmbedding) and e.num_features == full.num_features
    with torch.no_grad():
        ref = full.forward_head(full.forward_features(x), pre_logits=True)
        headless = timm.create_model(name, pretrained=False, num_classes=0)
        headless.load_state_dict(full.state_dict(), strict=False)
        ref0 = headless.eval()(x)
    assert torch.equal(ref, ref0)
    y = e(x)
    assert y.shape == ref.shape and rel_err(y, ref) <= FP32_TOL, rel_err(y, ref)
    # a timm num_classes=0 source converts to the embedding model by itself
    y0 = ek.optimize(headless, backend=BEST_CPU)(x)
    assert rel_err(y0, ref) <= FP32_TOL
    # the full fused model's logits are its classifier on the embedding
    f = ek.optimize(m, backend=BEST_CPU)
    assert rel_err(f.classifier(y), f(x)) <= FP32_TOL  # the CPU engine sums in its own order


def test_plain_backbones():
    """ek.create_model(..., features_only=True / num_classes=0): plain trainable modules that
    match timm, and optimize to the fused ones."""
    full, tfeat, m, x = _timm_case("efficientnet_b0")
    plain = EfficientNetFeatures(m)
    assert plain.feature_info.channels() == tfeat.feature_info.channels()
    with torch.no_grad():
        ref, out = tfeat(x), plain(x)
    assert all(rel_err(a, b) <= FP32_TOL for a, b in zip(out, ref))
    fused = ek.optimize(plain, backend=BEST_CPU)
    assert isinstance(fused, FusedFeatures) and fused.out_indices == (0, 1, 2, 3, 4)
    assert all(rel_err(a, b) <= FP32_TOL for a, b in zip(fused(x), ref))

    b = ek.efficientnet_b0(features_only=True, out_indices=(1, 2))
    assert isinstance(b, EfficientNetFeatures) and len(b.blocks) == 3 and b.training
    assert not hasattr(b, "head") and not hasattr(b, "classifier")
    y = b(torch.randn(2, 3, 64, 48))
    assert [t.shape[1:] for t in y] == [(24, 16, 12), (40, 8, 6)]
    sum(t.sum() for t in y).backward()  # trainable, every parameter used
    assert all(p.grad is not None for p in b.parameters())
    # a subset of the backbone's indices, or none: its own
    assert ek.optimize(b.eval(), out_indices=(2,)).feature_info.channels() == [40]
    with pytest.raises(ValueError, match="3 feature maps"):
        ek.optimize(b, out_indices=(3,))

    e = ek.create_model("efficientnet_lite0", num_classes=0).eval()
    assert isinstance(e.classifier, torch.nn.Identity)
    with torch.no_grad():
        ref = e(x)
    assert ref.shape == (2, 1280)
    fe = ek.optimize(e, backend=BEST_CPU)
    assert isinstance(fe, FusedEmbedding) and rel_err(fe(x), ref) <= FP32_TOL


def test_later_stages_not_run():
    """With out_indices=(1,), stages 2-6 of a shared optimized model are never called."""
    _, _, m, x = _timm_case("efficientnet_b0")
    full = ek.optimize(m, backend=BEST_CPU)
    calls = [0] * len(full.blocks)
    for i, st in enumerate(full.blocks):
        st.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    f = ek.optimize(full, features_only=True, out_indices=(1,))
    assert f.stem is full.stem and f.blocks[1] is full.blocks[1]  # shared, not copied
    out = f(x)
    assert calls == [1, 1, 0, 0, 0, 0, 0] and len(out) == 1
    assert rel_err(out[0], ek.optimize(m, features_only=True)(x)[1]) == 0
    # a built-from-source backbone holds only those stages
    assert len(ek.optimize(m, features_only=True, out_indices=(1,)).blocks) == 2


@needs_triton
def test_triton_backend_interpreted():
    torch.manual_seed(0)
    m = randomize(ek.create_model("efficientnet_lite0"), 3).eval()
    x = differing_samples(1, 37, 29)
    ref = ek.optimize(m, backend="torch", features_only=True, out_indices=(0, 2))(x)
    out = ek.optimize(m, backend="triton", features_only=True, out_indices=(0, 2))(x)
    assert all(rel_err(a, b) <= FP32_TOL for a, b in zip(out, ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_ext)])
def test_low_precision_features_and_embedding(backend, dtype):
    """bf16/fp16: error against a float64 oracle ≤ 2 × eager PyTorch's own error at that
    dtype."""
    _, _, m, x = _timm_case("efficientnet_b0")
    x = x[:, :, :67, :53]  # smaller, for time
    plain = EfficientNetFeatures(copy.deepcopy(m))
    with torch.no_grad():
        ref64 = copy.deepcopy(plain).double()(x.double())
        eager = copy.deepcopy(plain).to(dtype)(x.to(dtype))
    out = ek.optimize(m, backend=backend, dtype=dtype, features_only=True)(x)
    for a, e, r in zip(out, eager, ref64):
        assert a.dtype == dtype and not a.isnan().any()
        assert rel_err(a, r) <= 2 * rel_err(e, r), (rel_err(a, r), rel_err(e, r))
    emb = ek.optimize(m, backend=backend, dtype=dtype, num_classes=0)(x)
    emb32 = ek.optimize(m, backend=backend, num_classes=0)(x)
    assert emb.dtype == dtype and rel_err(emb, emb32) <= 2e-2


@needs_ext
def test_torch_compile_fullgraph():
    _, _, m, x = _timm_case("efficientnet_b0")
    x = x[:, :, :67, :53]
    f = ek.optimize(m, backend="cpu", features_only=True, out_indices=(2, 4))
    e = ek.optimize(m, backend="cpu", num_classes=0)
    got = torch.compile(f, fullgraph=True)(x)
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(got, f(x)))
    assert rel_err(torch.compile(e, fullgraph=True)(x), e(x)) <= 1e-6


def test_int8_features_are_float():
    """INT8 features (the real pretrained Lite0 on real pictures) come back in float, close to
    the float model's."""
    from effnet_kernels import data
    from effnet_kernels.convert import load_lite0_pretrained

    pytest.importorskip("skimage")
    try:
        m = load_lite0_pretrained()
    except RuntimeError as e:
        pytest.skip(str(e))
    f = ek.optimize(m, backend=BEST_CPU)
    q = ek.quantize(f, [data.random_crops(data.CALIBRATION_IMAGES, 1, size=128, seed=1)])
    x = data.random_crops(data.HELD_OUT_IMAGES[:2], 1, size=129, seed=2)
    qf = ek.optimize(q, features_only=True)
    out, ref = qf(x), ek.optimize(f, features_only=True)(x)
    for i, (a, b) in enumerate(zip(out, ref)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert sqnr_db(b, a) >= 20, (i, sqnr_db(b, a))
    # the last feature map is exactly the int8 block output, dequantised
    with torch.no_grad():
        last = qf.blocks(qf.stem(x.contiguous(memory_format=torch.channels_last)))
    s, zp = qf.blocks[-1][-1].project.out_q
    assert torch.equal(out[-1], (last.int() - zp).float() * s)
    qe = ek.optimize(q, num_classes=0)
    # the int8 model's logits come from it: bit for bit in the INT8 CPU engine's exact mode
    # (it reproduces the per-op path); in its default fast mode as close as the exact mode is
    # to itself under 1e-6 input noise (int8 values on rounding ties flip, and flips cascade):
    # measured 31.4 dB (the exact mode vs itself, noisy input: 29.7 dB; either vs float 25 dB)
    emb_logits = q.classifier(qe(x))
    q.exact_cpu_engine = True
    assert torch.equal(emb_logits, q(x))
    q.exact_cpu_engine = False
    assert sqnr_db(emb_logits, q(x)) >= 28, sqnr_db(emb_logits, q(x))


def test_feature_pyramid_network():
    tv_ops = pytest.importorskip("torchvision.ops")
    _, tfeat, m, x = _timm_case("efficientnet_b0")
    f = ek.optimize(m, backend=BEST_CPU, features_only=True, out_indices=(1, 2, 3, 4))
    torch.manual_seed(0)
    fpn = tv_ops.FeaturePyramidNetwork(f.feature_info.channels(), 64).eval()
    with torch.no_grad():
        got = fpn(OrderedDict((f"p{i}", t) for i, t in enumerate(f(x))))
        ref = fpn(OrderedDict((f"p{i}", t) for i, t in enumerate(tfeat(x)[1:])))
    assert [t.shape for t in got.values()] == [t.shape for t in ref.values()]
    assert [t.shape[-1] for t in got.values()] == [50, 25, 13, 7]
    assert all(rel_err(a, b) <= FP32_TOL for a, b in zip(got.values(), ref.values()))


def test_refusals():
    m = ek.efficientnet_b0().eval()
    with pytest.raises(ValueError, match="out_indices needs features_only"):
        ek.optimize(m, out_indices=(1,))
    with pytest.raises(ValueError, match="strictly increasing"):
        ek.optimize(m, features_only=True, out_indices=(2, 1))
    with pytest.raises(ValueError, match="out of range"):
        ek.optimize(m, features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="pick one"):
        ek.optimize(m, features_only=True, num_classes=0)
    with pytest.raises(ValueError, match="num_classes can only be 0"):
        ek.optimize(m, num_classes=10)
    with pytest.raises(ValueError, match="out_indices needs features_only"):
        ek.create_model("efficientnet_b0", out_indices=(1,))
    f = ek.optimize(m, features_only=True)
    with pytest.raises(TypeError, match="already a FusedFeatures"):
        ek.optimize(f, num_classes=0)
    with pytest.raises(TypeError, match="already a FusedFeatures"):
        ek.optimize(f)
    with pytest.raises(TypeError, match="already a FusedFeatures"):
        ek.quantize(f, [torch.randn(1, 3, 32, 32)])
    with pytest.raises(RuntimeError, match="frozen"):
        f.train()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        f(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="differs from the optimized model"):
        ek.optimize(ek.optimize(m), num_classes=0, dtype=torch.bfloat16)


@pytest.mark.cuda
def test_cuda_graph_features_and_embedding():
    torch.manual_seed(0)
    m = randomize(ek.create_model("efficientnet_b0"), 5).eval().cuda()
    x = differing_samples(2, 67, 53).cuda()
    f = ek.optimize(m, features_only=True, cuda_graph=True, dtype=torch.float16)
    y1 = f(x)
    y2 = f(x * 0.5)  # replays the same graph: the first outputs must be copies
    assert len(f._graphs) == 1
    assert all(torch.equal(a, b) for a, b in zip(y1, f.forward_eager(x)))
    assert all(torch.equal(a, b) for a, b in zip(y2, f.forward_eager(x * 0.5)))
    e = ek.optimize(m, num_classes=0, cuda_graph=True)
    assert rel_err(e(x), e.forward_eager(x)) <= 1e-6
