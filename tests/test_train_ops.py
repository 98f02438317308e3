"""The training ops (effnet_kernels.train_ops, torch.ops.effnet_train.*): float64 gradcheck on
odd shapes (C = 37, 1×1 and 13×11, stride 1 and 2, batch 1 and 3, asymmetric padding), forward
against the plain-PyTorch composition, opcheck (schema, fake kernel, autograd registration,
AOT dispatch), what each op saves for backward, and the input errors."""

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import train_ops as T
from effnet_kernels.reference import apply_act

F64, CL = torch.float64, torch.channels_last
C = 37
SHAPES = [(1, 1, 1), (3, 13, 11)]  # (N, H, W); batch_stats needs > 1 value per channel
ACTS = ["silu", "relu6", "identity"]


def x4(n, c, h, w, dtype=F64, scale=1.0):
    return (torch.randn(n, c, h, w, dtype=dtype) * scale).contiguous(memory_format=CL) \
        .requires_grad_()


def vec(c=C, lo=None, dtype=F64):
    t = torch.rand(c, dtype=dtype) + 0.5 if lo else torch.randn(c, dtype=dtype)
    return t.requires_grad_()


def bn_vecs():
    return vec(), vec(lo=True), vec()  # mean, scale (positive, like γ/σ), beta


def gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def _pre(x, mean, scale, beta, act):
    return apply_act((x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
                     + beta.view(1, -1, 1, 1), act)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("n,h,w", SHAPES)
def test_batch_stats(n, h, w):
    z = x4(max(n, 2), C, h, w)
    mean, var = T.batch_stats(z)  # float64: the ATen composition
    v, m = torch.var_mean(z, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close((mean, var), (m, v))
    gradcheck(T.batch_stats, (z,))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_bn_act_and_pool(n, h, w, act):
    z, res = x4(n, C, h, w, scale=3.0), x4(n, C, h, w)
    m, s, b = bn_vecs()
    ref = _pre(z, m, s, b, act)
    torch.testing.assert_close(T.bn_act(z, m, s, b, act), ref)
    torch.testing.assert_close(T.bn_act(z, m, s, b, act, res), ref + res)
    torch.testing.assert_close(T.bn_act_pool(z, m, s, b, act), ref.mean(dim=(2, 3)))
    assert T.bn_act(z, m, s, b, act).is_contiguous(memory_format=CL)
    gradcheck(lambda *a: T.bn_act(*a, act), (z, m, s, b))
    gradcheck(lambda z, m, s, b, r: T.bn_act(z, m, s, b, act, r), (z, m, s, b, res))
    gradcheck(lambda *a: T.bn_act_pool(*a, act), (z, m, s, b))


# (N, H, W, stride, k, (left, right, top, bottom), act): both sizes and strides, both kernels,
# symmetric and TF-"same" (extra pixel right/bottom) padding, every activation
DW_CASES = [(1, 1, 1, 1, 3, (1, 1, 1, 1), "silu"), (1, 1, 1, 2, 3, (1, 1, 1, 1), "relu6"),
            (3, 13, 11, 1, 5, (2, 2, 2, 2), "relu6"), (3, 13, 11, 2, 5, (1, 2, 1, 2), "silu"),
            (3, 13, 11, 2, 3, (0, 1, 0, 1), "identity")]


@pytest.mark.parametrize("n,h,w,stride,k,pads,act", DW_CASES)
def test_dwconv(n, h, w, stride, k, pads, act):
    x, wt = x4(n, C, h, w, scale=3.0), vec(C * k * k).detach().view(C, 1, k, k).requires_grad_()
    m, s, b = bn_vecs()
    ref = F.conv2d(F.pad(_pre(x, m, s, b, act), pads), wt, stride=stride, groups=C)
    out = T.dwconv(x, wt, m, s, b, act, stride, pads)
    torch.testing.assert_close(out, ref)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(T.dwconv(x, wt, stride=stride, padding=pads),
                               F.conv2d(F.pad(x, pads), wt, stride=stride, groups=C))
    gradcheck(lambda *a: T.dwconv(*a, act, stride, pads), (x, wt, m, s, b))
    gradcheck(lambda x, wt: T.dwconv(x, wt, stride=stride, padding=pads), (x, wt))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,h,w", SHAPES)
def test_pwconv(n, h, w, act):
    x, wt = x4(n, C, h, w, scale=3.0), torch.randn(19, C, 1, 1, dtype=F64, requires_grad=True)
    m, s, b = bn_vecs()
    gate = torch.rand(n, C, dtype=F64, requires_grad=True)
    ref = F.conv2d(_pre(x, m, s, b, act) * gate[:, :, None, None], wt)
    torch.testing.assert_close(T.pwconv(x, wt, m, s, b, act, gate), ref)
    torch.testing.assert_close(T.pwconv(x, wt.view(19, C)), F.conv2d(x, wt))
    gradcheck(lambda *a: T.pwconv(*a, act), (x, wt, m, s, b))
    gradcheck(lambda x, wt, m, s, b, g: T.pwconv(x, wt, m, s, b, act, g), (x, wt, m, s, b, gate))
    gradcheck(lambda x, wt, g: T.pwconv(x, wt, gate=g), (x, wt, gate))


@pytest.mark.parametrize("n", [1, 3])
def test_se_gate(n):
    pool = torch.randn(n, C, dtype=F64, requires_grad=True)
    w1, b1 = torch.randn(5, C, 1, 1, dtype=F64), torch.randn(5, dtype=F64)
    w2, b2 = torch.randn(C, 5, 1, 1, dtype=F64), torch.randn(C, dtype=F64)
    args = [t.requires_grad_() for t in (w1, b1, w2, b2)]
    ref = torch.sigmoid(F.silu(pool @ w1.view(5, C).t() + b1) @ w2.view(C, 5).t() + b2)
    torch.testing.assert_close(T.se_gate(pool, *args), ref)
    gradcheck(T.se_gate, (pool, *args))


def test_opcheck():
    """Schema, fake kernel (shapes and channels_last strides), autograd registration and AOT
    dispatch of every op, in float32 and on the odd shapes."""
    ops = torch.ops.effnet_train
    for n, h, w in [(1, 1, 1), (3, 13, 11)]:
        x = torch.randn(n, C, h, w).contiguous(memory_format=CL).requires_grad_()
        m, s, b = (torch.randn(C, requires_grad=True) for _ in range(3))
        g = torch.rand(n, C, requires_grad=True)
        wd = torch.randn(C, 1, 3, 3, requires_grad=True)
        wp = torch.randn(19, C, requires_grad=True)
        cases = [(ops.bn_act.default, (x, m, s, b, "silu", None, "auto")),
                 (ops.bn_act.default, (x, m, s, b, "relu6", x.detach().clone(), "torch")),
                 (ops.bn_act_pool.default, (x, m, s, b, "silu", "auto")),
                 (ops.dwconv.default, (x, wd, m, s, b, "silu", 2,
                                       [0, 1, 0, 1] if h > 1 else [1] * 4, "auto")),
                 (ops.dwconv.default, (x, wd, None, None, None, "identity", 1, [1, 1, 1, 1],
                                       "torch")),
                 (ops.pwconv.default, (x, wp, m, s, b, "silu", g, "auto")),
                 (ops.pwconv.default, (x, wp, None, None, None, "identity", None, "auto")),
                 (ops.se_gate.default, (g, torch.randn(5, C, requires_grad=True),
                                        torch.randn(5, requires_grad=True),
                                        torch.randn(C, 5, requires_grad=True),
                                        torch.randn(C, requires_grad=True)))]
        if "cpu" in T.BACKENDS:
            dy = torch.randn(n, C, h, w).contiguous(memory_format=CL)
            cases += [(torch.ops.effnet.bn_act_backward.default,
                       (x.detach(), dy, m.detach(), s.detach(), b.detach(), act, gate))
                      for act, gate in (("silu", g.detach()), ("relu6", None))]
            cases += [(torch.ops.effnet.bn_act_apply.default,
                       (x.detach(), m.detach(), s.detach(), b.detach(), act, gate))
                      for act, gate in (("silu", g.detach()), ("identity", None))]
        if n * h * w > 1:
            cases += [(ops.batch_stats.default, (x, be)) for be in ("auto", "torch")]
            if "cpu" in T.BACKENDS:
                cases.append((torch.ops.effnet.batch_stats.default, (x.detach(),)))
        for op, args in cases:
            torch.library.opcheck(op, args)


needs_kernel = pytest.mark.skipif("cpu" not in T.BACKENDS,
                                  reason="effnet::bn_act_backward (C++) not built")


@needs_kernel
@pytest.mark.parametrize("act", ["silu", "relu6", "relu", "identity"])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (3, 13, 11), (2, 30, 30)])
@pytest.mark.parametrize("with_gate", [False, True])
def test_bn_act_backward_kernel(n, h, w, act, with_gate, cpu_isa):
    """The C++ BN-act backward (float32; each CPU ISA build: baseline at::vec, AVX2 intrinsics)
    against the ATen composition in float64: dx, dmean, dscale, dbeta, dgate; C = 37 (a
    vector tail) and 96, odd sizes, 2 and 30×30 (several 256-row blocks and tasks per image)."""
    c = 96 if h == 30 else C
    x = (torch.randn(n, c, h, w) * 3).contiguous(memory_format=CL)
    dy = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    m, s, b = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
    gate = torch.rand(n, c) if with_gate else None
    got = T._prologue_backward(x, m, s, b, act, gate, dy, (True,) * 5, "cpu")
    want = T._prologue_backward(*(t.double() for t in (x, m, s, b)), act,
                                None if gate is None else gate.double(), dy.double(),
                                (True,) * 5, "torch")
    for i, (u, v) in enumerate(zip(got, want)):
        assert (u is None) == (v is None), i
        if u is not None:
            assert u.dtype == torch.float32
            assert ((u.double() - v).norm() / v.norm()).item() < 1e-5, i
    assert got[0].is_contiguous(memory_format=CL)


