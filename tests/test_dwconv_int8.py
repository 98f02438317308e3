"""effnet::dwconv_int8 on every backend against the exact integer oracle
effnet_kernels.reference.dwconv_int8 (reference.py, "INT8"), outputs poisoned:

* the reference itself against plain float math on the dequantised values (independent);
* the C++ CPU kernel (csrc/dwconv_int8/dwconv_int8_cpu.cpp) through the dispatcher: bit-exact
  for relu / relu6 / identity, SiLU within 1 LSB rarely (its Cephes exp vs torch's);
* Triton (effnet_kernels/triton/quant.py; the interpreter without a GPU): within 1 LSB, < 0.1 %
  off, exact without SiLU (launched without FMA contraction); every GPU autotune config;
* CUDA (csrc/dwconv_int8/dwconv_int8_cuda.cu, ``-m cuda``): within 1 LSB with rare flips (an FMA
  at an exact tie may flip a rounding), each launch path (16- and 8-byte vectors, generic),
  nonzero zero points, bad input. The kernel body emulated on the CPU is tested in
  tests/test_cuda_emulation.py with CASES, make and assert_matches from here.

Pools: rel ≤ 1e-5 (float32 activations)."""

import zlib

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference
from helpers import (
    ACTS, CL, DEV, assert_cpu_kernel_from, assert_int8_close, assert_pool_close, make_dw_int8,
    needs_cuda_kernels, needs_ext, needs_triton, q8)

try:
    from effnet_kernels.triton import quant as tq
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    tq = None

# (in_zp, out_zp): zero, the extremes both ways, and an ordinary asymmetric pair.
ZPS = [(0, 0), (-128, 127), (127, -128), (-7, 5)]
IN_ZP, OUT_ZP = -100, 5  # the Triton tests' zero points


def _seed(*key) -> int:
    """A seed per test case, the same in every process (unlike hash() of a str)."""
    return zlib.crc32(repr(key).encode())


# ---------------------------------------------------------------------- reference semantics
@pytest.mark.parametrize("act", ["silu", "relu6", "identity"])
@pytest.mark.parametrize("k,stride,pads", [(3, 1, None), (5, 2, (1, 2, 1, 2)),
                                           (3, 2, (0, 1, 0, 1))])
def test_reference_is_float_math_on_dequantised_values(act, k, stride, pads):
    g = torch.Generator().manual_seed(k * 10 + stride)
    N, C, H, W = 2, 13, 11, 9
    x = q8((N, C, H, W), g)
    w = torch.randint(-127, 128, (C, 1, k, k), generator=g, dtype=torch.int8)
    s_in, zp_in, s_out, zp_out = 0.05, -7, 0.03, 11
    s_w = torch.rand(C, generator=g) * 0.01 + 0.001
    bias = torch.randn(C, generator=g)
    scale = (s_w * torch.tensor(s_in)).float()
    y, pool = ops.dwconv_int8(x, w, scale, bias, stride, pads, zp_in, 1 / s_out, zp_out, act,
                              return_pool=True, backend="torch")
    # independent: float64 conv of the dequantised tensors
    xf = (x.double() - zp_in) * s_in
    wf = w.double() * s_w.double().view(C, 1, 1, 1)
    p = reference.normalize_padding(pads, k)
    v = F.conv2d(F.pad(xf, p), wf, bias.double(), stride=stride, groups=C)
    a = reference.apply_act(v, act)
    ya = (y.double() - zp_out) * s_out
    inside = (a >= s_out * (-128 - zp_out)) & (a <= s_out * (127 - zp_out))
    assert inside.float().mean() > 0.5  # the test exercises the unclamped grid
    assert (ya - a)[inside].abs().max().item() <= s_out * 0.5 + 1e-4
    assert torch.equal(y[~inside & (a > 0)], torch.full_like(y[~inside & (a > 0)], 127))
    torch.testing.assert_close(pool.double(), a.mean((2, 3)), rtol=1e-5, atol=1e-5)
    assert y.shape == (N, C) + tuple(a.shape[2:]) and y.is_contiguous(memory_format=CL)


