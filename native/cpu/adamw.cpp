/*
AdamW update, global-norm helper and in-place scaling over flat buffers (see adamw.h).

Memory layout: params, grads, m, v are flat (n) arrays over one range of the llm.c-style flat
parameter buffer. The update reads 4 arrays and writes 3 (params, m, v): ~28 bytes per float
parameter and almost no arithmetic, so it runs at memory bandwidth.

The update follows torch.optim.AdamW's single-tensor (foreach=False) path step by step, so a
float run rounds like torch's float run does:
  p  = p * (1 - lr * wd)                          param.mul_(1 - lr * weight_decay)
  m  = m + (1 - beta1) * (g - m)                  exp_avg.lerp_(grad, 1 - beta1)
                                                  (torch's lerp: g - (g - m) * beta1 if beta1 <= 0.5)
  v  = v * beta2 + (1 - beta2) * g * g            exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
  denom = sqrt(v) / sqrt(1 - beta2^t) + eps
  p  = p + (-lr / (1 - beta1^t)) * m / denom      param.addcdiv_(exp_avg, denom, -step_size)
Scalars (bias corrections, step size) are formed in double like torch's Python floats, then
rounded to T once. The float update runs in 4-wide SSE lanes where available (adamw_range
explains why the plain loop does not vectorise), with bit-identical results.

sum_squares must give the same double for any thread count (it feeds gradient clipping, and
a clip factor that changes with the thread count would make runs irreproducible). The range is
cut into at most kMaxChunks chunks whose boundaries depend only on n; each chunk is summed in
order with kLanes fixed accumulators and the chunk sums are added in chunk order. The float
version keeps kLanesF32 = 16 lanes (lane = index mod 16 in the chunk, lanes added in order)
in double vectors compiled for SSE2 / AVX2 (isa.h dispatch; AVX-512 uses the AVX2 body, as
GCC splits 8-lane float->double conversions anyway). A float's square is exact in double, so
FMA contraction cannot change a bit: the result is the same on every ISA path as well.
*/
#include "cpu/adamw.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

#if defined(__SSE2__) || defined(_M_X64)
#define QS_ADAMW_SSE 1
#include <emmintrin.h>
#endif

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 15;  // elements; below this stay single-threaded
static constexpr int kLanes = 8;                  // accumulators inside one chunk
static constexpr int64_t kMinChunk = 1 << 14;     // sum_squares chunks: at least this long ...
static constexpr int kMaxChunks = 256;            // ... and at most this many (stack partials)
static constexpr int64_t kUpdateBlock = 1 << 12;  // AdamW elements per parallel work item

// The update's scalars, formed once per call in double and rounded to T (see the top).
template <typename T>
struct AdamScalars {
  T decay, one_minus_b1, one_minus_w, b2, one_minus_b2, bc2_sqrt, eps, neg_step;
  bool lerp_from_m;  // torch's lerp(m, g, w): m + w (g - m) if |w| < 0.5, else g - (g - m)(1 - w)
};

// Elements [i0, i1), one at a time.
template <typename T>
static inline void adamw_scalar(T* params, const T* grads, T* m, T* v, int64_t i0, int64_t i1,
                                const AdamScalars<T>& s) {
  for (int64_t i = i0; i < i1; i++) {
    T g = grads[i];
    T p = params[i] * s.decay;
    T mi = s.lerp_from_m ? m[i] + s.one_minus_b1 * (g - m[i]) : g - (g - m[i]) * s.one_minus_w;
    T vi = v[i] * s.b2 + s.one_minus_b2 * g * g;
    T denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    m[i] = mi;
    v[i] = vi;
    params[i] = p + s.neg_step * mi / denom;  // addcdiv rounds (value * m) / denom
  }
}

// double is the reference path (gradient checks); it stays scalar.
static inline void adamw_range(double* params, const double* grads, double* m, double* v, int64_t i0,
                               int64_t i1, const AdamScalars<double>& s) {
  adamw_scalar(params, grads, m, v, i0, i1, s);
}

// float: 4 lanes of SSE (baseline x86-64), then the scalar loop for the tail. The compiler
// cannot vectorise the scalar loop itself: std::sqrt may set errno, so without -fno-math-errno
// it stays a scalar call, and the sqrt and two divisions per element then cost ~5x the memory
// time. The lanes perform the same IEEE operations in the same order as adamw_scalar, so both
// paths give identical bits.
static inline void adamw_range(float* params, const float* grads, float* m, float* v, int64_t i0,
                               int64_t i1, const AdamScalars<float>& s) {
  int64_t i = i0;
#if defined(QS_ADAMW_SSE)
  const __m128 decay = _mm_set1_ps(s.decay), omb1 = _mm_set1_ps(s.one_minus_b1),
               omw = _mm_set1_ps(s.one_minus_w), b2 = _mm_set1_ps(s.b2),
               omb2 = _mm_set1_ps(s.one_minus_b2), bc2s = _mm_set1_ps(s.bc2_sqrt),
               eps = _mm_set1_ps(s.eps), nstep = _mm_set1_ps(s.neg_step);
  for (; i + 4 <= i1; i += 4) {
    __m128 g = _mm_loadu_ps(grads + i), mo = _mm_loadu_ps(m + i), vo = _mm_loadu_ps(v + i);
    __m128 p = _mm_mul_ps(_mm_loadu_ps(params + i), decay);
    __m128 gm = _mm_sub_ps(g, mo);
    __m128 mi = s.lerp_from_m ? _mm_add_ps(mo, _mm_mul_ps(omb1, gm)) : _mm_sub_ps(g, _mm_mul_ps(gm, omw));
    __m128 vi = _mm_add_ps(_mm_mul_ps(vo, b2), _mm_mul_ps(_mm_mul_ps(omb2, g), g));
    __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), bc2s), eps);
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    _mm_storeu_ps(params + i, _mm_add_ps(p, _mm_div_ps(_mm_mul_ps(nstep, mi), denom)));
  }