@needs_kernel
@pytest.mark.parametrize("act", ["silu", "relu6", "relu", "identity"])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (3, 13, 11), (2, 30, 30)])
def test_bn_act_apply_kernel(n, h, w, act, cpu_isa):
    """The C++ prologue act((x − mean)·scale + beta)·gate (each CPU ISA build) against
    float64, with and without the gate; channels_last output."""
    c = 96 if h == 30 else C
    x = (torch.randn(n, c, h, w) * 3).contiguous(memory_format=CL)
    m, s, b, gate = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c), torch.rand(n, c)
    for g in (None, gate):
        got = T._prologue(x, m, s, b, act, g, "cpu")
        want = T._prologue(*(t.double() for t in (x, m, s, b)), act,
                           None if g is None else g.double(), "torch")
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=CL)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


needs_triton_kernels = pytest.mark.skipif(
    "triton" not in T.BACKENDS or not T._triton_interpreting(),
    reason="needs triton (the kernels run through TRITON_INTERPRET=1 on the CPU)")


@needs_triton_kernels
@pytest.mark.parametrize("act", ["silu", "relu6", "relu", "identity"])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (3, 13, 11)])
def test_triton_kernels(n, h, w, act):
    """The Triton bn_act_apply / bn_act_backward (interpreter) against float64, with and
    without the gate; float32 and bfloat16 x."""
    x = (torch.randn(n, C, h, w) * 3).contiguous(memory_format=CL)
    dy = torch.randn(n, C, h, w).contiguous(memory_format=CL)
    m, s, b, gate = torch.randn(C), torch.rand(C) + 0.5, torch.randn(C), torch.rand(n, C)
    for g in (None, gate):
        g64 = None if g is None else g.double()
        want = T._prologue(*(t.double() for t in (x, m, s, b)), act, g64, "torch")
        torch.testing.assert_close(T._prologue(x, m, s, b, act, g, "triton").double(), want,
                                   rtol=1e-5, atol=1e-5)
        got = T._prologue_backward(x, m, s, b, act, g, dy, (True,) * 5, "triton")
        ref = T._prologue_backward(*(t.double() for t in (x, m, s, b)), act, g64, dy.double(),
                                   (True,) * 5, "torch")
        for i, (u, v) in enumerate(zip(got, ref)):
            assert (u is None) == (v is None), i
            if u is not None:
                assert ((u.double() - v).norm() / v.norm()).item() < 1e-5, i
    xb = x.bfloat16()  # low precision in, float32 math: dx in bfloat16
    dxb = T._prologue_backward(xb, m, s, b, act, None, dy, (True,) * 5, "triton")[0]
    ref = T._prologue_backward(xb.double(), m.double(), s.double(), b.double(), act, None,
                               dy.double(), (True,) * 5, "torch")[0]
    assert dxb.dtype == torch.bfloat16
    assert ((dxb.double() - ref).norm() / ref.norm()).item() < 1e-2


