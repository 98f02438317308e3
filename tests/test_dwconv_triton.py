"""Triton dwconv_bias_act beyond tests/test_dwconv.py: every GPU autotune config, the generic
(runtime kh loop) path up to k = 31, the int64 offset path, fp16/bf16, and odd arguments. On the
CPU these run through the interpreter (conftest sets TRITON_INTERPRET=1), on small shapes."""

import pytest
import torch

from conftest import HAS_GPU, assert_close_to_ref, rel_err
from effnet_kernels import ops, reference

pytest.importorskip("triton")
td = pytest.importorskip("effnet_kernels.triton.dwconv")

DEV = "cuda" if HAS_GPU else "cpu"


def make(N, C, H, W, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    return x.to(DEV), w.to(DEV), b.to(DEV)


def check_fp32(y, pool, x, w, b, s, pads, act="silu"):
    ref_y, ref_pool = reference.dwconv_bias_act(x.cpu().double(), w.cpu().double(),
                                                b.cpu().double(), s, pads, act, True)
    assert y.shape == ref_y.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert not torch.isnan(y).any()
    assert rel_err(y.cpu(), ref_y) <= 1e-5
    if pool is not None:
        assert pool.shape == ref_pool.shape and pool.dtype == torch.float32
        assert rel_err(pool.cpu(), ref_pool) <= 1e-5


# C tails against every BLOCK_C, several row/column tiles, stride 2 with asymmetric padding;
# the two cases alternate over the configs to keep the interpreter run short.
CONFIG_CASES = [((2, 37, 9, 11), 3, 1, (1, 1, 1, 1)), ((1, 19, 10, 13), 5, 2, (1, 2, 2, 1))]
GPU_CONFIGS = [({**c.kwargs, "num_warps": c.num_warps}, CONFIG_CASES[i % 2])
               for i, c in enumerate(td._gpu_configs())]


@pytest.mark.parametrize("cfg, case", GPU_CONFIGS, ids=lambda v: (
    "h{BLOCK_H}w{BLOCK_W}c{BLOCK_C}nw{num_warps}".format(**v) if isinstance(v, dict) else
    f"k{v[1]}s{v[2]}"))
def test_every_gpu_config(poison, cfg, case):
    shape, k, s, pads = case
    x, w, b = make(*shape, k)
    y, pool = td._launch(x, w, b, s, pads, "silu", True, config=cfg)
    check_fp32(y, pool, x, w, b, s, pads)


@pytest.mark.parametrize("k, pads", [(9, (4, 4, 3, 5)), (31, (15, 15, 15, 15))])
def test_generic_large_k(poison, k, pads):
    x, w, b = make(1, 5, 2, 4, k)  # k = 31: a single 2x4 output tile, 961 taps
    y, pool = ops.dwconv_bias_act(x, w, b, 1, pads, "relu6", True, backend="triton")
    check_fp32(y, pool, x, w, b, 1, pads, "relu6")


@pytest.mark.parametrize("return_pool", [False, True])
def test_int64_offsets_path(poison, return_pool):
    x, w, b = make(2, 21, 7, 6, 5)
    y, pool = td._launch(x, w, b, 2, (2, 2, 2, 2), "silu", return_pool, force_i64=True)
    assert (pool is None) != return_pool
    check_fp32(y, pool, x, w, b, 2, (2, 2, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k, s, pad", [(3, 1, None), (5, 2, (1, 2, 1, 2))])
def test_reduced_precision(poison, dtype, k, s, pad):
    x, w, b = make(2, 24, 7, 9, k, dtype)
    y, pool = ops.dwconv_bias_act(x, w, b, s, pad, "silu", True, backend="triton")
    xc, wc, bc = x.cpu(), w.cpu(), b.cpu()
    ref_y, ref_pool = reference.dwconv_bias_act(xc.double(), wc.double(), bc.double(), s, pad,
                                                "silu", True)
    pads = reference.normalize_padding(pad, k)
    low = torch.nn.functional.silu(torch.nn.functional.conv2d(
        torch.nn.functional.pad(xc, pads), wc, bc, stride=s, groups=x.shape[1]))
    assert_close_to_ref(y.cpu(), ref_y, low, dtype)
    # the pool is of the float32 activations, before y's rounding: fp32 accuracy
    assert rel_err(pool.cpu(), ref_pool) <= 1e-5


def test_odd_arguments(poison):
    """A non-contiguous weight view, an input with a storage offset of one element, and C = 1."""
    C, k = 13, 3
    x, w, b = make(1, C, 6, 5, k)
    w_view = torch.randn(C, 1, k, k + 2, device=DEV)[..., 1:-1]
    assert not w_view.is_contiguous()
    y, pool = ops.dwconv_bias_act(x, w_view, b, 1, None, "silu", True, backend="triton")
    check_fp32(y, pool, x, w_view, b, 1, (1, 1, 1, 1))

    base = torch.randn(1 + 2 * 5 * 7 * C, device=DEV)
    xo = base[1:].view(2, 5, 7, C).permute(0, 3, 1, 2)
    assert xo.is_contiguous(memory_format=torch.channels_last)
    y, pool = ops.dwconv_bias_act(xo, w, b, 2, (0, 1, 0, 1), "identity", True, backend="triton")
    check_fp32(y, pool, xo, w, b, 2, (0, 1, 0, 1), "identity")

    x1, w1, b1 = make(3, 1, 4, 1, 3)
    y, pool = ops.dwconv_bias_act(x1, w1, b1, 1, None, "relu", True, backend="triton")
    check_fp32(y, pool, x1, w1, b1, 1, (1, 1, 1, 1), "relu")


def test_empty_batch():
    x, w, b = make(0, 8, 5, 5, 3)
    y, pool = ops.dwconv_bias_act(x, w, b, 1, None, "silu", True, backend="triton")
    assert y.shape == (0, 8, 5, 5) and pool.shape == (0, 8)


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
