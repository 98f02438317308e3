// The INT8 CPU engine: a whole QuantizedEfficientNet forward (ek.quantize's model) in C++
// (torch.classes.effnet.CpuEngineInt8), on the AVX-512 VNNI kernels of engine_int8.h.
//
// Built once from the quantized model's buffers (effnet_kernels/cpu_engine.py: encode_int8), it
// packs every int8 1x1 weight for vpdpbusd (with the zero-point corrections), lays the int8
// depthwise taps out as [k*k][C] floats, and runs on NHWC buffers it owns:
//   float stem: at::conv2d (as F.conv2d) + bias_act, then quantise (u8 form);
//   per block: [expand GEMM -> requantised, stored as float (q - zp) rows] -> depthwise + act
//              -> requantise (u8) + SE row sums -> [SE: pool (the op's order), se_gate] ->
//              gate + u8 shift -> project GEMM (+ residual) -> requantise (u8);
//              the first block's float depthwise (first_dw_float) runs as the float op on the
//              stem output, then quantise;
//   head GEMM + act -> float32 rows -> pool (the op's order) -> classifier (at::linear).
// Every step computes what the per-op CPU path (effnet_kernels.quant's modules over the
// dispatcher ops) computes, bit for bit: the int8 kernels are bit-exact with the ops' scalar
// kernels, and the float parts call the same functions (conv2d, bias_act, dwconv_bias_act,
// se_gate, linear) on the same values. Activations between layers stay int8 (u8 form: q + 128,
// what vpdpbusd's unsigned operand reads); no Python and no dispatcher per int8 layer.
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "../bias_act/bias_act.h"
#include "../common/cpu_isa.h"
#include "../dwconv/dwconv.h"
#include "../se/se.h"
#include "engine_amx.h"
#include "engine_int8.h"
#include "engine_util.h"

