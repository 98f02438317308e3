// CPU kernel of effnet::bn_act_apply: the training ops' "BN-act prologue" (effnet_kernels/
// train_ops.py) as one pass, y = act(x·scale[c] + (beta[c] − mean[c]·scale[c])) · gate[n, c],
// for a channels_last float32 x; the gate is optional. The ops run it where a layer reads the
// previous conv's output (forward) and again in backward to recompute the conv input (ATen: an
// addcmul, the activation and the gate multiply, two temporaries).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/act.h"
#include "../common/bn_act.h"
#include "../common/cpu_isa.h"
#include "../common/cpu_math.h"

namespace effnet {
namespace {

using fVec = at::vec::Vectorized<float>;

template <Act A>
inline fVec act_of(fVec v) {
  const fVec zero(0.0f);
  if constexpr (A == Act::SiLU) {
    return v / (fVec(1.0f) + v.neg().exp());
  } else if constexpr (A == Act::ReLU6) {
    return at::vec::clamp(v, zero, fVec(6.0f));
  } else if constexpr (A == Act::ReLU) {
    return at::vec::clamp_min(v, zero);
  } else {
    return v;
  }
}

// Rows [r0, r1) of one image; gate: that image's (C,) gate or null.
template <Act A>
void rows_apply(const float* x, const float* scale, const float* shift, const float* gate,
                float* y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    int64_t c = 0;
    for (; c + fVec::size() <= C; c += fVec::size()) {
      fVec a = act_of<A>(at::vec::fmadd(fVec::loadu(xr + c), fVec::loadu(scale + c),
                                        fVec::loadu(shift + c)));
      if (gate != nullptr) a = a * fVec::loadu(gate + c);
      a.store(yr + c);
    }
    for (; c < C; ++c) {
      const float a = apply_act<A>(xr[c] * scale[c] + shift[c]);
      yr[c] = gate != nullptr ? a * gate[c] : a;
    }
  }
}

// The same rows with AVX2 intrinsics (at::vec is the portable build's, not AVX2, in the
// extension): 8 channels a step, the shared exp polynomial of cpu_math.h.
template <Act A>
C10_NOINLINE EFFNET_TARGET_AVX2 void rows_apply_avx2(const float* x, const float* scale,
                                                     const float* shift, const float* gate,
                                                     float* y, int64_t r0, int64_t r1,
                                                     int64_t C) {
#if EFFNET_HAVE_AVX2_BUILD
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      __m256 a = cpu::act256<A>(_mm256_fmadd_ps(_mm256_loadu_ps(xr + c),
                                                _mm256_loadu_ps(scale + c),
                                                _mm256_loadu_ps(shift + c)));
      if (gate != nullptr) a = _mm256_mul_ps(a, _mm256_loadu_ps(gate + c));
      _mm256_storeu_ps(yr + c, a);
    }
    for (; c < C; ++c) {
      const float a = apply_act<A>(xr[c] * scale[c] + shift[c]);
      yr[c] = gate != nullptr ? a * gate[c] : a;
    }
  }
#else
  rows_apply<A>(x, scale, shift, gate, y, r0, r1, C);
#endif
}

}  // namespace

at::Tensor bn_act_apply_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& scale,
                            const at::Tensor& beta, const std::string& act,
                            const c10::optional<at::Tensor>& gate) {
  const BnActArgs args = bn_act_args("bn_act_apply", x, mean, scale, beta, gate);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const Act a = parse_act(act);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (N * HW * C == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* sp = args.scale.data_ptr<float>();
  const float* hp = args.shift.data_ptr<float>();
  const float* gp = args.has_gate ? args.gate.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Enough rows per task that a task moves at least ~64 KiB; a task never spans two images.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  const int64_t per = (HW + grain - 1) / grain;
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  dispatch_act(a, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    at::parallel_for(0, N * per, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / per, j = t % per;
        const int64_t r0 = n * HW + j * grain, r1 = n * HW + std::min(HW, (j + 1) * grain);
        const float* gn = gp == nullptr ? nullptr : gp + n * C;
        if (avx2) {
          rows_apply_avx2<A>(xp, sp, hp, gn, yp, r0, r1, C);
        } else {
          rows_apply<A>(xp, sp, hp, gn, yp, r0, r1, C);
        }
      }
    });
  });
  return y;
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("bn_act_apply", &bn_act_apply_cpu); }

}  // namespace effnet
