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
#include "../common/bn_act.h"
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

// The pointers of one row: inputs, output, and the float32 block sums (dscale, dbeta, dgate).
struct Row {
  const float *x, *dy, *mean, *scale, *shift, *gate;
  float *dx, *as, *ab, *ag;
};

// Channels [c0, C) of a row, one at a time (the tail after the vector steps).
template <Act A, bool G>
inline void row_scalar(const Row& r, int64_t c0, int64_t C) {
  for (int64_t c = c0; c < C; ++c) {
    const float v = r.x[c] * r.scale[c] + r.shift[c];
    float d = r.dy[c];
    if constexpr (G) {
      r.ag[c] += d * apply_act<A>(v);
      d *= r.gate[c];
    }
    const float dv = d * act_grad_scalar<A>(v);
    r.dx[c] = dv * r.scale[c];
    r.ab[c] += dv;
    r.as[c] += dv * (r.x[c] - r.mean[c]);
  }
}

// The vector steps of a row with at::vec (the portable build); returns the first channel left.
template <Act A, bool G>
inline int64_t row_vec(const Row& r, int64_t C) {
  int64_t c = 0;
  for (; c + fVec::size() <= C; c += fVec::size()) {
    const fVec xv = fVec::loadu(r.x + c), sc = fVec::loadu(r.scale + c);
    auto [a, g] = act_and_grad<A>(at::vec::fmadd(xv, sc, fVec::loadu(r.shift + c)));
    fVec d = fVec::loadu(r.dy + c);
    if constexpr (G) {
      (fVec::loadu(r.ag + c) + d * a).store(r.ag + c);
      d = d * fVec::loadu(r.gate + c);
    }
    const fVec dv = d * g;
    (dv * sc).store(r.dx + c);
    (fVec::loadu(r.ab + c) + dv).store(r.ab + c);
    (fVec::loadu(r.as + c) + dv * (xv - fVec::loadu(r.mean + c))).store(r.as + c);
  }
  return c;
}


// The vector steps of a row with AVX2 intrinsics (8 channels a step).
template <Act A, bool G>
C10_NOINLINE EFFNET_TARGET_AVX2 int64_t row_avx2(const Row& r, int64_t C) {
#if EFFNET_HAVE_AVX2_BUILD
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    const __m256 xv = _mm256_loadu_ps(r.x + c), sc = _mm256_loadu_ps(r.scale + c);
    __m256 a, g;
    cpu::act_and_grad256<A>(_mm256_fmadd_ps(xv, sc, _mm256_loadu_ps(r.shift + c)), a, g);
    __m256 d = _mm256_loadu_ps(r.dy + c);
    if constexpr (G) {
      _mm256_storeu_ps(r.ag + c, _mm256_fmadd_ps(d, a, _mm256_loadu_ps(r.ag + c)));
      d = _mm256_mul_ps(d, _mm256_loadu_ps(r.gate + c));
    }
    const __m256 dv = _mm256_mul_ps(d, g);
    _mm256_storeu_ps(r.dx + c, _mm256_mul_ps(dv, sc));
    _mm256_storeu_ps(r.ab + c, _mm256_add_ps(_mm256_loadu_ps(r.ab + c), dv));
    _mm256_storeu_ps(r.as + c, _mm256_fmadd_ps(dv, _mm256_sub_ps(xv, _mm256_loadu_ps(r.mean + c)),
                                               _mm256_loadu_ps(r.as + c)));
  }
  return c;
#else
  return row_vec<A, G>(r, C);
#endif
}

// Rows [r0, r1) of one image: dx, and into part ([dscale C][dbeta C][dgate C], float64) the
// sums of 256-row float32 blocks.
template <Act A, bool G>
void task(const float* x, const float* dy, const float* mean, const float* scale,
          const float* shift, const float* gate, float* dx, double* part, int64_t r0,
          int64_t r1, int64_t C, bool avx2) {
  std::vector<float> acc(3 * C);
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t r = b0; r < std::min(r1, b0 + kBlock); ++r) {
      const Row row{x + r * C, dy + r * C, mean, scale, shift, gate,
                    dx + r * C, acc.data(), acc.data() + C, acc.data() + 2 * C};
      row_scalar<A, G>(row, avx2 ? row_avx2<A, G>(row, C) : row_vec<A, G>(row, C), C);
    }
    for (int64_t c = 0; c < 3 * C; ++c) part[c] += acc[c];
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_act_backward_cpu(
    const at::Tensor& x, const at::Tensor& dy, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& beta, const std::string& act, const c10::optional<at::Tensor>& gate) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const BnActArgs args = bn_act_args("bn_act_backward", x, mean, scale, beta, gate);
  TORCH_CHECK_VALUE(dy.sizes() == x.sizes() && dy.scalar_type() == at::kFloat &&
                        dy.is_contiguous(cl),
                    "bn_act_backward: dy must be a channels_last float32 tensor shaped like x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const bool has_gate = args.has_gate;
  const Act a = parse_act(act);
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
  const float* mp = args.mean.data_ptr<float>();
  const float* sp = args.scale.data_ptr<float>();
  const float* hp = args.shift.data_ptr<float>();
  dispatch_act(a, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / per, j = t % per;
        const int64_t r0 = n * HW + HW * j / per, r1 = n * HW + HW * (j + 1) / per;
        double* pt = part.data() + t * 3 * C;
        const float* gn = has_gate ? args.gate.data_ptr<float>() + n * C : nullptr;
        if (has_gate) {
          task<A, true>(xp, dp, mp, sp, hp, gn, op, pt, r0, r1, C, avx2);
        } else {
          task<A, false>(xp, dp, mp, sp, hp, gn, op, pt, r0, r1, C, avx2);
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
