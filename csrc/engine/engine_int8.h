// AVX-512 VNNI microkernels of the INT8 ops and the INT8 CPU engine (engine_int8.cpp): the 1x1
// conv GEMM (vpdpbusd, u8 x s8 -> int32) with the requantising epilogue, the NHWC depthwise conv
// and the passes around them. Contract: effnet_kernels/reference.py, "INT8" — these are
// bit-exact with the scalar CPU kernels (csrc/pointwise_int8, csrc/dwconv_int8): the integer
// accumulation is exact, and every float32 step after it is the scalar kernels' own (the same
// operations in the same order, each one rounding: the epilogue uses embedded-rounding
// intrinsics, which the compiler cannot contract into FMAs; SiLU's exp is cpu::exp_vec's
// polynomial step for step).
//
// Activation bytes come in two storage forms: s8 (the int8 value q, as the ops' tensors hold
// it) and u8 (q + 128, i.e. q XOR 0x80: what vpdpbusd's unsigned operand needs; the engine keeps
// its activations this way). The GEMM's A operand is always u8; then
//   sum_k (q[k] - zp) w[k] = sum_k u[k] w[k] - (128 + zp) sum_k w[k],
// and comp[n] = (128 + zp) * wsum[n] is subtracted (the VNNI tiles start their accumulators at
// -comp; the AMX path subtracts it after the tile store) — exact in int32: |u w| <= 255 * 127,
// four per vpdpbusd lane, no saturation.
#pragma once

#include <cstdint>

#include "engine_kernels.h"

