// effnet::pointwise_int8(x, weight, scale, bias, in_zp, out_inv_scale, out_zp, act, gate,
//                        residual, res_scale, res_zp, pool_only) -> y | pool
//
//   xg[n, ci, p]  = clamp(floor((x - in_zp) * gate[n, ci] + 0.5) + in_zp, -128, 127)   (gate)
//                   or x                                                      (float32 steps)
//   acc[n, co, p] = sum_ci (xg - in_zp) * weight[co, ci]                          (int32, exact)
//   a = act((float)acc * scale[co] + bias[co]) + (float)(residual - res_zp) * res_scale
//   y = (int8) clamp(floor(a * out_inv_scale + 0.5) + out_zp, -128, 127)
//   pool_only: the float32 (N, Cout) mean of a over the pixels instead of y
//
// The exact contract is effnet_kernels/reference.py::pointwise_int8 (section "INT8"): every
// float step one float32 rounding in the order written, round half up. A kernel may differ from
// it by at most 1 LSB of y (an FMA at an exact tie, or the last ulp of exp in SiLU, rare) and by
// ~1e-5 relative in pool (summation order).
//
// x: int8 (N, Cin, H, W) channels_last; weight int8 (Cout, Cin) or (Cout, Cin, 1, 1); scale, bias
// float32 (Cout,) (scale[co] = s_in * s_w[co]); gate float32 (N, Cin) or None; residual int8
// (N, Cout, H, W) channels_last or None, with res_scale (> 0, finite) and res_zp; in_zp, out_zp,
// res_zp in [-128, 127]; out_inv_scale > 0 and finite in float32. y: int8 (N, Cout, H, W)
// channels_last; pool: float32 (N, Cout), H * W >= 1.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "../common/checks.h"

namespace effnet {

struct QPwShape {
  int64_t N, Cin, H, W, Cout;
  int in_zp, out_zp, res_zp;
  float out_inv_scale, res_scale;
};

// Argument checks shared by every backend of pointwise_int8; returns the problem's geometry.
// Device mismatches are RuntimeError, dtypes TypeError, shapes and values ValueError.
inline QPwShape check_pointwise_int8_args(const at::Tensor& x, const at::Tensor& weight,
                                          const at::Tensor& scale, const at::Tensor& bias,
                                          int64_t in_zp, double out_inv_scale, int64_t out_zp,
                                          const std::optional<at::Tensor>& gate,
                                          const std::optional<at::Tensor>& residual,
                                          double res_scale, int64_t res_zp, bool pool_only) {
  constexpr const char* op = "effnet::pointwise_int8";
  check_int8_nhwc(x, op);
  QPwShape s{};
  s.N = x.size(0);
  s.Cin = x.size(1);
  s.H = x.size(2);
  s.W = x.size(3);
  const bool w_ok = (weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 &&
                                           weight.size(3) == 1)) &&
                    weight.size(1) == s.Cin;
  TORCH_CHECK_VALUE(w_ok, op, ": weight must have shape (Cout, ", s.Cin, ") or (Cout, ", s.Cin,
                    ", 1, 1), got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, op, ": weight must be int8, got ",
                   weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  s.Cout = weight.size(0);
  check_float_vector(scale, s.Cout, x, op, "scale");
  check_float_vector(bias, s.Cout, x, op, "bias");
  check_zero_point(in_zp, op, "in_zp");
  check_zero_point(out_zp, op, "out_zp");
  s.in_zp = static_cast<int>(in_zp);
  s.out_zp = static_cast<int>(out_zp);
  s.out_inv_scale = check_positive_scale(out_inv_scale, op, "out_inv_scale");
  if (gate.has_value()) {
    const at::Tensor& g = *gate;
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == s.N && g.size(1) == s.Cin, op,
                      ": gate must have shape (", s.N, ", ", s.Cin, "), got ", g.sizes());
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat, op, ": gate must be float32, got ",
                     g.scalar_type());
    TORCH_CHECK(g.device() == x.device(), op, ": gate is on ", g.device(), " but x is on ",
                x.device());
  }
  s.res_zp = 0;
  s.res_scale = 0.0f;
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    check_int8_nhwc(r, op, "residual");
    TORCH_CHECK_VALUE(r.size(0) == s.N && r.size(1) == s.Cout && r.size(2) == s.H &&
                          r.size(3) == s.W,
                      op, ": residual must have shape (", s.N, ", ", s.Cout, ", ", s.H, ", ",
                      s.W, "), got ", r.sizes());
    TORCH_CHECK(r.device() == x.device(), op, ": residual is on ", r.device(), " but x is on ",
                x.device());
    check_zero_point(res_zp, op, "res_zp");
    s.res_zp = static_cast<int>(res_zp);
    s.res_scale = check_positive_scale(res_scale, op, "res_scale");
  }
  TORCH_CHECK_VALUE(!pool_only || s.H * s.W > 0, op,
                    ": pool_only needs a non-empty spatial size, got ", s.H, "x", s.W);
  return s;
}

at::Tensor pointwise_int8_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& bias, int64_t in_zp,
                              double out_inv_scale, int64_t out_zp, const std::string& act,
                              const std::optional<at::Tensor>& gate,
                              const std::optional<at::Tensor>& residual, double res_scale,
                              int64_t res_zp, bool pool_only);

}  // namespace effnet
