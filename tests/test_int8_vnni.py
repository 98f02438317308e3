"""The AVX-512 VNNI path of the INT8 CPU ops (csrc/engine/engine_int8.cpp, used by
pointwise_int8 / dwconv_int8 when the ISA level is "avx512" on a CPU with AVX512_VNNI) is
bit-exact with the scalar kernels of the lower ISA levels (the same float32 steps in the same
order, SiLU included, pools summed in the same order), and within the contract of the integer
reference, on the odd shapes of DESIGN §4: C = 37, 1×1 and 13×11 spatial, stride 2 on odd
sizes, batch 1 and 3, K not a multiple of 4, N below and above one 64-column tile, outputs
poisoned."""

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import assert_int8_close, assert_pool_close, make_dw_int8

pytestmark = pytest.mark.skipif(not ops.extension_available(),
                                reason=f"effnet_kernels._C not built: {ops.extension_error()}")

CL = torch.channels_last
ACTS = ["silu", "relu6", "relu", "identity"]


def _C():
    from effnet_kernels import _C

    return _C


@pytest.fixture
def vnni():
    """Runs the test where the VNNI path exists; yields a function running an op under a given
    ISA level."""
    C = _C()
    if "avx512" not in C.cpu_isas() or not C.cpu_has_int8_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI (the path under test)")
    prev = C.cpu_isa()

    def under(isa, fn, *args):
        C.set_cpu_isa(isa)
        try:
            return fn(*args)
        finally:
            C.set_cpu_isa(prev)

    yield under


def _pw_args(case, act, g):
    N, Cin, Cout, H, W, gate, res, = case
    x = torch.randint(-128, 128, (N, Cin, H, W), generator=g, dtype=torch.int8).contiguous(
        memory_format=CL)
    w = torch.randint(-127, 128, (Cout, Cin), generator=g, dtype=torch.int8)
    # |acc| ~ 5e3·sqrt(Cin): a ~ N(0, 2), spread over ~±40 levels by out_inv_scale = 20
    scale = (torch.rand(Cout, generator=g) + 0.5) * 4e-4 / Cin ** 0.5
    bias = torch.randn(Cout, generator=g)
    gt = torch.rand(N, Cin, generator=g) * 1.5 if gate else None
    r = torch.randint(-128, 128, (N, Cout, H, W), generator=g, dtype=torch.int8).contiguous(
        memory_format=CL) if res else None
    return (x, w, scale, bias, 3, 20.0, -5, act, gt, r, 0.05, 2)


PW_CASES = [  # (N, Cin, Cout, H, W, gate, residual)
    (1, 37, 61, 13, 11, False, False),   # K % 4 != 0, N < 64: 8 x 2 tiles
    (3, 61, 37, 7, 5, True, True),
    (1, 24, 144, 1, 1, True, True),      # 1 x 1: one row per sample; N >= 64: 6 x 4 tiles
    (3, 40, 37, 2, 3, True, False),
    (2, 1152, 320, 7, 7, True, True),    # B0's widest projection
    (1, 16, 16, 3, 3, False, True),
]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", PW_CASES, ids=str)
def test_pointwise_int8_vnni_exact(vnni, poison, case, act):
    g = torch.Generator().manual_seed(hash(case) % 1000)
    args = _pw_args(case, act, g)
    op = torch.ops.effnet.pointwise_int8
    for pool_only in (False, True):
        fast = vnni("avx512", op, *args, pool_only)
        slow = vnni("baseline", op, *args, pool_only)
        assert torch.equal(fast, slow), (case, act, pool_only)
        if pool_only:
            assert fast.dtype == torch.float32 and fast.shape == (case[0], case[2])
            assert_pool_close(fast, reference.pointwise_int8(*args, True))
        else:
            assert_int8_close(fast, reference.pointwise_int8(*args, False), act,
                              min_levels=20)


