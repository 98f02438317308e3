"""Shared test helpers: skip markers, error measures, input factories and the checks of each op's
output against effnet_kernels.reference (docs/ARCHITECTURE.md, "Numerics").

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path; conftest.py has already
put this tree first on sys.path and set TRITON_INTERPRET=1 when there is no GPU).

Float inputs reach every activation's clamps: ``make_x`` scales channel c by GAINS[c % 4], so
the pre-activations of bias_act, dwconv_bias_act and pointwise_conv cross 0 and 6 both ways
(the checks assert it for ReLU6 wherever an output has enough values to tell)."""

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference, registry
from effnet_kernels.quant import sqnr_db  # noqa: F401  (re-exported: the one SQNR of the suite)

HAS_GPU = torch.cuda.is_available()
DEV = "cuda" if HAS_GPU else "cpu"  # where the Triton tests run (interpreter on the CPU)
CL = torch.channels_last
ACTS = ["silu", "relu6", "relu", "identity"]
# Per-channel gains of make_x: small, unit, and large enough to push pre-activations past ±6.
GAINS = (0.5, 1.0, 3.0, 6.0)
# Outputs with at least this many values must reach ReLU6's two clamps (0 and 6).
CLAMP_CHECK_MIN_VALUES = 256

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason=f"effnet_kernels._C not built: {ops.extension_error()}")
needs_triton = pytest.mark.skipif(not registry.triton_importable(),
                                  reason="triton is not importable")
needs_cuda = pytest.mark.cuda  # conftest.py skips these without a visible GPU
needs_cuda_kernels = pytest.mark.skipif(
    not ops.cuda_kernels_built(),
    reason="effnet_kernels._C was built without its CUDA sources (EFFNET_CUDA=0 or no nvcc)")


