// AVX2 + FMA microkernels of the CPU engine (x86-64-v3: every x86 server CPU since Haswell /
// Zen 1 has them; AVX-512 does not come with AMD before Zen 4). float32 only, the same packed
// layouts and contracts as the AVX-512 kernels (engine_kernels.h); the public functions there
// come here when their args say `avx2` (the engine chooses once, at construction).
//
// GEMM: a register tile of MR <= 6 rows x one packed panel of 16 columns (2 ymm): 12
// accumulators + 2 weight vectors + 1 broadcast = 15 of the 16 ymm registers. Per k: 2 aligned
// weight loads, MR broadcasts (vbroadcastss from memory: a load µop), 2*MR FMAs — FMA-bound at
// two FMAs a cycle (Zen 3 / Haswell+), loads at 8 per 12 FMAs below the two-loads-a-cycle port
// limit. The MR x K block of A stays in L1 while the tile walks the panels (tile t: row tile
// t / panels, panel t % panels), as in the AVX-512 GEMM. Epilogue in registers: + bias, act,
// + residual, store (maskstore for the last panel's partial columns).
//
// Depthwise: one output row for a block of up to 32 channels (CV <= 4 ymm) and P output pixels
// at a time (P x CV accumulators, P = 3 for CV >= 3 else 4: <= 13 live registers), taps in the
// padding skipped; interior pixels without bounds checks, border pixels with their taps
// clipped. Only the last vector of a block that ends at C (C % 8 != 0) reads / writes through
// masks (TAIL): full vectors use plain loads (vmaskmovps halves the load rate on Zen).
//
// SiLU / sigmoid: exp_neg below (a degree-5 polynomial, 3-4 ulp) and a reciprocal by rcpps +
// one Newton step (~2^-22 relative): 17 vector ops a SiLU, 11 of them on the FMA pipes —
// SiLU was 23 % of a B0 forward on Zen 3 with cpu_math.h's exp256 (26 ops; NOTES.md).
#include "engine_kernels.h"

#include <immintrin.h>

#include <cstring>

#include "../common/act.h"
#include "../common/cpu_math.h"

#define EK_AVX2 __attribute__((target("avx2,fma")))
#define EK2_INLINE inline __attribute__((always_inline))

namespace effnet::engine::avx2 {

bool supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

#if EFFNET_HAVE_AVX2_BUILD
namespace {

// 1 / d by rcpps and one Newton step; d >= 1 here (1 + exp(-v)); a d whose reciprocal is
// below FLT_MIN gives 0 (rcpps flushes), so silu(-inf) = -inf * 0 = NaN, as PyTorch's.
EK_AVX2 EK2_INLINE __m256 recip256(__m256 d) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
}

// exp(-v) for v in [-88, 88] (or NaN), in 5 FMAs + 2 more: n = round(-v log2 e) by the
// magic-number add (1.5 * 2^23 + 127: t's low mantissa bits are then n + 127, the exponent
// field of 2^n after one shift), r = v + n ln2 by one FMA (one ln2 constant: its rounding
// error n * 2e-9 is below the polynomial's), exp(-r) by a degree-5 near-minimax polynomial
// (odd coefficients negated: P(-r)). Max relative error 2.7e-7 on [-88, 88] (3-4 ulp;
// cpu_math.h's exp256, Cephes with Cody-Waite: ~1 ulp in 14 FMA-pipe ops where this has 7).
EK_AVX2 EK2_INLINE __m256 exp_neg(__m256 v) {
  const __m256 magic = _mm256_set1_ps(12583039.0f);
  const __m256 t = _mm256_fmadd_ps(v, _mm256_set1_ps(-1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  const __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(0.693147180559945309f), v);
  __m256 p = _mm256_set1_ps(-8.29755e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.191516e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-1.6667575e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.9998897e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(-9.999997e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0000001f));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// 1 / (1 + exp(-v)), v clamped to [-88, 88] for the exponent (exp(-v) stays finite, the
// reciprocal's Newton step sees no inf), so sigmoid(+-inf) = 1 / 0 and silu(+inf) = inf,
// silu(-inf) = -inf * 0 = NaN, as PyTorch's; min/max with the value second keep a NaN.
EK_AVX2 EK2_INLINE __m256 sigmoid256(__m256 v) {
  const __m256 c = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-88.0f), v));
  return recip256(_mm256_add_ps(_mm256_set1_ps(1.0f), exp_neg(c)));
}

