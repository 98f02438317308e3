"""effnet::dwconv_bias_act on every backend (cpu, torch, triton through the interpreter without
a GPU, cuda on a GPU) against reference.py in float64 (docs/ARCHITECTURE.md, "Numerics"); for
Triton also every GPU autotune config, the generic (runtime kh loop) path up to k = 31, the int64
offset path, fp16/bf16 and odd arguments (small shapes: the interpreter is slow)."""

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import (ACTS, DEV, assert_close_to_ref, check_dw, check_dw_out,
                     eager_lowp_dw, make_dw, needs_ext, needs_triton, rel_err)

try:
    from effnet_kernels.triton import dwconv as td
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    td = None

# (N, C, H, W, k, stride, padding): odd C, tiny and odd spatial sizes, stride 2 on odd sizes,
# TF "same" (extra pixel right/bottom) and other asymmetric paddings, a generic k = 7.
CASES = [
    (1, 37, 13, 11, 3, 1, None),
    (3, 61, 7, 7, 5, 2, None),
    (1, 1152, 7, 7, 5, 1, None),
    (3, 37, 1, 1, 3, 1, None),
    (1, 64, 13, 11, 3, 2, (0, 1, 0, 1)),
    (3, 40, 14, 15, 5, 2, (1, 2, 1, 2)),
    (1, 24, 9, 8, 7, 2, (3, 3, 2, 3)),
    (1, 8, 2, 3, 5, 1, None),
    (2, 96, 6, 5, 3, 2, 1),
]
CASE_IDS = [f"N{c[0]}C{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}_p{c[6]}" for c in CASES]

@needs_ext
@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_fp32(poison, case, act, return_pool):
    check_dw("cpu", case, torch.float32, act, return_pool)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_reduced_precision(poison, case, dtype):
    check_dw("cpu", case, dtype, "silu", True)


@pytest.mark.parametrize("case", CASES[:3], ids=CASE_IDS[:3])
def test_torch_backend(poison, case):
    check_dw("torch", case, torch.float32, "silu", True)


TRITON_CASES = [(1, 37, 5, 7, 3, 1, None), (3, 20, 7, 6, 5, 2, (1, 2, 1, 2)),
                (1, 16, 1, 1, 3, 1, None), (1, 8, 6, 5, 7, 2, (3, 3, 2, 3))]


@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("case", TRITON_CASES, ids=[str(c) for c in TRITON_CASES])
@needs_triton
def test_triton_backend(poison, case, return_pool):
    check_dw("triton", case, torch.float32, "silu", return_pool, DEV)


@pytest.mark.parametrize("act", ["relu6", "relu", "identity"])
@needs_triton
def test_triton_acts(poison, act):
    check_dw("triton", TRITON_CASES[0], torch.float32, act, True, DEV)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu(poison, backend, case, act, return_pool, dtype):
    check_dw(backend, case, dtype, act, return_pool, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_unaligned_input(poison, backend):
    # One element of storage offset: 16-byte vector loads are illegal, the kernel must notice.
    C = 64
    base = torch.randn(1 + 2 * 9 * 7 * C, device="cuda", dtype=torch.float16)
    x = base[1:].view(2, 9, 7, C).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16
    w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.float16) / 3
    b = torch.randn(C, device="cuda", dtype=torch.float16)
    y, pool = ops.dwconv_bias_act(x, w, b, 1, None, "silu", True, backend=backend)
    ref_y, ref_pool = reference.dwconv_bias_act(x.cpu().double(), w.cpu().double(),
                                                b.cpu().double(), 1, None, "silu", True)
    low_y, _ = eager_lowp_dw(x.cpu(), w.cpu(), b.cpu(), 1, None, "silu")
    assert_close_to_ref(y.cpu(), ref_y, low_y, torch.float16)
    assert rel_err(pool.cpu(), ref_pool) <= 1e-5


@pytest.mark.cuda
def test_cuda_past_2_31_elements():
    """x with N*C*H*W > 2**31 (4.3 GB in fp16): 64-bit indexing. Checks the last sample only."""
    N, C, H, W = 33, 1024, 256, 256  # 2.2e9 elements
    x = torch.randn(N, H, W, C, device="cuda", dtype=torch.float16).permute(0, 3, 1, 2)
    w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.float16) / 3
    b = torch.randn(C, device="cuda", dtype=torch.float16)
    y, pool = ops.dwconv_bias_act(x, w, b, 1, None, "silu", True, backend="cuda")
    ref_y, ref_pool = reference.dwconv_bias_act(x[-1:].cpu().double(), w.cpu().double(),
                                                b.cpu().double(), 1, None, "silu", True)
    assert rel_err(y[-1:].cpu(), ref_y) < 2e-3
    assert rel_err(pool[-1:].cpu(), ref_pool) <= 1e-5


