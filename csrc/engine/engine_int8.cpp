// AVX-512 VNNI microkernels of the INT8 ops and engine; contracts in engine_int8.h.
//
// GEMM: a register tile of MR x NV vectors of 16 int32 accumulators (8 x 2, or 6 x 4 when N >=
// 64, as the float GEMM) runs over the whole K four k at a time: per step NV packed weight
// vectors (16 columns x 4 k) are loaded, each row's four activation bytes are broadcast and one
// vpdpbusd per (row, vector) adds 64 products. The tile's int32 sums then go through the float32
// epilogue (zero-point correction, dequantise, bias, act, residual, requantise) one 16-column
// vector at a time, with the exact rounding of the scalar kernels.
//
// Depthwise: the float engine's row kernel shape (interior pixels P at a time, clipped border
// pixels) on int8 / u8 / pre-offset float32 rows; products and sums are exact integers in
// float32 (see engine_int8.h), so FMAs are allowed there and the order does not matter.
//
// Exactness: every float32 step after the integer sum is written with _mm512_*_round_ps
// (embedded rounding, nearest-even) — a builtin GCC never fuses into an FMA, unlike a plain
// _mm512_mul_ps followed by _mm512_add_ps under -ffp-contract=fast — in the scalar kernels'
// order (cpu_int8.h, cpu_math.h's exp_vec).
#include "engine_int8.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "engine_amx.h"
#include "engine_simd.h"

#define EQ_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,avx2")))
#define EQ_INLINE inline __attribute__((always_inline))

namespace effnet::engine {

bool int8_kernels_supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = kernels_supported(false) && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

namespace {

constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// One float32 rounding each, never contracted.
EQ_AVX512 EQ_INLINE __m512 mul(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, kRn); }
EQ_AVX512 EQ_INLINE __m512 add(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, kRn); }
EQ_AVX512 EQ_INLINE __m512 sub(__m512 a, __m512 b) { return _mm512_sub_round_ps(a, b, kRn); }
EQ_AVX512 EQ_INLINE __m512 set(float f) { return _mm512_set1_ps(f); }

// cpu::exp_vec, step for step.
EQ_AVX512 EQ_INLINE __m512 exp_exact(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, set(-87.0f)), set(88.0f));
  const __m512 n = sub(add(mul(x, set(1.44269504088896341f)), set(12582912.0f)), set(12582912.0f));
  x = add(sub(x, mul(n, set(0.693359375f))), mul(n, set(2.12194440e-4f)));
  const __m512 z = mul(x, x);
  __m512 p = set(1.9875691500e-4f);
  p = add(mul(p, x), set(1.3981999507e-3f));
  p = add(mul(p, x), set(8.3334519073e-3f));
  p = add(mul(p, x), set(4.1665795894e-2f));
  p = add(mul(p, x), set(1.6666665459e-1f));
  p = add(mul(p, x), set(5.0000001201e-1f));
  p = add(add(mul(p, z), x), set(1.0f));
  const __m512i e = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return mul(p, _mm512_castsi512_ps(e));
}

// cpu::act_vec (act.h's apply_act for the others: v < 0 ? 0 : ..., which max/min give); or the
// fast SiLU (kSiLUFast, not exact).
template <EAct A>
EQ_AVX512 EQ_INLINE __m512 act_exact(__m512 v) {
  if constexpr (A == EAct::SiLU) {
    return _mm512_div_round_ps(v, add(set(1.0f), exp_exact(sub(_mm512_setzero_ps(), v))), kRn);
  } else if constexpr (A == kSiLUFast) {
    return _mm512_mul_ps(v, sigmoid512(v));
  } else if constexpr (A == EAct::ReLU6) {
    return _mm512_min_ps(set(6.0f), _mm512_max_ps(_mm512_setzero_ps(), v));
  } else if constexpr (A == EAct::ReLU) {
    return _mm512_max_ps(_mm512_setzero_ps(), v);
  } else {
    return v;
  }
}

