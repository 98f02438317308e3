// The kernel body of the CUDA effnet::dwconv_int8 (contract: dwconv_int8.h), written as three
// __host__ __device__ phases (stage / compute / reduce) so the same code also runs in a CPU
// emulation of the grid (every device intrinsic used here has an exact host twin below). The
// __global__ wrapper and the launches are in dwconv_int8_cuda.cuh.
//
// Tiling (like the float dwconv_cuda.cuh). A block owns (sample n, a band of output rows, a chunk
// of CT channel vectors); threadIdx.x is the lane (one vector of VEC int8 channels: VEC = 16 is
// one 16-byte load/store, VEC = 8 one 8-byte load/store), threadIdx.y one of RW workers striding
// over the band's items. An item is TW consecutive output pixels of one row (TW = 2..4, per
// (k, stride, VEC): tw_for). Per kernel row the thread loads the NCOL = (TW-1)*S + K input
// vectors once (register reuse along W) into TW x VEC int32 accumulators; reuse across rows comes
// from L1/L2, so each input byte crosses DRAM about once.
//
// Inner product with dp4a. Per 4-channel word q of the loaded vectors, groups of 4 columns are
// byte-transposed (8 PRMT) into words holding one channel at 4 consecutive columns; a row of
// output j's window (columns j*S .. j*S+k-1) is then a byte funnel (1 PRMT, none when aligned) of
// two such words, and its k taps one dp4a (k = 3) or two (k = 5) against the channel's row of
// weights, pre-packed in shared memory as 4 int8 taps per word (zero past k).
//
// Zero point. Out-of-image taps read a vector of in_zp bytes instead of memory, so every tap
// contributes x * w and acc = sum x * w - in_zp * sum_t w[c, t]: the second term is a per-channel
// constant (staged once per block) that initialises the accumulator, together with the bias
// 0x4B400000 that makes (float)acc one add (below). Exact in int32: |acc| <= k*k * 255 * 128,
// < 2^22 for k <= 5 (the fast paths), < 2^25 for k <= 31 (the generic path, which subtracts
// in_zp per tap and skips out-of-image taps instead).
//
// Shared memory (int32 words): corr[CTV], scale[CTV], bias[CTV], red[RW][CTV] (pool partials,
// with return_pool), wts[K][(K+3)/4][CTV] (packed taps). The per-channel arrays are laid out
// [word][lane][4], so a warp's 16-byte shared accesses are consecutive (no bank conflicts). At
// most (3 + 5*2)*512 + 4096 words = 43 KB per block (k = 5, VEC = 16, CT = 32), under the 48 KB
// that needs no opt-in.
//
// Epilogue, per value, all float32 with explicit roundings (no FMA contraction: matches the
// reference bit for bit except where SiLU's exp differs from PyTorch's in the last ulp):
// f = (float)acc (as_float(biased acc) - 1.5*2^23), v = f*scale + bias, a = act(v), pool += a,
// t = a*inv + 0.5 clamped to [-128 - zp, 127 - zp], then floor(t) + zp as t + (1.5*2^23 + zp)
// rounded toward -infinity, whose low byte is the int8 result (Requant); bytes packed by PRMT.
//
// Generic path (K = 0): any odd k, any C, any alignment: VEC = 1, TW = 1, runtime k and stride,
// weights/scale/bias through the read-only cache, out-of-image taps skipped.
//
// Status: compiles in CI; NOT YET RUN ON A GPU. This body is emulated on the CPU by
// tests/test_cuda_emulation.py.
#pragma once

#include <vector_types.h>  // int2, int4, float4

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/act.h"
#include "../common/cuda_kernel.h"
#include "dwconv_int8.h"

