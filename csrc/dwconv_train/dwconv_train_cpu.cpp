// CPU kernels of effnet::dwconv_train and effnet::dwconv_train_backward: the training ops'
// depthwise conv with the input's BN-act prologue fused in (effnet_kernels/train_ops.py, dwconv):
//
//   v = x·scale[c] + shift[c],  a = act(v)   (shift = beta − mean·scale; a = x without BN)
//   z[n, oh, ow, c] = Σ_{kh, kw} a[n, oh·s − pt + kh, ow·s − pl + kw, c] · w[c, kh, kw]
//                                                 (zero padding: taps outside the image skip)
// backward, for dz:
//   da[n, ih, iw, c] = Σ over the (oh, ow, kh, kw) that read (ih, iw) of dz[n, oh, ow, c]·w[c, kh, kw]
//   dw[c, kh, kw]    = Σ_{n, oh, ow} dz[n, oh, ow, c] · a[n, oh·s − pt + kh, ow·s − pl + kw, c]
//   dv = da·act'(v);  dx = dv·scale;  dbeta[c] = Σ dv;  dscale[c] = Σ dv·(x − mean)
// (without BN: dx = da, and dscale / dbeta are empty).
//
// What it saves against the ATen composition (bn_act_apply, then F.conv2d / the convolution
// backward, then bn_act_backward): the activated input a is never written — the forward keeps
// a ring of k activated input rows per task (each input row activated once per task), the
// backward activates each input row once and uses it for dw while it gathers da for the same row,
// then applies act' and the BN reductions before the row leaves the cache. Bytes per element:
// forward reads x, writes z; backward reads x and dz (k/s rows of dz per input row, from cache)
// and writes dx; ~2 (forward) and ~4 (backward) × k² multiply-adds per element.
//
// Layout: channels_last (each pixel's C channels contiguous). Channel blocks of kCB values are
// accumulated in registers over all k² taps (forward, da) or over a whole output row (dw).
// float32 (the model's) and float64 (gradcheck): the same code; float32 runs the exp polynomial
// of cpu_math.h, float64 std::exp. Built for the baseline ISA and AVX2 + FMA, chosen per call by
// the ISA switch (cpu_isa.h). Parallel over (image, band of rows); the backward's sums go through
// per-task float64 partials reduced in task order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/cpu_math.h"
#include "../engine/engine_util.h"

