// The float32 steps of the INT8 CPU kernels (dwconv_int8, pointwise_int8, quantize_per_tensor),
// written as the exact integer reference does them (effnet_kernels/reference.py, "INT8"): every
// step one float32 rounding, in the reference's order.
//
// A file using these must not let the compiler contract a*b + c into an FMA (one rounding
// instead of two): include this header last and it switches contraction off for the rest of the
// translation unit (the x86-64 baseline build has no FMA anyway; -march=native or AArch64 would).
// SiLU is v / (1 + exp(-v)) with cpu::exp_vec (the Cephes polynomial, as the CUDA int8 kernel):
// PyTorch's F.silu uses its own vectorised exp, so a SiLU output may differ from the reference
// by 1 LSB where the float value sits at a rounding boundary (rare; the contract allows it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "act.h"
#include "cpu_math.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace effnet::cpu {

// requantize(a) = int8 clamp(floor(a * inv + 0.5) + zp, -128, 127), each step in float32
// (reference.requantize). NaN gives -128 (as the CUDA kernels).
C10_ALWAYS_INLINE int8_t requantize(float a, float inv, float zp) {
  const float t = std::floor(a * inv + 0.5f) + zp;
  const float c = t >= 127.0f ? 127.0f : (t >= -128.0f ? t : -128.0f);  // NaN -> -128
  return static_cast<int8_t>(static_cast<int32_t>(c));
}

// act(acc * scale + bias) in float32: the dequantising epilogue of the int8 convolutions.
template <Act A>
C10_ALWAYS_INLINE float dequant_act(int32_t acc, float scale, float bias) {
  return act_vec<A>(static_cast<float>(acc) * scale + bias);
}

}  // namespace effnet::cpu
