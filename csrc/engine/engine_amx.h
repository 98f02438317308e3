// The AMX tile code both engines share (engine_kernels.cpp: bfloat16 tdpbf16ps; engine_int8.cpp:
// u8 x s8 tdpbusd): one tile configuration (eight 16-row x 64-byte tiles) and the 2 x 2 block
// that accumulates C[32 x 32] (4-byte elements, tmm0-3) from two A tiles (tmm4-5: rows 0-15 and
// 16-31 of a row-major block, lda bytes per row) and two B tiles (tmm6-7: two packed 16-column
// panels whose tile rows are 64 bytes), 64 bytes of each A row per step.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define EK_AMX_TILES \
  __attribute__((target("amx-tile,amx-bf16,amx-int8,avx512f,avx512bw,avx512dq,avx512vl")))

namespace effnet::engine {

struct AmxTileCfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

EK_AMX_TILES inline void amx_tiles_config() {
  AmxTileCfg cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  // Not GCC's _tile_loadconfig: its asm names only the first 8 bytes as read, and GCC 12 then
  // drops the stores of colsb/rows as dead (ldtilecfg of a zero config: SIGSEGV).
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

EK_AMX_TILES inline void amx_tiles_release() { _tile_release(); }

// False when the environment says EFFNET_CPU_AMX=0 (the engines' AMX default; their set_amx
// overrides it per engine).
inline bool amx_env_allows() {
  static const bool on = [] {
    const char* env = std::getenv("EFFNET_CPU_AMX");
    return !(env != nullptr && std::string(env) == "0");
  }();
  return on;
}

// Column blocks (pairs of 16-column panels) of an N-column GEMM on the tiles.
inline int64_t amx_col_blocks(int64_t N) { return ((N + 15) / 16 + 1) / 2; }

// Runs blocks [t0, t1) of an M x N GEMM on the tiles, block t = (32-row block t / col_blocks,
// panel pair t % col_blocks): each row block's A rows (row_bytes of each, lda bytes apart) are
// copied once into a per-thread 32 x kbytes block, zero past row_bytes and past row M, then
// run(m0, mr, p0, block) for each of its column pairs (p0: first panel; mr: valid rows).
template <typename Run>
void amx_walk(const void* a, int64_t lda, int64_t row_bytes, int64_t kbytes, int64_t M,
              int64_t N, int64_t t0, int64_t t1, const Run& run) {
  thread_local std::vector<char> buf;
  if (buf.size() < static_cast<size_t>(32 * kbytes)) buf.resize(static_cast<size_t>(32 * kbytes));
  char* ab = buf.data();
  const char* pa = static_cast<const char*>(a);
  const int64_t col_blocks = amx_col_blocks(N);
  amx_tiles_config();
  int64_t loaded = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t mb = t / col_blocks, p0 = t % col_blocks * 2, m0 = mb * 32;
    const int64_t mr = M - m0 < 32 ? M - m0 : 32;
    if (mb != loaded) {
      for (int64_t r = 0; r < 32; ++r) {
        char* dst = ab + r * kbytes;
        const int64_t n = r < mr ? row_bytes : 0;
        if (n > 0) std::memcpy(dst, pa + (m0 + r) * lda, static_cast<size_t>(n));
        std::memset(dst + n, 0, static_cast<size_t>(kbytes - n));
      }
      loaded = mb;
    }
    run(m0, mr, p0, ab);
  }
  amx_tiles_release();
}

// c (32 x 32 four-byte elements, row stride 128 bytes) = sum over kbytes (a multiple of 64) of
// A (32 rows at a, lda bytes apart) times the panels b0, b1 (tile row r of step kb at
// b + (kb + 4 r) * 16: the [k/group][16 columns][group] VNNI layout). INT8: u8 A x s8 B -> int32
// (tdpbusd); else bfloat16 pairs -> float32 (tdpbf16ps).
template <bool INT8>
EK_AMX_TILES void amx_block_2x2(const void* a, int64_t lda, const void* b0, const void* b1,
                                int64_t kbytes, void* c) {
  const char* pa = static_cast<const char*>(a);
  const char* pb0 = static_cast<const char*>(b0);
  const char* pb1 = static_cast<const char*>(b1);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kb = 0; kb < kbytes; kb += 64) {
    _tile_loadd(4, pa + kb, lda);
    _tile_loadd(5, pa + 16 * lda + kb, lda);
    _tile_loadd(6, pb0 + kb * 16, 64);
    _tile_loadd(7, pb1 + kb * 16, 64);
    if constexpr (INT8) {
      _tile_dpbusd(0, 4, 6);
      _tile_dpbusd(1, 4, 7);
      _tile_dpbusd(2, 5, 6);
      _tile_dpbusd(3, 5, 7);
    } else {
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  char* pc = static_cast<char*>(c);
  _tile_stored(0, pc, 128);
  _tile_stored(1, pc + 64, 128);
  _tile_stored(2, pc + 16 * 128, 128);
  _tile_stored(3, pc + 16 * 128 + 64, 128);
}

}  // namespace effnet::engine
