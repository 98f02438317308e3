// CPU implementation of effnet::dwconv_int8 (contract: dwconv_int8.h; exact arithmetic:
// effnet_kernels/reference.py::dwconv_int8): a straight port of the integer reference.
//
//   acc[c] = sum over in-image taps of (x - in_zp) * w[c, tap]     (int32, exact)
//   a[c]   = act((float)acc * scale[c] + bias[c])                  (float32, reference order)
//   y[c]   = requantize(a, out_inv_scale, out_zp);  pool[n, c] = mean of a over the pixels
//
// Layout NHWC: one output pixel's C channels are contiguous, and so are the C channels of each
// input tap. Weights are transposed once per call to [k*k][C] int16 so a tap is one contiguous
// channel row (the multiply-add loop over c vectorises). Parallel over output rows (n, ho) with
// at::parallel_for; the pool is summed from per-row partials in a fixed order (deterministic).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_isa.h"
#include "../engine/engine_int8.h"
#include "dwconv_int8.h"
#include "../common/cpu_int8.h"  // last: switches FP contraction off (see there)

namespace effnet {
namespace {

// One output row (n, ho): y[wo, c] for every wo, and psum[c] += a (when psum != nullptr).
template <Act A>
void dwconv_int8_row(const QDwShape& s, const int8_t* x, const int16_t* wt, const float* scale,
                     const float* bias, int64_t n, int64_t ho, int8_t* y, float* psum,
                     int32_t* acc) {
  const int64_t C = s.C;
  const float inv = s.out_inv_scale, zp = static_cast<float>(s.out_zp);
  const int32_t in_zp = s.in_zp;
  const int64_t hbase = ho * s.stride - s.pad_top;
  for (int64_t wo = 0; wo < s.Wo; ++wo) {
    const int64_t wbase = wo * s.stride - s.pad_left;
    std::fill(acc, acc + C, 0);
    for (int kh = 0; kh < s.k; ++kh) {
      const int64_t hi = hbase + kh;
      if (hi < 0 || hi >= s.H) continue;  // padding is real zero: skip the tap
      for (int kw = 0; kw < s.k; ++kw) {
        const int64_t wi = wbase + kw;
        if (wi < 0 || wi >= s.W) continue;
        const int8_t* __restrict xp = x + ((n * s.H + hi) * s.W + wi) * C;
        const int16_t* __restrict wp = wt + (kh * s.k + kw) * C;
        int32_t* __restrict ap = acc;
        for (int64_t c = 0; c < C; ++c) {
          ap[c] += (static_cast<int32_t>(xp[c]) - in_zp) * static_cast<int32_t>(wp[c]);
        }
      }
    }
    int8_t* yp = y + ((n * s.Ho + ho) * s.Wo + wo) * C;
    for (int64_t c = 0; c < C; ++c) {
      const float a = cpu::dequant_act<A>(acc[c], scale[c], bias[c]);
      if (psum != nullptr) psum[c] += a;
      yp[c] = cpu::requantize(a, inv, zp);
    }
  }
}

// The AVX-512 path (engine_int8.h; bit-exact with the row kernel above) for k <= kDwMaxK:
// output rows over ATen's threads, each row's channel blocks with exact float32 FMAs, the pool
// partials per row as above.
void dwconv_int8_avx512(const QDwShape& s, Act act, const int8_t* x, const at::Tensor& weight,
                        const at::Tensor& scale, const at::Tensor& bias, int8_t* y, float* pp) {
  using namespace engine;
  const int64_t Cp = round16(s.C), kk = int64_t{s.k} * s.k;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor w = at::zeros({kk, Cp}, f32), sc = at::zeros({Cp}, f32), b = at::zeros({Cp}, f32);
  w.narrow(1, 0, s.C).copy_(weight.reshape({s.C, kk}).t());
  sc.narrow(0, 0, s.C).copy_(scale);
  b.narrow(0, 0, s.C).copy_(bias);
  QDwArgs d;
  d.W = s.W, d.C = s.C, d.OW = s.Wo, d.k = s.k, d.s = static_cast<int>(s.stride);
  d.pl = static_cast<int>(s.pad_left), d.x_form = 1, d.x_off = static_cast<float>(s.in_zp);
  d.w = w.const_data_ptr<float>(), d.scale = sc.const_data_ptr<float>();
  d.bias = b.const_data_ptr<float>(), d.act = static_cast<EAct>(static_cast<int>(act));
  d.out = QOut::S8, d.inv = s.out_inv_scale, d.zp = static_cast<float>(s.out_zp);
  const int64_t rows = s.N * s.Ho;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(s.Wo * s.C * kk, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    const void* in[kDwMaxK];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / s.Ho, ho = r % s.Ho;
      for (int kh = 0; kh < s.k; ++kh) {
        const int64_t hi = ho * s.stride - s.pad_top + kh;
        in[kh] = hi < 0 || hi >= s.H ? nullptr : x + (n * s.H + hi) * s.W * s.C;
      }
      qdw_row(d, in, y + r * s.Wo * s.C, pp != nullptr ? pp + r * s.C : nullptr);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dwconv_int8_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                   const at::Tensor& scale, const at::Tensor& bias,
                                                   int64_t stride, at::IntArrayRef padding,
                                                   int64_t in_zp, double out_inv_scale,
                                                   int64_t out_zp, const std::string& act,
                                                   bool return_pool) {
  const QDwShape s = check_dwconv_int8_args(x, weight, scale, bias, stride, padding, in_zp,
                                            out_inv_scale, out_zp);
  const Act a = parse_act(act);
  const auto f32 = x.options().dtype(at::kFloat);
  const at::Tensor sc = scale.contiguous();
  const at::Tensor b = bias.contiguous();
  at::Tensor y = at::empty({s.N, s.C, s.Ho, s.Wo},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor pool = return_pool ? at::empty({s.N, s.C}, f32) : at::empty({0}, f32);
  if (y.numel() == 0) {  // N == 0 or C == 0
    if (return_pool) pool.zero_();
    return {y, pool};
  }
  const int64_t rows = s.N * s.Ho;
  // Per-row pool partials, zeroed by their row's task.
  at::Tensor partial = return_pool ? at::empty({rows, s.C}, f32) : at::Tensor();
  float* pp = return_pool ? partial.mutable_data_ptr<float>() : nullptr;
  const int8_t* xp = x.const_data_ptr<int8_t>();
  if (s.k <= engine::kDwMaxK && cpu::active_isa() == cpu::Isa::AVX512 &&
      engine::int8_kernels_supported()) {
    dwconv_int8_avx512(s, a, xp, weight, sc, b, y.mutable_data_ptr<int8_t>(), pp);
  } else {
  // [k*k][C] int16 weights: each tap a contiguous channel row.
  const at::Tensor wt = weight.reshape({s.C, s.k * s.k}).t().to(at::kShort).contiguous();
  const int16_t* wp = wt.const_data_ptr<int16_t>();
  const float* sp = sc.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  int8_t* yp = y.mutable_data_ptr<int8_t>();
  // ~16k multiply-adds per task at least.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.Wo * s.C * s.k * s.k));
  dispatch_act(a, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<int32_t> acc(s.C);
      for (int64_t r = r0; r < r1; ++r) {
        float* psum = pp != nullptr ? pp + r * s.C : nullptr;
        if (psum != nullptr) std::fill(psum, psum + s.C, 0.0f);
        dwconv_int8_row<A>(s, xp, wp, sp, bp, r / s.Ho, r % s.Ho, yp, psum, acc.data());
      }
    });
  });
  }
  if (return_pool) {
    // Fixed-order sum of the row partials, in double: deterministic whatever the thread count.
    const float* part = partial.const_data_ptr<float>();
    float* out = pool.mutable_data_ptr<float>();
    const double count = static_cast<double>(s.Ho * s.Wo);
    at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<double> sum(s.C);
      for (int64_t n = n0; n < n1; ++n) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t ho = 0; ho < s.Ho; ++ho) {
          const float* p = part + (n * s.Ho + ho) * s.C;
          for (int64_t c = 0; c < s.C; ++c) sum[c] += p[c];
        }
        for (int64_t c = 0; c < s.C; ++c) out[n * s.C + c] = static_cast<float>(sum[c] / count);
      }
    });
  }
  return {y, pool};
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("dwconv_int8", &dwconv_int8_cpu); }

}  // namespace effnet
