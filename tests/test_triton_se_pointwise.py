"""Triton se_gate and pointwise_conv against reference.py in float64: the issue's shapes (kept
small), every activation, gate tiles spanning samples, pool_only with samples spanning tiles,
fp32/fp16/bf16, every GPU autotune config, odd arguments. On the CPU these run through the
interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the same tests run on CUDA tensors."""

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_GPU, assert_close_to_ref, rel_err
from test_pointwise_se import make_se as _make_se
from effnet_kernels import ops, reference

pytest.importorskip("triton")
tse = pytest.importorskip("effnet_kernels.triton.se")
tpw = pytest.importorskip("effnet_kernels.triton.pointwise")
from triton.runtime.errors import OutOfResources  # noqa: E402

DEV = "cuda" if HAS_GPU else "cpu"
CL = torch.channels_last
ACTS = ["silu", "relu6", "relu", "identity"]


def _d(t):
    return None if t is None else t.cpu().double()


# ----------------------------------------------------------------------------- se_gate
def make_se(N, C, S, dtype=torch.float32, seed=0):
    return _make_se(N, C, S, dtype, DEV, seed)


def check_se(gate, pooled, w1, b1, w2, b2):
    # float32 math whatever the weight dtype: compare with the float64 reference of the same
    # (already rounded) weights at the fp32 tolerance
    ref = reference.se_gate(*(_d(t) for t in (pooled, w1, b1, w2, b2)))
    assert gate.shape == ref.shape and gate.dtype == torch.float32 and gate.device == pooled.device
    assert not torch.isnan(gate).any()
    assert rel_err(gate.cpu(), ref) <= 1e-5, rel_err(gate.cpu(), ref)
    assert (gate.cpu().double() - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("N, C, S", [(3, 37, 5), (2, 1152, 48), (1, 96, 4), (5, 16, 1)])
def test_se_gate_odd_shapes(poison, N, C, S):
    args = make_se(N, C, S)
    check_se(ops.se_gate(*args, backend="triton"), *args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_se_gate_half_weights_4d_noncontiguous(poison, dtype):
    """fp16/bf16 weights given as (S, C, 1, 1) / (C, S, 1, 1) conv weights, pooled a strided
    view: float32 math, so the fp32 tolerance still holds."""
    N, C, S = 3, 61, 7
    pooled, w1, b1, w2, b2 = make_se(N, C, S, dtype)
    pooled_t = torch.randn(C, 2 * N, device=DEV).t()[::2]  # (N, C), strides (1, 2N)
    assert not pooled_t.is_contiguous()
    gate = ops.se_gate(pooled_t, w1[:, :, None, None], b1, w2[:, :, None, None], b2,
                       backend="triton")
    check_se(gate, pooled_t, w1, b1, w2, b2)


SE_CASES = [(3, 37, 5), (2, 70, 20)]
SE_CONFIGS = [({**c.kwargs, "num_warps": c.num_warps}, SE_CASES[i % 2])
              for i, c in enumerate(tse._gpu_configs())]


@pytest.mark.parametrize("cfg, case", SE_CONFIGS, ids=lambda v: (
    "b{BLOCK_B}c{BLOCK_C}nw{num_warps}".format(**v) if isinstance(v, dict) else
    "N{}C{}S{}".format(*v)))
def test_se_every_gpu_config(poison, cfg, case):
    args = make_se(*case, torch.float16)
    check_se(tse._launch(*args, config=cfg), *args)


def test_se_config_pruning():
    configs = tse._gpu_configs()
    one = tse._prune_configs(configs, {"N": 1, "C": 1152, "S": 48})
    assert one and all(c.kwargs["BLOCK_B"] == 1 for c in one)
    wide = tse._prune_configs(configs, {"N": 256, "C": 3840, "S": 160})  # BLOCK_S = 256
    assert wide and all(c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"] * 256 <= tse._REG_BUDGET
                        for c in wide)
    bc = lambda c: c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"]  # noqa: E731
    huge = tse._prune_configs(configs, {"N": 8, "C": 64, "S": 4000})  # nothing fits: smallest
    assert 0 < len(huge) < len(configs) and all(bc(c) == min(map(bc, configs)) for c in huge)


def test_se_gate_empty():
    args = make_se(0, 16, 4)
    assert ops.se_gate(*args, backend="triton").shape == (0, 16)


# ----------------------------------------------------------------------------- pointwise_conv
def make_pw(N, Cin, Cout, H, W, gate=False, res=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, Cin, H, W, generator=g).to(dtype).contiguous(memory_format=CL)
    w = (torch.randn(Cout, Cin, generator=g) / Cin ** 0.5).to(dtype)
    b = torch.randn(Cout, generator=g).to(dtype)
    gt = torch.rand(N, Cin, generator=g) if gate else None
    r = torch.randn(N, Cout, H, W, generator=g).to(dtype).contiguous(memory_format=CL) if res \
        else None
    return [None if t is None else t.to(DEV) for t in (x, w, b, gt, r)]


def eager_lowp(x, w, b, act, gate, res, pool_only):
    """PyTorch's own eager ops in x's dtype: the fp16/bf16 yardstick of docs/ARCHITECTURE.md, "Numerics"."""
    xs = x * gate[:, :, None, None].to(x.dtype) if gate is not None else x
    v = F.conv2d(xs, w.reshape(w.shape[0], -1, 1, 1), b)
    v = {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)
    if res is not None:
        v = v + res
    return v.float().mean((2, 3)) if pool_only else v


def check_pw(out, x, w, b, act, gate, res, pool_only):
    ref = reference.pointwise_conv(_d(x), _d(w), _d(b), act, _d(gate), _d(res), pool_only)
    assert out.shape == ref.shape and out.device == x.device
    if pool_only:
        assert out.dtype == torch.float32
    else:
        assert out.is_contiguous(memory_format=CL)
    if x.dtype == torch.float32:
        assert_close_to_ref(out.cpu(), ref, None, torch.float32)
        return
    low = eager_lowp(x, w, b, act, gate, res, pool_only).cpu()
    if not pool_only:
        assert_close_to_ref(out.cpu(), ref, low, x.dtype)
        return
    # the pool is float32 (from the fp32 epilogue), the yardstick is eager's at x's dtype
    out = out.cpu()
    assert not torch.isnan(out).any()
    floor = torch.finfo(x.dtype).eps / 2
    assert rel_err(out, ref) <= 2 * max(rel_err(low, ref), floor), (rel_err(out, ref),
                                                                    rel_err(low, ref))
    max_ours = (out.double() - ref).abs().max().item()
    max_torch = (low.double() - ref).abs().max().item()
    assert max_ours <= 2 * max(max_torch, floor * ref.abs().max().item())


def run_pw(N, Cin, Cout, H, W, act, gate=False, res=False, pool_only=False,
           dtype=torch.float32):
    x, w, b, g, r = make_pw(N, Cin, Cout, H, W, gate, res, dtype)
    out = ops.pointwise_conv(x, w, b, act, g, r, pool_only, backend="triton")
    check_pw(out, x, w, b, act, g, r, pool_only)
    return out


# The issue's channel pairs at interpreter-sized spatial extents. (N, Cin, Cout, H, W, act,
# gate, residual, pool_only). 1x5 with N=3: every 16-row tile spans three samples' gates.
PW_CASES = [
    (2, 16, 96, 7, 5, "silu", False, False, False),
    (3, 144, 24, 1, 5, "relu6", True, True, False),
    (1, 1152, 320, 3, 3, "silu", True, False, False),
    (2, 320, 1280, 2, 3, "silu", False, False, True),
    (3, 24, 144, 1, 1, "identity", True, True, False),
]


@pytest.mark.parametrize("case", PW_CASES, ids=lambda c: "N{}_{}to{}_{}x{}_{}{}{}{}".format(
    *c[:6], "_gate" * c[6], "_res" * c[7], "_pool" * c[8]))
def test_pointwise_issue_shapes(poison, case):
    run_pw(*case)


@pytest.mark.parametrize("act", ACTS)
def test_pointwise_37_to_61_every_act(poison, act):
    """Cin and Cout not multiples of 16 (K and N tails), 13×11 spatial over two samples."""
    run_pw(2, 37, 61, 13, 11, act)


@pytest.mark.parametrize("N, H, W", [(3, 1, 1), (2, 13, 11), (3, 1, 5)])
def test_pointwise_pool_only_segments(poison, N, H, W):
    """pool_only with gate and residual: many samples per tile (1×1, 1×5) and samples straddling
    tiles (13×11 = 143 rows); deterministic run to run."""
    out = run_pw(N, 37, 61, H, W, "silu", gate=True, res=True, pool_only=True)
    x, w, b, g, r = make_pw(N, 37, 61, H, W, True, True)
    again = ops.pointwise_conv(x, w, b, "silu", g, r, True, backend="triton")
    assert torch.equal(out, again)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [
    (3, 144, 24, 1, 5, "silu", True, True, False),
    (2, 37, 61, 3, 5, "relu6", True, False, True),
], ids=["144to24_gate_res", "37to61_gate_pool"])
def test_pointwise_reduced_precision(poison, dtype, case):
    run_pw(*case, dtype=dtype)


PW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
              for c in tpw._gpu_configs()]


