// The CUDA helpers shared by several ops: sm_count and the pool finalize kernel (cuda_pool.h).
// Status: compiles in CI; NOT YET RUN ON A GPU. The finalize body (pool_finalize_thread) is
// emulated on the CPU by tests/test_cuda_emulation.py.
#include "cuda_utils.cuh"

namespace effnet {

int sm_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

namespace {

__global__ void pool_finalize_kernel(const float* __restrict__ partial, float* __restrict__ pool,
                                     int64_t N, int64_t bands, int64_t C, float scale) {
  pool_finalize_thread(partial, pool, N, bands, C, scale,
                       static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                       static_cast<int64_t>(gridDim.x) * blockDim.x);
}

}  // namespace

void finalize_pool(const PoolWorkspace& ws, cudaStream_t stream) {
  if (!ws.partial.defined()) return;
  pool_finalize_kernel<<<grid_for(ws.N * ws.C, kPoolFinalizeThreads), kPoolFinalizeThreads, 0,
                         stream>>>(ws.partial.const_data_ptr<float>(),
                                   ws.pool.mutable_data_ptr<float>(), ws.N, ws.bands, ws.C,
                                   ws.scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace effnet
