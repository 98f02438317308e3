// CPU kernel of effnet::batch_stats: the per-channel mean and biased variance of a channels_last
// float32 z (N, C, H, W) over (N, H, W) — the batch statistics of training-mode BatchNorm
// (effnet_kernels/train_ops.py). Two passes over z (the mean, then Σ (z − mean)², which keeps
// the variance accurate when |mean| ≫ std); each task sums 256-row blocks of C contiguous values
// in float32 vectors and adds them into float64 partial sums, reduced in task order (the split
// depends on the row count only, so the result does not depend on the thread count).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cpu_math.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace effnet {
namespace {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kBlock = 256;  // rows summed in float32 before a float64 flush
constexpr int64_t kTaskRows = 4096;

// part[c] += Σ_{r in [r0, r1)} (z[r, c] − center[c])^P, P = 1 or 2.
template <int P>
void sum_rows(const float* z, const float* center, double* part, int64_t r0, int64_t r1,
              int64_t C) {
  std::vector<float> acc(C);
  for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    const int64_t b1 = std::min(r1, b0 + kBlock);
    for (int64_t r = b0; r < b1; ++r) {
      const float* zr = z + r * C;
      int64_t c = 0;
      for (; c + fVec::size() <= C; c += fVec::size()) {
        fVec d = fVec::loadu(zr + c) - fVec::loadu(center + c);
        if constexpr (P == 2) d = d * d;
        (fVec::loadu(acc.data() + c) + d).store(acc.data() + c);
      }
      for (; c < C; ++c) {
        const float d = zr[c] - center[c];
        acc[c] += P == 2 ? d * d : d;
      }
    }
    for (int64_t c = 0; c < C; ++c) part[c] += acc[c];
  }
}

// Σ over rows of (z − center)^P per channel, float64.
template <int P>
std::vector<double> channel_sums(const float* z, const float* center, int64_t rows, int64_t C) {
  const int64_t tasks = (rows + kTaskRows - 1) / kTaskRows;
  std::vector<double> part(static_cast<size_t>(tasks) * C, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      sum_rows<P>(z, center, part.data() + t * C, t * kTaskRows,
                  std::min(rows, (t + 1) * kTaskRows), C);
    }
  });
  std::vector<double> out(C, 0.0);
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < C; ++c) out[c] += part[t * C + c];
  }
  return out;
}

// dz[r, c] = (z[r, c] − mean[c])·a[c] + b[c] for rows [r0, r1): the backward of the batch
// statistics (a = 2·dvar / m, b = dmean / m). Plain loops: GCC vectorises them for the target.
C10_ALWAYS_INLINE void stats_grad_body(const float* __restrict z, const float* __restrict mean,
                                       const float* __restrict a, const float* __restrict b,
                                       float* __restrict dz, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict zr = z + r * C;
    float* __restrict o = dz + r * C;
    for (int64_t c = 0; c < C; ++c) o[c] = (zr[c] - mean[c]) * a[c] + b[c];
  }
}

C10_NOINLINE void stats_grad_base(const float* z, const float* mean, const float* a,
                                  const float* b, float* dz, int64_t r0, int64_t r1, int64_t C) {
  stats_grad_body(z, mean, a, b, dz, r0, r1, C);
}

C10_NOINLINE EFFNET_TARGET_AVX2 void stats_grad_avx2(const float* z, const float* mean,
                                                     const float* a, const float* b, float* dz,
                                                     int64_t r0, int64_t r1, int64_t C) {
  stats_grad_body(z, mean, a, b, dz, r0, r1, C);
}

