// Host side of the CUDA dwconv_bias_act: checks, launch plan, pool workspace and finalisation
// (common/cuda_pool.h). The kernel body and plan are in dwconv_cuda_kernel.cuh, the __global__
// wrapper in dwconv_cuda.cuh, instantiated per dtype in dwconv_cuda_{f32,f16,bf16}.cu.
// Status: compiles in CI; NOT YET RUN ON A GPU. The kernel body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/dispatch.h"
#include "dwconv_cuda.cuh"

namespace effnet {

std::tuple<at::Tensor, at::Tensor> dwconv_bias_act_cuda(const at::Tensor& x,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& bias, int64_t stride,
                                                        at::IntArrayRef padding,
                                                        const std::string& act,
                                                        bool return_pool) {
  const DwShape s = check_dwconv_args(x, weight, bias, stride, padding);
  const Act a = parse_act(act);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty({s.N, s.C, s.Ho, s.Wo},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return {y, make_pool_workspace(return_pool, s.N, s.C, 1, 1, f32).pool};
  const DwPlan p = make_dw_plan(s, x.element_size(), x.const_data_ptr(),
                                sm_count(x.get_device()));
  const PoolWorkspace ws = make_pool_workspace(return_pool, s.N, s.C, p.bands, s.Ho * s.Wo, f32);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dwconv_bias_act_cuda", [&] {
    const DwArgs<scalar_t> args{x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                b.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                                ws.out};
    launch_dwconv<scalar_t>(p, a, args, stream);
  });
  finalize_pool(ws, stream);
  return {y, ws.pool};
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("dwconv_bias_act", &dwconv_bias_act_cuda); }

}  // namespace effnet