DW_CASES = [  # (N, C, H, W, k, stride, padding)
    (1, 37, 13, 11, 3, 1, None),
    (3, 61, 7, 7, 5, 2, None),
    (3, 37, 1, 1, 3, 1, None),
    (1, 64, 13, 11, 3, 2, (0, 1, 0, 1)),
    (2, 200, 9, 8, 7, 2, (3, 3, 2, 3)),  # generic k, 4 channel blocks with a tail
    (1, 16, 5, 4, 5, 1, None),
]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", DW_CASES, ids=str)
def test_dwconv_int8_vnni_exact(vnni, poison, case, act):
    g = torch.Generator().manual_seed(7)
    x, w, sc, b, s, pads = make_dw_int8(case, g)
    args = (x, w, sc, b, s, pads, -3, 7.0, 11, act, True)
    op = torch.ops.effnet.dwconv_int8
    y, pool = vnni("avx512", op, *args)
    y0, pool0 = vnni("baseline", op, *args)
    assert torch.equal(y, y0) and torch.equal(pool, pool0)
    ref_y, ref_pool = reference.dwconv_int8(*args)
    assert_int8_close(y, ref_y, act)
    assert_pool_close(pool, ref_pool)
    y1, _ = vnni("avx512", op, *args[:-1], False)
    assert torch.equal(y1, y)


def test_dwconv_int8_large_kernel_falls_back(vnni):
    """k > 15 runs the scalar kernel at every level (the VNNI row kernel takes up to 15)."""
    g = torch.Generator().manual_seed(3)
    x, w, sc, b, s, pads = make_dw_int8((1, 8, 20, 20, 17, 1, None), g)
    args = (x, w, sc, b, s, pads, 0, 5.0, 0, "relu", True)
    y, pool = vnni("avx512", torch.ops.effnet.dwconv_int8, *args)
    ref_y, ref_pool = reference.dwconv_int8(*args)
    assert_int8_close(y, ref_y, "relu")
    assert_pool_close(pool, ref_pool)


def test_gate_rounding_edges(vnni):
    """Gates that put (q - zp)·g exactly on .5 steps and at the clamp bounds: the gated input
    is rounded half up and clamped as reference.gate_int8."""
    x = torch.arange(-128, 128, dtype=torch.int8).reshape(1, 256, 1, 1).repeat(1, 1, 2, 3)
    x = x.contiguous(memory_format=CL)
    gate = torch.tensor([[0.5, 1.0, 0.25, 0.75] * 64])
    w = torch.eye(256, dtype=torch.int8)[:64] * 127  # picks channels 0..63
    args = (x, w, torch.full((64,), 1.0 / 127), torch.zeros(64), -3, 1.0, 0, "identity", gate,
            None, 1.0, 0)
    fast = vnni("avx512", torch.ops.effnet.pointwise_int8, *args, False)
    assert torch.equal(fast, reference.pointwise_int8(*args, False))
    assert torch.equal(fast, vnni("baseline", torch.ops.effnet.pointwise_int8, *args, False))


def test_quantize_per_tensor_vnni_exact(vnni):
    """The vectorised float32 quantise is the scalar one, ties, clamps, NaN and inf included."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 37, 13, 11, generator=g) * 4
    x.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5 / 30,
                                   -1.5 / 30, 1e30])
    x = x.contiguous(memory_format=CL)
    op = torch.ops.effnet.quantize_per_tensor
    for inv, zp in [(30.0, -3), (7.0, 127), (1.0, -128)]:
        fast = vnni("avx512", op, x, inv, zp)
        assert torch.equal(fast, vnni("baseline", op, x, inv, zp))
        ok = ~x.isnan()  # NaN: the kernels give -128 (cpu_int8.h), the reference 0
        assert torch.equal(fast[ok], reference.quantize_per_tensor(x, inv, zp)[ok])
    odd = torch.randn(1001, generator=g)  # not 4-D, a tail of 9
    assert torch.equal(vnni("avx512", op, odd, 5.0, 1), vnni("baseline", op, odd, 5.0, 1))