def _dw_args(gen):
    x = q8((1, 8, 5, 5), gen)
    w = torch.randint(-127, 128, (8, 1, 3, 3), generator=gen, dtype=torch.int8)
    return x, w, torch.rand(8, generator=gen) * 0.01, torch.randn(8, generator=gen)


def test_op_bad_input():
    g = torch.Generator().manual_seed(0)
    x, w, s, b = _dw_args(g)
    with pytest.raises(TypeError, match="int8"):
        ops.dwconv_int8(x.float().contiguous(memory_format=CL), w, s, b)
    with pytest.raises(ValueError, match="channels_last"):
        ops.dwconv_int8(x.contiguous(), w, s, b)
    with pytest.raises(TypeError, match="int8"):
        ops.dwconv_int8(x, w.float(), s, b)
    with pytest.raises(TypeError, match="float32"):
        ops.dwconv_int8(x, w, s.double(), b)
    with pytest.raises(ValueError, match="in_zp"):
        ops.dwconv_int8(x, w, s, b, in_zp=200)
    with pytest.raises(ValueError, match="out_inv_scale"):
        ops.dwconv_int8(x, w, s, b, out_inv_scale=0.0)
    with pytest.raises(ValueError, match="out_inv_scale"):
        ops.dwconv_int8(x, w, s, b, out_inv_scale=float("inf"))
    for v in (1e39, 1e-46):  # finite > 0 as a Python float, inf / 0 as float32
        with pytest.raises(ValueError, match="out_inv_scale"):
            ops.dwconv_int8(x, w, s, b, out_inv_scale=v)
    with pytest.raises(ValueError, match="stride"):
        ops.dwconv_int8(x, w, s, b, stride=3)
    with pytest.raises(ValueError, match="shape"):
        ops.dwconv_int8(x, w[:4], s, b)
    with pytest.raises(ValueError, match="smaller than"):
        ops.dwconv_int8(x[:, :, :1, :1].contiguous(memory_format=CL), w, s, b, padding=0)
    if ops.extension_available():  # the C++ CPU kernel serves backend="cpu"
        y = ops.dwconv_int8(x, w, s, b, backend="cpu")
        assert torch.equal(y, ops.dwconv_int8(x, w, s, b, backend="torch"))


@needs_ext
def test_op_opcheck():
    g = torch.Generator().manual_seed(3)
    x, w, s, b = _dw_args(g)
    for rp in (False, True):
        torch.library.opcheck(torch.ops.effnet.dwconv_int8,
                              (x, w, s, b, 2, [1, 1, 1, 1], -3, 20.0, 4, "silu", rp))


# ------------------------------------------------------------------------------ C++ CPU kernel
# (N, C, H, W, k, stride, padding (left, right, top, bottom) or None = symmetric).
CPU_CASES = [
    (1, 37, 7, 7, 3, 1, None),
    (3, 61, 13, 11, 3, 2, (0, 1, 0, 1)),
    (1, 37, 1, 1, 3, 1, None),
    (3, 37, 13, 11, 5, 2, (1, 2, 2, 1)),
    (1, 61, 7, 7, 5, 1, (2, 2, 2, 2)),
    (3, 61, 1, 1, 5, 2, (2, 2, 2, 2)),
    (1, 37, 13, 11, 7, 1, (3, 0, 1, 3)),
    (1, 16, 2, 3, 5, 1, (4, 0, 4, 0)),
]
CPU_IDS = [f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}_p{c[6]}" for c in CPU_CASES]


