"""The C++ CPU kernels of the INT8 ops (csrc/dwconv_int8/dwconv_int8_cpu.cpp,
csrc/pointwise_int8/pointwise_int8_cpu.cpp, csrc/quantize/quantize_cpu.cpp), called through the
dispatcher (torch.ops.effnet.*), against the exact integer oracle (effnet_kernels.reference,
"INT8") on the odd shapes of docs/ARCHITECTURE.md, "Numerics", outputs poisoned.

Contract: y bit-exact for relu / relu6 / identity; with SiLU within 1 LSB, rarely (PyTorch's
F.silu uses its own vectorised exp; the kernels a Cephes exp, as the CUDA int8 kernel); pools
within 1e-5 relative; quantize_per_tensor bit-exact."""

import zlib

import pytest
import torch

from conftest import rel_err
from effnet_kernels import ops, reference

pytestmark = pytest.mark.skipif(not ops.extension_available(),
                                reason=f"effnet_kernels._C not built: {ops.extension_error()}")

CL = torch.channels_last
ACTS = ["silu", "relu6", "relu", "identity"]
# (in_zp, out_zp): zero, the extremes both ways, and an ordinary asymmetric pair.
ZPS = [(0, 0), (-128, 127), (127, -128), (-7, 5)]

# (N, C, H, W, k, stride, padding (left, right, top, bottom) or None = symmetric).
DW_CASES = [
    (1, 37, 7, 7, 3, 1, None),
    (3, 61, 13, 11, 3, 2, (0, 1, 0, 1)),
    (1, 37, 1, 1, 3, 1, None),
    (3, 37, 13, 11, 5, 2, (1, 2, 2, 1)),
    (1, 61, 7, 7, 5, 1, (2, 2, 2, 2)),
    (3, 61, 1, 1, 5, 2, (2, 2, 2, 2)),
    (1, 37, 13, 11, 7, 1, (3, 0, 1, 3)),
    (1, 16, 2, 3, 5, 1, (4, 0, 4, 0)),
]
DW_IDS = [f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}_p{c[6]}" for c in DW_CASES]

# (N, Cin, Cout, H, W)
PW_CASES = [
    (1, 37, 61, 7, 7),
    (3, 61, 37, 13, 11),
    (3, 37, 37, 1, 1),
    (1, 1152, 61, 3, 3),
]
PW_IDS = [f"N{c[0]}_{c[1]}to{c[2]}_{c[3]}x{c[4]}" for c in PW_CASES]


def _seed(*key) -> int:
    """A seed per test case, the same in every process (unlike hash() of a str)."""
    return zlib.crc32(repr(key).encode())


def _q8(shape, g):
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).contiguous(
        memory_format=CL)


def assert_int8_matches(y, ref, act):
    """Bit-exact, except SiLU: within 1 LSB with rare flips (<= 1e-3 of the values, >= 1)."""
    assert y.dtype == torch.int8 and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    assert y.is_contiguous(memory_format=CL)
    d = (y.int() - ref.int()).abs()
    if act != "silu":
        assert d.max().item() == 0, f"{int((d > 0).sum())} of {y.numel()} values differ " \
                                    f"(max {d.max().item()} LSB)"
        return
    assert d.max().item() <= 1, f"max |y - ref| = {d.max().item()} LSB"
    flips = int((d > 0).sum())
    assert flips <= max(1, 1e-3 * y.numel()), f"{flips} of {y.numel()} values off by 1 LSB"


def assert_pool_matches(pool, ref, shape):
    assert pool.dtype == torch.float32 and tuple(pool.shape) == shape
    assert not torch.isnan(pool).any(), "pool has NaN (unwritten)"
    assert rel_err(pool, ref) <= 1e-5, rel_err(pool, ref)