# ------------------------------------------------------------------------------ error measures
def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (docs/ARCHITECTURE.md, "Numerics")."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close_to_ref(out, ref64, inputs_lowp_ref, dtype):
    """fp32: rel ≤ 1e-5. fp16/bf16: error ≤ 2 × the error of PyTorch's own eager op computed in
    that dtype (``inputs_lowp_ref``), with a floor at half an ulp of the dtype (flash-attention's
    rule), in norm and in max-abs. Never NaN."""
    assert not torch.isnan(out).any(), "output has NaN (unwritten or bad math)"
    assert out.dtype == dtype
    if dtype == torch.float32:
        assert rel_err(out, ref64) <= 1e-5, rel_err(out, ref64)
        return
    torch_err = rel_err(inputs_lowp_ref, ref64)
    floor = torch.finfo(dtype).eps / 2
    assert rel_err(out, ref64) <= 2 * max(torch_err, floor), (rel_err(out, ref64), torch_err)
    max_torch = (inputs_lowp_ref.double() - ref64).abs().max().item()
    max_ours = (out.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item()
    assert max_ours <= 2 * max(max_torch, floor * scale), (max_ours, max_torch)


def assert_pool_close(pool, ref, lowp_ref=None, dtype=torch.float32):
    """A float32 pool (of float32 activations): rel ≤ 1e-5; from fp16/bf16 inputs, 2 × the error
    of eager's pool ``lowp_ref`` (floor: half an ulp of ``dtype``), in norm and in max-abs."""
    pool = pool.cpu()
    assert pool.dtype == torch.float32 and pool.shape == ref.shape, (pool.dtype, pool.shape)
    assert not torch.isnan(pool).any(), "pool has NaN (unwritten)"
    if dtype == torch.float32:
        assert rel_err(pool, ref) <= 1e-5, rel_err(pool, ref)
        return
    floor = torch.finfo(dtype).eps / 2
    assert rel_err(pool, ref) <= 2 * max(rel_err(lowp_ref, ref), floor), (
        rel_err(pool, ref), rel_err(lowp_ref, ref))
    max_ours = (pool.double() - ref).abs().max().item()
    max_torch = (lowp_ref.double() - ref).abs().max().item()
    assert max_ours <= 2 * max(max_torch, floor * ref.abs().max().item()), (max_ours, max_torch)


def assert_reaches_clamps(ref: torch.Tensor, act: str) -> None:
    """For ReLU6, the reference output of a test hits both clamps (0 and 6) and lies strictly
    between them too, when it has enough values to tell: else the clamps go untested."""
    if act != "relu6" or ref.numel() < CLAMP_CHECK_MIN_VALUES:
        return
    assert (ref == 0).any() and (ref == 6).any() and ((ref > 0) & (ref < 6)).any(), \
        "test data do not reach ReLU6's clamps"


def _d(t):
    """float64 CPU copy (None stays None): the reference's input."""
    return None if t is None else t.cpu().double()


def _cpu(t):
    return t.cpu() if isinstance(t, torch.Tensor) else t


# ------------------------------------------------------------------------ eager yardsticks
def eager_act(v, act):
    return {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)


def eager_lowp_bias_act(x, b, act):
    """PyTorch's eager ops in x's dtype: the yardstick for fp16/bf16 tolerances."""
    return eager_act(x + b.view(1, -1, 1, 1), act)


def eager_lowp_dw(x, w, b, s, pad, act):
    """Eager (y, float32 pool) in x's dtype."""
    pads = reference.normalize_padding(pad, w.shape[-1])
    v = eager_act(F.conv2d(F.pad(x, pads), w, b, stride=s, groups=x.shape[1]), act)
    return v, v.float().mean((2, 3))


def eager_lowp_pw(x, w, b, act, gate, res, pool_only):
    """Eager pointwise_conv in x's dtype (the float32 pool when ``pool_only``)."""
    xs = x * gate[:, :, None, None].to(x.dtype) if gate is not None else x
    v = eager_act(F.conv2d(xs, w.reshape(w.shape[0], -1, 1, 1), b), act)
    if res is not None:
        v = v + res
    return v.float().mean((2, 3)) if pool_only else v


# ------------------------------------------------------------------------------- factories
def make_x(shape, dtype=torch.float32, g=None):
    """randn x (channels_last when 4-D) with channel c scaled by GAINS[c % 4]."""
    x = torch.randn(shape, generator=g)
    gain = torch.tensor(GAINS).repeat(shape[1] // len(GAINS) + 1)[:shape[1]]
    x = (x * gain.view(1, -1, *[1] * (len(shape) - 2))).to(dtype)
    return x.contiguous(memory_format=CL) if x.dim() == 4 else x


def make_bias_act(shape, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = make_x(shape, dtype, g)
    b = (torch.randn(shape[1], generator=g) * 2).to(dtype)
    return x.to(device), b.to(device)


def make_dw(case, dtype=torch.float32, device="cpu", seed=0):
    """(x, w, b, stride, padding) of dwconv case (N, C, H, W, k, stride, padding)."""
    N, C, H, W, k, s, pad = case
    g = torch.Generator().manual_seed(seed)
    x = make_x((N, C, H, W), dtype, g)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    return x.to(device), w.to(device), b.to(device), s, pad


def make_pw(case, dtype=torch.float32, device="cpu", seed=0):
    """(x, w, b, gate, residual, pool_only) of case (N, Cin, Cout, H, W, gate, residual,
    pool_only): gate in (0, 1) when asked, else None; residual likewise."""
    N, Cin, Cout, H, W, has_gate, has_res, pool_only = case
    g = torch.Generator().manual_seed(seed)
    x = make_x((N, Cin, H, W), dtype, g)
    w = (torch.randn(Cout, Cin, generator=g) / Cin ** 0.5).to(dtype)
    b = torch.randn(Cout, generator=g).to(dtype)
    gate = torch.rand(N, Cin, generator=g) if has_gate else None
    res = (torch.randn(N, Cout, H, W, generator=g).to(dtype).contiguous(memory_format=CL)
           if has_res else None)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return mv(x), mv(w), mv(b), mv(gate), mv(res), pool_only


def make_se(N, C, S, dtype=torch.float32, device="cpu", seed=0):
    """[pooled (float32), w1, b1, w2, b2 (dtype)] of se_gate."""
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(N, C, generator=g)
    w1 = (torch.randn(S, C, generator=g) / C ** 0.5).to(dtype)
    b1 = torch.randn(S, generator=g).to(dtype)
    w2 = (torch.randn(C, S, generator=g) / S ** 0.5).to(dtype)
    b2 = torch.randn(C, generator=g).to(dtype)
    return [t.to(device) for t in (pooled, w1, b1, w2, b2)]


def differing_samples(n, h, w, seed=1, c=3):
    """Random images whose samples differ strongly (each its own contrast, brightness and
    per-channel offset), so their SE pools and gates differ: a gate or pool taken from the wrong
    sample shows in a whole-model test's output."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 2.0, n).view(n, 1, 1, 1) if n > 1 else torch.ones(1, 1, 1, 1)
    shift = torch.linspace(-1.0, 1.0, n).view(n, 1, 1, 1) if n > 1 else torch.zeros(1, 1, 1, 1)
    offset = torch.randn(n, c, 1, 1, generator=g) * 0.5
    return torch.randn(n, c, h, w, generator=g) * scale + shift + offset


# ---------------------------------------------------------------------------------- checks
def check_bias_act(backend, shape, dtype, act, device="cpu"):
    """Runs ops.bias_act on make_bias_act's inputs and checks it against the reference."""
    x, b = make_bias_act(shape, dtype, device)
    y = ops.bias_act(x, b, act, backend=backend)
    assert y.shape == x.shape and y.device == x.device
    assert y.is_contiguous(memory_format=CL)
    ref = reference.bias_act(_d(x), _d(b), act)
    assert_reaches_clamps(ref, act)
    assert_close_to_ref(y.cpu(), ref, eager_lowp_bias_act(x, b, act).cpu(), dtype)


def check_dw_out(y, pool, x, w, b, s, pad, act="silu"):
    """dwconv_bias_act's (y, pool) against the float64 reference: y as assert_close_to_ref in
    x's dtype, the pool (of the float32 activations, before y's rounding; None: not checked) at
    fp32 accuracy."""
    ref_y, ref_pool = reference.dwconv_bias_act(_d(x), _d(w), _d(b), s, pad, act, True)
    assert y.shape == ref_y.shape and y.device == x.device
    assert y.is_contiguous(memory_format=CL)
    assert_reaches_clamps(ref_y, act)
    low_y, _ = eager_lowp_dw(x.cpu(), w.cpu(), b.cpu(), s, pad, act)
    assert_close_to_ref(y.cpu(), ref_y, low_y, x.dtype)
    if pool is not None:
        assert_pool_close(pool, ref_pool)


def check_dw(backend, case, dtype, act, return_pool, device="cpu"):
    x, w, b, s, pad = make_dw(case, dtype, device)
    out = ops.dwconv_bias_act(x, w, b, s, pad, act, return_pool, backend=backend)
    y, pool = out if return_pool else (out, None)
    check_dw_out(y, pool, x, w, b, s, pad, act)


def check_pw_out(out, x, w, b, act, gate, res, pool_only):
    """pointwise_conv's output against the float64 reference: y as assert_close_to_ref in x's
    dtype; the float32 pool at fp32 accuracy, or 2 × eager's error for fp16/bf16 inputs."""
    ref = reference.pointwise_conv(_d(x), _d(w), _d(b), act, _d(gate), _d(res), pool_only)
    assert out.shape == ref.shape and out.device == x.device
    c = lambda t: None if t is None else t.cpu()  # noqa: E731
    low = eager_lowp_pw(x.cpu(), w.cpu(), b.cpu(), act, c(gate), c(res), pool_only)
    if pool_only:
        assert_pool_close(out, ref, low, x.dtype)
        return
    assert out.is_contiguous(memory_format=CL)
    if res is None:
        assert_reaches_clamps(ref, act)
    assert_close_to_ref(out.cpu(), ref, low, x.dtype)


def check_pw(backend, case, dtype, act, device="cpu"):
    x, w, b, gate, res, pool_only = make_pw(case, dtype, device)
    out = ops.pointwise_conv(x, w, b, act, gate, res, pool_only, backend=backend)
    check_pw_out(out, x, w, b, act, gate, res, pool_only)
    return out


def check_se_out(gate, pooled, w1, b1, w2, b2):
    """se_gate's float32 gate: float32 math whatever the weight dtype (the weights were rounded
    before the float64 reference saw them), so fp32 accuracy, in norm and in max-abs."""
    ref = reference.se_gate(*(_d(t) for t in (pooled, w1, b1, w2, b2)))
    assert gate.shape == ref.shape and gate.dtype == torch.float32 and gate.device == pooled.device
    assert not torch.isnan(gate).any()
    assert rel_err(gate.cpu(), ref) <= 1e-5, rel_err(gate.cpu(), ref)
    assert (gate.cpu().double() - ref).abs().max().item() <= 1e-5


def check_se(backend, N, C, S, dtype, device="cpu"):
    args = make_se(N, C, S, dtype, device)
    check_se_out(ops.se_gate(*args, backend=backend), *args)


# -------------------------------------------------------------------------------------- INT8
def q8(shape, g, lo=-128, hi=127):
    """Uniform int8 in [lo, hi] (channels_last when 4-D)."""
    q = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)
    return q.contiguous(memory_format=CL) if q.dim() == 4 else q


def make_dw_int8(case, g, device="cpu", gain=3.0, bias_shift=0.0, bias_scale=1.0):
    """(x, w, scale, bias, stride, pads) of dwconv_int8 case (N, C, H, W, k, stride, padding):
    int8 x and weight, scale sized so the act's inputs are O(gain)."""
    N, C, H, W, k, s, pad = case
    x = q8((N, C, H, W), g)
    w = q8((C, 1, k, k), g, lo=-127)
    scale = (torch.rand(C, generator=g) + 0.5) * gain / (k * 74 * 73)
    bias = torch.randn(C, generator=g) * bias_scale + bias_shift
    pads = list(reference.normalize_padding(pad, k))
    return x.to(device), w.to(device), scale.to(device), bias.to(device), s, pads


def assert_int8_close(y, ref, act, exact_unless_silu=True, min_levels=0):
    """int8 ``y`` against the integer reference: dtype, shape, channels_last when 4-D, at most 1
    LSB off, and such flips rare (≤ max(1, 1e-3 of the values)). ``exact_unless_silu``: bit-exact
    without SiLU (whose exp may differ from torch's in the last ulp). ``min_levels``: the
    reference must spread over that many levels, or the comparison proves little."""
    y = y.cpu()
    assert y.dtype == torch.int8 and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    if y.dim() == 4:
        assert y.is_contiguous(memory_format=CL)
    assert ref.unique().numel() >= min_levels, "test data too narrow: the reference hardly varies"
    d = (y.int() - ref.int()).abs()
    if exact_unless_silu and act != "silu":
        assert d.max().item() == 0, f"{int((d > 0).sum())} of {y.numel()} values differ " \
                                    f"(max {d.max().item()} LSB)"
        return
    assert d.max().item() <= 1, f"max |y - ref| = {d.max().item()} LSB"
    flips = int((d > 0).sum())
    assert flips <= max(1, 1e-3 * y.numel()), f"{flips} of {y.numel()} values off by 1 LSB"


def assert_cpu_kernel_from(op: str, source: str) -> None:
    """effnet::<op>'s CPU kernel is the C++ one registered in ``source`` (libtorch users get
    it), not a Python registration."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"effnet::{op}", "CPU")
    dump = torch._C._dispatch_dump(f"effnet::{op}")
    cpu = [line for line in dump.splitlines() if line.startswith("CPU")]
    assert len(cpu) == 1 and source in cpu[0], dump
