// The kernel body of the CUDA effnet::se_gate (contract in se.h), written as __host__ __device__
// phases (load / hidden / gates, separated by __syncthreads) so that tests/test_cuda_emulation.py
// also runs it on the CPU (csrc/common/emu.h; the warp shuffles of `hidden` with the 32 lanes of
// each warp in lock-step). The __global__ wrapper and launch are in se_cuda.cu.
//
// One block (256 threads) per sample: the sample's pooled vector goes to shared memory; each warp
// computes hidden units h[s] = silu(b1[s] + w1[s, :] . p) with a lane-strided dot and a shuffle
// reduction (w1 rows read coalesced); then each thread computes gates for channels c (stride 256)
// as sigmoid(b2[c] + w2[c, :] . h) with h in shared memory. float32 math; weights in their dtype.
// Bytes: N*C*4 in + N*C*4 out + weights (from L2 after the first block).
//
// Status: compiles in CI; NOT YET RUN ON A GPU. The body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#pragma once

#include <cstdint>

#include "../common/cuda_kernel.h"

namespace effnet {

constexpr int kSeThreads = 256;

// Shared memory of one block in bytes: p[C] and h[S] as float32.
inline size_t se_smem_bytes(int64_t C, int64_t S) { return sizeof(float) * (C + S); }

template <typename T>
struct SeBlock {
  // Phase 1 (thread tid of nthreads): the sample's pooled vector into p.
  static C10_HOST_DEVICE void load(const float* pooled, float* p, int64_t n, int64_t C, int tid,
                                   int nthreads) {
    for (int64_t c = tid; c < C; c += nthreads) p[c] = pooled[n * C + c];
  }

  // Phase 2: hidden units, one per warp at a time: lane-strided dot product of a w1 row with p,
  // butterfly-reduced over the warp (every lane ends with the sum); lane 0 applies bias and SiLU.
  static C10_HOST_DEVICE void hidden(const T* w1, const T* b1, const float* p, float* h,
                                     int64_t C, int64_t S, int tid, int nthreads) {
    const int lane = tid % 32, warp = tid / 32, nwarps = nthreads / 32;
    for (int64_t s = warp; s < S; s += nwarps) {
      float acc = 0.0f;
      for (int64_t k = lane; k < C; k += 32) acc += static_cast<float>(w1[s * C + k]) * p[k];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) acc += shfl_xor(acc, off);
      if (lane == 0) {
        const float v = acc + static_cast<float>(b1[s]);
        h[s] = v / (1.0f + fast_exp(-v));
      }
    }
  }

  // Phase 3: gate[n, c] = sigmoid(b2[c] + w2[c, :] . h) for channels c = tid, tid + nthreads...
  static C10_HOST_DEVICE void gates(const T* w2, const T* b2, const float* h, float* gate,
                                    int64_t n, int64_t C, int64_t S, int tid, int nthreads) {
    for (int64_t c = tid; c < C; c += nthreads) {
      float acc = static_cast<float>(b2[c]);
      for (int64_t s = 0; s < S; ++s) acc += static_cast<float>(w2[c * S + s]) * h[s];
      gate[n * C + c] = 1.0f / (1.0f + fast_exp(-acc));
    }
  }
};

}  // namespace effnet