namespace effnet::qdw {

struct Plan {
  QDwShape s;
  int64_t chunks;         // channel chunks of CT vectors
  int64_t bands;          // output-row bands per sample
  int64_t rows_per_band;
  int CT, RW;             // block = CT x RW threads
  int vec;                // channels per lane: 16, 8 (fast paths) or 1 (generic)
  float pool_scale;       // 1/(Ho*Wo) when bands == 1 (pool written directly), else 1
};

// The launch plan. `vec_cap` (16 normally) lets a test force the narrower paths.
inline Plan make_plan(const QDwShape& s, const void* x, const void* y, int sm_count,
                      int vec_cap = 16) {
  Plan p{};
  p.s = s;
  const bool fast_k = s.k == 3 || s.k == 5;
  if (fast_k && vec_cap >= 16 && s.C % 16 == 0 && is_aligned(x, 16) && is_aligned(y, 16)) {
    p.vec = 16;
  } else if (fast_k && vec_cap >= 8 && s.C % 8 == 0 && is_aligned(x, 8) && is_aligned(y, 8)) {
    p.vec = 8;
  } else {
    p.vec = 1;
  }
  const int64_t cv = s.C / p.vec;
  // Lanes per block: at most 32, spread evenly over the chunks (C = 1152, VEC = 16: 3 x 24).
  const int64_t chunks32 = (cv + 31) / 32;
  p.CT = static_cast<int>((cv + chunks32 - 1) / chunks32);
  p.RW = std::max(1, 256 / p.CT);
  p.chunks = (cv + p.CT - 1) / p.CT;
  // Enough blocks to fill the GPU a few times over; bands split a sample's rows when N is small.
  // The kernel counts a band's items (rows x strips of >= 1 pixel) in 32 bits and steps the
  // counter by up to a block's size (<= 1024) past the last item: keep that headroom.
  p.rows_per_band = dw_rows_per_band(s.N, s.Ho, p.chunks, sm_count, (INT32_MAX - 1024) / s.Wo);
  p.bands = (s.Ho + p.rows_per_band - 1) / p.rows_per_band;
  p.pool_scale = p.bands == 1 ? 1.0f / static_cast<float>(s.Ho * s.Wo) : 1.0f;
  return p;
}

// Shared memory of one block, in 4-byte words.
inline int64_t smem_words(const Plan& p, bool pool) {
  const int64_t ctv = static_cast<int64_t>(p.CT) * p.vec;
  // Fast path: corr, scale, bias [ctv] and the packed weights [k][(k+3)/4][ctv].
  const int64_t fast = p.vec > 1 ? (3 + static_cast<int64_t>(p.s.k) * ((p.s.k + 3) / 4)) * ctv : 0;
  return fast + (pool ? p.RW * ctv : 0);
}

// ---- float / int helpers: the device intrinsic, or its exact host twin (ldg: cuda_kernel.h) ---

C10_HOST_DEVICE C10_ALWAYS_INLINE float as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t as_int(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
#endif
}

C10_HOST_DEVICE C10_ALWAYS_INLINE float mul_rn(float a, float b) {  // never contracted to FMA
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

C10_HOST_DEVICE C10_ALWAYS_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

C10_HOST_DEVICE C10_ALWAYS_INLINE float div_rn(float a, float b) {  // IEEE even under fast math
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// a + b rounded toward -infinity (host: round to nearest, then step down if that rounded up;
// exact for the operands used here, whose double sum is exact).
C10_HOST_DEVICE C10_ALWAYS_INLINE float add_rd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rd(a, b);
#else
  float r = a + b;
  if (static_cast<double>(r) > static_cast<double>(a) + static_cast<double>(b)) {
    r = std::nextafter(r, -INFINITY);
  }
  return r;
#endif
}

C10_HOST_DEVICE C10_ALWAYS_INLINE float int_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int2float_rn(i);
#else
  return static_cast<float>(i);
#endif
}

constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: integers in (-2^22, 2^22) sit in its ulp-1 bits
constexpr int32_t kMagicBits = 0x4B400000;

// The bits of (float)i + kMagic are kMagicBits + i for |i| < 2^22: the fast path keeps its
// accumulators biased by kMagicBits, so (float)acc is one add: as_float(acc) - kMagic.
C10_HOST_DEVICE C10_ALWAYS_INLINE float biased_int_to_float(int32_t biased) {
  return as_float(biased) - kMagic;
}

// Requantisation of a with zero point zp, for zp_lo = -128 - zp, zp_hi = 127 - zp and
// magic_zp = kMagic + zp. Returns a float whose bits minus kMagicBits are
//   clamp(floor(a * inv + 0.5) + zp, -128, 127)
// (so its low byte is the int8 result): t = a*inv + 0.5 rounded as in the reference, clamped to
// [zp_lo, zp_hi] (integers, so clamping before the floor is the same as after), then
// floor(t) + zp as an add of kMagic + zp rounded toward -infinity (exact: ulp 1 there).
// NaN ends at -128.
struct Requant {
  float inv, lo, hi, magic_zp;
  C10_HOST_DEVICE Requant(float inv_scale, int32_t zp)
      : inv(inv_scale),
        lo(static_cast<float>(-128 - zp)),
        hi(static_cast<float>(127 - zp)),
        magic_zp(kMagic + static_cast<float>(zp)) {}
  C10_HOST_DEVICE C10_ALWAYS_INLINE float bits(float a) const {
    const float t = fminf(fmaxf(add_rn(mul_rn(a, inv), 0.5f), lo), hi);
    return add_rd(t, magic_zp);
  }
  C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t operator()(float a) const {
    return as_int(bits(a)) - kMagicBits;
  }
};

// __byte_perm: byte n of the result is byte ((s >> 4n) & 7) of the 8 bytes (y:x).
C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t byte_perm(int32_t x, int32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return static_cast<int32_t>(__byte_perm(static_cast<uint32_t>(x), static_cast<uint32_t>(y), s));
#else
  const uint64_t v = (static_cast<uint64_t>(static_cast<uint32_t>(y)) << 32) |
                     static_cast<uint32_t>(x);
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) {
    r |= static_cast<uint32_t>((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
  }
  return static_cast<int32_t>(r);
#endif
}

// c + sum_i a.byte_i * b.byte_i, bytes signed.
C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t dp4a(int32_t a, int32_t b, int32_t c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(a, b, c);
#else
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int32_t>(static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i))) *
         static_cast<int32_t>(static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i)));
  }
  return c;
