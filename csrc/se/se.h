// effnet::se_gate(pooled, w1, b1, w2, b2) -> gate
//
//   gate[n, c] = sigmoid(b2[c] + sum_s w2[c, s] * silu(b1[s] + sum_k w1[s, k] * pooled[n, k]))
//
// pooled (N, C) float32; w1 (S, C), b1 (S,), w2 (C, S), b2 (C,) in one float dtype (fp32, fp16
// or bf16); gate (N, C) float32. The squeeze-and-excitation MLP of one MBConv block.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace effnet {

struct SeShape {
  int64_t N, C, S;
};

inline SeShape check_se_args(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                             const at::Tensor& w2, const at::Tensor& b2) {
  constexpr const char* op = "effnet::se_gate";
  TORCH_CHECK_VALUE(pooled.dim() == 2, op, ": pooled must be (N, C), got ", pooled.sizes());
  TORCH_CHECK_TYPE(pooled.scalar_type() == at::kFloat, op, ": pooled must be float32, got ",
                   pooled.scalar_type());
  const int64_t N = pooled.size(0), C = pooled.size(1);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == C, op, ": w1 must be (S, ", C, "), got ",
                    w1.sizes());
  const int64_t S = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == S, op, ": w2 must be (",
                    C, ", ", S, "), got ", w2.sizes());
  TORCH_CHECK_VALUE(b1.dim() == 1 && b1.size(0) == S, op, ": b1 must be (", S, ",), got ",
                    b1.sizes());
  TORCH_CHECK_VALUE(b2.dim() == 1 && b2.size(0) == C, op, ": b2 must be (", C, ",), got ",
                    b2.sizes());
  const auto t = w1.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
                   ": weights must be float32, float16 or bfloat16, got ", t);
  for (const at::Tensor* v : {&b1, &w2, &b2}) {
    TORCH_CHECK_TYPE(v->scalar_type() == t, op, ": all weights must share w1's dtype ", t,
                     ", got ", v->scalar_type());
  }
  for (const at::Tensor* v : {&w1, &b1, &w2, &b2}) {
    TORCH_CHECK_VALUE(v->device() == pooled.device(), op, ": a weight is on ", v->device(),
                      " but pooled is on ", pooled.device());
  }
  return {N, C, S};
}

at::Tensor se_gate_cpu(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2);
#ifdef EFFNET_WITH_CUDA
at::Tensor se_gate_cuda(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                        const at::Tensor& w2, const at::Tensor& b2);
#endif

}  // namespace effnet
