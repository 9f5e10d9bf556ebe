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

float runs on whole SIMD vectors (vec_math.h), one templated row body compiled for SSE2 /
AVX2+FMA / AVX-512 and picked per call by active_isa() (isa.h; QS_CPU_SIMD caps it). Its row
sums (reduce.h's VecRowSum) add float terms 4 vectors at a time and accumulate those partials
in double, in an order fixed by C and the vector width; the variance's second pass runs on
x - mean(float) and corrects for that shift exactly. That keeps the statistics within a few
1e-8 relative of the double two-pass ones (torch's float LayerNorm is no closer) while doing
one float->double conversion per 4 vectors instead of one per element. The parameter
gradients' partials stay double per column. double (gradient checks) keeps the scalar loops.

Backward adds (+=) into dinp, dweight, dbias; each may be null to skip it. Rows are
independent for dinp, but dweight/dbias are sums over rows. To keep them deterministic for any
thread count, rows are cut into row blocks whose boundaries depend only on N; each block sums
its rows in order into its own double partial, and the partials are added in block order
(reduce.h, shared with rmsnorm.cpp).
*/
#include "cpu/layernorm.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/reduce.h"
#include "cpu/vec_math.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

template <typename T>
static void layernorm_forward_scalar(T* out, T* mean, T* rstd, const T* inp, const T* weight,
                                     const T* bias, int N, int C, T eps) {
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
static void layernorm_backward_scalar(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
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

// ---------------------------------------------------------------------------------------------
// float: vector row bodies and the ISA dispatch

namespace {

// One row of the forward: x, o (C); writes *mean, *rstd. The steps of the scalar loop, with
// the sums in VecRowSum (reduce.h).
template <int VB>
QS_INLINE void ln_fwd_row(float* o, float* mean, float* rstd, const float* x, const float* w,
                          const float* b, int C, float eps) {
  typedef vec::Simd<float, VB> S;
  typedef typename S::V VF;
  constexpr int L = S::L;

  VecRowSum<VB> sx;
  int c = 0;
  for (; c + 4 * L <= C; c += 4 * L)
    sx.add4(S::load(x + c), S::load(x + c + L), S::load(x + c + 2 * L), S::load(x + c + 3 * L));
  for (; c + L <= C; c += L) sx.add1(S::load(x + c));
  double tail = 0;
  for (; c < C; c++) tail += (double)x[c];
  const double m = sx.total(tail) / C;
  const float mt = (float)m;

  // Two-pass variance, the second pass about the float mean mt so that it runs on floats:
  // d = x - mt is exact when x is within a factor 2 of mt and else rounds once, and
  // sum (x - mt)^2 = sum (x - m)^2 + C (m - mt)^2 exactly, so the shift is taken back out.
  VecRowSum<VB> sd;
  const VF mv = S::splat(mt);
  c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    VF d0 = S::load(x + c) - mv, d1 = S::load(x + c + L) - mv;
    VF d2 = S::load(x + c + 2 * L) - mv, d3 = S::load(x + c + 3 * L) - mv;
    sd.add4(d0 * d0, d1 * d1, d2 * d2, d3 * d3);
  }
  for (; c + L <= C; c += L) {
    VF d = S::load(x + c) - mv;
    sd.add1(d * d);
  }
  double tailv = 0;
  for (; c < C; c++) {
    double d = (double)x[c] - (double)mt;
    tailv += d * d;
  }
  const double shift = m - (double)mt;
  double var = sd.total(tailv) / C - shift * shift;
  var = var > 0 ? var : 0;
  // cache the rounded statistics and normalise with exactly those (see the scalar loop)
  const float st = (float)(1.0 / std::sqrt(var + (double)eps));
  *mean = mt;
  *rstd = st;

  c = 0;
  if (b) {
    for (; c + L <= C; c += L)
      S::store(o + c, (S::load(x + c) - mt) * st * S::load(w + c) + S::load(b + c));
    for (; c < C; c++) o[c] = (x[c] - mt) * st * w[c] + b[c];
  } else {
    for (; c + L <= C; c += L) S::store(o + c, (S::load(x + c) - mt) * st * S::load(w + c));
    for (; c < C; c++) o[c] = (x[c] - mt) * st * w[c];
  }
}

// One row of the backward (see layernorm_dinp_row): dx (C) += if kDinp; pw, pb (C) double
// partials of dweight, dbias += if kPart (pb may then still be null).
template <int VB, bool kDinp, bool kPart>
QS_INLINE void ln_bwd_row(float* dx, double* pw, double* pb, const float* dy, const float* x,
                          const float* w, float mt, float st, int C) {
  typedef vec::Simd<float, VB> S;
  typedef typename S::V VF;
  constexpr int L = S::L;

  // pw += dy * norm, pb += dy in double, norm = (x - mean) * rstd rounded as the forward's
  if (kPart) accumulate_norm_partials<VB>(pw, pb, dy, x, mt, st, C);
  if (!kDinp) return;

  // a = mean(g), b = mean(g * norm) with g = dy * w (float terms, VecRowSum sums)
  VecRowSum<VB> sa, sb;
  int c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    VF g[4], gn[4];
    for (int k = 0; k < 4; k++) {
      g[k] = S::load(dy + c + k * L) * S::load(w + c + k * L);
      gn[k] = g[k] * ((S::load(x + c + k * L) - mt) * st);
    }
    sa.add4(g[0], g[1], g[2], g[3]);
    sb.add4(gn[0], gn[1], gn[2], gn[3]);
  }
  for (; c + L <= C; c += L) {
    VF g = S::load(dy + c) * S::load(w + c);
    sa.add1(g);
    sb.add1(g * ((S::load(x + c) - mt) * st));
  }
  double ta = 0, tb = 0;
  for (; c < C; c++) {
    float g = dy[c] * w[c];
    ta += (double)g;
    tb += (double)(g * ((x[c] - mt) * st));
  }
  const float at = (float)(sa.total(ta) / C), bt = (float)(sb.total(tb) / C);
  c = 0;
  for (; c + L <= C; c += L) {
    VF norm = (S::load(x + c) - mt) * st;
    S::store(dx + c, S::load(dx + c) + (S::load(dy + c) * S::load(w + c) - at - norm * bt) * st);
  }
  for (; c < C; c++) {
    float norm = (x[c] - mt) * st;
    dx[c] += (dy[c] * w[c] - at - norm * bt) * st;
  }
}

// Rows [n0, n1) of the forward.
struct LnFwdArgs {
  float *out, *mean, *rstd;
  const float *inp, *weight, *bias;
  int C;
  float eps;
};
template <int VB>
QS_INLINE void ln_fwd_rows(const LnFwdArgs& a, int n0, int n1) {
  for (int n = n0; n < n1; n++) {
    const int64_t off = (int64_t)n * a.C;
    ln_fwd_row<VB>(a.out + off, a.mean + n, a.rstd + n, a.inp + off, a.weight, a.bias, a.C, a.eps);
  }
}

// Row n of the backward, into dinp (or null) and the block partials part (2, C) (or null).
struct LnBwdArgs {
  float* dinp;
  const float *dout, *inp, *weight, *mean, *rstd;
  bool dbias;
  int C;
};
template <int VB>
QS_INLINE void ln_bwd_rows(const LnBwdArgs& a, int n, double* part) {
  const int64_t off = (int64_t)n * a.C;
  float* dx = a.dinp ? a.dinp + off : nullptr;
  double* pw = part;
  double* pb = part && a.dbias ? part + a.C : nullptr;
  const float *dy = a.dout + off, *x = a.inp + off;
  if (dx && pw) ln_bwd_row<VB, true, true>(dx, pw, pb, dy, x, a.weight, a.mean[n], a.rstd[n], a.C);
  else if (dx) ln_bwd_row<VB, true, false>(dx, pw, pb, dy, x, a.weight, a.mean[n], a.rstd[n], a.C);
  else if (pw) ln_bwd_row<VB, false, true>(dx, pw, pb, dy, x, a.weight, a.mean[n], a.rstd[n], a.C);
}

void ln_fwd_generic(const LnFwdArgs& a, int n0, int n1) { ln_fwd_rows<16>(a, n0, n1); }
void ln_bwd_generic(const LnBwdArgs& a, int n, double* part) { ln_bwd_rows<16>(a, n, part); }
#if QS_X86
QS_TARGET_AVX2 void ln_fwd_avx2(const LnFwdArgs& a, int n0, int n1) { ln_fwd_rows<32>(a, n0, n1); }
QS_TARGET_AVX2 void ln_bwd_avx2(const LnBwdArgs& a, int n, double* part) { ln_bwd_rows<32>(a, n, part); }
QS_TARGET_AVX512 void ln_fwd_avx512(const LnFwdArgs& a, int n0, int n1) { ln_fwd_rows<64>(a, n0, n1); }
QS_TARGET_AVX512 void ln_bwd_avx512(const LnBwdArgs& a, int n, double* part) { ln_bwd_rows<64>(a, n, part); }
#endif

constexpr int kRowBlock = 16;  // forward rows per parallel work item

void layernorm_forward_f32(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                           const float* bias, int N, int C, float eps) {
  // out (N,C), mean (N), rstd (N), inp (N,C), weight (C), bias (C) or null
  void (*fn)(const LnFwdArgs&, int, int) = ln_fwd_generic;
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: fn = ln_fwd_avx512; break;
    case kIsaAvx2: fn = ln_fwd_avx2; break;
    default: break;
  }
#endif
  const LnFwdArgs a{out, mean, rstd, inp, weight, bias, C, eps};
  const int nblocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if ((int64_t)N * C > kParallelMin)
  for (int blk = 0; blk < nblocks; blk++)
    fn(a, blk * kRowBlock, blk * kRowBlock + kRowBlock < N ? blk * kRowBlock + kRowBlock : N);
}

void layernorm_backward_f32(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, const float* mean,
                            const float* rstd, int N, int C) {
  // dinp (N,C) +=, dweight (C) +=, dbias (C) +=, dout (N,C), inp (N,C), mean/rstd (N)
  void (*fn)(const LnBwdArgs&, int, double*) = ln_bwd_generic;
#if QS_X86
  switch (active_isa()) {
    case kIsaAvx512: fn = ln_bwd_avx512; break;
    case kIsaAvx2: fn = ln_bwd_avx2; break;
    default: break;
  }
#endif
  const LnBwdArgs a{dinp, dout, inp, weight, mean, rstd, dbias != nullptr, C};
  bool par = (int64_t)N * C > kParallelMin;
  float* const grads[2] = {dweight, dbias};
  rows_with_param_grads(
      N, C, par, grads,
      [&](int n, double* part) { fn(a, n, part); },  // part: (2, C) block partials, or null
      [&](int n) {  // no memory for the partials: straight into dweight, dbias, then dinp
        const float* dy = dout + (int64_t)n * C;
        const float* x = inp + (int64_t)n * C;
        float mt = mean[n], st = rstd[n];
        for (int c = 0; c < C; c++) {
          if (dweight) dweight[c] += dy[c] * ((x[c] - mt) * st);
          if (dbias) dbias[c] += dy[c];
        }
      });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C, T eps) {
  if constexpr (std::is_same_v<T, float>) layernorm_forward_f32(out, mean, rstd, inp, weight, bias, N, C, eps);
  else layernorm_forward_scalar(out, mean, rstd, inp, weight, bias, N, C, eps);
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int N, int C) {
  if constexpr (std::is_same_v<T, float>) layernorm_backward_f32(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  else layernorm_backward_scalar(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int, int, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int, int, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int, int);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int, int);

}  // namespace qs::cpu
