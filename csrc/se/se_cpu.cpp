// CPU implementation of effnet::se_gate (contract in se.h): two small GEMMs through ATen
// (MKL/oneDNN) in float32, the SiLU and sigmoid applied in place.
#include <ATen/ops/addmm.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <torch/library.h>

#include "se.h"

namespace effnet {

at::Tensor se_gate_cpu(const at::Tensor& pooled, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2) {
  check_se_args(pooled, w1, b1, w2, b2);
  const auto f = [](const at::Tensor& t) { return t.to(at::kFloat); };
  at::Tensor h = at::addmm(f(b1), pooled, f(w1).t());
  at::silu_(h);
  at::Tensor g = at::addmm(f(b2), h, f(w2).t());
  return at::sigmoid_(g);
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("se_gate", &se_gate_cpu); }

}  // namespace effnet
