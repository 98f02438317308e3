// The effnet operator library: every op schema, in one place, and the Python module _C.
//
// Backends register their kernels with TORCH_LIBRARY_IMPL(effnet, <Key>, m) in <op>/<op>_cpu.cpp
// and <op>/<op>_cuda.cu; fake (meta) kernels for torch.compile live in effnet_kernels/ops.py.
#include <torch/library.h>

#include <string>

#include "common/cpu_isa.h"
#include "engine/engine_int8.h"

#ifndef EFFNET_VERSION
#define EFFNET_VERSION "0.0.0"
#endif
#ifndef EFFNET_TORCH_VERSION
#define EFFNET_TORCH_VERSION ""
#endif
#ifndef EFFNET_CUDA_ARCHS
#define EFFNET_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(effnet, m) {
  // y = act(x + bias[c]) on channels_last x (N, C, H, W); act in {silu, relu6, relu, identity}.
  m.def("bias_act(Tensor x, Tensor bias, str act) -> Tensor");
  // Depthwise k x k conv (BN folded) + bias + act on channels_last x; weight (C, 1, k, k), odd k,
  // stride 1|2, padding (left, right, top, bottom). Returns (y, pool): pool is the float32 (N, C)
  // spatial mean of y when return_pool, else an empty (0,) tensor.
  m.def(
      "dwconv_bias_act(Tensor x, Tensor weight, Tensor bias, int stride, int[] padding, str act, "
      "bool return_pool) -> (Tensor, Tensor)");
  // SE excite: sigmoid(w2 @ silu(w1 @ pooled[n] + b1) + b2) -> (N, C) float32; pooled (N, C)
  // float32, w1 (S, C), w2 (C, S), b1 (S,), b2 (C,) in one float dtype.
  m.def("se_gate(Tensor pooled, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  // 1x1 conv as a GEMM on channels_last x: act((x * gate[n, cin]) @ weight^T + bias) + residual;
  // weight (Cout, Cin); gate (N, Cin) float32; with pool_only the float32 (N, Cout) mean only.
  m.def(
      "pointwise_conv(Tensor x, Tensor weight, Tensor bias, str act, Tensor? gate, "
      "Tensor? residual, bool pool_only) -> Tensor");
  // INT8 ops (exact contract: effnet_kernels/reference.py, "INT8"). Activations int8 with one
  // (scale, zero point) per tensor; weights int8 symmetric per output channel; scale[c] =
  // s_in * s_w[c] and bias[c] float32; outputs requantised to (1 / out_inv_scale, out_zp).
  // Depthwise: returns (y int8 channels_last, pool) with pool the float32 (N, C) mean of the
  // activated float values when return_pool, else an empty (0,) tensor.
  m.def(
      "dwconv_int8(Tensor x, Tensor weight, Tensor scale, Tensor bias, int stride, int[] padding, "
      "int in_zp, float out_inv_scale, int out_zp, str act, bool return_pool) -> (Tensor, Tensor)");
  // 1x1 conv: int8 x (N, Cin, H, W), weight (Cout, Cin) int8, gate (N, Cin) float32 applied to
  // x in its own quantisation, residual int8 with (res_scale, res_zp); pool_only: float32 mean.
  m.def(
      "pointwise_int8(Tensor x, Tensor weight, Tensor scale, Tensor bias, int in_zp, "
      "float out_inv_scale, int out_zp, str act, Tensor? gate, Tensor? residual, float res_scale, "
      "int res_zp, bool pool_only) -> Tensor");
  // float x (any layout) -> int8 clamp(floor(x * inv_scale + 0.5) + zp, -128, 127), channels_last
  // when x is 4-D: the model input into the int8 grid (reference.py::quantize_per_tensor).
  m.def("quantize_per_tensor(Tensor x, float inv_scale, int zp) -> Tensor");
  // Training (effnet_kernels/train_ops.py): the backward of y = act((x - mean) * scale + beta)
  // [* gate[n, c]] for channels_last float32 x and dy: (dx, dscale, dbeta, dgate), dscale/dbeta
  // (C,), dgate (N, C) (an empty (0, 0) tensor without a gate); one pass, nothing stored.
  m.def(
      "bn_act_backward(Tensor x, Tensor dy, Tensor mean, Tensor scale, Tensor beta, str act, "
      "Tensor? gate) -> (Tensor, Tensor, Tensor, Tensor)");
  // Training: per-channel (mean, biased variance) of a channels_last float32 z over (N, H, W).
  m.def("batch_stats(Tensor z) -> (Tensor, Tensor)");
  // Training: its backward, dz = (z - mean) * 2 * dvar / m + dmean / m (m = N*H*W), one pass;
  // an absent dmean / dvar is zero.
  m.def("batch_stats_backward(Tensor z, Tensor mean, Tensor? dmean, Tensor? dvar) -> Tensor");
  // Training: the depthwise conv (weight (C, 1, k, k), no bias, stride 1/2, zero padding
  // (left, right, top, bottom)) of act((x - mean) * scale + beta) — of x itself without mean /
  // scale / beta — for channels_last float32 / float64 x, the activated input never written;
  // and its backward for dz: (dx, dweight, dscale, dbeta), dscale / dbeta empty without BN.
  m.def(
      "dwconv_train(Tensor x, Tensor weight, Tensor? mean, Tensor? scale, Tensor? beta, str act, "
      "int stride, int[] padding) -> Tensor");
  m.def(
      "dwconv_train_backward(Tensor x, Tensor dz, Tensor weight, Tensor? mean, Tensor? scale, "
      "Tensor? beta, str act, int stride, int[] padding) -> (Tensor, Tensor, Tensor, Tensor)");
  // Training: y = act((x - mean) * scale + beta) [* gate[n, c]], channels_last float32, one pass.
  m.def(
      "bn_act_apply(Tensor x, Tensor mean, Tensor scale, Tensor beta, str act, Tensor? gate) -> "
      "Tensor");
}