// Checks z (channels_last float32 (N, C, H, W), at least one value per channel); returns the
// number of rows N·H·W.
int64_t checked_rows(const char* op, const at::Tensor& z) {
  TORCH_CHECK_VALUE(z.dim() == 4 && z.scalar_type() == at::kFloat &&
                        z.is_contiguous(at::MemoryFormat::ChannelsLast),
                    op, ": z must be a channels_last float32 (N, C, H, W) tensor");
  const int64_t C = z.size(1);
  const int64_t rows = C == 0 ? 0 : z.numel() / C;
  TORCH_CHECK_VALUE(rows > 0, op, ": z has no values per channel");
  return rows;
}

}  // namespace

// The gradient of z through (mean, var) = batch_stats(z) for dmean / dvar (either may be
// absent: zero): dz = (z − mean)·2·dvar/m + dmean/m, m = N·H·W; one pass (the ATen
// composition: four elementwise passes and three temporaries).
at::Tensor batch_stats_backward_cpu(const at::Tensor& z, const at::Tensor& mean,
                                    const c10::optional<at::Tensor>& dmean,
                                    const c10::optional<at::Tensor>& dvar) {
  const int64_t rows = checked_rows("batch_stats_backward", z), C = z.size(1);
  for (const at::Tensor* t : {&mean, dmean.has_value() ? &*dmean : &mean,
                              dvar.has_value() ? &*dvar : &mean}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == C && t->scalar_type() == at::kFloat,
                      "batch_stats_backward: mean, dmean and dvar must be float32 (", C,
                      ",) vectors");
  }
  std::vector<float> a(C, 0.0f), b(C, 0.0f);
  const at::Tensor mc = mean.contiguous();
  if (dvar.has_value() && dvar->defined()) {
    const at::Tensor d = dvar->contiguous();
    for (int64_t c = 0; c < C; ++c)
      a[c] = d.data_ptr<float>()[c] * static_cast<float>(2.0 / static_cast<double>(rows));
  }
  if (dmean.has_value() && dmean->defined()) {
    const at::Tensor d = dmean->contiguous();
    for (int64_t c = 0; c < C; ++c)
      b[c] = d.data_ptr<float>()[c] / static_cast<float>(rows);
  }
  at::Tensor dz = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::ChannelsLast));
  const bool avx2 = EFFNET_HAVE_AVX2_BUILD && cpu::use_avx2();
  auto fn = avx2 ? &stats_grad_avx2 : &stats_grad_base;
  const float* zp = z.data_ptr<float>();
  const float* mp = mc.data_ptr<float>();
  float* op = dz.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    fn(zp, mp, a.data(), b.data(), op, r0, r1, C);
  });
  return dz;
}

std::tuple<at::Tensor, at::Tensor> batch_stats_cpu(const at::Tensor& z) {
  const int64_t rows = checked_rows("batch_stats", z), C = z.size(1);
  at::Tensor mean = at::empty({C}, z.options());
  at::Tensor var = at::empty({C}, z.options());
  const float* zp = z.data_ptr<float>();
  const std::vector<float> zero(C, 0.0f);
  const std::vector<double> s1 = channel_sums<1>(zp, zero.data(), rows, C);
  std::vector<float> m(C);
  for (int64_t c = 0; c < C; ++c) m[c] = static_cast<float>(s1[c] / static_cast<double>(rows));
  // Σ (z − m)² with the float32 mean m; the exact mean μ differs from m by δ = μ − m, so
  // Σ (z − μ)² = Σ (z − m)² − rows·δ² (δ from the float64 sum).
  const std::vector<double> s2 = channel_sums<2>(zp, m.data(), rows, C);
  float* mp = mean.data_ptr<float>();
  float* vp = var.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    const double mu = s1[c] / static_cast<double>(rows);
    const double delta = mu - static_cast<double>(m[c]);
    mp[c] = m[c];
    vp[c] = static_cast<float>(std::max(0.0, s2[c] / static_cast<double>(rows) - delta * delta));
  }
  return {mean, var};
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) {
  m.impl("batch_stats", &batch_stats_cpu);
  m.impl("batch_stats_backward", &batch_stats_backward_cpu);
}

}  // namespace effnet
