"""effnet::pointwise_conv on every backend (cpu, torch, triton through the interpreter without
a GPU, cuda on a GPU) against reference.py in float64 (docs/ARCHITECTURE.md, "Numerics"),
argument checks, opcheck; for Triton also the issue's shapes (kept small), every activation,
gate tiles spanning samples, pool_only with samples spanning tiles, fp16/bf16, every GPU
autotune config, odd arguments."""

import pytest
import torch

from effnet_kernels import ops
from helpers import ACTS, CL, DEV, check_pw, check_pw_out, make_pw, needs_ext, needs_triton

try:
    from effnet_kernels.triton import pointwise as tpw
    from triton.runtime.errors import OutOfResources
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    tpw = None

BACKENDS = ["torch", pytest.param("cpu", marks=needs_ext)]

# (N, Cin, Cout, H, W, gate, residual, pool_only): the issue's shapes.
PW_CASES = [
    (2, 16, 96, 13, 11, False, False, False),
    (3, 144, 24, 7, 5, True, True, False),
    (1, 1152, 320, 7, 7, True, False, False),
    (2, 37, 61, 5, 3, False, False, False),
    (3, 320, 1280, 3, 5, False, False, True),
    (1, 24, 144, 1, 1, True, True, False),
    (3, 40, 40, 2, 2, True, True, True),
]
PW_IDS = [f"N{c[0]}_{c[1]}to{c[2]}_{c[3]}x{c[4]}{'_gate' * c[5]}{'_res' * c[6]}"
          f"{'_pool' * c[7]}" for c in PW_CASES]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", PW_CASES, ids=PW_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_fp32(poison, backend, case, act):
    check_pw(backend, case, torch.float32, act)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PW_CASES, ids=PW_IDS)
def test_pointwise_cpu_reduced_precision(poison, case, dtype):
    check_pw("cpu", case, dtype, "silu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", PW_CASES, ids=PW_IDS)
def test_pointwise_triton_gpu(poison, case, dtype):
    check_pw("triton", case, dtype, "silu", "cuda")


@needs_ext
def test_opcheck():
    x, w, b, gate, res, _ = make_pw(PW_CASES[1], torch.float32)
    for args in [(x, w, b, "silu", gate, res, False), (x, w, b, "relu6", None, None, True),
                 (x, w, b, "identity", gate, None, False)]:
        torch.library.opcheck(torch.ops.effnet.pointwise_conv.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_bad_input(backend):
    x, w, b, gate, res, _ = make_pw(PW_CASES[1], torch.float32)
    f = lambda *a, **k: ops.pointwise_conv(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="weight must have shape"):
        f(x, w[:, :10], b)
    with pytest.raises(ValueError, match="bias must have shape"):
        f(x, w, b[:3])
    with pytest.raises(ValueError, match="gate must have shape"):
        f(x, w, b, gate=gate[:, :5])
    with pytest.raises(ValueError, match="gate must have shape"):
        f(x, w, b, gate=gate[:2])
    with pytest.raises(TypeError, match="gate must be float32"):
        f(x, w, b, gate=gate.half())
    with pytest.raises(ValueError, match="residual must have shape"):
        f(x, w, b, residual=res[:, :5])
    with pytest.raises(TypeError, match="residual dtype"):
        f(x, w, b, residual=res.double())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        f(x.to(torch.int32), w.to(torch.int32), b.to(torch.int32))
    with pytest.raises(TypeError, match="weight dtype"):
        f(x, w.half(), b)
    with pytest.raises(ValueError, match="activation"):
        f(x, w, b, "gelu")
    with pytest.raises(ValueError, match="channels_last"):
        f(x.contiguous(), w, b)
    with pytest.raises(ValueError, match="non-empty spatial"):
        f(x[:, :, :0].contiguous(memory_format=torch.channels_last), w, b, pool_only=True)
    with pytest.raises(RuntimeError, match="no 'cuda' implementation|not available"):
        ops.pointwise_conv(x, w, b, backend="cuda")


@needs_ext
def test_cpp_checks_reject_bad_input_directly():
    x, w, b, gate, res, _ = make_pw(PW_CASES[1], torch.float32)
    op = torch.ops.effnet.pointwise_conv
    with pytest.raises(ValueError, match="gate must be"):
        op(x, w, b, "silu", gate[:, :5], None, False)
    with pytest.raises(ValueError, match="residual must be"):
        op(x, w, b, "silu", None, res[:, :5], False)
    with pytest.raises(TypeError, match="residual dtype"):
        op(x, w, b, "silu", None, res.half(), False)
    with pytest.raises(ValueError, match="weight must be"):
        op(x, w[:, :3], b, "silu", None, None, False)


# ------------------------------------------------------------------------ Triton, in depth
def make_t(N, Cin, Cout, H, W, gate=False, res=False, dtype=torch.float32):
    """(x, w, b, gate, residual) of make_pw on the Triton device."""
    return make_pw((N, Cin, Cout, H, W, gate, res, False), dtype, DEV)[:5]


def run_pw(N, Cin, Cout, H, W, act, gate=False, res=False, pool_only=False,
           dtype=torch.float32):
    """pointwise_conv on Triton, checked against the reference; returns the output."""
    return check_pw("triton", (N, Cin, Cout, H, W, gate, res, pool_only), dtype, act, DEV)


# The issue's channel pairs at interpreter-sized spatial extents. (N, Cin, Cout, H, W, act,
# gate, residual, pool_only). 1x5 with N=3: every 16-row tile spans three samples' gates.
TRITON_PW_CASES = [
    (2, 16, 96, 7, 5, "silu", False, False, False),
    (3, 144, 24, 1, 5, "relu6", True, True, False),
    (1, 1152, 320, 3, 3, "silu", True, False, False),
    (2, 320, 1280, 2, 3, "silu", False, False, True),
    (3, 24, 144, 1, 1, "identity", True, True, False),
]


@needs_triton
@pytest.mark.parametrize("case", TRITON_PW_CASES, ids=lambda c: "N{}_{}to{}_{}x{}_{}{}{}{}".format(
    *c[:6], "_gate" * c[6], "_res" * c[7], "_pool" * c[8]))
def test_pointwise_issue_shapes(poison, case):
    run_pw(*case)


@needs_triton
@pytest.mark.parametrize("act", ACTS)
def test_pointwise_37_to_61_every_act(poison, act):
    """Cin and Cout not multiples of 16 (K and N tails), 13×11 spatial over two samples."""
    run_pw(2, 37, 61, 13, 11, act)


@needs_triton
@pytest.mark.parametrize("N, H, W", [(3, 1, 1), (2, 13, 11), (3, 1, 5)])
def test_pointwise_pool_only_segments(poison, N, H, W):
    """pool_only with gate and residual: many samples per tile (1×1, 1×5) and samples straddling
    tiles (13×11 = 143 rows); deterministic run to run."""
    out = run_pw(N, 37, 61, H, W, "silu", gate=True, res=True, pool_only=True)
    x, w, b, g, r = make_t(N, 37, 61, H, W, True, True)
    again = ops.pointwise_conv(x, w, b, "silu", g, r, True, backend="triton")
    assert torch.equal(out, again)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [
    (3, 144, 24, 1, 5, "silu", True, True, False),
    (2, 37, 61, 3, 5, "relu6", True, False, True),
], ids=["144to24_gate_res", "37to61_gate_pool"])
def test_pointwise_reduced_precision(poison, dtype, case):
    run_pw(*case, dtype=dtype)


