/*
RMSNorm over the last dimension, as Llama / Mistral compute it (see rmsnorm.h).

  out = x * rstd * weight,   rstd = 1 / sqrt(mean(x^2) + eps)

Memory layout: inp, out, dinp, dout are (N,C) row-major (N = B*T rows), weight and dweight
are (C), rstd is (N), written by the forward for the backward.

Gradient, with r = rstd and g = sum_j dout_j * weight_j * x_j:
  dinp_i    += (dout_i * weight_i - x_i * r^2 * g / C) * r
  dweight_i += dout_i * x_i * r          (summed over rows)

Precision and determinism follow layernorm.cpp, with the same helpers (reduce.h): row sums in
double with a fixed number of independent accumulators (vectorisable, order fixed by C), and
dweight summed per fixed row block into double partials that are combined in block order, so
the result is the same for any thread count. dinp and dweight may be null to skip them.
*/
#include "cpu/rmsnorm.h"

#include <cmath>
#include <cstdint>

#include "cpu/reduce.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps) {
  // out (N,C), rstd (N), inp (N,C), weight (C)
#pragma omp parallel for if ((int64_t)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    T* o = out + (int64_t)n * C;
    double ms = lane_sum(C, [&](int c) { return (double)x[c] * (double)x[c]; }) / C;
    T st = (T)(1.0 / std::sqrt(ms + (double)eps));
    rstd[n] = st;  // the backward differentiates with exactly this rounded value
    // (x * rstd) * weight: Llama normalises first, then scales by the weight
    for (int c = 0; c < C; c++) o[c] = (x[c] * st) * weight[c];
  }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C) {
  // dinp (N,C) +=, dweight (C) +=, dout (N,C), inp (N,C), rstd (N)
  bool par = (int64_t)N * C > kParallelMin;
  T* const grads[1] = {dweight};
  rows_with_param_grads(
      N, C, par, grads,
      [&](int n, double* pw) {  // pw: (C) block partial of dweight, or null
        const T* dy = dout + (int64_t)n * C;
        const T* x = inp + (int64_t)n * C;
        T st = rstd[n];
        if (dinp) {
          T* dx = dinp + (int64_t)n * C;
          double g = lane_sum(C, [&](int c) { return (double)dy[c] * (double)weight[c] * (double)x[c]; });
          T k = (T)((double)st * (double)st * g / C);
          for (int c = 0; c < C; c++) dx[c] += (dy[c] * weight[c] - x[c] * k) * st;
        }
        if (pw)
          for (int c = 0; c < C; c++) pw[c] += (double)dy[c] * (double)(x[c] * st);
      },
      [&](int n) {  // no memory for the partials: straight into dweight
        const T* dy = dout + (int64_t)n * C;
        const T* x = inp + (int64_t)n * C;
        T st = rstd[n];
        for (int c = 0; c < C; c++) dweight[c] += dy[c] * (x[c] * st);
      });
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int, int, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int, int);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*, const double*, int, int);

}  // namespace qs::cpu
