// AVX-512 microkernels of the CPU engine; contracts in engine_kernels.h.
//
// GEMM (1x1 convs, SE FCs, classifier): a register tile of MR <= 8 rows x NV <= 2 vectors of 16
// columns (16 zmm accumulators) runs over the whole K: per k, NV packed weight vectors are
// loaded, each row's a[m][k] is broadcast and FMA'd (fp32) — or, in bfloat16, the pair
// (a[m][k], a[m][k+1]) is broadcast as one 32-bit value and vdpbf16ps does two k's at once
// (fp32 accumulation). The 8 x K block of A stays in L1 while the tile walks the columns (for
// B0-B3 widths: K <= 1152 x 8 rows x 4 B = 36 KiB; B7's K = 3840 spills to L2); the packed
// panels stream from L2. Epilogue in registers: + bias, act, + residual, cast, masked store of
// the last partial vector. No K blocking.
//
// Depthwise: for one output row and a block of up to 64 channels (4 zmm), each output pixel's
// accumulators start at the bias and take the k x k taps that fall inside the image (taps in
// the padding are skipped, not multiplied by zero); act, store and the row's channel sums for
// the SE squeeze stay in registers.
//
// Functions are compiled for AVX-512 by target attributes (no file-wide flags), so the library
// still loads on CPUs without it; callers check kernels_supported() first. No STL templates are
// instantiated inside them.
#include "engine_kernels.h"

// GCC 12's AVX-512 headers trip -Wuninitialized in their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "engine_amx.h"
#include "engine_simd.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <vector>

#define EK_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,avx2")))
#define EK_INLINE inline __attribute__((always_inline))

namespace effnet::engine {

bool kernels_supported(bool bf16) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx512 = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  static const bool has_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  return bf16 ? has_bf16 : avx512;
#else
  (void)bf16;
  return false;
#endif
}

