// CUDA kernel of effnet::dwconv_bias_act (contract in dwconv.h), shared by the per-dtype .cu
// files that instantiate it (split so a 2-core build compiles them in parallel).
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
// a fixed order and writes one partial per (n, band, c); a second kernel sums the bands in order
// (deterministic, no atomics). With one band per sample the block writes the mean directly.
//
// Paths. Fast: k in {3, 5}, C % VEC == 0, x 16-byte aligned; K, S, VEC, TW compile-time.
// Generic: any odd k, any C, any alignment: K = 0 (runtime k and stride), VEC = 1, TW = 1,
// weights read through the read-only cache. Offsets are 64-bit throughout.
//
// Status: compiles in CI; NOT YET RUN ON A GPU (tests: tests/test_dwconv.py -m cuda, run by
// benchmarks/gpu_check.sh).
#pragma once

#include "../common/cuda_utils.cuh"
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

template <typename T, int K, int S, int VEC, int TW, Act A>
__global__ void __launch_bounds__(256, 2)  // <= 128 registers: 16 warps/SM at least
    dwconv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  T* __restrict__ y, float* __restrict__ pool_out, const DwPlan p) {
  using P = Pack<T, VEC>;
  extern __shared__ float smem[];
  const DwShape& s = p.s;
  const int k = K > 0 ? K : s.k;
  const int st = S > 0 ? S : s.stride;
  const int KK = k * k;
  const int CTV = p.CT * VEC;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;

  int64_t bid = blockIdx.x;
  const int64_t chunk = bid % p.chunks;
  bid /= p.chunks;
  const int64_t band = bid % p.bands;
  const int64_t n = bid / p.bands;
  const int64_t c_base = chunk * CTV;

  float* w_s = smem;                               // [KK][CTV]   (fast path)
  float* b_s = smem + (K > 0 ? KK * CTV : 0);      // [CTV]       (fast path)
  float* red = b_s + (K > 0 ? CTV : 0);            // [RW][CTV]   (pool)
  if constexpr (K > 0) {
    for (int i = tid; i < CTV * KK; i += nthreads) {
      const int cl = i / KK, t = i % KK;
      const int64_t c = c_base + cl;
      w_s[t * CTV + cl] = c < s.C ? static_cast<float>(w[c * KK + t]) : 0.0f;
    }
    for (int i = tid; i < CTV; i += nthreads) {
      const int64_t c = c_base + i;
      b_s[i] = c < s.C ? static_cast<float>(bias[c]) : 0.0f;
    }
    __syncthreads();
  }

  const int cl0 = threadIdx.x * VEC;  // first channel of this lane within the chunk
  const int64_t c0 = c_base + cl0;
  const bool active = c0 < s.C;       // C % VEC == 0 on the vector path
  float psum[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) psum[v] = 0.0f;

  const int64_t ho_begin = band * p.rows_per_band;
  const int64_t ho_end = ho_begin + p.rows_per_band < s.Ho ? ho_begin + p.rows_per_band : s.Ho;
  const int64_t strips = (s.Wo + TW - 1) / TW;
  const int64_t items = (ho_end - ho_begin) * strips;
  const T* xn = x + n * s.H * s.W * s.C;

  for (int64_t it = threadIdx.y; active && it < items; it += blockDim.y) {
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
          acc[j][v] = b_s[cl0 + v];
        } else {
          acc[j][v] = static_cast<float>(__ldg(bias + c0 + v));
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
          for (int v = 0; v < VEC; ++v) wk[kw][v] = w_s[(kh * K + kw) * CTV + cl0 + v];
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
            for (int v = 0; v < VEC; ++v) acc[j][v] += wk[kw][v] * static_cast<float>(xv.v[v]);
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
          const float wv = static_cast<float>(__ldg(w + c0 * KK + kh * k + kw));
          acc[0][0] += wv * static_cast<float>(xrow[wi * s.C]);
        }
      }
    }
    T* yrow = y + ((n * s.Ho + ho) * s.Wo) * s.C + c0;
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

  if (pool_out != nullptr) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) red[threadIdx.y * CTV + cl0 + v] = psum[v];
    __syncthreads();
    for (int i = tid; i < CTV; i += nthreads) {
      const int64_t c = c_base + i;
      if (c >= s.C) continue;
      float sum = 0.0f;
      for (int r = 0; r < static_cast<int>(blockDim.y); ++r) sum += red[r * CTV + i];
      pool_out[(n * p.bands + band) * s.C + c] = sum * p.pool_scale;
    }
  }
}

template <typename T, int K, int S, int VEC, int TW, Act A>
void launch_dwconv_kernel(const DwPlan& p, const T* x, const T* w, const T* b, T* y,
                          float* pool_out, cudaStream_t stream) {
  const int CTV = p.CT * VEC;
  const size_t smem =
      sizeof(float) * ((K > 0 ? (K * K + 1) * CTV : 0) + (pool_out ? p.RW * CTV : 0));
  const int64_t blocks = p.s.N * p.bands * p.chunks;
  dwconv_kernel<T, K, S, VEC, TW, A><<<static_cast<unsigned int>(blocks), dim3(p.CT, p.RW), smem,
                                       stream>>>(x, w, b, y, pool_out, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// All (k, stride, act) variants for one dtype; defined once per dtype in dwconv_cuda_<t>.cu.
template <typename T>
void launch_dwconv(const DwPlan& p, Act act, const T* x, const T* w, const T* b, T* y,
                   float* pool_out, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int TW = 4;
  dispatch_act(act, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    if (!p.fast) {
      launch_dwconv_kernel<T, 0, 0, 1, 1, A>(p, x, w, b, y, pool_out, stream);
    } else if (p.s.k == 3 && p.s.stride == 1) {
      launch_dwconv_kernel<T, 3, 1, VEC, TW, A>(p, x, w, b, y, pool_out, stream);
    } else if (p.s.k == 3) {
      launch_dwconv_kernel<T, 3, 2, VEC, TW, A>(p, x, w, b, y, pool_out, stream);
    } else if (p.s.stride == 1) {
      launch_dwconv_kernel<T, 5, 1, VEC, TW, A>(p, x, w, b, y, pool_out, stream);
    } else {
      launch_dwconv_kernel<T, 5, 2, VEC, TW, A>(p, x, w, b, y, pool_out, stream);
    }
  });
}

}  // namespace effnet
