// CUDA kernel of effnet::dwconv_int8 (contract: dwconv_int8.h; kernel body, tiling and numerics:
// dwconv_int8_kernel.cuh). This file holds the __global__ wrapper and the launch templates; the
// instantiations are split by kernel size over dwconv_int8_cuda_k{3,5}.cu (and the generic path
// in dwconv_int8_cuda.cu) so a 2-core build compiles them in parallel.
//
// Bytes moved: x once from DRAM (N*H*W*C bytes; the K rows of a window re-read from L1/L2), y
// once (N*Ho*Wo*C bytes), weights/scale/bias once per block (k*k + 8 bytes per channel), pool
// partials 4*N*bands*C bytes: ~2 bytes per output at stride 1 (5 at stride 2). Work per output
// value and kernel row: 1 (k = 3) or 2 (k = 5) dp4a plus ~1-2 PRMT; epilogue ~12 instructions
// (SiLU ~+25: an accurate exp and an IEEE division). At 1 byte per value the kernel sits close to
// the int/FP32 issue limit as well as to DRAM bandwidth; not measured yet.
//
// Registers (ptxas -v, sm_90, CUDA 13.0, __launch_bounds__(256, 2)), 0 bytes spilled everywhere:
//   VEC 16: k3 s1 (TW 2) 108-116, k3 s2 (TW 3) 128, k5 s1 (TW 3) 126-128, k5 s2 (TW 2) 120-122;
//   VEC 8 (TW 4): 104-115; generic: 80.
//
// Status: compiles in CI; NOT YET RUN ON A GPU (tests: tests/test_quant_cuda.py -m cuda). The
// kernel body is emulated on the CPU by tests/test_cuda_emulation.py.
#pragma once

#include "../common/cuda_utils.cuh"
#include "dwconv_int8_kernel.cuh"

namespace effnet::qdw {

template <int K, int S, int VEC, Act A>
#ifndef QDW_MIN_BLOCKS
#define QDW_MIN_BLOCKS 2
#endif
__global__ void __launch_bounds__(256, QDW_MIN_BLOCKS)  // <= 128 registers: 16 warps/SM at least
    dwconv_int8_kernel(const Args a, const Plan p) {
  using B = Block<K, S, VEC, A>;
  extern __shared__ int4 smem_raw[];  // 16-byte aligned
  const bool pool = a.pool_out != nullptr;
  const typename B::Smem m = B::carve(p, reinterpret_cast<int32_t*>(smem_raw), pool);
  const int64_t bid = blockIdx.x;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  B::stage(p, a, m, bid, tid, nthreads);
  __syncthreads();
  B::compute(p, a, m, bid, threadIdx.x, threadIdx.y);
  if (pool) {
    __syncthreads();
    B::reduce(p, a, m, bid, tid, nthreads);
  }
}

template <int K, int S, int VEC, Act A>
void launch_kernel(const Plan& p, const Args& a, cudaStream_t stream) {
  const size_t smem = sizeof(int32_t) * smem_words(p, a.pool_out != nullptr);
  const int64_t blocks = p.s.N * p.bands * p.chunks;
  dwconv_int8_kernel<K, S, VEC, A>
      <<<static_cast<unsigned int>(blocks), dim3(p.CT, p.RW), smem, stream>>>(a, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// All (stride, vec, act) variants of one fast kernel size; defined in dwconv_int8_cuda_k<K>.cu.
template <int K>
void launch_fast(const Plan& p, Act act, const Args& a, cudaStream_t stream) {
  dispatch_fast<K>(p, act, [&](auto cfg) {
    using C = decltype(cfg);
    launch_kernel<C::K, C::S, C::VEC, C::A>(p, a, stream);
  });
}

extern template void launch_fast<3>(const Plan&, Act, const Args&, cudaStream_t);
extern template void launch_fast<5>(const Plan&, Act, const Args&, cudaStream_t);

}  // namespace effnet::qdw