namespace effnet::engine {
namespace {

const char* act_name(EAct a) {
  switch (a) {
    case EAct::SiLU:
      return "silu";
    case EAct::ReLU6:
      return "relu6";
    case EAct::ReLU:
      return "relu";
    default:
      return "identity";
  }
}

// AMX-INT8 for the engine's 1x1 layers where the CPU has it and the environment does not say
// EFFNET_CPU_AMX=0 (CpuEngineInt8.set_amx overrides it per engine; the results are the same).
bool int8_amx_default() { return amx_env_allows() && int8_amx_supported(); }

struct QLinear {  // an int8 1x1 conv, packed
  at::Tensor packed, comp, scale, bias;  // bytes; int32 / float32 [round16(N)]
  at::Tensor amx;                        // the AMX-INT8 packing (where the CPU has AMX-INT8)
  int64_t K = 0, N = 0;
  EAct act = EAct::Identity;
  int32_t in_zp = 0, out_zp = 0;
  float inv = 1.0f;
};

QLinear make_qlinear(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& bias,
                     EAct act, int64_t in_zp, int64_t out_zp, double inv, const char* what) {
  TORCH_CHECK_VALUE(w.scalar_type() == at::kChar && w.dim() >= 2 && scale.dim() == 1 &&
                        bias.dim() == 1 && scale.size(0) == w.size(0) &&
                        bias.size(0) == w.size(0),
                    "CpuEngineInt8: ", what, ": int8 weight (N, K) and float (N,) scale, bias ",
                    "expected");
  QLinear L;
  L.N = w.size(0);
  L.K = w.numel() / std::max<int64_t>(L.N, 1);
  L.act = act, L.in_zp = static_cast<int32_t>(in_zp), L.out_zp = static_cast<int32_t>(out_zp);
  L.inv = static_cast<float>(inv);
  const at::Tensor wc = w.detach().reshape({L.N, L.K}).contiguous();
  const int64_t Np = round16(L.N);
  L.packed = at::empty({qpacked_bytes(L.K, L.N)}, at::kByte);
  L.comp = at::empty({Np}, at::kInt);
  qpack_weights(wc.data_ptr<int8_t>(), L.N, L.K, reinterpret_cast<int8_t*>(L.packed.data_ptr()),
                L.comp.data_ptr<int32_t>());
  int32_t* c = L.comp.data_ptr<int32_t>();
  for (int64_t n = 0; n < Np; ++n) c[n] *= 128 + L.in_zp;
  if (qamx_takes(L.K) && int8_amx_supported()) {
    L.amx = at::empty({qamx_bytes(L.K, L.N)}, at::kByte);
    qamx_pack(reinterpret_cast<const int8_t*>(L.packed.data_ptr()), L.K, L.N,
              reinterpret_cast<int8_t*>(L.amx.data_ptr()));
  }
  L.scale = pad16(scale);
  L.bias = pad16(bias);
  return L;
}

struct QBlock {
  bool has_expand = false, has_se = false, residual = false, dw_float = false;
  QLinear expand, project;
  // int8 depthwise: taps [k*k][round16(C)] float, scale / bias [round16(C)]; float depthwise
  // (dw_float): the module's own weight (C, 1, k, k) and bias, for dwconv_bias_act_cpu.
  at::Tensor dw_w, dw_scale, dw_bias;
  int64_t C = 0;
  Geo geo;
  EAct dw_act = EAct::Identity;
  int32_t dw_in_zp = 0, dw_out_zp = 0;
  float dw_inv = 1.0f;
  at::Tensor w1, b1, w2, b2;  // SE (float32)
  Linear fc1, fc2;            // the same, packed (fast mode)
  at::Tensor fdw_w, fdw_b;    // the float depthwise as [k*k][round16(C)], [round16(C)] (fast)
  int32_t res_zp = 0;
  float res_scale = 0.0f;
};

}  // namespace

class CpuEngineInt8 : public torch::CustomClassHolder {
 public:
  // ints: [2 (format), blocks, stem act, stem quantizes (0/1), stem out_zp, head act, head in_zp,
  //        exact (0/1: the float parts as the per-op path computes them and the exact SiLU —
  //        bit-identical to it; 0: the float engine's kernels and the fast SiLU), stem geo (7),
  //        per block: has_expand, has_se, residual, dw_float, dw geo (7), expand act, expand
  //        in_zp, expand out_zp, dw act, dw in_zp, dw out_zp, project in_zp, project out_zp,
  //        res_zp]
  // floats: [stem out_inv, per block: expand out_inv, dw out_inv, project out_inv, res_scale]
  // tensors: stem w, b (float); per block: [expand w int8, scale, bias], dw (int8 w, scale,
  //          bias | float w, bias), [se w1, b1, w2, b2], project w int8, scale, bias; head w
  //          int8, scale, bias; classifier w, b (float).
  CpuEngineInt8(std::vector<at::Tensor> t, std::vector<int64_t> ints, std::vector<double> f) {
    TORCH_CHECK_VALUE(ints.size() >= 15 && ints[0] == 2, "CpuEngineInt8: unknown spec format");
    for (const at::Tensor& x : t)
      TORCH_CHECK_VALUE(x.defined() && x.device().is_cpu() && x.has_storage() &&
                            (x.scalar_type() == at::kFloat || x.scalar_type() == at::kChar),
                        "CpuEngineInt8: every weight must be a CPU float32 or int8 tensor");
    TORCH_CHECK(int8_kernels_supported(),
                "CpuEngineInt8: this CPU lacks AVX-512 VNNI; use the per-op CPU kernels");
    TORCH_CHECK(cpu::active_isa() == cpu::Isa::AVX512, "CpuEngineInt8: the active CPU ISA level is '",
                cpu::isa_name(cpu::active_isa()), "' (the engine's kernels are AVX-512 VNNI)");
    const int64_t nblocks = ints[1];
    TORCH_CHECK_VALUE(nblocks >= 1 && ints.size() == 15 + static_cast<size_t>(nblocks) * 20 &&
                          f.size() == 1 + static_cast<size_t>(nblocks) * 4,
                      "CpuEngineInt8: spec length does not match ", nblocks, " blocks");
    size_t ii = 8, ti = 0, fi = 0;
    auto geo = [&] {
      Geo g;
      g.k = ints[ii], g.s = ints[ii + 1], g.mode = ints[ii + 2];
      g.l = ints[ii + 3], g.r = ints[ii + 4], g.t = ints[ii + 5], g.b = ints[ii + 6];
      TORCH_CHECK_VALUE(g.k >= 1 && g.k <= kDwMaxK && g.s >= 1 && g.mode >= 0 && g.mode <= 2,
                        "CpuEngineInt8: bad conv geometry");
      ii += 7;
      return g;
    };
    auto next = [&]() -> at::Tensor {
      TORCH_CHECK_VALUE(ti < t.size(), "CpuEngineInt8: too few tensors for the spec");
      return t[ti++].detach();
    };
    auto next_f = [&](at::ScalarType st, const char* what) {
      at::Tensor x = next();
      TORCH_CHECK_VALUE(x.scalar_type() == st, "CpuEngineInt8: ", what, " has dtype ",
                        x.scalar_type());
      return x.contiguous();
    };
    for (size_t j : {size_t{2}, size_t{5}})  // the int8 kernels' acts: identity..silu
      TORCH_CHECK_VALUE(ints[j] >= 0 && ints[j] <= 3, "CpuEngineInt8: bad activation code ",
                        ints[j]);
    stem_act_ = act_from(ints[2]);
    stem_q_ = ints[3] != 0;
    stem_zp_ = static_cast<int32_t>(ints[4]);
    const EAct head_act = act_from(ints[5]);
    const int64_t head_zp = ints[6];
    exact_ = ints[7] != 0;
    stem_geo_ = geo();
    stem_inv_ = static_cast<float>(f[fi++]);
    stem_w_ = next_f(at::kFloat, "the stem weight");
    stem_b_ = next_f(at::kFloat, "the stem bias");
    TORCH_CHECK_VALUE(stem_w_.dim() == 4 && stem_w_.size(2) == stem_geo_.k &&
                          stem_w_.size(3) == stem_geo_.k && stem_b_.dim() == 1 &&
                          stem_b_.size(0) == stem_w_.size(0),
                      "CpuEngineInt8: stem weight (Cout, Cin, k, k) and bias (Cout,) expected");
    int64_t cin = stem_w_.size(0);
    for (int64_t i = 0; i < nblocks; ++i) {
      QBlock B;
      B.has_expand = ints[ii] != 0, B.has_se = ints[ii + 1] != 0;
      B.residual = ints[ii + 2] != 0, B.dw_float = ints[ii + 3] != 0;
      ii += 4;
      B.geo = geo();
      const int64_t* v = ints.data() + ii;  // the 9 layer ints
      ii += 9;
      const double e_inv = f[fi], d_inv = f[fi + 1], p_inv = f[fi + 2];
      B.res_scale = static_cast<float>(f[fi + 3]);
      fi += 4;
      B.res_zp = static_cast<int32_t>(v[8]);
      TORCH_CHECK_VALUE(!B.dw_float || (i == 0 && !B.has_expand && !stem_q_),
                        "CpuEngineInt8: a float depthwise only in the first block, on the "
                        "float stem output");
      if (B.has_expand) {
        at::Tensor w = next(), sc = next();
        B.expand = make_qlinear(w, sc, next(), qact(v[0]), v[1], v[2], e_inv, "expand");
      }
      for (int j : {0, 3})
        TORCH_CHECK_VALUE(v[j] >= 0 && v[j] <= 3, "CpuEngineInt8: bad activation code ", v[j]);
      TORCH_CHECK_VALUE(i != 0 || stem_q_ || B.dw_float, "CpuEngineInt8: a float stem output "
                        "needs the first block's float depthwise");
      TORCH_CHECK_VALUE(!(B.dw_float && B.residual),
                        "CpuEngineInt8: no residual around the float depthwise");
      B.dw_act = B.dw_float ? act_from(v[3]) : qact(v[3]);
      B.dw_in_zp = static_cast<int32_t>(v[4]), B.dw_out_zp = static_cast<int32_t>(v[5]);
      B.dw_inv = static_cast<float>(d_inv);
      {
        at::Tensor w = next();
        TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == 1 && w.size(2) == B.geo.k &&
                              w.size(3) == B.geo.k,
                          "CpuEngineInt8: block ", i, ": depthwise weight (C, 1, k, k) expected");
        B.C = w.size(0);
        if (B.dw_float) {
          B.dw_w = w.to(at::kFloat).contiguous();
          B.dw_bias = next_f(at::kFloat, "the float depthwise bias");
        } else {
          TORCH_CHECK_VALUE(w.scalar_type() == at::kChar, "CpuEngineInt8: block ", i,
                            ": int8 depthwise weight expected");
          B.dw_w = pack_dw_taps(w);
          B.dw_scale = pad16(next_f(at::kFloat, "a depthwise scale"));
          B.dw_bias = pad16(next_f(at::kFloat, "a depthwise bias"));
        }
      }
      if (B.has_se) {
        B.w1 = next_f(at::kFloat, "an SE weight"), B.b1 = next_f(at::kFloat, "an SE bias");
        B.w2 = next_f(at::kFloat, "an SE weight"), B.b2 = next_f(at::kFloat, "an SE bias");
        TORCH_CHECK_VALUE(B.w1.dim() == 2 && B.w1.size(1) == B.C && B.w2.dim() == 2 &&
                              B.w2.size(0) == B.C && B.w2.size(1) == B.w1.size(0) &&
                              B.b1.dim() == 1 && B.b1.size(0) == B.w1.size(0) &&
                              B.b2.dim() == 1 && B.b2.size(0) == B.C,
                          "CpuEngineInt8: block ", i, ": SE widths do not match");
      }
      {
        at::Tensor w = next(), sc = next();
        B.project = make_qlinear(w, sc, next(), EAct::Identity, v[6], v[7], p_inv, "project");
      }
      TORCH_CHECK_VALUE((B.has_expand ? B.expand.K : B.C) == cin &&
                            (!B.has_expand || B.expand.N == B.C) && B.project.K == B.C,
                        "CpuEngineInt8: block ", i, ": channel counts do not chain");
      TORCH_CHECK_VALUE(!B.residual || (B.project.N == cin && B.geo.s == 1),
                        "CpuEngineInt8: block ", i, ": residual needs stride 1 and equal widths");
      TORCH_CHECK_VALUE(!B.has_expand || B.expand.out_zp == B.dw_in_zp,
                        "CpuEngineInt8: block ", i, ": the depthwise input zero point is not "
                        "the expand output's");
      cin = B.project.N;
      blocks_.push_back(std::move(B));
    }
    {
      at::Tensor w = next(), sc = next();
      head_ = make_qlinear(w, sc, next(), exact_ ? head_act : qact(ints[5]), head_zp, 0, 1.0,
                           "head");
      cls_w_ = next_f(at::kFloat, "the classifier weight");
      cls_b_ = next_f(at::kFloat, "the classifier bias");
    }
    TORCH_CHECK_VALUE(ti == t.size(), "CpuEngineInt8: more tensors than the spec uses");
    if (!exact_) pack_float_parts();
    TORCH_CHECK_VALUE(head_.K == cin && cls_w_.dim() == 2 && cls_w_.size(1) == head_.N,
                      "CpuEngineInt8: head / classifier widths do not chain");
  }

