// The CPU engine: a whole fused EfficientNet forward in C++ (torch.classes.effnet.CpuEngine).
//
// Built once from a FusedEfficientNet's folded weights (effnet_kernels/cpu_engine.py encodes
// them: see `CpuEngine(tensors, ints)` below), it prepacks every 1x1 conv / linear weight into
// the panel layout of the AVX-512 GEMM (engine_kernels.h), transposes the depthwise weights to
// [k*k][C], and runs the forward on NHWC buffers it owns:
//   stem: k x k conv as a per-row im2col + GEMM (+ bias + act)
//   per MBConv: [expand GEMM + act] -> depthwise + act + SE row sums -> [SE: pool, fc1 + SiLU,
//               fc2 + sigmoid on the pooled rows; the gate scales the depthwise output in place
//               or, in float32 engines when that is cheaper (HW > Cout), is folded into a
//               per-sample copy of the projection's packed weights] -> project GEMM (+ residual);
//               expand + depthwise (+ project) fused over row bands for large tensors
//   head GEMM + act -> mean pool -> classifier GEMM -> logits.
// No Python and no dispatcher per layer: the activations live in a workspace kept per input
// shape (a mutex serialises concurrent forwards of one engine); the only allocations per forward
// are the fused pass's row rings and the stem's im2col rows, per thread. Each layer is
// spread over at::parallel_for (so torch.set_num_threads is respected, and nothing else runs
// threads at the same time). float32, or bfloat16 activations/weights with float32
// accumulation (the SE FCs stay float32). Needs AVX-512 (bf16: AVX512_BF16), or for float32
// AVX2 + FMA (engine_kernels_avx2.cpp), whichever the active CPU ISA level allows.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "../common/cpu_isa.h"
#include "engine_amx.h"
#include "engine_kernels.h"
#include "engine_util.h"