template <EAct A>
EK_AVX2 EK2_INLINE __m256 act8(__m256 v) {
  if constexpr (A == EAct::SiLU) {
    return _mm256_mul_ps(v, sigmoid256(v));
  } else if constexpr (A == EAct::Sigmoid) {
    return sigmoid256(v);
  } else if constexpr (A == EAct::ReLU6) {  // v second: NaN propagates
    return _mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(_mm256_setzero_ps(), v));
  } else if constexpr (A == EAct::ReLU) {
    return _mm256_max_ps(_mm256_setzero_ps(), v);
  } else {
    return v;
  }
}

// Lane mask of the first n (0..8) lanes, for vmaskmovps.
EK_AVX2 EK2_INLINE __m256i lanes(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

// ---- GEMM ----------------------------------------------------------------------------------
constexpr int kMR = 6;

// The tiling: row tiles of <= 6 rows spread evenly (as Tiling), one panel per tile.
struct Tiling2 {
  int64_t panels, row_tiles, base, extra;
  Tiling2(int64_t M, int64_t N) {
    panels = (N + 15) / 16;
    row_tiles = (M + kMR - 1) / kMR;
    base = row_tiles > 0 ? M / row_tiles : 0;
    extra = row_tiles > 0 ? M % row_tiles : 0;
  }
  void tile(int64_t t, int64_t* r0, int64_t* mr, int64_t* p) const {
    const int64_t rt = t / panels;
    *p = t % panels;
    *r0 = rt * base + (rt < extra ? rt : extra);
    *mr = base + (rt < extra);
  }
};

using TileFn = void (*)(const GemmArgs&, int64_t, int64_t, int64_t);

// Rows [r0, r0 + MR) x panel p; nc = the panel's valid columns (16, or fewer in the last).
// HALF: nc <= 8, only the panel's first 8 columns are computed (N = 24, 40, ...: the last
// panel's zero half is not multiplied — 1/4 of the FMAs of an N = 24 projection).
template <int MR, EAct A, bool RES, bool HALF>
EK_AVX2 void gemm_tile(const GemmArgs& g, int64_t r0, int64_t p, int64_t nc) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = _mm256_setzero_ps(), acc[r][1] = _mm256_setzero_ps();
  const int64_t K = g.K, lda = g.lda;
  const float* a = static_cast<const float*>(g.a) + r0 * lda;
  const float* b = static_cast<const float*>(g.b) + p * K * 16;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * 16);
    const __m256 b1 = HALF ? b0 : _mm256_load_ps(b + k * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      if constexpr (!HALF) acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  const float* bias = g.bias + p * 16;
  const __m256 bias0 = _mm256_loadu_ps(bias), bias1 = _mm256_loadu_ps(bias + 8);
  const bool full = nc == 16;
  const __m256i m0 = lanes(nc < 8 ? nc : 8), m1 = lanes(nc > 8 ? nc - 8 : 0);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* y = static_cast<float*>(g.y) + (r0 + r) * g.ldy + p * 16;
    __m256 t0 = act8<A>(_mm256_add_ps(acc[r][0], bias0));
    if constexpr (HALF) {
      if constexpr (RES) {
        const float* res = static_cast<const float*>(g.res) + (r0 + r) * g.ldr + p * 16;
        t0 = _mm256_add_ps(t0, _mm256_maskload_ps(res, m0));
      }
      _mm256_maskstore_ps(y, m0, t0);
      continue;
    }
    __m256 t1 = act8<A>(_mm256_add_ps(acc[r][1], bias1));
    if (full) {
      if constexpr (RES) {
        const float* res = static_cast<const float*>(g.res) + (r0 + r) * g.ldr + p * 16;
        t0 = _mm256_add_ps(t0, _mm256_loadu_ps(res));
        t1 = _mm256_add_ps(t1, _mm256_loadu_ps(res + 8));
      }
      _mm256_storeu_ps(y, t0);
      _mm256_storeu_ps(y + 8, t1);
    } else {
      if constexpr (RES) {
        const float* res = static_cast<const float*>(g.res) + (r0 + r) * g.ldr + p * 16;
        t0 = _mm256_add_ps(t0, _mm256_maskload_ps(res, m0));
        t1 = _mm256_add_ps(t1, _mm256_maskload_ps(res + 8, m1));
      }
      _mm256_maskstore_ps(y, m0, t0);
      _mm256_maskstore_ps(y + 8, m1, t1);
    }
  }
}

