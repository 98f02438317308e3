// CPU kernel of effnet::bn_act_backward: the fused backward of the training ops' "BN-act
// prologue" (effnet_kernels/train_ops.py), y = act(x·scale[c] + shift[c]) · gate[n, c] with
// shift = beta − mean·scale:
//
//   a = act(v), v = x·scale + shift        (recomputed from the saved x, never stored)
//   dgate[n, c] = Σ_hw dy·a                (only with a gate)
//   dv = dy·gate·act'(v)                   (PyTorch's derivative conventions: 0 at ReLU kinks)
//   dx = dv·scale,  dbeta[c] = Σ dv,  dscale[c] = Σ dv·(x − mean)
//
// One pass over x and dy (eager PyTorch / the ATen composition: ~6 passes and 3 temporaries).
// Layout: channels_last float32 x and dy, so each of the N·H·W rows is C contiguous values.
// Parallel over tasks of rows inside one image; each task sums 256-row blocks in float32 and
// adds the blocks into float64 partial sums, which are reduced in task order (deterministic
// for a given thread-independent task split).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../common/act.h"
#include "../common/cpu_isa.h"
#include "../common/cpu_math.h"

namespace effnet {
namespace {

using fVec = at::vec::Vectorized<float>;

template <Act A>
inline float act_grad_scalar(float v) {
  if constexpr (A == Act::SiLU) {
    const float s = 1.0f / (1.0f + std::exp(-v));
    return s * (1.0f + v * (1.0f - s));
  } else if constexpr (A == Act::ReLU6) {
    return (v > 0.0f && v < 6.0f) ? 1.0f : 0.0f;
  } else if constexpr (A == Act::ReLU) {
    return v > 0.0f ? 1.0f : 0.0f;
  } else {
    return 1.0f;
  }
}

// (act(v), act'(v)) for a vector.
template <Act A>
inline std::pair<fVec, fVec> act_and_grad(fVec v) {
  const fVec one(1.0f), zero(0.0f);
  if constexpr (A == Act::SiLU) {
    const fVec s = one / (one + v.neg().exp());
    return {v * s, s * (one + v * (one - s))};
  } else if constexpr (A == Act::ReLU6) {
    const fVec six(6.0f);
    const fVec inside = (v > zero) & (v < six);
    return {at::vec::clamp(v, zero, six), fVec::blendv(zero, one, inside)};
  } else if constexpr (A == Act::ReLU) {
    return {at::vec::clamp_min(v, zero), fVec::blendv(zero, one, v > zero)};
  } else {
    return {v, one};
  }
}

constexpr int64_t kBlock = 256;  // rows summed in float32 before a float64 flush

template <Act A, bool G>
void task(const float* x, const float* dy, const float* mean, const float* scale,
          const float* shift, const float* gate, float* dx, double* part, int64_t r0,
          int64_t r1, int64_t C) {
  // part: [dscale C][dbeta C][dgate C] float64 partial sums of this task (one image).
  std::vector<float> acc(3 * C);
  float* as = acc.data();
  float* ab = as + C;
  float* ag = ab + C;
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t b1 = std::min(r1, b0 + kBlock);
    for (int64_t r = b0; r < b1; ++r) {
      const float* xr = x + r * C;
      const float* dr = dy + r * C;
      float* o = dx + r * C;
      int64_t c = 0;
      for (; c + fVec::size() <= C; c += fVec::size()) {
        const fVec xv = fVec::loadu(xr + c), sc = fVec::loadu(scale + c);
        const fVec v = at::vec::fmadd(xv, sc, fVec::loadu(shift + c));
        auto [a, g] = act_and_grad<A>(v);
        fVec d = fVec::loadu(dr + c);
        if constexpr (G) {
          (fVec::loadu(ag + c) + d * a).store(ag + c);
          d = d * fVec::loadu(gate + c);
        }
        const fVec dv = d * g;
        (dv * sc).store(o + c);
        (fVec::loadu(ab + c) + dv).store(ab + c);
        (fVec::loadu(as + c) + dv * (xv - fVec::loadu(mean + c))).store(as + c);
      }
      for (; c < C; ++c) {
        const float v = xr[c] * scale[c] + shift[c];
        float d = dr[c];
        if constexpr (G) {
          ag[c] += d * apply_act<A>(v);
          d *= gate[c];
        }
        const float dv = d * act_grad_scalar<A>(v);
        o[c] = dv * scale[c];
        ab[c] += dv;
        as[c] += dv * (xr[c] - mean[c]);
      }
    }
    for (int64_t c = 0; c < 3 * C; ++c) part[c] += acc[c];
  }
}

#if EFFNET_HAVE_AVX2_BUILD
// (act(v), act'(v)) for 8 lanes with AVX2 (cpu_math.h's exp polynomial).
template <Act A>
EFFNET_TARGET_AVX2 inline void act_and_grad256(__m256 v, __m256& a, __m256& g) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  if constexpr (A == Act::SiLU) {
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, cpu::exp256(_mm256_sub_ps(zero, v))));
    a = _mm256_mul_ps(v, s);
    g = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
  } else if constexpr (A == Act::ReLU6) {
    const __m256 six = _mm256_set1_ps(6.0f);
    a = cpu::act256<A>(v);
    g = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ),
                                    _mm256_cmp_ps(v, six, _CMP_LT_OQ)), one);
  } else if constexpr (A == Act::ReLU) {
    a = cpu::act256<A>(v);
    g = _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), one);
  } else {
    a = v;
    g = one;
  }
}
#endif