bool amx_supported() {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = [] {
    unsigned eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    const bool tile = (edx >> 24) & 1, bf16 = (edx >> 22) & 1;
    if (!tile || !bf16 || !kernels_supported(true)) return false;
    // Linux hands out the AMX register state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

namespace {

// ---- packing (plain C++, runs once per engine) -------------------------------------------
uint16_t bf16_bits(float f) {  // round to nearest even, NaN kept quiet (as c10::BFloat16)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// ---- vector helpers ------------------------------------------------------------------------
template <EAct A>
EK_AVX512 EK_INLINE __m512 act512(__m512 v) {
  if constexpr (A == EAct::SiLU) {
    return _mm512_mul_ps(v, sigmoid512(v));
  } else if constexpr (A == EAct::Sigmoid) {
    return sigmoid512(v);
  } else if constexpr (A == EAct::ReLU6) {  // v second: NaN propagates
    return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(_mm512_setzero_ps(), v));
  } else if constexpr (A == EAct::ReLU) {
    return _mm512_max_ps(_mm512_setzero_ps(), v);
  } else {
    return v;
  }
}

EK_AVX512 EK_INLINE __m512 load_f(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}
EK_AVX512 EK_INLINE __m512 load_f(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
EK_AVX512 EK_INLINE void store_f(float* p, __m512 v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}
EK_AVX512 EK_INLINE void store_f(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// ---- GEMM tile -----------------------------------------------------------------------------
using TileFn = void (*)(const GemmArgs&, int64_t, int64_t, __mmask16);

template <int MR, int NV, EAct A, bool RES, typename TI, typename TO>
EK_AVX512 void gemm_tile(const GemmArgs& g, int64_t r0, int64_t p0, __mmask16 lm) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t K = g.K, lda = g.lda, pstride = packed_k(K, sizeof(TI) == 4 ? DT::F32 : DT::BF16) * 16;
  const TI* a = static_cast<const TI*>(g.a) + r0 * lda;
  const TI* b = static_cast<const TI*>(g.b) + p0 * pstride;
  if constexpr (sizeof(TI) == 4) {
    for (int64_t k = 0; k < K; ++k) {
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + v * pstride + k * 16);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  } else {
    for (int64_t k = 0; k < K; k += 2) {
      __m512i bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        bv[v] = _mm512_load_si512(reinterpret_cast<const void*>(b + v * pstride + k * 16));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        int32_t pair;
        std::memcpy(&pair, a + r * lda + k, 4);
        const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
  }
  const float* bias = g.bias + p0 * 16;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    TO* y = static_cast<TO*>(g.y) + (r0 + r) * g.ldy + p0 * 16;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? lm : static_cast<__mmask16>(0xffff);
      __m512 t = act512<A>(_mm512_add_ps(acc[r][v], _mm512_loadu_ps(bias + v * 16)));
      if constexpr (RES) {
        const TO* res = static_cast<const TO*>(g.res) + (r0 + r) * g.ldr + p0 * 16;
        t = _mm512_add_ps(t, load_f(res + v * 16, m));
      }
      store_f(y + v * 16, t, m);
    }
  }
}

// Register tiles: MR <= 8 rows x NV <= 2 vectors (narrow N), or MR <= 6 x NV <= 4 (N >= 64:
// 24 accumulators, 4 weight loads + 6 broadcasts per 24 FMAs). fns[mr-1][nv-1]; the NV = 3/4
// entries exist for mr <= 6 only (the 6 x 4 tiling never asks for more rows).
template <EAct A, bool RES, typename TI, typename TO>
struct TileTable {
#define EK_T(MR, NV) &gemm_tile<MR, NV, A, RES, TI, TO>
#define EK_ROW(MR) {EK_T(MR, 1), EK_T(MR, 2), EK_T(MR, 3), EK_T(MR, 4)}
  static constexpr TileFn fns[8][4] = {EK_ROW(1), EK_ROW(2), EK_ROW(3), EK_ROW(4),
                                       EK_ROW(5), EK_ROW(6),
                                       {EK_T(7, 1), EK_T(7, 2), nullptr, nullptr},
                                       {EK_T(8, 1), EK_T(8, 2), nullptr, nullptr}};
#undef EK_ROW
#undef EK_T
};

template <bool RES, typename TI, typename TO>
const TileFn (*table_for_act(EAct a))[4] {
  switch (a) {
    case EAct::SiLU:
      return TileTable<EAct::SiLU, RES, TI, TO>::fns;
    case EAct::Sigmoid:
      return TileTable<EAct::Sigmoid, RES, TI, TO>::fns;
    case EAct::ReLU6:
      return TileTable<EAct::ReLU6, RES, TI, TO>::fns;
    case EAct::ReLU:
      return TileTable<EAct::ReLU, RES, TI, TO>::fns;
    case EAct::Identity:
    default:
      return TileTable<EAct::Identity, RES, TI, TO>::fns;
  }
}

template <typename TI, typename TO>
const TileFn (*table_for(EAct a, bool res))[4] {
  return res ? table_for_act<true, TI, TO>(a) : table_for_act<false, TI, TO>(a);
}

// ---- depthwise -----------------------------------------------------------------------------
// One output row for channels [c0, c0 + 16*CV): rows[kh] is input row (oh*s - pt + kh) of the
// sample, nullptr where it is padding. K, S compile-time (0: d.k, d.s at run time).
// TI: the input rows' type, TO: the output's (bf16 engines read the expand conv's float32
// output: one conversion per element instead of one per tap).
template <int K, int S, int CV, EAct A, typename TI, typename TO>
struct DwRow {
  // P consecutive output pixels from ow, every tap inside the row (interior).
  template <int P>
  EK_AVX512 EK_INLINE static void pixels(const DwArgs& d, const TI* const* rows, TO* y,
                                         int64_t c0, int64_t ow, const __mmask16* mk,
                                         const __m512* bias, __m512* sum) {
    const int k = K ? K : d.k, s = S ? S : d.s;
    const int64_t C = d.C, Cp = round16(C);
    __m512 acc[P][CV];
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[q][v] = bias[v];
#pragma GCC unroll 5
    for (int kh = 0; kh < k; ++kh) {
      const TI* xr = rows[kh];
      if (xr == nullptr) continue;
      xr += (ow * s - d.pl) * C + c0;
      const float* wr = d.w + kh * k * Cp + c0;
#pragma GCC unroll 5
      for (int kw = 0; kw < k; ++kw) {
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
          const __m512 wv = _mm512_loadu_ps(wr + kw * Cp + v * 16);
#pragma GCC unroll 4
          for (int q = 0; q < P; ++q)
            acc[q][v] = _mm512_fmadd_ps(load_f(xr + (q * s + kw) * C + v * 16, mk[v]), wv,
                                        acc[q][v]);
        }
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        const __m512 t = act512<A>(acc[q][v]);
        store_f(y + (ow + q) * C + c0 + v * 16, t, mk[v]);
        sum[v] = _mm512_add_ps(sum[v], t);
      }
  }

  // One output pixel with the taps clipped to the row (borders).
  EK_AVX512 EK_INLINE static void border(const DwArgs& d, const TI* const* rows, TO* y, int64_t c0,
                                         int64_t ow, const __mmask16* mk, const __m512* bias,
                                         __m512* sum) {
    const int k = K ? K : d.k, s = S ? S : d.s;
    const int64_t C = d.C, Cp = round16(C);
    const int64_t iw0 = ow * s - d.pl;
    const int kw0 = iw0 < 0 ? static_cast<int>(-iw0) : 0;
    const int kw1 = iw0 + k > d.W ? static_cast<int>(d.W - iw0) : k;
    __m512 acc[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[v] = bias[v];
    for (int kh = 0; kh < k; ++kh) {
      const TI* xr = rows[kh];
      if (xr == nullptr) continue;
      xr += iw0 * C + c0;
      const float* wr = d.w + kh * k * Cp + c0;
      for (int kw = kw0; kw < kw1; ++kw)
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v)
          acc[v] = _mm512_fmadd_ps(load_f(xr + kw * C + v * 16, mk[v]),
                                   _mm512_loadu_ps(wr + kw * Cp + v * 16), acc[v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      const __m512 t = act512<A>(acc[v]);
      store_f(y + ow * C + c0 + v * 16, t, mk[v]);
      sum[v] = _mm512_add_ps(sum[v], t);
    }
  }

  EK_AVX512 static void run(const DwArgs& d, const void* const* rows_v, void* y_v, float* psum,
                            int64_t c0, __mmask16 lm) {
    const TI* const* rows = reinterpret_cast<const TI* const*>(rows_v);
    TO* y = static_cast<TO*>(y_v);
    const int k = K ? K : d.k, s = S ? S : d.s;
    __mmask16 mk[CV];
    __m512 bias[CV], sum[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      mk[v] = v == CV - 1 ? lm : static_cast<__mmask16>(0xffff);
      bias[v] = _mm512_loadu_ps(d.bias + c0 + v * 16);
      sum[v] = _mm512_setzero_ps();
    }
    // Interior output pixels [lo, hi): ow*s - pl >= 0 and ow*s - pl + k <= W.
    int64_t lo = (d.pl + s - 1) / s, hi = d.W - k + d.pl >= 0 ? (d.W - k + d.pl) / s + 1 : 0;
    hi = hi < d.OW ? hi : d.OW;
    lo = lo < hi ? lo : hi;
    int64_t ow = 0;
    for (; ow < lo; ++ow) border(d, rows, y, c0, ow, mk, bias, sum);
    constexpr int P = CV <= 2 ? 4 : 3;  // P x CV accumulators
    for (; ow + P <= hi; ow += P) pixels<P>(d, rows, y, c0, ow, mk, bias, sum);
    for (; ow < hi; ++ow) pixels<1>(d, rows, y, c0, ow, mk, bias, sum);
    for (; ow < d.OW; ++ow) border(d, rows, y, c0, ow, mk, bias, sum);
    if (psum != nullptr) {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) _mm512_storeu_ps(psum + c0 + v * 16, sum[v]);
    }
  }
};

using DwFn = void (*)(const DwArgs&, const void* const*, void*, float*, int64_t, __mmask16);

template <int K, int S, EAct A, typename TI, typename TO>
constexpr DwFn dw_fn(int cv) {
  return cv == 1 ? &DwRow<K, S, 1, A, TI, TO>::run
         : cv == 2 ? &DwRow<K, S, 2, A, TI, TO>::run
         : cv == 3 ? &DwRow<K, S, 3, A, TI, TO>::run
                   : &DwRow<K, S, 4, A, TI, TO>::run;
}

template <EAct A, typename TI, typename TO>
DwFn dw_pick_geo(int k, int s, int cv) {
  if (k == 3 && s == 1) return dw_fn<3, 1, A, TI, TO>(cv);
  if (k == 3 && s == 2) return dw_fn<3, 2, A, TI, TO>(cv);
  if (k == 5 && s == 1) return dw_fn<5, 1, A, TI, TO>(cv);
  if (k == 5 && s == 2) return dw_fn<5, 2, A, TI, TO>(cv);
  return dw_fn<0, 0, A, TI, TO>(cv);
}

template <typename TI, typename TO>
DwFn dw_pick_act(EAct a, int k, int s, int cv) {
  switch (a) {
    case EAct::SiLU:
      return dw_pick_geo<EAct::SiLU, TI, TO>(k, s, cv);
    case EAct::Sigmoid:
      return dw_pick_geo<EAct::Sigmoid, TI, TO>(k, s, cv);
    case EAct::ReLU6:
      return dw_pick_geo<EAct::ReLU6, TI, TO>(k, s, cv);
    case EAct::ReLU:
      return dw_pick_geo<EAct::ReLU, TI, TO>(k, s, cv);
    case EAct::Identity:
    default:
      return dw_pick_geo<EAct::Identity, TI, TO>(k, s, cv);
  }
}

// (input, output) dtypes: f32 -> f32, f32 -> bf16, bf16 -> bf16.
DwFn dw_pick(const DwArgs& d, int cv) {
  if (d.x_dt == DT::BF16) return dw_pick_act<uint16_t, uint16_t>(d.act, d.k, d.s, cv);
  return d.dt == DT::F32 ? dw_pick_act<float, float>(d.act, d.k, d.s, cv)
                         : dw_pick_act<float, uint16_t>(d.act, d.k, d.s, cv);
}

constexpr int64_t kDwBlock = 64;  // channels per depthwise task (4 zmm)

__mmask16 tail_mask(int64_t n) {  // lanes of the last vector of n values
  const int64_t r = n % 16;
  return r == 0 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << r) - 1);
}

template <typename T>
EK_AVX512 void scale_rows_impl(T* x, int64_t rows, int64_t C, const float* g) {
  const __mmask16 lm = tail_mask(C);
  for (int64_t r = 0; r < rows; ++r) {
    T* row = x + r * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = c + 16 <= C ? static_cast<__mmask16>(0xffff) : lm;
      store_f(row + c, _mm512_mul_ps(load_f(row + c, m), _mm512_maskz_loadu_ps(m, g + c)), m);
    }
  }
}

EK_AVX512 void pool_rows_impl(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp,
                              float count, float* pooled, int64_t ldo) {
  const __mmask16 lm = tail_mask(C);
  const __m512 inv = _mm512_set1_ps(1.0f / count);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = c + 16 <= C ? static_cast<__mmask16>(0xffff) : lm;
      __m512 s = _mm512_setzero_ps();
      const float* p = part + n * R * ldp + c;
      for (int64_t r = 0; r < R; ++r) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, p + r * ldp));
      _mm512_mask_storeu_ps(pooled + n * ldo + c, m, _mm512_mul_ps(s, inv));
    }
  }
}

