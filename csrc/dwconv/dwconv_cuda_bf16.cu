// Instantiates the dwconv CUDA kernels for c10::BFloat16 (see dwconv_cuda.cuh).
#include "dwconv_cuda.cuh"

namespace effnet {
template void launch_dwconv<c10::BFloat16>(const DwPlan&, Act, const DwArgs<c10::BFloat16>&,
                                   cudaStream_t);
}  // namespace effnet
