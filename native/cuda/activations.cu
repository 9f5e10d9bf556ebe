// activations.cu: CUDA twins of native/cpu/activations.cpp.
// So far the residual add, the end-to-end elementwise kernel of the foundation; the rest of
// the op set follows with the CUDA backend. Memory conventions match the CPU file.
#include "cuda/common.cuh"

namespace qs::cuda {

// ---------------------------------------------------------------------------------------------
// kernels

// out[i] = a[i] + b[i]; grid-stride so any n works with a bounded grid.
__global__ void residual_forward_kernel1(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

// ---------------------------------------------------------------------------------------------
// launchers

Status residual_forward(float* out, const float* a, const float* b, int64_t n, void* stream) {
  if (n == 0) return Status::Ok();
  const int block = 256;
  int64_t blocks = (n + block - 1) / block;
  int grid = (int)(blocks < 65535 * 8 ? blocks : 65535 * 8);
  residual_forward_kernel1<<<grid, block, 0, (cudaStream_t)stream>>>(out, a, b, n);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
