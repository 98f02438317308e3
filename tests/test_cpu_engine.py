"""The C++ CPU engine (effnet_kernels.cpu_engine, csrc/engine/): a whole FusedEfficientNet forward
in one call. Checked against an independent float64 forward of the same folded weights, on the
odd shapes of DESIGN §4 (C = 37, 1×1 / 13×11 inputs, stride 2 on odd sizes, batch 1 and 3), both
the fused expand+depthwise pass and the two-pass path, with the workspace NaN-poisoned; whole
models against their float64 source; bfloat16 against fp32; and when the model must fall back to
the per-op path (hooks, torch.compile, a lower ISA level, other backends)."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import effnet_kernels as ek
from effnet_kernels import cpu_engine, ops
from effnet_kernels.nn import FusedDWConvBNAct, PointwiseConvBNAct, SqueezeExcite
from effnet_kernels.optimize import FrozenLinear, FusedEfficientNet, FusedMBConv, FusedStem
from effnet_kernels.reference import conv_pads

from helpers import needs_ext, rel_err
from test_optimize import make_ek

_C = ops._C
HAS_AVX512 = _C is not None and "avx512" in _C.cpu_isas()
# The float engine's kernel builds this CPU runs (AVX-512; AVX2 + FMA, float32 only): the fp32
# tests run under each in turn (conftest's engine_isa), so an AVX-512 machine tests both.
ENGINE_ISAS = [i for i in ("avx512", "avx2") if _C is not None and i in _C.cpu_isas()]
needs_engine = pytest.mark.skipif(
    _C is None or not ENGINE_ISAS or not hasattr(torch.classes.effnet, "CpuEngine"),
    reason="the CPU engine needs the extension and an AVX-512 or AVX2 CPU")
_CPU_FLAGS = open("/proc/cpuinfo").read() if HAS_AVX512 else ""
HAS_BF16 = "avx512_bf16" in _CPU_FLAGS
HAS_AMX = HAS_BF16 and "amx_bf16" in _CPU_FLAGS and "amx_tile" in _CPU_FLAGS
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512_BF16")
# bf16 GEMMs: AVX512_BF16 (vdpbf16ps) always, AMX tiles where the CPU has them
BF16_PATHS = ["avx512_bf16"] + (["amx"] if HAS_AMX else [])

pytestmark = [needs_ext, needs_engine]


# ------------------------------------------------------------------------ float64 reference
def _act64(v, act):
    return {"silu": F.silu, "relu6": F.relu6, "relu": F.relu,
            "identity": lambda t: t}[act](v)


def _conv64(x, w, stride, padding, groups=1):
    k = w.shape[-1]
    if padding in ("symmetric", "same"):
        left, right, top, bottom = conv_pads(padding, x.shape[2], x.shape[3], k, stride)
    else:
        left, right, top, bottom = padding
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, None, stride, groups=groups)


def forward64(f: FusedEfficientNet, x: torch.Tensor) -> torch.Tensor:
    """The fused model's math in float64, from its buffers, with PyTorch's own ops."""
    d = lambda t: t.detach().double()  # noqa: E731
    s = f.stem
    x = _act64(_conv64(d(x), d(s.weight), s.stride, s.padding) + d(s.bias)[:, None, None],
               s.act)
    for b in f.fused_blocks():
        inp = x
        if b.expand is not None:
            x = _act64(torch.einsum("nchw,oc->nohw", x, d(b.expand.weight))
                       + d(b.expand.bias)[:, None, None], b.expand.act)
        dw = b.dw
        x = _act64(_conv64(x, d(dw.weight), dw.stride, dw.padding, groups=x.shape[1])
                   + d(dw.bias)[:, None, None], dw.act)
        if b.se is not None:
            se = b.se
            h = F.silu(x.mean((2, 3)) @ d(se.w1).t() + d(se.b1))
            x = x * torch.sigmoid(h @ d(se.w2).t() + d(se.b2))[:, :, None, None]
        x = torch.einsum("nchw,oc->nohw", x, d(b.project.weight)) \
            + d(b.project.bias)[:, None, None]
        if b.use_residual:
            x = x + inp
    h = f.head
    x = _act64(torch.einsum("nchw,oc->nohw", x, d(h.weight)) + d(h.bias)[:, None, None], h.act)
    return x.mean((2, 3)) @ d(f.classifier.weight).t() + d(f.classifier.bias)


# ------------------------------------------------------------------ hand-built odd models
def _odd_model(act="silu", se=True, padding="symmetric", classes=37, seed=0,
               dtype=torch.float32, generic=False, even=None) -> FusedEfficientNet:
    """Stem 3→37 (k3 s2), blocks covering k3/k5, s1/s2, residual, no-expand, C = 37 / 74 /
    222 (not multiples of 16; bf16 needs even widths: 38 etc. when dtype is bf16)."""
    g = torch.Generator().manual_seed(seed)
    even = dtype == torch.bfloat16 if even is None else even
    c0, c1, e = (38, 38, 114) if even else (37, 37, 111)
    k_big, k_stem = (7, 5) if generic else (5, 3)  # generic: the run-time-k depthwise / im2col

    def r(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * scale).to(dtype)

    def pw(cin, cout, a):
        return PointwiseConvBNAct(r(cout, cin, scale=cin ** -0.5 * 1.5), r(cout, scale=0.2), a,
                                  backend="cpu")

    def dwc(c, k, s):
        return FusedDWConvBNAct(r(c, 1, k, k, scale=0.4), r(c, scale=0.2), s,
                                "same" if padding == "same" else "symmetric", act, "cpu")

    def sqz(c, s):
        return SqueezeExcite(r(s, c, scale=c ** -0.5), r(s, scale=0.1),
                             r(c, s, scale=s ** -0.5), r(c, scale=0.1), "cpu") if se else None

    blocks = [
        FusedMBConv(None, dwc(c0, 3, 1), sqz(c0, 9), pw(c0, c1, "identity"), True),
        FusedMBConv(pw(c1, e, act), dwc(e, k_big, 2), sqz(e, 9), pw(e, c1, "identity"), False),
        FusedMBConv(pw(c1, e, act), dwc(e, 3, 1), sqz(e, 9), pw(e, c1, "identity"), True),
        FusedMBConv(pw(c1, e, act), dwc(e, 3, 2), sqz(e, 9), pw(e, 2 * c1, "identity"), False),
    ]
    stem = FusedStem(r(c0, 3, k_stem, k_stem, scale=0.5), r(c0, scale=0.2), 2, padding, act, "cpu")
    head = pw(2 * c1, 3 * c1 + 1 if not even else 3 * c1, act)
    cls = FrozenLinear(r(classes, head.weight.shape[0], scale=0.1), r(classes, scale=0.1))
    be = {"bias_act": "cpu", "dwconv_bias_act": "cpu", "se_gate": "cpu", "pointwise_conv": "cpu"}
    return FusedEfficientNet(stem, torch.nn.Sequential(*blocks), head, cls, backends=be,
                             requested_backend="cpu")


def _engine_out(f, x, fuse_bytes=None, poison=True, amx=None):
    eng, why = cpu_engine.build(f)
    assert eng is not None, why
    assert eng.isa() == _C.cpu_isa() or (eng.isa() == "avx2" and f.dtype == torch.float32)
    if fuse_bytes is not None:
        eng.set_fuse_bytes(fuse_bytes)
    if amx is not None:
        eng.set_amx(amx)
    if poison:  # run once to size the workspace, poison it, run again
        eng.forward(x)
        eng.fill_workspace(float("nan"))
    return eng.forward(x)


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("fuse", ["fused", "two-pass"])
@pytest.mark.parametrize("act,se,padding", [("silu", True, "symmetric"),
                                            ("relu6", False, "same"),
                                            ("relu", True, "same")])
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (3, 3, 13, 11), (1, 3, 35, 29), (3, 3, 8, 9)])
@pytest.mark.parametrize("generic", [False, True])
def test_odd_shapes_fp32(fuse, act, se, padding, shape, generic, engine_isa):
    f = _odd_model(act, se, padding, generic=generic)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = _engine_out(f, x, 0 if fuse == "fused" else 1 << 62)
    assert out.dtype == torch.float32 and out.shape == (shape[0], 37)
    assert not torch.isnan(out).any(), "the engine read an unwritten workspace element"
    assert rel_err(out, forward64(f, x)) <= 1e-5


@needs_bf16
@pytest.mark.parametrize("path", BF16_PATHS)
@pytest.mark.parametrize("fuse", ["fused", "two-pass"])
@pytest.mark.parametrize("shape", [(1, 3, 13, 11), (3, 3, 35, 29), (2, 3, 67, 41)])
@pytest.mark.parametrize("se", [True, False])
def test_odd_shapes_bf16(path, fuse, shape, se):
    """bf16 weights and activations, fp32 accumulation, on either GEMM path, with SE and without
    (the fused pass then also runs the projection): within 2× the per-op path's error."""
    f = _odd_model("silu", se, "same", dtype=torch.bfloat16)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    out = _engine_out(f, x, 0 if fuse == "fused" else 1 << 62, amx=path == "amx")
    assert out.dtype == torch.bfloat16 and not torch.isnan(out).any()
    ref = forward64(f, x.bfloat16().float())
    f.use_cpu_engine = False
    per_op = f(x)
    assert rel_err(out, ref) <= 2 * max(rel_err(per_op, ref), 2 ** -8), \
        (rel_err(out, ref), rel_err(per_op, ref))