namespace effnet {
namespace {

constexpr int kCB = 32;  // channels per register block (4 AVX2 vectors of float32)

struct Geo {
  int64_t N, H, W, C, OH, OW, Wp;  // Wp = W + pl + pr: a padded activated row's pixels
  int k, s, pl, pt;
};

template <typename T>
C10_ALWAYS_INLINE T exp_t(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return cpu::exp_vec(x);
  } else {
    return std::exp(x);
  }
}

// (act(v), act'(v)) with PyTorch's derivative conventions (0 at the ReLU / ReLU6 kinks).
template <Act A, typename T>
C10_ALWAYS_INLINE std::pair<T, T> act_and_grad(T v) {
  if constexpr (A == Act::SiLU) {
    const T s = T(1) / (T(1) + exp_t<T>(-v));
    return {v * s, s * (T(1) + v * (T(1) - s))};
  } else if constexpr (A == Act::ReLU6) {
    return {v < T(0) ? T(0) : (v > T(6) ? T(6) : v), (v > T(0) && v < T(6)) ? T(1) : T(0)};
  } else if constexpr (A == Act::ReLU) {
    return {v < T(0) ? T(0) : v, v > T(0) ? T(1) : T(0)};
  } else {
    return {v, T(1)};
  }
}

// Input row `xr` (W pixels) into the padded activated row xa (Wp pixels, zeros in the pads) and,
// with G, act'(v) into gr (W pixels).
template <typename T, Act A, bool BN, bool G, bool AVX2>
C10_ALWAYS_INLINE void prologue_row(const T* __restrict xr, const T* __restrict scale,
                                    const T* __restrict shift, const Geo& g, T* __restrict xa,
                                    T* __restrict gr) {
  const int64_t C = g.C, n = g.W * C;
  std::fill(xa, xa + g.pl * C, T(0));
  std::fill(xa + (g.pl + g.W) * C, xa + g.Wp * C, T(0));
  T* __restrict o = xa + g.pl * C;
  if constexpr (!BN) {
    std::copy(xr, xr + n, o);
  } else {
    int64_t c0 = 0;  // channels [0, c0) of every pixel done by the AVX2 intrinsics
#if EFFNET_HAVE_AVX2_BUILD
    if constexpr (std::is_same_v<T, float> && AVX2) {
      cpu::bn_act_pixels_avx2<A, G>(xr, scale, shift, g.W, C, o, gr);
      c0 = C & ~int64_t{7};
    }
#endif
    if (c0 == C) return;
    for (int64_t iw = 0; iw < g.W; ++iw) {
      const T* __restrict xp = xr + iw * C;
      T* __restrict op = o + iw * C;
      T* __restrict gp = G ? gr + iw * C : nullptr;
      for (int64_t c = c0; c < C; ++c) {
        const auto [a, d] = act_and_grad<A, T>(xp[c] * scale[c] + shift[c]);
        op[c] = a;
        if constexpr (G) gp[c] = d;
      }
    }
  }
}

// The weights ([k·k][C]) and the BN vectors (null without BN) as the kernels read them.
template <typename T>
struct Vecs {
  const T *w, *scale, *shift, *mean;
};

// ---- forward ---------------------------------------------------------------------------------
// z[ow, c0 : c0 + cw] of one output row from the k padded activated rows (nullptr: padding).
template <typename T, bool TAIL>
C10_ALWAYS_INLINE void fwd_block(const T* const* rows, const T* __restrict wt, T* __restrict z,
                                 const Geo& g, int64_t ow, int64_t c0, int cw) {
  const int n = TAIL ? cw : kCB;
  const int64_t C = g.C;
  T acc[kCB];
  for (int j = 0; j < kCB; ++j) acc[j] = T(0);
  for (int kh = 0; kh < g.k; ++kh) {
    const T* r = rows[kh];
    if (r == nullptr) continue;
    const T* __restrict xp = r + ow * g.s * C + c0;
    const T* __restrict wp = wt + static_cast<int64_t>(kh) * g.k * C + c0;
    for (int kw = 0; kw < g.k; ++kw)
      for (int j = 0; j < n; ++j) acc[j] += xp[kw * C + j] * wp[kw * C + j];
  }
  for (int j = 0; j < n; ++j) z[ow * C + c0 + j] = acc[j];
}

// Output rows [oh0, oh1) of image `x` (H x W x C) into `z` (OH x OW x C); ring: k padded rows.
template <typename T, Act A, bool BN, bool AVX2>
C10_ALWAYS_INLINE void fwd_body(const T* x, const Vecs<T>& v, T* z, const Geo& g, int64_t oh0,
                                int64_t oh1, T* ring, const engine::DwArgs* eng) {
  const int64_t C = g.C, rowlen = g.Wp * C;
  std::vector<int64_t> held(g.k, -1);  // the input row each ring slot holds
  std::vector<const T*> rows(g.k);
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    for (int kh = 0; kh < g.k; ++kh) {
      const int64_t ih = oh * g.s - g.pt + kh;
      if (ih < 0 || ih >= g.H) {
        rows[kh] = nullptr;
        continue;
      }
      const int64_t slot = ih % g.k;  // k consecutive rows: distinct slots
      T* xa = ring + slot * rowlen;
      if (held[slot] != ih) {
        prologue_row<T, A, BN, false, AVX2>(x + ih * g.W * C, v.scale, v.shift, g, xa, nullptr);
        held[slot] = ih;
      }
      rows[kh] = xa;
    }
    T* zr = z + oh * g.OW * C;
    if constexpr (std::is_same_v<T, float>) {
      if (eng != nullptr) {  // the engine's depthwise row kernel on the unpadded rows
        const void* er[engine::kDwMaxK];
        for (int kh = 0; kh < g.k; ++kh) er[kh] = rows[kh] ? rows[kh] + g.pl * C : nullptr;
        engine::dw_row(*eng, er, zr, nullptr);
        continue;
      }
    }
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t c0 = 0;
      for (; c0 + kCB <= C; c0 += kCB) fwd_block<T, false>(rows.data(), v.w, zr, g, ow, c0, kCB);
      if (c0 < C) fwd_block<T, true>(rows.data(), v.w, zr, g, ow, c0, static_cast<int>(C - c0));
    }
  }
}

