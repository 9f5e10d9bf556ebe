// PLACEHOLDER naive GEMM (correct, slow); the blocked AVX-512/AVX2 version replaces it.
#include "cpu/gemm.h"

#include <cstring>

namespace qs::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc) {
#pragma omp parallel for
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) {
      T acc = 0;
      for (int p = 0; p < K; p++) {
        T a = trans_a ? A[(int64_t)p * lda + i] : A[(int64_t)i * lda + p];
        T b = trans_b ? B[(int64_t)j * ldb + p] : B[(int64_t)p * ldb + j];
        acc += a * b;
      }
      T* c = &C[(int64_t)i * ldc + j];
      *c = beta == T(0) ? alpha * acc : alpha * acc + beta * *c;
    }
  }
}

template <typename T>
void gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, T alpha,
                  const T* A, int lda, int64_t stride_a, const T* B, int ldb, int64_t stride_b,
                  T beta, T* C, int ldc, int64_t stride_c) {
  for (int b = 0; b < batch; b++)
    gemm(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb, beta,
         C + b * stride_c, ldc);
}

const char* gemm_kernel_name() { return "generic"; }
bool gemm_force_kernel(const char* name) { return std::strcmp(name, "generic") == 0 || std::strcmp(name, "auto") == 0; }

template void gemm<float>(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int);
template void gemm<double>(bool, bool, int, int, int, double, const double*, int, const double*, int, double, double*, int);
template void gemm_batched<float>(bool, bool, int, int, int, int, float, const float*, int, int64_t, const float*, int, int64_t, float, float*, int, int64_t);
template void gemm_batched<double>(bool, bool, int, int, int, int, double, const double*, int, int64_t, const double*, int, int64_t, double, double*, int, int64_t);

}  // namespace qs::cpu
