/*
Pointwise nonlinearities and the residual add (see activations.h).

All tensors are flat arrays of n elements (the shape does not matter for pointwise ops).
Forward writes out and may run in place (out aliasing an input): each element is read before
it is written and no element depends on another. Backward adds (+=) into the input gradients.

  gelu     GPT-2 / torch gelu(approximate='tanh'):
             out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
           evaluated through the identity 0.5 (1 + tanh(u)) = sigmoid(2u), i.e.
             out = x / (1 + exp(-2u))
           the same function, but without the cancellation in 1 + tanh(u) for x << 0 (where
           the float tanh form loses all relative precision) and with one exp instead of tanh.
           Gradient: sigmoid(2u) + 2 x s (1 - s) u',  s = sigmoid(2u)  (1 - tanh^2 = 4 s (1 - s)).
  silu     out = x * sigmoid(x)
  swiglu   out = silu(gate) * up  (Llama MLP: gate and up are separate (N,F) arrays)
  relu     out = x < 0 ? 0 : x  (NaN propagates, like torch.relu);
           dinp += x > 0 ? dout : 0  (0 at the kink x = 0 and for NaN, like torch)
  residual out = a + b

These are memory-bound loops over contiguous arrays, provided the exp does not dominate. The
float path is written on whole SIMD vectors (vec_math.h's Simd, exp_sat for e^x) in one
templated body per op, compiled for SSE2 / AVX2+FMA / AVX-512 and chosen per call by
active_isa() (isa.h; QS_CPU_SIMD caps it), the way attention.cpp does it. The last partial
vector of a range goes through the same vector arithmetic on a zero-padded copy, so every
element gets the same result wherever it sits (the in-place and blocked calls rely on that).
The SSE2 path gives the bits of the old scalar loops; the AVX paths differ from it only by
FMA contraction: a few ulp of the terms (so more, relative to a backward result near one of
its zeros, where the terms cancel; the error against exact math is no larger). The double
path (gradient checks) stays a plain scalar loop on std::exp.
*/
#include "cpu/activations.h"

#include <cmath>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 15;  // elements; below this stay single-threaded
static constexpr int64_t kBlock = 1 << 13;        // elements per parallel work item (x 64 B)

static inline double exp_vec(double x) { return std::exp(x); }

// ---------------------------------------------------------------------------------------------
// float: vector bodies and the ISA dispatch

namespace {

// n <= L elements at p: a whole vector in the loop body (n == L folds away there), a
// zero-padded one for the tail.
template <typename S>
QS_INLINE typename S::V load_n(const float* p, int n) {
  return n == S::L ? S::load(p) : S::load_part(p, n, 0.0f);
}
template <typename S>
QS_INLINE void store_n(float* p, int n, const typename S::V& v) {
  if (n == S::L) S::store(p, v);
  else S::store_part(p, n, v);
}

// 1 / (1 + e^-x)
template <typename S>
QS_INLINE typename S::V sigmoid_v(const typename S::V& x) {
  return 1.0f / (1.0f + S::exp_sat(-x));
}

// Each op is a functor whose step<S>(i, n) handles elements [i, i + n), n <= S::L. The
// arithmetic follows the double path's formulas term by term (see the scalar loops below).

struct GeluFwd {
  float* out;        // (n)
  const float* inp;  // (n)
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    const float k2 = (float)(2 * 0.7978845608028654), c = 0.044715f;
    V x = load_n<S>(inp + i, n);
    V u2 = k2 * (x + c * x * x * x);
    store_n<S>(out + i, n, x / (1.0f + S::exp_sat(-u2)));
  }
};

struct GeluBwd {
  float* dinp;                   // (n) +=
  const float *inp, *dout;       // (n), (n)
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    const float k = 0.7978845608028654f, k2 = (float)(2 * 0.7978845608028654), c = 0.044715f;
    V x = load_n<S>(inp + i, n);
    V s = sigmoid_v<S>(k2 * (x + c * x * x * x));
    V du = k * (1.0f + 3.0f * c * x * x);
    V grad = s + 2.0f * x * s * (1.0f - s) * du;
    store_n<S>(dinp + i, n, load_n<S>(dinp + i, n) + grad * load_n<S>(dout + i, n));
  }
};

struct SiluFwd {
  float* out;
  const float* inp;
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typename S::V x = load_n<S>(inp + i, n);
    store_n<S>(out + i, n, x * sigmoid_v<S>(x));
  }
};

struct SiluBwd {
  float* dinp;
  const float *inp, *dout;
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    V x = load_n<S>(inp + i, n);
    V s = sigmoid_v<S>(x);
    store_n<S>(dinp + i, n, load_n<S>(dinp + i, n) + load_n<S>(dout + i, n) * (s * (1.0f + x * (1.0f - s))));
  }
};

