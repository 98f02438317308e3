// Float math for the CPU kernels written so GCC/Clang auto-vectorise it (no libm calls in loops),
// and a helper that compiles a kernel twice: for the baseline ISA and for x86-64-v3 (AVX2 + FMA);
// the kernel picks one per call with cpu::use_avx2() (the ISA switch, cpu_isa.h).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include <c10/macros/Macros.h>

#include "act.h"
#include "cpu_isa.h"

namespace effnet::cpu {

// exp(x) in float32: Cephes' polynomial after reduction by n = rint(x / ln 2) (the magic-number
// add rounds to nearest), 2^n built in the exponent bits. Max relative error 8e-8 over the
// clamped range [-87, 88]. Pure branch-free arithmetic, so loops over it vectorise; this needs
// -fno-trapping-math (set by setup.py and CMakeLists.txt), which lets GCC if-convert the clamps.
C10_ALWAYS_INLINE float exp_vec(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  const float z = x * x;
  float p = 1.9875691500e-4f;
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * z + x + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

template <Act A>
C10_ALWAYS_INLINE float act_vec(float v) {
  if constexpr (A == Act::SiLU) {
    return v / (1.0f + exp_vec(-v));
  } else {
    return apply_act<A>(v);
  }
}

}  // namespace effnet::cpu

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EFFNET_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define EFFNET_HAVE_AVX2_BUILD 1
#else
#define EFFNET_TARGET_AVX2
#define EFFNET_HAVE_AVX2_BUILD 0
#endif

#if EFFNET_HAVE_AVX2_BUILD
#include <immintrin.h>

namespace effnet::cpu {

// 8-wide exp_vec (same polynomial and clamp) and activations, for the AVX2 builds: GCC leaves
// parts of the scalar versions unvectorised (blends for the clamps, a scalar division loop).
EFFNET_TARGET_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, z, x), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

template <Act A>
EFFNET_TARGET_AVX2 inline __m256 act256(__m256 v) {
  if constexpr (A == Act::SiLU) {
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f),
                                          exp256(_mm256_sub_ps(_mm256_setzero_ps(), v))));
  } else if constexpr (A == Act::ReLU6) {  // max/min with v second: NaN propagates
    return _mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(_mm256_setzero_ps(), v));
  } else if constexpr (A == Act::ReLU) {
    return _mm256_max_ps(_mm256_setzero_ps(), v);
  } else {
    return v;
  }
}

// (act(v), act'(v)) for 8 lanes (PyTorch's derivative conventions: 0 at the ReLU / ReLU6 kinks):
// the training kernels' backward (bn_act_backward, dwconv_train).
template <Act A>
EFFNET_TARGET_AVX2 inline void act_and_grad256(__m256 v, __m256& a, __m256& g) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  if constexpr (A == Act::SiLU) {
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, v))));
    a = _mm256_mul_ps(v, s);
    g = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
  } else if constexpr (A == Act::ReLU6) {
    const __m256 six = _mm256_set1_ps(6.0f);
    a = act256<A>(v);
    g = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ),
                                    _mm256_cmp_ps(v, six, _CMP_LT_OQ)), one);
  } else if constexpr (A == Act::ReLU) {
    a = act256<A>(v);
    g = _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), one);
  } else {
    a = v;
    g = one;
  }
}

// For n float32 values, v = x[j]·scale[j % C] + shift[j % C] over pixels of C channels:
// a[j] = act(v) and, with G, g[j] = act'(v) — the 8-lane part of each pixel; returns nothing,
// the caller finishes channels [C & ~7, C) of every pixel. The BN-act prologue of the training
// kernels (dwconv_train).
template <Act A, bool G>
EFFNET_TARGET_AVX2 inline void bn_act_pixels_avx2(const float* x, const float* scale,
                                                  const float* shift, int64_t pixels, int64_t C,
                                                  float* a, float* g) {
  const int64_t C8 = C & ~int64_t{7};
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t o = p * C;
    for (int64_t c = 0; c < C8; c += 8) {
      const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(x + o + c), _mm256_loadu_ps(scale + c),
                                       _mm256_loadu_ps(shift + c));
      if constexpr (G) {
        __m256 av, gv;
        act_and_grad256<A>(v, av, gv);
        _mm256_storeu_ps(a + o + c, av);
        _mm256_storeu_ps(g + o + c, gv);
      } else {
        _mm256_storeu_ps(a + o + c, act256<A>(v));
      }
    }
  }
}

// For one row of n float32 values: v = act(a[j] + bias[j]) (+ res[j] when RES); then
// y[j] = v (STORE) or psum[j] += v. The fused epilogue of bias_act and pointwise_conv.
template <Act A, bool RES, bool STORE>
EFFNET_TARGET_AVX2 inline void bias_act_row_avx2(const float* a, const float* bias,
                                                 const float* res, float* y, float* psum,
                                                 int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = act256<A>(_mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(bias + j)));
    if constexpr (RES) v = _mm256_add_ps(v, _mm256_loadu_ps(res + j));
    if constexpr (STORE) {
      _mm256_storeu_ps(y + j, v);
    } else {
      _mm256_storeu_ps(psum + j, _mm256_add_ps(_mm256_loadu_ps(psum + j), v));
    }
  }
  for (; j < n; ++j) {
    float v = act_vec<A>(a[j] + bias[j]);
    if constexpr (RES) v += res[j];
    if constexpr (STORE) {
      y[j] = v;
    } else {
      psum[j] += v;
    }
  }
}

}  // namespace effnet::cpu
#endif

