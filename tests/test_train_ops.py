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
    mean, var = T.batch_stats(z)
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
        cases = [(ops.bn_act.default, (x, m, s, b, "silu", None)),
                 (ops.bn_act.default, (x, m, s, b, "relu6", x.detach().clone())),
                 (ops.bn_act_pool.default, (x, m, s, b, "silu")),
                 (ops.dwconv.default, (x, wd, m, s, b, "silu", 2,
                                       [0, 1, 0, 1] if h > 1 else [1] * 4)),
                 (ops.dwconv.default, (x, wd, None, None, None, "identity", 1, [1, 1, 1, 1])),
                 (ops.pwconv.default, (x, wp, m, s, b, "silu", g)),
                 (ops.pwconv.default, (x, wp, None, None, None, "identity", None)),
                 (ops.se_gate.default, (g, torch.randn(5, C, requires_grad=True),
                                        torch.randn(5, requires_grad=True),
                                        torch.randn(C, 5, requires_grad=True),
                                        torch.randn(C, requires_grad=True)))]
        if n * h * w > 1:
            cases.append((ops.batch_stats.default, (x,)))
        for op, args in cases:
            torch.library.opcheck(op, args)


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
