// adamw.h: the optimizer and gradient clipping over one flat parameter buffer (llm.c layout).
//
// AdamW as torch.optim.AdamW computes it (decoupled weight decay, bias correction):
//   p -= lr * weight_decay * p
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g²
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// `t` is the 1-based step count. Applied to a range [0, n); callers split the flat buffer
// into decayed and non-decayed ranges by calling it per range.
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t t);

// Sum of squares of x[0, n), accumulated in double with a deterministic reduction order
// (independent of the thread count).
template <typename T>
double sum_squares(const T* x, int64_t n);

// x[0, n) *= s
template <typename T>
void scale_inplace(T* x, int64_t n, T s);

// torch.nn.utils.clip_grad_norm_ over one flat buffer: returns the L2 norm of g[0, n) and, when
// max_norm > 0 and the factor max_norm / (norm + 1e-6) is below 1, scales g by it.
template <typename T>
double clip_grad_norm(T* g, int64_t n, double max_norm);

}  // namespace qs::cpu
