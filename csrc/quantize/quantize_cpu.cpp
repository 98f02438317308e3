// CPU implementation of effnet::quantize_per_tensor (contract: quantize.h): an elementwise
// requantise of x, read in the output's memory order (channels_last for 4-D x), parallel over
// contiguous blocks with at::parallel_for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/cpu_isa.h"
#include "../engine/engine_int8.h"
#include "quantize.h"
#include "../common/cpu_int8.h"  // last: switches FP contraction off (see there)

namespace effnet {

at::Tensor quantize_per_tensor_cpu(const at::Tensor& x, double inv_scale, int64_t zp) {
  const float inv = check_quantize_per_tensor_args(x, inv_scale, zp);
  const auto fmt = x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar).memory_format(fmt));
  const int64_t n = q.numel();
  if (n == 0) return q;
  const float zp_f = static_cast<float>(zp);
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  if (x.scalar_type() == at::kFloat && cpu::active_isa() == cpu::Isa::AVX512 &&
      engine::int8_kernels_supported()) {  // the same steps, 16 values at a time (exact)
    const float* xp = xc.const_data_ptr<float>();
    at::parallel_for(0, n, 32768, [&](int64_t i0, int64_t i1) {
      engine::quantize_f32(xp + i0, i1 - i0, inv, zp_f, false, qp + i0);
    });
    return q;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "quantize_per_tensor_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        qp[i] = cpu::requantize(static_cast<float>(xp[i]), inv, zp_f);
      }
    });
  });
  return q;
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("quantize_per_tensor", &quantize_per_tensor_cpu); }

}  // namespace effnet