@needs_triton_kernels
@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("n,h,w,stride,k,pads,act", DW_CASES[1:] + [
    (1, 9, 7, 1, 3, (1, 1, 1, 1), "silu"), (1, 6, 5, 1, 5, (4, 0, 1, 3), "relu6")])
def test_triton_dwconv(n, h, w, stride, k, pads, act, bn):
    """The Triton fused depthwise (forward, the da / dx kernel, the dweight kernel; interpreter)
    against the ATen composition in float64: z and the gradients of x, the weight, mean, scale
    and beta; float32 and bfloat16 x."""
    x = (torch.randn(n, C, h, w) * 3).contiguous(memory_format=CL).requires_grad_()
    wt = torch.randn(C, 1, k, k).requires_grad_()
    vecs = [v.requires_grad_() for v in (torch.randn(C), torch.rand(C) + 0.5, torch.randn(C))]
    ins = [x, wt] + (vecs if bn else [])
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    if not bn:
        vecs = [None] * 3
    assert T._dw_ops("triton", x) is torch.ops.effnet_train_triton
    out = T.dwconv(x, wt, *vecs, act, stride, pads, backend="triton")
    ref = T.dwconv(*ins64[:2], *(ins64[2:] if bn else vecs), act, stride, pads, backend="torch")
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=CL)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    dz = torch.randn(ref.shape, dtype=F64).contiguous(memory_format=CL)
    got = torch.autograd.grad(out, ins, dz.float())
    want = torch.autograd.grad(ref, ins64, dz)
    for i, (u, v) in enumerate(zip(got, want)):
        assert u.dtype == torch.float32, i
        assert ((u.double() - v).norm() / v.norm()).item() < 1e-5, i
    # bfloat16 in and out, float32 math; the reference: float64 on the same bfloat16 values
    xb = x.detach().bfloat16().requires_grad_()
    insb, dzb = [xb] + ins[1:], dz.bfloat16()
    ins64b = [xb.detach().double().requires_grad_()] + ins64[1:]
    refb = T.dwconv(*ins64b[:2], *(ins64b[2:] if bn else vecs), act, stride, pads,
                    backend="torch")
    outb = T.dwconv(xb, wt, *vecs, act, stride, pads, backend="triton")
    assert outb.dtype == torch.bfloat16
    assert ((outb.double() - refb).norm() / refb.norm()).item() < 1e-2
    gotb = torch.autograd.grad(outb, insb, dzb)
    wantb = torch.autograd.grad(refb, ins64b, dzb.double())
    assert gotb[0].dtype == torch.bfloat16
    for i, (u, v) in enumerate(zip(gotb, wantb)):
        assert ((u.double() - v).norm() / v.norm()).item() < 1e-2, i