EK_AVX512 void fold_gate_impl(const float* packed, int64_t K, int64_t N, const float* g,
                              float* out) {
  const int64_t panels = (N + 15) / 16;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t o = (p * K + k) * 16;
      _mm512_store_ps(out + o, _mm512_mul_ps(_mm512_load_ps(packed + o), _mm512_set1_ps(g[k])));
    }
}

EK_AVX512 void f32_to_bf16_impl(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = i + 16 <= n ? static_cast<__mmask16>(0xffff) : tail_mask(n);
    store_f(y + i, _mm512_maskz_loadu_ps(m, x + i), m);
  }
}

EK_AVX512 void bf16_to_f32_impl(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = i + 16 <= n ? static_cast<__mmask16>(0xffff) : tail_mask(n);
    _mm512_mask_storeu_ps(y + i, m, load_f(x + i, m));
  }
}

// ---- AMX (bfloat16) -------------------------------------------------------------------------
// C[32 x 32] per block in four 16 x 16 fp32 tiles (tmm0-3), A as two 16-row x 32-k tiles
// (tmm4-5) read from a zero-padded copy of the block's rows (32 x Kp), B as two 16-k-pair x 16
// column tiles (tmm6-7) read straight from the packed panels ([Kp/2][16][2] is the VNNI layout
// tdpbf16ps wants). Per 32 k: 4 tile loads, 4 tdpbf16ps (16 x 16 x 32 MACs each).
#define EK_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,avx2")))

