// quietstar_heads.cpp: the mixing head and the rewards of the Quiet-STaR step (see
// quietstar_heads.h). Products go through gemm; the pointwise work is parallel over rows, and
// every reduction (bias gradients, d w) runs in a fixed order, so results do not depend on the
// thread count.
#include "cpu/quietstar_heads.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/activations.h"
#include "cpu/gemm.h"

namespace qs::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 15;

// out (n, D) = out + bias (D) per row
template <typename T>
void add_bias(T* out, const T* bias, int n, int D) {
#pragma omp parallel for schedule(static) if ((int64_t)n * D > kParallelMin)
  for (int r = 0; r < n; r++) {
    T* o = out + (int64_t)r * D;
    for (int j = 0; j < D; j++) o[j] += bias[j];
  }
}

// db (D) += column sums of dy (n, D), each column summed in row order
template <typename T>
void colsum(T* db, const T* dy, int n, int D) {
  constexpr int kCols = 64;
  const int nch = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if ((int64_t)n * D > kParallelMin && nch > 1)
  for (int ch = 0; ch < nch; ch++) {
    const int c0 = ch * kCols, nc = D - c0 < kCols ? D - c0 : kCols;
    T acc[kCols] = {};
    for (int r = 0; r < n; r++) {
      const T* row = dy + (int64_t)r * D + c0;
      for (int c = 0; c < nc; c++) acc[c] += row[c];
    }
    for (int c = 0; c < nc; c++) db[c0 + c] += acc[c];
  }
}

}  // namespace

template <typename T>
void mixing_forward(const MixingActs<T>& a, const T* hb, const T* hc, const MixingWeights<T>& w, int n, int D,
                    bool weights_base, bool sigmoid) {
  if (n <= 0) return;
  // z1 = hb · W1[:, :D]ᵀ + hc · W1[:, D:]ᵀ + b1
  gemm<T>(false, true, n, D, D, T(1), hb, D, w.w1, 2 * D, T(0), a.z1, D);
  gemm<T>(false, true, n, D, D, T(1), hc, D, w.w1 + D, 2 * D, T(1), a.z1, D);
  add_bias(a.z1, w.b1, n, D);
  relu_forward<T>(a.a1, a.z1, (int64_t)n * D);
  gemm<T>(false, true, n, D, D, T(1), a.a1, D, w.w2, D, T(0), a.z2, D);
  add_bias(a.z2, w.b2, n, D);
  relu_forward<T>(a.a2, a.z2, (int64_t)n * D);
#pragma omp parallel for schedule(static) if ((int64_t)n * D > kParallelMin)
  for (int r = 0; r < n; r++) {
    const T* x = a.a2 + (int64_t)r * D;
    T s = 0;
    for (int j = 0; j < D; j++) s += x[j] * w.w3[j];
    a.wraw[r] = s;
    const T wt = sigmoid ? T(1) / (T(1) + std::exp(-s)) : s;
    a.w[r] = wt;
    // u weights the chain, 1 - u the base: exactly h_base when u = 0 (the reference at init)
    const T u = weights_base ? T(1) - wt : wt, ub = T(1) - u;
    const T* b = hb + (int64_t)r * D;
    const T* c = hc + (int64_t)r * D;
    T* o = a.hm + (int64_t)r * D;
    for (int j = 0; j < D; j++) o[j] = ub * b[j] + u * c[j];
  }
}