template <EAct A, bool RES>
struct TileTable {  // fns[half][mr - 1]
#define EK2_ROW(H)                                                                         \
  {&gemm_tile<1, A, RES, H>, &gemm_tile<2, A, RES, H>, &gemm_tile<3, A, RES, H>,          \
   &gemm_tile<4, A, RES, H>, &gemm_tile<5, A, RES, H>, &gemm_tile<6, A, RES, H>}
  static constexpr TileFn fns[2][kMR] = {EK2_ROW(false), EK2_ROW(true)};
#undef EK2_ROW
};

template <bool RES>
const TileFn (*table_for_act(EAct a))[kMR] {
  switch (a) {
    case EAct::SiLU:
      return TileTable<EAct::SiLU, RES>::fns;
    case EAct::Sigmoid:
      return TileTable<EAct::Sigmoid, RES>::fns;
    case EAct::ReLU6:
      return TileTable<EAct::ReLU6, RES>::fns;
    case EAct::ReLU:
      return TileTable<EAct::ReLU, RES>::fns;
    case EAct::Identity:
    default:
      return TileTable<EAct::Identity, RES>::fns;
  }
}

// ---- depthwise -----------------------------------------------------------------------------
// One output row for channels [c0, c0 + 8*CV): rows[kh] is input row (oh*s - pt + kh) of the
// sample, nullptr where it is padding. K, S compile-time (0: d.k, d.s at run time). TAIL: the
// last vector holds fewer than 8 channels (tm its lane mask).
template <int K, int S, int CV, bool TAIL, EAct A>
struct DwRow2 {
  EK_AVX2 EK2_INLINE static __m256 ld(const float* p, int v, __m256i tm) {
    if constexpr (TAIL) {
      if (v == CV - 1) return _mm256_maskload_ps(p, tm);
    }
    return _mm256_loadu_ps(p);
  }
  EK_AVX2 EK2_INLINE static void st(float* p, int v, __m256i tm, __m256 x) {
    if constexpr (TAIL) {
      if (v == CV - 1) {
        _mm256_maskstore_ps(p, tm, x);
        return;
      }
    }
    _mm256_storeu_ps(p, x);
  }

  template <int P>
  EK_AVX2 EK2_INLINE static void pixels(const DwArgs& d, const float* const* rows, float* y,
                                        int64_t c0, int64_t ow, __m256i tm, const __m256* bias,
                                        __m256* sum) {
    const int k = K ? K : d.k, s = S ? S : d.s;
    const int64_t C = d.C, Cp = round16(C);
    __m256 acc[P][CV];
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[q][v] = bias[v];
#pragma GCC unroll 5
    for (int kh = 0; kh < k; ++kh) {
      const float* xr = rows[kh];
      if (xr == nullptr) continue;
      xr += (ow * s - d.pl) * C + c0;
      const float* wr = d.w + kh * k * Cp + c0;
#pragma GCC unroll 5
      for (int kw = 0; kw < k; ++kw) {
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
          const __m256 wv = _mm256_loadu_ps(wr + kw * Cp + v * 8);
#pragma GCC unroll 4
          for (int q = 0; q < P; ++q)
            acc[q][v] = _mm256_fmadd_ps(ld(xr + (q * s + kw) * C + v * 8, v, tm), wv, acc[q][v]);
        }
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        const __m256 t = act8<A>(acc[q][v]);
        st(y + (ow + q) * C + c0 + v * 8, v, tm, t);
        sum[v] = _mm256_add_ps(sum[v], t);
      }
  }

