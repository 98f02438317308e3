// CPU implementation of effnet::pointwise_conv (contract in pointwise.h).
//
// The GEMM goes to ATen (MKL / oneDNN sgemm) in float32, per sample as (HW, Cin) x (Cin, Cout).
// The SE gate is folded into that sample's weights (Cout*Cin multiplies) when that is cheaper
// than scaling its input (HW*Cin), else the input is scaled; either way in a small per-task
// buffer, never as a full tensor. The epilogue (bias, act, residual, cast or pool) is one fused
// pass over the GEMM output while it is still in cache. Parallel over samples, and within a
// sample by ATen's GEMM threads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../common/act.h"
#include "../common/cpu_math.h"
#include "../common/dispatch.h"
#include "pointwise.h"

namespace effnet {
namespace {

// One output row of Cout values: v = act(acc + bias) (+ residual); store or add to psum.
template <typename T, Act A, bool RES, bool STORE>
C10_ALWAYS_INLINE void epilogue_body(const float* __restrict acc, const float* __restrict bias,
                                     const T* __restrict res, T* __restrict y,
                                     float* __restrict psum, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float v = cpu::act_vec<A>(acc[j] + bias[j]);
    if constexpr (RES) v += static_cast<float>(res[j]);
    if constexpr (STORE) {
      y[j] = static_cast<T>(v);
    } else {
      psum[j] += v;
    }
  }
}

template <typename T, Act A, bool RES, bool STORE>
C10_NOINLINE void epilogue_base(const float* acc, const float* bias, const T* res, T* y,
                                float* psum, int64_t n) {
  epilogue_body<T, A, RES, STORE>(acc, bias, res, y, psum, n);
}

template <typename T, Act A, bool RES, bool STORE>
C10_NOINLINE EFFNET_TARGET_AVX2 void epilogue_avx2(const float* acc, const float* bias,
                                                   const T* res, T* y, float* psum, int64_t n) {
#if EFFNET_HAVE_AVX2_BUILD
  if constexpr (std::is_same_v<T, float>) {  // the hot case, in intrinsics
    cpu::bias_act_row_avx2<A, RES, STORE>(acc, bias, res, y, psum, n);
    return;
  }
#endif
  epilogue_body<T, A, RES, STORE>(acc, bias, res, y, psum, n);
}

}  // namespace

at::Tensor pointwise_conv_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const std::string& act,
                              const std::optional<at::Tensor>& gate,
                              const std::optional<at::Tensor>& residual, bool pool_only) {
  check_pointwise_args(x, weight, bias, gate, residual);
  const Act a = parse_act(act);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Cout = weight.size(0);
  const auto f32 = x.options().dtype(at::kFloat);
  // (N, HW, Cin) views of the NHWC data; float32 copies only for reduced-precision inputs.
  const at::Tensor xm = x.permute({0, 2, 3, 1}).reshape({N, HW, Cin}).to(at::kFloat);
  const at::Tensor wf = weight.to(at::kFloat).contiguous();
  const at::Tensor bf = bias.to(at::kFloat).contiguous();
  const at::Tensor g = gate.has_value() ? gate->contiguous() : at::Tensor();
  const at::Tensor r = residual.has_value() ? *residual : at::Tensor();
  at::Tensor out = pool_only ? at::zeros({N, Cout}, f32)
                             : at::empty({N, Cout, H, W},
                                         x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (N == 0 || Cout == 0) return out;
  if (HW == 0) return pool_only ? out.fill_(std::numeric_limits<float>::quiet_NaN()) : out;
  const bool fold_gate_into_w = gate.has_value() && HW > Cout;
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  const float* bp = bf.const_data_ptr<float>();

  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "pointwise_conv_cpu", [&] {
    using T = scalar_t;
    dispatch_act(a, [&](auto act_c) {
      constexpr Act A = decltype(act_c)::value;
      // One sample at a time; ATen's GEMM parallelises inside, the epilogue over rows.
      for (int64_t n = 0; n < N; ++n) {
        at::Tensor xs = xm[n];  // (HW, Cin)
        at::Tensor wt = wf;     // (Cout, Cin)
        if (gate.has_value()) {
          if (fold_gate_into_w) {
            wt = wf.mul(g[n].unsqueeze(0));
          } else {
            xs = xs.mul(g[n].unsqueeze(0));
          }
        }
        const at::Tensor acc = at::mm(xs, wt.t());  // (HW, Cout) float32, contiguous
        const float* ap = acc.const_data_ptr<float>();
        const T* rp = residual.has_value() ? r.const_data_ptr<T>() + n * HW * Cout : nullptr;
        if (!pool_only) {
          T* yp = out.mutable_data_ptr<T>() + n * HW * Cout;
          at::parallel_for(0, HW, std::max<int64_t>(1, 4096 / Cout), [&](int64_t p0, int64_t p1) {
            for (int64_t p = p0; p < p1; ++p) {
              const float* ar = ap + p * Cout;
              const T* rr = rp ? rp + p * Cout : nullptr;
              T* yr = yp + p * Cout;
              if (rp != nullptr) {
                (avx2 ? epilogue_avx2<T, A, true, true> : epilogue_base<T, A, true, true>)(
                    ar, bp, rr, yr, nullptr, Cout);
              } else {
                (avx2 ? epilogue_avx2<T, A, false, true> : epilogue_base<T, A, false, true>)(
                    ar, bp, rr, yr, nullptr, Cout);
              }
            }
          });
        } else {
          // Pool: rows summed in order into one float32 vector (deterministic).
          float* pp = out.mutable_data_ptr<float>() + n * Cout;
          for (int64_t p = 0; p < HW; ++p) {
            const T* rr = rp ? rp + p * Cout : nullptr;
            if (rp != nullptr) {
              (avx2 ? epilogue_avx2<T, A, true, false> : epilogue_base<T, A, true, false>)(
                  ap + p * Cout, bp, rr, nullptr, pp, Cout);
            } else {
              (avx2 ? epilogue_avx2<T, A, false, false> : epilogue_base<T, A, false, false>)(
                  ap + p * Cout, bp, rr, nullptr, pp, Cout);
            }
          }
          const float inv = 1.0f / static_cast<float>(HW);
          for (int64_t o = 0; o < Cout; ++o) pp[o] *= inv;
        }
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("pointwise_conv", &pointwise_conv_cpu); }

}  // namespace effnet