struct ReluFwd {
  float* out;
  const float* inp;
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    V x = load_n<S>(inp + i, n);
    store_n<S>(out + i, n, x < 0.0f ? V{} : x);
  }
};

struct ReluBwd {
  float* dinp;
  const float *inp, *dout;
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    V x = load_n<S>(inp + i, n);
    V g = x > 0.0f ? load_n<S>(dout + i, n) : V{};
    store_n<S>(dinp + i, n, load_n<S>(dinp + i, n) + g);
  }
};

struct SwigluFwd {
  float* out;               // (n), may alias gate or up
  const float *gate, *up;   // (n), (n)
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    V g = load_n<S>(gate + i, n), u = load_n<S>(up + i, n);
    store_n<S>(out + i, n, g * sigmoid_v<S>(g) * u);
  }
};

// kDgate / kDup: which gradients exist (compile-time, so the body has no per-element branch)
template <bool kDgate, bool kDup>
struct SwigluBwd {
  float *dgate, *dup;                // (n) += each, or null
  const float *gate, *up, *dout;     // (n) each
  template <typename S>
  QS_INLINE void step(int64_t i, int n) const {
    typedef typename S::V V;
    V g = load_n<S>(gate + i, n), dy = load_n<S>(dout + i, n);
    V s = sigmoid_v<S>(g);
    if (kDgate) {
      V u = load_n<S>(up + i, n);
      store_n<S>(dgate + i, n, load_n<S>(dgate + i, n) + dy * u * (s * (1.0f + g * (1.0f - s))));
    }
    if (kDup) store_n<S>(dup + i, n, load_n<S>(dup + i, n) + dy * (g * s));
  }
};

template <typename S, typename Op>
QS_INLINE void map_range(const Op& op, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + S::L <= i1; i += S::L) op.template step<S>(i, S::L);
  if (i < i1) op.template step<S>(i, (int)(i1 - i));
}

template <typename Op>
void map_generic(const Op& op, int64_t i0, int64_t i1) { map_range<vec::Simd<float, 16>>(op, i0, i1); }
#if QS_X86
template <typename Op>
QS_TARGET_AVX2 void map_avx2(const Op& op, int64_t i0, int64_t i1) { map_range<vec::Simd<float, 32>>(op, i0, i1); }
template <typename Op>
QS_TARGET_AVX512 void map_avx512(const Op& op, int64_t i0, int64_t i1) { map_range<vec::Simd<float, 64>>(op, i0, i1); }
#endif

// Runs op over [0, n) in kBlock pieces (a multiple of every vector width), in parallel when
// large, through the instance active_isa() picks. The OpenMP region stays in plain code.
template <typename Op>
void map_float(const Op& op, int64_t n) {
  void (*fn)(const Op&, int64_t, int64_t) = map_generic<Op>;
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: fn = map_avx512<Op>; break;
    case kIsaAvx2: fn = map_avx2<Op>; break;
    default: break;
  }
#endif
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t b = 0; b < nblocks; b++) {
    int64_t i0 = b * kBlock;
    int64_t i1 = i0 + kBlock < n ? i0 + kBlock : n;
    fn(op, i0, i1);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// double: plain scalar loops on std::exp (gradient checks: exactness over speed)

// GELU (tanh form)

template <typename T>
static void gelu_forward_scalar(T* out, const T* inp, int64_t n) {
  const T k2 = (T)(2 * 0.7978845608028654);  // 2 sqrt(2/pi): the 2 of sigmoid(2u) folded in
  const T c = (T)0.044715;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    T u2 = k2 * (x + c * x * x * x);  // 2u
    out[i] = x / ((T)1 + exp_vec(-u2));
  }
}

template <typename T>
static void gelu_backward_scalar(T* dinp, const T* inp, const T* dout, int64_t n) {
  // d/dx [x s(2u)] = s + 2 x s (1 - s) u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
  const T k = (T)0.7978845608028654;
  const T k2 = (T)(2 * 0.7978845608028654);
  const T c = (T)0.044715;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    T s = (T)1 / ((T)1 + exp_vec(-k2 * (x + c * x * x * x)));
    T du = k * ((T)1 + (T)3 * c * x * x);
    T grad = s + (T)2 * x * s * ((T)1 - s) * du;
    dinp[i] += grad * dout[i];
  }
}

// SiLU and SwiGLU

// 1 / (1 + e^-x): for x << 0 the exp is huge (inf in double) and the result a clean ~0.
template <typename T>
static inline T sigmoid(T x) {
  return (T)1 / ((T)1 + exp_vec(-x));
}