@needs_triton_kernels
def test_triton_opcheck():
    x = torch.randn(3, C, 13, 11).contiguous(memory_format=CL)
    dy = torch.randn_like(x).contiguous(memory_format=CL)
    m, s, b, g = torch.randn(C), torch.rand(C), torch.randn(C), torch.rand(3, C)
    ops = torch.ops.effnet_train_triton
    for gate in (g, None):
        torch.library.opcheck(ops.bn_act_apply.default, (x, m, s, b, "silu", gate))
        torch.library.opcheck(ops.bn_act_backward.default, (x, dy, m, s, b, "relu6", gate))
    w, pads = torch.randn(C, 1, 3, 3), [0, 1, 0, 1]
    z = ops.dwconv_train(x, w, m, s, b, "silu", 2, pads)
    assert torch.equal(ops.dwconv_train(x, w, m, s, b, "swish", 2, pads), z)  # C++'s aliases
    with pytest.raises(ValueError, match="unknown activation"):
        ops.dwconv_train(x, w, m, s, b, "gelu", 2, pads)
    torch.library.opcheck(ops.dwconv_train.default, (x, w, m, s, b, "silu", 2, pads))
    torch.library.opcheck(ops.dwconv_train_backward.default,
                          (x, torch.randn_like(z).contiguous(memory_format=CL), w, m, s, b,
                           "silu", 2, pads))


