// CPU implementation of effnet::dwconv_bias_act (contract in dwconv.h).
//
// Layout NHWC: an output pixel's C channels are contiguous, and so are the C channels of every
// input tap. Parallel over (n, output row) with at::parallel_for; within a row, pixel by pixel,
// and within a pixel channel blocks of kCB = 64 floats kept in registers (8 AVX2 vectors) across
// all k*k taps; then bias, act, store, and the row's per-channel sums of y for the pool, one
// vectorised epilogue call per pixel. Weights are transposed once per
// call to [k*k][C] float32 so each tap reads a contiguous channel block. The pool is reduced from
// per-row partial sums in a fixed order (deterministic). Kernels are built for the baseline ISA
// and for AVX2+FMA, chosen per call by the ISA switch (cpu_isa.h).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_math.h"
#include "../common/dispatch.h"
#include "dwconv.h"

namespace effnet {
namespace {

constexpr int kCB = 64;

// y[j] = act(acc[j]) narrowed to T and psum[j] += act(acc[j]) for one pixel's n channels. Kept
// out of line with restrict pointers so GCC vectorises it; the float AVX2 case is written in
// intrinsics (GCC leaves the clamps as blends and part of the loop scalar).
template <typename T, Act A>
C10_ALWAYS_INLINE void act_store_body(const float* __restrict acc, T* __restrict y,
                                      float* __restrict psum, int n) {
  for (int j = 0; j < n; ++j) {
    const float v = cpu::act_vec<A>(acc[j]);
    y[j] = static_cast<T>(v);
    psum[j] += v;
  }
}

template <typename T, Act A>
C10_NOINLINE void act_store_base(const float* acc, T* y, float* psum, int n) {
  act_store_body<T, A>(acc, y, psum, n);
}

template <typename T, Act A>
C10_NOINLINE EFFNET_TARGET_AVX2 void act_store_avx2(const float* acc, T* y, float* psum, int n) {
#if EFFNET_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {
    const int n8 = n & ~7;
    for (int j = 0; j < n8; j += 8) {
      const __m256 v = cpu::act256<A>(_mm256_loadu_ps(acc + j));
      _mm256_storeu_ps(y + j, v);
      _mm256_storeu_ps(psum + j, _mm256_add_ps(_mm256_loadu_ps(psum + j), v));
    }
    for (int j = n8; j < n; ++j) {
      const float v = cpu::act_vec<A>(acc[j]);
      y[j] = v;
      psum[j] += v;
    }
    return;
  }
#endif
  act_store_body<T, A>(acc, y, psum, n);
}

// One output pixel, channel block [c0, c0 + NB): acc over the valid taps, kept in registers
// (NB == kCB: unrolled), written to out[0, NB). The tail block passes NB = 0 and its width cb.
template <int NB, typename T>
C10_ALWAYS_INLINE void conv_block(const T* __restrict x, const float* __restrict wt,
                                  const float* __restrict b, float* __restrict out, int64_t C,
                                  int64_t W, int k, int64_t h0, int kh_lo, int kh_hi, int64_t w0,
                                  int kw_lo, int kw_hi, int64_t c0, int cb) {
  constexpr int CAP = NB > 0 ? NB : kCB;
  const int n = NB > 0 ? NB : cb;
  float acc[CAP];
  for (int j = 0; j < n; ++j) acc[j] = b[c0 + j];
  for (int kh = kh_lo; kh < kh_hi; ++kh) {
    const T* xr = x + ((h0 + kh) * W + w0) * C + c0;
    const float* wr = wt + static_cast<int64_t>(kh) * k * C + c0;
    for (int kw = kw_lo; kw < kw_hi; ++kw) {
      const T* xp = xr + kw * C;
      const float* wp = wr + kw * C;
      for (int j = 0; j < n; ++j) acc[j] += wp[j] * static_cast<float>(xp[j]);
    }
  }
  for (int j = 0; j < n; ++j) out[c0 + j] = acc[j];
}

// Output rows [r0, r1) of the flattened (n, ho) index. Pixel by pixel, all channels of a pixel
// before the next: the k*k input pixels it needs are contiguous C-vectors, so x streams through
// the cache in order and the [k*k][C] weights stay in L1. A pixel's C pre-activations go to
// `acc` (L1), then one vectorised epilogue call handles the whole pixel.
template <bool AVX2, typename T, Act A>
C10_ALWAYS_INLINE void rows_impl(const T* x, const float* wt, const float* b, T* y, float* partial,
                                 const DwShape& s, int64_t r0, int64_t r1) {
  const int64_t C = s.C;
  std::vector<float> buf(2 * C);
  float* acc = buf.data();
  float* psum = buf.data() + C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / s.Ho, ho = r % s.Ho;
    const T* xn = x + n * s.H * s.W * C;
    T* yr = y + r * s.Wo * C;
    std::fill(psum, psum + C, 0.0f);
    const int64_t h0 = ho * s.stride - s.pad_top;
    const int kh_lo = static_cast<int>(std::max<int64_t>(0, -h0));
    const int kh_hi = static_cast<int>(std::min<int64_t>(s.k, s.H - h0));
    for (int64_t wo = 0; wo < s.Wo; ++wo) {
      const int64_t w0 = wo * s.stride - s.pad_left;
      const int kw_lo = static_cast<int>(std::max<int64_t>(0, -w0));
      const int kw_hi = static_cast<int>(std::min<int64_t>(s.k, s.W - w0));
      int64_t c0 = 0;
      for (; c0 + kCB <= C; c0 += kCB) {
        conv_block<kCB, T>(xn, wt, b, acc, C, s.W, s.k, h0, kh_lo, kh_hi, w0, kw_lo, kw_hi, c0,
                           kCB);
      }
      if (c0 < C) {
        conv_block<0, T>(xn, wt, b, acc, C, s.W, s.k, h0, kh_lo, kh_hi, w0, kw_lo, kw_hi, c0,
                         static_cast<int>(C - c0));
      }
      if constexpr (AVX2) {
        act_store_avx2<T, A>(acc, yr + wo * C, psum, static_cast<int>(C));
      } else {
        act_store_base<T, A>(acc, yr + wo * C, psum, static_cast<int>(C));
      }
    }
    if (partial != nullptr) std::copy(psum, psum + C, partial + r * C);
  }
}

