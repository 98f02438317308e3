// Host side of the CUDA effnet::dwconv_int8 (contract: dwconv_int8.h): checks, launch plan,
// pool workspace and finalisation, the generic-path kernels, and the dispatcher registration.
// The fast-path kernels (k = 3, 5) are instantiated in dwconv_int8_cuda_k{3,5}.cu.
//
//   y = int8 clamp(floor(act(acc * scale[c] + bias[c]) * out_inv_scale + 0.5) + out_zp),
//   acc = sum over in-image taps of (x - in_zp) * w; pool = float32 mean of act(...) over pixels.
//
// Layout: x, y int8 NHWC (channels_last); 16 (or 8) channels per lane as one 16- (8-) byte
// load/store, TW output pixels per thread along W, weights staged in shared memory as packed
// int8, int32 accumulators, float32 epilogue; 64-bit offsets. See dwconv_int8_kernel.cuh.
//
// Status: compiles in CI; NOT YET RUN ON A GPU.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "dwconv_int8_cuda.cuh"

namespace effnet {

namespace {

// pool[n, c] = scale * sum_b partial[n, b, c], bands summed in order (deterministic).
__global__ void qdw_pool_finalize_kernel(const float* __restrict__ partial,
                                         float* __restrict__ pool, int64_t N, int64_t bands,
                                         int64_t C, float scale) {
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

void launch_generic(const qdw::Plan& p, Act act, const qdw::Args& a, cudaStream_t stream) {
  dispatch_act(act, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    qdw::launch_kernel<0, 0, 1, A>(p, a, stream);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dwconv_int8_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                    const at::Tensor& scale,
                                                    const at::Tensor& bias, int64_t stride,
                                                    at::IntArrayRef padding, int64_t in_zp,
                                                    double out_inv_scale, int64_t out_zp,
                                                    const std::string& act, bool return_pool) {
  const QDwShape s = check_dwconv_int8_args(x, weight, scale, bias, stride, padding, in_zp,
                                            out_inv_scale, out_zp);
  TORCH_CHECK(x.is_cuda(), "effnet::dwconv_int8: the CUDA kernel got x on ", x.device());
  const Act a = parse_act(act);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w = weight.contiguous();
  const at::Tensor sc = scale.contiguous();
  const at::Tensor b = bias.contiguous();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty({s.N, s.C, s.Ho, s.Wo},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor pool = return_pool ? at::empty({s.N, s.C}, f32) : at::empty({0}, f32);
  if (y.numel() == 0) return {y, pool};  // N == 0 or C == 0
  const qdw::Plan p = qdw::make_plan(s, x.const_data_ptr(), y.const_data_ptr(),
                                     sm_count(x.get_device()));
  TORCH_CHECK(s.N * p.bands * p.chunks < (1LL << 31), "effnet::dwconv_int8: too many blocks (",
              s.N * p.bands * p.chunks, ")");
  at::Tensor partial;
  qdw::Args args{};
  args.x = x.const_data_ptr<int8_t>();
  args.w = w.const_data_ptr<int8_t>();
  args.scale = sc.const_data_ptr<float>();
  args.bias = b.const_data_ptr<float>();
  args.y = y.mutable_data_ptr<int8_t>();
  args.pool_out = nullptr;
  if (return_pool) {
    if (p.bands == 1) {
      args.pool_out = pool.mutable_data_ptr<float>();
    } else {
      partial = at::empty({s.N, p.bands, s.C}, f32);
      args.pool_out = partial.mutable_data_ptr<float>();
    }
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  if (p.vec == 1) {
    launch_generic(p, a, args, stream);
  } else if (s.k == 3) {
    qdw::launch_fast<3>(p, a, args, stream);
  } else {
    qdw::launch_fast<5>(p, a, args, stream);
  }
  if (return_pool && p.bands > 1) {
    const int64_t total = s.N * s.C;
    qdw_pool_finalize_kernel<<<grid_for(total, 256), 256, 0, stream>>>(
        partial.const_data_ptr<float>(), pool.mutable_data_ptr<float>(), s.N, p.bands, s.C,
        1.0f / static_cast<float>(s.Ho * s.Wo));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {y, pool};
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("dwconv_int8", &dwconv_int8_cuda); }

}  // namespace effnet