#endif
  adamw_scalar(params, grads, m, v, i, i1, s);
}

template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t t) {
  // params, grads, m, v (n); t is the 1-based step
  double bc1 = 1.0 - std::pow((double)beta1, (double)t);
  double bc2 = 1.0 - std::pow((double)beta2, (double)t);
  AdamScalars<T> s;
  s.decay = (T)(1.0 - (double)lr * (double)weight_decay);
  s.one_minus_b1 = (T)(1.0 - (double)beta1);
  s.one_minus_w = (T)1 - s.one_minus_b1;
  s.b2 = (T)beta2;
  s.one_minus_b2 = (T)(1.0 - (double)beta2);
  s.bc2_sqrt = (T)std::sqrt(bc2);
  s.eps = (T)eps;
  s.neg_step = (T)(-(double)lr / bc1);
  s.lerp_from_m = std::fabs((double)s.one_minus_b1) < 0.5;
  // fixed blocks of kUpdateBlock elements (a multiple of the SSE width) as work items
  int64_t nblocks = (n + kUpdateBlock - 1) / kUpdateBlock;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t b = 0; b < nblocks; b++) {
    int64_t i0 = b * kUpdateBlock;
    int64_t i1 = i0 + kUpdateBlock < n ? i0 + kUpdateBlock : n;
    adamw_range(params, grads, m, v, i0, i1, s);
  }
}

// float chunk [i0, i1): 16 lanes in kLanesF32 / D::L double vectors (see the top).
static constexpr int kLanesF32 = 16;
template <int VB>
QS_INLINE double sum_squares_chunk_f32(const float* x, int64_t i0, int64_t i1) {
  typedef vec::Simd<double, VB> D;
  constexpr int LD = D::L, NA = kLanesF32 / LD;
  typename D::V acc[NA] = {};
  int64_t i = i0;
  for (; i + kLanesF32 <= i1; i += kLanesF32)
    for (int a = 0; a < NA; a++) {
      typename D::V v = D::load_f32(x + i + a * LD);
      acc[a] += v * v;  // exact product: contracted or not, the same sum
    }
  double s = 0;
  for (; i < i1; i++) s += (double)x[i] * (double)x[i];
  double lanes[kLanesF32];
  std::memcpy(lanes, acc, sizeof lanes);
  for (int k = 0; k < kLanesF32; k++) s += lanes[k];
  return s;
}
static double sum_squares_chunk_generic(const float* x, int64_t i0, int64_t i1) {
  return sum_squares_chunk_f32<16>(x, i0, i1);
}
#if QS_X86
QS_TARGET_AVX2 static double sum_squares_chunk_avx2(const float* x, int64_t i0, int64_t i1) {
  return sum_squares_chunk_f32<32>(x, i0, i1);
}
#endif

// double: kLanes scalar accumulators (the reference path)
static double sum_squares_chunk(const double* x, int64_t i0, int64_t i1) {
  double acc[kLanes] = {};
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes)
    for (int k = 0; k < kLanes; k++) acc[k] += x[i + k] * x[i + k];
  double s = 0;
  for (; i < i1; i++) s += x[i] * x[i];
  for (int k = 0; k < kLanes; k++) s += acc[k];
  return s;
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  if (n <= 0) return 0.0;
  int64_t nchunks = (n + kMinChunk - 1) / kMinChunk;
  if (nchunks > kMaxChunks) nchunks = kMaxChunks;
  int64_t chunk = (n + nchunks - 1) / nchunks;
  double (*fn)(const T*, int64_t, int64_t);
  if constexpr (std::is_same_v<T, float>) {
    fn = sum_squares_chunk_generic;
#if QS_X86
    if (active_isa() >= kIsaAvx2) fn = sum_squares_chunk_avx2;  // QS_CPU_SIMD caps it (isa.h)
#endif
  } else {
    fn = sum_squares_chunk;
  }
  double partial[kMaxChunks];
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t b = 0; b < nchunks; b++) {
    int64_t i0 = b * chunk;
    int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
    partial[b] = fn(x, i0, i1);
  }
  double total = 0;
  for (int64_t b = 0; b < nchunks; b++) total += partial[b];
  return total;
}

template <typename T>
void scale_inplace(T* x, int64_t n, T s) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) x[i] *= s;
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t, float, float, float, float, float, int64_t);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t, float, float, float, float, float, int64_t);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void scale_inplace<float>(float*, int64_t, float);
template void scale_inplace<double>(double*, int64_t, double);

template <typename T>
double clip_grad_norm(T* g, int64_t n, double max_norm) {
  double norm = std::sqrt(sum_squares<T>(g, n));
  double factor = max_norm / (norm + 1e-6);
  if (max_norm > 0 && factor < 1.0) scale_inplace<T>(g, n, (T)factor);
  return norm;
}

template double clip_grad_norm<float>(float*, int64_t, double);
template double clip_grad_norm<double>(double*, int64_t, double);

}  // namespace qs::cpu
