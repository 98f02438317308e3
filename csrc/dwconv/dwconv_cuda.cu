// Host side of the CUDA dwconv_bias_act: checks, launch plan, workspace, pool finalisation.
// The kernels are in dwconv_cuda.cuh, instantiated per dtype in dwconv_cuda_{f32,f16,bf16}.cu.
// Status: compiles in CI; NOT YET RUN ON A GPU.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/dispatch.h"
#include "dwconv_cuda.cuh"

namespace effnet {

extern template void launch_dwconv<float>(const DwPlan&, Act, const float*, const float*,
                                          const float*, float*, float*, cudaStream_t);
extern template void launch_dwconv<c10::Half>(const DwPlan&, Act, const c10::Half*,
                                              const c10::Half*, const c10::Half*, c10::Half*,
                                              float*, cudaStream_t);
extern template void launch_dwconv<c10::BFloat16>(const DwPlan&, Act, const c10::BFloat16*,
                                                  const c10::BFloat16*, const c10::BFloat16*,
                                                  c10::BFloat16*, float*, cudaStream_t);

namespace {

// pool[n, c] = scale * sum_b partial[n, b, c], bands summed in order (deterministic).
__global__ void pool_finalize_kernel(const float* __restrict__ partial, float* __restrict__ pool,
                                     int64_t N, int64_t bands, int64_t C, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    float sum = 0.0f;
    for (int64_t b = 0; b < bands; ++b) sum += partial[(n * bands + b) * C + c];
    pool[i] = sum * scale;
  }
}

int sm_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

DwPlan make_plan(const DwShape& s, size_t elem_size, const void* x, int device) {
  DwPlan p{};
  p.s = s;
  const int vec = static_cast<int>(16 / elem_size);
  p.fast = (s.k == 3 || s.k == 5) && s.C % vec == 0 && is_aligned(x, 16);
  p.vec = p.fast ? vec : 1;
  const int64_t cv = s.C / p.vec;
  p.CT = static_cast<int>(std::min<int64_t>(cv, 32));
  p.RW = std::max(1, 256 / p.CT);
  p.chunks = (cv + p.CT - 1) / p.CT;
  // Enough blocks to fill the GPU a few times over; bands split a sample's rows when N is small.
  const int64_t target = 4LL * sm_count(device);
  const int64_t per_band = s.N * p.chunks;
  p.bands = std::clamp<int64_t>((target + per_band - 1) / per_band, 1, s.Ho);
  p.rows_per_band = (s.Ho + p.bands - 1) / p.bands;
  p.bands = (s.Ho + p.rows_per_band - 1) / p.rows_per_band;
  p.pool_scale = p.bands == 1 ? 1.0f / static_cast<float>(s.Ho * s.Wo) : 1.0f;
  TORCH_CHECK(s.N * p.bands * p.chunks < (1LL << 31), "effnet::dwconv_bias_act: too many blocks");
  return p;
}

}  // namespace

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
  at::Tensor pool = return_pool ? at::empty({s.N, s.C}, f32) : at::empty({0}, f32);
  if (y.numel() == 0) return {y, pool};
  const DwPlan p = make_plan(s, x.element_size(), x.const_data_ptr(), x.get_device());
  at::Tensor partial;
  float* pool_out = nullptr;
  if (return_pool) {
    if (p.bands == 1) {
      pool_out = pool.mutable_data_ptr<float>();
    } else {
      partial = at::empty({s.N, p.bands, s.C}, f32);
      pool_out = partial.mutable_data_ptr<float>();
    }
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  EFFNET_DISPATCH_FLOAT_TYPES(x.scalar_type(), "dwconv_bias_act_cuda", [&] {
    launch_dwconv<scalar_t>(p, a, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                            b.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                            pool_out, stream);
  });
  if (return_pool && p.bands > 1) {
    const int64_t total = s.N * s.C;
    pool_finalize_kernel<<<grid_for(total, 256), 256, 0, stream>>>(
        partial.const_data_ptr<float>(), pool.mutable_data_ptr<float>(), s.N, p.bands, s.C,
        1.0f / static_cast<float>(s.Ho * s.Wo));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {y, pool};
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("dwconv_bias_act", &dwconv_bias_act_cuda); }

}  // namespace effnet
