// linear.cu: CUDA twin of native/cpu/linear.cpp (f32): the products go through gemm.cu's
// dispatcher (gemm_bias / gemm = gemm_ex in f32 with the thread's default math: exact, TF32 or
// bf16, see kernels_nn.h; cuBLAS when loaded, else our kernels), the forward bias in the GEMM's
// epilogue.
//
//   forward  out[M,N] = inp[M,K] · W + bias     W = Wt[N,K]ᵀ (OutIn) or W[K,N] (InOut)
//   backward dinp += dout · Wᵀ, dW += (as stored) doutᵀ·inp or inpᵀ·dout, dbias += Σ_rows dout
// Gradients are added (beta = 1); a null gradient is skipped.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

// dbias[n] += Σ_m dout[m, n]: one thread per column walks the rows in order (deterministic;
// neighbouring threads read neighbouring columns, so the loads coalesce).
__global__ void bias_backward_kernel1(float* dbias, const float* dout, int M, int N) {
  QS_GRID_STRIDE(n, N) {
    float s = 0.f;
    for (int m = 0; m < M; m++) s += dout[(int64_t)m * N + n];
    dbias[n] += s;
  }
}

Status linear_forward(float* out, const float* inp, const float* weight, const float* bias, int M, int K, int N,
                      cpu::WeightLayout layout, void* stream) {
  const bool out_in = layout == cpu::WeightLayout::OutIn;
  return gemm_bias(false, out_in, M, N, K, 1.f, inp, K, weight, out_in ? K : N, 0.f, out, N, bias, stream);
}

Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int M, int K, int N, cpu::WeightLayout layout, void* stream) {
  const bool out_in = layout == cpu::WeightLayout::OutIn;
  // dinp[M,K] += dout[M,N] · (OutIn: W[N,K]; InOut: W[K,N]ᵀ)
  if (dinp) QS_RETURN_IF_ERROR(gemm(false, !out_in, M, K, N, 1.f, dout, N, weight, out_in ? K : N, 1.f, dinp, K, stream));
  if (dweight) {
    if (out_in) QS_RETURN_IF_ERROR(gemm(true, false, N, K, M, 1.f, dout, N, inp, K, 1.f, dweight, K, stream));  // [N,K]
    else QS_RETURN_IF_ERROR(gemm(true, false, K, N, M, 1.f, inp, K, dout, N, 1.f, dweight, N, stream));         // [K,N]
  }
  if (dbias && N > 0) {
    bias_backward_kernel1<<<grid_for(N), kBlock, 0, (cudaStream_t)stream>>>(dbias, dout, M, N);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  return Status::Ok();
}

}  // namespace qs::cuda
