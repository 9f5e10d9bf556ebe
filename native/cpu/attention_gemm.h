// attention_gemm.h: the attention of attention.h computed with gemm on blocks of queries.
//
// Same contract as attention_forward / attention_backward (layouts, GQA by index, explicit
// positions, key validity, sliding window, scale, lse, "+=" gradients, a query with no visible
// key gets zeros and lse = -inf), a different schedule: for each (batch row, head) and block of
// up to 128 queries, the scores against the block's span of possibly-visible keys are formed
// by one gemm into a (128, span) scratch, masked and softmaxed row by row, and multiplied by V
// with a second gemm. Backward recomputes the scores once (flash recomputes them in each of its
// two passes) and runs four gemms per block.
//
// It trades the flash kernel's O(tile) memory for O(128 · Tk) scratch per thread and its
// register-tile inner loops for the blocked gemm micro-kernel. Measured on Zen 5 (B 8, T 256,
// H 4, d 64, 1 thread): backward 9.5 ms against the flash kernel's 13.4 ms; forward 4.8 ms
// against 3.9 ms (its softmax pass costs as much as its two gemms). So the model
// (cpu/transformer.cpp) runs the flash forward and this backward on full sequences.
//
// Parallel over (batch row, head, query block) in the forward and over (batch row, kv head) in
// the backward (each such task owns its dK, dV rows, so no atomics); every gemm inside runs on
// one thread. Deterministic: the order of every sum depends on the shapes only.
#pragma once

#include <cstdint>

#include "cpu/attention.h"

namespace qs::cpu {

template <typename T>
void attention_gemm_forward(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* q_pos,
                            const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s, T scale);

template <typename T>
void attention_gemm_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                             const float* lse, const int32_t* q_pos, const int32_t* k_pos, const uint8_t* k_valid,
                             const AttentionShape& s, T scale);

// Decoding: the same contract again, for a few queries per row (Tq <= 4, KV-cached decoding)
// against a cache of keys. One task per (batch row, query head): per query, the scores of the
// visible keys (dot products, vectorised over d), their softmax and the weighted sum of values.
// The flash kernel's 64-query tiles would do 64x the work for one query.
template <typename T>
void attention_decode_forward(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* q_pos,
                              const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s, T scale);

}  // namespace qs::cpu
