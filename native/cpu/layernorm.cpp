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
its rows in order into its own double partial, and the partials are added in block order.
*/
#include "cpu/layernorm.h"

#include <cmath>
#include <cstdint>
#include <new>

namespace qs::cpu {

static constexpr int kLanes = 8;                // independent accumulators per row reduction
static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded
static constexpr int kMinRowsPerBlock = 16;     // parameter-gradient row blocks ...
static constexpr int kMaxRowBlocks = 64;        // ... at most this many (bounds the scratch)

// sum over c in [0, C) of f(c), in double, in an order fixed by C alone.
template <typename F>
static inline double lane_sum(int C, F f) {
  double acc[kLanes] = {};
  int c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int k = 0; k < kLanes; k++) acc[k] += f(c + k);
  double s = 0;
  for (; c < C; c++) s += f(c);
  for (int k = 0; k < kLanes; k++) s += acc[k];
  return s;
}

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
  bool params = dweight || dbias;
  int nb = (N + kMinRowsPerBlock - 1) / kMinRowsPerBlock;
  if (nb > kMaxRowBlocks) nb = kMaxRowBlocks;
  int rows_per_block = nb > 0 ? (N + nb - 1) / nb : 0;
  // per-block partial sums (nb, 2, C): [0,C) dweight, [C,2C) dbias
  double* partial = nullptr;
  if (params && nb > 0) partial = new (std::nothrow) double[(size_t)nb * 2 * C];

  if (params && !partial) {
    // Out of memory for the scratch: do the parameter gradients serially in row order
    // (still deterministic, only rounded differently) and the input gradient as usual.
    for (int n = 0; n < N; n++) {
      const T* dy = dout + (int64_t)n * C;
      const T* x = inp + (int64_t)n * C;
      T mt = mean[n], st = rstd[n];
      for (int c = 0; c < C; c++) {
        if (dweight) dweight[c] += dy[c] * ((x[c] - mt) * st);
        if (dbias) dbias[c] += dy[c];
      }
    }
    params = false;
  }

#pragma omp parallel for schedule(static) if (par)
  for (int blk = 0; blk < nb; blk++) {
    int n0 = blk * rows_per_block;
    int n1 = n0 + rows_per_block < N ? n0 + rows_per_block : N;
    double* pw = params ? partial + (size_t)blk * 2 * C : nullptr;
    double* pb = params ? pw + C : nullptr;
    if (params)
      for (int c = 0; c < 2 * C; c++) pw[c] = 0;
    for (int n = n0; n < n1; n++) {
      const T* dy = dout + (int64_t)n * C;
      const T* x = inp + (int64_t)n * C;
      T mt = mean[n], st = rstd[n];
      if (dinp) layernorm_dinp_row(dinp + (int64_t)n * C, dy, x, weight, mt, st, C);
      if (params) {
        for (int c = 0; c < C; c++) {
          pw[c] += (double)dy[c] * (double)((x[c] - mt) * st);
          pb[c] += (double)dy[c];
        }
      }
    }
  }

  if (params) {
    // combine the block partials in block order, column by column
#pragma omp parallel for if (par && C >= 256)
    for (int c = 0; c < C; c++) {
      double sw = 0, sb = 0;
      for (int blk = 0; blk < nb; blk++) {
        sw += partial[(size_t)blk * 2 * C + c];
        sb += partial[(size_t)blk * 2 * C + C + c];
      }
      if (dweight) dweight[c] += (T)sw;
      if (dbias) dbias[c] += (T)sb;
    }
  }
  delete[] partial;
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int, int, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int, int, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int, int);

}  // namespace qs::cpu