// cpu::requantize before the int8 cast: clamp(floor(a * inv + 0.5) + zp, -128, 127), NaN ->
// -128 (max with the bound second returns the bound for NaN).
EQ_AVX512 EQ_INLINE __m512 requant(__m512 a, __m512 inv, __m512 zp) {
  const __m512 t = add(_mm512_roundscale_ps(add(mul(a, inv), set(0.5f)),
                                            _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC),
                       zp);
  return _mm512_min_ps(_mm512_max_ps(t, set(-128.0f)), set(127.0f));
}

// Stores requantised q (float, integral) in byte form: int8, or u8 (q + 128).
EQ_AVX512 EQ_INLINE void store_q(void* p, __m512 q, bool u8, __mmask16 m) {
  __m512i i = _mm512_cvttps_epi32(q);
  if (u8) i = _mm512_add_epi32(i, _mm512_set1_epi32(128));
  _mm512_mask_cvtepi32_storeu_epi8(p, m, i);
}

// 16 bytes (int8 or u8) to float32 int values.
EQ_AVX512 EQ_INLINE __m512 load_bytes(const void* p, bool u8, __mmask16 m) {
  const __m128i b = _mm_maskz_loadu_epi8(m, p);
  return _mm512_cvtepi32_ps(u8 ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b));
}

__mmask16 tail_mask(int64_t n) {  // lanes of the last vector of n values
  const int64_t r = n % 16;
  return r == 0 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << r) - 1);
}

