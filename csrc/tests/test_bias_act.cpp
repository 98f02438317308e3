// ctest: dlopen libeffnet_ops, find effnet::bias_act in the dispatcher, call it on a CPU
// channels_last tensor, and compare with the same math in ATen. Exit code 0 = pass.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s path/to/libeffnet_ops.so\n", argv[0]);
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("effnet::bias_act", "");
  at::manual_seed(0);
  const at::Tensor x = at::randn({3, 37, 13, 11}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor b = at::randn({37});
  int failures = 0;
  for (const char* act : {"silu", "relu6", "relu", "identity"}) {
    torch::jit::Stack stack{x, b, std::string(act)};
    op.callBoxed(&stack);
    const at::Tensor y = stack.at(0).toTensor();
    const at::Tensor v = x + b.view({1, -1, 1, 1});
    const std::string a(act);
    const at::Tensor ref = a == "silu"    ? at::silu(v)
                           : a == "relu6" ? at::clamp(v, 0.0, 6.0)
                           : a == "relu"  ? at::relu(v)
                                          : v;
    const double err = (y - ref).abs().max().item<double>();
    const bool ok = err <= 1e-5 && y.is_contiguous(at::MemoryFormat::ChannelsLast);
    std::printf("bias_act %-8s max_abs_err=%.3g %s\n", act, err, ok ? "ok" : "FAIL");
    failures += !ok;
  }
  // A bad activation name must be a c10::Error, not a crash.
  try {
    torch::jit::Stack stack{x, b, std::string("gelu")};
    op.callBoxed(&stack);
    std::printf("bias_act accepted act='gelu': FAIL\n");
    ++failures;
  } catch (const c10::Error& e) {
    std::printf("bias_act rejects act='gelu': ok\n");
  }
  return failures == 0 ? 0 : 1;
}