#endif
}

// Bytes [sh, sh + 4) of the 8 bytes (hi:lo).
C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t funnel_bytes(int32_t lo, int32_t hi, int sh) {
  return sh == 0 ? lo : byte_perm(lo, hi, 0x3210u + 0x1111u * static_cast<uint32_t>(sh));
}

// 4x4 byte transpose: t[b].byte_i = x[i].byte_b (x[i]: 4 channels of column i; t[b]: channel b
// of 4 consecutive columns). Eight PRMTs.
C10_HOST_DEVICE C10_ALWAYS_INLINE void transpose4(const int32_t x[4], int32_t t[4]) {
  const int32_t a_lo = byte_perm(x[0], x[1], 0x5140u);  // x0.0 x1.0 x0.1 x1.1
  const int32_t a_hi = byte_perm(x[0], x[1], 0x7362u);  // x0.2 x1.2 x0.3 x1.3
  const int32_t b_lo = byte_perm(x[2], x[3], 0x5140u);
  const int32_t b_hi = byte_perm(x[2], x[3], 0x7362u);
  t[0] = byte_perm(a_lo, b_lo, 0x5410u);
  t[1] = byte_perm(a_lo, b_lo, 0x7632u);
  t[2] = byte_perm(a_hi, b_hi, 0x5410u);
  t[3] = byte_perm(a_hi, b_hi, 0x7632u);
}

// The low bytes of four words as one word.
C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t pack_low_bytes(int32_t b0, int32_t b1, int32_t b2,
                                                         int32_t b3) {
  return byte_perm(byte_perm(b0, b1, 0x0040u), byte_perm(b2, b3, 0x0040u), 0x5410u);
}

// exp(x) to ~1 ulp (Cephes' expf polynomial; the same as cpu::exp_vec), unaffected by
// --use_fast_math (which turns expf into the approximate __expf).
C10_HOST_DEVICE C10_ALWAYS_INLINE float exp_accurate(float x) {
  x = fminf(fmaxf(x, -87.0f), 88.0f);
  const float m = fmaf(x, 1.44269504088896341f, kMagic);  // kMagic + rint(x / ln 2)
  const float n = m - kMagic;
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p, mul_rn(r, r), r) + 1.0f;
  return p * as_float((as_int(m) - kMagicBits + 127) << 23);  // * 2^n, n in [-126, 127]
}

// act(v) in float32; SiLU as v / (1 + exp(-v)) with an accurate exp and an IEEE division (what
// PyTorch's CPU F.silu computes), the others exactly.
template <Act A>
C10_HOST_DEVICE C10_ALWAYS_INLINE float qact(float v) {
  if constexpr (A == Act::SiLU) {
    return div_rn(v, 1.0f + exp_accurate(-v));
  } else {
    return apply_act<A>(v);
  }
}

