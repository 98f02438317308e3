// effnet::dwconv_bias_act(x, weight, bias, stride, padding, act, return_pool) -> (y, pool)
//
//   y[n, c, ho, wo] = act(bias[c] + sum_{kh, kw} weight[c, 0, kh, kw] *
//                         x[n, c, ho*s - top + kh, wo*s - left + kw])      (zero outside x)
//   pool[n, c]      = mean_{ho, wo} y[n, c, ho, wo]   (float32, before y's cast; if return_pool)
//
// x: (N, C, H, W) channels_last, float32 / float16 / bfloat16; weight (C, 1, k, k), odd k, and
// bias (C,) in x's dtype (BN folded); stride 1 or 2; padding (left, right, top, bottom), each in
// [0, k-1]. y: (N, C, Ho, Wo) channels_last in x's dtype; accumulation in float32.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>

#include "../common/act.h"
#include "../common/checks.h"

namespace effnet {

struct DwShape {
  int64_t N, C, H, W, Ho, Wo;
  int k, stride, pad_left, pad_top;
};

// Shape/dtype/layout checks shared by every backend; returns the problem's geometry.
inline DwShape check_dwconv_args(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, int64_t stride,
                                 at::IntArrayRef padding) {
  constexpr const char* op = "effnet::dwconv_bias_act";
  check_nhwc_input(x, op);
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                        weight.size(2) == weight.size(3),
                    op, ": weight must have shape (", C, ", 1, k, k), got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(k % 2 == 1 && k <= 31, op, ": kernel size must be odd and <= 31, got ", k);
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
                   weight.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(),
                    " but x is on ", x.device());
  check_channel_vector(bias, x, C, op, "bias");
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(padding.size() == 4, op,
                    ": padding must be (left, right, top, bottom), got ", padding);
  for (const int64_t p : padding) {
    TORCH_CHECK_VALUE(p >= 0 && p < k, op, ": each padding must be in [0, k-1], got ", padding);
  }
  DwShape s;
  s.N = x.size(0);
  s.C = C;
  s.H = x.size(2);
  s.W = x.size(3);
  s.k = static_cast<int>(k);
  s.stride = static_cast<int>(stride);
  s.pad_left = static_cast<int>(padding[0]);
  s.pad_top = static_cast<int>(padding[2]);
  s.Ho = (s.H + padding[2] + padding[3] - k) / stride + 1;
  s.Wo = (s.W + padding[0] + padding[1] - k) / stride + 1;
  TORCH_CHECK_VALUE(s.H + padding[2] + padding[3] >= k && s.W + padding[0] + padding[1] >= k, op,
                    ": padded input is smaller than the ", k, "x", k, " kernel");
  return s;
}

std::tuple<at::Tensor, at::Tensor> dwconv_bias_act_cpu(const at::Tensor& x,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, int64_t stride,
                                                       at::IntArrayRef padding,
                                                       const std::string& act, bool return_pool);
#ifdef EFFNET_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> dwconv_bias_act_cuda(const at::Tensor& x,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& bias, int64_t stride,
                                                        at::IntArrayRef padding,
                                                        const std::string& act, bool return_pool);
#endif

}  // namespace effnet
