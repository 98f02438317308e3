// Runs an AOTInductor package of an ek.optimize'd model from C++, without Python: dlopen the
// effnet ops library (its static initialisers register effnet::* in the dispatcher, which the
// package's generated code calls), load the .pt2 with AOTIModelPackageLoader, run it on an input
// tensor and, when given the expected output, compare (rel ‖y − ref‖/‖ref‖ ≤ 1e-5, max abs).
//
//   run_package libeffnet_ops.so model.pt2 input.bin [expected.bin]
//
// .bin: a tiny tensor file written by export_model.py: int64 ndim, int64 sizes[ndim], then
// float32 values in row-major (contiguous NCHW) order. Exit code 0 = ran (and matched).
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

at::Tensor read_tensor(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  int64_t ndim = 0;
  in.read(reinterpret_cast<char*>(&ndim), sizeof ndim);
  if (!in || ndim < 1 || ndim > 8) throw std::runtime_error(path + ": bad header");
  std::vector<int64_t> sizes(ndim);
  in.read(reinterpret_cast<char*>(sizes.data()), ndim * sizeof(int64_t));
  at::Tensor t = at::empty(sizes, at::kFloat);
  in.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
  if (!in) throw std::runtime_error(path + ": truncated");
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s libeffnet_ops.so model.pt2 input.bin [expected.bin]\n",
                 argv[0]);
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[2]);
    const at::Tensor x = read_tensor(argv[3]);
    const std::vector<at::Tensor> out = loader.run({x});
    const at::Tensor y = out.at(0).to(at::kFloat).contiguous();
    std::printf("ran %s: input %s -> output %s\n", argv[2], c10::str(x.sizes()).c_str(),
                c10::str(y.sizes()).c_str());
    if (argc == 4) return 0;
    const at::Tensor ref = read_tensor(argv[4]);
    if (ref.sizes() != y.sizes()) {
      std::printf("shape %s, expected %s: FAIL\n", c10::str(y.sizes()).c_str(),
                  c10::str(ref.sizes()).c_str());
      return 1;
    }
    const double rel = ((y - ref).norm() / ref.norm()).item<double>();
    const double max_abs = (y - ref).abs().max().item<double>();
    const bool ok = rel <= 1e-5 && !y.isnan().any().item<bool>();
    std::printf("vs Python: rel_err=%.3g max_abs_err=%.3g %s\n", rel, max_abs,
                ok ? "ok" : "FAIL");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
