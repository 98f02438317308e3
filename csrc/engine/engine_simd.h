// AVX-512 float helpers shared by the engine's kernel files (engine_kernels.cpp,
// engine_int8.cpp): the fast exp / reciprocal / sigmoid of the float epilogues. Compiled for the
// smallest target they need (AVX-512 F + FMA), so any AVX-512 kernel can inline them.
#pragma once

#include <immintrin.h>

#define EK_SIMD inline __attribute__((always_inline, target("avx512f,fma")))

namespace effnet::engine {

// exp(x) for x in [-88, 88] (or NaN; callers clamp): Cephes' expf polynomial on r = x - n ln2
// (cpu_math.h's exp256), then 2^n by vscalefps (no exponent bit arithmetic: 13 instructions).
EK_SIMD __m512 exp512(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, z, x), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / d: the 14-bit estimate and one Newton step (relative error ~1e-7 — a division costs
// ~5x more and dominated the depthwise epilogue). d >= 1 here; huge d gives 0, as 1/d rounds.
EK_SIMD __m512 recip512(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

// 1 / (1 + exp(-v)). The exponent is clamped to [-88, 88]: exp stays below FLT_MAX (the
// reciprocal's Newton step sees no inf) and its range reduction stays exact for huge |v|, so
// sigmoid(+-inf) = 1 / 0 and silu(+inf) = inf, silu(-inf) = -inf * 0 = NaN, as PyTorch's;
// min/max with the value second keep a NaN.
EK_SIMD __m512 sigmoid512(__m512 v) {
  const __m512 t = _mm512_max_ps(_mm512_set1_ps(-88.0f), _mm512_sub_ps(_mm512_setzero_ps(), v));
  const __m512 e = exp512(_mm512_min_ps(_mm512_set1_ps(88.0f), t));  // +-inf and huge: clamped
  return recip512(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

}  // namespace effnet::engine
