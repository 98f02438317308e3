// effnet::dwconv_int8(x, weight, scale, bias, stride, padding, in_zp, out_inv_scale, out_zp, act,
//                     return_pool) -> (y, pool)
//
//   acc[n, c, ho, wo] = sum_{kh, kw in the image} (x[n, c, ho*s - top + kh, wo*s - left + kw]
//                                                   - in_zp) * weight[c, 0, kh, kw]   (int32, exact)
//   a  = act((float)acc * scale[c] + bias[c])                                         (float32)
//   y  = (int8) clamp(floor(a * out_inv_scale + 0.5) + out_zp, -128, 127)            (float32 steps)
//   pool[n, c] = mean_{ho, wo} a[n, c, ho, wo]   (float32 (N, C), if return_pool; else (0,))
//
// The exact contract is effnet_kernels/reference.py::dwconv_int8 (section "INT8"): padding taps
// are real zero (skipped), every float step is one float32 rounding in the order written, round
// half up. A kernel may differ from it by at most 1 LSB of y (an FMA at an exact tie, or the last
// ulp of exp in SiLU) and by ~1e-5 relative in pool (summation order).
//
// x: int8 (N, C, H, W) channels_last; weight int8 (C, 1, k, k), odd k <= 31; scale, bias float32
// (C,) (scale[c] = s_in * s_w[c], BN folded into bias); stride 1 or 2; padding (left, right, top,
// bottom), each in [0, k-1]; in_zp, out_zp in [-128, 127]; out_inv_scale finite and > 0;
// act in {silu, relu6, relu, identity}. y: int8 (N, C, Ho, Wo) channels_last,
// Ho = (H + top + bottom - k) / stride + 1 (Wo likewise), both >= 1.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <tuple>

#include "../common/act.h"
#include "../common/dw_geometry.h"

namespace effnet {

// The geometry (dw_geometry.h) and the quantisation scalars.
struct QDwShape : DwShape {
  int in_zp, out_zp;
  float out_inv_scale;
};

// Argument checks shared by every backend of dwconv_int8; returns the problem's geometry.
// Device mismatches are RuntimeError, dtypes TypeError, shapes and values ValueError.
inline QDwShape check_dwconv_int8_args(const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& scale, const at::Tensor& bias,
                                       int64_t stride, at::IntArrayRef padding, int64_t in_zp,
                                       double out_inv_scale, int64_t out_zp) {
  constexpr const char* op = "effnet::dwconv_int8";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kChar, op, ": x must be int8, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.is_contiguous(at::MemoryFormat::ChannelsLast), op,
                    ": x must be channels_last contiguous (use "
                    "x.contiguous(memory_format=torch.channels_last))");
  const DwShape g = check_dw_geometry(op, x, weight, stride, padding);
  const int64_t C = g.C;
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kChar, op, ": weight must be int8, got ",
                   weight.scalar_type());
  const auto check_vector = [&](const at::Tensor& v, const char* name) {
    TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == C, op, ": ", name, " must have shape (", C,
                      ",), got ", v.sizes());
    TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                     v.scalar_type());
  };
  check_vector(scale, "scale");
  check_vector(bias, "bias");
  const auto check_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
                " but x is on ", x.device());
  };
  check_device(weight, "weight");
  check_device(scale, "scale");
  check_device(bias, "bias");
  TORCH_CHECK_VALUE(in_zp >= -128 && in_zp <= 127, op, ": in_zp must be in [-128, 127], got ",
                    in_zp);
  TORCH_CHECK_VALUE(out_zp >= -128 && out_zp <= 127, op, ": out_zp must be in [-128, 127], got ",
                    out_zp);
  const float inv_f = static_cast<float>(out_inv_scale);
  TORCH_CHECK_VALUE(std::isfinite(inv_f) && inv_f > 0.0f, op,
                    ": out_inv_scale must be > 0 and finite in float32, got ", out_inv_scale);
  QDwShape s;
  static_cast<DwShape&>(s) = g;
  s.in_zp = static_cast<int>(in_zp);
  s.out_zp = static_cast<int>(out_zp);
  s.out_inv_scale = inv_f;
  return s;
}

#ifdef EFFNET_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> dwconv_int8_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                    const at::Tensor& scale,
                                                    const at::Tensor& bias, int64_t stride,
                                                    at::IntArrayRef padding, int64_t in_zp,
                                                    double out_inv_scale, int64_t out_zp,
                                                    const std::string& act, bool return_pool);
#endif

}  // namespace effnet
