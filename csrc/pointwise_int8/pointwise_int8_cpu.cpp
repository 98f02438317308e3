// CPU implementation of effnet::pointwise_int8 (contract: pointwise_int8.h; exact arithmetic:
// effnet_kernels/reference.py::pointwise_int8): a straight port of the integer reference.
//
// A GEMM over the N*H*W NHWC pixel rows: per pixel, its Cin input values minus in_zp (the SE
// gate applied first, in x's own quantisation) as an int16 row, then per output channel one
// int16 x int16 -> int32 dot product with that channel's weight row (int16 copy of the weight,
// made once per call; the loop vectorises to multiply-add pairs), then the float32 epilogue
// (dequantise, bias, act, residual) and requantise, or the pool. Parallel over chunks of
// kChunk pixels of one sample; the pool is summed from per-chunk partials in a fixed order.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/cpu_isa.h"
#include "../engine/engine_int8.h"
#include "pointwise_int8.h"
#include "../common/cpu_int8.h"  // last: switches FP contraction off (see there)

namespace effnet {
namespace {

constexpr int64_t kChunk = 64;  // pixels per task (and per pool partial)

struct QPwArgs {
  const int8_t* x;
  const int16_t* w;     // (Cout, Cin)
  const float* scale;   // (Cout,)
  const float* bias;    // (Cout,)
  const float* gate;    // (N, Cin) or nullptr
  const int8_t* res;    // NHWC (N, H, W, Cout) or nullptr
  int8_t* y;            // NHWC (N, H, W, Cout), or nullptr with a pool
  float* psum;          // (units, Cout) pool partials, or nullptr
};

C10_ALWAYS_INLINE int32_t dot_i16(const int16_t* __restrict a, const int16_t* __restrict b,
                                  int64_t n) {
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return sum;
}

// Pixels [p0, p1) of sample n. xs: a Cin-long scratch row.
template <Act A>
void pointwise_int8_pixels(const QPwShape& s, const QPwArgs& a, int64_t n, int64_t p0,
                           int64_t p1, float* psum, int16_t* xs) {
  const int64_t HW = s.H * s.W, Cin = s.Cin, Cout = s.Cout;
  const int32_t in_zp = s.in_zp;
  const float in_zp_f = static_cast<float>(in_zp);
  const float inv = s.out_inv_scale, out_zp = static_cast<float>(s.out_zp);
  const float* g = a.gate != nullptr ? a.gate + n * Cin : nullptr;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t row = n * HW + p;
    const int8_t* xr = a.x + row * Cin;
    if (g != nullptr) {  // reference.gate_int8, then minus in_zp
      for (int64_t ci = 0; ci < Cin; ++ci) {
        const float t =
            std::floor(static_cast<float>(static_cast<int32_t>(xr[ci]) - in_zp) * g[ci] + 0.5f) +
            in_zp_f;
        const float q = t >= 127.0f ? 127.0f : (t >= -128.0f ? t : -128.0f);
        xs[ci] = static_cast<int16_t>(static_cast<int32_t>(q) - in_zp);
      }
    } else {
      for (int64_t ci = 0; ci < Cin; ++ci) {
        xs[ci] = static_cast<int16_t>(static_cast<int32_t>(xr[ci]) - in_zp);
      }
    }
    const int8_t* rr = a.res != nullptr ? a.res + row * Cout : nullptr;
    int8_t* yr = a.y != nullptr ? a.y + row * Cout : nullptr;
    for (int64_t co = 0; co < Cout; ++co) {
      const int32_t acc = dot_i16(xs, a.w + co * Cin, Cin);
      float v = cpu::dequant_act<A>(acc, a.scale[co], a.bias[co]);
      if (rr != nullptr) {  // + dequantize(residual): (r - res_zp) * res_scale, then the add
        v = v + static_cast<float>(static_cast<int32_t>(rr[co]) - s.res_zp) * s.res_scale;
      }
      if (psum != nullptr) {
        psum[co] += v;
      } else {
        yr[co] = cpu::requantize(v, inv, out_zp);
      }
    }
  }
}

// The AVX-512 VNNI path (engine_int8.h; bit-exact with the scalar one above): the gate and the
// u8 shift in one pass over x into rows of qpacked_k(Cin) bytes, weights packed per call, then
// the register-tiled vpdpbusd GEMM with the requantising epilogue over ATen's threads; the pool
// from float32 rows in the scalar kernel's summation order.
at::Tensor pointwise_int8_vnni(const QPwShape& s, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& scale, const at::Tensor& bias, Act act,
                               const std::optional<at::Tensor>& gate,
                               const std::optional<at::Tensor>& residual, bool pool_only,
                               at::Tensor out) {
  using namespace engine;
  const int64_t HW = s.H * s.W, M = s.N * HW, Kq = qpacked_k(s.Cin), Np = round16(s.Cout);
  const auto u8 = at::TensorOptions().dtype(at::kByte);
  const auto i32 = at::TensorOptions().dtype(at::kInt);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor w = weight.reshape({s.Cout, s.Cin}).contiguous();
  at::Tensor packed = at::empty({qpacked_bytes(s.Cin, s.Cout)}, u8);
  at::Tensor comp = at::empty({Np}, i32);
  qpack_weights(w.const_data_ptr<int8_t>(), s.Cout, s.Cin,
                reinterpret_cast<int8_t*>(packed.mutable_data_ptr<uint8_t>()),
                comp.mutable_data_ptr<int32_t>());
  int32_t* cp = comp.mutable_data_ptr<int32_t>();
  for (int64_t n = 0; n < Np; ++n) cp[n] *= 128 + s.in_zp;
  at::Tensor sc = at::zeros({Np}, f32), b = at::zeros({Np}, f32);
  sc.narrow(0, 0, s.Cout).copy_(scale);
  b.narrow(0, 0, s.Cout).copy_(bias);
  // + 64: the GEMM reads whole 4-byte groups up to Kq (zeroed past Cin by qprep_rows)
  at::Tensor a = at::empty({M * Kq + 64}, u8);
  uint8_t* ap = a.mutable_data_ptr<uint8_t>();
  const int8_t* xp = x.const_data_ptr<int8_t>();
  const at::Tensor g = gate.has_value() ? gate->contiguous() : at::Tensor();
  const float* gp = gate.has_value() ? g.const_data_ptr<float>() : nullptr;
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(s.Cin, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1;) {  // rows of one sample share a gate
                       const int64_t n = r / HW, e = std::min(r1, (n + 1) * HW);
                       qprep_rows(xp + r * s.Cin, false, e - r, s.Cin, s.Cin, s.in_zp,
                                  gp != nullptr ? gp + n * s.Cin : nullptr, ap + r * Kq, Kq);
                       r = e;
                     }
                   });
  at::Tensor rows = pool_only ? at::empty({M, Np}, f32) : at::Tensor();
  QGemmArgs q;
  q.M = M, q.K = s.Cin, q.N = s.Cout, q.a = ap, q.lda = Kq;
  q.b = reinterpret_cast<const int8_t*>(packed.const_data_ptr<uint8_t>());
  q.comp = comp.const_data_ptr<int32_t>();
  q.scale = sc.const_data_ptr<float>(), q.bias = b.const_data_ptr<float>();
  q.act = static_cast<EAct>(static_cast<int>(act));
  if (residual.has_value()) {
    q.res = residual->const_data_ptr<int8_t>(), q.ldr = s.Cout;
    q.res_zp = s.res_zp, q.res_scale = s.res_scale;
  }
  if (pool_only) {
    q.y = rows.mutable_data_ptr<float>(), q.ldy = Np, q.out = QOut::F32;
  } else {
    q.y = out.mutable_data_ptr<int8_t>(), q.ldy = s.Cout, q.out = QOut::S8;
    q.inv = s.out_inv_scale, q.zp = static_cast<float>(s.out_zp);
  }
  const int64_t tiles = qgemm_tiles(q);
  at::parallel_for(0, tiles, std::max<int64_t>(1, 65536 / std::max<int64_t>(8 * 32 * Kq, 1)),
                   [&](int64_t t0, int64_t t1) { qgemm_range(q, t0, t1); });
  if (pool_only) {
    pool_chunks(rows.const_data_ptr<float>(), s.N, HW, s.Cout, Np, out.mutable_data_ptr<float>(),
                s.Cout);
  }
  return out;
}

}  // namespace

