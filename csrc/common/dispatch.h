// dtype dispatch for the kernels: float32, float16 and bfloat16 only (math is float32; a float64
// kernel would silently lose precision, so float64 is rejected by the checks instead).
#pragma once

#include <ATen/Dispatch.h>

#define EFFNET_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)               \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                   \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                             AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
