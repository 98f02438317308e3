"""effnet::pointwise_int8 on every backend against the exact integer oracle
effnet_kernels.reference.pointwise_int8 (reference.py, "INT8"), outputs poisoned:

* the reference itself against plain float math on the dequantised values (independent);
* the C++ CPU kernel (csrc/pointwise_int8/pointwise_int8_cpu.cpp) through the dispatcher:
  bit-exact for relu / relu6 / identity, SiLU within 1 LSB rarely (its Cephes exp vs torch's);
* Triton (effnet_kernels/triton/quant.py; the interpreter without a GPU): gate prologue, zero
  points, residual, pool_only; within 1 LSB, rare flips, exact without SiLU (launched without
  FMA contraction); every GPU autotune config on one small case.

Pools: rel ≤ 1e-5."""

import zlib

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference
from helpers import (
    ACTS, CL, DEV, assert_cpu_kernel_from, assert_int8_close, assert_pool_close, needs_ext,
    needs_triton, q8)

try:
    from effnet_kernels.triton import quant as tq
    from triton.runtime.errors import OutOfResources
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    tq = None

# (in_zp, out_zp): zero, the extremes both ways, and an ordinary asymmetric pair.
ZPS = [(0, 0), (-128, 127), (127, -128), (-7, 5)]
IN_ZP, OUT_ZP, RES_ZP = -100, 5, -3  # the Triton tests' zero points


def _seed(*key) -> int:
    """A seed per test case, the same in every process (unlike hash() of a str)."""
    return zlib.crc32(repr(key).encode())


# ---------------------------------------------------------------------- reference semantics
@pytest.mark.parametrize("with_gate,with_res", [(False, False), (True, False), (True, True)])
def test_reference_is_float_math_on_dequantised_values(with_gate, with_res):
    g = torch.Generator().manual_seed(int(with_gate) * 2 + int(with_res))
    N, Cin, Cout, H, W = 3, 37, 29, 5, 7
    x = q8((N, Cin, H, W), g)
    w = torch.randint(-127, 128, (Cout, Cin), generator=g, dtype=torch.int8)
    s_in, zp_in, s_out, zp_out, s_r, zp_r = 0.04, 100, 0.05, -3, 0.02, 9
    s_w = torch.rand(Cout, generator=g) * 0.005 + 0.001
    bias = torch.randn(Cout, generator=g) * 0.3
    gate = torch.rand(N, Cin, generator=g) if with_gate else None
    res = q8((N, Cout, H, W), g) if with_res else None
    scale = (s_w * torch.tensor(s_in)).float()
    y = ops.pointwise_int8(x, w, scale, bias, zp_in, 1 / s_out, zp_out, "silu", gate, res, s_r,
                           zp_r, backend="torch")
    xf = (x.double() - zp_in) * s_in
    if gate is not None:  # gated in int8 (its own grid): at most half a step off per input
        xf_g = xf * gate.double()[:, :, None, None]
        xq_g = reference.gate_int8(x, gate, zp_in)
        assert ((xq_g.double() - zp_in) * s_in - xf_g).abs().max() <= s_in / 2 + 1e-9
        xf = (xq_g.double() - zp_in) * s_in
    wf = w.double() * s_w.double().view(Cout, 1)
    a = F.silu(F.conv2d(xf, wf[:, :, None, None], bias.double()))
    if res is not None:
        a = a + (res.double() - zp_r) * s_r
    ya = (y.double() - zp_out) * s_out
    inside = (a >= s_out * (-128 - zp_out)) & (a <= s_out * (127 - zp_out))
    assert inside.float().mean() > 0.5
    assert (ya - a)[inside].abs().max().item() <= s_out * 0.5 + 1e-4
    pool = ops.pointwise_int8(x, w, scale, bias, zp_in, 1 / s_out, zp_out, "silu", gate, res,
                              s_r, zp_r, pool_only=True, backend="torch")
    torch.testing.assert_close(pool.double(), a.mean((2, 3)), rtol=1e-5, atol=1e-5)