@needs_kernel
@pytest.mark.parametrize("shape", [(2, C, 1, 1), (3, C, 13, 11), (2, 96, 70, 70)])
def test_batch_stats_kernel(shape):
    """The C++ statistics against float64 var_mean, also with |mean| ≫ std (the second pass
    is centred) and across several 4096-row tasks (70×70×2)."""
    z = (torch.randn(*shape) + 50.0 * torch.randn(shape[1]).view(1, -1, 1, 1)) \
        .contiguous(memory_format=CL)
    mean, var = T.batch_stats(z, backend="cpu")
    v, m = torch.var_mean(z.double(), dim=(0, 2, 3), correction=0)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean.double(), m, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var.double(), v, rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("shape", [(2, C, 1, 1), (3, C, 13, 11), (2, 96, 70, 70)])
@pytest.mark.parametrize("which", ["both", "dmean", "dvar"])
def test_batch_stats_backward_kernel(shape, which, cpu_isa):
    """The C++ backward of the statistics (each CPU ISA build) against autograd of float64
    var_mean, with both gradients or one of them absent; and opcheck."""
    z = (torch.randn(*shape) * 2 + 3).contiguous(memory_format=CL).requires_grad_()
    zd = z.detach().double().requires_grad_()
    c = shape[1]
    dm = torch.randn(c) if which != "dvar" else None
    dv = torch.randn(c) if which != "dmean" else None
    mean, var = T.batch_stats(z, backend="cpu")
    v, m = torch.var_mean(zd, dim=(0, 2, 3), correction=0)
    outs = [(o, g) for o, g in ((mean, dm), (var, dv)) if g is not None]
    outs64 = [(o, g.double()) for o, g in ((m, dm), (v, dv)) if g is not None]
    (got,) = torch.autograd.grad([o for o, _ in outs], [z], [g for _, g in outs])
    (want,) = torch.autograd.grad([o for o, _ in outs64], [zd], [g for _, g in outs64])
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=CL)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-5
    torch.library.opcheck(torch.ops.effnet.batch_stats_backward.default,
                          (z.detach(), mean.detach(), dm, dv))
    with pytest.raises(ValueError, match="float32"):
        torch.ops.effnet.batch_stats_backward(z.detach(), mean.detach(), torch.randn(c + 1), dv)


