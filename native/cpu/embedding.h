// embedding.h: token embedding gather and learned position embedding.
//
// Ids are int32 and must already be range-checked by the caller (the op layer does it and
// names the offending index); kernels trust their inputs.
// Backward adds (+=) into the table gradients (see linear.h for the convention).
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C);
// out (N,C) = table[ids[n]], ids (N), table (V,C)

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int N, int C);
// dtable (V,C) += scatter of dout (N,C) by ids; deterministic (no atomics, fixed order)

template <typename T>
void position_embedding_forward(T* out, const int32_t* pos, const T* wpe, int N, int C);
// out (N,C) += wpe[pos[n]], pos (N), wpe (maxT,C): GPT-2's learned positions, added in place

template <typename T>
void position_embedding_backward(T* dwpe, const T* dout, const int32_t* pos, int N, int C);
// dwpe (maxT,C) += scatter of dout (N,C) by pos

}  // namespace qs::cpu
