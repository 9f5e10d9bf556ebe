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
float path uses exp_f32 (vec_math.h), branch-free arithmetic that the compiler vectorises. The
double path (gradient checks) calls std::exp.
*/
#include "cpu/activations.h"

#include <cmath>

#include "cpu/vec_math.h"

namespace qs::cpu {

static constexpr int64_t kParallelMin = 1 << 15;  // elements; below this stay single-threaded

// float: vec_math.h's scalar exp_f32, made for loops like these (not the softmax kernels'
// vector exp: see vec_math.h for why the two differ).
static inline float exp_vec(float x) { return vec::exp_f32(x); }
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
