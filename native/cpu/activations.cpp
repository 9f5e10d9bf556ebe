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
  residual out = a + b

These are memory-bound loops over contiguous arrays, provided the exp does not dominate: libm's
expf is an opaque call that keeps a loop scalar (~10x slower than streaming the data), so the
float path uses exp_f32 below, branch-free arithmetic that the compiler vectorises. The double
path (gradient checks) calls std::exp.
*/
#include "cpu/activations.h"

#include <cmath>
#include <cstring>

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 15;  // elements; below this stay single-threaded

// Float bits mapped monotonically onto int32 (negative values get their magnitude bits
// flipped), and back. Used to clamp without a float comparison: under -ftrapping-math (GCC's
// default) a float compare may raise FE_INVALID, so `x < lo ? lo : x` is not turned into a
// branch-free select and the whole loop stays scalar; integer compares vectorise.
static inline int32_t ordered_bits(float x) {
  int32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b ^ ((b >> 31) & 0x7fffffff);
}
static inline float from_ordered_bits(int32_t k) {
  int32_t b = k ^ ((k >> 31) & 0x7fffffff);
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// e^x in float without a libm call, so that loops using it vectorise (SSE2 is enough).
// x = k ln2 + r with k = round(x / ln2) and |r| <= ln2/2; e^r by its Taylor polynomial to r^7
// (truncation < 1e-8 relative, under float's half ulp); 2^k written into the exponent bits.
// ~2 ulp over the clamp range [-87, 88], which keeps 2^k a normal float; beyond it the result
// saturates near 1.6e-38 or 1.7e38 instead of going to 0 or inf, which changes 1 / (1 + e^x)
// by less than 1e-37. A NaN x gives some finite value: callers multiply by x, so NaN survives.
static inline float exp_f32(float x) {
  int32_t key = ordered_bits(x);
  const int32_t key_lo = ordered_bits(-87.0f), key_hi = ordered_bits(88.0f);
  key = key < key_lo ? key_lo : key;
  key = key > key_hi ? key_hi : key;
  x = from_ordered_bits(key);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float k = (x * 1.44269504f + round_magic) - round_magic;  // nearest integer to x / ln2
  // ln2 split in two so that k * ln2_hi is exact (ln2_hi = 45426 / 2^16, |k| <= 127)
  float r = (x - k * 0.693145751953125f) - k * 1.42860682e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = ((int32_t)k + 127) << 23;  // 2^k
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

static inline float exp_vec(float x) { return exp_f32(x); }
static inline double exp_vec(double x) { return std::exp(x); }

// ---------------------------------------------------------------------------------------------
// GELU (tanh form)

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n) {
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
void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
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

// ---------------------------------------------------------------------------------------------
// SiLU and SwiGLU

// 1 / (1 + e^-x): for x << 0 the exp is huge (inf in double) and the result a clean ~0.
template <typename T>
static inline T sigmoid(T x) {
  return (T)1 / ((T)1 + exp_vec(-x));
}

template <typename T>
void silu_forward(T* out, const T* inp, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    out[i] = x * sigmoid(x);
  }
}

template <typename T>
void silu_backward(T* dinp, const T* inp, const T* dout, int64_t n) {
  // d/dx [x s(x)] = s (1 + x (1 - s))
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T x = inp[i];
    T s = sigmoid(x);
    dinp[i] += dout[i] * (s * ((T)1 + x * ((T)1 - s)));
  }
}

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  // out (N,F) = silu(gate (N,F)) * up (N,F); out may alias gate or up
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) {
    T g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
  }
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* gate, const T* up, const T* dout, int64_t n) {
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
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                     \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);      \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                   \
  template void residual_backward<T>(T*, T*, const T*, int64_t);

QS_INSTANTIATE_ACTIVATIONS(float)
QS_INSTANTIATE_ACTIVATIONS(double)
#undef QS_INSTANTIATE_ACTIVATIONS

}  // namespace qs::cpu