// ---- GEMM ----------------------------------------------------------------------------------
// The fast mode's requantise: floor(a * inv + 0.5) by one FMA and a rounding, clamped to
// [lo, hi] (the int8 range minus the zero point): q - zp.
EQ_AVX512 EQ_INLINE __m512 requant_fast(__m512 a, float inv, float lo, float hi) {
  const __m512 t = _mm512_roundscale_ps(_mm512_fmadd_ps(a, set(inv), set(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_max_ps(t, set(lo)), set(hi));
}

// Stores q - zp (float, integral, in range) in byte form with the zero point added back.
EQ_AVX512 EQ_INLINE void store_q_off(void* p, __m512 qz, int32_t zp, bool u8, __mmask16 m) {
  const __m512i i =
      _mm512_add_epi32(_mm512_cvttps_epi32(qz), _mm512_set1_epi32(zp + (u8 ? 128 : 0)));
  _mm512_mask_cvtepi32_storeu_epi8(p, m, i);
}

// The fast epilogue (QGemmArgs.fast): FMAs, not the scalar kernels' rounding sequence.
template <EAct A>
EQ_AVX512 EQ_INLINE void epilogue_fast(const QGemmArgs& g, __m512i acc, int64_t row, int64_t col,
                                       __mmask16 m) {
  __m512 a = act_exact<A>(_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(g.scale + col),
                                          _mm512_loadu_ps(g.bias + col)));
  if (g.res != nullptr) {
    const void* rp = static_cast<const int8_t*>(g.res) + row * g.ldr + col;
    const __m512 r = _mm512_sub_ps(load_bytes(rp, g.res_u8, m),
                                   set(static_cast<float>(g.res_zp + (g.res_u8 ? 128 : 0))));
    a = _mm512_fmadd_ps(r, set(g.res_scale), a);
  }
  if (g.out == QOut::F32) {
    _mm512_mask_storeu_ps(static_cast<float*>(g.y) + row * g.ldy + col, m, a);
    return;
  }
  const __m512 qz = requant_fast(a, g.inv, -128.0f - g.zp, 127.0f - g.zp);
  if (g.out == QOut::OFF) {
    _mm512_mask_storeu_ps(static_cast<float*>(g.y) + row * g.ldy + col, m, qz);
  } else {
    store_q_off(static_cast<int8_t*>(g.y) + row * g.ldy + col, qz, static_cast<int32_t>(g.zp),
                g.out == QOut::U8, m);
  }
}

// Column vector v of row r of a tile: acc (the int32 sums minus comp) -> the output form.
template <EAct A>
EQ_AVX512 EQ_INLINE void epilogue(const QGemmArgs& g, __m512i acc, int64_t row, int64_t col,
                                  __mmask16 m) {
  if (g.fast) {
    epilogue_fast<A>(g, acc, row, col, m);
    return;
  }
  __m512 a = act_exact<A>(add(mul(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(g.scale + col)),
                              _mm512_loadu_ps(g.bias + col)));
  if (g.res != nullptr) {
    const void* rp = static_cast<const int8_t*>(g.res) + row * g.ldr + col;
    const __m512 r = sub(load_bytes(rp, g.res_u8, m),
                         set(static_cast<float>(g.res_zp + (g.res_u8 ? 128 : 0))));
    a = add(a, mul(r, set(g.res_scale)));
  }
  if (g.out == QOut::F32) {
    _mm512_mask_storeu_ps(static_cast<float*>(g.y) + row * g.ldy + col, m, a);
    return;
  }
  const __m512 q = requant(a, set(g.inv), set(g.zp));
  if (g.out == QOut::OFF) {
    _mm512_mask_storeu_ps(static_cast<float*>(g.y) + row * g.ldy + col, m, sub(q, set(g.zp)));
  } else {
    store_q(static_cast<int8_t*>(g.y) + row * g.ldy + col, q, g.out == QOut::U8, m);
  }
}

using QTileFn = void (*)(const QGemmArgs&, int64_t, int64_t, __mmask16);

template <int MR, int NV, EAct A>
EQ_AVX512 void qtile(const QGemmArgs& g, int64_t r0, int64_t p0, __mmask16 lm) {
  // The sums start at -comp (the zero-point correction: exact in int32), so the epilogue gets
  // acc - comp without a subtraction per output vector.
  __m512i comp[NV], acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) comp[v] = _mm512_sub_epi32(
      _mm512_setzero_si512(), _mm512_loadu_si512(g.comp + (p0 + v) * 16));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = comp[v];
  const int64_t Kq = qpacked_k(g.K), pstride = Kq * 16, lda = g.lda;
  const uint8_t* a = g.a + r0 * lda;
  const int8_t* b = g.b + p0 * pstride;
  for (int64_t k = 0; k < Kq; k += 4) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_si512(b + v * pstride + k * 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t quad;
      std::memcpy(&quad, a + r * lda + k, 4);
      const __m512i av = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      epilogue<A>(g, acc[r][v], r0 + r, (p0 + v) * 16,
                  v == NV - 1 ? lm : static_cast<__mmask16>(0xffff));
}

template <EAct A>
struct QTileTable {
#define EQ_T(MR, NV) &qtile<MR, NV, A>
#define EQ_ROW(MR) {EQ_T(MR, 1), EQ_T(MR, 2), EQ_T(MR, 3), EQ_T(MR, 4)}
  static constexpr QTileFn fns[8][4] = {EQ_ROW(1), EQ_ROW(2), EQ_ROW(3), EQ_ROW(4),
                                        EQ_ROW(5), EQ_ROW(6),
                                        {EQ_T(7, 1), EQ_T(7, 2), nullptr, nullptr},
                                        {EQ_T(8, 1), EQ_T(8, 2), nullptr, nullptr}};
#undef EQ_ROW
#undef EQ_T
};

const QTileFn (*qtable(EAct a))[4] {
  if (a == kSiLUFast) return QTileTable<kSiLUFast>::fns;  // (not an EAct enumerator)
  switch (a) {
    case EAct::SiLU:
      return QTileTable<EAct::SiLU>::fns;
    case EAct::ReLU6:
      return QTileTable<EAct::ReLU6>::fns;
    case EAct::ReLU:
      return QTileTable<EAct::ReLU>::fns;
    case EAct::Identity:
    default:
      return QTileTable<EAct::Identity>::fns;
  }
}

// ---- depthwise -----------------------------------------------------------------------------
template <int XF>
EQ_AVX512 EQ_INLINE __m512 load_x(const void* rowp, int64_t i, const QDwArgs& d, __mmask16 m) {
  if constexpr (XF == 0) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(rowp) + i);
  } else {
    return sub(load_bytes(static_cast<const int8_t*>(rowp) + i, XF == 2, m), set(d.x_off));
  }
}