namespace effnet {
#ifdef EFFNET_WITH_CUDA
int cudart_build_version();
#endif

bool has_cuda() {
#ifdef EFFNET_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// CUDA runtime version the kernels were compiled against, as "major.minor", or "" without CUDA.
std::string cuda_version() {
#ifdef EFFNET_WITH_CUDA
  const int v = cudart_build_version();
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
#else
  return "";
#endif
}
}  // namespace effnet

// The Python extension module exists only in the setup.py build; the CMake build is a plain
// shared library for libtorch users.
#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "effnet_kernels compiled core: registers torch.ops.effnet.* on import";
  module.def(
      "build_info",
      [] {
        pybind11::dict d;
        d["version"] = EFFNET_VERSION;
        d["has_cuda"] = effnet::has_cuda();
        d["cuda_version"] = effnet::cuda_version();
        d["archs"] = std::string(EFFNET_CUDA_ARCHS);
        d["torch_version"] = EFFNET_TORCH_VERSION;
        return d;
      },
      "How this extension was built: version, has_cuda, cuda_version, archs, torch_version.");
  module.def(
      "set_cpu_isa",
      [](const std::string& name) { return effnet::cpu::isa_name(effnet::cpu::set_isa(name)); },
      pybind11::arg("name"),
      "Selects which ISA build of the CPU kernels runs: 'baseline', 'avx2', 'avx512' or 'auto' "
      "(the best this CPU runs; the default unless EFFNET_CPU_ISA says otherwise). Raises "
      "ValueError for a level this CPU cannot run. Returns the level now active.");
  module.def(
      "cpu_isa", [] { return effnet::cpu::isa_name(effnet::cpu::active_isa()); },
      "The ISA level the CPU kernels run now: 'baseline', 'avx2' or 'avx512'.");
  module.def(
      "cpu_isas",
      [] {
        pybind11::list l;
        for (const auto isa : {effnet::cpu::Isa::Baseline, effnet::cpu::Isa::AVX2,
                               effnet::cpu::Isa::AVX512}) {
          if (effnet::cpu::isa_supported(isa)) l.append(effnet::cpu::isa_name(isa));
        }
        return l;
      },
      "The ISA levels this CPU runs, lowest first (each is a valid set_cpu_isa name).");
  module.def(
      "cpu_has_int8_vnni", [] { return effnet::engine::int8_kernels_supported(); },
      "True when this CPU has AVX512_VNNI: at the 'avx512' level the INT8 ops (and the INT8 "
      "CPU engine) run their vpdpbusd kernels.");
  module.def(
      "cpu_has_int8_amx", [] { return effnet::engine::int8_amx_supported(); },
      "True when this CPU has AMX-INT8 and Linux grants the tile state: the INT8 CPU engine runs "
      "its 1x1 layers with K >= 64 on tdpbusd (CpuEngineInt8.set_amx; EFFNET_CPU_AMX=0 turns "
      "it off).");
}
#endif