def test_op_bad_input():
    g = torch.Generator().manual_seed(0)
    x = q8((1, 8, 5, 5), g)
    wp = torch.randint(-127, 128, (6, 8), generator=g, dtype=torch.int8)
    sp, bp = torch.rand(6, generator=g), torch.randn(6, generator=g)
    with pytest.raises(ValueError, match="gate"):
        ops.pointwise_int8(x, wp, sp, bp, gate=torch.rand(1, 7))
    with pytest.raises(TypeError, match="gate"):
        ops.pointwise_int8(x, wp, sp, bp, gate=torch.rand(1, 8).double())
    with pytest.raises(ValueError, match="residual"):
        ops.pointwise_int8(x, wp, sp, bp, residual=q8((1, 6, 4, 5), g))
    with pytest.raises(TypeError, match="residual"):
        ops.pointwise_int8(x, wp, sp, bp, residual=torch.zeros(1, 6, 5, 5).contiguous(
            memory_format=CL))
    with pytest.raises(ValueError, match="res_scale"):
        ops.pointwise_int8(x, wp, sp, bp, residual=q8((1, 6, 5, 5), g), res_scale=-1.0)
    with pytest.raises(ValueError, match="shape"):
        ops.pointwise_int8(x, wp[:, :5], sp, bp)


@needs_ext
def test_op_opcheck():
    g = torch.Generator().manual_seed(3)
    x = q8((1, 8, 5, 5), g)
    wp = torch.randint(-127, 128, (6, 8), generator=g, dtype=torch.int8)
    sp, bp = torch.rand(6, generator=g) * 0.01, torch.randn(6, generator=g)
    res = q8((1, 6, 5, 5), g)
    for gate, r, po in [(None, None, False), (torch.rand(1, 8, generator=g), res, False),
                        (None, None, True)]:
        torch.library.opcheck(torch.ops.effnet.pointwise_int8,
                              (x, wp, sp, bp, 5, 10.0, -2, "silu", gate, r, 0.05, 3, po))


# ------------------------------------------------------------------------------ C++ CPU kernel
# (N, Cin, Cout, H, W)
CPU_CASES = [
    (1, 37, 61, 7, 7),
    (3, 61, 37, 13, 11),
    (3, 37, 37, 1, 1),
    (1, 1152, 61, 3, 3),
]
CPU_IDS = [f"N{c[0]}_{c[1]}to{c[2]}_{c[3]}x{c[4]}" for c in CPU_CASES]


@needs_ext
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CPU_CASES, ids=CPU_IDS)
def test_cpu_matches_reference(case, act, poison):
    N, Cin, Cout, H, W = case
    g = torch.Generator().manual_seed(_seed(case, act))
    x = q8((N, Cin, H, W), g)
    w = torch.randint(-127, 128, (Cout, Cin), generator=g, dtype=torch.int8)
    sc = (torch.rand(Cout, generator=g) + 0.5) * 3.0 / (Cin ** 0.5 * 74 * 73)
    b = torch.randn(Cout, generator=g)
    gate = torch.rand(N, Cin, generator=g)
    res = q8((N, Cout, H, W), g)
    for i, ((in_zp, out_zp), inv) in enumerate(zip(ZPS, (21.5, 7.0, 40.0, 13.25))):
        res_zp = (3, -128, 127, 0)[i]
        for use_gate in (False, True):
            for use_res in (False, True):
                gt, r = (gate if use_gate else None), (res if use_res else None)
                args = (in_zp, inv, out_zp, act, gt, r, 0.05, res_zp)
                y = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args, False)
                ref = reference.pointwise_int8(x, w, sc, b, *args, False)
                assert_int8_close(y, ref, act)
                pool = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args, True)
                ref_pool = reference.pointwise_int8(x, w, sc, b, *args, True)
                assert_pool_close(pool, ref_pool)


