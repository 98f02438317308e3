// CPU implementation of effnet::bias_act (see bias_act.h for the contract).
//
// Layout: NHWC, so each of the N*H*W rows is C contiguous values that share the bias vector.
// Parallel over rows (at::parallel_for); float rows go through the AVX2 intrinsics epilogue of
// cpu_math.h when the ISA switch allows AVX2 (cpu_isa.h), otherwise (and for reduced precision)
// at::vec float vectors with a scalar tail, reduced-precision inputs widened to float32 on load.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cpu_math.h"
#include "../common/dispatch.h"
#include "bias_act.h"

namespace effnet {
namespace {

using fVec = at::vec::Vectorized<float>;

template <Act A>
inline fVec act_vec(fVec v) {
  if constexpr (A == Act::SiLU) {
    return v / (fVec(1.0f) + v.neg().exp());
  } else if constexpr (A == Act::ReLU6) {
    return at::vec::clamp(v, fVec(0.0f), fVec(6.0f));
  } else if constexpr (A == Act::ReLU) {
    return at::vec::clamp_min(v, fVec(0.0f));
  } else {
    return v;
  }
}

template <Act A>
void row_float(const float* x, const float* b, float* y, int64_t C) {
  int64_t c = 0;
  for (; c + fVec::size() <= C; c += fVec::size()) {
    act_vec<A>(fVec::loadu(x + c) + fVec::loadu(b + c)).store(y + c);
  }
  for (; c < C; ++c) y[c] = apply_act<A>(x[c] + b[c]);
}

// float16 / bfloat16: widen to float32, compute, narrow.
template <typename T, Act A>
void row_reduced(const T* x, const T* b, T* y, int64_t C) {
  using rVec = at::vec::Vectorized<T>;
  int64_t c = 0;
  for (; c + rVec::size() <= C; c += rVec::size()) {
    auto [x0, x1] = at::vec::convert_to_float<T>(rVec::loadu(x + c));
    auto [b0, b1] = at::vec::convert_to_float<T>(rVec::loadu(b + c));
    at::vec::convert_from_float<T>(act_vec<A>(x0 + b0), act_vec<A>(x1 + b1)).store(y + c);
  }
  for (; c < C; ++c) {
    y[c] = static_cast<T>(apply_act<A>(static_cast<float>(x[c]) + static_cast<float>(b[c])));
  }
}

template <Act A>
C10_NOINLINE EFFNET_TARGET_AVX2 void row_float_avx2(const float* x, const float* b, float* y,
                                                    int64_t C) {
#if EFFNET_HAVE_AVX2_BUILD
  cpu::bias_act_row_avx2<A, false, true>(x, b, nullptr, y, nullptr, C);
#else
  row_float<A>(x, b, y, C);
#endif
}

}  // namespace

at::Tensor bias_act_cpu(const at::Tensor& x, const at::Tensor& bias, const std::string& act) {
  check_bias_act_args(x, bias);
  const Act a = parse_act(act);
  const at::Tensor b = bias.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t C = x.size(1);
  const int64_t rows = C == 0 ? 0 : x.numel() / C;
  if (rows == 0) return y;
  // Enough rows per task that a task moves at least ~32 KiB.
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1));
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "bias_act_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    dispatch_act(a, [&](auto act_c) {
      constexpr Act A = decltype(act_c)::value;
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (avx2) {
              row_float_avx2<A>(xp + r * C, bp, yp + r * C, C);
            } else {
              row_float<A>(xp + r * C, bp, yp + r * C, C);
            }
          } else {
            row_reduced<scalar_t, A>(xp + r * C, bp, yp + r * C, C);
          }
        }
      });
    });
  });
  return y;
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("bias_act", &bias_act_cpu); }

}  // namespace effnet