  at::Tensor forward(const at::Tensor& x_in) {
    TORCH_CHECK_VALUE(x_in.dim() == 4 && x_in.size(1) == stem_w_.size(1) &&
                          x_in.is_floating_point() && x_in.device().is_cpu(),
                      "CpuEngineInt8: input must be a CPU float (N, ", stem_w_.size(1),
                      ", H, W) tensor");
    // as FusedEfficientNet.forward_eager: float32 channels_last
    const at::Tensor x = x_in.to(at::kFloat, false, false, at::MemoryFormat::ChannelsLast);
    const int64_t N = x.size(0);
    if (N == 0) return at::empty({0, cls_w_.size(0)}, at::kFloat);
    std::lock_guard<std::mutex> lock(mu_);
    prof_.start();
    at::Tensor y;  // the float stem output (exact mode; fast: P.sf)
    Plan* pp = nullptr;
    if (exact_) {  // F.conv2d (+ F.pad for uneven padding) and bias_act, as FusedStem
      int64_t p[4];
      stem_geo_.pads(x.size(2), x.size(3), p);
      const int64_t s = stem_geo_.s;
      if (p[0] == p[1] && p[2] == p[3]) {
        y = at::conv2d(x, stem_w_, {}, {s, s}, {p[2], p[0]});
      } else {
        y = at::conv2d(at::constant_pad_nd(x, {p[0], p[1], p[2], p[3]}, 0), stem_w_, {}, {s, s});
      }
      y = bias_act_cpu(y.contiguous(at::MemoryFormat::ChannelsLast), stem_b_,
                       act_name(stem_act_))
              .contiguous(at::MemoryFormat::ChannelsLast);
      pp = &plan_for(N, y.size(2), y.size(3));
    } else {
      int64_t pt, pl, OH, OW;
      stem_geo_.out(x.size(2), x.size(3), &pt, &pl, &OH, &OW);
      pp = &plan_for(N, OH, OW);
      run_stem(x, pt, pl, OH, OW, pp->sf.data_ptr<float>());
    }
    Plan& P = *pp;
    int64_t h = P.H, w = P.W;
    uint8_t* bufs[2] = {P.io[0].data_ptr<uint8_t>(), P.io[1].data_ptr<uint8_t>()};
    const float* stem_out = exact_ ? y.data_ptr<float>() : P.sf.data_ptr<float>();
    if (stem_q_) quantize_rows(stem_out, N * h * w * stem_w_.size(0), stem_inv_, stem_zp_, bufs[0]);
    prof_.mark("stem");
    int cur = 0;
    for (size_t bi = 0; bi < blocks_.size(); ++bi) {
      const QBlock& B = blocks_[bi];
      const Shape& sh = P.shapes[bi];
      const uint8_t* in = bufs[cur];
      uint8_t* out = bufs[1 - cur];
      const int64_t rows_in = N * h * w, hw = sh.oh * sh.ow;
      uint8_t* dwo = P.e2.data_ptr<uint8_t>();  // the depthwise output (u8 rows of C)
      float* psum = P.psum.data_ptr<float>();
      at::Tensor pool;
      if (B.dw_float) {  // FloatDWConvQuantOut on the float stem output
        if (exact_) {
          const std::vector<int64_t> pads = pads_of(B.geo, h, w);
          auto [yd, pd] = dwconv_bias_act_cpu(y, B.dw_w, B.dw_bias, B.geo.s, pads,
                                              act_name(B.dw_act), B.has_se);
          quantize_rows(yd.data_ptr<float>(), yd.numel(), B.dw_inv, B.dw_out_zp, dwo);
          pool = pd;
        } else {
          DwArgs d;
          d.x = P.sf.data_ptr<float>(), d.y = P.df.data_ptr<float>(), d.N = N, d.H = h, d.W = w;
          d.C = B.C, d.OH = sh.oh, d.OW = sh.ow, d.k = B.geo.k, d.s = B.geo.s, d.pt = sh.pt;
          d.pl = sh.pl, d.w = B.fdw_w.data_ptr<float>(), d.bias = B.fdw_b.data_ptr<float>();
          d.act = B.dw_act, d.psum = B.has_se ? psum : nullptr;
          const int64_t grain = std::max<int64_t>(
              1, 16384 / std::max<int64_t>(sh.ow * B.geo.k * B.geo.k * 64, 1));
          parallel(dw_tasks(d), grain, [&](int64_t b0, int64_t b1) { dw_range(d, b0, b1); });
          quantize_rows(P.df.data_ptr<float>(), N * hw * B.C, B.dw_inv, B.dw_out_zp, dwo);
          if (B.has_se) fast_pool(psum, N, sh.oh, B.C, round16(B.C), hw, P);
        }
        prof_.mark("dw_float", static_cast<int64_t>(bi));
      } else {
        QDwArgs d;
        d.W = w, d.C = B.C, d.OW = sh.ow, d.k = B.geo.k, d.s = B.geo.s;
        d.pl = static_cast<int>(sh.pl);
        d.w = B.dw_w.data_ptr<float>(), d.scale = B.dw_scale.data_ptr<float>();
        d.bias = B.dw_bias.data_ptr<float>(), d.act = B.dw_act, d.out = QOut::U8;
        d.inv = B.dw_inv, d.zp = static_cast<float>(B.dw_out_zp), d.fast = !exact_;
        const bool fused = B.has_expand && h * w * B.C * 4 >= fuse_bytes_;
        float* ps = B.has_se ? psum : nullptr;
        if (fused) {  // expand + depthwise (+ project without SE) over row bands
          run_fused(B, d, N, h, w, sh, in, dwo, ps, B.has_se ? nullptr : out);
          prof_.mark(B.has_se ? "expand_dw" : "block", static_cast<int64_t>(bi));
          if (!B.has_se) {
            cur = 1 - cur, h = sh.oh, w = sh.ow;
            continue;
          }
        } else {
          const void* src = in;
          int64_t xs = 1;  // bytes per input element
          if (B.has_expand) {  // requantised to the float (q - zp) rows the depthwise reads
            run_qgemm(B.expand, in, rows_in, B.expand.K, QOut::OFF, P.e1.data_ptr<float>(),
                      B.C, nullptr, P);
            src = P.e1.data_ptr<float>(), xs = 4, d.x_form = 0;
            prof_.mark("expand", static_cast<int64_t>(bi));
          } else {
            d.x_form = 2, d.x_off = static_cast<float>(128 + B.dw_in_zp);
          }
          run_dw(d, src, xs, N, h, sh, dwo, ps);
          prof_.mark("dw", static_cast<int64_t>(bi));
        }
        if (B.has_se && exact_) {
          pool = at::empty({N, B.C}, at::kFloat);
          pool_rows64(psum, N, sh.oh, B.C, B.C, static_cast<double>(hw),
                      pool.data_ptr<float>(), B.C);
        } else if (B.has_se) {
          fast_pool(psum, N, sh.oh, B.C, B.C, hw, P);
        }
      }
      const float* gate = nullptr;
      at::Tensor g;
      int64_t ldg = B.C;
      if (B.has_se && exact_) {
        g = se_gate_cpu(pool, B.w1, B.b1, B.w2, B.b2).contiguous();
        gate = g.data_ptr<float>();
        prof_.mark("se", static_cast<int64_t>(bi));
      } else if (B.has_se) {
        gate = fast_se(B, N, P), ldg = round16(B.C);
        prof_.mark("se", static_cast<int64_t>(bi));
      }
      run_qgemm(B.project, dwo, N * hw, B.C, QOut::U8, out, B.project.N, gate, P,
                B.residual ? in : nullptr, B.res_zp, B.res_scale, hw, ldg);
      prof_.mark("project", static_cast<int64_t>(bi));
      cur = 1 - cur, h = sh.oh, w = sh.ow;
    }
    // head (pool_only) and classifier, as QuantizedPointwise + FrozenLinear
    const int64_t hw = h * w, Np = round16(head_.N);
    float* hrows = P.head.data_ptr<float>();
    run_qgemm(head_, bufs[cur], N * hw, head_.K, QOut::F32, hrows, Np, nullptr, P);
    at::Tensor logits;
    if (exact_) {
      at::Tensor pooled = at::empty({N, head_.N}, at::kFloat);
      pool_chunks(hrows, N, hw, head_.N, Np, pooled.data_ptr<float>(), head_.N);
      prof_.mark("head");
      logits = at::linear(pooled, cls_w_, cls_b_);
    } else {
      float* pooled = P.pooled.data_ptr<float>();
      pool_rows(hrows, N, hw, head_.N, Np, static_cast<float>(hw), pooled, Np);
      prof_.mark("head");
      logits = at::empty({N, cls_.N}, at::kFloat);
      GemmArgs c;
      c.M = N, c.K = cls_.K, c.N = cls_.N, c.a = pooled, c.lda = Np;
      c.b = cls_.packed.data_ptr(), c.b_dt = DT::F32, c.bias = cls_.bias.data_ptr<float>();
      c.y = logits.data_ptr<float>(), c.ldy = cls_.N, c.y_dt = DT::F32;
      run_f32(c);
    }
    prof_.mark("classifier");
    return logits;
  }

