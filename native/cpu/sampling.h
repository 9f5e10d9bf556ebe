// sampling.h: next-token sampling from logits (greedy, temperature, top-k, top-p).
//
// One row of logits (V) gives one token id. With temperature 0 the id is the argmax (the first
// on ties). Otherwise, in Hugging Face's order: z = logits / temperature; keep the top_k largest
// z (top_k 0 = all); keep the nucleus, the smallest prefix of those in decreasing order whose
// softmax mass reaches top_p (a token is kept while the mass before it is < top_p; top_p 1 =
// all); then draw by Gumbel-max, argmax over the kept tokens of z + gumbel(token), with the
// noise of the stream (seed, rows[b], step, positions[b]) defined in quietstar/rng.h. Gumbel-max
// draws exactly from softmax(z) renormalised over the kept tokens.
//
// Ids in `suppress` and logits equal to -inf are never drawn (also not by greedy).
// Ties everywhere (greedy, top-k boundary, nucleus order, the Gumbel argmax) go to the lower
// token id, so the result is a pure function of the row's logits and stream: independent of the
// batch, of the thread count and of the float type's memory layout.
//
// Cost per row: O(V) plus, for top-k, an O(V) selection and an O(k log k) sort of the kept
// tokens; for top-p alone, repeated selections of the largest m = 64, 256, 1024, ... tokens,
// each sorted, until the nucleus is covered (O(V) selections, a sort of ~4x the nucleus size;
// no full sort of the vocabulary unless the nucleus is most of it).
#pragma once

#include <cstdint>

namespace qs::cpu {

struct SampleParams {
  double temperature = 1.0;  // 0 = greedy
  int top_k = 0;             // 0 = off
  double top_p = 1.0;        // 1 = off; (0, 1]
  uint64_t seed = 0;
  uint32_t step = 0;
};

// Row results below 0 in `out` mark a row that could not be sampled.
constexpr int32_t kSampleNoToken = -1;    // every token suppressed or -inf
constexpr int32_t kSampleNonFinite = -2;  // a NaN or +inf logit

// out (B) i32; logits (B, V); rows (B) the stream's row id per batch row (null: 0..B-1);
// positions (B) the stream's position per row (null: 0); suppress (n_suppress) ids in [0, V).
// Returns the number of rows that could not be sampled (their out[b] < 0).
template <typename T>
int sample_tokens(int32_t* out, const T* logits, int B, int V, const SampleParams& params,
                  const int32_t* rows, const int32_t* positions, const int32_t* suppress,
                  int n_suppress);

}  // namespace qs::cpu