template <typename T>
static void silu_forward_scalar(T* out, const T* inp, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    out[i] = x * sigmoid(x);
  }
}

template <typename T>
static void silu_backward_scalar(T* dinp, const T* inp, const T* dout, int64_t n) {
  // d/dx [x s(x)] = s (1 + x (1 - s))
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    T s = sigmoid(x);
    dinp[i] += dout[i] * (s * ((T)1 + x * ((T)1 - s)));
  }
}

// ReLU

template <typename T>
static void relu_forward_scalar(T* out, const T* inp, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    out[i] = x < (T)0 ? (T)0 : x;
  }
}

template <typename T>
static void relu_backward_scalar(T* dinp, const T* inp, const T* dout, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) dinp[i] += inp[i] > (T)0 ? dout[i] : (T)0;
}

template <typename T>
static void swiglu_forward_scalar(T* out, const T* gate, const T* up, int64_t n) {
  // out (N,F) = silu(gate (N,F)) * up (N,F); out may alias gate or up
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
  }
}

template <typename T>
static void swiglu_backward_scalar(T* dgate, T* dup, const T* gate, const T* up, const T* dout, int64_t n) {
  // dgate += dout * up * silu'(gate),  dup += dout * silu(gate)
  // (either gradient may be null; the null checks sit outside the loops)
  if (dgate && dup) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; i++) {
      T g = gate[i];
      T s = sigmoid(g);
      dgate[i] += dout[i] * up[i] * (s * ((T)1 + g * ((T)1 - s)));
      dup[i] += dout[i] * (g * s);
    }
  } else if (dgate) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; i++) {
      T g = gate[i];
      T s = sigmoid(g);
      dgate[i] += dout[i] * up[i] * (s * ((T)1 + g * ((T)1 - s)));
    }
  } else if (dup) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; i++) {
      T g = gate[i];
      dup[i] += dout[i] * (g * sigmoid(g));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points: float through the vector bodies, double through the scalar loops

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(GeluFwd{out, inp}, n);
  else gelu_forward_scalar(out, inp, n);
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(GeluBwd{dinp, inp, dout}, n);
  else gelu_backward_scalar(dinp, inp, dout, n);
}

template <typename T>
void silu_forward(T* out, const T* inp, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(SiluFwd{out, inp}, n);
  else silu_forward_scalar(out, inp, n);
}

template <typename T>
void silu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(SiluBwd{dinp, inp, dout}, n);
  else silu_backward_scalar(dinp, inp, dout, n);
}

template <typename T>
void relu_forward(T* out, const T* inp, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(ReluFwd{out, inp}, n);
  else relu_forward_scalar(out, inp, n);
}

template <typename T>
void relu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(ReluBwd{dinp, inp, dout}, n);
  else relu_backward_scalar(dinp, inp, dout, n);
}

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  if constexpr (std::is_same_v<T, float>) map_float(SwigluFwd{out, gate, up}, n);
  else swiglu_forward_scalar(out, gate, up, n);
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* gate, const T* up, const T* dout, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    // the null checks pick an instance, so the loop body has none
    if (dgate && dup) map_float(SwigluBwd<true, true>{dgate, dup, gate, up, dout}, n);
    else if (dgate) map_float(SwigluBwd<true, false>{dgate, dup, gate, up, dout}, n);
    else if (dup) map_float(SwigluBwd<false, true>{dgate, dup, gate, up, dout}, n);
  } else {
    swiglu_backward_scalar(dgate, dup, gate, up, dout, n);
  }
}

// ---------------------------------------------------------------------------------------------
// Residual

template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <typename T>
void residual_backward(T* da, T* db, const T* dout, int64_t n) {
  // both branches receive dout unchanged; either may be null
  if (da) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; i++) da[i] += dout[i];
  }
  if (db) {
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t i = 0; i < n; i++) db[i] += dout[i];
  }
}

#define QS_INSTANTIATE_ACTIVATIONS(T)                                                   \
  template void gelu_forward<T>(T*, const T*, int64_t);                                 \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);                      \
  template void silu_forward<T>(T*, const T*, int64_t);                                 \
  template void silu_backward<T>(T*, const T*, const T*, int64_t);                      \
  template void relu_forward<T>(T*, const T*, int64_t);                                 \
  template void relu_backward<T>(T*, const T*, const T*, int64_t);                      \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                     \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);      \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                   \
  template void residual_backward<T>(T*, T*, const T*, int64_t);

QS_INSTANTIATE_ACTIVATIONS(float)
QS_INSTANTIATE_ACTIVATIONS(double)
#undef QS_INSTANTIATE_ACTIVATIONS

}  // namespace qs::cpu