  void set_profile(bool on) { prof_.on = on; }
  std::string isa() const { return "avx512"; }  // the kernels' ISA level (AVX-512 VNNI)
  // The 1x1 layers on AMX-INT8 (on) or VNNI (off); returns the old setting.
  bool set_amx(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK_VALUE(!on || int8_amx_supported(), "CpuEngineInt8: this CPU (or kernel) has no ",
                      "AMX-INT8");
    const bool old = amx_;
    amx_ = on;
    return old;
  }
  // Blocks whose expanded tensor (float32 bytes per sample) is at least this run fused;
  // returns the old threshold (tests force both paths).
  int64_t set_fuse_bytes(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t old = fuse_bytes_;
    fuse_bytes_ = bytes;
    return old;
  }
  std::vector<std::string> profile_names() {
    std::lock_guard<std::mutex> lock(mu_);
    return prof_.names;
  }
  std::vector<double> profile_us() {
    std::lock_guard<std::mutex> lock(mu_);
    return prof_.us;
  }
  // Fills the workspace of the last input shape with `value` bytes (tests: 0xff / NaN floats,
  // so that a read of anything a layer did not write shows). No-op before the first forward.
  void fill_workspace(double value) {
    std::lock_guard<std::mutex> lock(mu_);
    if (plan_.N < 0) return;
    for (at::Tensor* t : {&plan_.io[0], &plan_.io[1], &plan_.e1, &plan_.e2, &plan_.a,
                          &plan_.psum, &plan_.head, &plan_.sf, &plan_.df, &plan_.pooled,
                          &plan_.s1, &plan_.gate}) {
      if (t->scalar_type() == at::kFloat) {
        std::fill_n(t->data_ptr<float>(), t->numel(), static_cast<float>(value));
      } else {
        std::memset(t->data_ptr(), 0xff, static_cast<size_t>(t->numel()));
      }
    }
  }
  std::string describe() const {
    std::ostringstream os;
    os << "CpuEngineInt8(int8, avx512_vnni" << (amx_ ? "+amx" : "") << ", "
       << (exact_ ? "exact" : "fast") << ", "
       << blocks_.size() << " blocks)";
    return os.str();
  }

