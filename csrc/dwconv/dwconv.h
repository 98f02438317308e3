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
#include "../common/dw_geometry.h"

namespace effnet {

// Shape/dtype/layout checks shared by every backend; returns the problem's geometry.
inline DwShape check_dwconv_args(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, int64_t stride,
                                 at::IntArrayRef padding) {
  constexpr const char* op = "effnet::dwconv_bias_act";
  check_nhwc_input(x, op);
  const DwShape s = check_dw_geometry(op, x, weight, stride, padding);
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
                   weight.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(),
                    " but x is on ", x.device());
  check_channel_vector(bias, x, s.C, op, "bias");
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