@needs_kernel
def test_backends_agree():
    """The same composition (BN statistics → pwconv with prologue and gate, pool, bn_act) on
    backend "cpu" (the kernels) and "torch" (ATen only), both against float64: every
    gradient within fp32 rounding (‖Δ‖ / ‖g‖)."""
    x = torch.randn(3, C, 13, 11).contiguous(memory_format=CL)
    m, s, b, g = torch.rand(C), torch.rand(C), torch.rand(C), torch.rand(3, C)
    wd, wp = torch.randn(C, 1, 3, 3), torch.randn(19, C)

    def grads(be, dtype):
        ins = [t.to(dtype).requires_grad_() for t in (x, m, s, b, g, wd, wp)]
        xx, mm, ss, bb, gg, wwd, wwp = ins
        z = T.dwconv(xx, wwd, mm, ss, bb, "silu", 2, (0, 1, 0, 1), backend=be)
        mean, var = T.batch_stats(z, backend=be)
        sc = torch.rsqrt(var + 1e-5)
        out = T.pwconv(z, wwp, mean, sc, bb, "relu6", gg, backend=be).sum() \
            + T.bn_act_pool(z, mean, sc, bb, "silu", backend=be).sum() \
            + T.bn_act(z, mean, sc, bb, "identity", backend=be).square().sum()
        return torch.autograd.grad(out, ins)

    ref = grads("torch", torch.float64)
    for be in ("cpu", "torch"):
        for i, (u, v) in enumerate(zip(grads(be, torch.float32), ref)):
            assert ((u.double() - v).norm() / v.norm()).item() < 1e-4, (be, i)
    with pytest.raises(RuntimeError, match="float32 CPU tensors"):
        T.bn_act(x.double().requires_grad_(), m.double(), s.double(), b.double(),
                 backend="cpu").sum().backward()


