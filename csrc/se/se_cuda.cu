// CUDA implementation of effnet::se_gate (contract in se.h): the __global__ wrapper and launch
// of the kernel body in se_cuda_kernel.cuh (tiling described there).
// Status: compiles in CI; NOT YET RUN ON A GPU. The kernel body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cuda_utils.cuh"
#include "../common/dispatch.h"
#include "se.h"
#include "se_cuda_kernel.cuh"

namespace effnet {
namespace {

template <typename T>
__global__ void __launch_bounds__(kSeThreads)
    se_gate_kernel(const float* __restrict__ pooled, const T* __restrict__ w1,
                   const T* __restrict__ b1, const T* __restrict__ w2, const T* __restrict__ b2,
                   float* __restrict__ gate, int64_t C, int64_t S) {
  using B = SeBlock<T>;
  extern __shared__ float sm[];
  float* p = sm;      // [C]
  float* h = sm + C;  // [S]
  const int64_t n = blockIdx.x;
  B::load(pooled, p, n, C, threadIdx.x, blockDim.x);
  __syncthreads();
  B::hidden(w1, b1, p, h, C, S, threadIdx.x, blockDim.x);
  __syncthreads();
  B::gates(w2, b2, h, gate, n, C, S, threadIdx.x, blockDim.x);
}

}  // namespace

at::Tensor se_gate_cuda(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                        const at::Tensor& w2, const at::Tensor& b2) {
  const SeShape s = check_se_args(pooled, w1, b1, w2, b2);
  const c10::cuda::CUDAGuard guard(pooled.device());
  at::Tensor gate = at::empty({s.N, s.C}, pooled.options());
  if (s.N == 0 || s.C == 0) return gate;
  TORCH_CHECK_VALUE(s.N < (1LL << 31), "effnet::se_gate: batch too large");
  const size_t smem = se_smem_bytes(s.C, s.S);
  TORCH_CHECK_VALUE(smem <= 48 * 1024, "effnet::se_gate: C + S = ", s.C + s.S,
                    " exceeds the 12288 floats of shared memory this kernel uses");
  const at::Tensor p = pooled.contiguous(), w1c = w1.contiguous(), b1c = b1.contiguous(),
                   w2c = w2.contiguous(), b2c = b2.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(pooled.get_device()).stream();
  EFFNET_DISPATCH_FLOAT_TYPES(w1.scalar_type(), "se_gate_cuda", [&] {
    se_gate_kernel<scalar_t><<<static_cast<unsigned int>(s.N), kSeThreads, smem, stream>>>(
        p.const_data_ptr<float>(), w1c.const_data_ptr<scalar_t>(), b1c.const_data_ptr<scalar_t>(),
        w2c.const_data_ptr<scalar_t>(), b2c.const_data_ptr<scalar_t>(),
        gate.mutable_data_ptr<float>(), s.C, s.S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gate;
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("se_gate", &se_gate_cuda); }

}  // namespace effnet