using AmxFn = void (*)(const GemmArgs&, int64_t, int64_t, int64_t, const uint16_t*, int64_t,
                       int64_t);

template <EAct A, bool RES, typename TO>
EK_AMX void amx_block(const GemmArgs& g, int64_t m0, int64_t mr, int64_t p0, const uint16_t* ab,
                      int64_t Kp, int64_t panels) {
  const uint16_t* b0 = static_cast<const uint16_t*>(g.b) + p0 * Kp * 16;
  alignas(64) float c[32 * 32];
  amx_block_2x2<false>(ab, Kp * 2, b0, b0 + Kp * 16, Kp * 2, c);
  const int64_t nv = panels - p0 < 2 ? panels - p0 : 2;
  const __mmask16 last = tail_mask(g.N);
  const float* bias = g.bias + p0 * 16;
  for (int64_t r = 0; r < mr; ++r) {
    TO* y = static_cast<TO*>(g.y) + (m0 + r) * g.ldy + p0 * 16;
    for (int64_t v = 0; v < nv; ++v) {
      const __mmask16 m = p0 + v == panels - 1 ? last : static_cast<__mmask16>(0xffff);
      __m512 t = act512<A>(_mm512_add_ps(_mm512_load_ps(c + r * 32 + v * 16),
                                         _mm512_loadu_ps(bias + v * 16)));
      if constexpr (RES) {
        const TO* res = static_cast<const TO*>(g.res) + (m0 + r) * g.ldr + p0 * 16;
        t = _mm512_add_ps(t, load_f(res + v * 16, m));
      }
      store_f(y + v * 16, t, m);
    }
  }
}