@needs_ext
def test_cpu_weight_4d_and_gate_ties(poison):
    """(Cout, Cin, 1, 1) weights; a gate of 0.5 on odd (x - zp) puts the gated value on a tie."""
    g = torch.Generator().manual_seed(6)
    x = q8((3, 37, 7, 7), g)
    w = torch.randint(-127, 128, (61, 37, 1, 1), generator=g, dtype=torch.int8)
    sc, b = torch.full((61,), 1e-3), torch.randn(61, generator=g)
    gate = torch.full((3, 37), 0.5)
    args = (-5, 9.0, 2, "relu6", gate, None, 1.0, 0, False)
    y = torch.ops.effnet.pointwise_int8(x, w, sc, b, *args)
    assert torch.equal(y, reference.pointwise_int8(x, w, sc, b, *args))


@needs_ext
def test_cpu_bad_input():
    g = torch.Generator().manual_seed(10)
    x = q8((2, 8, 5, 5), g)
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
        call(res=q8((2, 6, 4, 5), g))
    with pytest.raises(TypeError, match="residual must be int8"):
        call(res=torch.zeros(2, 6, 5, 5).contiguous(memory_format=CL))
    with pytest.raises(ValueError, match="res_scale"):
        call(res=q8((2, 6, 5, 5), g), res_scale=-1.0)
    with pytest.raises(ValueError, match="res_zp"):
        call(res=q8((2, 6, 5, 5), g), res_zp=128)
    with pytest.raises(ValueError, match="pool_only"):
        call(x=q8((2, 8, 0, 5), g), pool_only=True)
    with pytest.raises(ValueError, match="activation"):
        call(act="tanh")


@needs_ext
def test_cpu_kernel_registered_in_cpp():
    """The CPU kernel is the C++ one (libtorch users get it), not a Python registration."""
    assert_cpu_kernel_from("pointwise_int8", "pointwise_int8_cpu.cpp")


@needs_ext
def test_cpu_opcheck():
    g = torch.Generator().manual_seed(11)
    x = q8((1, 37, 7, 7), g)
    wp = torch.randint(-127, 128, (61, 37), generator=g, dtype=torch.int8)
    sp, bp = torch.rand(61, generator=g) * 0.01, torch.randn(61, generator=g)
    res = q8((1, 61, 7, 7), g)
    for gate, r, po in [(None, None, False), (torch.rand(1, 37, generator=g), res, False),
                        (None, res, True)]:
        torch.library.opcheck(torch.ops.effnet.pointwise_int8,
                              (x, wp, sp, bp, 5, 10.0, -2, "relu6", gate, r, 0.05, 3, po))


# ------------------------------------------------------------------------------------ Triton
def make_pw(N, Cin, Cout, H, W, gate=False, res=False, in_zp=IN_ZP, seed=0):
    """x full int8 range, w in [−127, 127], scale sized so that act's input is O(1) and
    out_inv_scale = 40 spreads y over ~±80 levels (plus some clamping)."""
    g = torch.Generator().manual_seed(seed)
    x = q8((N, Cin, H, W), g)
    w = q8((Cout, Cin), g, lo=-127)
    spread = Cin ** 0.5 * 74.0 * 73.0  # ~std of Σ (x − zp)·w
    scale = (0.5 + torch.rand(Cout, generator=g)) / spread
    bias = torch.randn(Cout, generator=g) * 0.5 - 0.3
    gt = torch.rand(N, Cin, generator=g) * 0.98 + 0.01 if gate else None  # in (0, 1)
    r = q8((N, Cout, H, W), g) if res else None
    to = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    return dict(x=to(x), w=to(w), scale=to(scale), bias=to(bias), in_zp=in_zp,
                out_inv_scale=40.0, out_zp=OUT_ZP, gate=to(gt), residual=to(r),
                res_scale=1 / 90.0, res_zp=RES_ZP)


def ref_pw(a, act, pool_only):
    a = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    return reference.pointwise_int8(a["x"], a["w"], a["scale"], a["bias"], a["in_zp"],
                                    a["out_inv_scale"], a["out_zp"], act, a["gate"],
                                    a["residual"], a["res_scale"], a["res_zp"], pool_only)