template <typename T, Act A>
void rows_base(const T* x, const float* wt, const float* b, T* y, float* partial,
               const DwShape& s, int64_t r0, int64_t r1) {
  rows_impl<false, T, A>(x, wt, b, y, partial, s, r0, r1);
}

template <typename T, Act A>
EFFNET_TARGET_AVX2 void rows_avx2(const T* x, const float* wt, const float* b, T* y,
                                  float* partial, const DwShape& s, int64_t r0, int64_t r1) {
  rows_impl<true, T, A>(x, wt, b, y, partial, s, r0, r1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dwconv_bias_act_cpu(const at::Tensor& x,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, int64_t stride,
                                                       at::IntArrayRef padding,
                                                       const std::string& act, bool return_pool) {
  const DwShape s = check_dwconv_args(x, weight, bias, stride, padding);
  const Act a = parse_act(act);
  const auto f32 = x.options().dtype(at::kFloat);
  // [k*k][C] float32 weights and float32 bias: tiny, read by every output pixel.
  const at::Tensor wt = weight.reshape({s.C, s.k * s.k}).t().to(at::kFloat).contiguous();
  const at::Tensor bf = bias.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({s.N, s.C, s.Ho, s.Wo},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor pool = return_pool ? at::empty({s.N, s.C}, f32) : at::empty({0}, f32);
  const int64_t rows = s.N * s.Ho;
  if (y.numel() == 0) {
    if (return_pool) pool.zero_();
    return {y, pool};
  }
  at::Tensor partial = return_pool ? at::empty({rows, s.C}, f32) : at::Tensor();
  float* pp = return_pool ? partial.mutable_data_ptr<float>() : nullptr;
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  // ~16k multiply-adds per task at least.
  const int64_t grain =
      std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.Wo * s.C * s.k * s.k));
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dwconv_bias_act_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const float* wp = wt.const_data_ptr<float>();
    const float* bp = bf.const_data_ptr<float>();
    dispatch_act(a, [&](auto act_c) {
      constexpr Act A = decltype(act_c)::value;
      auto fn = avx2 ? &rows_avx2<scalar_t, A> : &rows_base<scalar_t, A>;
      at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
        fn(xp, wp, bp, yp, pp, s, r0, r1);
      });
    });
  });
  if (return_pool) {
    // Fixed-order sum of the per-row partials: deterministic whatever the thread count.
    const float* part = partial.const_data_ptr<float>();
    float* out = pool.mutable_data_ptr<float>();
    const float inv = 1.0f / static_cast<float>(s.Ho * s.Wo);
    at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        float* o = out + n * s.C;
        std::fill(o, o + s.C, 0.0f);
        for (int64_t ho = 0; ho < s.Ho; ++ho) {
          const float* p = part + (n * s.Ho + ho) * s.C;
          for (int64_t c = 0; c < s.C; ++c) o[c] += p[c];
        }
        for (int64_t c = 0; c < s.C; ++c) o[c] *= inv;
      }
    });
  }
  return {y, pool};
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("dwconv_bias_act", &dwconv_bias_act_cpu); }

}  // namespace effnet
