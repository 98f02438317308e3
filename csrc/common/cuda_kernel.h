// What a CUDA kernel body needs, written so that g++ compiles it as well: every kernel body of
// this project is __host__ __device__ code that tests/test_cuda_emulation.py also runs on the
// CPU over the launch grid (csrc/common/emu.h). Each device intrinsic used by a body has a host
// twin here (or in dwconv_int8_kernel.cuh); no CUDA runtime header is needed.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
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

// Blocks for a grid-stride loop over `work` items: enough to fill the GPU, capped (at
// `max_blocks`, by default the most a grid may have here) so the grid stays legal; the kernel
// loops over the rest. A smaller cap makes a test walk the stride loop more than once.
inline unsigned int grid_for(int64_t work, int threads, int64_t max_blocks = 1 << 16) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

// A load through the read-only data cache (__ldg); a plain load on the host.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// exp(x): the fast hardware approximation __expf on the GPU, std::exp on the host.
C10_HOST_DEVICE C10_ALWAYS_INLINE float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}

#if !defined(__CUDA_ARCH__)
namespace emu {
// Host twin of __shfl_xor_sync over a full warp; defined by the CPU emulation (emu.h), which
// runs the 32 lanes of a warp in lock-step. Never called by host code outside it.
float shfl_xor(float v, int lane_mask);
}  // namespace emu
#endif

// The value of `v` in lane (lane ^ lane_mask) of this warp; all 32 lanes must take part.
C10_HOST_DEVICE C10_ALWAYS_INLINE float shfl_xor(float v, int lane_mask) {
#if defined(__CUDA_ARCH__)
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
#else
  return emu::shfl_xor(v, lane_mask);
#endif
}

// Where block `bid` of a depthwise grid works (float and int8 kernels): sample n, band of output
// rows, first channel of its chunk of `ctv` channels; blocks are ordered (n, band, chunk).
struct DwCoords {
  int64_t n, band, c_base;
};
C10_HOST_DEVICE C10_ALWAYS_INLINE DwCoords dw_coords(int64_t bid, int64_t chunks, int64_t bands,
                                                      int64_t ctv) {
  DwCoords c;
  const int64_t chunk = bid % chunks;
  bid /= chunks;
  c.band = bid % bands;
  c.n = bid / bands;
  c.c_base = chunk * ctv;
  return c;
}

// Output rows per band of a depthwise grid of (N x bands x chunks) blocks: enough bands that the
// grid fills the GPU about 4 times over when N is small, at most Ho, at most `max_rows`.
inline int64_t dw_rows_per_band(int64_t N, int64_t Ho, int64_t chunks, int sm_count,
                                int64_t max_rows) {
  const int64_t per_band = N * chunks;
  const int64_t bands = std::clamp<int64_t>((4LL * sm_count + per_band - 1) / per_band, 1, Ho);
  return std::max<int64_t>(1, std::min<int64_t>((Ho + bands - 1) / bands, max_rows));
}

}  // namespace effnet