def launch_pw(a, act, pool_only, **kw):
    args = (a["x"], a["w"], a["scale"], a["bias"], a["in_zp"], a["out_inv_scale"], a["out_zp"],
            act, a["gate"], a["residual"], a["res_scale"], a["res_zp"], pool_only)
    if kw:
        return tq._pw_launch(*args, **kw)
    return tq.pointwise_int8(*args)


def run_pw(N, Cin, Cout, H, W, act, gate=False, res=False, pool_only=False, **kw):
    a = make_pw(N, Cin, Cout, H, W, gate, res, **kw)
    out = launch_pw(a, act, pool_only)
    if pool_only:
        assert_pool_close(out, ref_pw(a, act, True))
    else:
        assert_int8_close(out, ref_pw(a, act, False), act, min_levels=20)
    return out


# (N, Cin, Cout, H, W, act, gate, residual, pool_only)
TRITON_CASES = [
    (1, 16, 96, 7, 7, "silu", False, False, False),
    (3, 144, 24, 7, 7, "identity", True, True, False),
    (3, 144, 24, 1, 1, "relu6", True, True, False),  # a 16-row tile spans three samples' gates
    (1, 61, 37, 13, 11, "relu", True, False, False),
    (3, 61, 37, 1, 1, "silu", True, False, False),
    (2, 320, 640, 2, 3, "silu", False, False, True),  # conv_head + pool, shrunk
]


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "N{}_{}to{}_{}x{}_{}{}{}{}".format(
    *c[:6], "_gate" * c[6], "_res" * c[7], "_pool" * c[8]))
def test_triton_shapes(poison, case):
    run_pw(*case)


@needs_triton
@pytest.mark.parametrize("act", ACTS)
def test_triton_37_to_61_every_act(poison, act):
    """K and N tails (37, 61), 13×11 over three samples, gate and residual."""
    run_pw(3, 37, 61, 13, 11, act, gate=True, res=True)


@needs_triton
@pytest.mark.parametrize("in_zp", [0, 1, -128, 127])
def test_triton_zero_points(poison, in_zp):
    """in_zp = 0 skips the correction (HAS_ZP), 1 is specialised to a constant by Triton, and
    the extremes of the range."""
    run_pw(2, 37, 61, 7, 7, "identity", gate=True, res=True, in_zp=in_zp)


@needs_triton
@pytest.mark.parametrize("N, H, W", [(3, 1, 1), (3, 13, 11), (1, 7, 7)])
def test_triton_pool_only(poison, N, H, W):
    """pool_only with gate and residual: many samples per row tile (1×1), samples straddling
    tiles (13×11 = 143 rows); deterministic run to run."""
    out = run_pw(N, 37, 61, H, W, "silu", gate=True, res=True, pool_only=True)
    again = launch_pw(make_pw(N, 37, 61, H, W, True, True), "silu", True)
    assert torch.equal(out, again)


@needs_triton
def test_triton_saturated_operands(poison):
    """Every product −128·−128 (and −128·127) summed over K = 144: an int8 (or int16) overflow
    of the dot, or an inexact float path, would show. Identity act: exact."""
    N, Cin, Cout, H, W = 2, 144, 24, 3, 3
    a = make_pw(N, Cin, Cout, H, W, in_zp=0)
    a["x"] = torch.full((N, Cin, H, W), -128, dtype=torch.int8, device=DEV
                        ).contiguous(memory_format=CL)
    w = torch.full((Cout, Cin), -128, dtype=torch.int8)
    w[1::2] = 127
    a["w"] = w.to(DEV)
    acc = torch.where(torch.arange(Cout) % 2 == 0, 144 * 16384, -144 * 16256).float()
    # |acc|·scale spread over ±100 levels: y exactly the reference's
    a["scale"] = ((torch.arange(Cout) - 11.5) / 12.0 * 2.5 / acc.abs()).to(DEV)
    ref = ref_pw(a, "identity", False)
    y = launch_pw(a, "identity", False).cpu()
    assert torch.equal(y, ref)
    assert ref.unique().numel() >= 20
    assert_pool_close(launch_pw(a, "identity", True), ref_pw(a, "identity", True))