template <typename T>
void mixing_backward(T* dhb, T* dhc, const MixingGrads<T>& g, T* dhm, T* t1, T* dw, const MixingActs<T>& a, const T* hb,
                     const T* hc, const MixingWeights<T>& w, int n, int D, bool weights_base, bool sigmoid) {
  if (n <= 0) return;
  // hm = (1 - u)·hb + u·hc:  dhb = (1 - u)·dhm, dhc = u·dhm, du = <dhm, hc - hb>;
  // dw = du (reference, u = w) or -du (paper, u = 1 - w); through the sigmoid dwraw = dw·w(1 - w).
  // t1 = dwraw ⊗ w3 = d(a2)
#pragma omp parallel for schedule(static) if ((int64_t)n * D > kParallelMin)
  for (int r = 0; r < n; r++) {
    const T wt = a.w[r];
    const T u = weights_base ? T(1) - wt : wt, ub = T(1) - u;
    const T* d = dhm + (int64_t)r * D;
    const T* b = hb + (int64_t)r * D;
    const T* c = hc + (int64_t)r * D;
    T* ob = dhb + (int64_t)r * D;
    T* oc = dhc + (int64_t)r * D;
    T du = 0;
    for (int j = 0; j < D; j++) {
      du += d[j] * (c[j] - b[j]);
      ob[j] = ub * d[j];
      oc[j] = u * d[j];
    }
    T dwr = weights_base ? -du : du;
    if (sigmoid) dwr *= wt * (T(1) - wt);
    T* t = t1 + (int64_t)r * D;
    for (int j = 0; j < D; j++) t[j] = dwr * w.w3[j];
    dw[r] = dwr;  // d(loss)/d(wraw)
  }
  // w3 (1, D) += dwrawᵀ · a2
  if (g.w3) gemm<T>(true, false, 1, D, n, T(1), dw, 1, a.a2, D, T(1), g.w3, D);
  // dz2 = relu'(z2) · da2  (into dhm, which is free now)
  std::memset(dhm, 0, sizeof(T) * (size_t)n * D);
  relu_backward<T>(dhm, a.z2, t1, (int64_t)n * D);
  if (g.w2) gemm<T>(true, false, D, D, n, T(1), dhm, D, a.a1, D, T(1), g.w2, D);
  if (g.b2) colsum(g.b2, dhm, n, D);
  // da1 = dz2 · W2 (into t1), dz1 = relu'(z1) · da1 (into dhm)
  gemm<T>(false, false, n, D, D, T(1), dhm, D, w.w2, D, T(0), t1, D);
  std::memset(dhm, 0, sizeof(T) * (size_t)n * D);
  relu_backward<T>(dhm, a.z1, t1, (int64_t)n * D);
  if (g.w1) {
    gemm<T>(true, false, D, D, n, T(1), dhm, D, hb, D, T(1), g.w1, 2 * D);
    gemm<T>(true, false, D, D, n, T(1), dhm, D, hc, D, T(1), g.w1 + D, 2 * D);
  }
  if (g.b1) colsum(g.b1, dhm, n, D);
  gemm<T>(false, false, n, D, D, T(1), dhm, D, w.w1, 2 * D, T(1), dhb, D);
  gemm<T>(false, false, n, D, D, T(1), dhm, D, w.w1 + D, 2 * D, T(1), dhc, D);
}

template <typename T>
void quietstar_rewards(double* reward, double* weight, const T* base_loss, const T* talk_loss, const int64_t* talk_off,
                       int B, int P, int T_, int A, bool trice, bool clamp) {
  const int TA = T_ - 1 - A > 0 ? T_ - 1 - A : 0;
  const int R = B * P;
  for (int64_t n = 0; n < (int64_t)R * T_; n++) reward[n] = weight[n] = 0;
  for (int r = 0; r < R; r++) {
    const int b = r / P;
    for (int i = 0; i < TA; i++) {
      double s = 0;
      for (int k = 0; k < A; k++)
        s += (double)base_loss[(int64_t)b * T_ + i + k] - (double)talk_loss[talk_off[k] + (int64_t)r * (T_ - 1 - k) + i];
      reward[(int64_t)r * T_ + i] = s;
    }
  }
  for (int b = 0; b < B; b++)
    for (int i = 0; i < TA; i++) {
      double mean = 0;
      if (trice && P > 1) {
        for (int p = 0; p < P; p++) mean += reward[((int64_t)b * P + p) * T_ + i];
        mean /= P;
      }
      for (int p = 0; p < P; p++) {
        const int64_t n = ((int64_t)b * P + p) * T_ + i;
        const double c = reward[n] - mean;
        weight[n] = clamp && c < 0 ? 0.0 : c;
      }
    }
}

