"""The CUDA kernel bodies run on the CPU: each kernel's __host__ __device__ body (dwconv float,
dwconv_int8, bias_act, se_gate and the shared pool finalize) compiled by g++ and run over its
launch grid by csrc/common/emu.h, block by block, phase by phase (the __syncthreads), shared
memory filled with garbage before each block, the 32 lanes of a warp in lock-step at each warp
shuffle. The launch plans and path choices are the CUDA launchers' own (shared headers); outputs
are poisoned (NaN, int8 0x55) before each run. Checked against effnet_kernels.reference on the
odd shapes of DESIGN §4, each kernel forced through every path: fast/generic, vector/scalar, one
band / several bands (an sm_count argument), aligned and unaligned views, grid-stride loops
walked more than once (a block cap). This checks the indexing, tiling, staging and reduction
logic of the CUDA kernels without a GPU; it says nothing about timing or the device compiler.
"""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference
from helpers import assert_close_to_ref, rel_err
from test_dwconv_int8 import CASES as INT8_CASES
from test_dwconv_int8 import assert_matches, make as make_int8

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ops.extension_available(),
                       reason=f"effnet_kernels._C not built: {ops.extension_error()}"),
]

ROOT = Path(__file__).resolve().parents[1]
ACTS = ["silu", "relu6", "relu", "identity"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMS = 132   # an H100's SMs: several bands when N * chunks is small
ONE_BAND = 0  # sm_count 0: the plan asks for no extra blocks, so one band per sample

# --------------------------------------------------------------------------------- C++ harnesses

PRELUDE = r"""
#include <torch/extension.h>
#include <cmath>
#include <vector>
#include "common/emu.h"
#include "common/dispatch.h"
using namespace effnet;
"""

DWCONV_SOURCE = PRELUDE + r"""
#include "dwconv/dwconv_cuda_kernel.cuh"

template <typename T, typename C>
void run_grid(const DwPlan& p, const DwArgs<T>& a) {
  using B = DwBlock<T, C::K, C::S, C::VEC, C::TW, C::A>;
  const bool pool = a.pool_out != nullptr;
  const int nt = p.CT * p.RW;
  emu::for_blocks(p.s.N * p.bands * p.chunks, dw_smem_bytes<C::K, C::VEC>(p, pool),
                  [&](int64_t bid, void* smem) {
    const auto m = B::carve(p, static_cast<float*>(smem));
    if constexpr (C::K > 0) emu::for_threads(nt, [&](int t) { B::stage(p, a, m, bid, t, nt); });
    emu::for_threads(nt, [&](int t) { B::compute(p, a, m, bid, t % p.CT, t / p.CT); });
    if (pool) emu::for_threads(nt, [&](int t) { B::reduce(p, a, m, bid, t, nt); });
  });
}

// dwconv_bias_act_cuda() with the grids run by the emulator. Returns y, pool, (fast, bands).
std::vector<torch::Tensor> dwconv(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                  int64_t stride, std::vector<int64_t> padding, std::string act,
                                  bool return_pool, int64_t sm_count, bool allow_fast,
                                  int64_t pool_blocks) {
  const DwShape s = check_dwconv_args(x, weight, bias, stride, padding);
  const Act ac = parse_act(act);
  auto w = weight.contiguous(), b = bias.contiguous();
  auto y = torch::full({s.N, s.C, s.Ho, s.Wo}, NAN, x.options())
               .contiguous(at::MemoryFormat::ChannelsLast);
  const DwPlan p = make_dw_plan(s, x.element_size(), x.data_ptr(), sm_count, allow_fast);
  PoolWorkspace ws = make_pool_workspace(return_pool, s.N, s.C, p.bands, s.Ho * s.Wo,
                                         x.options().dtype(at::kFloat));
  ws.pool.fill_(NAN);
  if (ws.partial.defined()) ws.partial.fill_(NAN);
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "emu_dwconv", [&] {
    const DwArgs<scalar_t> a{x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                             b.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ws.out};
    dispatch_dwconv<scalar_t>(p, ac, [&](auto cfg) { run_grid<scalar_t, decltype(cfg)>(p, a); });
  });
  emu::finalize_pool(ws, pool_blocks);
  return {y, ws.pool, torch::tensor({static_cast<int64_t>(p.fast), p.bands})};
}
"""

INT8_SOURCE = PRELUDE + r"""
#include "dwconv_int8/dwconv_int8_kernel.cuh"

template <typename C>
void run_grid(const qdw::Plan& p, const qdw::Args& a) {
  using B = qdw::Block<C::K, C::S, C::VEC, C::A>;
  const bool pool = a.pool_out != nullptr;
  const int nt = p.CT * p.RW;
  emu::for_blocks(p.s.N * p.bands * p.chunks, 4 * qdw::smem_words(p, pool),
                  [&](int64_t bid, void* smem) {
    const auto m = B::carve(p, static_cast<int32_t*>(smem), pool);
    emu::for_threads(nt, [&](int t) { B::stage(p, a, m, bid, t, nt); });
    emu::for_threads(nt, [&](int t) { B::compute(p, a, m, bid, t % p.CT, t / p.CT); });
    if (pool) emu::for_threads(nt, [&](int t) { B::reduce(p, a, m, bid, t, nt); });
  });
}

// dwconv_int8_cuda() with the grids run by the emulator; y pre-filled with 0x55, pool with NaN.
// `vec_cap` forces the narrower paths. Returns y, pool, (vec, bands).
std::vector<torch::Tensor> dwconv_int8(torch::Tensor x, torch::Tensor weight, torch::Tensor scale,
                                       torch::Tensor bias, int64_t stride,
                                       std::vector<int64_t> padding, int64_t in_zp, double inv,
                                       int64_t out_zp, std::string act, bool return_pool,
                                       int64_t sm_count, int64_t vec_cap) {
  const QDwShape s = check_dwconv_int8_args(x, weight, scale, bias, stride, padding, in_zp, inv,
                                            out_zp);
  const Act ac = parse_act(act);
  auto w = weight.contiguous(), sc = scale.contiguous(), b = bias.contiguous();
  auto y = torch::full({s.N, s.C, s.Ho, s.Wo}, 0x55, x.options())
               .contiguous(at::MemoryFormat::ChannelsLast);
  const qdw::Plan p = qdw::make_plan(s, x.data_ptr(), y.data_ptr(), sm_count, vec_cap);
  PoolWorkspace ws = make_pool_workspace(return_pool, s.N, s.C, p.bands, s.Ho * s.Wo,
                                         x.options().dtype(at::kFloat));
  ws.pool.fill_(NAN);
  if (ws.partial.defined()) ws.partial.fill_(NAN);
  const qdw::Args a{x.data_ptr<int8_t>(), w.data_ptr<int8_t>(), sc.data_ptr<float>(),
                    b.data_ptr<float>(), y.data_ptr<int8_t>(), ws.out};
  const auto run = [&](auto cfg) { run_grid<decltype(cfg)>(p, a); };
  if (p.vec == 1) qdw::dispatch_generic(ac, run);
  else if (s.k == 3) qdw::dispatch_fast<3>(p, ac, run);
  else qdw::dispatch_fast<5>(p, ac, run);
  emu::finalize_pool(ws);
  return {y, ws.pool, torch::tensor({static_cast<int64_t>(p.vec), p.bands})};
}
"""

BIAS_ACT_SOURCE = PRELUDE + r"""
#include "bias_act/bias_act.h"
#include "bias_act/bias_act_cuda_kernel.cuh"

// bias_act_cuda() with the grid run by the emulator (at most `max_blocks` blocks); `allow_vec`
// false forces the scalar path. Returns y, (vector path taken).
std::vector<torch::Tensor> bias_act(torch::Tensor x, torch::Tensor bias, std::string act,
                                    bool allow_vec, int64_t max_blocks) {
  check_bias_act_args(x, bias);
  const Act ac = parse_act(act);
  auto b = bias.contiguous();
  auto y = torch::full(x.sizes(), NAN, x.options()).contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t C = x.size(1), numel = x.numel();
  bool vec_ok = false;
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "emu_bias_act", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* bp = b.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    vec_ok = allow_vec && bias_act_vector_ok(C, xp, bp);
    dispatch_act(ac, [&](auto act_c) {
      constexpr Act A = decltype(act_c)::value;
      const auto run = [&](auto vec_c) {
        constexpr int VEC = decltype(vec_c)::value;
        const int64_t packs = numel / VEC;
        emu::grid_stride(grid_for(packs, kBiasActThreads, max_blocks), kBiasActThreads,
                         [&](int64_t first, int64_t step) {
                           bias_act_thread<T, A, VEC>(xp, bp, yp, packs, C, first, step);
                         });
      };
      if (vec_ok) run(std::integral_constant<int, bias_act_vec<T>()>{});
      else run(std::integral_constant<int, 1>{});
    });
  });
  return {y, torch::tensor({static_cast<int64_t>(vec_ok)})};
}
"""

SE_SOURCE = PRELUDE + r"""
#include "se/se.h"
#include "se/se_cuda_kernel.cuh"

// se_gate_cuda() with the grid run by the emulator: one block of kSeThreads per sample.
torch::Tensor se_gate(torch::Tensor pooled, torch::Tensor w1, torch::Tensor b1, torch::Tensor w2,
                      torch::Tensor b2) {
  const SeShape s = check_se_args(pooled, w1, b1, w2, b2);
  auto gate = torch::full({s.N, s.C}, NAN, pooled.options());
  auto p = pooled.contiguous();
  EFFNET_DISPATCH_FLOAT_TYPES(w1.scalar_type(), "emu_se_gate", [&] {
    using B = SeBlock<scalar_t>;
    auto w1c = w1.contiguous(), b1c = b1.contiguous(), w2c = w2.contiguous(),
         b2c = b2.contiguous();
    const scalar_t *w1p = w1c.data_ptr<scalar_t>(), *b1p = b1c.data_ptr<scalar_t>(),
                   *w2p = w2c.data_ptr<scalar_t>(), *b2p = b2c.data_ptr<scalar_t>();
    const float* pp = p.data_ptr<float>();
    float* gp = gate.data_ptr<float>();
    const int nt = kSeThreads;
    emu::for_blocks(s.N, se_smem_bytes(s.C, s.S), [&](int64_t n, void* smem) {
      float* ps = static_cast<float*>(smem);
      float* h = ps + s.C;
      emu::for_threads(nt, [&](int t) { B::load(pp, ps, n, s.C, t, nt); });
      emu::for_warps_lockstep(nt, [&](int t) { B::hidden(w1p, b1p, ps, h, s.C, s.S, t, nt); });
      emu::for_threads(nt, [&](int t) { B::gates(w2p, b2p, h, gp, n, s.C, s.S, t, nt); });
    });
  });
  return gate;
}
"""


def _cuda_include():
    from torch.utils import cpp_extension
    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "include" / "vector_types.h").is_file():
            return str(Path(home) / "include")
    return None