@needs_ext
def test_opcheck():
    x, w, b, s, pad = make_dw(CASES[4], torch.float32)
    pads = list(reference.normalize_padding(pad, 3))
    for rp in (False, True):
        torch.library.opcheck(torch.ops.effnet.dwconv_bias_act.default,
                              (x, w, b, s, pads, "silu", rp))


@needs_ext
def test_compile_fullgraph():
    x, w, b, s, pad = make_dw(CASES[0], torch.float32)
    f = torch.compile(lambda x: ops.dwconv_bias_act(x, w, b, s, pad, "silu", True,
                                                    backend="cpu")[1] * 2,
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), reference.dwconv_bias_act(x, w, b, s, pad, "silu", True)[1]
                               * 2)


@needs_ext
def test_pool_is_deterministic():
    x, w, b, s, pad = make_dw((2, 64, 31, 29, 5, 1, None), torch.float32)
    p1 = ops.dwconv_bias_act(x, w, b, s, pad, "silu", True, backend="cpu")[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p2 = ops.dwconv_bias_act(x, w, b, s, pad, "silu", True, backend="cpu")[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_ext)])
def test_bad_input(backend):
    x, w, b, s, pad = make_dw(CASES[0], torch.float32)
    f = lambda *a, **k: ops.dwconv_bias_act(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="bias must have shape"):
        f(x, w, b[:5])
    with pytest.raises(ValueError, match="weight must have shape"):
        f(x, w[:5], b)  # channel mismatch
    with pytest.raises(ValueError, match="weight must have shape"):
        f(x, w.view(37, 1, 9), b)
    with pytest.raises(ValueError, match="weight must have shape"):
        f(x, torch.randn(37, 1, 3, 5), b)
    with pytest.raises(ValueError, match="odd"):
        f(x, torch.randn(37, 1, 4, 4), b)
    with pytest.raises(TypeError, match="float32"):
        f(x.to(torch.int32), w.to(torch.int32), b.to(torch.int32))
    with pytest.raises(TypeError, match="dtype"):
        f(x, w.half(), b)
    with pytest.raises(ValueError, match="stride"):
        f(x, w, b, 3)
    with pytest.raises(ValueError, match="activation"):
        f(x, w, b, act="gelu")
    with pytest.raises(ValueError, match="channels_last"):
        f(x.contiguous(), w, b)
    with pytest.raises(ValueError, match="padding"):
        f(x, w, b, 1, (1, 1, 1))
    with pytest.raises(ValueError, match="padding"):
        f(x, w, b, 1, (-1, 1, 1, 1))
    with pytest.raises(ValueError, match="smaller than"):
        f(torch.randn(1, 37, 1, 1).contiguous(memory_format=torch.channels_last),
          torch.randn(37, 1, 5, 5), b, 1, 0)