namespace effnet::engine {

// True when this CPU has AVX-512 F/BW/DQ/VL and AVX512_VNNI.
bool int8_kernels_supported();

// Packed int8 weights: W (N x K, row-major int8) as ceil(N/16) panels [Kq/4][16][4] (four
// consecutive k of one output column adjacent: vpdpbusd's operand layout), Kq = K rounded up to
// 4, zero-padded; a panel is Kq * 16 bytes (64-byte aligned when the buffer is).
// wsum: round16(N) int32, sum_k W[n][k] (0 past N).
inline int64_t qpacked_k(int64_t K) { return (K + 3) / 4 * 4; }
inline int64_t qpacked_bytes(int64_t K, int64_t N) { return round16(N) * qpacked_k(K); }
void qpack_weights(const int8_t* w, int64_t N, int64_t K, int8_t* out, int32_t* wsum);

// AMX-INT8 weights: the VNNI panels zero-padded to K64 = K rounded up to 64 and to an even
// number of panels (tdpbusd's B tiles are 16 k-quads x 16 columns, two panels per block).
// True when this CPU has AMX-INT8 and Linux grants the tile state (see amx_supported()).
bool int8_amx_supported();
inline int64_t qamx_k(int64_t K) { return (K + 63) / 64 * 64; }
// The layers the AMX path takes: K >= 64 (below, the K64 zero padding multiplies the tile work —
// K = 16-40 expands: 2-4x — and the VNNI tiles measured as fast or faster; benchmarks/NOTES.md,
// "AMX-INT8"). Only these get an AMX packing.
inline bool qamx_takes(int64_t K) { return K >= 64; }
inline int64_t qamx_bytes(int64_t K, int64_t N) { return (N + 31) / 32 * 32 * qamx_k(K); }
void qamx_pack(const int8_t* vnni, int64_t K, int64_t N, int8_t* out);

// The INT8 kernels' activations: EAct's Identity / ReLU / ReLU6 / SiLU (the exact SiLU of the
// scalar kernels: cpu::exp_vec and a division), or kSiLUFast: SiLU through the float engine's
// sigmoid (exp with vscalefps, reciprocal estimate + one Newton step; ~1e-7 relative off the
// exact one, so a requantised output may move by 1 LSB where its value sits on a rounding
// boundary — what the INT8 contract allows for SiLU — at half the epilogue's cost).
constexpr EAct kSiLUFast = static_cast<EAct>(5);

// Where the epilogue's value goes.
enum class QOut : int {
  S8 = 0,   // requantised, int8 storage
  U8 = 1,   // requantised, u8 storage (q + 128)
  F32 = 2,  // the float32 value a itself (pool_only / the head)
  OFF = 3,  // requantised, stored as float32 (q - zp): the engine's depthwise input rows
};

// y[m][n] = out(act(float(acc) * scale[n] + bias[n]) [+ float(r - res_zp) * res_scale]) with
// acc = sum_k u[m][k] W[n][k] - comp[n], for m < M, n < N:
//   a:    M rows of u8, row stride lda; every row readable for qpacked_k(K) bytes (what lies
//         past K is multiplied by zero weights);
//   b, comp, scale, bias: packed weights and round16(N)-padded per-column vectors;
//   res:  optional, int8 or u8 (res_u8) rows of stride ldr;
//   y:    rows of stride ldy, in `out` form (S8 / U8 bytes, F32 / OFF floats); inv, zp the
//         requantisation's 1/scale and zero point (OFF: stores q - zp).
struct QGemmArgs {
  int64_t M = 0, K = 0, N = 0;
  const uint8_t* a = nullptr;
  int64_t lda = 0;
  const int8_t* b = nullptr;
  const int32_t* comp = nullptr;
  const float* scale = nullptr;
  const float* bias = nullptr;
  EAct act = EAct::Identity;
  const void* res = nullptr;
  int64_t ldr = 0;
  bool res_u8 = false;
  int32_t res_zp = 0;
  float res_scale = 0.0f;
  void* y = nullptr;
  int64_t ldy = 0;
  QOut out = QOut::S8;
  float inv = 1.0f, zp = 0.0f;
  // The engine's fast mode: FMAs in the epilogue (one rounding fewer per step: a requantised
  // value may differ by 1 LSB at exact ties). Not bit-exact with the scalar kernels; within
  // the INT8 contract.
  bool fast = false;
  // AMX-INT8: the weights packed by qamx_pack (needs int8_amx_supported()); nullptr: VNNI.
  // Results are bit-identical either way (exact int32 sums, the same epilogue).
  const int8_t* amx_b = nullptr;
};
// Register tiles as the float GEMM's (Tiling), or with amx_b set 32 x 32 blocks on the AMX
// tile unit: [t0, t1) run serially on the caller.
int64_t qgemm_tiles(const QGemmArgs& g);
void qgemm_range(const QGemmArgs& g, int64_t t0, int64_t t1);

// Depthwise k x k (k <= kDwMaxK), stride s, one output row from k input row pointers (rows[kh]
// nullptr where that row is padding; a row is W pixels of C channels):
//   acc = sum over in-image taps of (x - x_off) * w        (float32 FMAs: every partial sum is
//                                                             an integer below 2^24, so exact)
//   a = act(acc * scale[c] + bias[c]);  y = requantise(a) in `out` form (S8 / U8);
//   psum_row (optional, round16(C) floats) = the row's per-channel sum of a, in pixel order.
// x in x_form: 0 float32 already offset (x - zp: the engine's OFF rows, x_off unused), 1 int8,
// 2 u8 (x_off = in_zp, or 128 + in_zp for u8 — callers pass the total). w: float32
// [k*k][round16(C)] (the int8 taps as floats), scale / bias: round16(C).
struct QDwArgs {
  int64_t W = 0, C = 0, OW = 0;
  int k = 3, s = 1, pl = 0;
  int x_form = 0;
  float x_off = 0.0f;
  const float* w = nullptr;
  const float* scale = nullptr;
  const float* bias = nullptr;
  EAct act = EAct::Identity;
  QOut out = QOut::S8;
  float inv = 1.0f, zp = 0.0f;
  bool fast = false;  // as QGemmArgs.fast (FMAs in the epilogue)
};
void qdw_row(const QDwArgs& d, const void* const* rows, void* y_row, float* psum_row);

// out[r][c] (u8, row stride ldo) for r < rows, c < C from x (row stride ldx; x_u8: u8 form,
// else int8): with a gate g (C floats) the SE gate in x's own quantisation,
//   clamp(floor(float(q - zp) * g[c] + 0.5) + zp, -128, 127)   (reference.gate_int8),
// else q itself; + 128. Columns [C, ldo) are zeroed.
void qprep_rows(const void* x, bool x_u8, int64_t rows, int64_t C, int64_t ldx, int32_t zp,
                const float* g, uint8_t* out, int64_t ldo);

// y (int8 or u8 form) = requantise(x) for n float32 values (quantize_per_tensor).
void quantize_f32(const float* x, int64_t n, float inv, float zp, bool u8, void* y);

// The ops' pools, in their exact summation order:
//   pool_chunks: out[n][c] = (sum over chunks of 64 pixels, in double, of the chunk's float32
//                sum in pixel order) / HW — pointwise_int8's pool_only;
//   pool_rows64: out[n][c] = (sum over the R rows, in double, of part[n][r][c]) / count —
//                dwconv_int8's pool from its per-row partials.
void pool_chunks(const float* a, int64_t N, int64_t HW, int64_t C, int64_t lda, float* out,
                 int64_t ldo);
void pool_rows64(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, double count,
                 float* out, int64_t ldo);

}  // namespace effnet::engine
