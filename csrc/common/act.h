// Activation functions shared by the CPU and CUDA kernels.
//
// Every fused op ends in one of four activations, selected by a string in the op schema and
// turned into a compile-time template argument here, so the inner loops carry no branches.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace effnet {

enum class Act : int { Identity = 0, ReLU = 1, ReLU6 = 2, SiLU = 3 };

// Parses the schema's `act` string; anything else is a clear error.
inline Act parse_act(const std::string& name) {
  if (name == "silu" || name == "swish") return Act::SiLU;
  if (name == "relu6") return Act::ReLU6;
  if (name == "relu") return Act::ReLU;
  if (name == "identity" || name == "none") return Act::Identity;
  TORCH_CHECK_VALUE(false, "effnet: unknown activation '", name,
                    "'; expected one of 'silu', 'relu6', 'relu', 'identity'");
}

// y = act(v), computed in float32.
template <Act A>
C10_HOST_DEVICE C10_ALWAYS_INLINE float apply_act(float v) {
  if constexpr (A == Act::SiLU) {
#if defined(__CUDA_ARCH__)
    return v / (1.0f + __expf(-v));
#else
    return v / (1.0f + std::exp(-v));
#endif
  } else if constexpr (A == Act::ReLU6) {  // ternaries: NaN propagates (as in PyTorch) and
    return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);  // CPU loops vectorise (fmaxf does not)
  } else if constexpr (A == Act::ReLU) {
    return v < 0.0f ? 0.0f : v;
  } else {
    return v;
  }
}

// Calls f(std::integral_constant<Act, A>{}) for the runtime value `act`.
template <typename F>
inline auto dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::SiLU:
      return f(std::integral_constant<Act, Act::SiLU>{});
    case Act::ReLU6:
      return f(std::integral_constant<Act, Act::ReLU6>{});
    case Act::ReLU:
      return f(std::integral_constant<Act, Act::ReLU>{});
    case Act::Identity:
    default:
      return f(std::integral_constant<Act, Act::Identity>{});
  }
}

}  // namespace effnet
