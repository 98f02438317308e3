"""Triton INT8 kernels (effnet_kernels/triton/quant.py) against the exact integer reference
(reference.py, "INT8"): pointwise_int8 (gate prologue, zero points, residual, pool_only),
dwconv_int8 (k 3/5/7/9, stride 1/2 on odd sizes, asymmetric pads, pool), quantize_per_tensor;
every GPU autotune config on one small case. On the CPU these run through the interpreter
(conftest sets TRITON_INTERPRET=1); on a GPU the same tests run on CUDA tensors.

Tolerance (reference.py): |y − ref| ≤ 1 LSB everywhere and < 1 % of the outputs 1 LSB off; the
kernels are launched without FMA contraction, so outputs without SiLU (whose sigmoid differs
from torch's in the last ulp) must match bit for bit. Pools: rel ≤ 1e-5."""

import pytest
import torch

from conftest import HAS_GPU, rel_err
from effnet_kernels import ops, reference

pytest.importorskip("triton", reason="triton is not importable")
tq = pytest.importorskip("effnet_kernels.triton.quant", reason="triton is not importable")
from triton.runtime.errors import OutOfResources  # noqa: E402

DEV = "cuda" if HAS_GPU else "cpu"
CL = torch.channels_last
ACTS = ["silu", "relu6", "relu", "identity"]
IN_ZP, OUT_ZP, RES_ZP = -100, 5, -3


def check_q(y, ref, act):
    """int8 y against the reference: shape, layout, ≤ 1 LSB, < 1 % off, exact without SiLU.
    The reference must spread over many levels, or the comparison proves little."""
    y = y.cpu()
    assert y.dtype == torch.int8 and y.shape == ref.shape
    assert y.is_contiguous(memory_format=CL)
    assert ref.unique().numel() >= 20, "test data too narrow: the reference hardly varies"
    d = (y.int() - ref.int()).abs()
    assert d.max().item() <= 1, f"max |y - ref| = {d.max().item()} LSB"
    frac = (d > 0).float().mean().item()
    assert frac < 0.01, f"{frac:.2%} of outputs 1 LSB off"
    if act != "silu":
        assert torch.equal(y, ref), f"{(d > 0).sum().item()} outputs differ (expected exact)"


def check_pool(pool, ref):
    pool = pool.cpu()
    assert pool.dtype == torch.float32 and pool.shape == ref.shape
    assert not torch.isnan(pool).any()
    assert rel_err(pool, ref) <= 1e-5, rel_err(pool, ref)


def q8(g, *shape, lo=-128, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)


# ----------------------------------------------------------------------------- pointwise_int8
def make_pw(N, Cin, Cout, H, W, gate=False, res=False, in_zp=IN_ZP, seed=0):
    """x full int8 range, w in [−127, 127], scale sized so that act's input is O(1) and
    out_inv_scale = 40 spreads y over ~±80 levels (plus some clamping)."""
    g = torch.Generator().manual_seed(seed)
    x = q8(g, N, Cin, H, W).contiguous(memory_format=CL)
    w = q8(g, Cout, Cin, lo=-127)
    spread = Cin ** 0.5 * 74.0 * 73.0  # ~std of Σ (x − zp)·w
    scale = (0.5 + torch.rand(Cout, generator=g)) / spread
    bias = torch.randn(Cout, generator=g) * 0.5 - 0.3
    gt = torch.rand(N, Cin, generator=g) * 0.98 + 0.01 if gate else None  # in (0, 1)
    r = q8(g, N, Cout, H, W).contiguous(memory_format=CL) if res else None
    to = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    return dict(x=to(x), w=to(w), scale=to(scale), bias=to(bias), in_zp=in_zp,
                out_inv_scale=40.0, out_zp=OUT_ZP, gate=to(gt), residual=to(r),
                res_scale=1 / 90.0, res_zp=RES_ZP)


def _cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


def ref_pw(a, act, pool_only):
    a = {k: _cpu(v) for k, v in a.items()}
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
        check_pool(out, ref_pw(a, act, True))
    else:
        check_q(out, ref_pw(a, act, False), act)
    return out


# (N, Cin, Cout, H, W, act, gate, residual, pool_only)
PW_CASES = [
    (1, 16, 96, 7, 7, "silu", False, False, False),
    (3, 144, 24, 7, 7, "identity", True, True, False),
    (3, 144, 24, 1, 1, "relu6", True, True, False),  # a 16-row tile spans three samples' gates
    (1, 61, 37, 13, 11, "relu", True, False, False),
    (3, 61, 37, 1, 1, "silu", True, False, False),
    (2, 320, 640, 2, 3, "silu", False, False, True),  # conv_head + pool, shrunk
]


@pytest.mark.parametrize("case", PW_CASES, ids=lambda c: "N{}_{}to{}_{}x{}_{}{}{}{}".format(
    *c[:6], "_gate" * c[6], "_res" * c[7], "_pool" * c[8]))
def test_pointwise_int8_shapes(poison, case):
    run_pw(*case)