  EK_AVX2 EK2_INLINE static void border(const DwArgs& d, const float* const* rows, float* y,
                                        int64_t c0, int64_t ow, __m256i tm, const __m256* bias,
                                        __m256* sum) {
    const int k = K ? K : d.k, s = S ? S : d.s;
    const int64_t C = d.C, Cp = round16(C);
    const int64_t iw0 = ow * s - d.pl;
    const int kw0 = iw0 < 0 ? static_cast<int>(-iw0) : 0;
    const int kw1 = iw0 + k > d.W ? static_cast<int>(d.W - iw0) : k;
    __m256 acc[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[v] = bias[v];
    for (int kh = 0; kh < k; ++kh) {
      const float* xr = rows[kh];
      if (xr == nullptr) continue;
      xr += iw0 * C + c0;
      const float* wr = d.w + kh * k * Cp + c0;
      for (int kw = kw0; kw < kw1; ++kw)
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v)
          acc[v] = _mm256_fmadd_ps(ld(xr + kw * C + v * 8, v, tm),
                                   _mm256_loadu_ps(wr + kw * Cp + v * 8), acc[v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      const __m256 t = act8<A>(acc[v]);
      st(y + ow * C + c0 + v * 8, v, tm, t);
      sum[v] = _mm256_add_ps(sum[v], t);
    }
  }

  // psum: the row's sums for channels < C (the entries up to round16(C) are not written;
  // pool_rows never reads them).
  // tail: the lanes of the last vector (TAIL; 1..7).
  EK_AVX2 static void run(const DwArgs& d, const float* const* rows, float* y, float* psum,
                          int64_t c0, int64_t tail) {
    const int k = K ? K : d.k, s = S ? S : d.s;
    const __m256i tm = lanes(tail);
    __m256 bias[CV], sum[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      bias[v] = _mm256_loadu_ps(d.bias + c0 + v * 8);
      sum[v] = _mm256_setzero_ps();
    }
    int64_t lo = (d.pl + s - 1) / s, hi = d.W - k + d.pl >= 0 ? (d.W - k + d.pl) / s + 1 : 0;
    hi = hi < d.OW ? hi : d.OW;
    lo = lo < hi ? lo : hi;
    int64_t ow = 0;
    for (; ow < lo; ++ow) border(d, rows, y, c0, ow, tm, bias, sum);
    constexpr int P = CV <= 2 ? 4 : 3;
    for (; ow + P <= hi; ow += P) pixels<P>(d, rows, y, c0, ow, tm, bias, sum);
    for (; ow < hi; ++ow) pixels<1>(d, rows, y, c0, ow, tm, bias, sum);
    for (; ow < d.OW; ++ow) border(d, rows, y, c0, ow, tm, bias, sum);
    if (psum != nullptr) {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        if constexpr (TAIL) {
          if (v == CV - 1) {
            _mm256_maskstore_ps(psum + c0 + v * 8, tm, sum[v]);
            continue;
          }
        }
        _mm256_storeu_ps(psum + c0 + v * 8, sum[v]);
      }
    }
  }
};

using DwFn = void (*)(const DwArgs&, const float* const*, float*, float*, int64_t, int64_t);

template <int K, int S, bool TAIL, EAct A>
DwFn dw_cv(int cv) {
  return cv == 1 ? &DwRow2<K, S, 1, TAIL, A>::run
         : cv == 2 ? &DwRow2<K, S, 2, TAIL, A>::run
         : cv == 3 ? &DwRow2<K, S, 3, TAIL, A>::run
                   : &DwRow2<K, S, 4, TAIL, A>::run;
}

template <bool TAIL, EAct A>
DwFn dw_geo(int k, int s, int cv) {
  if (k == 3 && s == 1) return dw_cv<3, 1, TAIL, A>(cv);
  if (k == 3 && s == 2) return dw_cv<3, 2, TAIL, A>(cv);
  if (k == 5 && s == 1) return dw_cv<5, 1, TAIL, A>(cv);
  if (k == 5 && s == 2) return dw_cv<5, 2, TAIL, A>(cv);
  return dw_cv<0, 0, TAIL, A>(cv);
}

template <bool TAIL>
DwFn dw_act(EAct a, int k, int s, int cv) {
  switch (a) {
    case EAct::SiLU:
      return dw_geo<TAIL, EAct::SiLU>(k, s, cv);
    case EAct::Sigmoid:
      return dw_geo<TAIL, EAct::Sigmoid>(k, s, cv);
    case EAct::ReLU6:
      return dw_geo<TAIL, EAct::ReLU6>(k, s, cv);
    case EAct::ReLU:
      return dw_geo<TAIL, EAct::ReLU>(k, s, cv);
    case EAct::Identity:
    default:
      return dw_geo<TAIL, EAct::Identity>(k, s, cv);
  }
}

constexpr int64_t kSub = 32;  // channels per kernel call (4 ymm)

// Channels [c0, c0 + nc) of one output row, in calls of up to 32 channels.
void dw_block(const DwArgs& d, const float* const* rows, float* y, float* psum, int64_t c0,
              int64_t nc) {
  for (int64_t c = c0; c < c0 + nc; c += kSub) {
    const int64_t n = c0 + nc - c < kSub ? c0 + nc - c : kSub;
    const int cv = static_cast<int>((n + 7) / 8);
    const bool tail = n % 8 != 0;
    const DwFn fn = tail ? dw_act<true>(d.act, d.k, d.s, cv) : dw_act<false>(d.act, d.k, d.s, cv);
    fn(d, rows, y, psum, c, n % 8);
  }
}

EK_AVX2 void pool_rows_impl(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp,
                            float count, float* pooled, int64_t ldo) {
  const __m256 inv = _mm256_set1_ps(1.0f / count);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; c += 8) {
      const __m256i m = lanes(C - c < 8 ? C - c : 8);
      __m256 s = _mm256_setzero_ps();
      const float* p = part + n * R * ldp + c;
      for (int64_t r = 0; r < R; ++r) s = _mm256_add_ps(s, _mm256_maskload_ps(p + r * ldp, m));
      _mm256_maskstore_ps(pooled + n * ldo + c, m, _mm256_mul_ps(s, inv));
    }
  }
}