 private:
  using Shape = OutShape;
  struct Plan {
    int64_t N = -1, H = -1, W = -1;
    std::vector<Shape> shapes;
    at::Tensor io[2], e1, e2, a, psum, head;
    at::Tensor sf, df, pooled, s1, gate;  // fast mode: stem / float dw output, SE vectors
  };

  static std::vector<int64_t> pads_of(const Geo& g, int64_t H, int64_t W) {
    int64_t p[4];
    g.pads(H, W, p);
    return {p[0], p[1], p[2], p[3]};
  }

  // The workspace for a stem output of N x H x W.
  Plan& plan_for(int64_t N, int64_t H, int64_t W) {
    Plan& p = plan_;
    if (p.N == N && p.H == H && p.W == W) return p;
    Plan q;
    q.N = N, q.H = H, q.W = W;
    int64_t h = H, w = W, cin = stem_w_.size(0);
    int64_t io = N * h * w * cin, e1 = 1, e2 = 1, a = N * h * w * qpacked_k(cin), ps = 1;
    for (const QBlock& B : blocks_) {
      Shape s;
      B.geo.out(h, w, &s.pt, &s.pl, &s.oh, &s.ow);
      TORCH_CHECK_VALUE(!B.residual || (s.oh == h && s.ow == w), "CpuEngineInt8: a residual ",
                        "block maps ", h, "x", w, " to ", s.oh, "x", s.ow);
      if (B.has_expand) e1 = std::max(e1, N * h * w * B.C);
      e2 = std::max(e2, N * s.oh * s.ow * B.C);
      a = std::max({a, N * h * w * qpacked_k(cin), N * s.oh * s.ow * qpacked_k(B.C)});
      ps = std::max(ps, N * s.oh * round16(B.C));  // the float depthwise: stride Cp
      h = s.oh, w = s.ow, cin = B.project.N;
      io = std::max(io, N * h * w * cin);
      q.shapes.push_back(s);
    }
    a = std::max(a, N * h * w * qpacked_k(head_.K));
    const auto u8 = at::TensorOptions().dtype(at::kByte);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    // + 64 bytes: a GEMM reads its A rows in whole groups of 4 bytes
    q.io[0] = at::empty({io + 64}, u8), q.io[1] = at::empty({io + 64}, u8);
    q.e1 = at::empty({e1}, f32), q.e2 = at::empty({e2 + 64}, u8), q.a = at::empty({a + 64}, u8);
    q.psum = at::empty({ps}, f32);
    q.head = at::empty({N * h * w * round16(head_.N)}, f32);
    const int64_t stem_c = stem_w_.size(0), cmax = std::max(round16(head_.N), cmax_);
    q.sf = at::empty({exact_ ? 0 : N * H * W * stem_c}, f32);
    q.df = at::empty({exact_ || !blocks_[0].dw_float ? 0 : N * df_elems(H, W)}, f32);
    q.pooled = at::empty({N * cmax}, f32), q.gate = at::empty({N * cmax}, f32);
    q.s1 = at::empty({N * smax_}, f32);
    plan_ = std::move(q);
    return plan_;
  }