namespace effnet::engine {
namespace {

struct Depthwise {
  at::Tensor w, bias;  // float32 [k*k][round16(C)], [round16(C)]
  int64_t C = 0;
  Geo geo;
  EAct act = EAct::Identity;
};

struct Block {
  bool has_expand = false, has_se = false, residual = false;
  Linear expand, fc1, fc2, project;
  Depthwise dw;
};

Depthwise make_dw(const at::Tensor& w, const at::Tensor& b, Geo geo, EAct act) {
  TORCH_CHECK_VALUE(w.dim() == 4 && w.size(1) == 1 && w.size(2) == geo.k && w.size(3) == geo.k &&
                        b.dim() == 1 && b.size(0) == w.size(0),
                    "CpuEngine: depthwise weight (C, 1, k, k) and bias (C,) expected");
  TORCH_CHECK_VALUE(geo.k <= kDwMaxK, "CpuEngine: depthwise kernels up to ", kDwMaxK, "x",
                    kDwMaxK, ", got ", geo.k);
  Depthwise d;
  d.C = w.size(0);
  d.geo = geo;
  d.act = act;
  d.w = pack_dw_taps(w);
  d.bias = pad16(b);
  return d;
}

// AMX for this process's bfloat16 engines: the CPU has it, Linux granted it, and the
// environment does not say EFFNET_CPU_AMX=0. (CpuEngine.set_amx overrides it per engine.)
bool amx_default() { return amx_env_allows() && amx_supported(); }

// Runs a whole GEMM over ATen's threads; bfloat16 GEMMs of >= 16 rows on AMX when `amx`.
void run_gemm(GemmArgs g, bool amx, bool avx2) {
  g.amx = amx && g.b_dt == DT::BF16 && g.M >= 16;
  g.avx2 = avx2;
  const int64_t tiles = gemm_tiles(g);
  // ~8 x 32 x K MACs a tile; below ~64 K MACs of work a chunk is not worth a thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(256 * g.K, 1));
  parallel(tiles, grain, [&](int64_t b, int64_t e) { gemm_range(g, b, e); });
}

size_t dt_size(DT dt) { return dt == DT::F32 ? 4 : 2; }

// A block's expand + depthwise run fused (run_fused) when its expanded tensor, per sample, is at
// least this large counted in float32 (the fused pass keeps its rows in float32; it would not
// stay in L2 between two passes); smaller ones run as two whole-tensor passes in the activation
// dtype, which parallelise better on few rows (no halo recompute). Measured: NOTES.md.
// CpuEngine.set_fuse_bytes changes it (tests force both paths).
constexpr int64_t kFuseBytes = 1 << 20;

}  // namespace

class CpuEngine : public torch::CustomClassHolder {
 public:
  // ints: [1 (format), dtype (0 float32, 1 bfloat16), blocks, stem act, head act,
  //        stem geo (k, s, mode, l, r, t, b),
  //        per block: has_expand, expand act, dw act, has_se, se act, residual, dw geo (7)]
  // tensors: stem w (Cout, Cin, k, k), stem b; per block: [expand w (N, K), b], dw w (C,1,k,k),
  //          dw b, [se w1 (S, C), b1, w2 (C, S), b2], project w, b; head w, b; classifier w, b.
  CpuEngine(std::vector<at::Tensor> t, std::vector<int64_t> ints) {
    TORCH_CHECK_VALUE(ints.size() >= 12 && ints[0] == 1, "CpuEngine: unknown spec format");
    for (const at::Tensor& x : t)  // read on the host below: CPU floats only
      TORCH_CHECK_VALUE(x.defined() && x.device().is_cpu() && x.is_floating_point() &&
                            x.has_storage(),
                        "CpuEngine: every weight must be a CPU float tensor");
    const bool bf16 = ints[1] == 1;
    // The kernels for the active CPU ISA level (EFFNET_CPU_ISA / set_cpu_isa; the best this CPU
    // runs by default): AVX-512 (bfloat16: with AVX512_BF16), else AVX2 + FMA for float32.
    const cpu::Isa isa = cpu::active_isa();
    if (isa == cpu::Isa::AVX512 && kernels_supported(bf16)) {
      avx2_ = false;
    } else if (!bf16 && isa >= cpu::Isa::AVX2 && avx2::supported()) {
      avx2_ = true;
    } else {
      TORCH_CHECK(false, "CpuEngine: ", bf16 ? "bfloat16 needs AVX-512 with AVX512_BF16"
                                             : "float32 needs AVX2 + FMA",
                  " (active CPU ISA level '", cpu::isa_name(isa),
                  "'); use the per-op CPU kernels");
    }
    if (avx2_) amx_ = false;
    dt_ = bf16 ? DT::BF16 : DT::F32;
    const int64_t nblocks = ints[2];
    TORCH_CHECK_VALUE(nblocks >= 0 && ints.size() == 12 + static_cast<size_t>(nblocks) * 13,
                      "CpuEngine: spec length does not match ", nblocks, " blocks");
    size_t ii = 5, ti = 0;
    auto geo = [&] {
      Geo g;
      g.k = ints[ii], g.s = ints[ii + 1], g.mode = ints[ii + 2];
      g.l = ints[ii + 3], g.r = ints[ii + 4], g.t = ints[ii + 5], g.b = ints[ii + 6];
      TORCH_CHECK_VALUE(g.k >= 1 && g.s >= 1 && g.mode >= 0 && g.mode <= 2,
                        "CpuEngine: bad conv geometry");
      ii += 7;
      return g;
    };
    auto next = [&]() -> const at::Tensor& {
      TORCH_CHECK_VALUE(ti < t.size(), "CpuEngine: too few tensors for the spec");
      return t[ti++];
    };
    stem_geo_ = geo();
    {
      const at::Tensor& w = next();
      const at::Tensor& b = next();
      TORCH_CHECK_VALUE(w.dim() == 4 && w.size(2) == stem_geo_.k && w.size(3) == stem_geo_.k,
                        "CpuEngine: stem weight (Cout, Cin, k, k) expected");
      stem_cin_ = w.size(1);
      // im2col column order (kh, kw, ci); bfloat16 pads K to even with a zero column.
      const int64_t K = stem_geo_.k * stem_geo_.k * stem_cin_;
      stem_k_ = bf16 && K % 2 ? K + 1 : K;
      at::Tensor wk = at::zeros({w.size(0), stem_k_}, at::kFloat);
      wk.narrow(1, 0, K).copy_(w.detach().to(at::kFloat).permute({0, 2, 3, 1}).reshape({-1, K}));
      stem_ = make_linear(wk, b, dt_, act_from(ints[3]), "stem");
    }
    for (int64_t i = 0; i < nblocks; ++i) {
      Block B;
      B.has_expand = ints[ii] != 0;
      const EAct ea = act_from(ints[ii + 1]), da = act_from(ints[ii + 2]);
      B.has_se = ints[ii + 3] != 0;
      const EAct sa = act_from(ints[ii + 4]);
      B.residual = ints[ii + 5] != 0;
      ii += 6;
      const Geo dg = geo();
      if (B.has_expand) {
        const at::Tensor& w = next();
        B.expand = make_linear(w, next(), dt_, ea, "expand");
      }
      {
        const at::Tensor& w = next();
        B.dw = make_dw(w, next(), dg, da);
      }
      if (B.has_se) {
        const at::Tensor& w1 = next();
        B.fc1 = make_linear(w1, next(), DT::F32, sa, "se fc1");
        const at::Tensor& w2 = next();
        B.fc2 = make_linear(w2, next(), DT::F32, EAct::Sigmoid, "se fc2");
        TORCH_CHECK_VALUE(B.fc1.K == B.dw.C && B.fc2.K == B.fc1.N && B.fc2.N == B.dw.C,
                          "CpuEngine: block ", i, ": SE widths do not match");
      }
      const at::Tensor& pw = next();
      B.project = make_linear(pw, next(), dt_, EAct::Identity, "project");
      const int64_t cin = i == 0 ? stem_.N : blocks_.back().project.N;
      TORCH_CHECK_VALUE((B.has_expand ? B.expand.K : B.dw.C) == cin &&
                            (!B.has_expand || B.expand.N == B.dw.C) && B.project.K == B.dw.C,
                        "CpuEngine: block ", i, ": channel counts do not chain");
      TORCH_CHECK_VALUE(!B.residual || (B.project.N == cin && B.dw.geo.s == 1),
                        "CpuEngine: block ", i, ": residual needs stride 1 and equal widths");
      blocks_.push_back(std::move(B));
    }
    {
      const at::Tensor& w = next();
      head_ = make_linear(w, next(), dt_, act_from(ints[4]), "head");
      const at::Tensor& cw = next();
      cls_ = make_linear(cw, next(), dt_, EAct::Identity, "classifier");
    }
    TORCH_CHECK_VALUE(ti == t.size(), "CpuEngine: more tensors than the spec uses");
    const int64_t last = blocks_.empty() ? stem_.N : blocks_.back().project.N;
    TORCH_CHECK_VALUE(head_.K == last && cls_.K == head_.N,
                      "CpuEngine: head / classifier widths do not chain");
  }

