// layernorm.cu: CUDA twin of native/cpu/layernorm.cpp (f32).
//   out = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps), biased variance
// Forward: one warp per row (llm.c's layernorm_forward_kernel3 shape); two-pass variance about
// the mean, as the CPU does, so large offsets do not cancel. Saves mean and rstd for backward.
// Backward: dinp one warp per row; dweight / dbias by a second kernel where thread c owns column
// c and sums the N rows in order: no atomics, so the result is the same every run.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

constexpr int kRowsPerBlock = kBlock / 32;  // one warp per row

// ---------------------------------------------------------------------------------------------
// kernels

// out (N,C), mean (N), rstd (N), inp (N,C), weight (C), bias (C) or null
__global__ void layernorm_forward_kernel1(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                          const float* bias, int N, int C, float eps) {
  int n = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const float* x = inp + (int64_t)n * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += 32) s += x[c];
  float m = warp_sum(s) / C;
  float v = 0.0f;
  for (int c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
  float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
  float* o = out + (int64_t)n * C;
  for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * r * weight[c] + (bias ? bias[c] : 0.0f);
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = r;
  }
}

// dinp (N,C) += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd,  dnorm = dout * weight
__global__ void layernorm_backward_dinp_kernel1(float* dinp, const float* dout, const float* inp, const float* weight,
                                                const float* mean, const float* rstd, int N, int C) {
  int n = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n >= N) return;
  const float *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
  float m = mean[n], r = rstd[n];
  float a = 0.0f, b = 0.0f;
  for (int c = lane; c < C; c += 32) {
    float g = dy[c] * weight[c];
    a += g;
    b += g * (x[c] - m) * r;
  }
  a = warp_sum(a) / C;
  b = warp_sum(b) / C;
  float* dx = dinp + (int64_t)n * C;
  for (int c = lane; c < C; c += 32) dx[c] += (dy[c] * weight[c] - a - (x[c] - m) * r * b) * r;
}

// dweight (C) += sum_n dout * norm, dbias (C) += sum_n dout; thread c owns column c (in order)
__global__ void layernorm_backward_params_kernel1(float* dweight, float* dbias, const float* dout, const float* inp,
                                                  const float* mean, const float* rstd, int N, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double pw = 0.0, pb = 0.0;  // double like the CPU's per-column partials
  for (int n = 0; n < N; n++) {
    float dy = dout[(int64_t)n * C + c];
    pw += dy * ((inp[(int64_t)n * C + c] - mean[n]) * rstd[n]);
    pb += dy;
  }
  if (dweight) dweight[c] += (float)pw;
  if (dbias) dbias[c] += (float)pb;
}

// ---------------------------------------------------------------------------------------------
// launchers

Status layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                         const float* bias, int N, int C, float eps, void* stream) {
  if (N == 0) return Status::Ok();
  int grid = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  layernorm_forward_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(out, mean, rstd, inp, weight, bias, N, C, eps);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C, void* stream) {
  if (N == 0 || C == 0) return Status::Ok();
  if (dinp) {
    int grid = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    layernorm_backward_dinp_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  if (dweight || dbias) {
    int grid = (C + kBlock - 1) / kBlock;
    layernorm_backward_params_kernel1<<<grid, kBlock, 0, (cudaStream_t)stream>>>(dweight, dbias, dout, inp, mean, rstd,
                                                                                 N, C);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  return Status::Ok();
}

}  // namespace qs::cuda
