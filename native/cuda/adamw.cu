// adamw.cu: CUDA twin of native/cpu/adamw.cpp (f32): the AdamW update, the global norm and
// gradient clipping over one flat buffer.
//
// The update is the CPU's step for step (torch's single-tensor AdamW: decay, lerp for m, then
// addcdiv), with the same scalars formed in double on the host and rounded to float once.
// The norm is a sum of squares in double by ONE block of kNormThreads threads: a fixed number
// of threads, each summing a fixed strided subset, then a fixed shared-memory tree. No atomics
// and no dependence on the device's SM count, so it gives the same double every run. Clipping
// reads that norm on the device, so it needs no host round trip.
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

constexpr int kNormThreads = 1024;

struct AdamScalars {
  float decay, one_minus_b1, one_minus_w, b2, one_minus_b2, bc2_sqrt, eps, neg_step;
  bool lerp_from_m;  // torch's lerp(m, g, w): m + w (g - m) if |w| < 0.5, else g - (g - m)(1 - w)
};

// ---------------------------------------------------------------------------------------------
// kernels

// params, grads, m, v (n), updated in place
__global__ void adamw_kernel1(float* params, const float* grads, float* m, float* v, int64_t n, AdamScalars s) {
  QS_GRID_STRIDE(i, n) {
    float g = grads[i];
    float p = params[i] * s.decay;
    float mi = s.lerp_from_m ? m[i] + s.one_minus_b1 * (g - m[i]) : g - (g - m[i]) * s.one_minus_w;
    float vi = v[i] * s.b2 + s.one_minus_b2 * g * g;
    float denom = sqrtf(vi) / s.bc2_sqrt + s.eps;
    m[i] = mi;
    v[i] = vi;
    params[i] = p + s.neg_step * mi / denom;
  }
}

// norm[0] = sqrt(sum x²); launched as one block of kNormThreads
__global__ void global_norm_kernel1(double* norm, const float* x, int64_t n) {
  __shared__ double part[kNormThreads];
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kNormThreads) ss += (double)x[i] * (double)x[i];
  part[threadIdx.x] = ss;
  __syncthreads();
  for (int w = kNormThreads / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) norm[0] = sqrt(part[0]);
}

// g *= max_norm / (norm + 1e-6) when that factor is < 1 (torch's clip_grad_norm_)
__global__ void clip_scale_kernel1(float* g, const double* norm, int64_t n, double max_norm) {
  double factor = max_norm / (norm[0] + 1e-6);
  if (!(factor < 1.0)) return;
  float f = (float)factor;
  QS_GRID_STRIDE(i, n) g[i] *= f;
}

// ---------------------------------------------------------------------------------------------
// launchers

Status adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                    float beta2, float eps, float weight_decay, int64_t t, void* stream) {
  if (n == 0) return Status::Ok();
  double bc1 = 1.0 - std::pow((double)beta1, (double)t);
  double bc2 = 1.0 - std::pow((double)beta2, (double)t);
  AdamScalars s;
  s.decay = (float)(1.0 - (double)lr * (double)weight_decay);
  s.one_minus_b1 = (float)(1.0 - (double)beta1);
  s.one_minus_w = 1.0f - s.one_minus_b1;
  s.b2 = beta2;
  s.one_minus_b2 = (float)(1.0 - (double)beta2);
  s.bc2_sqrt = (float)std::sqrt(bc2);
  s.eps = eps;
  s.neg_step = (float)(-(double)lr / bc1);
  s.lerp_from_m = std::fabs((double)s.one_minus_b1) < 0.5;
  adamw_kernel1<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(params, grads, m, v, n, s);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status global_norm(double* norm, const float* x, int64_t n, void* stream) {
  global_norm_kernel1<<<1, kNormThreads, 0, (cudaStream_t)stream>>>(norm, x, n);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status clip_grad_norm(double* norm, float* g, int64_t n, double max_norm, void* stream) {
  QS_RETURN_IF_ERROR(global_norm(norm, g, n, stream));
  if (n == 0) return Status::Ok();
  clip_scale_kernel1<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(g, norm, n, max_norm);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