PW_CONFIGS = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
              for c in (tpw._gpu_configs() if tpw else [])]


@needs_triton
@pytest.mark.parametrize("cfg", PW_CONFIGS, ids=lambda v: "m{BLOCK_M}n{BLOCK_N}k{BLOCK_K}"
                         "w{num_warps}s{num_stages}".format(**v))
@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_pointwise_every_gpu_config(poison, cfg, pool_only):
    """fp16 (the tensor-core path; the biggest fp32 tiles exceed shared memory and are left to
    the autotuner to skip), gate + residual, HW = 35 rows per sample over three samples."""
    x, w, b, g, r = make_t(3, 37, 61, 5, 7, True, True, torch.float16)
    try:
        out = tpw._launch(x, w, b, "silu", g, r, pool_only, config=cfg)
    except OutOfResources as e:  # e.g. the 180-196 KB configs on an A100 (the autotuner skips them)
        pytest.skip(f"config does not fit this GPU: {e}")
    check_pw_out(out, x, w, b, "silu", g, r, pool_only)


@needs_triton
def test_pointwise_odd_arguments(poison):
    """A (Cout, Cin, 1, 1) weight and a transposed (Cout, Cin) weight view, a transposed gate
    view, an x and a residual with a storage offset of one element."""
    N, Cin, Cout, H, W = 2, 45, 33, 3, 4  # Cin > BLOCK_K: strided K steps of w and gate
    x, w, b, g, r = make_t(N, Cin, Cout, H, W, True, True)
    out = ops.pointwise_conv(x, w[:, :, None, None], b, "relu", g, r, backend="triton")
    check_pw_out(out, x, w, b, "relu", g, r, False)

    wt = torch.randn(Cin, Cout, device=DEV).t()
    gt = torch.rand(Cin, N, device=DEV).t()
    assert not wt.is_contiguous() and not gt.is_contiguous()
    xo = torch.randn(1 + N * H * W * Cin, device=DEV)[1:].view(N, H, W, Cin).permute(0, 3, 1, 2)
    ro = torch.randn(1 + N * H * W * Cout, device=DEV)[1:].view(N, H, W, Cout).permute(0, 3, 1, 2)
    assert xo.is_contiguous(memory_format=CL) and xo.storage_offset() == 1
    for pool_only in (False, True):
        out = ops.pointwise_conv(xo, wt, b, "silu", gt, ro, pool_only, backend="triton")
        check_pw_out(out, xo, wt, b, "silu", gt, ro, pool_only)


@needs_triton
@pytest.mark.parametrize("pool_only", [False, True], ids=["y", "pool"])
def test_pointwise_single_channel(poison, pool_only):
    """Cin = Cout = 1 (Triton specialises ints equal to 1 into constants)."""
    run_pw(2, 1, 1, 3, 3, "silu", gate=True, res=True, pool_only=pool_only)


@needs_triton
def test_pointwise_empty():
    x, w, b, g, r = make_t(0, 8, 12, 3, 3, True, True)
    assert ops.pointwise_conv(x, w, b, "silu", g, r, backend="triton").shape == (0, 12, 3, 3)
    assert ops.pointwise_conv(x, w, b, "silu", g, r, True, backend="triton").shape == (0, 12)


@needs_triton
def test_pool_slots_cover_every_sample():
    """Each sample's rows touch at most _slots(HW, BLOCK_M) row tiles (the workspace depth)."""
    for block_m in (16, 32, 64, 128, 256):
        for hw in range(1, 300):
            need = max((((n + 1) * hw - 1) // block_m) - (n * hw) // block_m + 1
                       for n in range(block_m + 1))
            assert need <= tpw._slots(hw, block_m), (hw, block_m)
            assert tpw._slots(hw, block_m) <= need + 1


@needs_triton
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