def dw_args(case, g):
    """Random int8 x and weight; scale sized so act inputs are O(1)..O(10)."""
    N, C, H, W, k, s, pad = case
    x = _q8((N, C, H, W), g)
    w = torch.randint(-127, 128, (C, 1, k, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(C, generator=g) + 0.5) * 3.0 / (k * 74 * 73)
    bias = torch.randn(C, generator=g)
    return x, w, scale, bias, s, list(reference.normalize_padding(pad, k))


# ------------------------------------------------------------------------------ dwconv_int8
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", DW_CASES, ids=DW_IDS)
def test_dwconv_int8(case, act, poison):
    g = torch.Generator().manual_seed(_seed(case, act))
    x, w, sc, b, s, pads = dw_args(case, g)
    for (in_zp, out_zp), inv in zip(ZPS, (21.5, 7.0, 40.0, 13.25)):
        for return_pool in (False, True):
            y, pool = torch.ops.effnet.dwconv_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp, act,
                                                   return_pool)
            ref_y, ref_pool = reference.dwconv_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp,
                                                    act, True)
            assert_int8_matches(y, ref_y, act)
            if return_pool:
                assert_pool_matches(pool, ref_pool, (x.shape[0], x.shape[1]))
            else:
                assert pool.dtype == torch.float32 and pool.shape == (0,)


def test_dwconv_int8_clamps_and_ties():
    """Outputs that saturate at both ends, and requantisation at exact .5 ties (round half up):
    identity with scale 1, bias 0.5 / inv 1 puts every value on a tie."""
    g = torch.Generator().manual_seed(5)
    x = _q8((1, 37, 7, 7), g)
    w = torch.randint(-127, 128, (37, 1, 3, 3), generator=g, dtype=torch.int8)
    ones, half = torch.ones(37), torch.full((37,), 0.5)
    for inv, zp in [(1.0, 0), (1.0, 127), (0.5, -128), (3.0, -3)]:
        y, _ = torch.ops.effnet.dwconv_int8(x, w, ones, half, 1, [1, 1, 1, 1], 3, inv, zp,
                                            "identity", False)
        ref = reference.dwconv_int8(x, w, ones, half, 1, [1, 1, 1, 1], 3, inv, zp, "identity")
        assert torch.equal(y, ref)
        assert (y == 127).any() and (y == -128).any()


# ------------------------------------------------------------------------------ pointwise_int8
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", PW_CASES, ids=PW_IDS)
def test_pointwise_int8(case, act, poison):
    N, Cin, Cout, H, W = case
    g = torch.Generator().manual_seed(_seed(case, act))
    x = _q8((N, Cin, H, W), g)
    w = torch.randint(-127, 128, (Cout, Cin), generator=g, dtype=torch.int8)
    sc = (torch.rand(Cout, generator=g) + 0.5) * 3.0 / (Cin ** 0.5 * 74 * 73)
    b = torch.randn(Cout, generator=g)
    gate = torch.rand(N, Cin, generator=g)
    res = _q8((N, Cout, H, W), g)
    for i, ((in_zp, out_zp), inv) in enumerate(zip(ZPS, (21.5, 7.0, 40.0, 13.25))):
        res_zp = (3, -128, 127, 0)[i]
        for use_gate in (False, True):
            for use_res in (False, True):
                gt, r = (gate if use_gate else None), (res if use_res else None)
                args = (in_zp, inv, out_zp, act, gt, r, 0.05, res_zp)
                y = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args, False)
                ref = reference.pointwise_int8(x, w, sc, b, *args, False)
                assert_int8_matches(y, ref, act)
                pool = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args, True)
                ref_pool = reference.pointwise_int8(x, w, sc, b, *args, True)
                assert_pool_matches(pool, ref_pool, (N, Cout))


def test_pointwise_int8_weight_4d_and_gate_ties(poison):
    """(Cout, Cin, 1, 1) weights; a gate of 0.5 on odd (x - zp) puts the gated value on a tie."""
    g = torch.Generator().manual_seed(6)
    x = _q8((3, 37, 7, 7), g)
    w = torch.randint(-127, 128, (61, 37, 1, 1), generator=g, dtype=torch.int8)
    sc, b = torch.full((61,), 1e-3), torch.randn(61, generator=g)
    gate = torch.full((3, 37), 0.5)
    args = (-5, 9.0, 2, "relu6", gate, None, 1.0, 0, False)
    y = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args)
    assert torch.equal(y, reference.pointwise_int8(x, w, sc, b, *args))


# ------------------------------------------------------------------------- quantize_per_tensor
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,fmt", [((3, 37, 13, 11), CL), ((1, 61, 7, 7), None),
                                       ((3, 37, 1, 1), CL), ((61,), None), ((7, 37), None),
                                       ((0, 3, 5, 5), CL)], ids=str)
