"""effnet::bias_act on every backend against reference.py in float64 (docs/ARCHITECTURE.md, "Numerics")."""

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_GPU, assert_close_to_ref
from effnet_kernels import ops, reference

ACTS = ["silu", "relu6", "relu", "identity"]
SHAPES = [(1, 37, 13, 11), (3, 61, 7, 7), (2, 1152, 1, 1), (1, 32, 113, 3), (3, 8, 1, 5)]

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason=f"effnet_kernels._C not built: {ops.extension_error()}")


def make(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    b = torch.randn(shape[1], generator=g).to(dtype)
    return x.contiguous(memory_format=torch.channels_last).to(device), b.to(device)


def eager_lowp(x, b, act):
    """What PyTorch's eager ops give in x's dtype: the baseline for fp16/bf16 tolerances."""
    v = x + b.view(1, -1, 1, 1)
    return {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)


def check(backend, shape, dtype, act, device="cpu"):
    x, b = make(shape, dtype, device)
    y = ops.bias_act(x, b, act, backend=backend)
    assert y.shape == x.shape and y.device == x.device
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = reference.bias_act(x.cpu().double(), b.cpu().double(), act)
    assert_close_to_ref(y.cpu(), ref, eager_lowp(x, b, act).cpu(), dtype)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_backend(poison, shape, act, dtype):
    check("cpu", shape, dtype, act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_torch_backend(poison, act, dtype):
    check("torch", (3, 37, 5, 7), dtype, act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(1, 37, 3, 5), (2, 70, 2, 3)])
def test_triton_backend(poison, shape, act):
    pytest.importorskip("triton")
    device = "cuda" if HAS_GPU else "cpu"
    check("triton", shape, torch.float32, act, device)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_backend(poison, shape, act, dtype):
    check("cuda", shape, dtype, act, "cuda")


@pytest.mark.cuda
def test_cuda_unaligned_and_tails(poison):
    # A storage offset of one element breaks 16-byte alignment: the scalar path must be taken.
    base = torch.randn(1 + 2 * 5 * 7 * 64, device="cuda", dtype=torch.float16)
    x = base[1:].view(2, 5, 7, 64).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16
    b = torch.randn(64, device="cuda", dtype=torch.float16)
    y = ops.bias_act(x, b, "silu", backend="cuda")
    ref = reference.bias_act(x.cpu().double(), b.cpu().double(), "silu")
    assert_close_to_ref(y.cpu(), ref, eager_lowp(x, b, "silu").cpu(), torch.float16)


@needs_ext
def test_opcheck():
    x, b = make((2, 37, 5, 3), torch.float32)
    for act in ACTS:
        torch.library.opcheck(torch.ops.effnet.bias_act.default, (x, b, act))


@needs_ext
def test_compile_fullgraph():
    x, b = make((2, 16, 5, 3), torch.float32)
    f = torch.compile(lambda x, b: ops.bias_act(x, b, "silu", backend="cpu") * 2, fullgraph=True,
                      backend="aot_eager")
    torch.testing.assert_close(f(x, b), reference.bias_act(x, b, "silu") * 2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_ext)])
def test_bad_input(backend):
    x, b = make((2, 8, 3, 3), torch.float32)
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
    x, b = make((2, 8, 3, 3), torch.float32)
    with pytest.raises(ValueError, match="shape"):
        torch.ops.effnet.bias_act(x, b[:7], "silu")
    with pytest.raises(ValueError, match="channels_last"):
        torch.ops.effnet.bias_act(x.contiguous(), b, "silu")
    with pytest.raises(ValueError, match="unknown activation"):
        torch.ops.effnet.bias_act(x, b, "gelu")
    with pytest.raises(TypeError):
        torch.ops.effnet.bias_act(x.double(), b.double(), "silu")


def test_backend_selection():
    x, b = make((1, 8, 2, 2), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.bias_act(x, b, backend="tpu")
    with pytest.raises(RuntimeError, match="'cuda' backend needs CUDA tensors"):
        ops.bias_act(x, b, backend="cuda")
    expected = "cpu" if ops.extension_available() else "torch"
    assert ops.resolve_backend("auto", "cpu") == expected


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x, b = make((1, 8, 2, 2), torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="is on cpu"):
        ops.bias_act(x, b.cpu(), backend="cuda")
