// rmsnorm.cu: CUDA twin of native/cpu/rmsnorm.cpp (f32).
//   out = x * rstd * weight,  rstd = 1 / sqrt(mean(x²) + eps)
// Same shapes as layernorm.cu: a warp per row for the row statistics and dinp, a thread per
// column summing the rows in order for dweight (no atomics: the same bits every run).
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

constexpr int kRowsPerBlock = kBlock / 32;  // one warp per row

// ---------------------------------------------------------------------------------------------
// kernels

// out (N,C), rstd (N), inp (N,C), weight (C)
__global__ void rmsnorm_forward_kernel1(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                                        float eps) {
  int n = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const float* x = inp + (int64_t)n * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
  float r = 1.0f / sqrtf(warp_sum(ss) / C + eps);
  float* o = out + (int64_t)n * C;
  for (int c = lane; c < C; c += 32) o[c] = x[c] * r * weight[c];
  if (lane == 0) rstd[n] = r;
}

// dinp (N,C) += (g - norm * mean(g * norm)) * rstd,  g = dout * weight, norm = x * rstd
__global__ void rmsnorm_backward_dinp_kernel1(float* dinp, const float* dout, const float* inp, const float* weight,
                                              const float* rstd, int N, int C) {
  int n = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const float *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
  float r = rstd[n], b = 0.0f;
  for (int c = lane; c < C; c += 32) b += dy[c] * weight[c] * x[c] * r;
  b = warp_sum(b) / C;
  float* dx = dinp + (int64_t)n * C;
  for (int c = lane; c < C; c += 32) dx[c] += (dy[c] * weight[c] - x[c] * r * b) * r;
}

// dweight (C) += sum_n dout * x * rstd; thread c owns column c
__global__ void rmsnorm_backward_dweight_kernel1(float* dweight, const float* dout, const float* inp,
                                                 const float* rstd, int N, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double pw = 0.0;
  for (int n = 0; n < N; n++) pw += dout[(int64_t)n * C + c] * (inp[(int64_t)n * C + c] * rstd[n]);
  dweight[c] += (float)pw;
}

// ---------------------------------------------------------------------------------------------
// launchers

Status rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps,
                       void* stream) {
  if (N == 0) return Status::Ok();
  int grid = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  rmsnorm_forward_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(out, rstd, inp, weight, N, C, eps);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                        const float* rstd, int N, int C, void* stream) {
  if (N == 0 || C == 0) return Status::Ok();
  if (dinp) {
    int grid = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    rmsnorm_backward_dinp_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(dinp, dout, inp, weight, rstd, N, C);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  if (dweight) {
    int grid = (C + kBlock - 1) / kBlock;
    rmsnorm_backward_dweight_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(dweight, dout, inp, rstd, N, C);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  return Status::Ok();
}

}  // namespace qs::cuda