  at::Tensor forward(const at::Tensor& x_in) {
    TORCH_CHECK_VALUE(x_in.dim() == 4 && x_in.size(1) == stem_cin_ && x_in.is_floating_point() &&
                          x_in.device().is_cpu(),
                      "CpuEngine: input must be a CPU float (N, ", stem_cin_, ", H, W) tensor");
    const auto sdt = dt_ == DT::F32 ? at::kFloat : at::kBFloat16;
    // NHWC in the engine's dtype, in one pass (cast + layout change together); no copy when
    // the input already is.
    at::Tensor x = x_in;
    if (x_in.scalar_type() != sdt || !x_in.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      x = at::empty(x_in.sizes(), x_in.options().dtype(sdt).memory_format(
                                      at::MemoryFormat::ChannelsLast));
      x.copy_(x_in);
    }
    const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
    at::Tensor logits = at::empty({N, cls_.N}, at::kFloat);
    if (N == 0) return logits.to(sdt);
    std::lock_guard<std::mutex> lock(mu_);
    Plan& p = plan_for(N, H, W);
    const size_t es = dt_size(dt_);
    char* bufs[2] = {static_cast<char*>(p.io[0].data_ptr()), static_cast<char*>(p.io[1].data_ptr())};
    char* e1 = static_cast<char*>(p.e1.data_ptr());
    char* e2 = static_cast<char*>(p.e2.data_ptr());
    float* psum = p.psum.data_ptr<float>();
    float* pooled = p.pooled.data_ptr<float>();
    float* s1 = p.s1.data_ptr<float>();
    float* gate = p.gate.data_ptr<float>();

    prof_.start();
    int64_t h = p.stem_oh, w = p.stem_ow;
    run_stem(x, bufs[0], p);
    mark("stem");
    int cur = 0;
    for (size_t bi = 0; bi < blocks_.size(); ++bi) {
      const Block& B = blocks_[bi];
      const Shape& sh = p.shapes[bi];
      const int64_t rows_in = N * h * w, rows_out = N * sh.oh * sh.ow;
      const char* in = bufs[cur];
      char* out = bufs[1 - cur];
      DwArgs d;
      d.x = in, d.y = e2, d.dt = dt_, d.x_dt = dt_, d.N = N, d.H = h, d.W = w, d.C = B.dw.C;
      d.OH = sh.oh, d.OW = sh.ow, d.k = B.dw.geo.k, d.s = B.dw.geo.s, d.pt = sh.pt, d.pl = sh.pl;
      d.w = B.dw.w.data_ptr<float>(), d.bias = B.dw.bias.data_ptr<float>(), d.act = B.dw.act;
      d.psum = B.has_se ? psum : nullptr;
      d.avx2 = avx2_;
      const bool big = h * w * B.dw.C * 4 >= fuse_bytes_;  // the fused ring is float32
      if (big && (B.has_expand || !B.has_se)) {
        // expand + depthwise (+ project when there is no SE) in one pass over output rows
        run_fused(B, d, in, B.has_se ? nullptr : out);
        mark(B.has_se ? "expand_dw" : "block", bi);
        if (!B.has_se) {
          cur = 1 - cur, h = sh.oh, w = sh.ow;
          continue;
        }
      } else {
        if (B.has_expand) {
          GemmArgs g;
          g.M = rows_in, g.K = B.expand.K, g.N = B.expand.N, g.a = in, g.lda = B.expand.K;
          g.b = B.expand.packed.data_ptr(), g.b_dt = dt_;
          g.bias = B.expand.bias.data_ptr<float>();
          g.y = e1, g.ldy = B.expand.N, g.y_dt = dt_, g.act = B.expand.act;
          run_gemm(g, amx_, avx2_);
          d.x = e1;
          mark("expand", bi);
        }
        const int64_t dtasks = dw_tasks(d);
        const int64_t dgrain = std::max<int64_t>(
            1, 16384 / std::max<int64_t>(sh.ow * B.dw.geo.k * B.dw.geo.k * 64, 1));
        parallel(dtasks, dgrain, [&](int64_t b, int64_t e) { dw_range(d, b, e); });
        mark("dw", bi);
      }
      const int64_t hw = sh.oh * sh.ow, C = B.dw.C, Cp = round16(C);
      GemmArgs pj;
      pj.K = B.project.K, pj.N = B.project.N, pj.lda = C, pj.b = B.project.packed.data_ptr();
      pj.b_dt = dt_, pj.bias = B.project.bias.data_ptr<float>(), pj.ldy = pj.N, pj.y_dt = dt_;
      pj.act = EAct::Identity;
      if (B.has_se) {
        pool_rows(psum, N, sh.oh, C, Cp, static_cast<float>(hw), pooled, Cp, avx2_);
        GemmArgs f1;
        f1.M = N, f1.K = C, f1.N = B.fc1.N, f1.a = pooled, f1.lda = Cp;
        f1.b = B.fc1.packed.data_ptr(), f1.b_dt = DT::F32, f1.bias = B.fc1.bias.data_ptr<float>();
        f1.y = s1, f1.ldy = round16(B.fc1.N), f1.y_dt = DT::F32, f1.act = B.fc1.act;
        run_gemm(f1, amx_, avx2_);
        GemmArgs f2;
        f2.M = N, f2.K = B.fc1.N, f2.N = C, f2.a = s1, f2.lda = round16(B.fc1.N);
        f2.b = B.fc2.packed.data_ptr(), f2.b_dt = DT::F32, f2.bias = B.fc2.bias.data_ptr<float>();
        f2.y = gate, f2.ldy = Cp, f2.y_dt = DT::F32, f2.act = EAct::Sigmoid;
        run_gemm(f2, amx_, avx2_);
        mark("se", bi);
        const bool fold = dt_ == DT::F32 && hw > round16(pj.N);
        if (fold) {  // per sample: the gate scales that sample's packed weights
          float* fw = p.fold.data_ptr<float>();
          for (int64_t n = 0; n < N; ++n) {
            const int64_t panels = (pj.N + 15) / 16;
            parallel(panels, std::max<int64_t>(1, 8192 / std::max<int64_t>(C * 16, 1)),
                     [&](int64_t b, int64_t e) {
                       for (int64_t q = b; q < e; ++q)
                         fold_gate(B.project.packed.data_ptr<float>() + q * C * 16, C, 16,
                                   gate + n * Cp, fw + q * C * 16, avx2_);
                     });
            GemmArgs g = pj;
            g.M = hw, g.a = e2 + n * hw * C * es, g.b = fw, g.y = out + n * hw * pj.N * es;
            if (B.residual) g.res = in + n * hw * pj.N * es, g.ldr = pj.N;
            run_gemm(g, amx_, avx2_);
          }
          mark("project_folded", bi);
          cur = 1 - cur, h = sh.oh, w = sh.ow;
          continue;
        }
        // else: the gate scales the depthwise output in place (HW <= Cout: fewer multiplies)
        parallel(N * sh.oh, std::max<int64_t>(1, 16384 / std::max<int64_t>(sh.ow * C, 1)),
                 [&](int64_t b, int64_t e) {
                   for (int64_t r = b; r < e; ++r)
                     scale_rows(e2 + r * sh.ow * C * es, dt_, sh.ow, C, gate + r / sh.oh * Cp,
                                avx2_);
                 });
        mark("gate", bi);
      }
      GemmArgs g = pj;
      g.M = rows_out, g.a = e2, g.y = out;
      if (B.residual) g.res = in, g.ldr = pj.N;
      run_gemm(g, amx_, avx2_);
      mark("project", bi);
      cur = 1 - cur, h = sh.oh, w = sh.ow;
    }
    // head + pool + classifier
    {
      const int64_t hw = h * w;
      float* hs = p.head.data_ptr<float>();
      GemmArgs g;
      g.M = N * hw, g.K = head_.K, g.N = head_.N, g.a = bufs[cur], g.lda = head_.K;
      g.b = head_.packed.data_ptr(), g.b_dt = dt_, g.bias = head_.bias.data_ptr<float>();
      g.y = hs, g.ldy = round16(head_.N), g.y_dt = DT::F32, g.act = head_.act;
      run_gemm(g, amx_, avx2_);
      const int64_t ldh = round16(head_.N);
      pool_rows(hs, N, hw, head_.N, ldh, static_cast<float>(hw), pooled, ldh, avx2_);
      mark("head");
      GemmArgs c;
      c.M = N, c.K = cls_.K, c.N = cls_.N, c.lda = ldh;
      if (dt_ == DT::BF16) {
        uint16_t* pb = static_cast<uint16_t*>(p.pooled16.data_ptr());
        f32_to_bf16(pooled, pb, N * ldh);
        c.a = pb;
      } else {
        c.a = pooled;
      }
      c.b = cls_.packed.data_ptr(), c.b_dt = dt_, c.bias = cls_.bias.data_ptr<float>();
      c.y = logits.data_ptr<float>(), c.ldy = cls_.N, c.y_dt = DT::F32;
      run_gemm(c, amx_, avx2_);
      mark("classifier");
    }
    return dt_ == DT::F32 ? logits : logits.to(sdt);
  }