template <int K, int CV, EAct A, int XF>
struct QDwRow {
  EQ_AVX512 EQ_INLINE static void finish(const QDwArgs& d, const __m512* acc, void* y,
                                         int64_t at, const __mmask16* mk, const __m512* scale,
                                         const __m512* bias, __m512* sum) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      if (d.fast) {
        const __m512 a = act_exact<A>(_mm512_fmadd_ps(acc[v], scale[v], bias[v]));
        sum[v] = _mm512_add_ps(sum[v], a);
        store_q_off(static_cast<int8_t*>(y) + at + v * 16,
                    requant_fast(a, d.inv, -128.0f - d.zp, 127.0f - d.zp),
                    static_cast<int32_t>(d.zp), d.out == QOut::U8, mk[v]);
        continue;
      }
      const __m512 a = act_exact<A>(add(mul(acc[v], scale[v]), bias[v]));
      sum[v] = add(sum[v], a);
      store_q(static_cast<int8_t*>(y) + at + v * 16, requant(a, set(d.inv), set(d.zp)),
              d.out == QOut::U8, mk[v]);
    }
  }

  // P consecutive interior output pixels from ow.
  template <int P>
  EQ_AVX512 EQ_INLINE static void pixels(const QDwArgs& d, const void* const* rows, void* y,
                                         int64_t c0, int64_t ow, const __mmask16* mk,
                                         const __m512* scale, const __m512* bias, __m512* sum) {
    const int k = K ? K : d.k, s = d.s;
    const int64_t C = d.C, Cp = round16(C);
    __m512 acc[P][CV];
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q)
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[q][v] = _mm512_setzero_ps();
#pragma GCC unroll 5
    for (int kh = 0; kh < k; ++kh) {
      const void* xr = rows[kh];
      if (xr == nullptr) continue;
      const int64_t base = (ow * s - d.pl) * C + c0;
      const float* wr = d.w + kh * k * Cp + c0;
#pragma GCC unroll 5
      for (int kw = 0; kw < k; ++kw) {
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v) {
          const __m512 wv = _mm512_loadu_ps(wr + kw * Cp + v * 16);
#pragma GCC unroll 4
          for (int q = 0; q < P; ++q)
            acc[q][v] = _mm512_fmadd_ps(load_x<XF>(xr, base + (q * s + kw) * C + v * 16, d, mk[v]),
                                        wv, acc[q][v]);
        }
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q) finish(d, acc[q], y, (ow + q) * C + c0, mk, scale, bias, sum);
  }

  // One output pixel with its taps clipped to the row.
  EQ_AVX512 EQ_INLINE static void border(const QDwArgs& d, const void* const* rows, void* y,
                                         int64_t c0, int64_t ow, const __mmask16* mk,
                                         const __m512* scale, const __m512* bias, __m512* sum) {
    const int k = K ? K : d.k;
    const int64_t C = d.C, Cp = round16(C);
    const int64_t iw0 = ow * d.s - d.pl;
    const int kw0 = iw0 < 0 ? static_cast<int>(-iw0) : 0;
    const int kw1 = iw0 + k > d.W ? static_cast<int>(d.W - iw0) : k;
    __m512 acc[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[v] = _mm512_setzero_ps();
    for (int kh = 0; kh < k; ++kh) {
      const void* xr = rows[kh];
      if (xr == nullptr) continue;
      const float* wr = d.w + kh * k * Cp + c0;
      for (int kw = kw0; kw < kw1; ++kw)
#pragma GCC unroll 4
        for (int v = 0; v < CV; ++v)
          acc[v] = _mm512_fmadd_ps(load_x<XF>(xr, (iw0 + kw) * C + c0 + v * 16, d, mk[v]),
                                   _mm512_loadu_ps(wr + kw * Cp + v * 16), acc[v]);
    }
    finish(d, acc, y, ow * C + c0, mk, scale, bias, sum);
  }

  EQ_AVX512 static void run(const QDwArgs& d, const void* const* rows, void* y, float* psum,
                            int64_t c0, __mmask16 lm) {
    const int k = K ? K : d.k, s = d.s;
    __mmask16 mk[CV];
    __m512 scale[CV], bias[CV], sum[CV];
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      mk[v] = v == CV - 1 ? lm : static_cast<__mmask16>(0xffff);
      scale[v] = _mm512_loadu_ps(d.scale + c0 + v * 16);
      bias[v] = _mm512_loadu_ps(d.bias + c0 + v * 16);
      sum[v] = _mm512_setzero_ps();
    }
    // Interior output pixels [lo, hi): ow*s - pl >= 0 and ow*s - pl + k <= W.
    int64_t lo = (d.pl + s - 1) / s, hi = d.W - k + d.pl >= 0 ? (d.W - k + d.pl) / s + 1 : 0;
    hi = hi < d.OW ? hi : d.OW;
    lo = lo < hi ? lo : hi;
    int64_t ow = 0;
    for (; ow < lo; ++ow) border(d, rows, y, c0, ow, mk, scale, bias, sum);
    constexpr int P = CV <= 2 ? 4 : 3;
    for (; ow + P <= hi; ow += P) pixels<P>(d, rows, y, c0, ow, mk, scale, bias, sum);
    for (; ow < hi; ++ow) pixels<1>(d, rows, y, c0, ow, mk, scale, bias, sum);
    for (; ow < d.OW; ++ow) border(d, rows, y, c0, ow, mk, scale, bias, sum);
    if (psum != nullptr) {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) _mm512_mask_storeu_ps(psum + c0 + v * 16, mk[v], sum[v]);
    }
  }
};

