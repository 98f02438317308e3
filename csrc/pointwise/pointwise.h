// effnet::pointwise_conv(x, weight, bias, act, gate, residual, pool_only) -> y or pool
//
//   v[n, o, h, w] = act(bias[o] + sum_i weight[o, i] * gate[n, i] * x[n, i, h, w])
//   y = v + residual (if given), channels_last in x's dtype;  pool[n, o] = mean_{h,w} y (float32)
//
// x (N, Cin, H, W) channels_last = a row-major (N*H*W, Cin) matrix; weight (Cout, Cin) and bias
// (Cout,) in x's dtype; gate (N, Cin) float32 or none; residual (N, Cout, H, W) channels_last in
// x's dtype or none. With pool_only only the (N, Cout) float32 mean is returned.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "../common/checks.h"

namespace effnet {

inline void check_pointwise_args(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, const std::optional<at::Tensor>& gate,
                                 const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "effnet::pointwise_conv";
  check_nhwc_input(x, op);
  const int64_t N = x.size(0), Cin = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == Cin, op, ": weight must be (Cout, ",
                    Cin, "), got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
                   weight.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(),
                    " but x is on ", x.device());
  check_channel_vector(bias, x, weight.size(0), op, "bias");
  if (gate.has_value()) {
    const at::Tensor& g = *gate;
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == N && g.size(1) == Cin, op,
                      ": gate must be (", N, ", ", Cin, "), got ", g.sizes());
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat, op, ": gate must be float32, got ",
                     g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == x.device(), op, ": gate is on ", g.device(), " but x is on ",
                      x.device());
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK_VALUE(r.dim() == 4 && r.size(0) == N && r.size(1) == weight.size(0) &&
                          r.size(2) == x.size(2) && r.size(3) == x.size(3),
                      op, ": residual must be (", N, ", ", weight.size(0), ", ", x.size(2), ", ",
                      x.size(3), "), got ", r.sizes());
    TORCH_CHECK_TYPE(r.scalar_type() == x.scalar_type(), op, ": residual dtype ",
                     r.scalar_type(), " does not match x dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(r.device() == x.device(), op, ": residual is on ", r.device(),
                      " but x is on ", x.device());
    TORCH_CHECK_VALUE(r.is_contiguous(at::MemoryFormat::ChannelsLast), op,
                      ": residual must be channels_last contiguous");
  }
}

at::Tensor pointwise_conv_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const std::string& act,
                              const std::optional<at::Tensor>& gate,
                              const std::optional<at::Tensor>& residual, bool pool_only);

}  // namespace effnet
