/*
LayerNorm over the last dimension, as GPT-2 and torch.nn.LayerNorm compute it (see layernorm.h).

  out = (x - mean) * rstd * weight + bias,   var = mean((x - mean)^2)  (biased),
  rstd = 1 / sqrt(var + eps)

Memory layout: inp, out, dinp, dout are (N,C) row-major (N = B*T rows), weight/bias and their
gradients are (C), mean and rstd are (N) and are written by the forward for the backward.

Precision: the row statistics are reduced in double even for float tensors, with a two-pass
variance (no E[x^2] - E[x]^2 cancellation), so float results agree with torch to ~1e-7
relative; the elementwise parts run in T. Row sums use kLanes independent accumulators so
that they vectorise (a single accumulator is a serial add chain the compiler may not reorder);
the order is fixed by C alone, so results do not depend on threading.

Backward adds (+=) into dinp, dweight, dbias; each may be null to skip it. Rows are
independent for dinp, but dweight/dbias are sums over rows. To keep them deterministic for any
thread count, rows are cut into row blocks whose boundaries depend only on N; each block sums
its rows in order into its own double partial, and the partials are added in block order
(reduce.h, shared with rmsnorm.cpp).
*/
#include "cpu/layernorm.h"

#include <cmath>
#include <cstdint>

#include "cpu/reduce.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C, T eps) {
  // out (N,C), mean (N), rstd (N), inp (N,C), weight (C), bias (C) or null
#pragma omp parallel for if ((int64_t)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    const T* x = inp + (int64_t)n * C;
    T* o = out + (int64_t)n * C;
    double m = lane_sum(C, [&](int c) { return (double)x[c]; }) / C;
    double var = lane_sum(C, [&](int c) { double d = (double)x[c] - m; return d * d; }) / C;
    double s = 1.0 / std::sqrt(var + (double)eps);
    // cache the rounded statistics, and normalise with exactly those, so that the backward
    // differentiates the function the forward computed
    T mt = (T)m, st = (T)s;
    mean[n] = mt;
    rstd[n] = st;
    if (bias) {
      for (int c = 0; c < C; c++) o[c] = (x[c] - mt) * st * weight[c] + bias[c];
    } else {
      for (int c = 0; c < C; c++) o[c] = (x[c] - mt) * st * weight[c];
    }
  }
}

// One row of the input gradient:
//   norm = (x - mean) * rstd,  dnorm = dout * weight
//   dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
// (two separate reduction passes: fusing them into one loop measured slower, from register
// pressure with 2 x kLanes double accumulators under SSE2)
template <typename T>
static inline void layernorm_dinp_row(T* dx, const T* dy, const T* x, const T* weight, T mt, T st,
                                      int C) {
  double a = lane_sum(C, [&](int c) { return (double)dy[c] * (double)weight[c]; }) / C;
  double b = lane_sum(C, [&](int c) {
               return (double)dy[c] * (double)weight[c] * ((double)x[c] - mt) * st;
             }) / C;
  T at = (T)a, bt = (T)b;
  for (int c = 0; c < C; c++) {
    T norm = (x[c] - mt) * st;
    dx[c] += (dy[c] * weight[c] - at - norm * bt) * st;
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int N, int C) {
  // dinp (N,C) +=, dweight (C) +=, dbias (C) +=, dout (N,C), inp (N,C), mean/rstd (N)
  bool par = (int64_t)N * C > kParallelMin;
  T* const grads[2] = {dweight, dbias};
  rows_with_param_grads(
      N, C, par, grads,
      [&](int n, double* part) {  // part: (2, C) block partials of dweight, dbias, or null
        const T* dy = dout + (int64_t)n * C;
        const T* x = inp + (int64_t)n * C;
        T mt = mean[n], st = rstd[n];
        if (dinp) layernorm_dinp_row(dinp + (int64_t)n * C, dy, x, weight, mt, st, C);
        if (part) {
          double* pw = part;
          double* pb = part + C;
          for (int c = 0; c < C; c++) {
            pw[c] += (double)dy[c] * (double)((x[c] - mt) * st);
            pb[c] += (double)dy[c];
          }
        }
      },
      [&](int n) {  // no memory for the partials: straight into dweight, dbias
        const T* dy = dout + (int64_t)n * C;
        const T* x = inp + (int64_t)n * C;
        T mt = mean[n], st = rstd[n];
        for (int c = 0; c < C; c++) {
          if (dweight) dweight[c] += dy[c] * ((x[c] - mt) * st);
          if (dbias) dbias[c] += dy[c];
        }
      });
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int, int, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int, int, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int, int);

}  // namespace qs::cpu
