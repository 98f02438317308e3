// The arguments of the training ops' BN-act kernels (bn_act_apply, bn_act_backward): checks with
// the op's name in the message, and the per-channel affine v = x·scale + shift they run.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace effnet {

struct BnActArgs {
  at::Tensor mean, scale, shift, gate;  // contiguous float32; shift = beta − mean·scale
  bool has_gate;
};

// x channels_last float32 (N, C, H, W); mean, scale, beta float32 (C,); gate float32 (N, C)
// or none.
inline BnActArgs bn_act_args(const char* op, const at::Tensor& x, const at::Tensor& mean,
                             const at::Tensor& scale, const at::Tensor& beta,
                             const c10::optional<at::Tensor>& gate) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.scalar_type() == at::kFloat &&
                        x.is_contiguous(at::MemoryFormat::ChannelsLast),
                    op, ": x must be a channels_last float32 (N, C, H, W) tensor");
  const int64_t N = x.size(0), C = x.size(1);
  for (const at::Tensor* t : {&mean, &scale, &beta}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == C && t->scalar_type() == at::kFloat, op,
                      ": mean, scale and beta must be float32 (C,) vectors");
  }
  const bool has_gate = gate.has_value() && gate->defined();
  if (has_gate) {
    TORCH_CHECK_VALUE(gate->dim() == 2 && gate->size(0) == N && gate->size(1) == C &&
                          gate->scalar_type() == at::kFloat,
                      op, ": gate must be a float32 (N, C) tensor");
  }
  const at::Tensor m = mean.contiguous(), s = scale.contiguous();
  return {m, s, beta.contiguous().sub(m.mul(s)), has_gate ? gate->contiguous() : at::Tensor(),
          has_gate};
}

}  // namespace effnet
