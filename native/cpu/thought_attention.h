// thought_attention.h: Quiet-STaR's masked parallel ("diagonal") attention for chain queries.
//
// Every text position i of a document carries its own private chain of tokens (start marker,
// sampled thought, end marker, teacher-forced true tokens), one per chain step s = 1..S. A
// chain query (row r, step s, position i) sees what it would see in the sequential sequence
// [x_0 .. x_i, chain_1 .. chain_s] (spec §2.5):
//   base key j of its document b = r / P    iff  valid[b,j] and j <= i and (window <= 0 or i - j < window)
//   chain key (r, s', i) of its own chain   iff  s' <= s and valid[b,i]
// and nothing else: never a later text token, never another position's thought. The sliding
// window is checked against i, not i + s (the reference copies the base rows; spec §2.6).
// RoPE (position i + s for chains, j for base keys) is applied by the caller, so no positions
// appear here. GQA by index: query head h reads K/V head h / (H / Hkv); K/V are never repeated.
// The base K/V of a document is stored once and shared by its P rows.
//
// No mask and no (S·T)² buffer exist: the base part is a causal online-softmax loop over the
// shared base K/V, the chain part a per-query epilogue of at most S dot products gathered at the
// fixed column i. Memory is O(S·T·d) per row.
//
// Query steps are a window [s_first, s_first + Sq) of the chain, keys are chain steps 1..Sk:
//   packed mode      (training, differentiable): s_first = 1, Sq = Sk = S — every step at once;
//   incremental mode (sampling, no gradient):    s_first = s, Sq = 1, Sk >= s — one new step,
//                                                 attending a cache whose steps 1..s are filled.
// Query step s reads chain steps 1..s (so s_first + Sq - 1 <= Sk).
//
// Layouts (row-major, innermost last; the linear layers' output layout, no transposes):
//   q_chain   (R, Sq, T, H, d)     k_chain, v_chain (R, Sk, T, Hkv, d)
//   k_base, v_base (B, T, Hkv, d)  valid (B, T) uint8 (null = all valid)
//   out       (R, Sq, T, H, d)     lse (R, Sq, T, H) float
// A query with no visible key outputs zeros and lse = -inf. (A query at an invalid position i
// sees no chain key but still sees the valid base keys before i, as in the reference's mask:
// it only sees nothing when no valid base key lies in its causal window.)
#pragma once

#include <cstddef>
#include <cstdint>

namespace qs::cpu {

struct ThoughtAttentionShape {
  int B;        // documents
  int P;        // rows per document (n_passes); R = B * P
  int T;        // text positions
  int Sq;       // query steps in this call
  int s_first;  // chain step of the first query step (1-based)
  int Sk;       // chain steps of keys available (1..Sk)
  int H, Hkv, d;
  int window;   // <= 0: no sliding window
};

template <typename T>
void thought_attention_forward(T* out, float* lse, const T* q_chain, const T* k_base,
                               const T* v_base, const T* k_chain, const T* v_chain,
                               const uint8_t* valid, const ThoughtAttentionShape& s, T scale);

// Gradients (+=): dq_chain like q_chain; dk_base, dv_base (B,T,Hkv,d) summed over every query
// step and every row of the document, in a fixed order (deterministic for any thread count);
// dk_chain, dv_chain like k_chain (no contention: each chain key belongs to one query column).
// Any gradient pointer may be null to skip it.
template <typename T>
void thought_attention_backward(T* dq_chain, T* dk_base, T* dv_base, T* dk_chain, T* dv_chain,
                                const T* dout, const T* q_chain, const T* k_base, const T* v_base,
                                const T* k_chain, const T* v_chain, const T* out, const float* lse,
                                const uint8_t* valid, const ThoughtAttentionShape& s, T scale);

// Bytes of scratch (the kernels' only extra memory) one forward or backward call allocates with
// `threads` OpenMP threads, for T = float or (f64) double: per thread one (forward) or two
// (backward) (<= 128, T) score blocks and a few (128, d), (128, Sk) and (Sk, d) ones, so
// O(T + d + Sk): no mask, nothing of size S² or (S·T)².
size_t thought_attention_scratch_bytes(const ThoughtAttentionShape& s, int threads, bool backward, bool f64 = false);

}  // namespace qs::cpu
