// lmhead_xent.h: LM head fused with softmax cross-entropy, over vocabulary chunks.
//
//   logits[n, v] = h[n,:] · W[v,:]          h (N,C), W (V,C) (torch layout, tied or not)
//   loss[n] = logsumexp_v(logits[n]) - logits[n, target[n]]     (0 where target == ignore_index)
// The (N,V) logits are never materialised: rows are processed in blocks and the vocabulary in
// chunks of `chunk` columns with a running (max, sum) per row, so scratch is O(rows·chunk).
// Forward keeps lse (N) for the backward, which recomputes each chunk's logits and forms
//   dlogits = (softmax - onehot(target)) * dloss[n]
// before accumulating dh += dlogits · W and dW += dlogitsᵀ · h (both +=, nullable).
// Targets must be in [0, V) or equal ignore_index (checked by the op layer).
// Ignored rows are skipped entirely: loss = 0, lse = 0, no gradient. chunk <= 0 means 4096;
// chunk > V means V.
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T>
void lmhead_xent_forward(T* losses, float* lse, const T* h, const T* W, const int32_t* targets,
                         int N, int C, int V, int ignore_index, int chunk);
// losses (N), lse (N)

template <typename T>
void lmhead_xent_backward(T* dh, T* dW, const T* dlosses, const T* h, const T* W,
                          const int32_t* targets, const float* lse, int N, int C, int V,
                          int ignore_index, int chunk);

// Training variant for a uniform loss weight (the mean loss): the forward also leaves the unit
// gradient G = softmax(logits) - onehot(target) of every counted row in G (n_counted, V), rows in
// order (ignored rows are skipped, as above), and the backward then needs no recompute:
//   dh += g · G · W,   dW += g · Gᵀ · h      (g = d(total loss)/d(loss[n]), the same for every row)
// each as one gemm over all counted rows. G costs n_counted · V elements; callers use it when
// that fits their memory budget and fall back to the recomputing pair otherwise. The backward
// only reads G, so it may run several times after one forward.
template <typename T>
void lmhead_xent_forward_keep(T* losses, float* lse, T* G, const T* h, const T* W, const int32_t* targets,
                              int N, int C, int V, int ignore_index, int chunk);

template <typename T>
void lmhead_xent_backward_kept(T* dh, T* dW, T g, const T* G, const T* h, const T* W,
                               const int32_t* targets, int N, int C, int V, int ignore_index);

}  // namespace qs::cpu
