// attention.h: causal multi-head attention with GQA, explicit positions and key validity.
//
// Layout follows the linear layers' output so no transposes are needed:
//   q   (B, Tq, H,   d)     k, v (B, Tk, Hkv, d)     out (B, Tq, H, d)     lse (B, H, Tq)
// Query head h reads key/value head h / (H / Hkv) (GQA by index: K/V are never repeated).
// Key j is visible to query i of the same batch row iff
//   k_valid[b,j] != 0 (null = all valid)  and  k_pos[b,j] <= q_pos[b,i]
//   and (window <= 0 or q_pos[b,i] - k_pos[b,j] < window)        (Mistral's sliding window)
// Positions are explicit so the same kernel serves plain causal LM (q_pos = k_pos = 0..T-1),
// left padding, KV-cached decoding (Tq = 1) and thought tokens.
// Scores use `scale` (usually 1/sqrt(d)). Forward is an online softmax over key tiles, so no
// Tq x Tk matrix is kept beyond one tile; it stores the per-query log-sum-exp for backward.
// A query with no visible key outputs zeros and lse = -inf (its gradient is zero).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace qs::cpu {

struct AttentionShape {
  int B, Tq, Tk, H, Hkv, d;
  int window;  // <= 0: no sliding window
};

template <typename T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v,
                       const int32_t* q_pos, const int32_t* k_pos, const uint8_t* k_valid,
                       const AttentionShape& s, T scale);

// dq (B,Tq,H,d) +=, dk, dv (B,Tk,Hkv,d) +=, from dout (B,Tq,H,d) and the forward's out, lse.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, const int32_t* q_pos,
                        const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s,
                        T scale);

// The forwards' common start (this kernel's and attention_gemm.h's): true when the call is
// already done, either nothing to compute or no key to attend to, where every query sees no
// key (out = 0, lse = -inf).
template <typename T>
inline bool attention_forward_trivial(T* out, float* lse, const AttentionShape& s) {
  if (s.B <= 0 || s.Tq <= 0 || s.H <= 0 || s.d <= 0) return true;
  if (s.Tk > 0 && s.Hkv > 0) return false;
  std::fill(out, out + (int64_t)s.B * s.Tq * s.H * s.d, T(0));
  std::fill(lse, lse + (int64_t)s.B * s.H * s.Tq, -std::numeric_limits<float>::infinity());
  return true;
}

}  // namespace qs::cpu
