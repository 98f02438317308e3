// Pieces shared by the float and the INT8 CPU engines (cpu_engine.cpp, cpu_engine_int8.cpp):
// activation codes, conv geometry, the parallel loop and the per-layer profile.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/custom_class.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "engine_kernels.h"

namespace effnet::engine {

// Depthwise taps (C, 1, k, k) (any float or int8 dtype) as the row kernels read them (DwArgs.w,
// QDwArgs.w): float32 [k*k][round16(C)], zero-padded columns.
inline at::Tensor pack_dw_taps(const at::Tensor& w) {
  const int64_t C = w.size(0), kk = w.size(2) * w.size(3);
  at::Tensor out = at::zeros({kk, round16(C)}, at::kFloat);
  out.narrow(1, 0, C).copy_(w.detach().reshape({C, kk}).t());
  return out;
}

// A per-channel vector (n,) as float32 round16(n), zero-padded (biases and scales the kernels
// read in whole vectors of 16).
inline at::Tensor pad16(const at::Tensor& v) {
  at::Tensor out = at::zeros({round16(v.size(0))}, at::kFloat);
  out.narrow(0, 0, v.size(0)).copy_(v.detach());
  return out;
}


inline EAct act_from(int64_t code) {
  TORCH_CHECK_VALUE(code >= 0 && code <= 4, "CpuEngine: bad activation code ", code);
  return static_cast<EAct>(code);
}

// Geometry of a k x k conv: padding mode 0 symmetric ((k-1)/2), 1 TF "same" (from the input
// size), 2 explicit (left, right, top, bottom).
struct Geo {
  int k = 1, s = 1, mode = 0, l = 0, r = 0, t = 0, b = 0;
  // (left, right, top, bottom) for an H x W input.
  void pads(int64_t H, int64_t W, int64_t* p) const {
    p[0] = l, p[1] = r, p[2] = t, p[3] = b;
    if (mode == 0) {
      for (int i = 0; i < 4; ++i) p[i] = (k - 1) / 2;
    } else if (mode == 1) {
      const int64_t tw = std::max<int64_t>(((W + s - 1) / s - 1) * s + k - W, 0);
      const int64_t th = std::max<int64_t>(((H + s - 1) / s - 1) * s + k - H, 0);
      p[0] = tw / 2, p[1] = tw - tw / 2, p[2] = th / 2, p[3] = th - th / 2;
    }
  }
  // (top, left, OH, OW) for an H x W input.
  void out(int64_t H, int64_t W, int64_t* pt, int64_t* pl, int64_t* OH, int64_t* OW) const {
    int64_t p[4];
    pads(H, W, p);
    TORCH_CHECK_VALUE(H + p[2] + p[3] >= k && W + p[0] + p[1] >= k, "CpuEngine: a ", k, "x", k,
                      " conv gets an input of ", H, "x", W, " (too small)");
    *pl = p[0], *pt = p[2];
    *OH = (H + p[2] + p[3] - k) / s + 1;
    *OW = (W + p[0] + p[1] - k) / s + 1;
  }
};

// A depthwise layer's output for a given input: top and left padding, output rows and columns.
struct OutShape {
  int64_t pt = 0, pl = 0, oh = 0, ow = 0;
};

// Runs [0, n) of `fn(begin, end)` over ATen's threads; serially when the work is small.
template <typename F>
void parallel(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  at::parallel_for(0, n, std::max<int64_t>(grain, 1), fn);
}

struct Linear {  // a packed 1x1 conv / linear layer
  at::Tensor packed, bias;
  int64_t K = 0, N = 0;
  DT dt = DT::F32;
  EAct act = EAct::Identity;
};

inline Linear make_linear(const at::Tensor& w, const at::Tensor& b, DT dt, EAct act,
                          const char* what) {
  TORCH_CHECK_VALUE(w.dim() >= 2 && b.dim() == 1 && b.size(0) == w.size(0), "CpuEngine: ", what,
                    ": weight (N, K, ...) and bias (N,) expected");
  Linear L;
  L.N = w.size(0);
  L.K = w.numel() / std::max<int64_t>(L.N, 1);
  L.dt = dt;
  L.act = act;
  TORCH_CHECK_VALUE(dt == DT::F32 || L.K % 2 == 0, "CpuEngine: ", what,
                    ": bfloat16 needs an even number of input channels, got ", L.K);
  const at::Tensor wf = w.detach().to(at::kFloat).reshape({L.N, L.K}).contiguous();
  L.packed = at::empty({packed_elems(L.K, L.N, dt)},
                       at::TensorOptions().dtype(dt == DT::F32 ? at::kFloat : at::kBFloat16));
  pack_weights(wf.data_ptr<float>(), L.N, L.K, dt, L.packed.data_ptr());
  L.bias = at::zeros({round16(L.N)}, at::kFloat);
  L.bias.narrow(0, 0, L.N).copy_(b.detach().to(at::kFloat));
  return L;
}

// One output row's im2col for the stem: col[ow][(kh*k + kw)*Ci + ci] = x[ih0 + kh][ow*s - pl +
// kw][ci], zero outside the image and in the padding column(s) up to Kp.
template <typename T, int KCI = 0>
void im2col_row(const T* x, int64_t H, int64_t W, int64_t Ci, int k, int s, int64_t ih0,
                int64_t pl, int64_t OW, int64_t Kp, T* col) {
  // KCI = k * Ci known at compile time (9: every EfficientNet stem): the interior copies inline.
  if constexpr (KCI == 0) {
    if (k * Ci == 9) return im2col_row<T, 9>(x, H, W, Ci, k, s, ih0, pl, OW, Kp, col);
  }
  const int64_t kci = KCI ? KCI : k * Ci;
  for (int64_t ow = 0; ow < OW; ++ow) {
    T* c = col + ow * Kp;
    const int64_t iw0 = ow * s - pl;
    const bool cols_in = iw0 >= 0 && iw0 + k <= W;
    for (int kh = 0; kh < k; ++kh) {
      const int64_t ih = ih0 + kh;
      const bool row_in = ih >= 0 && ih < H;
      const T* xr = x + (ih * W + iw0) * Ci;
      if (row_in && cols_in) {  // the k x Ci taps of this row are contiguous in NHWC
        for (int64_t j = 0; j < kci; ++j) c[j] = xr[j];
        c += kci;
        continue;
      }
      for (int kw = 0; kw < k; ++kw) {
        const bool in = row_in && iw0 + kw >= 0 && iw0 + kw < W;
        for (int64_t ci = 0; ci < Ci; ++ci) *c++ = in ? xr[kw * Ci + ci] : T(0);
      }
    }
    for (int64_t j = k * k * Ci; j < Kp; ++j) *c++ = T(0);
  }
}

// The row walk of the fused expand + depthwise passes: for output rows [r0, r1) (r = n * OH +
// oh) of a k x k, stride-s depthwise with top padding pt over H input rows, rows[kh] is input
// row ih = oh * s - pt + kh (nullptr in the padding) as `row(n, ih, slot, fresh)` returns it,
// slot being ih's place in a ring of k slots of slot_bytes (nullptr without a ring) and fresh
// true the first time ih of sample n is asked for (what is in a slot then is still valid: each
// expanded row is computed once, plus the k - s halo rows at the start of the range); then
// `use(r, rows)`.
template <typename Row, typename Use>
void ring_rows(int64_t r0, int64_t r1, int64_t OH, int64_t H, int k, int s, int64_t pt,
               char* ring, int64_t slot_bytes, const Row& row, const Use& use) {
  int64_t cur_n = -1, done = -1;  // input rows [.., done] of sample cur_n are in the ring
  const void* rows[kDwMaxK];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / OH, oh = r % OH, ih0 = oh * s - pt;
    if (n != cur_n) cur_n = n, done = -1;
    for (int kh = 0; kh < k; ++kh) {
      const int64_t ih = ih0 + kh;
      if (ih < 0 || ih >= H) {
        rows[kh] = nullptr;
        continue;
      }
      char* slot = ring != nullptr ? ring + (ih % k) * slot_bytes : nullptr;
      rows[kh] = row(n, ih, slot, ih > done);
      done = ih > done ? ih : done;
    }
    use(r, rows);
  }
}

// Per-layer wall times of a forward while on (CpuEngine.set_profile): labels and microseconds.
struct Profile {
  bool on = false;
  std::vector<std::string> names;
  std::vector<double> us;
  std::chrono::steady_clock::time_point t;
  void start() {
    if (!on) return;
    names.clear(), us.clear();
    t = std::chrono::steady_clock::now();
  }
  void mark(const char* what, int64_t index = -1) {
    if (!on) return;
    const auto now = std::chrono::steady_clock::now();
    std::string name = what;
    if (index >= 0) name += "." + std::to_string(index);
    names.push_back(std::move(name));
    us.push_back(std::chrono::duration<double, std::micro>(now - t).count());
    t = now;
  }
};

// The methods both engines' torch classes have (CpuEngine, CpuEngineInt8).
template <typename E>
void def_engine_methods(torch::class_<E>& c) {
  c.def("forward", &E::forward)
      .def("describe", &E::describe)
      .def("isa", &E::isa)
      .def("set_profile", &E::set_profile)
      .def("set_fuse_bytes", &E::set_fuse_bytes)
      .def("fill_workspace", &E::fill_workspace)
      .def("profile_names", &E::profile_names)
      .def("profile_us", &E::profile_us);
}

}  // namespace effnet::engine