def _build(name, source, function):
    inc = _cuda_include()
    if inc is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("needs a C++ compiler and the CUDA headers (vector_types.h)")
    from torch.utils.cpp_extension import load_inline
    # load_inline rebuilds when its source text changes, not when a header does: stamp the source
    # with a digest of the headers under csrc/ so that an edited kernel body is recompiled.
    digest = hashlib.sha256()
    for h in sorted((ROOT / "csrc").rglob("*")):
        if h.suffix in (".h", ".cuh"):
            digest.update(h.read_bytes())
    source += f"\n// csrc headers: {digest.hexdigest()}\n"
    # -ffp-contract=off: the host twins must not fuse multiply-adds the kernel keeps apart.
    module = load_inline(name, cpp_sources=[source], functions=[function],
                         extra_include_paths=[str(ROOT / "csrc"), inc],
                         extra_cflags=["-O1", "-std=c++20", "-ffp-contract=off"], verbose=False)
    return getattr(module, function)


@pytest.fixture(scope="session")
def emu_dwconv():
    return _build("effnet_emu_dwconv", DWCONV_SOURCE, "dwconv")


@pytest.fixture(scope="session")
def emu_int8():
    return _build("effnet_emu_dwconv_int8", INT8_SOURCE, "dwconv_int8")