at::Tensor pointwise_int8_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& scale, const at::Tensor& bias, int64_t in_zp,
                              double out_inv_scale, int64_t out_zp, const std::string& act,
                              const std::optional<at::Tensor>& gate,
                              const std::optional<at::Tensor>& residual, double res_scale,
                              int64_t res_zp, bool pool_only) {
  const QPwShape s = check_pointwise_int8_args(x, weight, scale, bias, in_zp, out_inv_scale,
                                               out_zp, gate, residual, res_scale, res_zp,
                                               pool_only);
  const Act act_id = parse_act(act);
  const auto f32 = x.options().dtype(at::kFloat);
  const int64_t HW = s.H * s.W;
  const at::Tensor sc = scale.contiguous();
  const at::Tensor b = bias.contiguous();
  const at::Tensor g = gate.has_value() ? gate->contiguous() : at::Tensor();
  at::Tensor out = pool_only ? at::empty({s.N, s.Cout}, f32)
                             : at::empty({s.N, s.Cout, s.H, s.W},
                                         x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;  // N == 0, Cout == 0 or (without pool) H * W == 0
  if (cpu::active_isa() == cpu::Isa::AVX512 && engine::int8_kernels_supported()) {
    return pointwise_int8_vnni(s, x, weight, scale, bias, act_id, gate, residual, pool_only, out);
  }
  const at::Tensor w16 = weight.reshape({s.Cout, s.Cin}).to(at::kShort).contiguous();
  const int64_t chunks = (HW + kChunk - 1) / kChunk;  // per sample
  const int64_t units = s.N * chunks;
  at::Tensor partial = pool_only ? at::empty({units, s.Cout}, f32) : at::Tensor();
  QPwArgs a{};
  a.x = x.const_data_ptr<int8_t>();
  a.w = w16.const_data_ptr<int16_t>();
  a.scale = sc.const_data_ptr<float>();
  a.bias = b.const_data_ptr<float>();
  a.gate = gate.has_value() ? g.const_data_ptr<float>() : nullptr;
  a.res = residual.has_value() ? residual->const_data_ptr<int8_t>() : nullptr;
  a.y = pool_only ? nullptr : out.mutable_data_ptr<int8_t>();
  a.psum = pool_only ? partial.mutable_data_ptr<float>() : nullptr;
  // ~64k multiply-adds per task at least.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kChunk * s.Cin * s.Cout));
  dispatch_act(act_id, [&](auto act_c) {
    constexpr Act A = decltype(act_c)::value;
    at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
      std::vector<int16_t> xs(s.Cin);
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / chunks, p0 = (u % chunks) * kChunk;
        float* psum = a.psum != nullptr ? a.psum + u * s.Cout : nullptr;
        if (psum != nullptr) std::fill(psum, psum + s.Cout, 0.0f);
        pointwise_int8_pixels<A>(s, a, n, p0, std::min(p0 + kChunk, HW), psum, xs.data());
      }
    });
  });
  if (pool_only) {
    // Fixed-order sum of the chunk partials, in double: deterministic whatever the thread count.
    const float* part = partial.const_data_ptr<float>();
    float* po = out.mutable_data_ptr<float>();
    at::parallel_for(0, s.N, 1, [&](int64_t n0, int64_t n1) {
      std::vector<double> sum(s.Cout);
      for (int64_t n = n0; n < n1; ++n) {
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t c = 0; c < chunks; ++c) {
          const float* pr = part + (n * chunks + c) * s.Cout;
          for (int64_t co = 0; co < s.Cout; ++co) sum[co] += pr[co];
        }
        for (int64_t co = 0; co < s.Cout; ++co) {
          po[n * s.Cout + co] = static_cast<float>(sum[co] / static_cast<double>(HW));
        }
      }
    });
  }
  return out;
}

TORCH_LIBRARY_IMPL(effnet, CPU, m) { m.impl("pointwise_int8", &pointwise_int8_cpu); }

}  // namespace effnet