template <typename T, Act A, bool BN>
C10_NOINLINE void fwd_base(const T* x, const Vecs<T>& v, T* z, const Geo& g, int64_t oh0,
                           int64_t oh1, T* ring, const engine::DwArgs* eng) {
  fwd_body<T, A, BN, false>(x, v, z, g, oh0, oh1, ring, eng);
}

template <typename T, Act A, bool BN>
C10_NOINLINE EFFNET_TARGET_AVX2 void fwd_avx2(const T* x, const Vecs<T>& v, T* z, const Geo& g,
                                              int64_t oh0, int64_t oh1, T* ring,
                                              const engine::DwArgs* eng) {
  fwd_body<T, A, BN, true>(x, v, z, g, oh0, oh1, ring, eng);
}

// ---- backward --------------------------------------------------------------------------------
// The output rows that read input row ih: (kh, dz row) for oh = (ih + pt − kh) / s in range.
struct Reader {
  int kh;
  int64_t oh;
};

// da for input pixels [0, W) of one row, channels [c0, c0 + cw), then the prologue's backward:
// dx, and the row sums of dv (sb) and dv·(x − mean) (ss).
template <typename T, bool BN, bool TAIL>
C10_ALWAYS_INLINE void bwd_dx_block(const Reader* rd, int nrd, const T* dz, const T* __restrict wt,
                                    const T* __restrict xr, const T* __restrict gr,
                                    const T* __restrict scale, const T* __restrict mean,
                                    T* __restrict dx, T* __restrict sb, T* __restrict ss,
                                    const Geo& g, int64_t c0, int cw) {
  const int n = TAIL ? cw : kCB;
  const int64_t C = g.C;
  for (int64_t iw = 0; iw < g.W; ++iw) {
    T acc[kCB];
    for (int j = 0; j < kCB; ++j) acc[j] = T(0);
    for (int r = 0; r < nrd; ++r) {
      const T* __restrict dzr = dz + rd[r].oh * g.OW * C + c0;
      const T* __restrict wp = wt + static_cast<int64_t>(rd[r].kh) * g.k * C + c0;
      for (int kw = 0; kw < g.k; ++kw) {
        const int64_t owp = iw + g.pl - kw;  // ow·s in padded coordinates
        if (owp < 0 || owp % g.s != 0 || owp / g.s >= g.OW) continue;
        const T* __restrict dp = dzr + (owp / g.s) * C;
        for (int j = 0; j < n; ++j) acc[j] += dp[j] * wp[kw * C + j];
      }
    }
    const int64_t at = iw * C + c0;
    if constexpr (!BN) {
      for (int j = 0; j < n; ++j) dx[at + j] = acc[j];
    } else {
      for (int j = 0; j < n; ++j) {
        const T dv = acc[j] * gr[at + j];
        dx[at + j] = dv * scale[c0 + j];
        sb[c0 + j] += dv;
        ss[c0 + j] += dv * (xr[at + j] - mean[c0 + j]);
      }
    }
  }
}

// dw[kh, kw, c0 : c0 + cw] += Σ_ow dz[oh, ow, c] · xa[ow·s + kw, c] for the readers of a row.
template <typename T, bool TAIL>
C10_ALWAYS_INLINE void bwd_dw_block(const Reader* rd, int nrd, const T* dz, const T* __restrict xa,
                                    double* __restrict dw, const Geo& g, int64_t c0, int cw) {
  const int n = TAIL ? cw : kCB;
  const int64_t C = g.C;
  for (int r = 0; r < nrd; ++r) {
    const T* __restrict dzr = dz + rd[r].oh * g.OW * C + c0;
    for (int kw = 0; kw < g.k; ++kw) {
      T acc[kCB];
      for (int j = 0; j < kCB; ++j) acc[j] = T(0);
      const T* __restrict xp = xa + kw * C + c0;
      for (int64_t ow = 0; ow < g.OW; ++ow)
        for (int j = 0; j < n; ++j) acc[j] += dzr[ow * C + j] * xp[ow * g.s * C + j];
      double* __restrict o = dw + (static_cast<int64_t>(rd[r].kh) * g.k + kw) * C + c0;
      for (int j = 0; j < n; ++j) o[j] += static_cast<double>(acc[j]);
    }
  }
}