@pytest.mark.parametrize("name,res,kw", [
    ("efficientnet_b0", (67, 45), {}),
    ("efficientnet_lite0", (64, 64), {}),
    ("efficientnet_b0", (33, 31), {"padding_mode": "same", "bn_eps": 1e-3}),
])
def test_whole_models_match_source_float64(name, res, kw, engine_isa):
    torch.manual_seed(0)
    from test_optimize import randomize
    m = randomize(ek.create_model(name, **kw), 0).eval()
    f = ek.optimize(m)
    assert f.cpu_engine.startswith(f"CpuEngine(float32, {engine_isa}")
    x = torch.randn(3, 3, *res)
    with torch.no_grad():
        ref = m.double()(x.double())
        out = f(x)
        m.float()
        eager_err = rel_err(m(x), ref)
    assert rel_err(out, ref) <= max(2 * eager_err, 1e-5), (rel_err(out, ref), eager_err)
    for fuse in (0, 1 << 62):  # both paths, poisoned workspace
        assert rel_err(_engine_out(f, x, fuse), ref) <= max(2 * eager_err, 1e-5)


@needs_bf16
@pytest.mark.parametrize("path", BF16_PATHS)
def test_bf16_model_against_fp32(path):
    """A whole bf16 B0: logits close to the fp32 model's (bf16-level error) on either path."""
    m = make_ek("efficientnet_b0")
    x = torch.randn(2, 3, 96, 80)
    ref = forward64(ek.optimize(m), x)
    out = _engine_out(ek.optimize(m, dtype=torch.bfloat16), x, amx=path == "amx")
    assert out.dtype == torch.bfloat16 and not torch.isnan(out).any()
    assert rel_err(out, ref) <= 2e-2, rel_err(out, ref)