  // Per-layer wall times of each forward while profiling is on (set_profile(True)): labels
  // and microseconds of the last forward, for benchmarks/NOTES.md.
  void set_profile(bool on) { prof_.on = on; }
  // bfloat16 GEMMs on AMX (true: needs amx_supported(), else ValueError); returns the old.
  bool set_amx(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK_VALUE(!on || (amx_supported() && !avx2_),
                      "CpuEngine: this CPU (or kernel) has no AMX-BF16", avx2_ ? " (AVX2 engine)" : "");
    const bool old = amx_;
    amx_ = on;
    return old;
  }
  // Blocks whose expanded tensor (bytes per sample) is at least this run fused; returns the old.
  int64_t set_fuse_bytes(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t old = fuse_bytes_;
    fuse_bytes_ = bytes;
    return old;
  }
  // Fills the workspace of the last input shape with `value` (tests: NaN, so that a read of
  // anything a layer did not write shows in the output). No-op before the first forward.
  void fill_workspace(double value) {
    std::lock_guard<std::mutex> lock(mu_);
    Plan& p = plan_;
    if (p.N < 0) return;
    const float f = static_cast<float>(value);
    const at::BFloat16 h(f);
    for (at::Tensor* t : {&p.io[0], &p.io[1], &p.e1, &p.e2, &p.psum, &p.pooled, &p.pooled16, &p.s1,
                          &p.gate, &p.fold, &p.head}) {  // raw stores: also inference tensors
      if (t->scalar_type() == at::kFloat) {
        std::fill_n(t->data_ptr<float>(), t->numel(), f);
      } else {
        std::fill_n(t->data_ptr<at::BFloat16>(), t->numel(), h);
      }
    }
  }
  std::vector<std::string> profile_names() {
    std::lock_guard<std::mutex> lock(mu_);
    return prof_.names;
  }
  std::vector<double> profile_us() {
    std::lock_guard<std::mutex> lock(mu_);
    return prof_.us;
  }

