// effnet::quantize_per_tensor(x, inv_scale, zp) -> q
//
//   q = (int8) clamp(floor(float32(x) * inv_scale + 0.5) + zp, -128, 127)   (float32 steps)
//
// The exact contract is effnet_kernels/reference.py::quantize_per_tensor (= requantize, section
// "INT8"): each step one float32 rounding in the order written, round half up. x: any shape and
// layout, float32 / float16 / bfloat16 / float64 (rounded to float32 first); inv_scale > 0 and
// finite in float32; zp in [-128, 127]. q: int8, x's shape, channels_last when x is 4-D (else
// contiguous). Quantises the model input (and calibration tensors) into the int8 grid.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../common/checks.h"

namespace effnet {

// Argument checks shared by every backend of quantize_per_tensor; returns inv_scale as float32.
inline float check_quantize_per_tensor_args(const at::Tensor& x, double inv_scale, int64_t zp) {
  constexpr const char* op = "effnet::quantize_per_tensor";
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op,
                   ": x must be a floating-point tensor, got ", x.scalar_type());
  check_zero_point(zp, op, "zp");
  return check_positive_scale(inv_scale, op, "inv_scale");
}

at::Tensor quantize_per_tensor_cpu(const at::Tensor& x, double inv_scale, int64_t zp);

}  // namespace effnet