// The prologue's backward for a whole row from its da (W·C): dx, and the row sums sb, ss.
template <typename T, bool BN>
C10_ALWAYS_INLINE void bwd_dx_epilogue(const T* __restrict da, const T* __restrict xr,
                                       const T* __restrict gr, const T* __restrict scale,
                                       const T* __restrict mean, T* __restrict dx,
                                       T* __restrict sb, T* __restrict ss, const Geo& g) {
  const int64_t C = g.C;
  if constexpr (!BN) {
    std::copy(da, da + g.W * C, dx);
  } else {
    for (int64_t iw = 0; iw < g.W; ++iw) {
      const int64_t at = iw * C;
      for (int64_t c = 0; c < C; ++c) {
        const T dv = da[at + c] * gr[at + c];
        dx[at + c] = dv * scale[c];
        sb[c] += dv;
        ss[c] += dv * (xr[at + c] - mean[c]);
      }
    }
  }
}

// Input rows [ih0, ih1) of one image. part: float64 [k·k·C dw][C dscale][C dbeta] of this task.
// Scratch: xa (Wp·C), gr (W·C), sb / ss (C each).
template <typename T, Act A, bool BN, bool AVX2>
C10_ALWAYS_INLINE void bwd_body(const T* x, const T* dz, const Vecs<T>& v, T* dx, const Geo& g,
                                int64_t ih0, int64_t ih1, double* part, T* xa, T* gr, T* sb,
                                T* ss, T* da, const engine::DwArgs* eng) {
  const T *wt = v.w, *scale = v.scale, *shift = v.shift, *mean = v.mean;
  const int64_t C = g.C, kk = static_cast<int64_t>(g.k) * g.k;
  std::vector<Reader> rd(g.k);
  for (int64_t ih = ih0; ih < ih1; ++ih) {
    int nrd = 0;
    for (int kh = 0; kh < g.k; ++kh) {
      const int64_t t = ih + g.pt - kh;
      if (t < 0 || t % g.s != 0 || t / g.s >= g.OH) continue;
      rd[nrd++] = {kh, t / g.s};
    }
    const T* xr = x + ih * g.W * C;
    T* dxr = dx + ih * g.W * C;
    if (nrd == 0) {  // a row no tap reads (the bottom rows a stride-2 conv skips)
      std::fill(dxr, dxr + g.W * C, T(0));
      continue;
    }
    prologue_row<T, A, BN, BN, AVX2>(xr, scale, shift, g, xa, gr);
    if constexpr (BN) {
      std::fill(sb, sb + C, T(0));
      std::fill(ss, ss + C, T(0));
    }
    bool gathered = false;
    if constexpr (std::is_same_v<T, float>) {
      if (eng != nullptr) {  // stride 1: da is the flipped-weight conv of dz (engine row kernel)
        const void* er[engine::kDwMaxK];
        for (int j = 0; j < g.k; ++j) {
          const int64_t oh = ih - (g.k - 1 - g.pt) + j;
          er[j] = oh >= 0 && oh < g.OH ? dz + oh * g.OW * C : nullptr;
        }
        engine::dw_row(*eng, er, da, nullptr);
        bwd_dx_epilogue<T, BN>(da, xr, gr, scale, mean, dxr, sb, ss, g);
        gathered = true;
      }
    }
    int64_t c0 = 0;
    for (; c0 + kCB <= C; c0 += kCB) {
      bwd_dw_block<T, false>(rd.data(), nrd, dz, xa, part, g, c0, kCB);
      if (!gathered)
        bwd_dx_block<T, BN, false>(rd.data(), nrd, dz, wt, xr, gr, scale, mean, dxr, sb, ss, g,
                                   c0, kCB);
    }
    if (c0 < C) {
      const int cw = static_cast<int>(C - c0);
      bwd_dw_block<T, true>(rd.data(), nrd, dz, xa, part, g, c0, cw);
      if (!gathered)
        bwd_dx_block<T, BN, true>(rd.data(), nrd, dz, wt, xr, gr, scale, mean, dxr, sb, ss, g,
                                  c0, cw);
    }
    if constexpr (BN) {
      double* ps = part + kk * C;
      double* pb = ps + C;
      for (int64_t c = 0; c < C; ++c) {
        ps[c] += static_cast<double>(ss[c]);
        pb[c] += static_cast<double>(sb[c]);
      }
    }
  }
}

