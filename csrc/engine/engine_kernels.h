// AVX-512 microkernels of the CPU engine (cpu_engine.cpp): the 1x1-conv / linear GEMM with a
// fused epilogue, the NHWC depthwise conv with the SE squeeze, and the small passes around them.
//
// Everything here works on raw NHWC buffers (rows = pixels, columns = channels) in float32 or
// bfloat16 (stored as uint16_t, computed in float32). The kernels need AVX-512 F/BW/DQ/VL (and
// AVX512_BF16 for bfloat16 inputs): `kernels_supported()` says whether this CPU has them; the
// engine refuses to build without them (Python then runs the per-op path).
#pragma once

#include <cstdint>

namespace effnet::engine {

enum class EAct : int { Identity = 0, ReLU = 1, ReLU6 = 2, SiLU = 3, Sigmoid = 4 };
enum class DT : int { F32 = 0, BF16 = 1 };

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// True when this CPU runs the AVX-512 kernels (bf16: also AVX512_BF16).
bool kernels_supported(bool bf16);

// True when this CPU has AMX-BF16 and Linux granted this process the tile state: bfloat16
// GEMMs of 16 rows or more then run on the tile unit (GemmArgs.amx).
bool amx_supported();

// Packed GEMM weights. A weight W (N outputs x K inputs, row-major float32) is stored as
// ceil(N/16) panels of 16 output columns, zero-padded:
//   F32:  panel p = [K][16] float          (B[k][16p + j])
//   BF16: panel p = [Kp/2][16][2] bfloat16 (the pair (B[2i][16p+j], B[2i+1][16p+j]) adjacent,
//                                           the operand order of vdpbf16ps and the VNNI layout
//                                           of AMX's tdpbf16ps); K must be even, Kp = K rounded
//                                           up to 32 and the panel count to even (zeros), so
//                                           AMX tiles of 32 k x 32 columns never read past it.
// A panel is packed_k(K)*16 elements and starts 64-byte aligned when the buffer does.
inline int64_t packed_k(int64_t K, DT dt) { return dt == DT::F32 ? K : (K + 31) / 32 * 32; }
int64_t packed_elems(int64_t K, int64_t N, DT dt);
void pack_weights(const float* w, int64_t N, int64_t K, DT dt, void* out);

// y[m][n] = act(sum_k a[m][k] * B[k][n] + bias[n]) (+ res[m][n]) for m < M, n < N.
// a: M rows of K elements (row stride lda) in b_dt; b: packed (b_dt); bias: float32, >= N
// padded to 16 with zeros; res (optional) and y: y_dt, row strides ldr / ldy.
struct GemmArgs {
  int64_t M = 0, K = 0, N = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  DT b_dt = DT::F32;  // also a's dtype
  const float* bias = nullptr;
  const void* res = nullptr;
  int64_t ldr = 0;
  void* y = nullptr;
  int64_t ldy = 0;
  DT y_dt = DT::F32;
  EAct act = EAct::Identity;
  bool amx = false;  // bfloat16 on the AMX tiles (needs amx_supported(); blocks of 32 x 32)
  bool avx2 = false;  // the AVX2 + FMA kernels (float32 only; needs avx2::supported())
};
// The register tiling of an M x N GEMM: rows per tile (<= 8, or <= 6 when N >= 64; spread
// evenly: 49 rows -> 7 tiles of 7, not 6 of 8 and one of 1) and panels of 16 columns per tile
// (nv_max = 2, or 4 when N >= 64; the last tile fewer). Tile t covers row tile t / col_tiles.
struct Tiling {
  int64_t panels, nv_max, col_tiles, row_tiles, base, extra;
  Tiling(int64_t M, int64_t N) {
    panels = (N + 15) / 16;
    nv_max = panels >= 4 ? 4 : 2;
    const int64_t mr_max = nv_max == 4 ? 6 : 8;
    col_tiles = (panels + nv_max - 1) / nv_max;
    row_tiles = (M + mr_max - 1) / mr_max;
    base = row_tiles > 0 ? M / row_tiles : 0;
    extra = row_tiles > 0 ? M % row_tiles : 0;
  }
  // Tile t: first row, rows, first panel, panels.
  void tile(int64_t t, int64_t* r0, int64_t* mr, int64_t* p0, int64_t* nv) const {
    const int64_t rt = t / col_tiles;
    *p0 = t % col_tiles * nv_max;
    *r0 = rt * base + (rt < extra ? rt : extra);
    *mr = base + (rt < extra);
    *nv = panels - *p0 < nv_max ? panels - *p0 : nv_max;
  }
};

// The GEMM is cut into register tiles (8 rows x 32 columns, or 6 x 64 when N >= 64); tiles
// [t0, t1) run serially on the caller (the engine spreads tile ranges over threads).
int64_t gemm_tiles(const GemmArgs& g);
void gemm_range(const GemmArgs& g, int64_t t0, int64_t t1);

// Depthwise k x k conv, stride s, zero padding (top pt, left pl), NHWC x (N,H,W,C) -> y
// (N,OH,OW,C), y = act(conv + bias) (x in x_dt, y in dt). w: float32 [k*k][round16(C)],
// bias float32 [round16(C)], zero-padded. psum (optional): float32 [N][OH][round16(C)], each
// output row's per-channel sum of y (the SE squeeze, reduced by pool_rows).
struct DwArgs {
  const void* x = nullptr;
  void* y = nullptr;
  DT dt = DT::F32;    // y's dtype
  DT x_dt = DT::F32;  // x's: dt, or float32 under a bfloat16 y (not bfloat16 under float32)
  int64_t N = 0, H = 0, W = 0, C = 0, OH = 0, OW = 0;
  int k = 3, s = 1, pt = 0, pl = 0;
  const float* w = nullptr;
  const float* bias = nullptr;
  EAct act = EAct::Identity;
  float* psum = nullptr;
  bool avx2 = false;  // the AVX2 + FMA kernels (float32 x and y only)
};
// Tasks are (n, output row, block of 64 channels); x, y, psum as in DwArgs. k <= kDwMaxK.
constexpr int kDwMaxK = 15;
int64_t dw_tasks(const DwArgs& d);
void dw_range(const DwArgs& d, int64_t t0, int64_t t1);
// One whole output row (all channels) from k input row pointers (rows[kh] = input row
// oh*s - pt + kh of the sample, nullptr where that row is padding; d.x, d.N, d.OH unused): the
// entry of the fused expand + depthwise pass. psum_row: round16(C) floats or nullptr.
void dw_row(const DwArgs& d, const void* const* rows, void* y_row, float* psum_row);

// pooled[n][c] = sum over r < R of part[n][r][c] / count, c < C (rows of stride ldp; pooled
// rows of stride ldo). For the SE squeeze (part = psum) and the head pool (part = GEMM output).
void pool_rows(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, float count,
               float* pooled, int64_t ldo, bool avx2 = false);

// x[r][c] *= g[c] for r < rows, c < C (row stride C), x in dt: the SE gate applied in place.
void scale_rows(void* x, DT dt, int64_t rows, int64_t C, const float* g, bool avx2 = false);

// out = packed * g[k] (row k of every panel scaled; F32 panels only): the SE gate folded into
// one sample's weights.
void fold_gate(const float* packed, int64_t K, int64_t N, const float* g, float* out,
               bool avx2 = false);

// The AVX2 + FMA builds of the float32 kernels above (engine_kernels_avx2.cpp): the same
// layouts and contracts; the functions above call them when their args say `avx2`. Their GEMM
// tiling (6 rows x one panel) differs from the AVX-512 one: gemm_tiles / gemm_range of one GEMM
// must agree on `avx2`.
namespace avx2 {
bool supported();  // this CPU has AVX2 and FMA
int64_t gemm_tiles(const GemmArgs& g);
void gemm_range(const GemmArgs& g, int64_t t0, int64_t t1);
void dw_range(const DwArgs& d, int64_t t0, int64_t t1, int64_t block);
void dw_row(const DwArgs& d, const void* const* rows, void* y_row, float* psum_row);
void pool_rows(const float* part, int64_t N, int64_t R, int64_t C, int64_t ldp, float count,
               float* pooled, int64_t ldo);
void scale_rows(float* x, int64_t rows, int64_t C, const float* g);
void fold_gate(const float* packed, int64_t K, int64_t N, const float* g, float* out);
}  // namespace avx2

// Casts n float32 values to bfloat16 (round to nearest even), or back.
void f32_to_bf16(const float* x, uint16_t* y, int64_t n);
void bf16_to_f32(const uint16_t* x, float* y, int64_t n);

}  // namespace effnet::engine
