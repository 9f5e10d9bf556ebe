// matmul_small.cpp: products with a few rows (see matmul_small.h).
//
// KV-cached decoding multiplies M = batch rows (often 1) by whole weight matrices. gemm would
// pack the whole weight matrix for each call, which costs more than the product; here each
// weight row is streamed once and used for all M (<= kSmallRows) rows of x. Parallel over
// output columns.
#include "cpu/matmul_small.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace qs::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements; below this, loops stay on one thread

// out_in: W (N, K) [ldw]: out[m][n] (+)= <x_m, W_n>, for n in [n0, n1)
template <typename T, int VB>
QS_INLINE void small_out_in(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, int M, int K, int n0, int n1,
                            bool accumulate) {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  for (int n = n0; n < n1; n++) {
    const T* w = W + (int64_t)n * ldw;
    for (int m = 0; m < M; m++) {
      const T* xm = x + (int64_t)m * ldx;
      V a0 = V{}, a1 = V{};
      int k = 0;
      for (; k + 2 * L <= K; k += 2 * L) {
        a0 += S::load(xm + k) * S::load(w + k);
        a1 += S::load(xm + k + L) * S::load(w + k + L);
      }
      for (; k + L <= K; k += L) a0 += S::load(xm + k) * S::load(w + k);
      a0 += a1;
      T sum = 0;
      for (int i = 0; i < L; i++) sum += a0[i];
      for (; k < K; k++) sum += xm[k] * w[k];
      T* o = out + (int64_t)m * ldo + n;
      *o = accumulate ? *o + sum : sum;
    }
  }
}

// in_out: W (K, N) [ldw]: out[m][c] (+)= Σ_k x[m][k] W[k][c], for columns [c0, c1).
// CG vectors of columns at a time, so that M·CG independent accumulators hide the FMA latency
// (one row alone would be a single dependent chain); the tail in scalars.
template <typename T, int VB, int CG>
QS_INLINE int small_in_out_cols(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, int M, int K, int c, int c1,
                                bool accumulate) {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  for (; c + CG * L <= c1; c += CG * L) {
    V acc[kSmallRows][CG];
    for (int m = 0; m < M; m++)
      for (int g = 0; g < CG; g++) acc[m][g] = accumulate ? S::load(out + (int64_t)m * ldo + c + g * L) : V{};
    for (int k = 0; k < K; k++) {
      V w[CG];
      for (int g = 0; g < CG; g++) w[g] = S::load(W + (int64_t)k * ldw + c + g * L);
      for (int m = 0; m < M; m++) {
        const T xv = x[(int64_t)m * ldx + k];
        for (int g = 0; g < CG; g++) acc[m][g] += xv * w[g];
      }
    }
    for (int m = 0; m < M; m++)
      for (int g = 0; g < CG; g++) S::store(out + (int64_t)m * ldo + c + g * L, acc[m][g]);
  }
  return c;
}

template <typename T, int VB>
QS_INLINE void small_in_out(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, int M, int K, int c0, int c1,
                            bool accumulate) {
  int c = c0;
  if (M <= 2) c = small_in_out_cols<T, VB, 4>(out, ldo, x, ldx, W, ldw, M, K, c, c1, accumulate);
  else if (M <= 4) c = small_in_out_cols<T, VB, 2>(out, ldo, x, ldx, W, ldw, M, K, c, c1, accumulate);
  c = small_in_out_cols<T, VB, 1>(out, ldo, x, ldx, W, ldw, M, K, c, c1, accumulate);
  for (; c < c1; c++)
    for (int m = 0; m < M; m++) {
      T sum = accumulate ? out[(int64_t)m * ldo + c] : T(0);
      for (int k = 0; k < K; k++) sum += x[(int64_t)m * ldx + k] * W[(int64_t)k * ldw + c];
      out[(int64_t)m * ldo + c] = sum;
    }
}

template <typename T>
using SmallFn = void (*)(T*, int, const T*, int, const T*, int, int, int, int, int, bool);

template <typename T> void oi_generic(T* o, int ldo, const T* x, int ldx, const T* W, int ldw, int M, int K, int a, int b, bool acc) {
  small_out_in<T, 16>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
template <typename T> void io_generic(T* o, int ldo, const T* x, int ldx, const T* W, int ldw, int M, int K, int a, int b, bool acc) {
  small_in_out<T, 16>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
#if QS_X86
QS_TARGET_AVX2 void oi_avx2(float* o, int ldo, const float* x, int ldx, const float* W, int ldw, int M, int K, int a, int b,
                            bool acc) {
  small_out_in<float, 32>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
QS_TARGET_AVX2 void io_avx2(float* o, int ldo, const float* x, int ldx, const float* W, int ldw, int M, int K, int a, int b,
                            bool acc) {
  small_in_out<float, 32>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
QS_TARGET_AVX512 void oi_avx512(float* o, int ldo, const float* x, int ldx, const float* W, int ldw, int M, int K, int a,
                                int b, bool acc) {
  small_out_in<float, 64>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
QS_TARGET_AVX512 void io_avx512(float* o, int ldo, const float* x, int ldx, const float* W, int ldw, int M, int K, int a,
                                int b, bool acc) {
  small_in_out<float, 64>(o, ldo, x, ldx, W, ldw, M, K, a, b, acc);
}
#endif

template <typename T>
void pick_small(bool out_in, SmallFn<T>* fn) {
  *fn = out_in ? oi_generic<T> : io_generic<T>;
#if QS_X86
  if constexpr (std::is_same_v<T, float>) {
    switch (active_isa()) {
      case kIsaAvx512: *fn = out_in ? oi_avx512 : io_avx512; break;
      case kIsaAvx2: *fn = out_in ? oi_avx2 : io_avx2; break;
      default: break;
    }
  }
#endif
}

}  // namespace

// out (M, N) [ldo] (= or +=) x (M, K) · op(W), M <= kSmallRows
template <typename T>
void matmul_small(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, bool out_in, int M, int K, int N,
              bool accumulate) {
  SmallFn<T> fn;
  pick_small<T>(out_in, &fn);
  constexpr int kCols = 64;  // columns per work item (a multiple of every vector width)
  const int nblk = (N + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if ((int64_t)N * K > kParallelMin)
  for (int blk = 0; blk < nblk; blk++) {
    const int c0 = blk * kCols, c1 = std::min(N, c0 + kCols);
    fn(out, ldo, x, ldx, W, ldw, M, K, c0, c1, accumulate);
  }
}

template void matmul_small<float>(float*, int, const float*, int, const float*, int, bool, int, int, int, bool);
template void matmul_small<double>(double*, int, const double*, int, const double*, int, bool, int, int, int, bool);

}  // namespace qs::cpu