@needs_ext
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CPU_CASES, ids=CPU_IDS)
def test_cpu_matches_reference(case, act, poison):
    g = torch.Generator().manual_seed(_seed(case, act))
    x, w, sc, b, s, pads = make_dw_int8(case, g)
    for (in_zp, out_zp), inv in zip(ZPS, (21.5, 7.0, 40.0, 13.25)):
        for return_pool in (False, True):
            y, pool = torch.ops.effnet.dwconv_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp, act,
                                                   return_pool)
            ref_y, ref_pool = reference.dwconv_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp,
                                                    act, True)
            assert_int8_close(y, ref_y, act)
            if return_pool:
                assert_pool_close(pool, ref_pool)
            else:
                assert pool.dtype == torch.float32 and pool.shape == (0,)


@needs_ext
def test_cpu_clamps_and_ties():
    """Outputs that saturate at both ends, and requantisation at exact .5 ties (round half up):
    identity with scale 1, bias 0.5 / inv 1 puts every value on a tie."""
    g = torch.Generator().manual_seed(5)
    x = q8((1, 37, 7, 7), g)
    w = torch.randint(-127, 128, (37, 1, 3, 3), generator=g, dtype=torch.int8)
    ones, half = torch.ones(37), torch.full((37,), 0.5)
    for inv, zp in [(1.0, 0), (1.0, 127), (0.5, -128), (3.0, -3)]:
        y, _ = torch.ops.effnet.dwconv_int8(x, w, ones, half, 1, [1, 1, 1, 1], 3, inv, zp,
                                            "identity", False)
        ref = reference.dwconv_int8(x, w, ones, half, 1, [1, 1, 1, 1], 3, inv, zp, "identity")
        assert torch.equal(y, ref)
        assert (y == 127).any() and (y == -128).any()


def _dw_call(**kw):
    g = torch.Generator().manual_seed(8)
    x, w, sc, b, s, pads = make_dw_int8((1, 8, 5, 5, 3, 1, None), g)
    a = dict(x=x, w=w, sc=sc, b=b, s=s, pads=pads, in_zp=0, inv=1.0, out_zp=0, act="silu")
    a.update(kw)
    return torch.ops.effnet.dwconv_int8(a["x"], a["w"], a["sc"], a["b"], a["s"], a["pads"],
                                        a["in_zp"], a["inv"], a["out_zp"], a["act"], False)


@needs_ext
def test_cpu_bad_input():
    g = torch.Generator().manual_seed(9)
    x = q8((1, 8, 5, 5), g)
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
        _dw_call(x=q8((1, 8, 1, 1), g), pads=[0, 0, 0, 0])


@needs_ext
def test_cpu_kernel_registered_in_cpp():
    """The CPU kernel is the C++ one (libtorch users get it), not a Python registration."""
    assert_cpu_kernel_from("dwconv_int8", "dwconv_int8_cpu.cpp")


@needs_ext
def test_cpu_opcheck():
    g = torch.Generator().manual_seed(11)
    x, w, sc, b, s, pads = make_dw_int8((1, 37, 7, 7, 3, 2, (0, 1, 0, 1)), g)
    for rp in (False, True):
        torch.library.opcheck(torch.ops.effnet.dwconv_int8,
                              (x, w, sc, b, s, pads, -3, 20.0, 4, "silu", rp))


# ------------------------------------------------------------------------------------ Triton
def make_dw_t(N, C, H, W, k, in_zp=IN_ZP, seed=0):
    """make_dw_int8 on the Triton device, act inputs O(1), bias shifted: y spreads over many
    levels at out_inv_scale 40."""
    g = torch.Generator().manual_seed(seed)
    case = (N, C, H, W, k, 1, None)
    x, w, scale, bias, _, _ = make_dw_int8(case, g, DEV, gain=1.0, bias_shift=-0.3,
                                           bias_scale=0.5)
    return [x, w, scale, bias, in_zp]