// The vector type of VEC int8 channels (4-byte words .x, .y, ...).
template <int VEC>
struct XVec;
template <>
struct XVec<16> {
  using T = int4;
  static C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t word(const T& v, int q) {
    return q == 0 ? v.x : (q == 1 ? v.y : (q == 2 ? v.z : v.w));
  }
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void set(T& v, int q, int32_t w) {
    if (q == 0) v.x = w; else if (q == 1) v.y = w; else if (q == 2) v.z = w; else v.w = w;
  }
  static C10_HOST_DEVICE C10_ALWAYS_INLINE T splat(int32_t w) { return T{w, w, w, w}; }
};
template <>
struct XVec<8> {
  using T = int2;
  static C10_HOST_DEVICE C10_ALWAYS_INLINE int32_t word(const T& v, int q) {
    return q == 0 ? v.x : v.y;
  }
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void set(T& v, int q, int32_t w) {
    if (q == 0) v.x = w; else v.y = w;
  }
  static C10_HOST_DEVICE C10_ALWAYS_INLINE T splat(int32_t w) { return T{w, w}; }
};

// Output pixels per thread along W. Chosen for the fewest instructions per output (transposes
// and funnels amortised over the item) among the TW that fit in 128 registers without spilling
// (ptxas -v, sm_90: see dwconv_int8_cuda.cuh). QDW_TW overrides it (experiments).
constexpr int tw_for(int K, int S, int VEC) {
#ifdef QDW_TW
  if (K > 0) return QDW_TW;
#endif
  if (K == 0) return 1;
  if (VEC == 16) return (K == 3) == (S == 2) ? 3 : 2;  // K3S2, K5S1: 3; K3S1, K5S2: 2
  return 4;
}

// Pointers and scalars of one launch.
struct Args {
  const int8_t* x;
  const int8_t* w;      // (C, k*k)
  const float* scale;   // (C,)
  const float* bias;    // (C,)
  int8_t* y;
  float* pool_out;      // (N, bands, C) partials, (N, C) when bands == 1, or nullptr
};

template <int K, int S, int VEC, Act A>
struct Block {
  static constexpr bool kFast = K > 0;
  static constexpr int TW = tw_for(K, S, VEC);
  static constexpr int WORDS = VEC >= 4 ? VEC / 4 : 1;
  static constexpr int P = K > 0 ? (K + 3) / 4 : 0;  // packed weight words per (channel, row)

  using Coords = DwCoords;
  static C10_HOST_DEVICE C10_ALWAYS_INLINE Coords coords(const Plan& p, int64_t bid) {
    return dw_coords(bid, p.chunks, p.bands, p.CT * VEC);
  }

  // Index of channel (lane, v) of the chunk in a per-channel shared array: [word][lane][4].
  static C10_HOST_DEVICE C10_ALWAYS_INLINE int lin(const Plan& p, int lane, int v) {
    if constexpr (VEC == 1) {
      return lane;
    } else {
      return ((v / 4) * p.CT + lane) * 4 + v % 4;
    }
  }

  struct Smem {
    int32_t* corr;
    float* scale;
    float* bias;
    float* red;
    int32_t* wts;
  };
  static C10_HOST_DEVICE C10_ALWAYS_INLINE Smem carve(const Plan& p, int32_t* base, bool pool) {
    const int ctv = p.CT * VEC;
    Smem m;
    int32_t* q = base;
    m.corr = q;
    m.scale = reinterpret_cast<float*>(q + (kFast ? ctv : 0));
    m.bias = reinterpret_cast<float*>(q + (kFast ? 2 * ctv : 0));
    q += kFast ? 3 * ctv : 0;
    m.red = reinterpret_cast<float*>(q);
    q += pool ? p.RW * ctv : 0;
    m.wts = q;
    return m;
  }

