"""effnet::dwconv_int8's CUDA kernel (csrc/dwconv_int8/dwconv_int8_cuda.cu) against the exact integer
oracle effnet_kernels.reference.dwconv_int8.

Contract (reference.py, "INT8"): y within 1 LSB of the reference (an FMA at an exact tie, or the
last ulp of SiLU's exp, may flip a rounding), and such flips must be rare; pool within 1e-5
relative. Two kinds of test here:

* GPU (``-m cuda``): the kernel itself on odd shapes, every act, pool on/off, nonzero zero
  points, each launch path (16- and 8-byte vectors, generic), bad input.
* CPU, always: the schema is compiled in, and the CUDA kernel is registered in a CUDA build.

The kernel body emulated on the CPU (csrc/dwconv_int8/dwconv_int8_kernel.cuh compiled for the
host and run block by block over the launch grid) is tested in tests/test_cuda_emulation.py,
with CASES, make and assert_matches from here.
"""

import pytest
import torch

from conftest import rel_err
from effnet_kernels import ops, reference

ACTS = ["silu", "relu6", "relu", "identity"]

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason=f"effnet_kernels._C not built: {ops.extension_error()}")
needs_cuda_kernels = pytest.mark.skipif(
    not ops.cuda_kernels_built(),
    reason="effnet_kernels._C was built without its CUDA sources (EFFNET_CUDA=0 or no nvcc)")

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
    """Random int8 x (channels_last) and weight; scale sized so act inputs are O(1)."""
    N, C, H, W, k, s, pad = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (N, C, H, W), generator=g, dtype=torch.int8)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randint(-127, 128, (C, 1, k, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(C, generator=g) + 0.5) * 3.0 / (k * 74 * 73)
    bias = torch.randn(C, generator=g)
    pads = list(reference.normalize_padding(pad, k))
    return x.to(device), w.to(device), scale.to(device), bias.to(device), s, pads


def assert_matches(y, pool, x, w, sc, b, s, pads, in_zp, inv, out_zp, act, return_pool):
    """y within 1 LSB of the reference with rare flips; pool rel err <= 1e-5."""
    ref_y, ref_pool = reference.dwconv_int8(x.cpu(), w.cpu(), sc.cpu(), b.cpu(), s, pads, in_zp,
                                            inv, out_zp, act, True)
    assert y.dtype == torch.int8 and y.shape == ref_y.shape, (y.dtype, y.shape, ref_y.shape)
    assert y.is_contiguous(memory_format=torch.channels_last)
    d = (y.cpu().int() - ref_y.int()).abs()
    assert d.max().item() <= 1, f"max |y - ref| = {d.max().item()} LSB"
    flips = int((d > 0).sum())
    assert flips <= max(1, 1e-3 * y.numel()), f"{flips} of {y.numel()} values off by 1 LSB"
    if return_pool:
        assert pool.dtype == torch.float32 and pool.shape == (x.shape[0], x.shape[1])
        assert not torch.isnan(pool).any(), "pool has NaN (unwritten)"
        assert rel_err(pool.cpu(), ref_pool) <= 1e-5, rel_err(pool.cpu(), ref_pool)
    else:
        assert pool.dtype == torch.float32 and pool.shape == (0,)


# ----------------------------------------------------------------------------------- CPU, always

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


# ------------------------------------------------------------------------------------------- GPU

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
