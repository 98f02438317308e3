// The global-average-pool output shared by the depthwise CUDA kernels (float dwconv_bias_act and
// dwconv_int8): the float32 workspace a kernel writes its pool into, and the finalize kernel's
// body that sums the per-band partials. Compiled by nvcc and, for the CPU emulation
// (tests/test_cuda_emulation.py), by g++.
//
// A kernel that splits each sample's output rows into `bands` blocks writes one partial sum per
// (n, band, c); pool_finalize then sums the bands in order (deterministic, no atomics) and scales
// by 1/(Ho*Wo). With one band per sample the kernel writes the mean into the pool directly.
#pragma once

#include <ATen/ops/empty.h>

#include <cstdint>

#include "cuda_kernel.h"

namespace effnet {

struct PoolWorkspace {
  at::Tensor pool;       // (N, C) float32, or (0,) when no pool is asked for
  at::Tensor partial;    // (N, bands, C) partial sums when bands > 1, else undefined
  float* out = nullptr;  // what the kernel writes: pool, partial, or nullptr (no pool)
  int64_t N = 0, C = 0, bands = 1;
  float scale = 1.0f;    // 1 / (Ho * Wo)
  // The factor the kernel applies to its band sums: the mean's 1/(Ho*Wo) when it writes the pool
  // directly (one band), 1 when pool_finalize scales the partials.
  float kernel_scale() const { return bands == 1 ? scale : 1.0f; }
};

inline PoolWorkspace make_pool_workspace(bool return_pool, int64_t N, int64_t C, int64_t bands,
                                         int64_t pixels, const at::TensorOptions& f32) {
  PoolWorkspace ws;
  ws.N = N;
  ws.C = C;
  ws.bands = bands;
  ws.scale = 1.0f / static_cast<float>(pixels);
  ws.pool = return_pool ? at::empty({N, C}, f32) : at::empty({0}, f32);
  if (return_pool && N * C > 0) {
    if (bands == 1) {
      ws.out = ws.pool.mutable_data_ptr<float>();
    } else {
      ws.partial = at::empty({N, bands, C}, f32);
      ws.out = ws.partial.mutable_data_ptr<float>();
    }
  }
  return ws;
}

constexpr int kPoolFinalizeThreads = 256;

// pool[n, c] = scale * sum_b partial[n, b, c], bands summed in order: the grid-stride loop of
// the thread whose first item is `first`, stepping by `step` (blocks * threads).
C10_HOST_DEVICE C10_ALWAYS_INLINE void pool_finalize_thread(const float* partial, float* pool,
                                                            int64_t N, int64_t bands, int64_t C,
                                                            float scale, int64_t first,
                                                            int64_t step) {
  for (int64_t i = first; i < N * C; i += step) {
    const int64_t n = i / C, c = i % C;
    float sum = 0.0f;
    for (int64_t b = 0; b < bands; ++b) sum += partial[(n * bands + b) * C + c];
    pool[i] = sum * scale;
  }
}

}  // namespace effnet