// `task` with AVX2 intrinsics for the 8-channel steps (the tail and the block flush as there).
template <Act A, bool G>
C10_NOINLINE EFFNET_TARGET_AVX2 void task_avx2(const float* x, const float* dy,
                                               const float* mean, const float* scale,
                                               const float* shift, const float* gate, float* dx,
                                               double* part, int64_t r0, int64_t r1, int64_t C) {
#if EFFNET_HAVE_AVX2_BUILD
  std::vector<float> acc(3 * C);
  float* as = acc.data();
  float* ab = as + C;
  float* ag = ab + C;
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t b1 = std::min(r1, b0 + kBlock);
    for (int64_t r = b0; r < b1; ++r) {
      const float* xr = x + r * C;
      const float* dr = dy + r * C;
      float* o = dx + r * C;
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) {
        const __m256 xv = _mm256_loadu_ps(xr + c), sc = _mm256_loadu_ps(scale + c);
        __m256 a, g;
        act_and_grad256<A>(_mm256_fmadd_ps(xv, sc, _mm256_loadu_ps(shift + c)), a, g);
        __m256 d = _mm256_loadu_ps(dr + c);
        if constexpr (G) {
          _mm256_storeu_ps(ag + c, _mm256_fmadd_ps(d, a, _mm256_loadu_ps(ag + c)));
          d = _mm256_mul_ps(d, _mm256_loadu_ps(gate + c));
        }
        const __m256 dv = _mm256_mul_ps(d, g);
        _mm256_storeu_ps(o + c, _mm256_mul_ps(dv, sc));
        _mm256_storeu_ps(ab + c, _mm256_add_ps(_mm256_loadu_ps(ab + c), dv));
        _mm256_storeu_ps(as + c, _mm256_fmadd_ps(dv, _mm256_sub_ps(xv, _mm256_loadu_ps(mean + c)),
                                                 _mm256_loadu_ps(as + c)));
      }
      for (; c < C; ++c) {
        const float v = xr[c] * scale[c] + shift[c];
        float d = dr[c];
        if constexpr (G) {
          ag[c] += d * apply_act<A>(v);
          d *= gate[c];
        }
        const float dv = d * act_grad_scalar<A>(v);
        o[c] = dv * scale[c];
        ab[c] += dv;
        as[c] += dv * (xr[c] - mean[c]);
      }
    }
    for (int64_t c = 0; c < 3 * C; ++c) part[c] += acc[c];
  }