@pytest.mark.parametrize("cfg", PW_CONFIGS, ids=lambda v: "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}"
                         "w{num_warps}s{num_stages}".format(**v))
@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_pointwise_every_gpu_config(poison, cfg, pool_only):
    """fp16 (the tensor-core path; the biggest fp32 tiles exceed shared memory and are left to
    the autotuner to skip), gate + residual, HW = 35 rows per sample over three samples."""
    x, w, b, g, r = make_pw(3, 37, 61, 5, 7, True, True, torch.float16)
    try:
        out = tpw._launch(x, w, b, "silu", g, r, pool_only, config=cfg)
    except OutOfResources as e:  # e.g. the 180-196 KB configs on an A100 (the autotuner skips them)
        pytest.skip(f"config does not fit this GPU: {e}")
    check_pw(out, x, w, b, "silu", g, r, pool_only)


def test_pointwise_odd_arguments(poison):
    """A (Cout, Cin, 1, 1) weight and a transposed (Cout, Cin) weight view, a transposed gate
    view, an x and a residual with a storage offset of one element."""
    N, Cin, Cout, H, W = 2, 45, 33, 3, 4  # Cin > BLOCK_K: strided K steps of w and gate
    x, w, b, g, r = make_pw(N, Cin, Cout, H, W, True, True)
    out = ops.pointwise_conv(x, w[:, :, None, None], b, "relu", g, r, backend="triton")
    check_pw(out, x, w, b, "relu", g, r, False)

    wt = torch.randn(Cin, Cout, device=DEV).t()
    gt = torch.rand(Cin, N, device=DEV).t()
    assert not wt.is_contiguous() and not gt.is_contiguous()
    xo = torch.randn(1 + N * H * W * Cin, device=DEV)[1:].view(N, H, W, Cin).permute(0, 3, 1, 2)
    ro = torch.randn(1 + N * H * W * Cout, device=DEV)[1:].view(N, H, W, Cout).permute(0, 3, 1, 2)
    assert xo.is_contiguous(memory_format=CL) and xo.storage_offset() == 1
    for pool_only in (False, True):
        out = ops.pointwise_conv(xo, wt, b, "silu", gt, ro, pool_only, backend="triton")
        check_pw(out, xo, wt, b, "silu", gt, ro, pool_only)