@pytest.mark.parametrize("act", ACTS)
def test_pointwise_int8_37_to_61_every_act(poison, act):
    """K and N tails (37, 61), 13×11 over three samples, gate and residual."""
    run_pw(3, 37, 61, 13, 11, act, gate=True, res=True)


@pytest.mark.parametrize("in_zp", [0, 1, -128, 127])
def test_pointwise_int8_zero_points(poison, in_zp):
    """in_zp = 0 skips the correction (HAS_ZP), 1 is specialised to a constant by Triton, and
    the extremes of the range."""
    run_pw(2, 37, 61, 7, 7, "identity", gate=True, res=True, in_zp=in_zp)


@pytest.mark.parametrize("N, H, W", [(3, 1, 1), (3, 13, 11), (1, 7, 7)])
def test_pointwise_int8_pool_only(poison, N, H, W):
    """pool_only with gate and residual: many samples per row tile (1×1), samples straddling
    tiles (13×11 = 143 rows); deterministic run to run."""
    out = run_pw(N, 37, 61, H, W, "silu", gate=True, res=True, pool_only=True)
    again = launch_pw(make_pw(N, 37, 61, H, W, True, True), "silu", True)
    assert torch.equal(out, again)


def test_pointwise_int8_saturated_operands(poison):
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
    check_pool(launch_pw(a, "identity", True), ref_pw(a, "identity", True))


def test_pointwise_int8_strided_views(poison):
    """w a transposed (Cin, Cout) view and a column slice of a wider matrix, the gate a
    transposed view; an explicit w_sum gives the same result."""
    N, Cin, Cout, H, W = 2, 45, 33, 3, 4  # Cin > BLOCK_K: strided K steps of w and gate
    a = make_pw(N, Cin, Cout, H, W, True, True)
    ref = ref_pw(a, "relu", False)
    g = torch.Generator().manual_seed(1)
    wt = a["w"].cpu().t().contiguous().to(DEV).t()  # (Cout, Cin), strides (1, Cout)
    wide = torch.cat([a["w"].cpu(), q8(g, Cout, 7)], 1).to(DEV)[:, :Cin]  # strides (Cin + 7, 1)
    gt = a["gate"].cpu().t().contiguous().to(DEV).t()
    assert not wt.is_contiguous() and not wide.is_contiguous() and not gt.is_contiguous()
    for w in (wt, wide):
        check_q(launch_pw({**a, "w": w, "gate": gt}, "relu", False), ref, "relu")
    w_sum = a["w"].sum(1, dtype=torch.int32)
    check_q(launch_pw(a, "relu", False, w_sum=w_sum), ref, "relu")
    # a strided w_sum (every other element of a longer vector) through the op and the launcher
    w_sum2 = torch.stack([w_sum, torch.full_like(w_sum, 10**6)], 1).reshape(-1)[::2]
    assert not w_sum2.is_contiguous() and torch.equal(w_sum2, w_sum)
    check_q(launch_pw(a, "relu", False, w_sum=w_sum2), ref, "relu")
    y = ops.pointwise_int8(a["x"], a["w"], a["scale"], a["bias"], a["in_zp"],
                           a["out_inv_scale"], a["out_zp"], "relu", a["gate"], a["residual"],
                           a["res_scale"], a["res_zp"], w_sum=w_sum2, backend="triton")
    check_q(y, ref, "relu")


def test_pointwise_int8_empty():
    a = make_pw(0, 8, 12, 3, 3, True, True)
    assert launch_pw(a, "silu", False).shape == (0, 12, 3, 3)
    assert launch_pw(a, "silu", True).shape == (0, 12)


PW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
              for c in tq._pw_gpu_configs()]


@pytest.mark.parametrize("cfg", PW_CONFIGS, ids=lambda v: "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}"
                         "w{num_warps}s{num_stages}".format(**v))
@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_pointwise_int8_every_gpu_config(poison, cfg, pool_only):
    """Gate + residual + zero points, HW = 35 rows per sample over three samples."""
    a = make_pw(3, 37, 61, 5, 7, True, True)
    try:
        out = launch_pw(a, "relu6", pool_only, config=cfg)
    except OutOfResources as e:  # a GPU with less shared memory than an H100
        pytest.skip(f"config does not fit this GPU: {e}")
    if pool_only:
        check_pool(out, ref_pw(a, "relu6", True))
    else:
        check_q(out, ref_pw(a, "relu6", False), "relu6")


def test_pointwise_int8_config_pruning():
    configs = tq._pw_gpu_configs()
    late = tq._pw_prune_configs(configs, {"M": 49, "Cout": 320, "Cin": 1152})  # B0 batch 1
    assert late and all(c.kwargs["BLOCK_M"] <= 64 for c in late)
    narrow = tq._pw_prune_configs(configs, {"M": 12544, "Cout": 16, "Cin": 32})
    assert narrow and all(c.kwargs["BLOCK_N"] == 16 for c in narrow)
    assert tq._pw_prune_configs(configs, {"M": 12544, "Cout": 1280, "Cin": 320}) == configs
    assert all(c.kwargs["BLOCK_K"] >= 32 for c in configs)  # the int8 MMA K