  std::string describe() const {
    std::ostringstream os;
    os << "CpuEngine(" << (dt_ == DT::F32 ? "float32" : "bfloat16") << ", " << isa()
       << (dt_ == DT::BF16 && amx_ ? "+amx" : "") << ", "
       << blocks_.size() << " blocks)";
    return os.str();
  }

 private:
  using Shape = OutShape;
  struct Plan {
    int64_t N = -1, H = -1, W = -1, stem_pt = 0, stem_pl = 0, stem_oh = 0, stem_ow = 0;
    std::vector<Shape> shapes;
    at::Tensor io[2], e1, e2, psum, pooled, pooled16, s1, gate, fold, head;
  };

  Plan& plan_for(int64_t N, int64_t H, int64_t W) {
    Plan& p = plan_;
    if (p.N == N && p.H == H && p.W == W) return p;
    Plan q;
    q.N = N, q.H = H, q.W = W;
    stem_geo_.out(H, W, &q.stem_pt, &q.stem_pl, &q.stem_oh, &q.stem_ow);
    int64_t h = q.stem_oh, w = q.stem_ow;
    int64_t io = N * h * w * stem_.N, ex = 1, ps = 16, cmax = round16(head_.N), smax = 16,
            fold = 16;
    for (const Block& B : blocks_) {
      Shape s;
      B.dw.geo.out(h, w, &s.pt, &s.pl, &s.oh, &s.ow);
      TORCH_CHECK_VALUE(!B.residual || (s.oh == h && s.ow == w), "CpuEngine: a residual block ",
                        "maps ", h, "x", w, " to ", s.oh, "x", s.ow, " (its padding changes the size)");
      ex = std::max({ex, N * h * w * B.dw.C, N * s.oh * s.ow * B.dw.C});
      ps = std::max(ps, N * s.oh * round16(B.dw.C));
      cmax = std::max(cmax, round16(B.dw.C));
      if (B.has_se) smax = std::max(smax, round16(B.fc1.N));
      fold = std::max(fold, packed_elems(B.project.K, B.project.N, DT::F32));
      h = s.oh, w = s.ow;
      io = std::max(io, N * h * w * B.project.N);
      q.shapes.push_back(s);
    }
    const auto opt = at::TensorOptions().dtype(dt_ == DT::F32 ? at::kFloat : at::kBFloat16);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    q.io[0] = at::empty({io}, opt), q.io[1] = at::empty({io}, opt);
    q.e1 = at::empty({ex}, opt), q.e2 = at::empty({ex}, opt);
    q.psum = at::empty({ps}, f32), q.pooled = at::empty({N * cmax}, f32);
    q.pooled16 = at::empty({N * cmax}, opt);
    q.s1 = at::empty({N * smax}, f32), q.gate = at::empty({N * cmax}, f32);
    q.fold = at::empty({fold}, f32);
    q.head = at::empty({N * h * w * round16(head_.N)}, f32);
    plan_ = std::move(q);
    return plan_;
  }

