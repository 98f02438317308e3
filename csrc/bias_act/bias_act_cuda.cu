// CUDA implementation of effnet::bias_act (see bias_act.h for the contract).
//
// NHWC makes the op a flat elementwise pass where element e has channel e % C. Each thread moves
// one 16-byte pack (8 halves / 4 floats) of x and the matching pack of bias; the fast path needs
// C % VEC == 0 and 16-byte aligned pointers, anything else takes the scalar path (VEC = 1).
// Grid-stride loop with 64-bit indices. Bytes moved: 2 * numel * sizeof(T) (+ bias, cached).
//
// Status: compiled in CI; exercised on a GPU only through benchmarks/gpu_check.sh.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cuda_utils.cuh"
#include "../common/dispatch.h"
#include "bias_act.h"

namespace effnet {
namespace {

template <typename T, Act A, int VEC>
__global__ void __launch_bounds__(256)
    bias_act_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                    int64_t num_packs, int64_t C) {
  using P = Pack<T, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < num_packs;
       i += stride) {
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

template <typename T, Act A, int VEC>
void launch(const T* x, const T* b, T* y, int64_t numel, int64_t C, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t packs = numel / VEC;
  bias_act_kernel<T, A, VEC><<<grid_for(packs, kThreads), kThreads, 0, stream>>>(x, b, y, packs, C);
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
    constexpr int VEC = 16 / sizeof(scalar_t);
    const bool vec_ok = C % VEC == 0 && is_aligned(xp, 16) && is_aligned(bp, 16);
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