  // The fused pass (as the float engine's run_fused): each thread walks a contiguous range of
  // output rows (n, oh) keeping a ring of the k expanded input rows they need (float (q - zp)
  // rows, the depthwise's input form), computes each expanded row once (plus the k - s halo
  // rows at the start of its range) and runs the depthwise row from the ring. Without SE
  // (`out` set) the depthwise row (u8) goes straight into the project GEMM (+ residual).
  void run_fused(const QBlock& B, const QDwArgs& d0, int64_t N, int64_t H, int64_t W,
                 const Shape& sh, const uint8_t* in, uint8_t* dwo, float* psum, uint8_t* out) {
    const int64_t C = B.C, K = B.expand.K, OH = sh.oh, OW = sh.ow, Kq = qpacked_k(C);
    const int k = B.geo.k;
    QDwArgs d = d0;
    d.x_form = 0;
    parallel(N * OH, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> ring(static_cast<size_t>(k * W * C));
      std::vector<uint8_t> row(static_cast<size_t>(out != nullptr ? OW * Kq + 64 : 0));
      std::vector<uint8_t> xin;  // the input row with K rounded up to 4 (odd widths)
      if (K % 4 != 0) xin.resize(static_cast<size_t>(W * qpacked_k(K) + 64));
      const auto expand_row = [&](int64_t n, int64_t ih, char* slot, bool fresh) -> const void* {
        if (fresh) {
          QGemmArgs g;
          g.M = W, g.K = K, g.N = C, g.a = in + (n * H + ih) * W * K, g.lda = K;
          if (K % 4 != 0) {
            qprep_rows(g.a, true, W, K, K, 0, nullptr, xin.data(), qpacked_k(K));
            g.a = xin.data(), g.lda = qpacked_k(K);
          }
          set_weights(g, B.expand);
          g.y = slot, g.ldy = C, g.out = QOut::OFF;
          qgemm_range(g, 0, qgemm_tiles(g));
        }
        return slot;
      };
      ring_rows(r0, r1, OH, H, k, d.s, sh.pt, reinterpret_cast<char*>(ring.data()), W * C * 4,
                expand_row, [&](int64_t r, const void* const* rows) {
        float* ps = psum != nullptr ? psum + r * C : nullptr;
        if (out == nullptr) {
          qdw_row(d, rows, dwo + r * OW * C, ps);
          return;
        }
        qdw_row(d, rows, row.data(), ps);
        QGemmArgs g;
        g.M = OW, g.K = C, g.N = B.project.N, g.a = row.data(), g.lda = C;
        if (C % 4 != 0) {  // re-lay the row with K rounded up to 4 (in place, from the end)
          for (int64_t p = OW - 1; p >= 0; --p) {
            std::memmove(row.data() + p * Kq, row.data() + p * C, static_cast<size_t>(C));
            std::memset(row.data() + p * Kq + C, 0, static_cast<size_t>(Kq - C));
          }
          g.lda = Kq;
        }
        set_weights(g, B.project);
        const int64_t o = r * OW * B.project.N;
        if (B.residual) {
          g.res = in + o, g.ldr = B.project.N, g.res_u8 = true;
          g.res_zp = B.res_zp, g.res_scale = B.res_scale;
        }
        g.y = out + o, g.ldy = B.project.N, g.out = QOut::U8;
        qgemm_range(g, 0, qgemm_tiles(g));
      });
    });
  }

  // The depthwise over whole tensors: output rows over ATen's threads.
  void run_dw(const QDwArgs& d, const void* src, int64_t xs, int64_t N, int64_t H,
              const Shape& sh, uint8_t* dwo, float* psum) {
    const int64_t OH = sh.oh, OW = sh.ow, C = d.C, W = d.W, k = d.k;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(OW * C * k * k, 1));
    parallel(N * OH, grain, [&](int64_t r0, int64_t r1) {
      const void* rows[kDwMaxK];
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / OH, oh = r % OH;
        for (int kh = 0; kh < k; ++kh) {
          const int64_t ih = oh * d.s - sh.pt + kh;
          rows[kh] = ih < 0 || ih >= H ? nullptr
                                       : static_cast<const char*>(src) + (n * H + ih) * W * C * xs;
        }
        qdw_row(d, rows, dwo + r * OW * C, psum != nullptr ? psum + r * C : nullptr);
      }
    });
  }

  void set_weights(QGemmArgs& q, const QLinear& L) const {
    q.b = reinterpret_cast<const int8_t*>(L.packed.data_ptr());
    q.comp = L.comp.data_ptr<int32_t>();
    q.scale = L.scale.data_ptr<float>(), q.bias = L.bias.data_ptr<float>(), q.act = L.act;
    q.fast = !exact_;
    q.inv = L.inv, q.zp = static_cast<float>(L.out_zp);
    q.amx_b = amx_ && L.amx.defined() ? reinterpret_cast<const int8_t*>(L.amx.data_ptr())
                                       : nullptr;
  }

  void quantize_rows(const float* x, int64_t n, float inv, int32_t zp, uint8_t* out) {
    parallel(n, 65536, [&](int64_t b, int64_t e) {
      quantize_f32(x + b, e - b, inv, static_cast<float>(zp), true, out + b);
    });
  }

  // One int8 1x1 layer over M rows of K u8 values (row stride K): through the A buffer when a
  // gate is applied (per sample of hw rows) or K is not a multiple of 4; output in `form`.
  void run_qgemm(const QLinear& L, const uint8_t* x, int64_t M, int64_t K, QOut form, void* y,
                 int64_t ldy, const float* gate, Plan& P, const uint8_t* res = nullptr,
                 int32_t res_zp = 0, float res_scale = 0.0f, int64_t hw = 1, int64_t ldg = 0) {
    QGemmArgs q;
    q.M = M, q.K = K, q.N = L.N, q.a = x, q.lda = K;
    set_weights(q, L);
    if (res != nullptr) {
      q.res = res, q.ldr = L.N, q.res_u8 = true, q.res_zp = res_zp, q.res_scale = res_scale;
    }
    q.y = y, q.ldy = ldy, q.out = form;
    if (gate == nullptr && K % 4 == 0) {
      const int64_t tiles = qgemm_tiles(q);
      parallel(tiles, std::max<int64_t>(1, 65536 / std::max<int64_t>(8 * 32 * K, 1)),
               [&](int64_t t0, int64_t t1) { qgemm_range(q, t0, t1); });
      return;
    }
    // The A rows through the buffer (gate and u8 shift, or K rounded up to 4): each task preps
    // a band of rows and runs the GEMM on it at once (one parallel region, not two: with
    // threads that wait in barriers, each region costs).
    const int64_t Kq = qpacked_k(K), band = 48;
    const size_t ys = form == QOut::F32 || form == QOut::OFF ? 4 : 1;
    uint8_t* a = P.a.data_ptr<uint8_t>();
    parallel((M + band - 1) / band, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * band, r1 = std::min(M, r0 + band);
        for (int64_t r = r0; r < r1;) {  // rows of one sample share a gate
          const int64_t n = r / hw, e = std::min(r1, (n + 1) * hw);
          qprep_rows(x + r * K, true, e - r, K, K, L.in_zp,
                     gate != nullptr ? gate + n * ldg : nullptr, a + r * Kq, Kq);
          r = e;
        }
        QGemmArgs g = q;
        g.M = r1 - r0, g.a = a + r0 * Kq, g.lda = Kq;
        g.y = static_cast<char*>(y) + r0 * ldy * static_cast<int64_t>(ys);
        if (res != nullptr) g.res = res + r0 * L.N;
        qgemm_range(g, 0, qgemm_tiles(g));
      }
    });
  }

  // ---- fast mode: the float parts on the float engine's kernels ----
  void pack_float_parts() {
    const int64_t Cout = stem_w_.size(0), Cin = stem_w_.size(1), k = stem_geo_.k;
    const int64_t K = k * k * Cin;
    at::Tensor wk = stem_w_.permute({0, 2, 3, 1}).reshape({Cout, K}).contiguous();
    stem_lin_ = make_linear(wk, stem_b_, DT::F32, stem_act_, "stem");
    cls_ = make_linear(cls_w_, cls_b_, DT::F32, EAct::Identity, "classifier");
    for (QBlock& B : blocks_) {
      cmax_ = std::max(cmax_, round16(B.C));
      if (B.dw_float) {
        B.fdw_w = pack_dw_taps(B.dw_w);
        B.fdw_b = pad16(B.dw_bias);
      }
      if (B.has_se) {
        B.fc1 = make_linear(B.w1, B.b1, DT::F32, EAct::SiLU, "se fc1");
        B.fc2 = make_linear(B.w2, B.b2, DT::F32, EAct::Sigmoid, "se fc2");
        smax_ = std::max(smax_, round16(B.fc1.N));
      }
    }
  }

  // Elements per sample of the float first depthwise output, for an H x W stem output.
  int64_t df_elems(int64_t H, int64_t W) const {
    int64_t pt, pl, oh, ow;
    blocks_[0].geo.out(H, W, &pt, &pl, &oh, &ow);
    return oh * ow * blocks_[0].C;
  }

  // The stem as per-row im2col + float GEMM (+ bias + act) into float32 NHWC rows.
  void run_stem(const at::Tensor& x, int64_t pt, int64_t pl, int64_t OH, int64_t OW, float* out) {
    const int64_t N = x.size(0), H = x.size(2), W = x.size(3), Ci = x.size(1);
    const int k = stem_geo_.k, s = stem_geo_.s;
    const int64_t Kp = stem_lin_.K;
    const float* xp = x.data_ptr<float>();
    parallel(N * OH, 1, [&](int64_t b, int64_t e) {
      std::vector<float> col(static_cast<size_t>(OW * Kp));
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / OH, oh = row % OH;
        im2col_row(xp + n * H * W * Ci, H, W, Ci, k, s, oh * s - pt, pl, OW, Kp, col.data());
        GemmArgs g;
        g.M = OW, g.K = Kp, g.N = stem_lin_.N, g.a = col.data(), g.lda = Kp;
        g.b = stem_lin_.packed.data_ptr(), g.b_dt = DT::F32;
        g.bias = stem_lin_.bias.data_ptr<float>();
        g.y = out + row * OW * stem_lin_.N, g.ldy = stem_lin_.N, g.y_dt = DT::F32;
        g.act = stem_lin_.act;
        gemm_range(g, 0, gemm_tiles(g));
      }
    });
  }

  // The SE squeeze from per-row partial sums (row stride ldp) into P.pooled (stride Cp).
  void fast_pool(const float* psum, int64_t N, int64_t R, int64_t C, int64_t ldp, int64_t hw,
                 Plan& P) {
    pool_rows(psum, N, R, C, ldp, static_cast<float>(hw), P.pooled.data_ptr<float>(),
              round16(C));
  }

  // SE excite on P.pooled: fc1 + SiLU, fc2 + sigmoid (float GEMMs) -> P.gate (stride Cp).
  float* fast_se(const QBlock& B, int64_t N, Plan& P) {
    const int64_t Cp = round16(B.C), Sp = round16(B.fc1.N);
    GemmArgs f1;
    f1.M = N, f1.K = B.C, f1.N = B.fc1.N, f1.a = P.pooled.data_ptr<float>(), f1.lda = Cp;
    f1.b = B.fc1.packed.data_ptr(), f1.bias = B.fc1.bias.data_ptr<float>();
    f1.y = P.s1.data_ptr<float>(), f1.ldy = Sp, f1.act = B.fc1.act;
    run_f32(f1);
    GemmArgs f2;
    f2.M = N, f2.K = B.fc1.N, f2.N = B.C, f2.a = P.s1.data_ptr<float>(), f2.lda = Sp;
    f2.b = B.fc2.packed.data_ptr(), f2.bias = B.fc2.bias.data_ptr<float>();
    f2.y = P.gate.data_ptr<float>(), f2.ldy = Cp, f2.act = EAct::Sigmoid;
    run_f32(f2);
    return P.gate.data_ptr<float>();
  }

  static void run_f32(const GemmArgs& g) {
    parallel(gemm_tiles(g), std::max<int64_t>(1, 65536 / std::max<int64_t>(256 * g.K, 1)),
             [&](int64_t b, int64_t e) { gemm_range(g, b, e); });
  }

  // The int8 layers' act: SiLU fast unless exact.
  EAct qact(int64_t code) const {
    const EAct a = act_from(code);
    return a == EAct::SiLU && !exact_ ? kSiLUFast : a;
  }

  bool exact_ = false;
  bool amx_ = int8_amx_default();
  Linear stem_lin_, cls_;
  int64_t cmax_ = 16, smax_ = 16;
  Profile prof_;
  int64_t fuse_bytes_ = int64_t{1} << 20;  // as the float engine's kFuseBytes
  Geo stem_geo_;
  EAct stem_act_ = EAct::Identity;
  bool stem_q_ = true;
  int32_t stem_zp_ = 0;
  float stem_inv_ = 1.0f;
  at::Tensor stem_w_, stem_b_, cls_w_, cls_b_;
  QLinear head_;
  std::vector<QBlock> blocks_;
  std::mutex mu_;
  Plan plan_;
};

}  // namespace effnet::engine

TORCH_LIBRARY_FRAGMENT(effnet, m) {
  using effnet::engine::CpuEngineInt8;
  auto c = m.class_<CpuEngineInt8>("CpuEngineInt8")
               .def(torch::init<std::vector<at::Tensor>, std::vector<int64_t>,
                                std::vector<double>>())
               .def("set_amx", &CpuEngineInt8::set_amx);
  effnet::engine::def_engine_methods(c);
}
