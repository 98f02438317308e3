// Facts about the CUDA build, reported by build_info(). Compiled only into CUDA builds.
#include <cuda_runtime_api.h>

namespace effnet {
int cudart_build_version() { return CUDART_VERSION; }
}  // namespace effnet