#else
  task<A, G>(x, dy, mean, scale, shift, gate, dx, part, r0, r1, C);
#endif
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(
    const at::Tensor& x, const at::Tensor& dy, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& beta, const std::string& act, const c10::optional<at::Tensor>& gate) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  TORCH_CHECK_VALUE(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(cl),
                    "bn_act_backward: x must be a channels_last float32 (N, C, H, W) tensor");
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes() && dy.scalar_type() == at::kFloat &&
                        dy.is_contiguous(cl),
                    "bn_act_backward: dy must be a channels_last float32 tensor shaped like x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  for (const at::Tensor* t : {&mean, &scale, &beta}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == C && t->scalar_type() == at::kFloat,
                      "bn_act_backward: mean, scale and beta must be float32 (C,) vectors");
  }
  const bool has_gate = gate.has_value() && gate->defined();
  if (has_gate) {
    TORCH_CHECK_VALUE(gate->dim() == 2 && gate->size(0) == N && gate->size(1) == C &&
                          gate->scalar_type() == at::kFloat,
                      "bn_act_backward: gate must be a float32 (N, C) tensor");
  }
  const Act a = parse_act(act);
  const at::Tensor m = mean.contiguous(), s = scale.contiguous();
  const at::Tensor shift = beta.contiguous().sub(m.mul(s));
  const at::Tensor g = has_gate ? gate->contiguous() : at::Tensor();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(cl));
  at::Tensor dscale = at::zeros({C}, x.options());
  at::Tensor dbeta = at::zeros({C}, x.options());
  at::Tensor dgate = at::zeros({has_gate ? N : 0, has_gate ? C : 0}, x.options());
  if (N * HW * C == 0) return {dx, dscale, dbeta, dgate};
  // Tasks: `per` row ranges inside each image, enough of them for the threads.
  const int64_t threads = at::get_num_threads();
  const int64_t per = std::max<int64_t>(
      1, std::min<int64_t>(HW / 64 + 1, (4 * threads + N - 1) / N));
  const int64_t tasks = N * per;
  std::vector<double> part(static_cast<size_t>(tasks) * 3 * C, 0.0);
  const float* xp = x.data_ptr<float>();
  const float* dp = dy.data_ptr<float>();
  float* op = dx.data_ptr<float>();
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  const float* mp = m.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  const float* hp = shift.data_ptr<float>();
  dispatch_act(a, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / per, j = t % per;
        const int64_t r0 = n * HW + HW * j / per, r1 = n * HW + HW * (j + 1) / per;
        double* pt = part.data() + t * 3 * C;
        const float* gn = has_gate ? g.data_ptr<float>() + n * C : nullptr;
        if (has_gate) {
          (avx2 ? task_avx2<A, true> : task<A, true>)(xp, dp, mp, sp, hp, gn, op, pt, r0, r1,
                                                      C);
        } else {
          (avx2 ? task_avx2<A, false> : task<A, false>)(xp, dp, mp, sp, hp, gn, op, pt, r0,
                                                        r1, C);
        }
      }
    });
  });
  std::vector<double> ds(C, 0.0), db(C, 0.0), dg(has_gate ? N * C : 0, 0.0);
  for (int64_t t = 0; t < tasks; ++t) {
    const double* pt = part.data() + t * 3 * C;
    for (int64_t c = 0; c < C; ++c) {
      ds[c] += pt[c];
      db[c] += pt[C + c];
      if (has_gate) dg[(t / per) * C + c] += pt[2 * C + c];
    }
  }
  float* dsp = dscale.data_ptr<float>();
  float* dbp = dbeta.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    dsp[c] = static_cast<float>(ds[c]);
    dbp[c] = static_cast<float>(db[c]);
  }
  if (has_gate) {
    float* dgp = dgate.data_ptr<float>();
    for (int64_t i = 0; i < N * C; ++i) dgp[i] = static_cast<float>(dg[i]);
  }
  return {dx, dscale, dbeta, dgate};
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("bn_act_backward", &bn_act_backward_cpu); }

}  // namespace effnet
