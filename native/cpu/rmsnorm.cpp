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

float runs on whole SIMD vectors, one templated row body compiled for SSE2 / AVX2+FMA /
AVX-512 and picked per call by active_isa() (isa.h), with reduce.h's VecRowSum for the row
sums (float terms added 4 vectors at a time, accumulated in double; see layernorm.cpp).
double (gradient checks) keeps the scalar loops.
*/
#include "cpu/rmsnorm.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/reduce.h"
#include "cpu/vec_math.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

template <typename T>
static void rmsnorm_forward_scalar(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps) {
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
static void rmsnorm_backward_scalar(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
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

// ---------------------------------------------------------------------------------------------
// float: vector row bodies and the ISA dispatch

namespace {

// One row of the forward: o, x (C); writes *rstd.
template <int VB>
QS_INLINE void rms_fwd_row(float* o, float* rstd, const float* x, const float* w, int C, float eps) {
  typedef vec::Simd<float, VB> S;
  typedef typename S::V VF;
  constexpr int L = S::L;
  VecRowSum<VB> sq;  // sum x^2
  int c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    VF x0 = S::load(x + c), x1 = S::load(x + c + L), x2 = S::load(x + c + 2 * L), x3 = S::load(x + c + 3 * L);
    sq.add4(x0 * x0, x1 * x1, x2 * x2, x3 * x3);
  }
  for (; c + L <= C; c += L) {
    VF xv = S::load(x + c);
    sq.add1(xv * xv);
  }
  double tail = 0;
  for (; c < C; c++) tail += (double)x[c] * (double)x[c];
  const float st = (float)(1.0 / std::sqrt(sq.total(tail) / C + (double)eps));
  *rstd = st;  // the backward differentiates with exactly this rounded value
  // (x * rstd) * weight: Llama normalises first, then scales by the weight
  c = 0;
  for (; c + L <= C; c += L) S::store(o + c, (S::load(x + c) * st) * S::load(w + c));
  for (; c < C; c++) o[c] = (x[c] * st) * w[c];
}

// One row of the backward: dx (C) += if kDinp, pw (C) double partial of dweight += if kPart.
template <int VB, bool kDinp, bool kPart>
QS_INLINE void rms_bwd_row(float* dx, double* pw, const float* dy, const float* x, const float* w,
                           float st, int C) {
  typedef vec::Simd<float, VB> S;
  typedef typename S::V VF;
  constexpr int L = S::L;
  if (kPart) accumulate_norm_partials<VB>(pw, nullptr, dy, x, 0.0f, st, C);
  if (!kDinp) return;
  // g = sum dy * w * x, float terms summed by VecRowSum
  VecRowSum<VB> sg;
  int c = 0;
  for (; c + 4 * L <= C; c += 4 * L) {
    VF t[4];
    for (int k = 0; k < 4; k++) t[k] = S::load(dy + c + k * L) * S::load(w + c + k * L) * S::load(x + c + k * L);
    sg.add4(t[0], t[1], t[2], t[3]);
  }
  for (; c + L <= C; c += L) sg.add1(S::load(dy + c) * S::load(w + c) * S::load(x + c));
  double tail = 0;
  for (; c < C; c++) tail += (double)(dy[c] * w[c] * x[c]);
  const float k = (float)((double)st * (double)st * sg.total(tail) / C);
  c = 0;
  for (; c + L <= C; c += L)
    S::store(dx + c, S::load(dx + c) + (S::load(dy + c) * S::load(w + c) - S::load(x + c) * k) * st);
  for (; c < C; c++) dx[c] += (dy[c] * w[c] - x[c] * k) * st;
}

struct RmsArgs {
  float *out, *rstd;   // forward: out (N,C), rstd (N)
  float* dinp;         // backward: dinp (N,C) or null
  const float *inp, *weight, *dout, *rstd_in;
  int C;
  float eps;
};

template <int VB>
QS_INLINE void rms_fwd_rows(const RmsArgs& a, int n0, int n1) {
  for (int n = n0; n < n1; n++) {
    const int64_t off = (int64_t)n * a.C;
    rms_fwd_row<VB>(a.out + off, a.rstd + n, a.inp + off, a.weight, a.C, a.eps);
  }
}

template <int VB>
QS_INLINE void rms_bwd_rows(const RmsArgs& a, int n, double* pw) {
  const int64_t off = (int64_t)n * a.C;
  float* dx = a.dinp ? a.dinp + off : nullptr;
  const float *dy = a.dout + off, *x = a.inp + off;
  if (dx && pw) rms_bwd_row<VB, true, true>(dx, pw, dy, x, a.weight, a.rstd_in[n], a.C);
  else if (dx) rms_bwd_row<VB, true, false>(dx, pw, dy, x, a.weight, a.rstd_in[n], a.C);
  else if (pw) rms_bwd_row<VB, false, true>(dx, pw, dy, x, a.weight, a.rstd_in[n], a.C);
}

void rms_fwd_generic(const RmsArgs& a, int n0, int n1) { rms_fwd_rows<16>(a, n0, n1); }
void rms_bwd_generic(const RmsArgs& a, int n, double* pw) { rms_bwd_rows<16>(a, n, pw); }
#if QS_X86
QS_TARGET_AVX2 void rms_fwd_avx2(const RmsArgs& a, int n0, int n1) { rms_fwd_rows<32>(a, n0, n1); }
QS_TARGET_AVX2 void rms_bwd_avx2(const RmsArgs& a, int n, double* pw) { rms_bwd_rows<32>(a, n, pw); }
QS_TARGET_AVX512 void rms_fwd_avx512(const RmsArgs& a, int n0, int n1) { rms_fwd_rows<64>(a, n0, n1); }
QS_TARGET_AVX512 void rms_bwd_avx512(const RmsArgs& a, int n, double* pw) { rms_bwd_rows<64>(a, n, pw); }
#endif

constexpr int kRowBlock = 16;  // forward rows per parallel work item

void rmsnorm_forward_f32(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
  // out (N,C), rstd (N), inp (N,C), weight (C)
  void (*fn)(const RmsArgs&, int, int) = rms_fwd_generic;
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: fn = rms_fwd_avx512; break;
    case kIsaAvx2: fn = rms_fwd_avx2; break;
    default: break;
  }
#endif
  const RmsArgs a{out, rstd, nullptr, inp, weight, nullptr, nullptr, C, eps};
  const int nblocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if ((int64_t)N * C > kParallelMin)
  for (int blk = 0; blk < nblocks; blk++)
    fn(a, blk * kRowBlock, blk * kRowBlock + kRowBlock < N ? blk * kRowBlock + kRowBlock : N);
}

void rmsnorm_backward_f32(float* dinp, float* dweight, const float* dout, const float* inp,
                          const float* weight, const float* rstd, int N, int C) {
  // dinp (N,C) +=, dweight (C) +=, dout (N,C), inp (N,C), rstd (N)
  void (*fn)(const RmsArgs&, int, double*) = rms_bwd_generic;
#if QS_X86
  switch (active_isa()) {
    case kIsaAvx512: fn = rms_bwd_avx512; break;
    case kIsaAvx2: fn = rms_bwd_avx2; break;
    default: break;
  }
#endif
  const RmsArgs a{nullptr, nullptr, dinp, inp, weight, dout, rstd, C, 0.0f};
  bool par = (int64_t)N * C > kParallelMin;
  float* const grads[1] = {dweight};
  rows_with_param_grads(
      N, C, par, grads,
      [&](int n, double* pw) { fn(a, n, pw); },  // pw: (C) block partial of dweight, or null
      [&](int n) {  // no memory for the partials: straight into dweight
        const float* dy = dout + (int64_t)n * C;
        const float* x = inp + (int64_t)n * C;
        float st = rstd[n];
        for (int c = 0; c < C; c++) dweight[c] += dy[c] * (x[c] * st);
      });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps) {
  if constexpr (std::is_same_v<T, float>) rmsnorm_forward_f32(out, rstd, inp, weight, N, C, eps);
  else rmsnorm_forward_scalar(out, rstd, inp, weight, N, C, eps);
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C) {
  if constexpr (std::is_same_v<T, float>) rmsnorm_backward_f32(dinp, dweight, dout, inp, weight, rstd, N, C);
  else rmsnorm_backward_scalar(dinp, dweight, dout, inp, weight, rstd, N, C);
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, float);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int, int, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*, int, int);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*, const double*, int, int);

}  // namespace qs::cpu
