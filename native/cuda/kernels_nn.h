// kernels_nn.h: launchers of the CUDA twins of the elementwise / normalisation / optimizer
// kernels (embedding.cu, layernorm.cu, rmsnorm.cu, rope.cu, activations.cu, adamw.cu,
// lmhead_xent.cu) and of the dense products and dtype conversion (gemm.cu, linear.cu,
// convert.cu).
//
// Plain C++ (no CUDA headers) so the op layer and the tests can include it. Every launcher
// takes device pointers, f32 only, enqueues on `stream` (the engine's cudaStream_t) and returns
// a Status; none synchronises. Shapes and semantics are those of the CPU twin of the same name
// in native/cpu/*.h: backward launchers add (+=) into gradients, a null gradient is skipped.
// Ids / positions are clamped into range on the device (the op layer checks them only on the
// host path).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/linear.h"
#include "quietstar/dtype.h"
#include "quietstar/status.h"

namespace qs::cuda {

// embedding.cu
Status embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C, int V, void* stream);
Status embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V, void* stream);
// out (N,C) = inp + wpe[pos] (out may alias inp)
Status position_embedding_forward(float* out, const float* inp, const int32_t* pos, const float* wpe, int N, int C,
                                  int P, void* stream);
Status position_embedding_backward(float* dwpe, const float* dout, const int32_t* pos, int N, int C, int P,
                                   void* stream);

// layernorm.cu, rmsnorm.cu
Status layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                         const float* bias, int N, int C, float eps, void* stream);
Status layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                          const float* weight, const float* mean, const float* rstd, int N, int C, void* stream);
Status rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps,
                       void* stream);
Status rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                        const float* rstd, int N, int C, void* stream);

// rope.cu: x (N,H,d), d even
Status rope_forward(float* out, const float* inp, const int32_t* pos, int N, int H, int d, double theta, void* stream);
Status rope_backward(float* dinp, const float* dout, const int32_t* pos, int N, int H, int d, double theta,
                     void* stream);

// activations.cu
Status residual_forward(float* out, const float* a, const float* b, int64_t n, void* stream);
Status residual_backward(float* da, float* db, const float* dout, int64_t n, void* stream);
Status gelu_forward(float* out, const float* inp, int64_t n, void* stream);
Status gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream);
Status silu_forward(float* out, const float* inp, int64_t n, void* stream);
Status silu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream);
Status relu_forward(float* out, const float* inp, int64_t n, void* stream);
Status relu_backward(float* dinp, const float* inp, const float* dout, int64_t n, void* stream);
Status swiglu_forward(float* out, const float* gate, const float* up, int64_t n, void* stream);
Status swiglu_backward(float* dgate, float* dup, const float* gate, const float* up, const float* dout, int64_t n,
                       void* stream);

// adamw.cu
Status adamw_update(float* params, const float* grads, float* m, float* v, int64_t n, float lr, float beta1,
                    float beta2, float eps, float weight_decay, int64_t t, void* stream);
// norm[0] (device f64) = sqrt(sum x²), a fixed-shape reduction (same result every run)
Status global_norm(double* norm, const float* x, int64_t n, void* stream);
// norm[0] = global norm of g; g *= maxNorm / (norm + 1e-6) when that is < 1 (decided on the device)
Status clip_grad_norm(double* norm, float* g, int64_t n, double max_norm, void* stream);

// lmhead_xent.cu (scratch: device bytes the op allocates for each call)
size_t lmhead_xent_forward_scratch_bytes(int N, int V);
size_t lmhead_xent_backward_scratch_bytes(int N, int V, int chunk);
Status lmhead_xent_forward_f32(float* losses, float* lse, const float* h, const float* W, const int32_t* targets, int N,
                               int D, int V, int ignore_index, void* scratch, void* stream);
Status lmhead_xent_backward_f32(float* dh, float* dW, const float* dlosses, const float* h, const float* W,
                                const int32_t* targets, const float* lse, int N, int D, int V, int ignore_index,
                                int chunk, void* scratch, void* stream);

// gemm.cu: C[M,N] = alpha op(A) op(B) + beta C, the cpu/gemm.h contract (beta = 0 overwrites C).
// Own tiled kernel, fixed summation order: deterministic.
Status gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc, void* stream);
Status gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, float alpha, const float* A, int lda,
                    int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc,
                    int64_t stride_c, void* stream);
// gemm plus bias[N] (or null) added to every row of the product (linear_forward's epilogue)
Status gemm_bias(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc, const float* bias, void* stream);

// linear.cu: out (M,N), inp (M,K), weight (N,K) OutIn or (K,N) InOut, bias (N) or null
Status linear_forward(float* out, const float* inp, const float* weight, const float* bias, int M, int K, int N,
                      cpu::WeightLayout layout, void* stream);
Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int M, int K, int N, cpu::WeightLayout layout, void* stream);

// convert.cu: out (n, dtype to) = inp (n, dtype from), any pair of F32, F64, BF16, F16 (as the CPU op)
Status convert(void* out, DType to, const void* inp, DType from, int64_t n, void* stream);

}  // namespace qs::cuda