# ----------------------------------------------------------------------------- dwconv_int8
def make_dw(N, C, H, W, k, in_zp=IN_ZP, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = q8(g, N, C, H, W).contiguous(memory_format=CL)
    w = q8(g, C, 1, k, k, lo=-127)
    scale = (0.5 + torch.rand(C, generator=g)) / (k * 74.0 * 73.0)
    bias = torch.randn(C, generator=g) * 0.5 - 0.3
    return [t.to(DEV) for t in (x, w, scale, bias)] + [in_zp]


def run_dw(N, C, H, W, k, stride, pads, act, return_pool, in_zp=IN_ZP, **kw):
    x, w, scale, bias, zp = make_dw(N, C, H, W, k, in_zp)
    args = (x, w, scale, bias, stride, pads, zp, 40.0, OUT_ZP, act, return_pool)
    y, pool = tq._dw_launch(*args, **kw) if kw else tq.dwconv_int8(*args)
    ref = reference.dwconv_int8(*(_cpu(t) for t in args))
    if return_pool:
        ref, ref_pool = ref
        check_pool(pool, ref_pool)
    else:
        assert pool is None
    check_q(y, ref, act)
    return y, pool


# (N, C, H, W, k, stride, pads (left, right, top, bottom), act, return_pool)
DW_CASES = [
    (1, 16, 13, 11, 3, 1, (1, 1, 1, 1), "silu", True),
    (3, 37, 13, 11, 3, 2, (0, 1, 0, 1), "relu6", False),  # TF "same", stride 2 on odd sizes
    (1, 61, 13, 11, 5, 2, (1, 2, 2, 1), "identity", True),  # asymmetric both ways
    (3, 37, 7, 7, 5, 1, (2, 2, 2, 2), "relu", True),
    (1, 61, 9, 7, 7, 1, (3, 3, 3, 3), "silu", False),
    (3, 16, 7, 7, 7, 2, (2, 3, 3, 2), "identity", True),
    (1, 37, 5, 6, 9, 1, (4, 4, 4, 4), "relu6", True),  # k > 7: the runtime kh loop
    (3, 16, 1, 1, 3, 1, (1, 1, 1, 1), "identity", True),  # 1×1 map: only the centre tap
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: "N{}_C{}_{}x{}_k{}s{}_p{}{}{}{}_{}{}"
                         .format(*c[:6], *c[6], c[7], "_pool" * c[8]))
def test_dwconv_int8(poison, case):
    run_dw(*case)


@pytest.mark.parametrize("in_zp", [0, 1, 127])
def test_dwconv_int8_zero_points(poison, in_zp):
    """Padding contributes exactly 0 whatever the zero point (taps load in_zp)."""
    run_dw(2, 37, 7, 9, 5, 2, (1, 2, 2, 1), "identity", True, in_zp=in_zp)


def test_dwconv_int8_i64_path(poison):
    run_dw(2, 37, 7, 9, 3, 2, (0, 1, 0, 1), "relu6", True, force_i64=True)


def test_dwconv_int8_pool_deterministic(poison):
    _, p1 = run_dw(2, 37, 5, 7, 3, 1, (1, 1, 1, 1), "silu", True)
    _, p2 = run_dw(2, 37, 5, 7, 3, 1, (1, 1, 1, 1), "silu", True)
    assert torch.equal(p1, p2)


def test_dwconv_int8_empty():
    x, w, scale, bias, zp = make_dw(0, 16, 5, 5, 3)
    y, pool = tq.dwconv_int8(x, w, scale, bias, 1, (1, 1, 1, 1), zp, 40.0, 0, "silu", True)
    assert y.shape == (0, 16, 5, 5) and pool.shape == (0, 16)


DW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps} for c in tq._dw_gpu_configs()]


@pytest.mark.parametrize("cfg", DW_CONFIGS, ids=lambda v: "h{BLOCK_H}w{BLOCK_W}c{BLOCK_C}"
                         "nw{num_warps}".format(**v))
def test_dwconv_int8_every_gpu_config(poison, cfg):
    run_dw(2, 37, 9, 11, 5, 2, (1, 2, 2, 1), "relu6", True, config=cfg)


# ----------------------------------------------------------------------------- quantize
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1000,)], ids=["4d", "1d"])
def test_quantize_per_tensor(poison, dtype, shape):
    """Exact match, ties rounded half up, saturation; 4-D outputs channels_last."""
    g = torch.Generator().manual_seed(0)
    x = (2 * (torch.randn(shape, generator=g) * 60).round() + 1).to(dtype)  # odd: x·0.5 ties
    if len(shape) == 4:
        x = x.contiguous(memory_format=CL)
    out = tq.quantize_per_tensor(x.to(DEV), 0.5, -3).cpu()
    ref = reference.quantize_per_tensor(x, 0.5, -3)
    assert out.dtype == torch.int8 and torch.equal(out, ref)
    assert (ref == 127).any() and (ref == -128).any()  # saturates both ways
    if len(shape) == 4:
        assert out.is_contiguous(memory_format=CL)
