// Instantiates the dwconv CUDA kernels for c10::Half (see dwconv_cuda.cuh).
#include "dwconv_cuda.cuh"

namespace effnet {
template void launch_dwconv<c10::Half>(const DwPlan&, Act, const c10::Half*, const c10::Half*, const c10::Half*, c10::Half*, float*,
                                cudaStream_t);
}  // namespace effnet
