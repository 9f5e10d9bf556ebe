// blas_dyn.h: the cuBLAS entry points we call, resolved at run time (see blas_dyn.cpp), and
// blas_gemm(), the one product gemm.cu asks of cuBLAS.
// Self-declared prototypes: handles are opaque pointers, statuses and enums are int. Their
// values must match cublas_api.h; test_blas_abi.cpp static_asserts them wherever the real
// headers exist (not on our build machines, which have no cuBLAS).
#pragma once

#include <cstdint>

#include "cuda/kernels_nn.h"
#include "quietstar/dtype.h"
#include "quietstar/status.h"

namespace qs::cuda {

// Enum values from cublas_api.h / library_types.h that we pass through.
enum : int {
  kCublasStatusSuccess = 0,
  kCublasStatusNotInitialized = 1,
  kCublasStatusAllocFailed = 3,
  kCublasStatusInvalidValue = 7,
  kCublasStatusArchMismatch = 8,
  kCublasStatusMappingError = 11,
  kCublasStatusExecutionFailed = 13,
  kCublasStatusInternalError = 14,
  kCublasStatusNotSupported = 15,
  kCublasStatusLicenseError = 16,
  kCublasOpN = 0,
  kCublasOpT = 1,
  kCublasDefaultMath = 0,
  kCublasTf32TensorOpMath = 3,
  kCudaR32F = 0,
  kCudaR16F = 2,
  kCudaR16BF = 14,
  kCublasComputeF32 = 68,
  kCublasComputeF32Fast16BF = 75,
  kCublasComputeF32FastTF32 = 77,
  kCublasGemmDefault = -1,
};

using cublasHandle = void*;

struct BlasTable {
  bool loaded = false;
  int (*create)(cublasHandle*) = nullptr;
  int (*destroy)(cublasHandle) = nullptr;
  int (*set_stream)(cublasHandle, void*) = nullptr;
  int (*set_math_mode)(cublasHandle, int) = nullptr;
  int (*sgemm)(cublasHandle, int, int, int, int, int, const float*, const float*, int, const float*, int,
               const float*, float*, int) = nullptr;
  int (*gemm_ex)(cublasHandle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                 const void*, void*, int, int, int, int) = nullptr;
  int (*gemm_strided_batched_ex)(cublasHandle, int, int, int, int, int, const void*, const void*, int, int, long long,
                                 const void*, int, int, long long, const void*, void*, int, int, long long, int, int,
                                 int) = nullptr;
  int (*get_version)(cublasHandle, int*) = nullptr;
  int (*lt_create)(void**) = nullptr;
  int (*lt_destroy)(void*) = nullptr;
  void* lt_matmul = nullptr;  // resolved to prove cuBLASLt is usable; typed when first used
};

const BlasTable& blas_table();

// "CUBLAS_STATUS_NOT_SUPPORTED" etc. for a cublasStatus_t value.
const char* cublas_status_name(int status);

// One row-major (strided-batched) product, the cpu/gemm.h contract, through cuBLAS:
//   C[b] (M, N) = alpha op(A[b]) op(B[b]) + beta C[b]      (beta = 0: C is not read)
// A and B of ab_dtype (F32, BF16, F16), C of c_dtype (F32 or ab_dtype); batch strides in elements.
// Accumulates in f32 (CUBLAS_COMPUTE_32F); f32 inputs with math Tf32 use TF32 tensor cores
// (CUBLAS_COMPUTE_32F_FAST_TF32), with math Bf16 bf16 tensor cores (CUBLAS_COMPUTE_32F_FAST_16BF:
// the inputs are down-converted to bf16 inside cuBLAS, the accumulation and C stay f32). These two
// only *allow* down-conversion (FAST_16BF: "to bfloat16 or TF32"); cuBLAS picks per shape.
// M, N, K > 0. Uses the calling thread's handle for its current device (created on first use,
// destroyed when the thread exits), bound to `stream` each call.
// A failure is a Status naming the cuBLAS call and its status.
struct BlasGemm {
  bool trans_a, trans_b;
  int batch, M, N, K;
  float alpha, beta;
  const void* A; int lda; int64_t stride_a;  // A (M, K), or (K, M) stored when trans_a
  const void* B; int ldb; int64_t stride_b;  // B (K, N), or (N, K) stored when trans_b
  void* C; int ldc; int64_t stride_c;        // C (M, N)
  DType ab_dtype, c_dtype;
  GemmMath math;  // Exact, Tf32 or Bf16 (resolved, never Default); only f32 inputs look at it
};
Status blas_gemm(const BlasGemm& g, void* stream);

}  // namespace qs::cuda
