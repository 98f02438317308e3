// CUDA kernel of effnet::dwconv_bias_act (contract in dwconv.h): the __global__ wrapper around
// the kernel body (dwconv_cuda_kernel.cuh: tiling, paths, phases) and the launch templates,
// shared by the per-dtype .cu files that instantiate them (split so a 2-core build compiles them
// in parallel).
//
// Status: compiles in CI; NOT YET RUN ON A GPU (tests: tests/test_dwconv.py -m cuda, run by
// benchmarks/gpu_check.sh). The body is emulated on the CPU by tests/test_cuda_emulation.py.
#pragma once

#include "../common/cuda_utils.cuh"
#include "dwconv_cuda_kernel.cuh"

namespace effnet {

template <typename T, int K, int S, int VEC, int TW, Act A>
__global__ void __launch_bounds__(256, 2)  // <= 128 registers: 16 warps/SM at least
    dwconv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  T* __restrict__ y, float* __restrict__ pool_out, const DwPlan p) {
  using B = DwBlock<T, K, S, VEC, TW, A>;
  const DwArgs<T> a{x, w, bias, y, pool_out};
  extern __shared__ float smem[];
  const typename B::Smem m = B::carve(p, smem);
  const int64_t bid = blockIdx.x;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  if constexpr (K > 0) {
    B::stage(p, a, m, bid, tid, nthreads);
    __syncthreads();
  }
  B::compute(p, a, m, bid, threadIdx.x, threadIdx.y);
  if (a.pool_out != nullptr) {
    __syncthreads();
    B::reduce(p, a, m, bid, tid, nthreads);
  }
}

template <typename T, int K, int S, int VEC, int TW, Act A>
void launch_dwconv_kernel(const DwPlan& p, const DwArgs<T>& a, cudaStream_t stream) {
  const size_t smem = dw_smem_bytes<K, VEC>(p, a.pool_out != nullptr);
  const int64_t blocks = p.s.N * p.bands * p.chunks;
  dwconv_kernel<T, K, S, VEC, TW, A><<<static_cast<unsigned int>(blocks), dim3(p.CT, p.RW), smem,
                                       stream>>>(a.x, a.w, a.bias, a.y, a.pool_out, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// All (k, stride, act) variants for one dtype; defined once per dtype in dwconv_cuda_<t>.cu.
template <typename T>
void launch_dwconv(const DwPlan& p, Act act, const DwArgs<T>& a, cudaStream_t stream) {
  dispatch_dwconv<T>(p, act, [&](auto cfg) {
    using C = decltype(cfg);
    launch_dwconv_kernel<T, C::K, C::S, C::VEC, C::TW, C::A>(p, a, stream);
  });
}

extern template void launch_dwconv<float>(const DwPlan&, Act, const DwArgs<float>&,
                                          cudaStream_t);
extern template void launch_dwconv<c10::Half>(const DwPlan&, Act, const DwArgs<c10::Half>&,
                                              cudaStream_t);
extern template void launch_dwconv<c10::BFloat16>(const DwPlan&, Act,
                                                  const DwArgs<c10::BFloat16>&, cudaStream_t);

}  // namespace effnet