template <typename T>
void gather_rows(T* dst, const T* src, const int64_t* rows, int64_t n, int D, T f) {
#pragma omp parallel for schedule(static) if (n * D > kParallelMin)
  for (int64_t k = 0; k < n; k++) {
    const T* s = src + rows[k] * D;
    T* o = dst + k * D;
    for (int j = 0; j < D; j++) o[j] = f * s[j];
  }
}

template <typename T>
void fill_rows(T* dst, const T* vec, const int64_t* rows, int64_t n, int D, T f) {
#pragma omp parallel for schedule(static) if (n * D > kParallelMin)
  for (int64_t k = 0; k < n; k++) {
    T* o = dst + rows[k] * D;
    for (int j = 0; j < D; j++) o[j] = f * vec[j];
  }
}

template <typename T>
void sum_rows(T* out, const T* src, const int64_t* rows, int64_t n, int D, T f) {
#pragma omp parallel for schedule(static) if (n * D > kParallelMin)
  for (int j = 0; j < D; j++) {
    T s = 0;
    for (int64_t k = 0; k < n; k++) s += src[rows[k] * D + j];
    out[j] += f * s;
  }
}

template <typename T>
void scatter_add_rows(T* dst, const T* src, const int64_t* dest, const int64_t* start, const int64_t* from, int64_t m,
                      int D, T f) {
#pragma omp parallel for schedule(static) if (m * D > kParallelMin)
  for (int64_t j = 0; j < m; j++) {
    T* o = dst + dest[j] * D;
    for (int c = 0; c < D; c++) {
      T s = 0;
      for (int64_t q = start[j]; q < start[j + 1]; q++) s += src[from[q] * D + c];
      o[c] += f * s;
    }
  }
}

void scatter_lists(const int64_t* row_of, int64_t n, ScatterLists* out) {
  std::vector<int64_t> order((size_t)n);
  for (int64_t k = 0; k < n; k++) order[(size_t)k] = k;
  // stable: the sources of one destination stay in increasing k
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row_of[a] < row_of[b]; });
  out->dest.clear(), out->start.clear(), out->from = order;
  for (int64_t q = 0; q < n; q++) {
    const int64_t r = row_of[order[(size_t)q]];
    if (q == 0 || r != out->dest.back()) out->dest.push_back(r), out->start.push_back(q);
  }
  out->start.push_back(n);
}

#define QS_HEADS_INSTANTIATE(T)                                                                                          \
  template void mixing_forward<T>(const MixingActs<T>&, const T*, const T*, const MixingWeights<T>&, int, int, bool,   \
                                  bool);                                                                               \
  template void mixing_backward<T>(T*, T*, const MixingGrads<T>&, T*, T*, T*, const MixingActs<T>&, const T*, const T*, \
                                   const MixingWeights<T>&, int, int, bool, bool);                                     \
  template void quietstar_rewards<T>(double*, double*, const T*, const T*, const int64_t*, int, int, int, int, bool, bool); \
  template void gather_rows<T>(T*, const T*, const int64_t*, int64_t, int, T);                                       \
  template void fill_rows<T>(T*, const T*, const int64_t*, int64_t, int, T);                                         \
  template void sum_rows<T>(T*, const T*, const int64_t*, int64_t, int, T);                                          \
  template void scatter_add_rows<T>(T*, const T*, const int64_t*, const int64_t*, const int64_t*, int64_t, int, T);

QS_HEADS_INSTANTIATE(float)
QS_HEADS_INSTANTIATE(double)

}  // namespace qs::cpu