def test_results_do_not_depend_on_threads_or_batch(engine_isa):
    f = ek.optimize(make_ek("efficientnet_b0"))
    x = torch.randn(3, 3, 50, 46)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = f(x)
        torch.set_num_threads(2)
        two = f(x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    assert torch.equal(torch.cat([f(x[i:i + 1]) for i in range(3)]), one)


class _Spy:
    """Stands in for a model's engine and counts the forwards that reach it."""

    def __init__(self, eng):
        self.eng, self.calls = eng, 0

    def forward(self, x):
        self.calls += 1
        return self.eng.forward(x)

    def describe(self):
        return self.eng.describe()


def _engine_calls(f, x, ctx=None) -> int:
    """How many engine forwards one f(x) makes (0: the per-op path ran)."""
    f.refresh_cpu_engine()
    if f._cpu_engine is None:
        return 0
    spy = f._cpu_engine = _Spy(f._cpu_engine)
    with torch.no_grad(), (ctx or torch.no_grad()):
        f(x)
    return spy.calls


def test_when_the_engine_runs_and_when_not():
    f = ek.optimize(make_ek("efficientnet_b0"))
    x = torch.randn(1, 3, 32, 32)
    assert _engine_calls(f, x) == 1  # one C++ call
    f.use_cpu_engine = False
    assert _engine_calls(f, x) == 0
    f.use_cpu_engine = True
    # a hook on any module: the per-op path (the hook is called)
    seen = []
    h = f.blocks[2][0].dw.register_forward_hook(lambda m, i, o: seen.append(1))
    assert _engine_calls(f, x) == 0 and seen
    h.remove()
    assert _engine_calls(f, x) == 1
    # dispatch modes, fake tensors and jit tracing: the per-op path
    assert _engine_calls(f, x, _CountMode()) == 0
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert f(mode.from_tensor(x)).shape == (1, 1000)
    assert _engine_calls(f, x) == 1  # and the engine still works afterwards
    # the ISA level: AVX2 runs the AVX2 engine (rebuilt when the level changes), baseline the
    # per-op path (its baseline builds)
    old = _C.cpu_isa()
    try:
        for isa in [i for i in ("avx2", "baseline") if i in _C.cpu_isas()]:
            _C.set_cpu_isa(isa)
            f.use_cpu_engine = False
            ref = f(x)
            f.use_cpu_engine = True
            if isa == "avx2":
                assert f.cpu_engine.startswith("CpuEngine(float32, avx2")
                assert _engine_calls(f, x) == 1
                assert rel_err(f(x), ref) <= 1e-5
            else:
                assert f.cpu_engine.startswith("off (") and "'baseline'" in f.cpu_engine
                assert _engine_calls(f, x) == 0
                assert torch.equal(f(x), ref)
        _C.set_cpu_isa(old)  # back: that level's engine again
        assert _engine_calls(f, x) == 1 and f.cpu_engine.startswith(f"CpuEngine(float32, {old}")
    finally:
        _C.set_cpu_isa(old)
    # the reference backend never uses the engine
    g = ek.optimize(make_ek("efficientnet_b0"), backend="torch")
    assert g.cpu_engine.startswith("off (backend='torch'")
    # fp16 has no engine
    assert ek.optimize(make_ek("efficientnet_b0"), dtype=torch.float16).cpu_engine.startswith(
        "off (dtype torch.float16")


class _CountMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_models_the_engine_refuses_run_per_op():
    """What the engine cannot run is declined with a reason, never crashed on."""
    x = torch.randn(2, 3, 35, 29)
    # bf16 with odd widths (vdpbf16ps pairs channels): declined at build
    # (or, on a CPU without AVX512_BF16, for that)
    f = _odd_model("silu", True, "same", dtype=torch.bfloat16, even=False)
    assert f.cpu_engine.startswith("off (CpuEngine: stem: bfloat16 needs an even") or \
        "even number" in f.cpu_engine or (not HAS_BF16 and "needs AVX-512 with AVX512_BF16"
                                          in f.cpu_engine), f.cpu_engine
    assert _engine_calls(f, x) == 0 and not torch.isnan(f(x)).any()
    # a projection with an activation, a buffer of another dtype
    f = _odd_model()
    f.blocks[1].project.act = "relu"
    f.refresh_cpu_engine()
    assert "projection with act='relu'" in f.cpu_engine
    f = _odd_model()
    f.head.bias = f.head.bias.double()
    assert "buffer head.bias is torch.float64" in f.cpu_engine
    # a residual block whose padding changes the size: the per-op path's error, also from the
    # engine
    f = _odd_model()
    f.blocks[0].dw.padding = (0, 0, 0, 0)
    f.refresh_cpu_engine()
    with pytest.raises(ValueError):
        f(x)


def test_buffers_changed_any_way_rebuild_the_engine():
    f = ek.optimize(make_ek("efficientnet_b0"))
    g = ek.optimize(make_ek("efficientnet_b0", seed=1))
    x = torch.randn(2, 3, 40, 40)
    ref = g(x)
    f(x)
    # functional_call with the other model's buffers
    out = torch.func.functional_call(f, dict(g.named_buffers()), (x,))
    assert torch.equal(out, ref)
    assert not torch.equal(f(x), ref)  # and back to its own
    # a reassigned buffer, an in-place edit
    f.classifier.bias = g.classifier.bias.clone()
    with torch.no_grad():
        f.head.weight.copy_(g.head.weight)
    f.use_cpu_engine = False
    per_op = f(x)
    f.use_cpu_engine = True
    assert torch.allclose(f(x), per_op, rtol=1e-5, atol=1e-5)
    # a swapped module
    f.blocks[3] = g.blocks[3]
    f.use_cpu_engine = False
    per_op = f(x)
    f.use_cpu_engine = True
    assert torch.allclose(f(x), per_op, rtol=1e-5, atol=1e-5)


def test_engine_follows_state_dict_and_copies():
    f = ek.optimize(make_ek("efficientnet_b0"))
    g = ek.optimize(make_ek("efficientnet_b0", seed=1))
    x = torch.randn(2, 3, 40, 40)
    f(x)  # engine built from the old weights
    f.load_state_dict(g.state_dict())
    assert torch.equal(f(x), g(x))
    for h in (copy.deepcopy(f), pickle.loads(pickle.dumps(f))):
        assert torch.equal(h(x), g(x))
        assert h.cpu_engine.startswith("CpuEngine")
    # in-place edits need refresh_cpu_engine()
    with torch.no_grad():
        f.classifier.bias.add_(1.0)
    f.refresh_cpu_engine()
    f.use_cpu_engine = False
    ref = f(x)
    f.use_cpu_engine = True
    assert torch.allclose(f(x), ref, rtol=1e-5, atol=1e-5)


def test_compile_uses_the_per_op_path():
    f = ek.optimize(make_ek("efficientnet_lite0"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = f(x)
    f.refresh_cpu_engine()
    spy = f._cpu_engine = _Spy(f._cpu_engine)
    with torch.no_grad():
        out = torch.compile(f, backend="eager", fullgraph=True)(x)
    assert spy.calls == 0  # traced through the registered ops, not the engine
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_bad_input_and_bad_specs():
    f = ek.optimize(make_ek("efficientnet_b0"))
    with pytest.raises(ValueError):
        f(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError):
        f(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    assert f(torch.randn(0, 3, 32, 32)).shape == (0, 1000)
    tensors, ints = cpu_engine.encode(f)
    with pytest.raises(ValueError):
        torch.classes.effnet.CpuEngine(tensors[:-1], ints)
    with pytest.raises(ValueError):
        torch.classes.effnet.CpuEngine(tensors, ints[:-1])
    bad = list(ints)
    bad[3] = 9  # activation code
    with pytest.raises(ValueError):
        torch.classes.effnet.CpuEngine(tensors, bad)
    eng = torch.classes.effnet.CpuEngine(tensors, ints)
    with pytest.raises(ValueError):
        eng.forward(torch.randn(1, 5, 8, 8))
    if not HAS_AMX:
        with pytest.raises(ValueError):
            eng.set_amx(True)


def test_export_after_the_engine_ran():
    """torch.export of a model whose engine was built (an attribute holding a ScriptObject,
    which export would try to fakify: the AOTInductor example failed so) traces the per-op
    path and computes the same logits."""
    f = _odd_model()
    x = torch.randn(2, 3, 13, 11)
    want = f(x)
    assert f.cpu_engine.startswith("CpuEngine(")
    ep = torch.export.export(f, (x,))
    torch.testing.assert_close(ep.module()(x), want, rtol=1e-4, atol=1e-4)