template <bool RES, typename TO>
AmxFn amx_for_act(EAct a) {
  switch (a) {
    case EAct::SiLU:
      return &amx_block<EAct::SiLU, RES, TO>;
    case EAct::Sigmoid:
      return &amx_block<EAct::Sigmoid, RES, TO>;
    case EAct::ReLU6:
      return &amx_block<EAct::ReLU6, RES, TO>;
    case EAct::ReLU:
      return &amx_block<EAct::ReLU, RES, TO>;
    case EAct::Identity:
    default:
      return &amx_block<EAct::Identity, RES, TO>;
  }
}

void gemm_range_amx(const GemmArgs& g, int64_t t0, int64_t t1) {
  const bool res = g.res != nullptr;
  const AmxFn fn = g.y_dt == DT::BF16
                       ? (res ? amx_for_act<true, uint16_t>(g.act)
                              : amx_for_act<false, uint16_t>(g.act))
                       : (res ? amx_for_act<true, float>(g.act) : amx_for_act<false, float>(g.act));
  const int64_t Kp = packed_k(g.K, DT::BF16), panels = (g.N + 15) / 16;
  amx_walk(g.a, g.lda * 2, g.K * 2, Kp * 2, g.M, g.N, t0, t1,
           [&](int64_t m0, int64_t mr, int64_t p0, const char* ab) {
             fn(g, m0, mr, p0, reinterpret_cast<const uint16_t*>(ab), Kp, panels);
           });
}

}  // namespace

int64_t packed_elems(int64_t K, int64_t N, DT dt) {
  return dt == DT::F32 ? round16(N) * K : (N + 31) / 32 * 32 * packed_k(K, dt);
}

void pack_weights(const float* w, int64_t N, int64_t K, DT dt, void* out) {
  if (dt == DT::F32) {
    const int64_t panels = (N + 15) / 16;
    float* o = static_cast<float*>(out);
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < 16; ++j) {
          const int64_t n = p * 16 + j;
          o[(p * K + k) * 16 + j] = n < N ? w[n * K + k] : 0.0f;
        }
  } else {
    const int64_t panels = (N + 31) / 32 * 2, Kp = packed_k(K, dt);
    uint16_t* o = static_cast<uint16_t*>(out);
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < Kp; k += 2)
        for (int64_t j = 0; j < 16; ++j)
          for (int64_t e = 0; e < 2; ++e) {
            const int64_t n = p * 16 + j;
            const float v = n < N && k + e < K ? w[n * K + k + e] : 0.0f;
            o[p * Kp * 16 + k * 16 + j * 2 + e] = bf16_bits(v);
          }
  }
}

int64_t gemm_tiles(const GemmArgs& g) {
  if (g.avx2) return avx2::gemm_tiles(g);
  if (g.amx) return (g.M + 31) / 32 * (((g.N + 15) / 16 + 1) / 2);
  const Tiling t(g.M, g.N);
  return t.row_tiles * t.col_tiles;
}

