// kernels_attention.h: launchers of the CUDA twins of cpu/attention.h (attention.cu) and
// cpu/thought_attention.h (thought_attention.cu).
//
// Plain C++ (no CUDA headers) so the op layer, the model and the tests can include it. Every
// pointer is a device pointer (positions and validity too), f32 only; every launcher enqueues on
// `stream` (the engine's cudaStream_t), never synchronises, and returns a Status. Layouts,
// visibility rules, "+=" gradients, null gradients skipped, lse = -inf and zero output for a
// query that sees no key: exactly the CPU twin's contract (see the CPU headers).
//
// Backward launchers take a device scratch buffer of the size their *_scratch_bytes function
// returns (the caller allocates it from the engine's caching allocator); no launcher allocates.
// It holds D = rowsum(dout ∘ out) and, for shapes with few (batch row, kv head, key tile)
// blocks, the dK/dV partials of a split over query tiles (summed in a fixed order).
// Every reduction has a fixed order: results do not depend on timing (no float atomics).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/attention.h"
#include "cpu/thought_attention.h"
#include "quietstar/status.h"

namespace qs::cuda {

// attention.cu: q (B,Tq,H,d), k, v (B,Tk,Hkv,d), out (B,Tq,H,d), lse (B,H,Tq);
// q_pos (B,Tq), k_pos (B,Tk) int32, k_valid (B,Tk) uint8 or null.
// Serves full sequences and KV-cached decoding (small Tq against a long cache) alike.
Status attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* q_pos,
                         const int32_t* k_pos, const uint8_t* k_valid, const cpu::AttentionShape& s, float scale,
                         void* stream);
size_t attention_backward_scratch_bytes(const cpu::AttentionShape& s);
Status attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const int32_t* q_pos,
                          const int32_t* k_pos, const uint8_t* k_valid, const cpu::AttentionShape& s, float scale,
                          void* scratch, void* stream);

// Dense masked attention, the reference method's cost (bench/cuda_attention_bench.cpp) and a
// second oracle for thought attention in the tests: key j is visible to query i of batch row b
// iff mask[b, i, j] != 0 and k_valid[b, j] != 0 (null = all valid); mask (B, Tq, Tk) uint8.
// Every score is computed (no tile is skipped); otherwise the contract of attention_forward /
// attention_backward (scratch of attention_backward_scratch_bytes).
Status attention_forward_masked(float* out, float* lse, const float* q, const float* k, const float* v,
                                const uint8_t* mask, const uint8_t* k_valid, const cpu::AttentionShape& s,
                                float scale, void* stream);
Status attention_backward_masked(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                                 const float* v, const float* out, const float* lse, const uint8_t* mask,
                                 const uint8_t* k_valid, const cpu::AttentionShape& s, float scale, void* scratch,
                                 void* stream);

// thought_attention.cu: q_chain (R,Sq,T,H,d), k_base, v_base (B,T,Hkv,d), k_chain, v_chain
// (R,Sk,T,Hkv,d), valid (B,T) uint8 or null, out (R,Sq,T,H,d), lse (R,Sq,T,H). Packed
// (s_first 1, Sq = Sk = S) and incremental (Sq 1) modes, as on the CPU.
Status thought_attention_forward(float* out, float* lse, const float* q_chain, const float* k_base,
                                 const float* v_base, const float* k_chain, const float* v_chain,
                                 const uint8_t* valid, const cpu::ThoughtAttentionShape& s, float scale, void* stream);
size_t thought_attention_backward_scratch_bytes(const cpu::ThoughtAttentionShape& s);
// dk_base, dv_base (B,T,Hkv,d) summed over every query step and every row of the document with
// a deterministic reduction; dk_chain, dv_chain without contention.
Status thought_attention_backward(float* dq_chain, float* dk_base, float* dv_base, float* dk_chain, float* dv_chain,
                                  const float* dout, const float* q_chain, const float* k_base, const float* v_base,
                                  const float* k_chain, const float* v_chain, const float* out, const float* lse,
                                  const uint8_t* valid, const cpu::ThoughtAttentionShape& s, float scale,
                                  void* scratch, void* stream);

}  // namespace qs::cuda
