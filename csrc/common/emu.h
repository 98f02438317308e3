// CPU emulation of CUDA launches, for tests/test_cuda_emulation.py: runs a kernel's
// __host__ __device__ body (compiled by g++) over its launch grid, block by block, the way the
// GPU would. Include it in ONE translation unit (it defines emu::shfl_xor, declared in
// cuda_kernel.h); the CUDA build never includes it.
//
//   for_blocks(n, smem_bytes, f)    f(bid, smem) for each block, smem refilled with garbage
//   for_threads(n, f)               f(tid) for each thread: one phase between two barriers
//   for_warps_lockstep(n, f)        the same, the 32 lanes of each warp run in lock-step (as
//                                   coroutines) so that shfl_xor exchanges values among them
//   grid_stride(blocks, threads, f) f(first, step) for each thread of a 1-D grid-stride kernel
#pragma once

#include <ucontext.h>
#include <vector_types.h>  // int4

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "cuda_kernel.h"
#include "cuda_pool.h"

namespace effnet::emu {

constexpr int kWarp = 32;
constexpr unsigned char kGarbage = 0xFF;  // NaN as a float, -1 as an int

// Runs f(bid, smem) for blocks 0 .. n-1 in order; `smem` (16-byte aligned, `smem_bytes` long)
// is filled with garbage before each block, as uninitialised shared memory.
template <typename F>
void for_blocks(int64_t n, size_t smem_bytes, F&& f) {
  TORCH_CHECK(smem_bytes <= 48 * 1024, "emu: ", smem_bytes, " bytes of shared memory per block");
  std::vector<int4> smem(smem_bytes / sizeof(int4) + 1);
  for (int64_t bid = 0; bid < n; ++bid) {
    std::memset(smem.data(), kGarbage, smem.size() * sizeof(int4));
    f(bid, static_cast<void*>(smem.data()));
  }
}

// One phase of a block (the code between two __syncthreads): each thread runs to the barrier.
template <typename F>
void for_threads(int nthreads, F&& f) {
  TORCH_CHECK(nthreads >= 1 && nthreads <= 1024, "emu: ", nthreads, " threads per block");
  for (int tid = 0; tid < nthreads; ++tid) f(tid);
}

// A 1-D grid-stride kernel: f(first, step) for each thread of `blocks` x `threads`.
template <typename F>
void grid_stride(int64_t blocks, int threads, F&& f) {
  const int64_t step = blocks * threads;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) f(b * threads + t, step);
  }
}

// ---- warps in lock-step ---------------------------------------------------------------------
//
// Each lane of a warp is a coroutine (ucontext). The scheduler resumes lanes 0..31 in turn; a
// lane runs until it calls shfl_xor (it deposits its value and yields) or returns. When every
// lane of the warp waits at a shuffle with the same mask, the round's values are frozen and each
// lane, resumed, reads its partner's: __shfl_xor_sync(0xffffffff, v, mask) exactly, so a
// butterfly reduction sums in the GPU's order. A lane that returns or shuffles with another mask
// while others wait is a divergent shuffle (undefined on the GPU) and fails the emulation.

class Warp {
 public:
  explicit Warp(size_t stack_bytes = 256 * 1024)
      : stacks_(kWarp * stack_bytes), stack_(stack_bytes) {}

  // Runs f(lane) for the 32 lanes in lock-step.
  void run(const std::function<void(int)>& f) {
    body_ = &f;
    for (int l = 0; l < kWarp; ++l) {
      getcontext(&ctx_[l]);
      ctx_[l].uc_stack.ss_sp = stacks_.data() + l * stack_;
      ctx_[l].uc_stack.ss_size = stack_;
      ctx_[l].uc_link = &main_;
      makecontext(&ctx_[l], reinterpret_cast<void (*)()>(&Warp::trampoline), 1, l);
      done_[l] = false;
    }
    Warp* const outer = current_;
    current_ = this;
    for (;;) {
      for (int l = 0; l < kWarp; ++l) {
        if (done_[l]) continue;
        waiting_[l] = false;
        lane_ = l;
        swapcontext(&main_, &ctx_[l]);
      }
      int waiting = 0;
      for (int l = 0; l < kWarp; ++l) waiting += waiting_[l] && !done_[l];
      if (waiting == 0) break;
      bool same_mask = true;
      for (int l = 0; l < kWarp; ++l) same_mask = same_mask && mask_[l] == mask_[0];
      if (waiting != kWarp || !same_mask) {
        current_ = outer;
        TORCH_CHECK(false, "emu: divergent warp shuffle (", waiting, " of 32 lanes waiting",
                    same_mask ? "" : ", different masks", ")");
      }
      std::memcpy(frozen_, slot_, sizeof(slot_));
    }
    current_ = outer;
  }

  // Called by the running lane (through shfl_xor).
  float exchange(float v, int mask) {
    const int l = lane_;
    slot_[l] = v;
    mask_[l] = mask;
    waiting_[l] = true;
    swapcontext(&ctx_[l], &main_);
    return frozen_[(l ^ mask) & (kWarp - 1)];
  }

  static Warp* current() { return current_; }

 private:
  static void trampoline(int lane) {
    Warp* w = current_;
    (*w->body_)(lane);
    w->done_[lane] = true;
  }  // returns to main_ through uc_link

  static inline thread_local Warp* current_ = nullptr;
  std::vector<char> stacks_;
  size_t stack_;
  const std::function<void(int)>* body_ = nullptr;
  ucontext_t main_;
  ucontext_t ctx_[kWarp];
  float slot_[kWarp], frozen_[kWarp];
  int mask_[kWarp] = {};
  bool waiting_[kWarp] = {}, done_[kWarp] = {};
  int lane_ = 0;
};

// One phase of a block whose code uses shfl_xor: f(tid) for each thread, warp by warp (nthreads a
// multiple of 32), the lanes of each warp in lock-step.
template <typename F>
void for_warps_lockstep(int nthreads, F&& f) {
  TORCH_CHECK(nthreads % kWarp == 0 && nthreads <= 1024, "emu: ", nthreads,
              " threads: whole warps only");
  static thread_local Warp warp;
  for (int w = 0; w < nthreads / kWarp; ++w) {
    const std::function<void(int)> lane_body = [&](int lane) { f(w * kWarp + lane); };
    warp.run(lane_body);
  }
}

// The host twin of __shfl_xor_sync (declared in cuda_kernel.h).
float shfl_xor(float v, int lane_mask) {
  Warp* w = Warp::current();
  if (w == nullptr) {
    std::fprintf(stderr, "emu: shfl_xor outside for_warps_lockstep\n");
    std::abort();
  }
  return w->exchange(v, lane_mask);
}

// Turns the partials of a PoolWorkspace into its pool as finalize_pool does on the GPU (same
// grid, capped at `max_blocks` blocks so that a test walks the grid-stride loop).
inline void finalize_pool(const PoolWorkspace& ws, int64_t max_blocks = 1 << 16) {
  if (!ws.partial.defined()) return;
  const float* partial = ws.partial.const_data_ptr<float>();
  float* pool = ws.pool.mutable_data_ptr<float>();
  grid_stride(grid_for(ws.N * ws.C, kPoolFinalizeThreads, max_blocks), kPoolFinalizeThreads,
              [&](int64_t first, int64_t step) {
                pool_finalize_thread(partial, pool, ws.N, ws.bands, ws.C, ws.scale, first, step);
              });
}

}  // namespace effnet::emu
