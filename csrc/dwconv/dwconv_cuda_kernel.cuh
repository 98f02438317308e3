// The kernel body of the CUDA effnet::dwconv_bias_act (contract in dwconv.h) and its launch
// plan, written as __host__ __device__ phases (stage / compute / reduce, separated by
// __syncthreads) so that g++ compiles them too: tests/test_cuda_emulation.py runs this body on
// the CPU over the launch grid (csrc/common/emu.h). The __global__ wrapper and the launches are
// in dwconv_cuda.cuh.
//
// Tiling. A block owns (sample n, a band of output rows, a chunk of CT channel vectors); its
// threads are CT lanes (threadIdx.x: one VEC-channel vector each, VEC * sizeof(T) = 16 bytes)
// times RW workers (threadIdx.y) that stride over the band's (row, strip) items. An item is TW
// consecutive output pixels of one row: the thread walks the (TW-1)*S + K input columns of each
// of the K input rows once, keeping TW accumulators per channel in registers (register reuse
// along W; reuse across rows comes from L1/L2, so each input byte is read from DRAM about once).
// Weights and bias of the chunk are staged in shared memory as float32 [k*k][CT*VEC].
// Epilogue: bias, act, one 16-byte store per pixel, and the running per-channel sum of the
// activated values for the pool. Pool: each block reduces its workers' sums in shared memory in
// a fixed order and writes one partial per (n, band, c); pool_finalize (common/cuda_pool.h) sums
// the bands in order (deterministic, no atomics). With one band per sample the block writes the
// mean directly.
//
// Paths. Fast: k in {3, 5}, C % VEC == 0, x 16-byte aligned; K, S, VEC, TW compile-time.
// Generic: any odd k, any C, any alignment: K = 0 (runtime k and stride), VEC = 1, TW = 1,
// weights read through the read-only cache. Offsets are 64-bit throughout.
//
// Status: compiles in CI; NOT YET RUN ON A GPU. The body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../common/act.h"
#include "../common/cuda_kernel.h"
#include "dwconv.h"

namespace effnet {

struct DwPlan {
  DwShape s;
  int64_t chunks;         // channel chunks of CT vectors
  int64_t bands;          // output-row bands per sample
  int64_t rows_per_band;
  int CT, RW;             // block = CT x RW threads
  int vec;                // channels per vector (1 on the generic path)
  bool fast;              // compile-time k/stride path
  float pool_scale;       // 1/(Ho*Wo) when bands == 1 (pool written directly), else 1
};

// The launch plan for x (elements of `elem_size` bytes) on a GPU with `sm_count` SMs.
// `allow_fast` = false forces the generic path (tests).
inline DwPlan make_dw_plan(const DwShape& s, size_t elem_size, const void* x, int sm_count,
                           bool allow_fast = true) {
  DwPlan p{};
  p.s = s;
  const int vec = static_cast<int>(16 / elem_size);
  p.fast = allow_fast && (s.k == 3 || s.k == 5) && s.C % vec == 0 && is_aligned(x, 16);
  p.vec = p.fast ? vec : 1;
  const int64_t cv = s.C / p.vec;
  p.CT = static_cast<int>(std::min<int64_t>(cv, 32));
  p.RW = std::max(1, 256 / p.CT);
  p.chunks = (cv + p.CT - 1) / p.CT;
  // Enough blocks to fill the GPU a few times over; bands split a sample's rows when N is small.
  p.rows_per_band = dw_rows_per_band(s.N, s.Ho, p.chunks, sm_count, s.Ho);
  p.bands = (s.Ho + p.rows_per_band - 1) / p.rows_per_band;
  p.pool_scale = p.bands == 1 ? 1.0f / static_cast<float>(s.Ho * s.Wo) : 1.0f;
  TORCH_CHECK(s.N * p.bands * p.chunks < (1LL << 31), "effnet::dwconv_bias_act: too many blocks");
  return p;
}

// Pointers of one launch.
template <typename T>
struct DwArgs {
  const T* x;
  const T* w;     // (C, k*k)
  const T* bias;  // (C,)
  T* y;
  float* pool_out;  // (N, bands, C) partials, (N, C) when bands == 1, or nullptr
};

// One compile-time variant of the kernel.
template <int K_, int S_, int VEC_, int TW_, Act A_>
struct DwCfg {
  static constexpr int K = K_, S = S_, VEC = VEC_, TW = TW_;
  static constexpr Act A = A_;
};

// Calls f(DwCfg<...>{}) for the variant that plan p and `act` select (the CUDA launch and the
// CPU emulation share this choice).
template <typename T, typename F>
void dispatch_dwconv(const DwPlan& p, Act act, F&& f) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int TW = 4;
  dispatch_act(act, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    if (!p.fast) {
      f(DwCfg<0, 0, 1, 1, A>{});
    } else if (p.s.k == 3 && p.s.stride == 1) {
      f(DwCfg<3, 1, VEC, TW, A>{});
    } else if (p.s.k == 3) {
      f(DwCfg<3, 2, VEC, TW, A>{});
    } else if (p.s.stride == 1) {
      f(DwCfg<5, 1, VEC, TW, A>{});
    } else {
      f(DwCfg<5, 2, VEC, TW, A>{});
    }
  });
}

