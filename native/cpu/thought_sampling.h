// thought_sampling.h: fused LM head + Gumbel-max sampling of thought tokens (Quiet-STaR §2.7).
//
// For each of N hidden states h[n] (one per (row, position) of a chain step), in one pass over
// the vocabulary in chunks of `chunk` columns (the [N, V] logits are never materialised):
//   z[v] = h[n] · W[v]                                    W (V, D): the LM head (tied or not)
//   suppressed ids (the thought markers) are skipped: never drawn, not in any normaliser
//   token[n] = argmax_v ( z[v] / temperature + gumbel(seed, rows[n], step, positions[n], v) )
//   logp[n]  = z[token]/tau - logsumexp_v(z[v]/tau)       tau = policy_temperature (reinforce
//                                                          temperature, 3 in the reference)
//   lse[n]   = logsumexp_v z[v]                            (sampling temperature 1, for checks)
// with the noise stream of quietstar/rng.h, so given the same logits the tokens equal those of
// sample_tokens (native/cpu/sampling.h) with temperature `temperature`, no top-k/top-p, the same
// suppress list, rows and positions: parallel and sequential sampling draw identical thoughts.
// temperature 0 means greedy (first argmax). The reference samples with hard Gumbel-softmax at
// any tau, which is argmax(z + g) regardless of tau (spec §2.7): temperature 1 reproduces it.
// Running max and sum per row keep it one pass; ties go to the lower id.
#pragma once

#include <cstdint>

namespace qs::cpu {

struct ThoughtSampleParams {
  double temperature = 1.0;         // sampling temperature; 0 = greedy
  double policy_temperature = 3.0;  // temperature of the returned log-probability
  uint64_t seed = 0;
  uint32_t step = 0;                // chain step (part of the noise key)
  int chunk = 0;                    // vocabulary columns per chunk; <= 0 = 4096
};

// tokens (N) int32, logp (N) float, lse (N) float (any output but tokens may be null);
// h (N, D), W (V, D); rows, positions (N) int32: the noise stream's row id and position of
// each n (null: n and 0, as sample_tokens); suppress (n_suppress) ids in [0, V).
// A row that cannot be sampled gets tokens[n] = kSampleNonFinite (a NaN or +inf logit) or
// kSampleNoToken (every id suppressed or -inf) from cpu/sampling.h, and NaN logp and lse.
template <typename T>
void thought_sample(int32_t* tokens, float* logp, float* lse, const T* h, const T* W, int N,
                    int D, int V, const int32_t* rows, const int32_t* positions,
                    const int32_t* suppress, int n_suppress, const ThoughtSampleParams& params);

}  // namespace qs::cpu
