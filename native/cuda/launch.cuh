// launch.cuh: launch-shape helpers shared by the elementwise CUDA kernels.
#pragma once

#include <cstdint>

namespace qs::cuda {

constexpr int kBlock = 256;  // threads per block for the elementwise kernels

// Blocks for n elements at kBlock threads, capped so that grid-stride loops cover the rest.
inline int grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  return (int)(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

// Sum over the 32 lanes of a warp; the xor butterfly has a fixed order, so it is deterministic.
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Grid-stride loop over [0, n).
#define QS_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

}  // namespace qs::cuda