void gemm_range(const GemmArgs& g, int64_t t0, int64_t t1) {
  if (g.avx2) {
    avx2::gemm_range(g, t0, t1);
    return;
  }
  if (g.amx) {
    gemm_range_amx(g, t0, t1);
    return;
  }
  const TileFn(*table)[4];
  const bool res = g.res != nullptr;
  if (g.b_dt == DT::F32) {
    table = table_for<float, float>(g.act, res);
  } else if (g.y_dt == DT::BF16) {
    table = table_for<uint16_t, uint16_t>(g.act, res);
  } else {
    table = table_for<uint16_t, float>(g.act, res);
  }
  const Tiling tl(g.M, g.N);
  const __mmask16 last = tail_mask(g.N);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t r0, mr, p0, nv;
    tl.tile(t, &r0, &mr, &p0, &nv);
    const __mmask16 lm = p0 + nv == tl.panels ? last : static_cast<__mmask16>(0xffff);
    table[mr - 1][nv - 1](g, r0, p0, lm);
  }
}

int64_t dw_tasks(const DwArgs& d) { return d.N * d.OH * ((d.C + kDwBlock - 1) / kDwBlock); }

void dw_row(const DwArgs& d, const void* const* rows, void* y_row, float* psum_row) {
  if (d.avx2) {
    avx2::dw_row(d, rows, y_row, psum_row);
    return;
  }
  for (int64_t c0 = 0; c0 < d.C; c0 += kDwBlock) {
    const int64_t nc = d.C - c0 < kDwBlock ? d.C - c0 : kDwBlock;
    dw_pick(d, static_cast<int>((nc + 15) / 16))(d, rows, y_row, psum_row, c0, tail_mask(nc));
  }
}

void dw_range(const DwArgs& d, int64_t t0, int64_t t1) {
  if (d.avx2) {
    avx2::dw_range(d, t0, t1, kDwBlock);
    return;
  }
  const size_t xs = d.x_dt == DT::F32 ? 4 : 2, ys = d.dt == DT::F32 ? 4 : 2;
  const int64_t cblocks = (d.C + kDwBlock - 1) / kDwBlock;
  const void* rows[kDwMaxK];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t cb = t % cblocks, row = t / cblocks, n = row / d.OH, oh = row % d.OH;
    const int64_t c0 = cb * kDwBlock, nc = d.C - c0 < kDwBlock ? d.C - c0 : kDwBlock;
    for (int kh = 0; kh < d.k; ++kh) {
      const int64_t ih = oh * d.s - d.pt + kh;
      rows[kh] = ih < 0 || ih >= d.H ? nullptr
                                     : static_cast<const char*>(d.x) +
                                           ((n * d.H + ih) * d.W * d.C) * xs;
    }
    float* ps = d.psum != nullptr ? d.psum + row * round16(d.C) : nullptr;
    dw_pick(d, static_cast<int>((nc + 15) / 16))(
        d, rows, static_cast<char*>(d.y) + row * d.OW * d.C * ys, ps, c0, tail_mask(nc));
  }
}

void pool_rows(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, float count,
               float* pooled, int64_t ldo, bool avx2) {
  if (avx2) {
    avx2::pool_rows(part, N, R, C, ldp, count, pooled, ldo);
    return;
  }
  pool_rows_impl(part, N, R, C, ldp, count, pooled, ldo);
}

void scale_rows(void* x, DT dt, int64_t rows, int64_t C, const float* g, bool avx2) {
  if (avx2) {  // (float32 only)
    avx2::scale_rows(static_cast<float*>(x), rows, C, g);
    return;
  }
  if (dt == DT::F32) {
    scale_rows_impl(static_cast<float*>(x), rows, C, g);
  } else {
    scale_rows_impl(static_cast<uint16_t*>(x), rows, C, g);
  }
}

void fold_gate(const float* packed, int64_t K, int64_t N, const float* g, float* out,
               bool avx2) {
  if (avx2) {
    avx2::fold_gate(packed, K, N, g, out);
    return;
  }
  fold_gate_impl(packed, K, N, g, out);
}

void f32_to_bf16(const float* x, uint16_t* y, int64_t n) { f32_to_bf16_impl(x, y, n); }
void bf16_to_f32(const uint16_t* x, float* y, int64_t n) { bf16_to_f32_impl(x, y, n); }

}  // namespace effnet::engine
