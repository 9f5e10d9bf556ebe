// test_blas_abi.cpp: our self-declared cuBLAS constants against the real headers.
//
// blas_dyn.h declares the enum values and prototypes we pass to a dlopen()ed cuBLAS, because
// the build machines have no cuBLAS headers. A drift (a renamed _v2 entry point, a changed
// enum) would fail silently at run time, so wherever the real headers exist (GPU machines with
// the toolkit's cuBLAS, or the nvidia-cublas wheel's include folder on the include path) this
// file checks every value, and every prototype of the function table parameter by parameter, at
// compile time. Elsewhere it reports that it skipped.
#include "harness.h"

#if defined(QUIETSTAR_HAVE_CUDA) && __has_include(<cublas_api.h>)
#include <cublasLt.h>
#include <cublas_api.h>
#include <type_traits>

#include "cuda/blas_dyn.h"

// Our constants are plain ints; comparing them with the headers' enums is the point here.
#pragma GCC diagnostic ignored "-Wenum-compare"

static_assert(qs::cuda::kCublasStatusSuccess == CUBLAS_STATUS_SUCCESS, "cublasStatus_t");
static_assert(qs::cuda::kCublasStatusNotInitialized == CUBLAS_STATUS_NOT_INITIALIZED &&
                  qs::cuda::kCublasStatusAllocFailed == CUBLAS_STATUS_ALLOC_FAILED &&
                  qs::cuda::kCublasStatusInvalidValue == CUBLAS_STATUS_INVALID_VALUE &&
                  qs::cuda::kCublasStatusArchMismatch == CUBLAS_STATUS_ARCH_MISMATCH &&
                  qs::cuda::kCublasStatusMappingError == CUBLAS_STATUS_MAPPING_ERROR &&
                  qs::cuda::kCublasStatusExecutionFailed == CUBLAS_STATUS_EXECUTION_FAILED &&
                  qs::cuda::kCublasStatusInternalError == CUBLAS_STATUS_INTERNAL_ERROR &&
                  qs::cuda::kCublasStatusNotSupported == CUBLAS_STATUS_NOT_SUPPORTED &&
                  qs::cuda::kCublasStatusLicenseError == CUBLAS_STATUS_LICENSE_ERROR,
              "cublasStatus_t error values (named in our Status messages)");
static_assert(qs::cuda::kCublasOpN == CUBLAS_OP_N && qs::cuda::kCublasOpT == CUBLAS_OP_T, "cublasOperation_t");
static_assert(qs::cuda::kCublasDefaultMath == CUBLAS_DEFAULT_MATH, "cublasMath_t default");
static_assert(qs::cuda::kCublasTf32TensorOpMath == CUBLAS_TF32_TENSOR_OP_MATH, "cublasMath_t tf32");
static_assert(qs::cuda::kCudaR32F == CUDA_R_32F && qs::cuda::kCudaR16F == CUDA_R_16F &&
                  qs::cuda::kCudaR16BF == CUDA_R_16BF, "cudaDataType_t");
static_assert(qs::cuda::kCublasComputeF32 == CUBLAS_COMPUTE_32F, "cublasComputeType_t 32F");
static_assert(qs::cuda::kCublasComputeF32FastTF32 == CUBLAS_COMPUTE_32F_FAST_TF32, "cublasComputeType_t TF32");
static_assert(qs::cuda::kCublasComputeF32Fast16BF == CUBLAS_COMPUTE_32F_FAST_16BF, "cublasComputeType_t BF16");
static_assert(qs::cuda::kCublasGemmDefault == CUBLAS_GEMM_DEFAULT, "cublasGemmAlgo_t");
static_assert(sizeof(cublasHandle_t) == sizeof(qs::cuda::cublasHandle), "handle size");
static_assert(sizeof(cublasStatus_t) == sizeof(int), "status is an int");

// Our function-table prototypes against the real ones, parameter by parameter: same count, and
// each parameter (and the result) the same size and kind (pointer / floating / integer or enum),
// which is what the calling convention sees.
template <typename T>
constexpr int abi_kind() {
  return std::is_pointer<T>::value ? 1 : std::is_floating_point<T>::value ? 2 : 0;
}
template <typename A, typename B>
constexpr bool same_slot() {
  return sizeof(A) == sizeof(B) && abi_kind<A>() == abi_kind<B>();
}
template <typename Ours, typename Real>
struct SameAbi : std::false_type {};
template <typename R1, typename... A1, typename R2, typename... A2>
struct SameAbi<R1 (*)(A1...), R2 (*)(A2...)> {
  template <bool kSameCount, int = 0>
  struct Slots : std::false_type {};
  template <int Dummy>
  struct Slots<true, Dummy> : std::integral_constant<bool, (same_slot<A1, A2>() && ...)> {};
  static constexpr bool value = same_slot<R1, R2>() && Slots<sizeof...(A1) == sizeof...(A2)>::value;
};
#define QS_SAME_ABI(field, real) \
  static_assert(SameAbi<decltype(qs::cuda::BlasTable{}.field), decltype(&real)>::value, #field " vs " #real)
QS_SAME_ABI(create, cublasCreate_v2);
QS_SAME_ABI(destroy, cublasDestroy_v2);
QS_SAME_ABI(set_stream, cublasSetStream_v2);
QS_SAME_ABI(set_math_mode, cublasSetMathMode);
QS_SAME_ABI(sgemm, cublasSgemm_v2);
QS_SAME_ABI(gemm_ex, cublasGemmEx);
QS_SAME_ABI(gemm_strided_batched_ex, cublasGemmStridedBatchedEx);
QS_SAME_ABI(get_version, cublasGetVersion_v2);
QS_SAME_ABI(lt_create, cublasLtCreate);
QS_SAME_ABI(lt_destroy, cublasLtDestroy);

QS_TEST(cublas_constants_match_the_headers) { QS_EXPECT(true, "checked at compile time"); }
#else
QS_TEST(cublas_constants_match_the_headers) { QS_SKIP("no cuBLAS headers here: the constants are checked where they exist"); }
#endif

QS_TEST_MAIN()
