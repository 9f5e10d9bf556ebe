// rope.cu: CUDA twin of native/cpu/rope.cpp (f32), Hugging Face rotate_half convention.
//   out[i]        = x[i] * cos(a) - x[i + half] * sin(a)
//   out[i + half] = x[i + half] * cos(a) + x[i] * sin(a),   a = pos[n] * theta^(-2i/d)
// One thread per rotated pair (n, h, i < half). The angle and its cos/sin are formed in double
// and rounded once, like the CPU: pos * inv_freq reaches ~1e5 rad for long contexts, where a
// float angle would be off by ~1e-2 rad. Each pair is read fully before it is written, so out
// may alias inp. Backward applies the rotation by -a and adds into dinp.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

// out/inp (N,H,d), pos (N); kBackward: rotate by -a and accumulate
template <bool kBackward>
__global__ void rope_kernel1(float* out, const float* inp, const int32_t* pos, int N, int H, int d, double theta) {
  int half = d / 2;
  QS_GRID_STRIDE(k, (int64_t)N * H * half) {
    int i = (int)(k % half);
    int64_t row = k / half;  // n * H + h
    int n = (int)(row / H);
    double a = (double)pos[n] * pow(theta, -(2.0 * i) / d);
    float cs = (float)cos(a), sn = (float)sin(a);
    int64_t lo = row * d + i, hi = lo + half;
    float x0 = inp[lo], x1 = inp[hi];
    if (kBackward) {
      out[lo] += x0 * cs + x1 * sn;
      out[hi] += x1 * cs - x0 * sn;
    } else {
      out[lo] = x0 * cs - x1 * sn;
      out[hi] = x1 * cs + x0 * sn;
    }
  }
}

template <bool kBackward>
static Status rope_launch(float* out, const float* inp, const int32_t* pos, int N, int H, int d, double theta,
                          void* stream) {
  int64_t pairs = (int64_t)N * H * (d / 2);
  if (pairs == 0) return Status::Ok();
  rope_kernel1<kBackward><<<grid_for(pairs), kBlock, 0, (cudaStream_t)stream>>>(out, inp, pos, N, H, d, theta);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status rope_forward(float* out, const float* inp, const int32_t* pos, int N, int H, int d, double theta, void* stream) {
  return rope_launch<false>(out, inp, pos, N, H, d, theta, stream);
}

Status rope_backward(float* dinp, const float* dout, const int32_t* pos, int N, int H, int d, double theta,
                     void* stream) {
  return rope_launch<true>(dinp, dout, pos, N, H, d, theta, stream);
}

}  // namespace qs::cuda