  // The fused pass of a block (with an expand conv, or without SE): each thread walks a contiguous range of
  // output rows (n, oh) keeping a ring of the k expanded input rows they need (k x W x Cexp,
  // L2-sized), computes each expanded row once (plus the k - s halo rows at the start of its
  // range) and runs the depthwise row from the ring, so the expanded tensor never goes to
  // memory. Without SE (`out` set) the depthwise row goes to a row buffer and the project GEMM
  // (+ residual) writes the block output at once; with SE the depthwise output and its row sums
  // go to d.y / d.psum for the SE and the gated projection.
  void run_fused(const Block& B, const DwArgs& d, const char* in, char* out) {
    const size_t es = dt_size(dt_);
    // expanded rows in float32 (the depthwise converts nothing per tap); else the input's own
    const int64_t C = B.dw.C, rowbytes = d.W * C * 4;
    const int k = d.k;
    DwArgs dr = d;
    dr.x_dt = B.has_expand ? DT::F32 : dt_;
    parallel(d.N * d.OH, 1, [&](int64_t r0, int64_t r1) {
      std::unique_ptr<char[]> ring(B.has_expand ? new char[static_cast<size_t>(k * rowbytes)]
                                                : nullptr);
      std::unique_ptr<char[]> dwrow(
          out != nullptr ? new char[static_cast<size_t>(d.OW * C) * es] : nullptr);
      const auto row = [&](int64_t n, int64_t ih, char* slot, bool fresh) -> const void* {
        if (!B.has_expand)  // the block input's own rows
          return in + ((n * d.H + ih) * d.W * C) * static_cast<int64_t>(es);
        if (fresh) {
          GemmArgs g;
          g.M = d.W, g.K = B.expand.K, g.N = C, g.lda = B.expand.K;
          g.a = in + ((n * d.H + ih) * d.W * B.expand.K) * static_cast<int64_t>(es);
          g.b = B.expand.packed.data_ptr(), g.b_dt = dt_;
          g.bias = B.expand.bias.data_ptr<float>();
          g.y = slot, g.ldy = C, g.y_dt = DT::F32, g.act = B.expand.act;
          g.amx = amx_ && g.b_dt == DT::BF16 && g.M >= 16;
          g.avx2 = avx2_;
          gemm_range(g, 0, gemm_tiles(g));
        }
        return slot;
      };
      ring_rows(r0, r1, d.OH, d.H, k, d.s, d.pt, ring.get(), rowbytes, row,
                [&](int64_t r, const void* const* rows) {
        float* ps = d.psum != nullptr ? d.psum + r * round16(C) : nullptr;
        if (out == nullptr) {
          dw_row(dr, rows, static_cast<char*>(d.y) + r * d.OW * C * static_cast<int64_t>(es), ps);
          return;
        }
        dw_row(dr, rows, dwrow.get(), ps);
        GemmArgs g;
        g.M = d.OW, g.K = C, g.N = B.project.N, g.a = dwrow.get(), g.lda = C;
        g.b = B.project.packed.data_ptr(), g.b_dt = dt_, g.bias = B.project.bias.data_ptr<float>();
        const int64_t o = r * d.OW * B.project.N * static_cast<int64_t>(es);
        g.y = out + o, g.ldy = B.project.N, g.y_dt = dt_, g.act = EAct::Identity;
        if (B.residual) g.res = in + o, g.ldr = B.project.N;
        g.amx = amx_ && g.b_dt == DT::BF16 && g.M >= 16;
        g.avx2 = avx2_;
        gemm_range(g, 0, gemm_tiles(g));
      });
    });
  }

