// linear.cpp: fully connected layers on top of gemm (see linear.h for layouts and conventions).
#include "cpu/linear.h"

#include "cpu/gemm.h"

namespace qs::cpu {

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int M, int K, int N,
                    WeightLayout layout) {
  bool trans_w = layout == WeightLayout::OutIn;   // (N,K) stored: use Wᵀ
  int ldw = trans_w ? K : N;
  gemm<T>(false, trans_w, M, N, K, T(1), inp, K, weight, ldw, T(0), out, N);
  if (bias) {
#pragma omp parallel for
    for (int m = 0; m < M; m++) {
      T* row = out + (int64_t)m * N;
      for (int n = 0; n < N; n++) row[n] += bias[n];
    }
  }
}

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int M, int K, int N, WeightLayout layout) {
  bool out_in = layout == WeightLayout::OutIn;
  if (dinp) {
    // dinp (M,K) += dout (M,N) · W as (N,K): OutIn uses W directly, InOut stores (K,N) so use Wᵀ
    gemm<T>(false, !out_in, M, K, N, T(1), dout, N, weight, out_in ? K : N, T(1), dinp, K);
  }
  if (dweight) {
    if (out_in) {
      // dW (N,K) += doutᵀ (N,M) · inp (M,K)
      gemm<T>(true, false, N, K, M, T(1), dout, N, inp, K, T(1), dweight, K);
    } else {
      // dW (K,N) += inpᵀ (K,M) · dout (M,N)
      gemm<T>(true, false, K, N, M, T(1), inp, K, dout, N, T(1), dweight, N);
    }
  }
  if (dbias) {
    // Column sums in a fixed order per column: deterministic for any thread count.
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
      T acc = 0;
      for (int m = 0; m < M; m++) acc += dout[(int64_t)m * N + n];
      dbias[n] += acc;
    }
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int, int, int, WeightLayout);
template void linear_forward<double>(double*, const double*, const double*, const double*, int, int, int, WeightLayout);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int, int, int, WeightLayout);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*, int, int, int, WeightLayout);

}  // namespace qs::cpu
