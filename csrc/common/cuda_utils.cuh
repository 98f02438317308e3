// Helpers for the CUDA kernels: aligned vector packs for 16-byte loads/stores and launch sizing.
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h pulls in cuBLAS headers that a bare
// CUDA toolkit may lack).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace effnet {

// VEC elements of T moved as one aligned transaction (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Blocks for a grid-stride loop over `work` items: enough to fill the GPU, capped so the grid
// stays legal; the kernel loops over the rest.
inline unsigned int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 1 << 16)));
}

}  // namespace effnet