using QDwFn = void (*)(const QDwArgs&, const void* const*, void*, float*, int64_t, __mmask16);

template <int K, EAct A, int XF>
QDwFn qdw_cv(int cv) {
  return cv == 1 ? &QDwRow<K, 1, A, XF>::run
         : cv == 2 ? &QDwRow<K, 2, A, XF>::run
         : cv == 3 ? &QDwRow<K, 3, A, XF>::run
                   : &QDwRow<K, 4, A, XF>::run;
}

template <EAct A, int XF>
QDwFn qdw_k(int k, int cv) {
  return k == 3 ? qdw_cv<3, A, XF>(cv) : k == 5 ? qdw_cv<5, A, XF>(cv) : qdw_cv<0, A, XF>(cv);
}

template <int XF>
QDwFn qdw_act(EAct a, int k, int cv) {
  if (a == kSiLUFast) return qdw_k<kSiLUFast, XF>(k, cv);
  switch (a) {
    case EAct::SiLU:
      return qdw_k<EAct::SiLU, XF>(k, cv);
    case EAct::ReLU6:
      return qdw_k<EAct::ReLU6, XF>(k, cv);
    case EAct::ReLU:
      return qdw_k<EAct::ReLU, XF>(k, cv);
    case EAct::Identity:
    default:
      return qdw_k<EAct::Identity, XF>(k, cv);
  }
}

QDwFn qdw_pick(const QDwArgs& d, int cv) {
  return d.x_form == 0   ? qdw_act<0>(d.act, d.k, cv)
         : d.x_form == 1 ? qdw_act<1>(d.act, d.k, cv)
                         : qdw_act<2>(d.act, d.k, cv);
}

constexpr int64_t kDwBlock = 64;

// ---- small passes --------------------------------------------------------------------------
EQ_AVX512 void qprep_impl(const void* x, bool x_u8, int64_t rows, int64_t C, int64_t ldx,
                          int32_t zp, const float* g, uint8_t* out, int64_t ldo) {
  const __m512 zpf = set(static_cast<float>(zp));
  const __m512 off = set(static_cast<float>(zp + (x_u8 ? 128 : 0)));
  const __m128i flip = _mm_set1_epi8(static_cast<char>(0x80));
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* xr = static_cast<const int8_t*>(x) + r * ldx;
    uint8_t* o = out + r * ldo;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = c + 16 <= C ? static_cast<__mmask16>(0xffff) : tail_mask(C);
      if (g == nullptr) {  // the byte itself, in u8 form
        const __m128i b = _mm_maskz_loadu_epi8(m, xr + c);
        _mm_mask_storeu_epi8(o + c, m, x_u8 ? b : _mm_xor_si128(b, flip));
        continue;
      }
      const __m512 v = sub(load_bytes(xr + c, x_u8, m), off);  // q - zp, exact
      const __m512 q = requant(v, _mm512_maskz_loadu_ps(m, g + c), zpf);
      store_q(o + c, q, true, m);
    }
    if (ldo > C) std::memset(o + C, 0, static_cast<size_t>(ldo - C));
  }
}

