// activations.h: pointwise nonlinearities and the residual add.
//   gelu   : GPT-2's tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))
//   silu   : x * sigmoid(x)
//   swiglu : out = silu(gate) * up (Llama MLP), gate and up separate (N,F) arrays
//   relu   : max(x, 0) (Quiet-STaR's mixing head); gradient 1 for x > 0, else 0 (torch's
//            choice at x = 0); a NaN input stays NaN forward and gets gradient 0
//   residual: out = a + b
// Backward adds (+=) into input gradients; out may alias an input in forward.
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T> void gelu_forward(T* out, const T* inp, int64_t n);
template <typename T> void gelu_backward(T* dinp, const T* inp, const T* dout, int64_t n);

template <typename T> void silu_forward(T* out, const T* inp, int64_t n);
template <typename T> void silu_backward(T* dinp, const T* inp, const T* dout, int64_t n);

template <typename T> void relu_forward(T* out, const T* inp, int64_t n);
template <typename T> void relu_backward(T* dinp, const T* inp, const T* dout, int64_t n);

template <typename T> void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* gate, const T* up, const T* dout, int64_t n);

template <typename T> void residual_forward(T* out, const T* a, const T* b, int64_t n);
template <typename T> void residual_backward(T* da, T* db, const T* dout, int64_t n);

}  // namespace qs::cpu
