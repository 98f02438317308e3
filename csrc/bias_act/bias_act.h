// effnet::bias_act(x, bias, act) -> y
//
//   y[n, c, h, w] = act(x[n, c, h, w] + bias[c])
//
// x: (N, C, H, W) channels_last (NHWC in memory), float32 / float16 / bfloat16; bias: (C,) same
// dtype; y: channels_last, same dtype. Math in float32. Used after the stem conv.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "../common/act.h"
#include "../common/checks.h"

namespace effnet {

// Shape/dtype/layout checks shared by every backend of bias_act.
inline void check_bias_act_args(const at::Tensor& x, const at::Tensor& bias) {
  check_nhwc_input(x, "effnet::bias_act");
  check_channel_vector(bias, x, x.size(1), "effnet::bias_act", "bias");
}

at::Tensor bias_act_cpu(const at::Tensor& x, const at::Tensor& bias, const std::string& act);
#ifdef EFFNET_WITH_CUDA
at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, const std::string& act);
#endif

}  // namespace effnet
