// CUDA implementation of effnet::bias_act (see bias_act.h for the contract): the __global__
// wrapper and launch of the kernel body in bias_act_cuda_kernel.cuh (tiling described there).
//
// Status: compiles in CI; NOT YET RUN ON A GPU (exercised on a GPU only through
// benchmarks/gpu_check.sh). The kernel body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cuda_utils.cuh"
#include "../common/dispatch.h"
#include "bias_act.h"
#include "bias_act_cuda_kernel.cuh"

namespace effnet {
namespace {

template <typename T, Act A, int VEC>
__global__ void __launch_bounds__(kBiasActThreads)
    bias_act_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                    int64_t num_packs, int64_t C) {
  bias_act_thread<T, A, VEC>(x, bias, y, num_packs, C,
                             static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                             static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename T, Act A, int VEC>
void launch(const T* x, const T* b, T* y, int64_t numel, int64_t C, cudaStream_t stream) {
  const int64_t packs = numel / VEC;
  bias_act_kernel<T, A, VEC><<<grid_for(packs, kBiasActThreads), kBiasActThreads, 0, stream>>>(
      x, b, y, packs, C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, const std::string& act) {
  check_bias_act_args(x, bias);
  const Act a = parse_act(act);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor b = bias.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t C = x.size(1);
  const int64_t numel = x.numel();
  if (numel == 0) return y;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "bias_act_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    constexpr int VEC = bias_act_vec<scalar_t>();
    const bool vec_ok = bias_act_vector_ok(C, xp, bp);
    dispatch_act(a, [&](auto act_c) {
      constexpr Act A = decltype(act_c)::value;
      if (vec_ok) {
        launch<scalar_t, A, VEC>(xp, bp, yp, numel, C, stream);
      } else {
        launch<scalar_t, A, 1>(xp, bp, yp, numel, C, stream);
      }
    });
  });
  return y;
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("bias_act", &bias_act_cuda); }

}  // namespace effnet
