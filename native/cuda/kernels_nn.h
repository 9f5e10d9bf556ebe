// kernels_nn.h: launchers of the CUDA twins of the elementwise / normalisation / optimizer
// kernels (embedding.cu, layernorm.cu, rmsnorm.cu, rope.cu, activations.cu, adamw.cu,
// lmhead_xent.cu) and of the dense products and dtype conversion (gemm.cu, linear.cu,
// convert.cu).
//
// Plain C++ (no CUDA headers) so the op layer and the tests can include it. Every launcher
// takes device pointers, f32 (gemm_ex and convert: other dtypes too), enqueues on `stream` (the
// engine's cudaStream_t) and returns a Status; none synchronises. Shapes and semantics are those
// of the CPU twin of the same name in native/cpu/*.h: backward launchers add (+=) into
// gradients, a null gradient is skipped.
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

// gemm.cu: C[M,N] = alpha op(A) op(B) + beta C, the cpu/gemm.h contract (beta = 0 overwrites C,
// NaNs in C included). The f32 launchers below are gemm_ex with f32 everywhere and default options
// (so their math is the thread's / process default, GemmMath below).
Status gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc, void* stream);
Status gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, float alpha, const float* A, int lda,
                    int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc,
                    int64_t stride_c, void* stream);
// gemm plus bias[N] (or null) added to every row of the product (linear_forward's epilogue)
Status gemm_bias(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc, const float* bias, void* stream);

// Which implementation runs a product. Process-wide default (Auto): cuBLAS when it was loaded
// (blas_dyn.cpp; loaded on the first GEMM if backendInfo() did not do it first; never with
// QUIETSTAR_CUBLAS=0), else our own kernels: the f32 SIMT kernel for exact f32, the WMMA
// tensor-core kernel (sm_80+) for bf16 / f16 and for f32 with TF32 or bf16 compute. Own forces
// our kernels (tests, benchmarks); Cublas fails with UNAVAILABLE when cuBLAS is not loaded.
// Products with K = 0 (C = beta C + bias) always run on our kernels.
enum class GemmBackend { Auto, Own, Cublas };
// How f32 inputs are multiplied (bf16 / f16 inputs ignore it; accumulation is always f32):
//   Exact  f32 FMAs (cuBLAS CUBLAS_COMPUTE_32F; our SIMT kernel)
//   Tf32   TF32 tensor cores: inputs rounded to 10 mantissa bits (~5e-4 relative each)
//          (CUBLAS_COMPUTE_32F_FAST_TF32; our WMMA kernel with TF32 fragments)
//   Bf16   bf16 tensor cores, the mixed-precision mode: inputs rounded to bf16 (round to nearest
//          even, 7 mantissa bits, ~4e-3 relative each) for the multiply only, f32 in memory
//          (CUBLAS_COMPUTE_32F_FAST_16BF; our WMMA kernel converting f32 tiles into bf16)
//   Default  the calling thread's math when set_thread_gemm_math() gave one, else the process
//          default: QUIETSTAR_MATMUL=f32 | tf32 | bf16, else QUIETSTAR_TF32=1 -> Tf32, else Exact
//          (read once; an unknown QUIETSTAR_MATMUL value is ignored).
// Before sm_80 (no tensor cores) and without cuBLAS, Tf32 and Bf16 run as Exact.
enum class GemmMath { Default, Exact, Tf32, Bf16 };

// The math Default means on the calling thread (per thread = per engine: an engine's compute
// thread runs all of its kernels). set_thread_gemm_math(Default) returns to the process default.
void set_thread_gemm_math(GemmMath math);
// What Default resolves to on the calling thread: Exact, Tf32 or Bf16.
GemmMath thread_gemm_math();

struct GemmOptions {
  GemmBackend backend = GemmBackend::Auto;
  GemmMath math = GemmMath::Default;
  const void* bias = nullptr;     // (N) or null, added (not scaled by alpha) to every row of C
  DType bias_dtype = DType::F32;  // f32, bf16 or f16
};

// `count` products; matrix b of X starts at X + b * stride_X (in elements of X's dtype).
struct GemmBatch {
  int count = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};

// C[b] (M, N) = alpha op(A[b]) op(B[b]) + bias + beta C[b], row-major as cpu/gemm.h:
//   A (M, K) or, trans_a, (K, M) stored, row stride lda; B (K, N) or, trans_b, (N, K), row stride ldb.
// A and B share one dtype: f32, bf16 or f16; accumulation is f32; C is f32 or the input dtype.
// Any M, N, K >= 0 and any leading dimension >= the stored row length.
Status gemm_ex(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, DType a_dtype, int lda,
               const void* B, DType b_dtype, int ldb, float beta, void* C, DType c_dtype, int ldc,
               const GemmBatch& batch, const GemmOptions& options, void* stream);
// The backend that ran the calling thread's last product: "cublas", "tensor_core", "simt" (or "none").
const char* gemm_backend_name();
// What Auto picks on this machine: "cublas" or "own" (loads cuBLAS if not tried yet).
const char* gemm_default_backend();

// linear.cu: out (M,N), inp (M,K), weight (N,K) OutIn or (K,N) InOut, bias (N) or null
Status linear_forward(float* out, const float* inp, const float* weight, const float* bias, int M, int K, int N,
                      cpu::WeightLayout layout, void* stream);
Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, int M, int K, int N, cpu::WeightLayout layout, void* stream);

// convert.cu: out (n, dtype to) = inp (n, dtype from), any pair of F32, F64, BF16, F16 (as the CPU op)
Status convert(void* out, DType to, const void* inp, DType from, int64_t n, void* stream);

}  // namespace qs::cuda