  // Phase 1 (all threads of the block, tid in [0, nthreads)): stage the chunk's weights, the
  // zero-point correction, scale and bias; zero the pool partials.
  static C10_HOST_DEVICE void stage(const Plan& p, const Args& a, const Smem& m, int64_t bid,
                                    int tid, int nthreads) {
    const QDwShape& s = p.s;
    const Coords cc = coords(p, bid);
    const int ctv = p.CT * VEC;
    if constexpr (kFast) {
      constexpr int KK = K * K;
      // wts word (kh, part, lane, v): taps kw = 4*part .. 4*part+3 of row kh of channel v of the
      // lane, one int8 each (0 past k), at [kh][part][word v/4][lane][v%4].
      for (int i = tid; i < ctv * K * P; i += nthreads) {
        const int cl = i / (K * P), r = i % (K * P);
        const int kh = r / P, part = r % P;
        const int64_t c = cc.c_base + cl;
        uint32_t word = 0;
        if (c < s.C) {
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int kw = 4 * part + b;
            if (kw < K) {
              word |= static_cast<uint32_t>(static_cast<uint8_t>(a.w[c * KK + kh * K + kw]))
                      << (8 * b);
            }
          }
        }
        const int lane = cl / VEC, v = cl % VEC;
        m.wts[(((kh * P + part) * WORDS + v / 4) * p.CT + lane) * 4 + v % 4] =
            static_cast<int32_t>(word);
      }
      for (int i = tid; i < ctv; i += nthreads) {
        const int64_t c = cc.c_base + i;
        const int j = lin(p, i / VEC, i % VEC);
        int32_t wsum = 0;
        if (c < s.C) {
          for (int t = 0; t < KK; ++t) wsum += a.w[c * KK + t];
        }
        m.corr[j] = kMagicBits - s.in_zp * wsum;  // accumulators start biased (see top)
        m.scale[j] = c < s.C ? a.scale[c] : 0.0f;
        m.bias[j] = c < s.C ? a.bias[c] : 0.0f;
      }
    }
    if (a.pool_out != nullptr) {
      for (int i = tid; i < p.RW * ctv; i += nthreads) m.red[i] = 0.0f;
    }
  }

  // Phase 2 (thread (lane, worker)): the items of this worker, each stored and added to the
  // worker's pool partials.
  static C10_HOST_DEVICE void compute(const Plan& p, const Args& a, const Smem& m, int64_t bid,
                                      int lane, int worker) {
    const QDwShape& s = p.s;
    const Coords cc = coords(p, bid);
    const int64_t c0 = cc.c_base + static_cast<int64_t>(lane) * VEC;
    if (c0 >= s.C) return;  // C % VEC == 0 on the vector paths: a lane is all in or all out
    const int64_t ho_begin = cc.band * p.rows_per_band;
    const int64_t ho_end = std::min<int64_t>(ho_begin + p.rows_per_band, s.Ho);
    // Items of the band in 32 bits (make_plan keeps rows_per_band * strips < 2^31).
    const int strips = static_cast<int>((s.Wo + TW - 1) / TW);
    const int items = static_cast<int>(ho_end - ho_begin) * strips;
    const int8_t* xn = a.x + cc.n * s.H * s.W * s.C + c0;
    const int st = S > 0 ? S : s.stride;
    for (int it = worker; it < items; it += p.RW) {
      const int64_t ho = ho_begin + it / strips;
      const int64_t wo0 = static_cast<int64_t>(it % strips) * TW;
      const int64_t hbase = ho * st - s.pad_top;
      const int64_t wbase = wo0 * st - s.pad_left;
      int8_t* yp = a.y + ((cc.n * s.Ho + ho) * s.Wo + wo0) * s.C + c0;
      float* red = m.red + static_cast<int64_t>(worker) * p.CT * VEC;
      if constexpr (kFast) {
        fast_item(p, m, xn, yp, red, hbase, wbase, s.Wo - wo0, lane, a.pool_out != nullptr);
      } else {
        generic_item(p, a, xn, yp, red, hbase, wbase, c0, lane);
      }
    }
  }

  // One item on the fast path. Per kernel row: load the row's NCOL input vectors (in_zp
  // splats outside the image); per 4-channel word q, transpose them by 4x4 bytes into per-channel
  // words of 4 consecutive columns; output j's taps of that row are then one or two dp4a of a
  // byte-funnel of those words with the packed weights.
  static C10_HOST_DEVICE C10_ALWAYS_INLINE void fast_item(const Plan& p, const Smem& m,
                                                          const int8_t* xn, int8_t* yp,
                                                          float* red, int64_t hbase,
                                                          int64_t wbase, int64_t wo_left,
                                                          int lane, bool pool) {
    using XV = XVec<VEC>;
    using V = typename XV::T;
    constexpr int NCOL = (TW - 1) * S + K;
    constexpr int G = (NCOL + 3) / 4;  // groups of 4 columns
    const QDwShape& s = p.s;
    int32_t acc[TW][VEC];
#pragma unroll
    for (int q = 0; q < WORDS; ++q) {
      const int4 corr = *reinterpret_cast<const int4*>(m.corr + (q * p.CT + lane) * 4);
#pragma unroll
      for (int j = 0; j < TW; ++j) {
        acc[j][4 * q + 0] = corr.x;
        acc[j][4 * q + 1] = corr.y;
        acc[j][4 * q + 2] = corr.z;
        acc[j][4 * q + 3] = corr.w;
      }
    }
    const int32_t zp4 = static_cast<int32_t>(static_cast<uint8_t>(s.in_zp) * 0x01010101u);
    // Rows one at a time (not unrolled): only one row's NCOL vectors are live.
#pragma unroll 1
    for (int kh = 0; kh < K; ++kh) {
      const int64_t hi = hbase + kh;
      const bool row_ok = hi >= 0 && hi < s.H;
      const int8_t* xp = xn + (hi * s.W + wbase) * s.C;  // column wbase of row hi
      V xr[NCOL];
#pragma unroll
      for (int ic = 0; ic < NCOL; ++ic) {
        const int64_t wi = wbase + ic;
        if (row_ok && wi >= 0 && wi < s.W) {
          xr[ic] = ldg(reinterpret_cast<const V*>(xp));
        } else {
          xr[ic] = XV::splat(zp4);  // out of the image: x = in_zp, real 0
        }
        xp += s.C;
      }
      const int32_t* wrow = m.wts + kh * (P * WORDS * p.CT * 4);
#pragma unroll
      for (int q = 0; q < WORDS; ++q) {
        int32_t wp[P][4];
#pragma unroll
        for (int part = 0; part < P; ++part) {
          const int4 w4 =
              *reinterpret_cast<const int4*>(wrow + ((part * WORDS + q) * p.CT + lane) * 4);
          wp[part][0] = w4.x;
          wp[part][1] = w4.y;
          wp[part][2] = w4.z;
          wp[part][3] = w4.w;
        }
        int32_t t[G + 1][4];  // t[g][b]: channel 4q+b, columns 4g .. 4g+3; t[G] = 0
#pragma unroll
        for (int g = 0; g < G; ++g) {
          int32_t xw[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) xw[i] = 4 * g + i < NCOL ? XV::word(xr[4 * g + i], q) : 0;
          transpose4(xw, t[g]);
        }
#pragma unroll
        for (int b = 0; b < 4; ++b) t[G][b] = 0;
#pragma unroll
        for (int j = 0; j < TW; ++j) {
          const int o = j * S;  // first column of output j's window
#pragma unroll
          for (int part = 0; part < P; ++part) {
            const int g = o / 4 + part;  // < G by construction (window inside NCOL)
            const int g1 = g + 1 < G ? g + 1 : G;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
              const int32_t win = funnel_bytes(t[g][b], t[g1][b], o % 4);
              acc[j][4 * q + b] = dp4a(win, wp[part][b], acc[j][4 * q + b]);
            }
          }
        }
      }
    }
    // Epilogue: dequantise, act, pool, requantise, pack.
    const Requant rq(s.out_inv_scale, s.out_zp);
    V out[TW];
