// Host side of the CUDA effnet::dwconv_int8 (contract: dwconv_int8.h): checks, launch plan,
// pool workspace and finalisation (common/cuda_pool.h), the generic-path kernels, and the
// dispatcher registration.
// The fast-path kernels (k = 3, 5) are instantiated in dwconv_int8_cuda_k{3,5}.cu.
//
//   y = int8 clamp(floor(act(acc * scale[c] + bias[c]) * out_inv_scale + 0.5) + out_zp),
//   acc = sum over in-image taps of (x - in_zp) * w; pool = float32 mean of act(...) over pixels.
//
// Layout: x, y int8 NHWC (channels_last); 16 (or 8) channels per lane as one 16- (8-) byte
// load/store, TW output pixels per thread along W, weights staged in shared memory as packed
// int8, int32 accumulators, float32 epilogue; 64-bit offsets. See dwconv_int8_kernel.cuh.
//
// Status: compiles in CI; NOT YET RUN ON A GPU. The kernel body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "dwconv_int8_cuda.cuh"

namespace effnet {

namespace {

void launch_generic(const qdw::Plan& p, Act act, const qdw::Args& a, cudaStream_t stream) {
  qdw::dispatch_generic(act, [&](auto cfg) {
    using C = decltype(cfg);
    qdw::launch_kernel<C::K, C::S, C::VEC, C::A>(p, a, stream);
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
  if (y.numel() == 0) {  // N == 0 or C == 0
    return {y, make_pool_workspace(return_pool, s.N, s.C, 1, 1, f32).pool};
  }
  const qdw::Plan p = qdw::make_plan(s, x.const_data_ptr(), y.const_data_ptr(),
                                     sm_count(x.get_device()));
  TORCH_CHECK(s.N * p.bands * p.chunks < (1LL << 31), "effnet::dwconv_int8: too many blocks (",
              s.N * p.bands * p.chunks, ")");
  const PoolWorkspace ws = make_pool_workspace(return_pool, s.N, s.C, p.bands, s.Ho * s.Wo, f32);
  qdw::Args args{};
  args.x = x.const_data_ptr<int8_t>();
  args.w = w.const_data_ptr<int8_t>();
  args.scale = sc.const_data_ptr<float>();
  args.bias = b.const_data_ptr<float>();
  args.y = y.mutable_data_ptr<int8_t>();
  args.pool_out = ws.out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  if (p.vec == 1) {
    launch_generic(p, a, args, stream);
  } else if (s.k == 3) {
    qdw::launch_fast<3>(p, a, args, stream);
  } else {
    qdw::launch_fast<5>(p, a, args, stream);
  }
  finalize_pool(ws, stream);
  return {y, ws.pool};
}

TORCH_LIBRARY_IMPL(effnet, CUDA, m) { m.impl("dwconv_int8", &dwconv_int8_cuda); }

}  // namespace effnet
