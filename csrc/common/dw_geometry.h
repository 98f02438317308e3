// The geometry of a depthwise convolution, checked once for every depthwise op (float
// dwconv_bias_act and dwconv_int8, every backend): weight (C, 1, k, k) with odd k <= 31, stride 1
// or 2, padding (left, right, top, bottom) each in [0, k-1], padded input at least k x k.
// Dtype, layout and device checks stay with each op (they differ).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace effnet {

// N, C, H, W of x (NCHW sizes); Ho, Wo of y; the kernel size, stride and the leading paddings.
struct DwShape {
  int64_t N, C, H, W, Ho, Wo;
  int k, stride, pad_left, pad_top;
};

// Checks the geometry of op(x, weight, stride, padding) (x already checked to be 4-D) and
// returns it. All failures are ValueError.
inline DwShape check_dw_geometry(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                 int64_t stride, at::IntArrayRef padding) {
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                        weight.size(2) == weight.size(3),
                    op, ": weight must have shape (", C, ", 1, k, k), got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(k % 2 == 1 && k <= 31, op, ": kernel size must be odd and <= 31, got ", k);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(padding.size() == 4, op,
                    ": padding must be (left, right, top, bottom), got ", padding);
  for (const int64_t p : padding) {
    TORCH_CHECK_VALUE(p >= 0 && p < k, op, ": each padding must be in [0, k-1] = [0, ", k - 1,
                      "], got ", padding);
  }
  const int64_t hp = x.size(2) + padding[2] + padding[3];
  const int64_t wp = x.size(3) + padding[0] + padding[1];
  TORCH_CHECK_VALUE(hp >= k && wp >= k, op, ": padded input (", hp, "x", wp,
                    ") is smaller than the ", k, "x", k, " kernel (output would be empty)");
  DwShape s;
  s.N = x.size(0);
  s.C = C;
  s.H = x.size(2);
  s.W = x.size(3);
  s.k = static_cast<int>(k);
  s.stride = static_cast<int>(stride);
  s.pad_left = static_cast<int>(padding[0]);
  s.pad_top = static_cast<int>(padding[2]);
  s.Ho = (hp - k) / stride + 1;
  s.Wo = (wp - k) / stride + 1;
  return s;
}

}  // namespace effnet