@needs_ext
def test_cpp_checks_reject_bad_input_directly():
    x, w, b, s, _ = make_dw(CASES[0], torch.float32)
    op = torch.ops.effnet.dwconv_bias_act
    with pytest.raises(ValueError, match="stride"):
        op(x, w, b, 3, [1, 1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="padding"):
        op(x, w, b, 1, [1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="padding"):
        op(x, w, b, 1, [3, 1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="weight"):
        op(x, w[:5], b, 1, [1, 1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="odd"):
        op(x, torch.randn(37, 1, 4, 4), b, 1, [1, 1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="channels_last"):
        op(x.contiguous(), w, b, 1, [1, 1, 1, 1], "silu", False)
    with pytest.raises(ValueError, match="unknown activation"):
        op(x, w, b, 1, [1, 1, 1, 1], "tanh", False)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x, w, b, s, pad = make_dw(CASES[0], torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.dwconv_bias_act(x, w.cpu(), b, backend="cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.dwconv_bias_act(x, w, b.cpu(), backend="cuda")


# ------------------------------------------------------------------------ Triton, in depth
def make_t(N, C, H, W, k, dtype=torch.float32):
    """(x, w, b) of make_dw on the Triton device (the GPU, else the CPU for the interpreter)."""
    return make_dw((N, C, H, W, k, 1, None), dtype, DEV)[:3]


# C tails against every BLOCK_C, several row/column tiles, stride 2 with asymmetric padding;
# the two cases alternate over the configs to keep the interpreter run short.
CONFIG_CASES = [((2, 37, 9, 11), 3, 1, (1, 1, 1, 1)), ((1, 19, 10, 13), 5, 2, (1, 2, 2, 1))]
GPU_CONFIGS = [({**c.kwargs, "num_warps": c.num_warps}, CONFIG_CASES[i % 2])
               for i, c in enumerate(td._gpu_configs() if td else [])]


@needs_triton
@pytest.mark.parametrize("cfg, case", GPU_CONFIGS, ids=lambda v: (
    "h{BLOCK_H}w{BLOCK_W}c{BLOCK_C}nw{num_warps}".format(**v) if isinstance(v, dict) else
    f"k{v[1]}s{v[2]}"))
def test_every_gpu_config(poison, cfg, case):
    shape, k, s, pads = case
    x, w, b = make_t(*shape, k)
    y, pool = td._launch(x, w, b, s, pads, "silu", True, config=cfg)
    check_dw_out(y, pool, x, w, b, s, pads)


@needs_triton
@pytest.mark.parametrize("k, pads", [(9, (4, 4, 3, 5)), (31, (15, 15, 15, 15))])
def test_generic_large_k(poison, k, pads):
    x, w, b = make_t(1, 5, 2, 4, k)  # k = 31: a single 2x4 output tile, 961 taps
    y, pool = ops.dwconv_bias_act(x, w, b, 1, pads, "relu6", True, backend="triton")
    check_dw_out(y, pool, x, w, b, 1, pads, "relu6")


@needs_triton
@pytest.mark.parametrize("return_pool", [False, True])
def test_int64_offsets_path(poison, return_pool):
    x, w, b = make_t(2, 21, 7, 6, 5)
    y, pool = td._launch(x, w, b, 2, (2, 2, 2, 2), "silu", return_pool, force_i64=True)
    assert (pool is None) != return_pool
    check_dw_out(y, pool, x, w, b, 2, (2, 2, 2, 2))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k, s, pad", [(3, 1, None), (5, 2, (1, 2, 1, 2))])
def test_reduced_precision(poison, dtype, k, s, pad):
    x, w, b = make_t(2, 24, 7, 9, k, dtype)
    y, pool = ops.dwconv_bias_act(x, w, b, s, pad, "silu", True, backend="triton")
    check_dw_out(y, pool, x, w, b, s, pad, "silu")


@needs_triton
def test_odd_arguments(poison):
    """A non-contiguous weight view, an input with a storage offset of one element, and C = 1."""
    C, k = 13, 3
    x, w, b = make_t(1, C, 6, 5, k)
    w_view = torch.randn(C, 1, k, k + 2, device=DEV)[..., 1:-1]
    assert not w_view.is_contiguous()
    y, pool = ops.dwconv_bias_act(x, w_view, b, 1, None, "silu", True, backend="triton")
    check_dw_out(y, pool, x, w_view, b, 1, (1, 1, 1, 1))

    base = torch.randn(1 + 2 * 5 * 7 * C, device=DEV)
    xo = base[1:].view(2, 5, 7, C).permute(0, 3, 1, 2)
    assert xo.is_contiguous(memory_format=torch.channels_last)
    y, pool = ops.dwconv_bias_act(xo, w, b, 2, (0, 1, 0, 1), "identity", True, backend="triton")
    check_dw_out(y, pool, xo, w, b, 2, (0, 1, 0, 1), "identity")

    x1, w1, b1 = make_t(3, 1, 4, 1, 3)
    y, pool = ops.dwconv_bias_act(x1, w1, b1, 1, None, "relu", True, backend="triton")
    check_dw_out(y, pool, x1, w1, b1, 1, (1, 1, 1, 1), "relu")


@needs_triton
def test_empty_batch():
    x, w, b = make_t(0, 8, 5, 5, 3)
    y, pool = ops.dwconv_bias_act(x, w, b, 1, None, "silu", True, backend="triton")
    assert y.shape == (0, 8, 5, 5) and pool.shape == (0, 8)


@needs_triton
def test_config_pruning_keeps_a_fitting_config():
    configs = td._gpu_configs()
    small = td._prune_configs(configs, {"C": 8, "Ho": 1, "Wo": 1})  # nothing fits: least padded
    assert 0 < len(small) < len(configs)
    tile = lambda c: c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] * c.kwargs["BLOCK_C"]  # noqa: E731
    assert all(tile(c) == min(map(tile, configs)) for c in small)
    big = td._prune_configs(configs, {"C": 1152, "Ho": 112, "Wo": 112})
    assert big == configs
    late = td._prune_configs(configs, {"C": 1152, "Ho": 7, "Wo": 7})
    assert late and all(c.kwargs["BLOCK_W"] <= 8 and c.kwargs["BLOCK_H"] <= 8 for c in late)