EK_AVX2 void scale_rows_impl(float* x, int64_t rows, int64_t C, const float* g) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * C;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
      _mm256_storeu_ps(row + c, _mm256_mul_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(g + c)));
    if (c < C) {
      const __m256i m = lanes(C - c);
      _mm256_maskstore_ps(row + c, m,
                          _mm256_mul_ps(_mm256_maskload_ps(row + c, m), _mm256_maskload_ps(g + c, m)));
    }
  }
}

EK_AVX2 void fold_gate_impl(const float* packed, int64_t K, int64_t N, const float* g,
                            float* out) {
  const int64_t panels = (N + 15) / 16;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t o = (p * K + k) * 16;
      const __m256 gk = _mm256_set1_ps(g[k]);
      _mm256_store_ps(out + o, _mm256_mul_ps(_mm256_load_ps(packed + o), gk));
      _mm256_store_ps(out + o + 8, _mm256_mul_ps(_mm256_load_ps(packed + o + 8), gk));
    }
}

}  // namespace

int64_t gemm_tiles(const GemmArgs& g) {
  const Tiling2 t(g.M, g.N);
  return t.row_tiles * t.panels;
}

void gemm_range(const GemmArgs& g, int64_t t0, int64_t t1) {
  const TileFn(*table)[kMR] =
      g.res != nullptr ? table_for_act<true>(g.act) : table_for_act<false>(g.act);
  const Tiling2 tl(g.M, g.N);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t r0, mr, p;
    tl.tile(t, &r0, &mr, &p);
    const int64_t nc = g.N - p * 16 < 16 ? g.N - p * 16 : 16;
    table[nc <= 8][mr - 1](g, r0, p, nc);
  }
}

void dw_row(const DwArgs& d, const void* const* rows, void* y_row, float* psum_row) {
  dw_block(d, reinterpret_cast<const float* const*>(rows), static_cast<float*>(y_row), psum_row,
           0, d.C);
}

void dw_range(const DwArgs& d, int64_t t0, int64_t t1, int64_t block) {
  const int64_t cblocks = (d.C + block - 1) / block;
  const float* rows[kDwMaxK];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t cb = t % cblocks, row = t / cblocks, n = row / d.OH, oh = row % d.OH;
    const int64_t c0 = cb * block, nc = d.C - c0 < block ? d.C - c0 : block;
    for (int kh = 0; kh < d.k; ++kh) {
      const int64_t ih = oh * d.s - d.pt + kh;
      rows[kh] = ih < 0 || ih >= d.H ? nullptr
                                     : static_cast<const float*>(d.x) + (n * d.H + ih) * d.W * d.C;
    }
    float* ps = d.psum != nullptr ? d.psum + row * round16(d.C) : nullptr;
    dw_block(d, rows, static_cast<float*>(d.y) + row * d.OW * d.C, ps, c0, nc);
  }
}

void pool_rows(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, float count,
               float* pooled, int64_t ldo) {
  pool_rows_impl(part, N, R, C, ldp, count, pooled, ldo);
}

void scale_rows(float* x, int64_t rows, int64_t C, const float* g) {
  scale_rows_impl(x, rows, C, g);
}

void fold_gate(const float* packed, int64_t K, int64_t N, const float* g, float* out) {
  fold_gate_impl(packed, K, N, g, out);
}

#else  // no AVX2 build on this compiler / architecture: supported() is false, never called
int64_t gemm_tiles(const GemmArgs&) { return 0; }
void gemm_range(const GemmArgs&, int64_t, int64_t) {}
void dw_row(const DwArgs&, const void* const*, void*, float*) {}
void dw_range(const DwArgs&, int64_t, int64_t, int64_t) {}
void pool_rows(const float*, int64_t, int64_t, int64_t, int64_t, float, float*, int64_t) {}
void scale_rows(float*, int64_t, int64_t, const float*) {}
void fold_gate(const float*, int64_t, int64_t, const float*, float*) {}
#endif

}  // namespace effnet::engine::avx2
