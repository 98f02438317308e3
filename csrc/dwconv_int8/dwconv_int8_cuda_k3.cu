// Instantiates the 3x3 fast-path kernels of effnet::dwconv_int8 (see dwconv_int8_cuda.cuh).
#include "dwconv_int8_cuda.cuh"

namespace effnet::qdw {
template void launch_fast<3>(const Plan&, Act, const Args&, cudaStream_t);
}  // namespace effnet::qdw