// Shared memory of one block in bytes: staged weights and bias (fast path), workers' pool sums.
template <int K, int VEC>
inline size_t dw_smem_bytes(const DwPlan& p, bool pool) {
  const int CTV = p.CT * VEC;
  return sizeof(float) * ((K > 0 ? (K * K + 1) * CTV : 0) + (pool ? p.RW * CTV : 0));
}

template <typename T, int K, int S, int VEC, int TW, Act A>
struct DwBlock {
  using P = Pack<T, VEC>;

  using Coords = DwCoords;
  static C10_HOST_DEVICE C10_ALWAYS_INLINE Coords coords(const DwPlan& p, int64_t bid) {
    return dw_coords(bid, p.chunks, p.bands, p.CT * VEC);
  }

  struct Smem {
    float* w_s;  // [KK][CTV]   (fast path)
    float* b_s;  // [CTV]       (fast path)
    float* red;  // [RW][CTV]   (pool)
  };
  static C10_HOST_DEVICE C10_ALWAYS_INLINE Smem carve(const DwPlan& p, float* smem) {
    const int CTV = p.CT * VEC;
    const int KK = K * K;
    Smem m;
    m.w_s = smem;
    m.b_s = smem + (K > 0 ? KK * CTV : 0);
    m.red = m.b_s + (K > 0 ? CTV : 0);
    return m;
  }

  // Phase 1 (fast path only; all threads, tid in [0, nthreads)): stage the chunk's weights and
  // bias as float32.
  static C10_HOST_DEVICE void stage(const DwPlan& p, const DwArgs<T>& a, const Smem& m,
                                    int64_t bid, int tid, int nthreads) {
    if constexpr (K > 0) {
      const DwShape& s = p.s;
      constexpr int KK = K * K;
      const int CTV = p.CT * VEC;
      const int64_t c_base = coords(p, bid).c_base;
      for (int i = tid; i < CTV * KK; i += nthreads) {
        const int cl = i / KK, t = i % KK;
        const int64_t c = c_base + cl;
        m.w_s[t * CTV + cl] = c < s.C ? static_cast<float>(a.w[c * KK + t]) : 0.0f;
      }
      for (int i = tid; i < CTV; i += nthreads) {
        const int64_t c = c_base + i;
        m.b_s[i] = c < s.C ? static_cast<float>(a.bias[c]) : 0.0f;
      }
    }
  }