  void run_stem(const at::Tensor& x, char* out, const Plan& p) {
    const int64_t N = p.N, H = p.H, W = p.W, OH = p.stem_oh, OW = p.stem_ow, Ci = stem_cin_;
    const int k = stem_geo_.k, s = stem_geo_.s;
    const int64_t Kp = stem_k_;
    const size_t es = dt_size(dt_);
    parallel(N * OH, 1, [&](int64_t b, int64_t e) {
      std::vector<char> col(static_cast<size_t>(OW * Kp) * es);
      for (int64_t row = b; row < e; ++row) {
        const int64_t n = row / OH, oh = row % OH;
        if (es == 4) {
          im2col_row(static_cast<const float*>(x.data_ptr()) + n * H * W * Ci, H, W, Ci, k, s,
                     oh * s - p.stem_pt, p.stem_pl, OW, Kp, reinterpret_cast<float*>(col.data()));
        } else {
          im2col_row(static_cast<const uint16_t*>(x.data_ptr()) + n * H * W * Ci, H, W, Ci, k, s,
                     oh * s - p.stem_pt, p.stem_pl, OW, Kp,
                     reinterpret_cast<uint16_t*>(col.data()));
        }
        GemmArgs g;
        g.M = OW, g.K = Kp, g.N = stem_.N, g.a = col.data(), g.lda = Kp;
        g.b = stem_.packed.data_ptr(), g.b_dt = dt_, g.bias = stem_.bias.data_ptr<float>();
        g.y = out + (row * OW * stem_.N) * es, g.ldy = stem_.N, g.y_dt = dt_, g.act = stem_.act;
        g.amx = amx_ && g.b_dt == DT::BF16 && g.M >= 16;
        g.avx2 = avx2_;
        gemm_range(g, 0, gemm_tiles(g));
      }
    });
  }

  void mark(const char* what, int64_t index = -1) { prof_.mark(what, index); }

 public:
  // The kernels' ISA level, chosen at construction: "avx512" or "avx2".
  std::string isa() const { return avx2_ ? "avx2" : "avx512"; }

 private:
  Profile prof_;
  bool avx2_ = false;
  int64_t fuse_bytes_ = kFuseBytes;
  bool amx_ = amx_default();
  DT dt_ = DT::F32;
  Geo stem_geo_;
  int64_t stem_cin_ = 3, stem_k_ = 27;
  Linear stem_, head_, cls_;
  std::vector<Block> blocks_;
  std::mutex mu_;
  Plan plan_;
};

}  // namespace effnet::engine

TORCH_LIBRARY_FRAGMENT(effnet, m) {
  using effnet::engine::CpuEngine;
  auto c = m.class_<CpuEngine>("CpuEngine")
               .def(torch::init<std::vector<at::Tensor>, std::vector<int64_t>>())
               .def("set_amx", &CpuEngine::set_amx);
  effnet::engine::def_engine_methods(c);
}
