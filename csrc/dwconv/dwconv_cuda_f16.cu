// Instantiates the dwconv CUDA kernels for c10::Half (see dwconv_cuda.cuh).
#include "dwconv_cuda.cuh"

namespace effnet {
template void launch_dwconv<c10::Half>(const DwPlan&, Act, const DwArgs<c10::Half>&, cudaStream_t);
}  // namespace effnet