def run_dw(N, C, H, W, k, stride, pads, act, return_pool, in_zp=IN_ZP, **kw):
    x, w, scale, bias, zp = make_dw_t(N, C, H, W, k, in_zp)
    args = (x, w, scale, bias, stride, pads, zp, 40.0, OUT_ZP, act, return_pool)
    y, pool = tq._dw_launch(*args, **kw) if kw else tq.dwconv_int8(*args)
    ref = reference.dwconv_int8(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in args))
    if return_pool:
        ref, ref_pool = ref
        assert_pool_close(pool, ref_pool)
    else:
        assert pool is None
    assert_int8_close(y, ref, act, min_levels=20)
    return y, pool


# (N, C, H, W, k, stride, pads (left, right, top, bottom), act, return_pool)
TRITON_CASES = [
    (1, 16, 13, 11, 3, 1, (1, 1, 1, 1), "silu", True),
    (3, 37, 13, 11, 3, 2, (0, 1, 0, 1), "relu6", False),  # TF "same", stride 2 on odd sizes
    (1, 61, 13, 11, 5, 2, (1, 2, 2, 1), "identity", True),  # asymmetric both ways
    (3, 37, 7, 7, 5, 1, (2, 2, 2, 2), "relu", True),
    (1, 61, 9, 7, 7, 1, (3, 3, 3, 3), "silu", False),
    (3, 16, 7, 7, 7, 2, (2, 3, 3, 2), "identity", True),
    (1, 37, 5, 6, 9, 1, (4, 4, 4, 4), "relu6", True),  # k > 7: the runtime kh loop
    (3, 16, 1, 1, 3, 1, (1, 1, 1, 1), "identity", True),  # 1×1 map: only the centre tap
]


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: (
    "N{}_C{}_{}x{}_k{}s{}_p{}{}{}{}_{}{}".format(*c[:6], *c[6], c[7], "_pool" * c[8])))
def test_triton_matches_reference(poison, case):
    run_dw(*case)


@needs_triton
@pytest.mark.parametrize("in_zp", [0, 1, 127])
def test_triton_zero_points(poison, in_zp):
    """Padding contributes exactly 0 whatever the zero point (taps load in_zp)."""
    run_dw(2, 37, 7, 9, 5, 2, (1, 2, 2, 1), "identity", True, in_zp=in_zp)


@needs_triton
def test_triton_i64_path(poison):
    run_dw(2, 37, 7, 9, 3, 2, (0, 1, 0, 1), "relu6", True, force_i64=True)


@needs_triton
def test_triton_pool_deterministic(poison):
    _, p1 = run_dw(2, 37, 5, 7, 3, 1, (1, 1, 1, 1), "silu", True)
    _, p2 = run_dw(2, 37, 5, 7, 3, 1, (1, 1, 1, 1), "silu", True)
    assert torch.equal(p1, p2)


@needs_triton
def test_triton_empty():
    x, w, scale, bias, zp = make_dw_t(0, 16, 5, 5, 3)
    y, pool = tq.dwconv_int8(x, w, scale, bias, 1, (1, 1, 1, 1), zp, 40.0, 0, "silu", True)
    assert y.shape == (0, 16, 5, 5) and pool.shape == (0, 16)


DW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps}
              for c in (tq._dw_gpu_configs() if tq else [])]


@needs_triton
@pytest.mark.parametrize("cfg", DW_CONFIGS, ids=lambda v: "h{BLOCK_H}w{BLOCK_W}c{BLOCK_C}"
                         "nw{num_warps}".format(**v))
def test_triton_every_gpu_config(poison, cfg):
    run_dw(2, 37, 9, 11, 5, 2, (1, 2, 2, 1), "relu6", True, config=cfg)


