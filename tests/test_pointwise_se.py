"""se_gate and pointwise_conv on the cpu and torch backends against reference.py in float64,
argument checks, opcheck. (Triton: tests/test_triton_se_pointwise.py; CUDA se_gate below.)"""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_to_ref, rel_err
from effnet_kernels import ops, reference

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason=f"effnet_kernels._C not built: {ops.extension_error()}")
BACKENDS = ["torch", pytest.param("cpu", marks=needs_ext)]
ACTS = ["silu", "relu6", "relu", "identity"]

# (N, Cin, Cout, H, W, gate, residual, pool_only): the shapes.
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


def make_pw(case, dtype, device="cpu", seed=0):
    N, Cin, Cout, H, W, has_gate, has_res, pool_only = case
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(N, Cin, H, W, generator=g).to(dtype).contiguous(memory_format=cl)
    w = (torch.randn(Cout, Cin, generator=g) / Cin ** 0.5).to(dtype)
    b = torch.randn(Cout, generator=g).to(dtype)
    gate = torch.rand(N, Cin, generator=g) if has_gate else None
    res = (torch.randn(N, Cout, H, W, generator=g).to(dtype).contiguous(memory_format=cl)
           if has_res else None)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return mv(x), mv(w), mv(b), mv(gate), mv(res), pool_only


def eager_lowp(x, w, b, act, gate, res, pool_only):
    """PyTorch's eager ops in x's dtype (the fp16/bf16 yardstick)."""
    xs = x * gate[:, :, None, None].to(x.dtype) if gate is not None else x
    v = F.conv2d(xs, w[:, :, None, None], b)
    v = {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)
    if res is not None:
        v = v + res
    return v.float().mean((2, 3)) if pool_only else v


def check_pw(backend, case, dtype, act, device="cpu"):
    x, w, b, gate, res, pool_only = make_pw(case, dtype, device)
    out = ops.pointwise_conv(x, w, b, act, gate, res, pool_only, backend=backend)
    d = lambda t: None if t is None else t.cpu().double()  # noqa: E731
    ref = reference.pointwise_conv(d(x), d(w), d(b), act, d(gate), d(res), pool_only)
    assert out.shape == ref.shape and out.device == x.device
    c = lambda t: None if t is None else t.cpu()  # noqa: E731
    low = eager_lowp(x.cpu(), w.cpu(), b.cpu(), act, c(gate), c(res), pool_only)
    if pool_only:  # float32 output: fp32 accuracy, or 2x eager's error for fp16/bf16 inputs
        assert out.dtype == torch.float32 and not torch.isnan(out).any()
        tol = 1e-5 if dtype == torch.float32 else 2 * max(rel_err(low, ref),
                                                          torch.finfo(dtype).eps / 2)
        assert rel_err(out.cpu(), ref) <= tol, (rel_err(out.cpu(), ref), tol)
        return
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_ref(out.cpu(), ref, low, dtype)


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


SE_CASES = [(1, 37, 5), (3, 1152, 48), (2, 96, 4), (4, 16, 8), (2, 3840, 160)]


def make_se(N, C, S, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(N, C, generator=g)
    w1 = (torch.randn(S, C, generator=g) / C ** 0.5).to(dtype)
    b1 = torch.randn(S, generator=g).to(dtype)
    w2 = (torch.randn(C, S, generator=g) / S ** 0.5).to(dtype)
    b2 = torch.randn(C, generator=g).to(dtype)
    return [t.to(device) for t in (pooled, w1, b1, w2, b2)]


def check_se(backend, N, C, S, dtype, device="cpu"):
    args = make_se(N, C, S, dtype, device)
    gate = ops.se_gate(*args, backend=backend)
    ref = reference.se_gate(*[t.cpu().double() for t in args])
    assert gate.dtype == torch.float32 and gate.shape == (N, C) and gate.device == args[0].device
    assert not torch.isnan(gate).any()
    # Weights are exact in every dtype (they were rounded before the reference saw them), and the
    # math is float32: fp32 accuracy for every weight dtype.
    assert rel_err(gate.cpu(), ref) <= 1e-5, rel_err(gate.cpu(), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C,S", SE_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_se_gate(poison, backend, N, C, S, dtype):
    check_se(backend, N, C, S, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C,S", SE_CASES + [(256, 1152, 48)])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_se_gate_gpu(poison, backend, N, C, S, dtype):
    check_se(backend, N, C, S, dtype, "cuda")


def test_se_gate_accepts_conv_weights():
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    g4 = ops.se_gate(pooled, w1[:, :, None, None], b1, w2[:, :, None, None], b2, backend="torch")
    torch.testing.assert_close(g4, reference.se_gate(pooled, w1, b1, w2, b2))


@needs_ext
def test_opcheck():
    x, w, b, gate, res, _ = make_pw(PW_CASES[1], torch.float32)
    for args in [(x, w, b, "silu", gate, res, False), (x, w, b, "relu6", None, None, True),
                 (x, w, b, "identity", gate, None, False)]:
        torch.library.opcheck(torch.ops.effnet.pointwise_conv.default, args)
    torch.library.opcheck(torch.ops.effnet.se_gate.default, tuple(make_se(3, 37, 5,
                                                                           torch.float32)))


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
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    with pytest.raises(ValueError, match="w2 must be"):
        torch.ops.effnet.se_gate(pooled, w1, b1, w2[:, :3], b2)
    with pytest.raises(TypeError, match="pooled must be float32"):
        torch.ops.effnet.se_gate(pooled.half(), w1, b1, w2, b2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_se_gate_bad_input(backend):
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    f = lambda *a: ops.se_gate(*a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match="w1 must have shape"):
        f(pooled, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match="w2 must have shape"):
        f(pooled, w1, b1, w2[:, :5], b2)
    with pytest.raises(ValueError, match="b1 must have shape"):
        f(pooled, w1, b1[:2], w2, b2)
    with pytest.raises(TypeError, match="pooled must be float32"):
        f(pooled.half(), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="w2 dtype"):
        f(pooled, w1, b1, w2.half(), b2)
    with pytest.raises(TypeError):
        f(pooled, w1.to(torch.int32), b1.to(torch.int32), w2.to(torch.int32), b2.to(torch.int32))
    with pytest.raises(ValueError, match="pooled must be 2-D"):
        f(pooled[0], w1, b1, w2, b2)