def test_quantize_per_tensor(shape, fmt, dtype, poison):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=g) * 40).to(dtype)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    for inv, zp in [(1.0, 0), (0.25, -128), (3.5, 127), (1 / 0.37, -3)]:
        q = torch.ops.effnet.quantize_per_tensor(x, inv, zp)
        ref = reference.quantize_per_tensor(x, inv, zp)
        assert q.dtype == torch.int8 and q.shape == x.shape
        if x.dim() == 4:
            assert q.is_contiguous(memory_format=CL)
        assert torch.equal(q, ref)


def test_quantize_per_tensor_ties_and_saturation():
    """x * inv + 0.5 on exact .5 ties rounds up (floor(t + 0.5)), beyond the range saturates."""
    x = torch.tensor([-200.0, -128.5, -2.5, -0.5, 0.5, 1.5, 2.5, 126.5, 1e30, -1e30])
    q = torch.ops.effnet.quantize_per_tensor(x, 1.0, 0)
    assert q.tolist() == [-128, -128, -2, 0, 1, 2, 3, 127, 127, -128]
    assert torch.equal(q, reference.quantize_per_tensor(x, 1.0, 0))


# ------------------------------------------------------------------------------ bad input
def _dw_call(**kw):
    g = torch.Generator().manual_seed(8)
    x, w, sc, b, s, pads = dw_args((1, 8, 5, 5, 3, 1, None), g)
    a = dict(x=x, w=w, sc=sc, b=b, s=s, pads=pads, in_zp=0, inv=1.0, out_zp=0, act="silu")
    a.update(kw)
    return torch.ops.effnet.dwconv_int8(a["x"], a["w"], a["sc"], a["b"], a["s"], a["pads"],
                                        a["in_zp"], a["inv"], a["out_zp"], a["act"], False)