template <typename T, Act A, bool BN>
C10_NOINLINE void bwd_base(const T* x, const T* dz, const Vecs<T>& v, T* dx, const Geo& g,
                           int64_t ih0, int64_t ih1, double* part, T* xa, T* gr, T* sb, T* ss,
                           T* da, const engine::DwArgs* eng) {
  bwd_body<T, A, BN, false>(x, dz, v, dx, g, ih0, ih1, part, xa, gr, sb, ss, da, eng);
}

template <typename T, Act A, bool BN>
C10_NOINLINE EFFNET_TARGET_AVX2 void bwd_avx2(const T* x, const T* dz, const Vecs<T>& v, T* dx,
                                              const Geo& g, int64_t ih0, int64_t ih1,
                                              double* part, T* xa, T* gr, T* sb, T* ss, T* da,
                                              const engine::DwArgs* eng) {
  bwd_body<T, A, BN, true>(x, dz, v, dx, g, ih0, ih1, part, xa, gr, sb, ss, da, eng);
}

// ---- argument checks -------------------------------------------------------------------------
struct Prepared {
  Geo g;
  at::Tensor wt, mean, scale, shift;  // [k·k][C] weights; the BN vectors in x's dtype
  bool bn;
  Act act;
};

Prepared prepare(const char* op, const at::Tensor& x, const at::Tensor& weight,
                 const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& scale,
                 const c10::optional<at::Tensor>& beta, const std::string& act, int64_t stride,
                 at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(x.dim() == 4 && (x.scalar_type() == at::kFloat ||
                                     x.scalar_type() == at::kDouble) &&
                        x.is_contiguous(at::MemoryFormat::ChannelsLast),
                    op, ": x must be a channels_last float32 or float64 (N, C, H, W) tensor, got ",
                    x.scalar_type(), " of shape ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                        weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1 &&
                        weight.is_floating_point(),
                    op, ": weight must be a float (", C, ", 1, k, k) tensor with odd k, got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(padding.size() == 4, op, ": padding must be (left, right, top, bottom)");
  for (int64_t p : padding) {
    TORCH_CHECK_VALUE(p >= 0 && p < k, op, ": padding values must be in [0, ", k - 1, "], got ",
                      padding);
  }
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t Hp = H + padding[2] + padding[3], Wp = W + padding[0] + padding[1];
  TORCH_CHECK_VALUE(Hp >= k && Wp >= k, op, ": input ", H, "x", W, " with padding ", padding,
                    " is smaller than the ", k, "x", k, " kernel");
  auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const bool bn = given(mean);
  TORCH_CHECK_VALUE(bn == given(scale) && bn == given(beta), op,
                    ": pass all of mean, scale and beta (the input's BN) or none");
  Prepared p;
  p.g = {x.size(0), H, W, C, (Hp - k) / stride + 1, (Wp - k) / stride + 1, Wp,
         static_cast<int>(k), static_cast<int>(stride), static_cast<int>(padding[0]),
         static_cast<int>(padding[2])};
  p.bn = bn;
  const Act a = parse_act(act);  // an unknown name is an error with or without BN
  p.act = bn ? a : Act::Identity;
  const auto dt = x.scalar_type();
  p.wt = weight.reshape({C, k * k}).t().to(dt).contiguous();
  if (bn) {
    for (const at::Tensor* t : {&*mean, &*scale, &*beta}) {
      TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == C && t->is_floating_point(), op,
                        ": mean, scale and beta must be float (", C, ",) vectors");
    }
    p.mean = mean->to(dt).contiguous();
    p.scale = scale->to(dt).contiguous();
    p.shift = beta->to(dt).sub(p.mean.mul(p.scale)).contiguous();
  }
  return p;
}

