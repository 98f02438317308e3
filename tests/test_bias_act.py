"""effnet::bias_act on every backend against reference.py in float64 (docs/ARCHITECTURE.md, "Numerics")."""

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import (ACTS, DEV, assert_close_to_ref, check_bias_act, eager_lowp_bias_act,
                     make_bias_act, needs_ext, needs_triton)

SHAPES = [(1, 37, 13, 11), (3, 61, 7, 7), (2, 1152, 1, 1), (1, 32, 113, 3), (3, 8, 1, 5)]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_backend(poison, shape, act, dtype):
    check_bias_act("cpu", shape, dtype, act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_torch_backend(poison, act, dtype):
    check_bias_act("torch", (3, 37, 5, 7), dtype, act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(1, 37, 3, 5), (2, 70, 2, 3)])
@needs_triton
def test_triton_backend(poison, shape, act):
    check_bias_act("triton", shape, torch.float32, act, DEV)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_backend(poison, shape, act, dtype):
    check_bias_act("cuda", shape, dtype, act, "cuda")


@pytest.mark.cuda
def test_cuda_unaligned_and_tails(poison):
    # A storage offset of one element breaks 16-byte alignment: the scalar path must be taken.
    base = torch.randn(1 + 2 * 5 * 7 * 64, device="cuda", dtype=torch.float16)
    x = base[1:].view(2, 5, 7, 64).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16
    b = torch.randn(64, device="cuda", dtype=torch.float16)
    y = ops.bias_act(x, b, "silu", backend="cuda")
    ref = reference.bias_act(x.cpu().double(), b.cpu().double(), "silu")
    assert_close_to_ref(y.cpu(), ref, eager_lowp_bias_act(x, b, "silu").cpu(), torch.float16)


@needs_ext
def test_opcheck():
    x, b = make_bias_act((2, 37, 5, 3), torch.float32)
    for act in ACTS:
        torch.library.opcheck(torch.ops.effnet.bias_act.default, (x, b, act))


@needs_ext
def test_compile_fullgraph():
    x, b = make_bias_act((2, 16, 5, 3), torch.float32)
    f = torch.compile(lambda x, b: ops.bias_act(x, b, "silu", backend="cpu") * 2, fullgraph=True,
                      backend="aot_eager")
    torch.testing.assert_close(f(x, b), reference.bias_act(x, b, "silu") * 2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_ext)])
def test_bad_input(backend):
    x, b = make_bias_act((2, 8, 3, 3), torch.float32)
    with pytest.raises(ValueError, match="shape"):
        ops.bias_act(x, b[:7], backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        ops.bias_act(x, b.half(), backend=backend)
    with pytest.raises(TypeError, match="float32"):
        ops.bias_act(x.to(torch.int32), b.to(torch.int32), backend=backend)
    with pytest.raises(TypeError, match="float32"):
        ops.bias_act(x.double(), b.double(), backend=backend)
    with pytest.raises(ValueError, match="activation"):
        ops.bias_act(x, b, "gelu", backend=backend)
    with pytest.raises(ValueError, match="channels_last"):
        ops.bias_act(x.contiguous(), b, backend=backend)
    with pytest.raises(ValueError, match="4-D"):
        ops.bias_act(x[0], b, backend=backend)


@needs_ext
def test_cpp_checks_reject_bad_input_directly():
    """The registered op checks its arguments itself (for C++ callers and torch.ops users)."""
    x, b = make_bias_act((2, 8, 3, 3), torch.float32)
    with pytest.raises(ValueError, match="shape"):
        torch.ops.effnet.bias_act(x, b[:7], "silu")
    with pytest.raises(ValueError, match="channels_last"):
        torch.ops.effnet.bias_act(x.contiguous(), b, "silu")
    with pytest.raises(ValueError, match="unknown activation"):
        torch.ops.effnet.bias_act(x, b, "gelu")
    with pytest.raises(TypeError):
        torch.ops.effnet.bias_act(x.double(), b.double(), "silu")


def test_backend_selection():
    x, b = make_bias_act((1, 8, 2, 2), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.bias_act(x, b, backend="tpu")
    with pytest.raises(RuntimeError, match="'cuda' backend needs CUDA tensors"):
        ops.bias_act(x, b, backend="cuda")
    expected = "cpu" if ops.extension_available() else "torch"
    assert ops.resolve_backend("auto", "cpu") == expected


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x, b = make_bias_act((1, 8, 2, 2), torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.bias_act(x, b.cpu(), backend="cuda")