@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_pointwise_single_channel(poison, pool_only):
    """Cin = Cout = 1 (Triton specialises ints equal to 1 into constants)."""
    run_pw(2, 1, 1, 3, 3, "silu", gate=True, res=True, pool_only=pool_only)


def test_pointwise_empty():
    x, w, b, g, r = make_pw(0, 8, 12, 3, 3, True, True)
    assert ops.pointwise_conv(x, w, b, "silu", g, r, backend="triton").shape == (0, 12, 3, 3)
    assert ops.pointwise_conv(x, w, b, "silu", g, r, True, backend="triton").shape == (0, 12)


def test_pool_slots_cover_every_sample():
    """Each sample's rows touch at most _slots(HW, BLOCK_M) row tiles (the workspace depth)."""
    for block_m in (16, 32, 64, 128, 256):
        for hw in range(1, 300):
            need = max((((n + 1) * hw - 1) // block_m) - (n * hw) // block_m + 1
                       for n in range(block_m + 1))
            assert need <= tpw._slots(hw, block_m), (hw, block_m)
            assert tpw._slots(hw, block_m) <= need + 1


def test_pointwise_config_pruning():
    configs = tpw._gpu_configs()
    late = tpw._prune_configs(configs, {"M": 49, "Cout": 320, "Cin": 1152})  # B0 batch 1
    assert late and all(c.kwargs["BLOCK_M"] <= 64 for c in late)
    narrow = tpw._prune_configs(configs, {"M": 12544, "Cout": 16, "Cin": 32})
    assert narrow and all(c.kwargs["BLOCK_N"] == 16 and c.kwargs["BLOCK_K"] <= 32
                          for c in narrow)
    assert tpw._prune_configs(configs, {"M": 12544, "Cout": 1280, "Cin": 320}) == configs
    tile = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]  # noqa: E731
    tiny = tpw._prune_configs(configs, {"M": 1, "Cout": 1, "Cin": 1})  # least padded survive
    assert 0 < len(tiny) < len(configs) and all(tile(c) == min(map(tile, configs)) for c in tiny)
