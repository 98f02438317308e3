"""effnet::quantize_per_tensor (float → int8, floor(x·inv_scale + 0.5) + zp saturated) on
every backend against reference.quantize_per_tensor: bit-exact, ties rounded half up, saturation
both ways, 4-D outputs channels_last; the C++ CPU kernel (csrc/quantize/quantize_cpu.cpp)
through the dispatcher and Triton (the interpreter without a GPU)."""

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import CL, DEV, assert_cpu_kernel_from, needs_ext, needs_triton, q8

try:
    from effnet_kernels.triton import quant as tq
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    tq = None


def test_op_bad_input():
    x = q8((1, 8, 5, 5), torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="floating"):
        ops.quantize_per_tensor(x, 1.0, 0)
    with pytest.raises(ValueError, match="zp"):
        ops.quantize_per_tensor(x.float(), 1.0, -129)


@needs_ext
def test_schema():
    schema = str(torch.ops.effnet.quantize_per_tensor.default._schema)
    assert schema == "effnet::quantize_per_tensor(Tensor x, float inv_scale, int zp) -> Tensor"


# ------------------------------------------------------------------------------ C++ CPU kernel
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,fmt", [((3, 37, 13, 11), CL), ((1, 61, 7, 7), None),
                                       ((3, 37, 1, 1), CL), ((61,), None), ((7, 37), None),
                                       ((0, 3, 5, 5), CL)], ids=str)
def test_cpu_matches_reference(shape, fmt, dtype, poison):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=g) * 40).to(dtype)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    for inv, zp in [(1.0, 0), (0.25, -128), (3.5, 127), (1 / 0.37, -3)]:
        q = torch.ops.effnet.quantize_per_tensor(x, inv, zp)
        ref = reference.quantize_per_tensor(x, inv, zp)
        assert q.dtype == torch.int8 and q.shape == x.shape
        if x.dim() == 4:
            assert q.is_contiguous(memory_format=CL)
        assert torch.equal(q, ref)


@needs_ext
def test_cpu_ties_and_saturation():
    """x * inv + 0.5 on exact .5 ties rounds up (floor(t + 0.5)), beyond the range saturates."""
    x = torch.tensor([-200.0, -128.5, -2.5, -0.5, 0.5, 1.5, 2.5, 126.5, 1e30, -1e30])
    q = torch.ops.effnet.quantize_per_tensor(x, 1.0, 0)
    assert q.tolist() == [-128, -128, -2, 0, 1, 2, 3, 127, 127, -128]
    assert torch.equal(q, reference.quantize_per_tensor(x, 1.0, 0))


@needs_ext
def test_cpu_bad_input():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(TypeError, match="floating-point"):
        torch.ops.effnet.quantize_per_tensor(x.to(torch.int8), 1.0, 0)
    with pytest.raises(ValueError, match="zp"):
        torch.ops.effnet.quantize_per_tensor(x, 1.0, -129)
    for inv in (0.0, -2.0, float("inf"), float("nan"), 1e39, 1e-46):
        with pytest.raises(ValueError, match="inv_scale"):
            torch.ops.effnet.quantize_per_tensor(x, inv, 0)


@needs_ext
def test_cpu_kernel_registered_in_cpp():
    """The CPU kernel is the C++ one (libtorch users get it), not a Python registration."""
    assert_cpu_kernel_from("quantize_per_tensor", "quantize_cpu.cpp")


@needs_ext
def test_cpu_opcheck():
    g = torch.Generator().manual_seed(11)
    for xq in (torch.randn(3, 37, 5, 5, generator=g).contiguous(memory_format=CL),
               torch.randn(7, 37, generator=g), torch.randn(1, 3, 5, 7, generator=g)):
        torch.library.opcheck(torch.ops.effnet.quantize_per_tensor, (xq, 12.5, -3))


# ------------------------------------------------------------------------------------ Triton
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1000,)], ids=["4d", "1d"])
def test_triton_matches_reference(poison, dtype, shape):
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