def _saved(fn):
    """The storages autograd saves while ``fn()`` runs: {data_ptr: bytes}."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def test_saves_inputs_only():
    """pwconv with BN + act + gate on load saves its input, its weight and small vectors,
    never the activated or gated tensor; dwconv likewise."""
    x = torch.randn(2, 64, 9, 9).contiguous(memory_format=CL).requires_grad_()
    m, s, b = (torch.randn(64, requires_grad=True) for _ in range(3))
    g = torch.rand(2, 64, requires_grad=True)
    wp = torch.randn(32, 64, requires_grad=True)
    wd = torch.randn(64, 1, 3, 3, requires_grad=True)
    for w, fn in ((wp, lambda: T.pwconv(x, wp, m, s, b, "silu", g)),
                  (wd, lambda: T.dwconv(x, wd, m, s, b, "silu", 1, (1, 1, 1, 1)))):
        saved = _saved(fn)
        big = {p: n for p, n in saved.items() if n > 1024}
        assert big == {x.untyped_storage().data_ptr(): x.numel() * 4,
                       w.untyped_storage().data_ptr(): w.numel() * 4}, saved


def test_errors():
    x = torch.randn(2, C, 5, 5).contiguous(memory_format=CL)
    v = torch.randn(C)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        T.batch_stats(torch.randn(1, C, 1, 1))
    with pytest.raises(ValueError, match="mean must be a float"):
        T.bn_act(x, torch.randn(C + 1), v, v)
    with pytest.raises(ValueError, match="unknown activation"):
        T.bn_act(x, v, v, v, "gelu")
    with pytest.raises(ValueError, match="all of mean, scale and beta"):
        T.pwconv(x, torch.randn(4, C), v, None, None, "silu")
    with pytest.raises(ValueError, match=r"weight must be \(37, 1, k, k\)"):
        T.dwconv(x, torch.randn(C, 1, 4, 4))
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        T.dwconv(x, torch.randn(C, 1, 3, 3), stride=3)
    with pytest.raises(ValueError, match="padding"):
        T.dwconv(x, torch.randn(C, 1, 3, 3), padding=(3, 0, 0, 0))
    with pytest.raises(ValueError, match="gate must be"):
        T.pwconv(x, torch.randn(4, C), gate=torch.rand(3, C))
    with pytest.raises(ValueError, match="x must be a 4-D"):
        T.pwconv(torch.randn(C, 5), torch.randn(4, C))
    with pytest.raises(ValueError, match="backend must be one of"):
        T.bn_act(x, v, v, v, backend="cuda")
    if "triton" in T.BACKENDS:
        with pytest.raises(RuntimeError, match="float32 / float16 / bfloat16"):
            T.bn_act(x.double(), v.double(), v.double(), v.double(), backend="triton")


# The fused depthwise kernels (effnet::dwconv_train / dwconv_train_backward): the DW_CASES plus
# C = 96 at 30×30 (channel blocks of 32, several rows per task, a stride-1 ring) and a stride-2
# 5×5 with a ReLU.
DW_KERNEL_CASES = DW_CASES + [(2, 30, 30, 1, 3, (1, 1, 1, 1), "silu"),
                              (2, 17, 19, 2, 5, (2, 2, 2, 2), "relu"),
                              # stride 1 with uneven padding: the backward's flipped-weight
                              # engine call pads by k - 1 - left / top (centred hides a mix-up)
                              (2, 9, 10, 1, 3, (0, 2, 2, 0), "silu"),
                              (1, 6, 4, 1, 5, (4, 0, 1, 3), "relu6")]


@needs_kernel
@pytest.mark.parametrize("bn", [True, False])
@pytest.mark.parametrize("n,h,w,stride,k,pads,act", DW_KERNEL_CASES)
def test_dwconv_kernel(n, h, w, stride, k, pads, act, bn, cpu_isa):
    """The fused C++ depthwise conv with its input's BN-act prologue (each CPU ISA build: the
    portable loops, the engine's AVX2 and AVX-512 row kernels) in float32 against the ATen
    composition in float64: z, and the gradients of x, the weight, mean, scale and beta."""
    c = 96 if h == 30 else C
    x = (torch.randn(n, c, h, w) * 3).contiguous(memory_format=CL).requires_grad_()
    wt = torch.randn(c, 1, k, k).requires_grad_()
    vecs = [v.requires_grad_() for v in (torch.randn(c), torch.rand(c) + 0.5, torch.randn(c))]
    ins = [x, wt] + (vecs if bn else [])
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    if not bn:
        vecs = [None] * 3
    assert T._dw_ops("cpu", x) is T._dw_ops("auto", x) is torch.ops.effnet
    out = T.dwconv(x, wt, *vecs, act, stride, pads, backend="cpu")
    ref = T.dwconv(*ins64[:2], *(ins64[2:] if bn else vecs), act, stride, pads, backend="torch")
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=CL)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
    dz = torch.randn(ref.shape, dtype=F64).contiguous(memory_format=CL)
    got = torch.autograd.grad(out, ins, dz.float())
    want = torch.autograd.grad(ref, ins64, dz)
    for i, (u, v) in enumerate(zip(got, want)):
        assert u.dtype == torch.float32, i
        assert ((u.double() - v).norm() / v.norm()).item() < 1e-5, i
    assert got[0].is_contiguous(memory_format=CL)


@needs_kernel
@pytest.mark.parametrize("c", [5, 48, 130])
def test_dwconv_kernel_channels(c, cpu_isa):
    """Channel counts around the vector widths: below 8 (no AVX2 prologue step), a multiple of
    16 without a tail, and past 64 + 32-channel blocks with a short tail; stride 1 and 2."""
    for stride, pads in ((1, (1, 1, 1, 1)), (2, (0, 1, 0, 1))):
        x = (torch.randn(2, c, 11, 9) * 3).contiguous(memory_format=CL).requires_grad_()
        wt = torch.randn(c, 1, 3, 3).requires_grad_()
        vecs = [v.requires_grad_() for v in (torch.randn(c), torch.rand(c) + 0.5,
                                              torch.randn(c))]
        ins = [x, wt, *vecs]
        ins64 = [t.detach().double().requires_grad_() for t in ins]
        out = T.dwconv(x, wt, *vecs, "silu", stride, pads, backend="cpu")
        ref = T.dwconv(*ins64, "silu", stride, pads, backend="torch")
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
        dz = torch.randn(ref.shape, dtype=F64).contiguous(memory_format=CL)
        for i, (u, v) in enumerate(zip(torch.autograd.grad(out, ins, dz.float()),
                                       torch.autograd.grad(ref, ins64, dz))):
            assert ((u.double() - v).norm() / v.norm()).item() < 1e-5, (stride, i)


@needs_kernel
@pytest.mark.parametrize("n,h,w,stride,k,pads,act", DW_CASES)
def test_dwconv_kernel_gradcheck(n, h, w, stride, k, pads, act, cpu_isa):
    """float64 gradcheck of the fused kernels themselves (backend "cpu" runs them in float64)."""
    x, wt = x4(n, C, h, w, scale=3.0), vec(C * k * k).detach().view(C, 1, k, k).requires_grad_()
    m, s, b = bn_vecs()
    assert T._dw_ops("cpu", x) is torch.ops.effnet and T._dw_ops("auto", x) is None
    gradcheck(lambda *a: T.dwconv(*a, act, stride, pads, backend="cpu"), (x, wt, m, s, b))
    gradcheck(lambda x, wt: T.dwconv(x, wt, stride=stride, padding=pads, backend="cpu"), (x, wt))


@needs_kernel
def test_dwconv_kernel_opcheck_and_errors():
    ops = torch.ops.effnet
    x = torch.randn(3, C, 13, 11).contiguous(memory_format=CL)
    wt, m, s, b = torch.randn(C, 1, 5, 5), torch.randn(C), torch.rand(C) + 0.5, torch.randn(C)
    pads = [1, 2, 1, 2]
    z = ops.dwconv_train(x, wt, m, s, b, "silu", 2, pads)
    dz = torch.randn_like(z).contiguous(memory_format=CL)
    torch.library.opcheck(ops.dwconv_train.default, (x, wt, m, s, b, "silu", 2, pads))
    torch.library.opcheck(ops.dwconv_train.default, (x, wt, None, None, None, "identity", 1,
                                                      [2, 2, 2, 2]))
    torch.library.opcheck(ops.dwconv_train_backward.default,
                          (x, dz, wt, m, s, b, "silu", 2, pads))
    with pytest.raises(ValueError, match="dz must be"):
        ops.dwconv_train_backward(x, dz[:, :, 1:], wt, m, s, b, "silu", 2, pads)
    with pytest.raises(ValueError, match="dz must be"):
        ops.dwconv_train_backward(x, dz.double(), wt, m, s, b, "silu", 2, pads)
    with pytest.raises(ValueError, match="channels_last"):
        ops.dwconv_train(x.contiguous(), wt, m, s, b, "silu", 2, pads)
    with pytest.raises(ValueError, match="all of mean"):
        ops.dwconv_train(x, wt, m, None, b, "silu", 2, pads)
    with pytest.raises(ValueError, match="padding"):
        ops.dwconv_train(x, wt, m, s, b, "silu", 2, [1, 5, 1, 2])
    with pytest.raises(ValueError, match="unknown activation"):
        ops.dwconv_train(x, wt, m, s, b, "gelu", 2, pads)
    with pytest.raises(RuntimeError, match="float32"):
        T.dwconv(x.bfloat16(), wt, m, s, b, "silu", 2, pads, backend="cpu")
    # no BN prologue: what the kernels cannot take falls back to ATen, as the other ops do
    xb = x.bfloat16()
    torch.testing.assert_close(T.dwconv(xb, wt, stride=2, padding=pads, backend="cpu"),
                               T.dwconv(xb, wt, stride=2, padding=pads, backend="torch"))
