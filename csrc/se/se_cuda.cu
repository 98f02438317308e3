// CUDA implementation of effnet::se_gate (contract in se.h).
//
// One block (256 threads) per sample: the sample's pooled vector goes to shared memory; each warp
// computes hidden units h[s] = silu(b1[s] + w1[s, :] . p) with a lane-strided dot and a shuffle
// reduction (w1 rows read coalesced); then each thread computes gates for channels c (stride 256)
// as sigmoid(b2[c] + w2[c, :] . h) with h in shared memory. float32 math; weights in their dtype.
// Bytes: N*C*4 in + N*C*4 out + weights (from L2 after the first block).
// Status: compiles in CI; NOT YET RUN ON A GPU.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cuda_utils.cuh"
#include "../common/dispatch.h"
#include "se.h"

namespace effnet {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    se_gate_kernel(const float* __restrict__ pooled, const T* __restrict__ w1,
                   const T* __restrict__ b1, const T* __restrict__ w2, const T* __restrict__ b2,
                   float* __restrict__ gate, int64_t C, int64_t S) {
  extern __shared__ float sm[];
  float* p = sm;      // [C]
  float* h = sm + C;  // [S]
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) p[c] = pooled[n * C + c];
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (int64_t s = warp; s < S; s += nwarps) {
    float acc = 0.0f;
    for (int64_t k = lane; k < C; k += 32) acc += static_cast<float>(w1[s * C + k]) * p[k];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) {
      const float v = acc + static_cast<float>(b1[s]);
      h[s] = v / (1.0f + __expf(-v));
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = static_cast<float>(b2[c]);
    for (int64_t s = 0; s < S; ++s) acc += static_cast<float>(w2[c * S + s]) * h[s];
    gate[n * C + c] = 1.0f / (1.0f + __expf(-acc));
  }
}

}  // namespace

at::Tensor se_gate_cuda(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                        const at::Tensor& w2, const at::Tensor& b2) {
  const SeShape s = check_se_args(pooled, w1, b1, w2, b2);
  const c10::cuda::CUDAGuard guard(pooled.device());
  at::Tensor gate = at::empty({s.N, s.C}, pooled.options());
  if (s.N == 0 || s.C == 0) return gate;
  TORCH_CHECK_VALUE(s.N < (1LL << 31), "effnet::se_gate: batch too large");
  const size_t smem = sizeof(float) * (s.C + s.S);
  TORCH_CHECK_VALUE(smem <= 48 * 1024, "effnet::se_gate: C + S = ", s.C + s.S,
                    " exceeds the 12288 floats of shared memory this kernel uses");
  const at::Tensor p = pooled.contiguous(), w1c = w1.contiguous(), b1c = b1.contiguous(),
                   w2c = w2.contiguous(), b2c = b2.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(pooled.get_device()).stream();
  EFFNET_DISPATCH_FLOAT_TYPES(w1.scalar_type(), "se_gate_cuda", [&] {
    se_gate_kernel<scalar_t><<<static_cast<unsigned int>(s.N), kThreads, smem, stream>>>(
        p.const_data_ptr<float>(), w1c.const_data_ptr<scalar_t>(), b1c.const_data_ptr<scalar_t>(),
        w2c.const_data_ptr<scalar_t>(), b2c.const_data_ptr<scalar_t>(),
        gate.mutable_data_ptr<float>(), s.C, s.S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gate;
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("se_gate", &se_gate_cuda); }

}  // namespace effnet