@pytest.fixture(scope="session")
def emu_bias_act():
    return _build("effnet_emu_bias_act", BIAS_ACT_SOURCE, "bias_act")


@pytest.fixture(scope="session")
def emu_se():
    return _build("effnet_emu_se_gate", SE_SOURCE, "se_gate")


def _ids(cases):
    return ["x".join(map(str, c)).replace(" ", "") for c in cases]


def _offset_view(t, elems):
    """A channels_last copy of t whose data starts `elems` elements past a 16-byte boundary."""
    N, C, H, W = t.shape
    base = torch.empty(64 + t.numel(), dtype=t.dtype)
    start = (-base.data_ptr() // t.element_size()) % (16 // t.element_size()) + elems
    v = base[start:start + t.numel()].view(N, H, W, C).permute(0, 3, 1, 2)
    v.copy_(t)
    assert v.is_contiguous(memory_format=torch.channels_last)
    assert (v.data_ptr() % 16 == 0) == (elems * t.element_size() % 16 == 0)
    return v


# ---------------------------------------------------------------------------- dwconv_bias_act

# (N, C, H, W, k, stride, padding): C = 37, 61 (generic: odd), 1152 and others (fast), H = W = 1,
# 7, 13, batch 1 and 3, stride 2 on odd sizes, asymmetric paddings, k = 7 (generic).
DW_CASES = [
    (1, 37, 13, 13, 3, 1, None),
    (3, 61, 7, 7, 5, 2, (1, 2, 2, 1)),
    (3, 1152, 7, 7, 5, 1, None),
    (1, 1152, 13, 13, 3, 2, (0, 1, 0, 1)),
    (3, 32, 1, 1, 3, 1, None),
    (1, 37, 1, 1, 5, 2, (2, 2, 2, 2)),
    (3, 64, 13, 13, 3, 2, (0, 1, 0, 1)),
    (1, 40, 9, 13, 5, 2, (2, 2, 2, 2)),
    (2, 24, 7, 5, 3, 1, (2, 0, 1, 2)),
    (1, 16, 13, 11, 5, 1, (0, 4, 4, 0)),
    (2, 48, 13, 11, 7, 1, (3, 3, 3, 3)),
]


def _dw_make(case, dtype, seed=0):
    N, C, H, W, k, s, pad = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(C, generator=g).to(dtype)
    return x, w, b, s, list(reference.normalize_padding(pad, k))


def _dw_refs(x, w, b, s, pads, act):
    """The float64 reference (y, pool) and PyTorch's eager y in x's dtype (the fp16/bf16
    yardstick of assert_close_to_ref)."""
    ref_y, ref_pool = reference.dwconv_bias_act(x.double(), w.double(), b.double(), s, pads, act,
                                                True)
    low = None
    if x.dtype != torch.float32:
        low = F.conv2d(F.pad(x, pads), w, b, stride=s, groups=x.shape[1])
        low = {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](low)
    return ref_y, ref_pool, low


def _dw_check(emu, x, w, b, s, pads, act, return_pool, sms, allow_fast, pool_blocks=1 << 16,
              refs=None):
    y, pool, info = emu(x, w, b, s, pads, act, return_pool, sms, allow_fast, pool_blocks)
    ref_y, ref_pool, low = refs or _dw_refs(x, w, b, s, pads, act)
    assert y.shape == ref_y.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_ref(y, ref_y, low, x.dtype)
    if return_pool:
        assert not torch.isnan(pool).any(), "pool has NaN (unwritten)"
        assert rel_err(pool, ref_pool) <= 1e-5, rel_err(pool, ref_pool)
    else:
        assert pool.shape == (0,)
    return bool(info[0]), int(info[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DW_CASES, ids=_ids(DW_CASES))
def test_dwconv(emu_dwconv, case, dtype):
    """Every act; pool on/off; several bands and one band; fast path (where the shape allows it)
    and the generic path forced; the finalize's grid-stride loop walked with 1 block."""
    x, w, b, s, pads = _dw_make(case, dtype)
    fast_possible = case[4] in (3, 5) and case[1] % (16 // x.element_size()) == 0
    seen = set()
    for act in ACTS:
        refs = _dw_refs(x, w, b, s, pads, act)
        for return_pool, sms, allow_fast, pool_blocks in [
                (True, SMS, True, 1 << 16), (False, SMS, True, 1 << 16),
                (True, ONE_BAND, True, 1 << 16), (True, SMS, False, 1)]:
            fast, bands = _dw_check(emu_dwconv, x, w, b, s, pads, act, return_pool, sms,
                                    allow_fast, pool_blocks, refs)
            assert fast == (allow_fast and fast_possible)
            assert (bands == 1) == (sms == ONE_BAND or x.shape[2] + sum(pads[2:]) - case[4]
                                    < case[5]), bands
            seen.add((fast, bands > 1))
    assert any(f for f, _ in seen) == fast_possible


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dwconv_alignment(emu_dwconv, dtype):
    """x 16-byte aligned: fast path; x one element off: generic path. Both correct."""
    x0, w, b, s, pads = _dw_make((2, 64, 9, 7, 3, 1, None), dtype)
    for elems, fast in [(0, True), (1, False)]:
        x = _offset_view(x0, elems)
        assert _dw_check(emu_dwconv, x, w, b, s, pads, "silu", True, SMS, True)[0] == fast


# ------------------------------------------------------------------------------- dwconv_int8

INT8_EMU_CASES = [c for c in INT8_CASES if c[2] * c[3] * c[1] < 200_000] + [
    (1, 240, 14, 14, 3, 1, None)]


@pytest.mark.parametrize("case", INT8_EMU_CASES, ids=_ids(INT8_EMU_CASES))
def test_dwconv_int8(emu_int8, case):
    """Each act; pool on and off; many bands (132 SMs) and one band (1 SM); the 16-byte,
    8-byte and generic paths forced through vec_cap."""
    x, w, sc, b, s, pads = make_int8(case)
    paths_seen = set()
    for act in ACTS:
        for return_pool, sms, vec_cap in [(True, SMS, 16), (False, SMS, 16), (True, 1, 16),
                                          (True, SMS, 8), (True, 5, 1)]:
            y, pool, info = emu_int8(x, w, sc, b, s, pads, -7, 21.5, 5, act, return_pool, sms,
                                     vec_cap)
            paths_seen.add(int(info[0]))
            assert_matches(y, pool, x, w, sc, b, s, pads, -7, 21.5, 5, act, return_pool)
    C, k = case[1], case[4]
    expected = {1} | ({16, 8} if C % 16 == 0 and k in (3, 5) else set()) | (
        {8} if C % 8 == 0 and k in (3, 5) else set())
    assert paths_seen == expected, (paths_seen, expected)


def test_dwconv_int8_zero_points_and_alignment(emu_int8):
    for in_zp, out_zp, inv in [(-128, 127, 3.0), (127, -128, 40.0), (0, 0, 21.5)]:
        x, w, sc, b, s, pads = make_int8((1, 32, 9, 9, 5, 1, None), seed=3)
        y, pool, _ = emu_int8(x, w, sc, b, s, pads, in_zp, inv, out_zp, "relu6", True, SMS, 16)
        assert_matches(y, pool, x, w, sc, b, s, pads, in_zp, inv, out_zp, "relu6", True)
    x0, w, sc, b, s, pads = make_int8((2, 64, 9, 7, 3, 1, None))
    for offset, path in [(1, 1), (8, 8), (16, 16)]:
        x = _offset_view(x0, offset)
        y, pool, info = emu_int8(x, w, sc, b, s, pads, -7, 21.5, 5, "silu", True, SMS, 16)
        assert int(info[0]) == path
        assert_matches(y, pool, x, w, sc, b, s, pads, -7, 21.5, 5, "silu", True)


# ---------------------------------------------------------------------------------- bias_act

BIAS_ACT_SHAPES = [(1, 37, 13, 11), (3, 61, 7, 7), (2, 1152, 1, 1), (1, 32, 13, 3), (3, 8, 1, 5),
                   (3, 64, 7, 7)]


def _bias_act_check(emu, x, b, act, allow_vec, max_blocks):
    y, info = emu(x, b, act, allow_vec, max_blocks)
    assert y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    ref = reference.bias_act(x.double(), b.double(), act)
    v = x + b.view(1, -1, 1, 1)
    low = {"silu": F.silu, "relu6": F.relu6, "relu": F.relu, "identity": lambda t: t}[act](v)
    assert_close_to_ref(y, ref, low, x.dtype)
    return bool(info[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", BIAS_ACT_SHAPES, ids=_ids(BIAS_ACT_SHAPES))
def test_bias_act(emu_bias_act, shape, dtype):
    """Every act; vector path (where C allows it) and scalar path forced; a full grid and a grid
    of 1 and 3 blocks (the grid-stride loop walked several times)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dtype).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn(shape[1], generator=g).to(dtype)
    vec_possible = shape[1] % (16 // x.element_size()) == 0
    for act in ACTS:
        for allow_vec, max_blocks in [(True, 1 << 16), (False, 1 << 16), (True, 1), (False, 3)]:
            vec = _bias_act_check(emu_bias_act, x, b, act, allow_vec, max_blocks)
            assert vec == (allow_vec and vec_possible)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_act_alignment(emu_bias_act, dtype):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 64, 5, 3, generator=g).to(dtype)
    b = torch.randn(64, generator=g).to(dtype)
    for elems, vec in [(0, True), (1, False)]:
        assert _bias_act_check(emu_bias_act, _offset_view(x0, elems), b, "silu", True, 2) == vec


# ----------------------------------------------------------------------------------- se_gate

# (N, C, S): odd C, S below, at and above the 8 warps of a block, C past the 256 threads.
SE_CASES = [(1, 37, 5), (3, 61, 8), (3, 1152, 48), (1, 16, 70), (2, 300, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SE_CASES, ids=_ids(SE_CASES))
def test_se_gate(emu_se, case, dtype):
    N, C, S = case
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(N, C, generator=g)
    w1 = (torch.randn(S, C, generator=g) / C ** 0.5).to(dtype)
    b1 = torch.randn(S, generator=g).to(dtype)
    w2 = (torch.randn(C, S, generator=g) / S ** 0.5).to(dtype)
    b2 = torch.randn(C, generator=g).to(dtype)
    gate = emu_se(pooled, w1, b1, w2, b2)
    ref = reference.se_gate(*[t.double() for t in (pooled, w1, b1, w2, b2)])
    assert gate.dtype == torch.float32 and gate.shape == (N, C)
    assert not torch.isnan(gate).any()
    assert rel_err(gate, ref) <= 1e-5, rel_err(gate, ref)