template <typename T>
Vecs<T> vecs_of(const Prepared& p) {
  return {p.wt.const_data_ptr<T>(), p.bn ? p.scale.const_data_ptr<T>() : nullptr,
          p.bn ? p.shift.const_data_ptr<T>() : nullptr,
          p.bn ? p.mean.const_data_ptr<T>() : nullptr};
}

// Tasks: `per` bands of rows inside each image, enough of them for the threads.
int64_t bands_per_image(int64_t N, int64_t rows) {
  const int64_t threads = at::get_num_threads();
  return std::max<int64_t>(1, std::min<int64_t>(rows, (2 * threads + N - 1) / N));
}

// The engine's depthwise row kernel (engine_kernels.h) for a float32 conv: its AVX-512 build
// where the ISA switch is at avx512 and the CPU runs it, else its AVX2 build; `ok` false at the
// baseline level (then the portable loops above run). The taps of `weight` (C, 1, k, k), rotated
// 180° with `flip` (the stride-1 backward's da = conv(dz, flipped w)), packed as the engine's.
struct EngineRow {
  engine::DwArgs d;
  at::Tensor w, bias;
  bool ok = false;
};

void engine_row(EngineRow& e, const Geo& g, const at::Tensor& weight, bool flip, int64_t in_w,
                int64_t out_w, int stride, int pl) {
  const bool avx512 = cpu::active_isa() >= cpu::Isa::AVX512 && engine::kernels_supported(false);
  const bool avx2 = !avx512 && cpu::use_avx2() && engine::avx2::supported();
  if ((!avx512 && !avx2) || g.k > engine::kDwMaxK) return;
  e.w = engine::pack_dw_taps(flip ? weight.flip({2, 3}) : weight);
  e.bias = at::zeros({engine::round16(g.C)}, at::kFloat);
  engine::DwArgs& d = e.d;
  d.W = in_w, d.C = g.C, d.OW = out_w, d.k = g.k, d.s = stride, d.pl = pl;
  d.w = e.w.data_ptr<float>(), d.bias = e.bias.data_ptr<float>();
  d.act = engine::EAct::Identity, d.avx2 = avx2;
  e.ok = true;
}

template <typename F>
void dispatch_bn_act(bool bn, Act a, F&& f) {
  dispatch_act(a, [&](auto act_c) {
    if (bn) {
      f(act_c, std::true_type{});
    } else {
      f(act_c, std::false_type{});
    }
  });
}

}  // namespace

