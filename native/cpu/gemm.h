// gemm.h: dense matrix products on the CPU, row-major, BLAS-style.
//
//   C[M,N] = alpha * op(A) · op(B) + beta * C
//   op(A) is A[M,K] (trans_a = false, row stride lda) or A[K,M]ᵀ (trans_a = true)
//   op(B) is B[K,N] (trans_b = false, row stride ldb) or B[N,K]ᵀ (trans_b = true)
//
// beta = 0 overwrites C (NaNs in C are not propagated); beta = 1 accumulates, which is how the
// backward passes add parameter gradients. float uses cache-blocked AVX-512 / AVX2+FMA
// micro-kernels chosen at run time by CPUID (the binary itself targets baseline x86-64, so
// it loads on any machine); double is the precise path used by gradient checks.
// Parallelised over the shared OpenMP pool (parallel.h).
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// `batch` independent products; matrix b of X starts at X + b * stride_X.
template <typename T>
void gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, T alpha,
                  const T* A, int lda, int64_t stride_a, const T* B, int ldb, int64_t stride_b,
                  T beta, T* C, int ldc, int64_t stride_c);

// Which float micro-kernel gemm() dispatches to on this machine: "avx512", "avx2" or "generic".
const char* gemm_kernel_name();

// Force a micro-kernel family (benchmarks and tests of each path). "auto" restores CPUID choice.
// Returns false when the machine cannot run the requested one.
bool gemm_force_kernel(const char* name);

}  // namespace qs::cpu