# -------------------------------------------------------------------------------------- CUDA
# (N, C, H, W, k, stride, padding (left, right, top, bottom) or None = symmetric).
# C % 16 == 0: 16-byte path; C % 8 == 0: 8-byte path; else generic; k = 7: generic.
CASES = [
    (1, 16, 13, 13, 3, 1, None),
    (3, 37, 7, 13, 3, 2, (0, 1, 0, 1)),
    (1, 61, 13, 7, 5, 2, (1, 2, 2, 1)),
    (3, 1152, 7, 7, 5, 1, None),
    (1, 1152, 13, 13, 3, 2, (0, 1, 0, 1)),
    (3, 32, 1, 1, 3, 1, None),
    (1, 16, 113, 113, 3, 2, (0, 1, 0, 1)),
    (1, 37, 113, 113, 5, 1, None),
    (3, 48, 13, 11, 7, 1, (3, 3, 3, 3)),
    (1, 40, 9, 13, 5, 2, (2, 2, 2, 2)),
    (2, 24, 7, 5, 3, 1, (2, 0, 1, 2)),
    (1, 16, 2, 3, 5, 1, (4, 0, 4, 0)),
    (2, 64, 1, 1, 5, 2, (2, 2, 2, 2)),
    (1, 32, 17, 19, 5, 1, (0, 4, 4, 0)),
    (3, 96, 9, 10, 3, 2, (1, 1, 1, 1)),
    (1, 16, 5, 23, 5, 2, (1, 2, 0, 4)),
    (1, 144, 15, 15, 5, 2, (1, 2, 1, 2)),
]
CASE_IDS = [f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}_p{c[6]}" for c in CASES]


def make(case, seed=0, device="cpu"):
    """make_dw_int8 with a fresh generator seeded ``seed`` (the CUDA and emulation tests)."""
    return make_dw_int8(case, torch.Generator().manual_seed(seed), device)


def assert_matches(y, pool, x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool):
    """y within 1 LSB of the reference with rare flips; pool rel err <= 1e-5."""
    ref_y, ref_pool = reference.dwconv_int8(x.cpu(), w.cpu(), sc.cpu(), b.cpu(), s, pads, in_zp,
                                            inv, out_zp, act, True)
    assert_int8_close(y, ref_y, act, exact_unless_silu=False)
    if return_pool:
        assert pool.shape == (x.shape[0], x.shape[1])
        assert_pool_close(pool, ref_pool)
    else:
        assert pool.dtype == torch.float32 and pool.shape == (0,)


@needs_ext
def test_schema_declared():
    schema = str(torch.ops.effnet.dwconv_int8.default._schema)
    assert schema.startswith(
        "effnet::dwconv_int8(Tensor x, Tensor weight, Tensor scale, Tensor bias, int stride, "
        "int[] padding, int in_zp, float out_inv_scale, int out_zp, str act, bool return_pool)"
        " -> (Tensor, Tensor)"), schema


@needs_ext
@needs_cuda_kernels
def test_cuda_kernel_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("effnet::dwconv_int8", "CUDA")


def run_op(x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool):
    return torch.ops.effnet.dwconv_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp, act,
                                        return_pool)


def check_gpu(x, w, sc, b, s, pads, act, return_pool, in_zp=-7, inv=21.5, out_zp=5):
    y, pool = run_op(x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool)
    assert y.device == x.device and pool.device == x.device
    assert_matches(y, pool, x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool)
    # Deterministic: a second run gives the same bits (no atomics in the pool).
    y2, pool2 = run_op(x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool)
    assert torch.equal(y, y2) and torch.equal(pool, pool2)


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("return_pool", [True, False])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gpu_matches_reference(poison, case, act, return_pool):
    x, w, sc, b, s, pads = make(case, device="cuda")
    check_gpu(x, w, sc, b, s, pads, act, return_pool)


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("in_zp,out_zp,inv", [(-128, 127, 3.0), (127, -128, 40.0), (0, 0, 21.5),
                                              (55, -90, 0.25)])
def test_gpu_zero_points(poison, in_zp, out_zp, inv):
    for case in [(1, 32, 9, 9, 5, 1, None), (2, 40, 8, 7, 3, 2, (0, 1, 0, 1)),
                 (1, 21, 6, 9, 3, 1, None)]:
        x, w, sc, b, s, pads = make(case, seed=3, device="cuda")
        check_gpu(x, w, sc, b, s, pads, "relu6", True, in_zp=in_zp, inv=inv, out_zp=out_zp)


