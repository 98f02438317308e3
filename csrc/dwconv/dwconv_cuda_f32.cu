// Instantiates the dwconv CUDA kernels for float (see dwconv_cuda.cuh).
#include "dwconv_cuda.cuh"

namespace effnet {
template void launch_dwconv<float>(const DwPlan&, Act, const DwArgs<float>&, cudaStream_t);
}  // namespace effnet
