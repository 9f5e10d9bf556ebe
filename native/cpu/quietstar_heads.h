// quietstar_heads.h: the Quiet-STaR step's own CPU compute after the transformer: the mixing
// ("talk") head and the rewards (spec §2.8, §2.9). Generic pieces (LM head + cross-entropy,
// thought attention, sampling, ReLU) are the kernels of their own headers.
//
// Mixing head (talk_head.0, merged over the talk steps), for n rows of (h_base, h_chain):
//   z1 = [h_base ; h_chain] · W1ᵀ + b1      W1 (D, 2D), b1 (D)     (torch Linear [out, in])
//   a1 = relu(z1)
//   z2 = a1 · W2ᵀ + b2                       W2 (D, D), b2 (D)
//   a2 = relu(z2)
//   wraw = a2 · w3ᵀ                          w3 (1, D), no bias
//   w  = sigmoid(wraw) if `sigmoid` else wraw   (the reference: unbounded, no sigmoid)
//   hm = (1 - w)·h_base + w·h_chain          reference: w weights the thought
//   hm = w·h_base + (1 - w)·h_chain          paper (weights_base): w weights the base
// The LM head is bias-free, so mixing hidden states is mixing logits (spec §2.8); hm goes to the
// caller's fused LM head + cross-entropy. [h_base ; h_chain] is never materialised: W1's two
// column blocks are multiplied separately (gemm with a row stride of 2D).
#pragma once

#include <cstdint>
#include <vector>

namespace qs::cpu {

template <typename T>
struct MixingActs {
  T *z1 = nullptr, *a1 = nullptr, *z2 = nullptr, *a2 = nullptr;  // (n, D)
  T *wraw = nullptr, *w = nullptr;                               // (n)
  T* hm = nullptr;                                               // (n, D)
};

template <typename T>
struct MixingWeights {
  const T *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr, *w3 = nullptr;
};
template <typename T>
struct MixingGrads {
  T *w1 = nullptr, *b1 = nullptr, *w2 = nullptr, *b2 = nullptr, *w3 = nullptr;  // += (any may be null)
};

template <typename T>
void mixing_forward(const MixingActs<T>& a, const T* h_base, const T* h_chain, const MixingWeights<T>& w, int n, int D,
                    bool weights_base, bool sigmoid);

// From dhm (n, D) (clobbered: used as scratch): dh_base, dh_chain (n, D) OVERWRITTEN, parameter
// gradients +=. t1 (n, D) and dw (n) are scratch; dw ends as d(loss)/d(wraw).
template <typename T>
void mixing_backward(T* dh_base, T* dh_chain, const MixingGrads<T>& g, T* dhm, T* t1, T* dw, const MixingActs<T>& a,
                     const T* h_base, const T* h_chain, const MixingWeights<T>& w, int n, int D, bool weights_base,
                     bool sigmoid);

// Rewards (spec §2.9 items 4-6). For row r = b·P + p and position i in [0, TA), TA = T-1-A:
//   reward[r, i] = Σ_k (base_loss[b, i + k] - talk_loss_k[r, i])     (ignored targets are 0 in both)
//   weight[r, i] = reward - mean over the P rows of document b       (trice and P > 1; else reward)
//                  clamped at 0 when `clamp`
// and 0 for i >= TA. talk_loss_k[r, i] = talk_loss[talk_off[k] + r·(T-1-k) + i].
template <typename T>
void quietstar_rewards(double* reward, double* weight, const T* base_loss, const T* talk_loss, const int64_t* talk_off,
                       int B, int P, int T_, int A, bool trice, bool clamp);

// ---- row moves of the step (gathers into the heads, scatters of their gradients back) ----
// Row indices are int64 (rows of the packed pass). Every sum has a fixed order (the CUDA twins
// add in the same order), so results do not depend on the thread count.

// dst (n, D) = f · src[rows[k]] for k in [0, n)
template <typename T>
void gather_rows(T* dst, const T* src, const int64_t* rows, int64_t n, int D, T f);
// dst[rows[k]] = f · vec (D) for k in [0, n): the marker rows' inputs
template <typename T>
void fill_rows(T* dst, const T* vec, const int64_t* rows, int64_t n, int D, T f);
// out (D) += f · Σ_k src[rows[k]], k in order: the marker embeddings' gradients
template <typename T>
void sum_rows(T* out, const T* src, const int64_t* rows, int64_t n, int D, T f);
// Scatter-add by destination lists (rows may receive many sources): for each j in [0, m),
//   dst[dest[j]] += f · Σ_{q in [start[j], start[j+1])} src[from[q]]     (q in order)
// dest rows distinct. The caller builds the lists (scatter_lists) once per step.
template <typename T>
void scatter_add_rows(T* dst, const T* src, const int64_t* dest, const int64_t* start, const int64_t* from, int64_t m,
                      int D, T f);
// The destination lists of "dst[row_of[k]] += src[k] for k in [0, n)": distinct destinations in
// increasing order, and per destination its sources in increasing k.
struct ScatterLists {
  std::vector<int64_t> dest, start, from;  // (m), (m + 1), (n)
};
void scatter_lists(const int64_t* row_of, int64_t n, ScatterLists* out);

}  // namespace qs::cpu
