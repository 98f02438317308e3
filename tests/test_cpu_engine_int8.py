"""The INT8 CPU engine (effnet_kernels.cpu_engine: CpuEngineInt8, csrc/engine/cpu_engine_int8.cpp):
an ``ek.quantize`` model's forward in one C++ call on the AVX-512 VNNI kernels. In its exact mode
(``exact_cpu_engine = True``) it reproduces the per-op CPU path (the quantized modules over the
registered ops, themselves tested against the integer reference) bit for bit: logits compared
with ``torch.equal`` on B0 (SiLU, SE, the float first depthwise), Lite0 (ReLU6, no SE), a
TF-"same" B0, with and without the float first depthwise, batch 1 and 3, odd input sizes, fused
and two-pass blocks, the workspace poisoned. The default fast mode (float parts on the float
engine's kernels, fast SiLU) is checked for determinism and against it. And when the model
falls back to the per-op path."""
from __future__ import annotations

import copy
import sys

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels import cpu_engine, ops, quant

from helpers import differing_samples, needs_ext

_C = ops._C
needs_engine = pytest.mark.skipif(
    _C is None or "avx512" not in _C.cpu_isas() or not _C.cpu_has_int8_vnni()
    or not hasattr(torch.classes.effnet, "CpuEngineInt8"),
    reason="the INT8 CPU engine needs the extension and an AVX-512 VNNI CPU")
pytestmark = [needs_ext, needs_engine]


def _bn_data(m, res):
    from effnet_kernels.data import bn_stats_from_random_data

    return bn_stats_from_random_data(m, res, seed=0)


def _quantized(name, res=64, first_dw_float=True, backend="auto", exact=True, **kw):
    torch.manual_seed(0)
    m = _bn_data(ek.create_model(name, **kw), res).eval()
    f = ek.optimize(m, backend="cpu")
    calib = [differing_samples(3, res, res, seed=1 + i) for i in range(2)]
    q = quant.quantize(f, calib, backend=backend, method="minmax", first_dw_float=first_dw_float)
    q.exact_cpu_engine = exact
    q.refresh_cpu_engine()
    return q


@pytest.fixture(scope="module")
def b0():
    return _quantized("efficientnet_b0")


def _per_op(q, x):
    q.use_cpu_engine = False
    try:
        return q(x)
    finally:
        q.use_cpu_engine = True


# AMX on / off, read from /proc/cpuinfo rather than from the library's own probe, so that a probe
# that wrongly says "no AMX" fails (set_amx(True) raises) instead of dropping the AMX cases
_CPU_FLAGS = open("/proc/cpuinfo").read().split() if sys.platform == "linux" else []
_AMX = [False] + ([True] if "amx_int8" in _CPU_FLAGS and "amx_tile" in _CPU_FLAGS else [])


def _engine(q, x, poison=True, fuse_bytes=None, amx=None):
    eng, why = cpu_engine.build(q)
    assert eng is not None, why
    if fuse_bytes is not None:
        eng.set_fuse_bytes(fuse_bytes)
    if amx is not None:  # the 1x1 layers on AMX-INT8 or on VNNI (default: AMX where the CPU has it)
        eng.set_amx(amx)
        assert ("+amx" in eng.describe()) == amx
    if poison:  # size the workspace, poison it, run again: unwritten reads show
        eng.forward(x)
        eng.fill_workspace(float("nan"))
    return eng.forward(x)


@pytest.mark.parametrize("name,kw,first_dw_float", [
    ("efficientnet_b0", {}, True),
    ("efficientnet_b0", {}, False),
    ("efficientnet_lite0", {}, True),
    ("efficientnet_b0", {"padding_mode": "same", "bn_eps": 1e-3}, True),
])
def test_engine_equals_per_op_path(name, kw, first_dw_float):
    q = _quantized(name, first_dw_float=first_dw_float, **kw)
    assert q.cpu_engine.startswith("CpuEngineInt8"), q.cpu_engine
    for shape in [(1, 3, 64, 64), (3, 3, 61, 53), (1, 3, 33, 35)]:
        x = differing_samples(shape[0], shape[2], shape[3], seed=5)
        want = _per_op(q, x)
        # the expand + depthwise blocks fused over row bands (all of them: 0), or none
        for fuse in (None, 0, 1 << 40):
            for amx in _AMX:
                got = _engine(q, x, fuse_bytes=fuse, amx=amx)
                assert got.dtype == torch.float32 and got.shape == want.shape
                assert torch.equal(got, want), (name, shape, fuse, amx, (got - want).abs().max())
        assert torch.equal(q(x), want)  # the model's own forward takes the engine


