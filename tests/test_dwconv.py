"""effnet::dwconv_bias_act on every backend against reference.py in float64 (docs/ARCHITECTURE.md, "Numerics")."""

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_GPU, assert_close_to_ref, rel_err
from effnet_kernels import ops, reference

ACTS = ["silu", "relu6", "relu", "identity"]
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

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason=f"effnet_kernels._C not built: {ops.extension_error()}")


def make(case, dtype, device="cpu", seed=0):
    N, C, H, W, k, s, pad = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    return x.to(device), w.to(device), b.to(device), s, pad


def eager_lowp(x, w, b, s, pad, act):
    """PyTorch's eager ops in x's dtype: the yardstick for fp16/bf16 tolerances."""
    pads = reference.normalize_padding(pad, w.shape[-1])
    v = F.conv2d(F.pad(x, pads), w, b, stride=s, groups=x.shape[1])
    v = {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)
    return v, v.float().mean((2, 3))


def check(backend, case, dtype, act, return_pool, device="cpu"):
    x, w, b, s, pad = make(case, dtype, device)
    out = ops.dwconv_bias_act(x, w, b, s, pad, act, return_pool, backend=backend)
    y, pool = out if return_pool else (out, None)
    ref_y, ref_pool = reference.dwconv_bias_act(x.cpu().double(), w.cpu().double(),
                                                b.cpu().double(), s, pad, act, True)
    assert y.shape == ref_y.shape and y.device == x.device
    assert y.is_contiguous(memory_format=torch.channels_last)
    low_y, low_pool = eager_lowp(x.cpu(), w.cpu(), b.cpu(), s, pad, act)
    assert_close_to_ref(y.cpu(), ref_y, low_y, dtype)
    if return_pool:
        assert pool.dtype == torch.float32 and pool.shape == (x.shape[0], x.shape[1])
        assert not torch.isnan(pool).any()
        # The pool is of the float32 activations before y's rounding: fp32 accuracy always.
        assert rel_err(pool.cpu(), ref_pool) <= 1e-5, rel_err(pool.cpu(), ref_pool)


@needs_ext
@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_fp32(poison, case, act, return_pool):
    check("cpu", case, torch.float32, act, return_pool)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cpu_reduced_precision(poison, case, dtype):
    check("cpu", case, dtype, "silu", True)


@pytest.mark.parametrize("case", CASES[:3], ids=CASE_IDS[:3])
def test_torch_backend(poison, case):
    check("torch", case, torch.float32, "silu", True)


TRITON_CASES = [(1, 37, 5, 7, 3, 1, None), (3, 20, 7, 6, 5, 2, (1, 2, 1, 2)),
                (1, 16, 1, 1, 3, 1, None), (1, 8, 6, 5, 7, 2, (3, 3, 2, 3))]


@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("case", TRITON_CASES, ids=[str(c) for c in TRITON_CASES])
def test_triton_backend(poison, case, return_pool):
    pytest.importorskip("triton")
    check("triton", case, torch.float32, "silu", return_pool, "cuda" if HAS_GPU else "cpu")


@pytest.mark.parametrize("act", ["relu6", "relu", "identity"])
def test_triton_acts(poison, act):
    pytest.importorskip("triton")
    check("triton", TRITON_CASES[0], torch.float32, act, True, "cuda" if HAS_GPU else "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("return_pool", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu(poison, backend, case, act, return_pool, dtype):
    check(backend, case, dtype, act, return_pool, "cuda")


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
    low_y, _ = eager_lowp(x.cpu(), w.cpu(), b.cpu(), 1, None, "silu")
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
    x, w, b, s, pad = make(CASES[4], torch.float32)
    pads = list(reference.normalize_padding(pad, 3))
    for rp in (False, True):
        torch.library.opcheck(torch.ops.effnet.dwconv_bias_act.default,
                              (x, w, b, s, pads, "silu", rp))


@needs_ext
def test_compile_fullgraph():
    x, w, b, s, pad = make(CASES[0], torch.float32)
    f = torch.compile(lambda x: ops.dwconv_bias_act(x, w, b, s, pad, "silu", True,
                                                    backend="cpu")[1] * 2,
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), reference.dwconv_bias_act(x, w, b, s, pad, "silu", True)[1]
                               * 2)


@needs_ext
def test_pool_is_deterministic():
    x, w, b, s, pad = make((2, 64, 31, 29, 5, 1, None), torch.float32)
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
    x, w, b, s, pad = make(CASES[0], torch.float32)
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
    x, w, b, s, _ = make(CASES[0], torch.float32)
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
    x, w, b, s, pad = make(CASES[0], torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.dwconv_bias_act(x, w.cpu(), b, backend="cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.dwconv_bias_act(x, w, b.cpu(), backend="cuda")
