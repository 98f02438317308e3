"""The op registry: one schema per op in C++ and Python, every backend a registered operator
(opcheck, fake kernels, torch.compile), "auto" and substitutions decided in one place."""

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels import ops, registry
from helpers import needs_ext, needs_triton



@needs_ext
@pytest.mark.parametrize("op", registry.OPS)
def test_cpp_schema_equals_registry(op):
    """csrc/registration.cpp and registry.SCHEMAS declare the same schema for every op."""
    schema = str(getattr(torch.ops.effnet, op).default._schema)
    assert schema == f"effnet::{op}{registry.SCHEMAS[op]}"


@pytest.mark.parametrize("op", registry.OPS)
def test_every_backend_is_a_registered_operator(op):
    for backend in registry.op_backends(op):
        fn = registry.implementation(op, backend)
        assert isinstance(fn, torch._ops.OpOverload)
        assert str(fn._schema).split("(", 1)[1].startswith(registry.SCHEMAS[op][1:].split(")")[0])


@needs_ext
def test_cpu_kernels_read_from_the_dispatcher():
    """Every op has a C++ CPU kernel (libtorch users can run every op)."""
    for op in registry.OPS:
        assert "cpu" in registry.op_backends(op), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"effnet::{op}", "CPU")


def test_auto_never_picks_the_interpreter_on_cpu():
    """auto on CPU tensors: the C++ kernels, except the int8 ops on CPUs without AVX-512 VNNI,
    whose scalar C++ ports are slower than the reference (registry._AUTO_ORDER_FOR, measured)."""
    int8 = ("dwconv_int8", "pointwise_int8", "quantize_per_tensor")
    for op in registry.OPS:
        b, note = registry.resolve(op, "auto", "cpu")
        fast = op not in int8 or registry._HAS_VNNI
        want = "cpu" if ops.extension_available() and fast else "torch"
        assert b == want and note is None, op


def test_unknown_names_and_unavailable_backends():
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.resolve("bias_act", "cudnn", "cpu")
    with pytest.raises(ValueError, match="unknown op"):
        registry.resolve("conv3d", "auto", "cpu")
    with pytest.raises(RuntimeError, match="'cuda' backend needs CUDA tensors"):
        registry.resolve("bias_act", "cuda", "cpu")


def test_substitution_only_when_asked(monkeypatch):
    """pointwise_conv has no CUDA C++ kernel: as an op that is an error, in a model it runs on
    Triton and says so."""
    monkeypatch.setattr(registry, "device_backends", lambda d="cpu": ["cuda", "triton", "torch"])
    monkeypatch.setitem(registry._OP_BACKENDS, "pointwise_conv", ("triton", "cpu", "torch"))
    with pytest.raises(RuntimeError, match="no 'cuda' implementation"):
        registry.resolve("pointwise_conv", "cuda", "cuda")
    assert registry.resolve("pointwise_conv", "cuda", "cuda", substitute=True) == (
        "triton", "'triton' (no 'cuda' kernel)")


def _inputs(op):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    q = lambda *s: torch.randint(-128, 128, s, generator=g, dtype=torch.int8)  # noqa: E731
    x = cl(r(2, 37, 5, 7))
    return {
        "bias_act": (x, r(37), "silu"),
        "dwconv_bias_act": (x, r(37, 1, 3, 3), r(37), 2, [1, 1, 1, 1], "relu6", True),
        "se_gate": (r(2, 37), r(9, 37), r(9), r(37, 9), r(37)),
        "pointwise_conv": (x, r(11, 37), r(11), "silu", torch.rand(2, 37, generator=g),
                           cl(r(2, 11, 5, 7)), False),
        "dwconv_int8": (cl(q(2, 37, 5, 7)), q(37, 1, 3, 3), torch.rand(37, generator=g) / 50,
                        r(37), 1, [1, 1, 1, 1], -3, 9.5, 4, "silu", True),
        "pointwise_int8": (cl(q(2, 37, 5, 7)), q(11, 37), torch.rand(11, generator=g) / 500,
                           r(11), 5, 7.0, -2, "relu", None, cl(q(2, 11, 5, 7)), 0.1, 3, False),
        "quantize_per_tensor": (x, 7.5, -4),
    }[op]