@needs_triton
def test_triton_strided_views(poison):
    """w a transposed (Cin, Cout) view and a column slice of a wider matrix, the gate a
    transposed view; an explicit w_sum gives the same result."""
    N, Cin, Cout, H, W = 2, 45, 33, 3, 4  # Cin > BLOCK_K: strided K steps of w and gate
    a = make_pw(N, Cin, Cout, H, W, True, True)
    ref = ref_pw(a, "relu", False)
    g = torch.Generator().manual_seed(1)
    wt = a["w"].cpu().t().contiguous().to(DEV).t()  # (Cout, Cin), strides (1, Cout)
    wide = torch.cat([a["w"].cpu(), q8((Cout, 7), g)], 1).to(DEV)[:, :Cin]  # strides (Cin + 7, 1)
    gt = a["gate"].cpu().t().contiguous().to(DEV).t()
    assert not wt.is_contiguous() and not wide.is_contiguous() and not gt.is_contiguous()
    for w in (wt, wide):
        assert_int8_close(launch_pw({**a, "w": w, "gate": gt}, "relu", False), ref, "relu",
                          min_levels=20)
    w_sum = a["w"].sum(1, dtype=torch.int32)
    assert_int8_close(launch_pw(a, "relu", False, w_sum=w_sum), ref, "relu", min_levels=20)
    # a strided w_sum (every other element of a longer vector) through the op and the launcher
    w_sum2 = torch.stack([w_sum, torch.full_like(w_sum, 10**6)], 1).reshape(-1)[::2]
    assert not w_sum2.is_contiguous() and torch.equal(w_sum2, w_sum)
    assert_int8_close(launch_pw(a, "relu", False, w_sum=w_sum2), ref, "relu", min_levels=20)
    y = ops.pointwise_int8(a["x"], a["w"], a["scale"], a["bias"], a["in_zp"],
                           a["out_inv_scale"], a["out_zp"], "relu", a["gate"], a["residual"],
                           a["res_scale"], a["res_zp"], w_sum=w_sum2, backend="triton")
    assert_int8_close(y, ref, "relu", min_levels=20)


@needs_triton
def test_triton_empty():
    a = make_pw(0, 8, 12, 3, 3, True, True)
    assert launch_pw(a, "silu", False).shape == (0, 12, 3, 3)
    assert launch_pw(a, "silu", True).shape == (0, 12)


PW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
              for c in (tq._pw_gpu_configs() if tq else [])]


@needs_triton
@pytest.mark.parametrize("cfg", PW_CONFIGS, ids=lambda v: "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}"
                         "w{num_warps}s{num_stages}".format(**v))
@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_triton_every_gpu_config(poison, cfg, pool_only):
    """Gate + residual + zero points, HW = 35 rows per sample over three samples."""
    a = make_pw(3, 37, 61, 5, 7, True, True)
    try:
        out = launch_pw(a, "relu6", pool_only, config=cfg)
    except OutOfResources as e:  # a GPU with less shared memory than an H100
        pytest.skip(f"config does not fit this GPU: {e}")
    if pool_only:
        assert_pool_close(out, ref_pw(a, "relu6", True))
    else:
        assert_int8_close(out, ref_pw(a, "relu6", False), "relu6", min_levels=20)


@needs_triton
def test_triton_config_pruning():
    configs = tq._pw_gpu_configs()
    late = tq._pw_prune_configs(configs, {"M": 49, "Cout": 320, "Cin": 1152})  # B0 batch 1
    assert late and all(c.kwargs["BLOCK_M"] <= 64 for c in late)
    narrow = tq._pw_prune_configs(configs, {"M": 12544, "Cout": 16, "Cin": 32})
    assert narrow and all(c.kwargs["BLOCK_N"] == 16 for c in narrow)
    assert tq._pw_prune_configs(configs, {"M": 12544, "Cout": 1280, "Cin": 320}) == configs
    assert all(c.kwargs["BLOCK_K"] >= 32 for c in configs)  # the int8 MMA K