  // Phase 2 (thread (lane, worker) of a CT x RW block): this worker's items, stored; then, with
  // a pool, the worker's per-channel sums into shared memory.
  static C10_HOST_DEVICE void compute(const DwPlan& p, const DwArgs<T>& a, const Smem& m,
                                      int64_t bid, int lane, int worker) {
    const DwShape& s = p.s;
    const Coords cc = coords(p, bid);
    const int k = K > 0 ? K : s.k;
    const int st = S > 0 ? S : s.stride;
    const int KK = k * k;
    const int CTV = p.CT * VEC;
    const int cl0 = lane * VEC;  // first channel of this lane within the chunk
    const int64_t c0 = cc.c_base + cl0;
    const bool active = c0 < s.C;  // C % VEC == 0 on the vector path
    float psum[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) psum[v] = 0.0f;

    const int64_t ho_begin = cc.band * p.rows_per_band;
    const int64_t ho_end =
        ho_begin + p.rows_per_band < s.Ho ? ho_begin + p.rows_per_band : s.Ho;
    const int64_t strips = (s.Wo + TW - 1) / TW;
    const int64_t items = (ho_end - ho_begin) * strips;
    const T* xn = a.x + cc.n * s.H * s.W * s.C;

    for (int64_t it = worker; active && it < items; it += p.RW) {
      const int64_t ho = ho_begin + it / strips;
      const int64_t wo0 = (it % strips) * TW;
      const int64_t hbase = ho * st - s.pad_top;
      const int64_t wbase = wo0 * st - s.pad_left;
      float acc[TW][VEC];
#pragma unroll
      for (int j = 0; j < TW; ++j) {
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          if constexpr (K > 0) {
            acc[j][v] = m.b_s[cl0 + v];
          } else {
            acc[j][v] = static_cast<float>(ldg(a.bias + c0 + v));
          }
        }
      }
      if constexpr (K > 0) {
        constexpr int NCOL = (TW - 1) * S + K;
#pragma unroll
        for (int kh = 0; kh < K; ++kh) {
          const int64_t hi = hbase + kh;
          if (hi < 0 || hi >= s.H) continue;
          float wk[K][VEC];
#pragma unroll
          for (int kw = 0; kw < K; ++kw) {
#pragma unroll
            for (int v = 0; v < VEC; ++v) wk[kw][v] = m.w_s[(kh * K + kw) * CTV + cl0 + v];
          }
          const T* xrow = xn + hi * s.W * s.C + c0;
#pragma unroll
          for (int ic = 0; ic < NCOL; ++ic) {
            const int64_t wi = wbase + ic;
            if (wi < 0 || wi >= s.W) continue;
            const P xv = *reinterpret_cast<const P*>(xrow + wi * s.C);
#pragma unroll
            for (int j = 0; j < TW; ++j) {
              const int kw = ic - j * S;
              if (kw < 0 || kw >= K) continue;  // resolved at compile time
#pragma unroll
              for (int v = 0; v < VEC; ++v) {
                acc[j][v] += wk[kw][v] * static_cast<float>(xv.v[v]);
              }
            }
          }
        }
      } else {
        for (int kh = 0; kh < k; ++kh) {
          const int64_t hi = hbase + kh;
          if (hi < 0 || hi >= s.H) continue;
          const T* xrow = xn + hi * s.W * s.C + c0;
          for (int kw = 0; kw < k; ++kw) {
            const int64_t wi = wbase + kw;
            if (wi < 0 || wi >= s.W) continue;
            const float wv = static_cast<float>(ldg(a.w + c0 * KK + kh * k + kw));
            acc[0][0] += wv * static_cast<float>(xrow[wi * s.C]);
          }
        }
      }
      T* yrow = a.y + ((cc.n * s.Ho + ho) * s.Wo) * s.C + c0;
#pragma unroll
      for (int j = 0; j < TW; ++j) {
        if (wo0 + j >= s.Wo) break;
        P out;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const float val = apply_act<A>(acc[j][v]);
          out.v[v] = static_cast<T>(val);
          psum[v] += val;
        }
        *reinterpret_cast<P*>(yrow + (wo0 + j) * s.C) = out;
      }
    }
    if (a.pool_out != nullptr) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) m.red[worker * CTV + cl0 + v] = psum[v];
    }
  }

  // Phase 3 (all threads, after a barrier; only with a pool): sum the workers' partials in
  // worker order and write one value per (n, band, c).
  static C10_HOST_DEVICE void reduce(const DwPlan& p, const DwArgs<T>& a, const Smem& m,
                                     int64_t bid, int tid, int nthreads) {
    const DwShape& s = p.s;
    const Coords cc = coords(p, bid);
    const int CTV = p.CT * VEC;
    for (int i = tid; i < CTV; i += nthreads) {
      const int64_t c = cc.c_base + i;
      if (c >= s.C) continue;
      float sum = 0.0f;
      for (int r = 0; r < p.RW; ++r) sum += m.red[r * CTV + i];
      a.pool_out[(cc.n * p.bands + cc.band) * s.C + c] = sum * p.pool_scale;
    }
  }
};

}  // namespace effnet
