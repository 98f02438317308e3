// Host-side helpers for the CUDA launchers (the kernel-body helpers are in cuda_kernel.h).
// Only c10/cuda headers are used (ATen/cuda/CUDAContext.h pulls in cuBLAS headers that a bare
// CUDA toolkit may lack).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_kernel.h"
#include "cuda_pool.h"

namespace effnet {

// Streaming multiprocessors of `device` (sizes the launch plans). Defined in cuda_shared.cu.
int sm_count(int device);

// Turns the kernel's per-band partial sums into the pool (pool_finalize_thread over a grid) when
// the workspace has them; nothing otherwise. Defined in cuda_shared.cu.
void finalize_pool(const PoolWorkspace& ws, cudaStream_t stream);

}  // namespace effnet
