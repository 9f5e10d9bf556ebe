// test_blas_abi.cpp: our self-declared cuBLAS constants against the real headers.
//
// blas_dyn.h declares the enum values and prototypes we pass to a dlopen()ed cuBLAS, because
// the build machines have no cuBLAS headers. A drift (a renamed _v2 entry point, a changed
// enum) would fail silently at run time, so wherever the real headers exist (GPU machines with
// the toolkit's cuBLAS, or the nvidia-cublas wheel's include folder on the include path) this
// file checks every value at compile time. Elsewhere it reports that it skipped.
#include "harness.h"

#if defined(QUIETSTAR_HAVE_CUDA) && __has_include(<cublas_api.h>)
#include <cublasLt.h>
#include <cublas_api.h>
#include <type_traits>

#include "cuda/blas_dyn.h"

static_assert(qs::cuda::kCublasStatusSuccess == CUBLAS_STATUS_SUCCESS, "cublasStatus_t");
static_assert(qs::cuda::kCublasOpN == CUBLAS_OP_N && qs::cuda::kCublasOpT == CUBLAS_OP_T, "cublasOperation_t");
static_assert(qs::cuda::kCublasDefaultMath == CUBLAS_DEFAULT_MATH, "cublasMath_t default");
static_assert(qs::cuda::kCublasTf32TensorOpMath == CUBLAS_TF32_TENSOR_OP_MATH, "cublasMath_t tf32");
static_assert(qs::cuda::kCudaR32F == CUDA_R_32F && qs::cuda::kCudaR16F == CUDA_R_16F &&
                  qs::cuda::kCudaR16BF == CUDA_R_16BF, "cudaDataType_t");
static_assert(qs::cuda::kCublasComputeF32 == CUBLAS_COMPUTE_32F, "cublasComputeType_t 32F");
static_assert(qs::cuda::kCublasComputeF32FastTF32 == CUBLAS_COMPUTE_32F_FAST_TF32, "cublasComputeType_t TF32");
static_assert(qs::cuda::kCublasGemmDefault == CUBLAS_GEMM_DEFAULT, "cublasGemmAlgo_t");
static_assert(sizeof(cublasHandle_t) == sizeof(qs::cuda::cublasHandle), "handle size");
static_assert(sizeof(cublasStatus_t) == sizeof(int), "status is an int");

QS_TEST(cublas_constants_match_the_headers) { QS_EXPECT(true, "checked at compile time"); }
#else
QS_TEST(cublas_constants_match_the_headers) { QS_SKIP("no cuBLAS headers here: the constants are checked where they exist"); }
#endif

QS_TEST_MAIN()