#pragma unroll
    for (int q = 0; q < WORDS; ++q) {
      const float4 sc = *reinterpret_cast<const float4*>(m.scale + (q * p.CT + lane) * 4);
      const float4 bi = *reinterpret_cast<const float4*>(m.bias + (q * p.CT + lane) * 4);
      const float scv[4] = {sc.x, sc.y, sc.z, sc.w};
      const float biv[4] = {bi.x, bi.y, bi.z, bi.w};
      float ps[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < TW; ++j) {
        int32_t qb[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const float f = biased_int_to_float(acc[j][4 * q + b]);  // exact: |acc| < 2^22
          const float v = qact<A>(add_rn(mul_rn(f, scv[b]), biv[b]));
          if (j < wo_left) ps[b] += v;
          qb[b] = as_int(rq.bits(v));  // low byte: the int8 result
        }
        XV::set(out[j], q, pack_low_bytes(qb[0], qb[1], qb[2], qb[3]));
      }
      if (pool) {
        float4* r = reinterpret_cast<float4*>(red + (q * p.CT + lane) * 4);
        float4 cur = *r;
        cur.x += ps[0];
        cur.y += ps[1];
        cur.z += ps[2];
        cur.w += ps[3];
        *r = cur;
      }
    }
#pragma unroll
    for (int j = 0; j < TW; ++j) {
      if (j < wo_left) *reinterpret_cast<V*>(yp + j * s.C) = out[j];
    }
  }

  static C10_HOST_DEVICE C10_ALWAYS_INLINE void generic_item(const Plan& p, const Args& a,
                                                             const int8_t* xn, int8_t* yp,
                                                             float* red, int64_t hbase,
                                                             int64_t wbase, int64_t c0,
                                                             int lane) {
    const QDwShape& s = p.s;
    const int k = s.k;
    const int8_t* wc = a.w + c0 * k * k;
    int32_t acc = 0;
    for (int kh = 0; kh < k; ++kh) {
      const int64_t hi = hbase + kh;
      if (hi < 0 || hi >= s.H) continue;
      const int8_t* xrow = xn + hi * s.W * s.C;
      for (int kw = 0; kw < k; ++kw) {
        const int64_t wi = wbase + kw;
        if (wi < 0 || wi >= s.W) continue;
        acc += (static_cast<int32_t>(ldg(xrow + wi * s.C)) - s.in_zp) *
               static_cast<int32_t>(ldg(wc + kh * k + kw));
      }
    }
    const float v = qact<A>(add_rn(mul_rn(int_to_float(acc), ldg(a.scale + c0)),
                                   ldg(a.bias + c0)));
    if (a.pool_out != nullptr) red[lane] += v;
    *yp = static_cast<int8_t>(Requant(s.out_inv_scale, s.out_zp)(v));
  }

  // Phase 3 (all threads, after a barrier; only with a pool): sum the workers' partials in
  // worker order and write one value per (n, band, c).
  static C10_HOST_DEVICE void reduce(const Plan& p, const Args& a, const Smem& m, int64_t bid,
                                     int tid, int nthreads) {
    const QDwShape& s = p.s;
    const Coords cc = coords(p, bid);
    const int ctv = p.CT * VEC;
    for (int i = tid; i < ctv; i += nthreads) {
      const int64_t c = cc.c_base + i;
      if (c >= s.C) continue;
      const int j = lin(p, i / VEC, i % VEC);
      float sum = 0.0f;
      for (int r = 0; r < p.RW; ++r) sum += m.red[r * ctv + j];
      a.pool_out[(cc.n * p.bands + cc.band) * s.C + c] = sum * p.pool_scale;
    }
  }
};

// One compile-time variant of the kernel.
template <int K_, int S_, int VEC_, Act A_>
struct Cfg {
  static constexpr int K = K_, S = S_, VEC = VEC_;
  static constexpr Act A = A_;
};

// Calls f(Cfg<K, S, VEC, A>{}) for the fast-path variant of kernel size K that plan p (vec 16
// or 8, stride) and `act` select.
template <int K, typename F>
void dispatch_fast(const Plan& p, Act act, F&& f) {
  dispatch_act(act, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    if (p.vec == 16) {
      if (p.s.stride == 1) {
        f(Cfg<K, 1, 16, A>{});
      } else {
        f(Cfg<K, 2, 16, A>{});
      }
    } else {
      if (p.s.stride == 1) {
        f(Cfg<K, 1, 8, A>{});
      } else {
        f(Cfg<K, 2, 8, A>{});
      }
    }
  });
}

// Calls f(Cfg<0, 0, 1, A>{}) (the generic path) for `act`.
template <typename F>
void dispatch_generic(Act act, F&& f) {
  dispatch_act(act, [&](auto act_c) { f(Cfg<0, 0, 1, decltype(act_c)::value>{}); });
}

}  // namespace effnet::qdw
