// The CPU ISA switch: which instruction-set build of a CPU kernel runs.
//
// Kernels with ISA variants (bias_act, dwconv_bias_act, pointwise_conv: compiled for the baseline
// ISA and for AVX2 + FMA, see cpu_math.h) ask `cpu::use_avx2()` once per call. The active level is
//   * the environment variable EFFNET_CPU_ISA = baseline | avx2 | avx512 | auto, read once, at
//     the first kernel call (unset or "auto": the best level this CPU runs), or
//   * whatever `set_isa(name)` chose last (Python: effnet_kernels._C.set_cpu_isa / cpu_isa), so
//     tests can run every path on one machine.
// A level the CPU cannot run, or an unknown name, is a ValueError (from the env var: at the
// first call that reads it). A kernel without a build for the active level runs its best build
// below it (there are no AVX-512 builds yet: "avx512" runs the AVX2 ones).
#pragma once

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace effnet::cpu {

enum class Isa : int { Baseline = 0, AVX2 = 1, AVX512 = 2 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512:
      return "avx512";
    case Isa::AVX2:
      return "avx2";
    case Isa::Baseline:
    default:
      return "baseline";
  }
}

// True when this CPU (and OS) can run code built for `isa`: AVX2 means AVX2 + FMA (x86-64-v3),
// AVX-512 means F + BW + DQ + VL on top of it (x86-64-v4).
inline bool isa_supported(Isa isa) {
  if (isa == Isa::Baseline) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512dq") &&
                             __builtin_cpu_supports("avx512vl");
  return isa == Isa::AVX2 ? avx2 : avx512;
#else
  return false;
#endif
}

// The best level this CPU runs.
inline Isa best_isa() {
  if (isa_supported(Isa::AVX512)) return Isa::AVX512;
  if (isa_supported(Isa::AVX2)) return Isa::AVX2;
  return Isa::Baseline;
}

// "baseline" | "avx2" | "avx512" | "auto" (= best_isa()) -> the level; raises ValueError for
// another name or a level this CPU cannot run. `source` names where the name came from.
inline Isa parse_isa(const std::string& name, const char* source) {
  Isa isa;
  if (name == "auto") {
    return best_isa();
  } else if (name == "baseline") {
    isa = Isa::Baseline;
  } else if (name == "avx2") {
    isa = Isa::AVX2;
  } else if (name == "avx512") {
    isa = Isa::AVX512;
  } else {
    TORCH_CHECK_VALUE(false, "effnet: ", source, ": unknown CPU ISA '", name,
                      "'; expected one of 'baseline', 'avx2', 'avx512', 'auto'");
  }
  TORCH_CHECK_VALUE(isa_supported(isa), "effnet: ", source, ": this CPU cannot run the '", name,
                    "' kernels (best available: '", isa_name(best_isa()), "')");
  return isa;
}

// EFFNET_CPU_ISA's level ("auto" when unset or empty); raises as parse_isa.
inline Isa env_isa() {
  const char* env = std::getenv("EFFNET_CPU_ISA");
  return parse_isa(env != nullptr && env[0] != '\0' ? env : "auto", "EFFNET_CPU_ISA");
}

// The active level, initialised from EFFNET_CPU_ISA on first use, -1 while that variable is
// invalid (one object for the whole library: an inline function's static is shared by every
// translation unit).
inline std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{[] {
    try {
      return static_cast<int>(env_isa());
    } catch (const c10::Error&) {
      return -1;  // reported by active_isa(), unless set_isa() chooses a level first
    }
  }()};
  return slot;
}

inline Isa active_isa() {
  const int v = isa_slot().load(std::memory_order_relaxed);
  return v >= 0 ? static_cast<Isa>(v) : env_isa();  // env_isa() raises the variable's error
}

// True when kernels should run their AVX2 + FMA build.
inline bool use_avx2() { return active_isa() >= Isa::AVX2; }

// Selects the level by name (as EFFNET_CPU_ISA); returns the level now active.
inline Isa set_isa(const std::string& name) {
  const Isa isa = parse_isa(name, "set_cpu_isa");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return isa;
}

}  // namespace effnet::cpu