EQ_AVX512 void quantize_impl(const float* x, int64_t n, float inv, float zp, bool u8, void* y) {
  const __m512 iv = set(inv), z = set(zp);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = i + 16 <= n ? static_cast<__mmask16>(0xffff) : tail_mask(n);
    store_q(static_cast<int8_t*>(y) + i, requant(_mm512_maskz_loadu_ps(m, x + i), iv, z), u8, m);
  }
}

// ---- AMX-INT8 (tdpbusd) --------------------------------------------------------------------
// C[32 x 32] per block in four 16 x 16 int32 tiles (tmm0-3); A as two 16-row x 64-byte tiles
// (tmm4-5) from a zero-padded copy of the block's u8 rows (32 x K64); B as two tiles of 16
// k-quads x 16 columns (tmm6-7) read straight from the AMX-packed panels, which are the VNNI
// panels ([K/4][16][4]) zero-padded to K64 = K rounded up to 64 (and to an even panel count).
// Per 64 k: 4 tile loads, 4 tdpbusd (16 x 16 x 64 MACs each). The int32 sums are exact in any
// order, so each 16-column vector then goes through the same epilogue as the VNNI tiles:
// bit-identical results.
#define EQ_AMX \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,avx2")))

using QAmxFn = void (*)(const QGemmArgs&, int64_t, int64_t, int64_t, const uint8_t*, int64_t,
                        int64_t);

template <EAct A>
EQ_AMX void qamx_block(const QGemmArgs& g, int64_t m0, int64_t mr, int64_t p0, const uint8_t* ab,
                       int64_t K64, int64_t panels) {
  const int8_t* b0 = g.amx_b + p0 * K64 * 16;
  alignas(64) int32_t c[32 * 32];
  amx_block_2x2<true>(ab, K64, b0, b0 + K64 * 16, K64, c);
  const int64_t nv = panels - p0 < 2 ? panels - p0 : 2;
  const __mmask16 last = tail_mask(g.N);
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t v = 0; v < nv; ++v)
      epilogue<A>(g,
                  _mm512_sub_epi32(_mm512_load_si512(c + r * 32 + v * 16),
                                   _mm512_loadu_si512(g.comp + (p0 + v) * 16)),
                  m0 + r, (p0 + v) * 16,
                  p0 + v == panels - 1 ? last : static_cast<__mmask16>(0xffff));
}

QAmxFn qamx_for(EAct a) {
  if (a == kSiLUFast) return &qamx_block<kSiLUFast>;
  switch (a) {
    case EAct::SiLU:
      return &qamx_block<EAct::SiLU>;
    case EAct::ReLU6:
      return &qamx_block<EAct::ReLU6>;
    case EAct::ReLU:
      return &qamx_block<EAct::ReLU>;
    case EAct::Identity:
    default:
      return &qamx_block<EAct::Identity>;
  }
}

void qgemm_range_amx(const QGemmArgs& g, int64_t t0, int64_t t1) {
  const QAmxFn fn = qamx_for(g.act);
  const int64_t K64 = qamx_k(g.K), panels = (g.N + 15) / 16;
  amx_walk(g.a, g.lda, g.K, K64, g.M, g.N, t0, t1,
           [&](int64_t m0, int64_t mr, int64_t p0, const char* ab) {
             fn(g, m0, mr, p0, reinterpret_cast<const uint8_t*>(ab), K64, panels);
           });
}

}  // namespace

