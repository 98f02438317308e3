// Argument checks shared by every op. Each failure is a c10::Error subclass, which Python sees
// as RuntimeError / ValueError / TypeError with the message below.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace effnet {

// `x` must be 4-D, floating point and physically NHWC (channels_last). A tensor whose
// channels_last and contiguous layouts coincide (H = W = 1) passes.
inline void check_nhwc_input(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", x.dim(),
                    "-D");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK_VALUE(x.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
                    " must be channels_last contiguous (use "
                    "x.contiguous(memory_format=torch.channels_last))");
}

// A per-channel vector: 1-D, `channels` long, contiguous, same dtype and device as `x`.
inline void check_channel_vector(const at::Tensor& v, const at::Tensor& x, int64_t channels,
                                 const char* op, const char* name) {
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == channels, op, ": ", name,
                    " must have shape (", channels, ",), got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == x.scalar_type(), op, ": ", name, " dtype ",
                   v.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(v.device() == x.device(), op, ": ", name, " is on ", v.device(),
                    " but x is on ", x.device());
}

}  // namespace effnet

// ---- INT8 ops -------------------------------------------------------------------------------

namespace effnet {

// `x` must be a 4-D int8 tensor, physically NHWC (channels_last).
inline void check_int8_nhwc(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", x.dim(),
                    "-D");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kChar, op, ": ", name, " must be int8, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.is_contiguous(at::MemoryFormat::ChannelsLast), op, ": ", name,
                    " must be channels_last contiguous (use "
                    "x.contiguous(memory_format=torch.channels_last))");
}

// An int8 zero point: in [-128, 127].
inline void check_zero_point(int64_t zp, const char* op, const char* name) {
  TORCH_CHECK_VALUE(zp >= -128 && zp <= 127, op, ": ", name, " must be in [-128, 127], got ",
                    zp);
}

// A scale or inverse scale: > 0 and finite once rounded to float32 (the kernels use it as
// float32, so 1e39 (-> inf) and 1e-46 (-> 0) are refused). Returns the float32 value.
inline float check_positive_scale(double v, const char* op, const char* name) {
  const float f = static_cast<float>(v);
  TORCH_CHECK_VALUE(std::isfinite(f) && f > 0.0f, op, ": ", name,
                    " must be > 0 and finite in float32, got ", v);
  return f;
}

// A float32 vector of n values (per output channel) on `x`'s device.
inline void check_float_vector(const at::Tensor& v, int64_t n, const at::Tensor& x,
                               const char* op, const char* name) {
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == n, op, ": ", name, " must have shape (", n,
                    ",), got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   v.scalar_type());
  TORCH_CHECK(v.device() == x.device(), op, ": ", name, " is on ", v.device(), " but x is on ",
              x.device());
}

}  // namespace effnet
