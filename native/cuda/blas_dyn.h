// blas_dyn.h: the cuBLAS entry points we call, resolved at run time (see blas_dyn.cpp).
// Self-declared prototypes: handles are opaque pointers, statuses and enums are int. Their
// values must match cublas_api.h; test_blas_abi.cpp static_asserts them wherever the real
// headers exist (not on our build machines, which have no cuBLAS).
#pragma once

#include <cstdint>

namespace qs::cuda {

// Enum values from cublas_api.h / library_types.h that we pass through.
enum : int {
  kCublasStatusSuccess = 0,
  kCublasOpN = 0,
  kCublasOpT = 1,
  kCublasDefaultMath = 0,
  kCublasTf32TensorOpMath = 3,
  kCudaR32F = 0,
  kCudaR16F = 2,
  kCudaR16BF = 14,
  kCublasComputeF32 = 68,
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

}  // namespace qs::cuda