void qpack_weights(const int8_t* w, int64_t N, int64_t K, int8_t* out, int32_t* wsum) {
  const int64_t panels = (N + 15) / 16, Kq = qpacked_k(K);
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < Kq; k += 4)
      for (int64_t j = 0; j < 16; ++j)
        for (int64_t e = 0; e < 4; ++e) {
          const int64_t n = p * 16 + j;
          out[p * Kq * 16 + k * 16 + j * 4 + e] = n < N && k + e < K ? w[n * K + k + e] : 0;
        }
  for (int64_t n = 0; n < round16(N); ++n) {
    int32_t s = 0;
    for (int64_t k = 0; n < N && k < K; ++k) s += w[n * K + k];
    wsum[n] = s;
  }
}

void qamx_pack(const int8_t* vnni, int64_t K, int64_t N, int8_t* out) {
  const int64_t panels = (N + 15) / 16, Kq = qpacked_k(K), K64 = qamx_k(K);
  std::memset(out, 0, static_cast<size_t>(qamx_bytes(K, N)));
  for (int64_t p = 0; p < panels; ++p)
    std::memcpy(out + p * K64 * 16, vnni + p * Kq * 16, static_cast<size_t>(Kq * 16));
}

bool int8_amx_supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = [] {
    unsigned eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    // AMX-INT8 (edx bit 25); amx_supported(): AMX-TILE + AMX-BF16 and Linux granted the state
    return ((edx >> 25) & 1) != 0 && int8_kernels_supported() && amx_supported();
  }();
  return ok;
#else
  return false;
#endif
}

static bool use_amx(const QGemmArgs& g) { return g.amx_b != nullptr && qamx_takes(g.K); }

int64_t qgemm_tiles(const QGemmArgs& g) {
  if (use_amx(g)) return (g.M + 31) / 32 * amx_col_blocks(g.N);
  const Tiling t(g.M, g.N);
  return t.row_tiles * t.col_tiles;
}

void qgemm_range(const QGemmArgs& g, int64_t t0, int64_t t1) {
  if (use_amx(g)) {
    qgemm_range_amx(g, t0, t1);
    return;
  }
  const QTileFn(*table)[4] = qtable(g.act);
  const Tiling tl(g.M, g.N);
  const __mmask16 last = tail_mask(g.N);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t r0, mr, p0, nv;
    tl.tile(t, &r0, &mr, &p0, &nv);
    const __mmask16 lm = p0 + nv == tl.panels ? last : static_cast<__mmask16>(0xffff);
    table[mr - 1][nv - 1](g, r0, p0, lm);
  }
}

void qdw_row(const QDwArgs& d, const void* const* rows, void* y_row, float* psum_row) {
  for (int64_t c0 = 0; c0 < d.C; c0 += kDwBlock) {
    const int64_t nc = d.C - c0 < kDwBlock ? d.C - c0 : kDwBlock;
    qdw_pick(d, static_cast<int>((nc + 15) / 16))(d, rows, y_row, psum_row, c0, tail_mask(nc));
  }
}

void qprep_rows(const void* x, bool x_u8, int64_t rows, int64_t C, int64_t ldx, int32_t zp,
                const float* g, uint8_t* out, int64_t ldo) {
  qprep_impl(x, x_u8, rows, C, ldx, zp, g, out, ldo);
}

void quantize_f32(const float* x, int64_t n, float inv, float zp, bool u8, void* y) {
  quantize_impl(x, n, inv, zp, u8, y);
}

void pool_chunks(const float* a, int64_t N, int64_t HW, int64_t C, int64_t lda, float* out,
                 int64_t ldo) {
  constexpr int64_t kChunk = 64;  // pointwise_int8_cpu.cpp's
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0.0;
      for (int64_t p0 = 0; p0 < HW; p0 += kChunk) {
        float part = 0.0f;
        const int64_t p1 = p0 + kChunk < HW ? p0 + kChunk : HW;
        for (int64_t p = p0; p < p1; ++p) part += a[(n * HW + p) * lda + c];
        sum += part;
      }
      out[n * ldo + c] = static_cast<float>(sum / static_cast<double>(HW));
    }
}

void pool_rows64(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, double count,
                 float* out, int64_t ldo) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0.0;
      for (int64_t r = 0; r < R; ++r) sum += part[(n * R + r) * ldp + c];
      out[n * ldo + c] = static_cast<float>(sum / count);
    }
}

}  // namespace effnet::engine