def test_fast_mode_is_deterministic_and_equals_exact_off_ties():
    """The default fast mode: bit-identical logits at any thread count (oversubscribed too),
    per sample whatever the batch, with the workspace (its float buffers included) poisoned;
    and on a shallow model (quantisation well conditioned: the exact logits move by ~27 dB under
    1e-5 input noise) within float rounding of the exact mode. Whole random-weights B0s are
    chaotic (the exact mode's own logits fall to 2-5 dB from themselves under 1e-5 input
    noise), so one int8 value on a rounding tie decides their SQNR: not a usable oracle."""
    q = _quantized("efficientnet", width_mult=0.5, depth_mult=0.3, exact=False)
    assert "fast" in q.cpu_engine
    x = differing_samples(3, 61, 53, seed=5)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = q(x)
        for t in (2, 3, 4):
            torch.set_num_threads(t)
            assert torch.equal(q(x), want), t
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(torch.cat([q(x[i:i + 1]) for i in range(3)]), want)
    for amx in _AMX:  # workspace poisoned (NaN floats, 0xff bytes); AMX-INT8 or VNNI GEMMs
        assert torch.equal(_engine(q, x, amx=amx), want), amx
    q.exact_cpu_engine = True
    exact = q(x)
    assert quant.sqnr_db(exact, want) > 60, quant.sqnr_db(exact, want)


def test_results_do_not_depend_on_threads(b0):
    """(Not on the batch either for the int8 layers; the float stem's oneDNN conv and the
    classifier's GEMM may round differently per batch size, in the per-op path too.)"""
    x = differing_samples(3, 64, 64, seed=9)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = b0(x)
        torch.set_num_threads(2)
        two = b0(x)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, two)


def test_falls_back_to_the_per_op_path(b0):
    x = differing_samples(1, 64, 64, seed=3)
    want = _per_op(b0, x)
    # a lower ISA level runs the per-op path (and its scalar kernels): same logits
    prev = _C.cpu_isa()
    try:
        _C.set_cpu_isa("avx2")
        assert b0._engine_for(x) is None
        assert torch.equal(b0(x), want)
    finally:
        _C.set_cpu_isa(prev)
    # the integer reference backend has no engine
    ref = quant.quantize(ek.optimize(_bn_data(ek.efficientnet_b0(), 64).eval(), backend="cpu"),
                         [differing_samples(2, 64, 64)], backend="torch", method="minmax")
    assert "off (" in ref.cpu_engine and "backend" in ref.cpu_engine


def test_changed_quantisation_rebuilds_the_engine():
    q = _quantized("efficientnet_lite0")
    x = differing_samples(2, 64, 64, seed=4)
    before = q(x)
    blk = q.blocks[2][0]
    s, zp = blk.project.out_q
    blk.project.set_q(out_q=(s * 1.5, zp))
    nxt = q.blocks[2][1] if len(q.blocks[2]) > 1 else q.blocks[3][0]
    first = nxt.expand if nxt.expand is not None else nxt.dw
    first.set_q(in_q=(s * 1.5, zp))
    after = q(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, _per_op(q, x))
    # a state dict round trip gives the same engine output
    q2 = ek.load_quantized(_bn_data(ek.efficientnet_lite0(), 64).eval(), q.state_dict())
    assert q2.exact_cpu_engine is False and "fast" in q2.cpu_engine  # the default
    q2.exact_cpu_engine = True  # (an engine setting, not state)
    assert torch.equal(q2(x), after)
    assert torch.equal(copy.deepcopy(q)(x), after)


def test_exact_mode_switch_takes_effect(b0):
    x = differing_samples(1, 64, 64, seed=6)
    b0(x)
    b0.exact_cpu_engine = False  # no refresh_cpu_engine(): the setter marks the engine stale
    assert "fast" in b0.cpu_engine
    b0.exact_cpu_engine = True
    assert "exact" in b0.cpu_engine and torch.equal(b0(x), _per_op(b0, x))


def test_profile_and_describe(b0):
    eng, _ = cpu_engine.build(b0)
    assert "int8" in eng.describe() and "exact" in eng.describe()
    eng.set_profile(True)
    eng.forward(differing_samples(1, 64, 64))
    names = eng.profile_names()
    assert names[0] == "stem" and names[-1] == "classifier" and "dw_float.0" in names
    assert len(eng.profile_us()) == len(names) and all(t >= 0 for t in eng.profile_us())


def test_bad_input_and_bad_specs(b0):
    eng, _ = cpu_engine.build(b0)
    with pytest.raises(ValueError, match="input must be"):
        eng.forward(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="input must be"):
        b0(torch.randn(1, 4, 32, 32))  # the model's own check (per-op path) first
    t, ints, floats = cpu_engine.encode_int8(b0)
    with pytest.raises(ValueError, match="spec"):
        torch.classes.effnet.CpuEngineInt8(t, ints[:-1], floats)
    with pytest.raises(ValueError, match="tensors"):
        torch.classes.effnet.CpuEngineInt8(t[:-1], ints, floats)
    bad = list(ints)
    bad[5] = 4  # sigmoid: no int8 kernel has it
    with pytest.raises(ValueError, match="activation"):
        torch.classes.effnet.CpuEngineInt8(t, bad, floats)
    with pytest.raises(ValueError, match="float32 or int8"):
        torch.classes.effnet.CpuEngineInt8([t[0].double(), *t[1:]], ints, floats)