at::Tensor dwconv_train_cpu(const at::Tensor& x, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& mean,
                            const c10::optional<at::Tensor>& scale,
                            const c10::optional<at::Tensor>& beta, const std::string& act,
                            int64_t stride, at::IntArrayRef padding) {
  const Prepared p = prepare("dwconv_train", x, weight, mean, scale, beta, act, stride, padding);
  const Geo& g = p.g;
  at::Tensor z = at::empty({g.N, g.C, g.OH, g.OW},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (z.numel() == 0) return z;
  const int64_t per = bands_per_image(g.N, g.OH);
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  EngineRow er;
  if (x.scalar_type() == at::kFloat) engine_row(er, g, weight, false, g.W, g.OW, g.s, g.pl);
  const engine::DwArgs* eng = er.ok ? &er.d : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv_train_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    T* zp = z.mutable_data_ptr<T>();
    dispatch_bn_act(p.bn, p.act, [&](auto act_c, auto bn_c) {
      auto fn = avx2 ? &fwd_avx2<T, decltype(act_c)::value, decltype(bn_c)::value>
                     : &fwd_base<T, decltype(act_c)::value, decltype(bn_c)::value>;
      at::parallel_for(0, g.N * per, 1, [&](int64_t t0, int64_t t1) {
        std::vector<T> ring(static_cast<size_t>(g.k * g.Wp * g.C));
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t n = t / per, j = t % per;
          fn(xp + n * g.H * g.W * g.C, vecs_of<T>(p), zp + n * g.OH * g.OW * g.C, g,
             g.OH * j / per, g.OH * (j + 1) / per, ring.data(), eng);
        }
      });
    });
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_train_backward_cpu(
    const at::Tensor& x, const at::Tensor& dz, const at::Tensor& weight,
    const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& beta, const std::string& act, int64_t stride,
    at::IntArrayRef padding) {
  const Prepared p =
      prepare("dwconv_train_backward", x, weight, mean, scale, beta, act, stride, padding);
  const Geo& g = p.g;
  TORCH_CHECK_VALUE(dz.dim() == 4 && dz.size(0) == g.N && dz.size(1) == g.C &&
                        dz.size(2) == g.OH && dz.size(3) == g.OW &&
                        dz.scalar_type() == x.scalar_type() &&
                        dz.is_contiguous(at::MemoryFormat::ChannelsLast),
                    "dwconv_train_backward: dz must be a channels_last ", x.scalar_type(),
                    " tensor of shape (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW, "), got ",
                    dz.scalar_type(), " of shape ", dz.sizes());
  const auto opts = x.options();
  at::Tensor dx = at::empty(x.sizes(), opts.memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t C = g.C, kk = static_cast<int64_t>(g.k) * g.k;
  at::Tensor dscale = at::zeros({p.bn ? C : 0}, opts);
  at::Tensor dbeta = at::zeros({p.bn ? C : 0}, opts);
  if (x.numel() == 0) return {dx, at::zeros(weight.sizes(), weight.options()), dscale, dbeta};
  const int64_t per = bands_per_image(g.N, g.H);
  const int64_t tasks = g.N * per, plen = kk * C + 2 * C;
  std::vector<double> part(static_cast<size_t>(tasks * plen), 0.0);
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  EngineRow er;  // stride 1: da by the engine's row kernel (dz rows in, pl' = k - 1 - pl)
  if (x.scalar_type() == at::kFloat && g.s == 1)
    engine_row(er, g, weight, true, g.OW, g.W, 1, g.k - 1 - g.pl);
  const engine::DwArgs* eng = er.ok ? &er.d : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv_train_backward_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* dp = dz.const_data_ptr<T>();
    const Vecs<T> v = vecs_of<T>(p);
    T* op = dx.mutable_data_ptr<T>();
    dispatch_bn_act(p.bn, p.act, [&](auto act_c, auto bn_c) {
      constexpr Act A = decltype(act_c)::value;
      constexpr bool BN = decltype(bn_c)::value;
      auto fn = avx2 ? &bwd_avx2<T, A, BN> : &bwd_base<T, A, BN>;
      at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        std::vector<T> scratch(static_cast<size_t>(g.Wp * C + 2 * g.W * C + 2 * C));
        T* xa = scratch.data();
        T* gr = xa + g.Wp * C;
        T* da = gr + g.W * C;
        T* sb = da + g.W * C;
        T* ss = sb + C;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t n = t / per, j = t % per;
          fn(xp + n * g.H * g.W * C, dp + n * g.OH * g.OW * C, v, op + n * g.H * g.W * C, g,
             g.H * j / per, g.H * (j + 1) / per, part.data() + t * plen, xa, gr, sb, ss, da,
             eng);
        }
      });
    });
  });
  // Fixed-order reduction of the task partials (deterministic for a given thread count).
  std::vector<double> sum(static_cast<size_t>(plen), 0.0);
  for (int64_t t = 0; t < tasks; ++t) {
    const double* pt = part.data() + t * plen;
    for (int64_t i = 0; i < plen; ++i) sum[i] += pt[i];
  }
  // [k·k][C] -> (C, 1, k, k)
  at::Tensor dwt = at::empty({C, kk}, opts.dtype(at::kDouble));
  double* dwp = dwt.mutable_data_ptr<double>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < kk; ++t) dwp[c * kk + t] = sum[t * C + c];
  at::Tensor dweight = dwt.view(weight.sizes()).to(weight.scalar_type());
  if (p.bn) {
    at::Tensor tail = at::empty({2, C}, opts.dtype(at::kDouble));
    std::copy(sum.begin() + kk * C, sum.end(), tail.mutable_data_ptr<double>());
    dscale.copy_(tail[0]);
    dbeta.copy_(tail[1]);
  }
  return {dx, dweight, dscale, dbeta};
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) {
  m.impl("dwconv_train", &dwconv_train_cpu);
  m.impl("dwconv_train_backward", &dwconv_train_backward_cpu);
}

}  // namespace effnet
