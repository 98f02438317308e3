// The kernel body of the CUDA effnet::bias_act (contract: bias_act.h) and its path choice,
// __host__ __device__ so that tests/test_cuda_emulation.py also runs it on the CPU over the
// launch grid (csrc/common/emu.h). The __global__ wrapper and launch are in bias_act_cuda.cu.
//
// NHWC makes the op a flat elementwise pass where element e has channel e % C. Each thread moves
// one 16-byte pack (8 halves / 4 floats) of x and the matching pack of bias; the vector path
// needs C % VEC == 0 and 16-byte aligned pointers, anything else takes the scalar path (VEC = 1).
// Grid-stride loop with 64-bit indices. Bytes moved: 2 * numel * sizeof(T) (+ bias, cached).
//
// Status: compiles in CI; NOT YET RUN ON A GPU (exercised on a GPU only through
// benchmarks/gpu_check.sh). The body is emulated on the CPU by tests/test_cuda_emulation.py.
#pragma once

#include <cstdint>

#include "../common/act.h"
#include "../common/cuda_kernel.h"

namespace effnet {

constexpr int kBiasActThreads = 256;

// Elements per thread and pack for dtype T on the vector path.
template <typename T>
constexpr int bias_act_vec() {
  return 16 / sizeof(T);
}

// True when the vector path may run: C % VEC == 0, x and bias 16-byte aligned (y is fresh).
template <typename T>
inline bool bias_act_vector_ok(int64_t C, const T* x, const T* bias) {
  return C % bias_act_vec<T>() == 0 && is_aligned(x, 16) && is_aligned(bias, 16);
}

// The grid-stride loop of the thread whose first pack is `first`, stepping by `step` packs.
template <typename T, Act A, int VEC>
C10_HOST_DEVICE C10_ALWAYS_INLINE void bias_act_thread(const T* x, const T* bias, T* y,
                                                       int64_t num_packs, int64_t C,
                                                       int64_t first, int64_t step) {
  using P = Pack<T, VEC>;
  for (int64_t i = first; i < num_packs; i += step) {
    const int64_t e = i * VEC;
    const int64_t c = e % C;  // C % VEC == 0 on the vector path: a pack never wraps a row
    const P xv = reinterpret_cast<const P*>(x)[i];
    const P bv = *reinterpret_cast<const P*>(bias + c);
    P yv;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      yv.v[j] = static_cast<T>(apply_act<A>(static_cast<float>(xv.v[j]) +
                                            static_cast<float>(bv.v[j])));
    }
    reinterpret_cast<P*>(y)[i] = yv;
  }
}

}  // namespace effnet