def test_dwconv_int8_bad_input():
    g = torch.Generator().manual_seed(9)
    x = _q8((1, 8, 5, 5), g)
    with pytest.raises(TypeError, match="x must be int8"):
        _dw_call(x=x.float())
    with pytest.raises(ValueError, match="channels_last"):
        _dw_call(x=x.contiguous())
    with pytest.raises(ValueError, match="4-D"):
        _dw_call(x=x[0])
    with pytest.raises(ValueError, match="weight must have shape"):
        _dw_call(w=torch.zeros(7, 1, 3, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="odd"):
        _dw_call(w=torch.zeros(8, 1, 4, 4, dtype=torch.int8))
    with pytest.raises(TypeError, match="weight must be int8"):
        _dw_call(w=torch.zeros(8, 1, 3, 3))
    with pytest.raises(ValueError, match="scale must have shape"):
        _dw_call(sc=torch.ones(7))
    with pytest.raises(TypeError, match="bias must be float32"):
        _dw_call(b=torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="stride"):
        _dw_call(s=3)
    with pytest.raises(ValueError, match="padding"):
        _dw_call(pads=[1, 1, 1])
    with pytest.raises(ValueError, match="padding"):
        _dw_call(pads=[3, 1, 1, 1])
    with pytest.raises(ValueError, match="in_zp"):
        _dw_call(in_zp=128)
    with pytest.raises(ValueError, match="out_zp"):
        _dw_call(out_zp=-129)
    for inv in (0.0, -1.0, float("inf"), float("nan"), 1e39):
        with pytest.raises(ValueError, match="out_inv_scale"):
            _dw_call(inv=inv)
    with pytest.raises(ValueError, match="activation"):
        _dw_call(act="gelu")
    with pytest.raises(ValueError, match="smaller than"):
        _dw_call(x=_q8((1, 8, 1, 1), g), pads=[0, 0, 0, 0])


def test_pointwise_int8_bad_input():
    g = torch.Generator().manual_seed(10)
    x = _q8((2, 8, 5, 5), g)
    w = torch.randint(-127, 128, (6, 8), generator=g, dtype=torch.int8)
    sc, b = torch.rand(6), torch.randn(6)

    def call(x=x, w=w, sc=sc, b=b, in_zp=0, inv=1.0, out_zp=0, act="relu", gate=None,
             res=None, res_scale=1.0, res_zp=0, pool_only=False):
        return torch.ops.effnet.pointwise_int8(x, w, sc, b, in_zp, inv, out_zp, act, gate, res,
                                               res_scale, res_zp, pool_only)

    with pytest.raises(TypeError, match="x must be int8"):
        call(x=x.float())
    with pytest.raises(ValueError, match="channels_last"):
        call(x=x.contiguous())
    with pytest.raises(ValueError, match="weight must have shape"):
        call(w=w[:, :5])
    with pytest.raises(ValueError, match="weight must have shape"):
        call(w=w[:, :, None, None].expand(6, 8, 3, 3))
    with pytest.raises(TypeError, match="weight must be int8"):
        call(w=w.float())
    with pytest.raises(ValueError, match="scale must have shape"):
        call(sc=torch.rand(5))
    with pytest.raises(TypeError, match="bias must be float32"):
        call(b=b.half())
    with pytest.raises(ValueError, match="in_zp"):
        call(in_zp=-200)
    with pytest.raises(ValueError, match="out_inv_scale"):
        call(inv=float("inf"))
    with pytest.raises(ValueError, match="gate must have shape"):
        call(gate=torch.rand(2, 7))
    with pytest.raises(TypeError, match="gate must be float32"):
        call(gate=torch.rand(2, 8).double())
    with pytest.raises(ValueError, match="residual must have shape"):
        call(res=_q8((2, 6, 4, 5), g))
    with pytest.raises(TypeError, match="residual must be int8"):
        call(res=torch.zeros(2, 6, 5, 5).contiguous(memory_format=CL))
    with pytest.raises(ValueError, match="res_scale"):
        call(res=_q8((2, 6, 5, 5), g), res_scale=-1.0)
    with pytest.raises(ValueError, match="res_zp"):
        call(res=_q8((2, 6, 5, 5), g), res_zp=128)
    with pytest.raises(ValueError, match="pool_only"):
        call(x=_q8((2, 8, 0, 5), g), pool_only=True)
    with pytest.raises(ValueError, match="activation"):
        call(act="tanh")


def test_quantize_per_tensor_bad_input():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(TypeError, match="floating-point"):
        torch.ops.effnet.quantize_per_tensor(x.to(torch.int8), 1.0, 0)
    with pytest.raises(ValueError, match="zp"):
        torch.ops.effnet.quantize_per_tensor(x, 1.0, -129)
    for inv in (0.0, -2.0, float("inf"), float("nan"), 1e39, 1e-46):
        with pytest.raises(ValueError, match="inv_scale"):
            torch.ops.effnet.quantize_per_tensor(x, inv, 0)


# ------------------------------------------------------------------------------ registration
@pytest.mark.parametrize("op,source", [("dwconv_int8", "dwconv_int8_cpu.cpp"),
                                       ("pointwise_int8", "pointwise_int8_cpu.cpp"),
                                       ("quantize_per_tensor", "quantize_cpu.cpp")])
def test_cpu_kernel_registered_in_cpp(op, source):
    """The CPU kernel is the C++ one (libtorch users get it), not a Python registration."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"effnet::{op}", "CPU")
    dump = torch._C._dispatch_dump(f"effnet::{op}")
    cpu = [line for line in dump.splitlines() if line.startswith("CPU")]
    assert len(cpu) == 1 and source in cpu[0], dump


def test_quantize_per_tensor_schema():
    schema = str(torch.ops.effnet.quantize_per_tensor.default._schema)
    assert schema == "effnet::quantize_per_tensor(Tensor x, float inv_scale, int zp) -> Tensor"


def test_int8_cpu_opcheck():
    g = torch.Generator().manual_seed(11)
    x, w, sc, b, s, pads = dw_args((1, 37, 7, 7, 3, 2, (0, 1, 0, 1)), g)
    for rp in (False, True):
        torch.library.opcheck(torch.ops.effnet.dwconv_int8,
                              (x, w, sc, b, s, pads, -3, 20.0, 4, "silu", rp))
    wp = torch.randint(-127, 128, (61, 37), generator=g, dtype=torch.int8)
    sp, bp = torch.rand(61, generator=g) * 0.01, torch.randn(61, generator=g)
    res = _q8((1, 61, 7, 7), g)
    for gate, r, po in [(None, None, False), (torch.rand(1, 37, generator=g), res, False),
                        (None, res, True)]:
        torch.library.opcheck(torch.ops.effnet.pointwise_int8,
                              (x, wp, sp, bp, 5, 10.0, -2, "relu6", gate, r, 0.05, 3, po))
    for xq in (torch.randn(3, 37, 5, 5).contiguous(memory_format=CL), torch.randn(7, 37),
               torch.randn(1, 3, 5, 7)):
        torch.library.opcheck(torch.ops.effnet.quantize_per_tensor, (xq, 12.5, -3))