@pytest.mark.parametrize("op", registry.OPS)
@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_opcheck_every_backend(op, backend):
    """torch.library.opcheck (schema, fake kernel, autograd registration) of every backend's
    operator on CPU tensors (Triton through the interpreter)."""
    if backend not in registry.device_backends("cpu"):
        pytest.skip(f"{backend} not available on CPU tensors here")
    torch.library.opcheck(registry.implementation(op, backend), _inputs(op))


@pytest.mark.parametrize("op", registry.OPS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backends_agree_with_the_reference(op, backend):
    if backend not in registry.device_backends("cpu"):
        pytest.skip(f"{backend} not available on CPU tensors here")
    args = _inputs(op)
    ref = registry.implementation(op, "torch")(*args)
    out = registry.implementation(op, backend)(*args)
    for o, r in zip(*(t if isinstance(t, tuple) else (t,) for t in (out, ref)), strict=True):
        if o.dtype == torch.int8:  # int8: within 1 LSB (SiLU's exp may flip a rounding)
            assert (o.int() - r.int()).abs().max() <= 1
        else:
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_backend_under_torch_compile():
    """A whole model on the Triton backend (interpreter on the CPU) traced by torch.compile
    with fullgraph: every Triton launch is an opaque registered operator with a fake kernel."""
    if "triton" not in registry.device_backends("cpu"):
        pytest.skip("TRITON_INTERPRET=1 is not set: Triton cannot run on CPU tensors")
    torch.manual_seed(0)
    m = ek.efficientnet_lite0(num_classes=10).eval()
    f = ek.optimize(m, backend="triton")
    x = torch.randn(1, 3, 20, 18)
    want = f(x)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_modules_bind_once():
    """A module resolves its operator at construction; the forward calls it directly."""
    torch.manual_seed(0)
    f = ek.optimize(ek.efficientnet_b0(num_classes=10).eval(), backend="torch")
    dw = f.blocks[0][0].dw
    assert dw._fn is registry.implementation("dwconv_bias_act", "torch")
    calls = []
    real = registry.resolve
    try:
        registry.resolve = lambda *a, **k: calls.append(a) or real(*a, **k)
        f(torch.randn(1, 3, 16, 16))
    finally:
        registry.resolve = real
    assert calls == []


def test_moving_a_model_binds_again_or_refuses():
    """.to() another device type: "auto" re-resolves there (f.backends follows); an explicit
    backend that cannot run there raises at the call, never a silent switch."""
    torch.manual_seed(0)
    m = ek.efficientnet_b0(num_classes=10).eval()
    f = ek.optimize(m, backend="auto").to("meta")
    assert f.backends["dwconv_bias_act"] == "torch"
    assert f.blocks[0][0].dw.backend == "torch"
    if not ops.extension_available():
        return
    g = ek.optimize(m, backend="cpu").to("meta")
    with pytest.raises(RuntimeError, match="moved to meta.*'cpu' backend needs CPU tensors"):
        g.blocks[0][0].dw(torch.empty(1, 32, 8, 8, device="meta"))
    h = g.to_empty(device="cpu")  # back on the CPU: bound to the CPU kernels again
    assert h.blocks[0][0].dw._fn is registry.implementation("dwconv_bias_act", "cpu")


def test_functional_call_sees_the_swapped_buffers():
    """Modules read their tensors through _buffers: torch.func.functional_call (and export)
    see the tensors it swaps in."""
    from effnet_kernels.nn import FusedDWConvBNAct

    torch.manual_seed(0)
    m = FusedDWConvBNAct(torch.randn(8, 1, 3, 3), torch.randn(8), backend="torch")
    x = torch.randn(2, 8, 5, 5)
    z = torch.func.functional_call(m, {"weight": torch.zeros(8, 1, 3, 3),
                                       "bias": torch.zeros(8)}, (x,))
    assert z.abs().max() == 0 and m(x).abs().max() > 0


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_quantize_per_tensor_fake_strides(backend):
    """A non-contiguous 2-D input: every backend returns a contiguous int8 tensor, and so does
    the fake kernel."""
    if backend not in registry.device_backends("cpu"):
        pytest.skip(f"{backend} not available")
    x = torch.randn(5, 7).t()
    torch.library.opcheck(registry.implementation("quantize_per_tensor", backend), (x, 3.0, 1))