@pytest.mark.cuda
@needs_cuda_kernels
@pytest.mark.parametrize("offset", [1, 8, 16])
def test_gpu_misaligned_input(poison, offset):
    # x at a storage offset: 1 byte rules out 8/16-byte vectors, 8 bytes allows only 8-byte ones.
    N, C, H, W = 2, 64, 9, 7
    x0, w, sc, b, s, pads = make((N, C, H, W, 3, 1, None), device="cuda")
    base = torch.zeros(offset + N * H * W * C, dtype=torch.int8, device="cuda")
    x = base[offset:].view(N, H, W, C).permute(0, 3, 1, 2)
    x.copy_(x0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.data_ptr() % 16 == (offset % 16)
    check_gpu(x, w, sc, b, s, pads, "silu", True)


@pytest.mark.cuda
@needs_cuda_kernels
def test_gpu_past_2_31_elements():
    """x with N*C*H*W > 2**31 int8 values: 64-bit offsets. Checks the last sample."""
    N, C, H, W = 33, 1024, 256, 256
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(-128, 128, (N, H, W, C), generator=g, dtype=torch.int8,
                      device="cuda").permute(0, 3, 1, 2)
    w = torch.randint(-127, 128, (C, 1, 3, 3), generator=g, dtype=torch.int8, device="cuda")
    sc = torch.full((C,), 3.0 / (3 * 74 * 73), device="cuda")
    b = torch.zeros(C, device="cuda")
    y, pool = run_op(x, w, sc, b, 1, [1, 1, 1, 1], 3, 21.5, -2, "relu", True)
    assert_matches(y[-1:], pool[-1:], x[-1:], w, sc, b, 1, [1, 1, 1, 1], 3, 21.5, -2, "relu",
                   True)


@pytest.mark.cuda
@needs_cuda_kernels
def test_gpu_rejects_bad_input():
    x, w, sc, b, s, pads = make(CASES[1], device="cuda")
    op = torch.ops.effnet.dwconv_int8

    def call(x=x, w=w, sc=sc, b=b, s=s, pads=pads, in_zp=0, inv=1.0, out_zp=0, act="silu"):
        return op(x, w, sc, b, s, pads, in_zp, inv, out_zp, act, True)

    with pytest.raises(ValueError, match="channels_last"):
        call(x=x.contiguous())
    with pytest.raises(TypeError, match="x must be int8"):
        call(x=x.float())
    with pytest.raises(TypeError, match="weight must be int8"):
        call(w=w.float())
    with pytest.raises(ValueError, match="weight must have shape"):
        call(w=w[:5])
    with pytest.raises(ValueError, match="odd"):
        call(w=torch.zeros(x.shape[1], 1, 4, 4, dtype=torch.int8, device="cuda"))
    with pytest.raises(ValueError, match="scale must have shape"):
        call(sc=sc[:-1])
    with pytest.raises(TypeError, match="bias must be float32"):
        call(b=b.double())
    with pytest.raises(RuntimeError, match="is on cpu"):
        call(w=w.cpu())
    with pytest.raises(ValueError, match="stride"):
        call(s=3)
    with pytest.raises(ValueError, match="padding"):
        call(pads=[3, 0, 0, 0])
    with pytest.raises(ValueError, match="padding"):
        call(pads=[1, 1, 1])
    with pytest.raises(ValueError, match="in_zp"):
        call(in_zp=128)
    with pytest.raises(ValueError, match="out_inv_scale"):
        call(inv=0.0)
    with pytest.raises(ValueError, match="smaller than"):
        call(x=torch.zeros(1, 37, 1, 1, dtype=torch.int8, device="cuda"),
             w=torch.zeros(37, 1, 5, 5, dtype=torch.int8, device="cuda"), pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="unknown activation"):
        call(act="tanh")
