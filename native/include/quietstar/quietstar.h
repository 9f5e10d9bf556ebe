// quietstar.h: the Quiet-STaR training step (Zelikman et al. 2024), as the reference code runs
// it (../shared/reference/quietstar-spec.md, "spec" below), in the native core.
//
// A QuietStar object pairs a Model whose vocabulary already holds the two thought markers
// (start_id, end_id) with its extra parameters, which live in the SAME ParamSet as the model
// (one buffer, one AdamW, one clip), under the reference code's names:
//   start_embedding (2, D), end_embedding (2, D)  row 0 is used, stored divided by
//                                                  embedding_scale and multiplied back at use
//   talk_head.0.0.weight (D, 2D), talk_head.0.0.bias (D)   mixing head: Linear → ReLU →
//   talk_head.0.2.weight (D, D),  talk_head.0.2.bias (D)   Linear → ReLU → Linear (no bias)
//   talk_head.0.4.weight (1, D)                             (last layer zero-initialised)
//
// One step on B documents of T tokens (spec §2.12), with R = B·P rows (row r = b·P + p),
// S = n_ahead + n_ahead_talk - 2 chain steps (chain step s feeds, for every position i at RoPE
// position i + s: s = 1 start marker; 2..N-2 sampled thought tokens t_1..t_{N-3}; N-1 end
// marker; N..N+A-2 the true tokens x_{i+1}..x_{i+A-1}):
//   phase 1, no gradient: the base pass once per document, then the chain steps one at a time
//     with a K/V cache (incremental thought attention), sampling t_m from the LM head at the
//     chain hidden of step m with the markers suppressed (fused thought sampling, noise keyed by
//     (seed, row, step, position)).
//   phase 2, differentiable: one packed pass over [base tokens | all chain tokens] with the
//     packed thought attention; heads: base NLL, talk NLL k = 0..A-1 on mixed hidden states,
//     rewards (detached, centred over the P rows, negatives clamped), policy loss on the
//     tempered log-probs of the sampled tokens; backward accumulates into the ParamSet's grads.
// Base K/V and base activations are computed once per document and shared by its P rows.
// nAhead = 1 (no thought; nAhead = 2 is refused): there are no chain tokens; talk step k at
// position i reads the base hidden state at i + k as its "chain" (the sequential sequence
// x_0..x_{i+k} is the text itself), so talk logits = base logits whatever w, rewards are 0 and
// the step reproduces the base model (spec §9.7). nAhead <= 3 samples nothing: thoughts are
// (R, T, 0). Markers: the policy log-probs exclude both markers' LM-head rows; any two ids work,
// the last two of the vocabulary (what the JS side uses) avoid a copy of the head.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quietstar/model.h"

namespace qs {

struct QuietStarOptions {
  int n_ahead = 12;          // N: thought schedule length (N - 3 sampled tokens); N >= 1
  int n_ahead_talk = 4;      // A: true tokens scored after the thought; A >= 1
  int n_passes = 2;          // P: thoughts per position
  int start_id = -1;         // the markers' ids in the model's vocabulary (required)
  int end_id = -1;
  double embedding_scale = 100.0;        // start/end embeddings are stored / this
  double original_loss_weight = 0.5;     // weight of the base NLL vs the talk NLL
  double base_loss_beta = 1.0;           // scale of the whole NLL term
  double policy_loss_beta = 1e6;         // scale of the REINFORCE term
  double reinforce_temperature = 3.0;    // temperature of the policy log-probs
  double thought_temperature = 1.0;      // sampling temperature of thoughts (0 = greedy)
  bool remove_negative_rewards = true;   // clamp centred rewards at 0
  bool trice_baseline = true;            // centre rewards on the mean over the P rows
  // Mixing: reference = logits of (1 - w)·h_base + w·h_chain with w unbounded (code);
  // paper = w weights the base: (w)·h_base + (1 - w)·h_chain. sigmoid squashes w into (0, 1).
  bool mixing_weights_base = false;
  bool mixing_sigmoid = false;
  // Memory, not the algorithm: the packed pass keeps only each layer's output (rows, D) and
  // recomputes the layer's other activations (norms, q/k/v, attention, MLP: ~(6D + 3F) per row)
  // during backward, at the cost of one more forward of the layers.
  bool recompute_activations = false;

  Status validate(const ModelConfig& model) const;  // INVALID_ARGUMENT naming the JS field
  int chain_steps() const { return n_ahead + n_ahead_talk - 2; }  // S
  int thought_tokens() const { return n_ahead > 3 ? n_ahead - 3 : 0; }
};

// The extra parameter views, appended after model_param_specs(config) in one layout.
std::vector<ParamSpec> quietstar_param_specs(const ModelConfig& config);
// The whole parameter layout of a Quiet-STaR model: model_param_specs(config), then the extras.
Status quietstar_model_layout(const ModelConfig& config, ParamLayout* out);

// Per-step figures (means over what the reference averages; definitions in quietstar_train.cpp:
// reward statistics over the (r, i < T-1-A) whose first target x_{i+1} is not ignored, the
// mixing-weight statistics over the talk rows with a counted target).
struct QuietStarMetrics {
  double loss = 0;            // total loss of this micro-batch
  double nll_base = 0;        // mean base NLL
  double nll_talk = 0;        // mean over k of the mean talk NLL
  double policy_loss = 0;     // REINFORCE term before policy_loss_beta
  double reward_mean = 0;     // raw reward R_r(i) = sum_k (base NLL - talk NLL), before centring:
  double reward_std = 0;      //   > 0 where thinking helped; mean and std over scored (r, i)
  double positive_share = 0;  // share of (r, i) with a positive clamped weight
  double mix_mean = 0, mix_std = 0, mix_min = 0, mix_max = 0;  // mixing weight w at talk steps
  int64_t tokens = 0;         // text tokens of the micro-batch (B·T valid)
};

class QuietStar {
 public:
  // `model`'s ParamSet must hold quietstar_param_specs(config) after the model's views
  // (quietstar_model_layout).
  static Status create(Engine& engine, Model* model, const QuietStarOptions& options,
                       std::unique_ptr<QuietStar>* out);
  ~QuietStar();

  const QuietStarOptions& options() const { return options_; }

  // Reference initialisation of the extra parameters: start/end row 0 = E[init_token_id] /
  // embedding_scale (row 1 zero), talk head N(0, 0.02) with zero biases and a zero last layer.
  Status init_parameters(int init_token_id, uint64_t seed);

  // Phase 1 alone: thoughts (R, T, max(N-3, 0)) int32 for ids (B, T), valid (B, T) uint8
  // (undefined = all valid). Draws are keyed by (seed, row, s, i), row = row_ids[b]·P + p for
  // row r = b·P + p; row_ids (B) int32 (undefined = b, i.e. row = r): give each document its
  // own id (e.g. its index in a dataset) and it draws the same thoughts in any batch.
  Status sample_thoughts(const Tensor& ids, const Tensor& valid, uint64_t seed, Tensor* thoughts,
                         const Tensor& row_ids = Tensor());

  // Phase 2 with the given thoughts: losses, rewards and, when backward, gradients scaled by
  // loss_scale accumulated into the ParamSet's grads. labels (B, T) int32, -100 = ignored.
  Status forward_backward(const Tensor& ids, const Tensor& valid, const Tensor& labels,
                          const Tensor& thoughts, bool backward, double loss_scale,
                          QuietStarMetrics* metrics);

  // Both phases: one training micro-step.
  Status step(const Tensor& ids, const Tensor& valid, const Tensor& labels, uint64_t seed,
              double loss_scale, QuietStarMetrics* metrics, Tensor* thoughts_out);

  // Internals of the last forward_backward, for tests and analysis (copies, host or device):
  //   "base_hidden" (B,T,D), "chain_hidden" (R,S,T,D), "mix_weight" (R,A,T), "talk_nll" (R,A,T),
  //   "base_nll" (B,T), "reward" (R,T) raw, "reward_weight" (R,T) clamped centred,
  //   "policy_logp" (R,N-3,T)
  Status debug_tensor(const std::string& name, Tensor* out) const;

  // After forward_backward (any P, A): the logits of talk step k = 0 at chosen (row r, position
  // i < T - 1), i.e. the mixed prediction of x_{i+1} (mixed) and the base prediction (base),
  // each (K, V) in the params' dtype, every id included (nothing masked). at (K, 2) int32 rows
  // (r, i), r < B·P. Only the K chosen rows go through the LM head.
  Status talk_logits(const Tensor& at, Tensor* mixed, Tensor* base);

  // ---- thinking at inference (spec §5; quietstar_infer.cpp) -------------------------------
  // A private KV cache (not the Model's) of B rows × (max_len + think_length()) slots: max_len
  // text slots and room for one thought branch. Empty after the call.
  Status think_reset(int B, int max_len);
  // Appends ids (B, n) at positions (B, n) (valid (B, n) u8 or undefined = all valid) to the
  // text cache, then for every row b forks a thought branch on top of it, t = positions[b, n-1]:
  // <start> at t + 1, t_1..t_{N-3} at t + 2.. (sampled as sample_thoughts samples them: markers
  // suppressed, thought_temperature, noise keyed (seed, row_ids[b], step s, position t), so a
  // P = 1 QuietStar draws the same thoughts at row r = row_ids[b], position t of the same
  // text), <end> at t + N - 1; mixes the end token's hidden state with the text's at t (the
  // mixing head and options of training), and rewinds the cache to the text.
  //   logits (B, V) mixed, the markers' entries -inf; base_logits (B, V) (may be null) the
  //   plain next-token logits (markers kept); thoughts (B, N - 3) int32 (may be null).
  //   row_ids (B) int32 or undefined (= b). nAhead = 1: no thought, mixed = base.
  Status think_decode(const Tensor& ids, const Tensor& positions, const Tensor& valid, const Tensor& row_ids,
                      uint64_t seed, Tensor* logits, Tensor* base_logits, Tensor* thoughts);
  // Slots one thought branch takes: nAhead - 1 (0 when nAhead = 1).
  int think_length() const { return options_.n_ahead == 1 ? 0 : options_.n_ahead - 1; }
  // Text slots in the thinking cache (0 after think_reset).
  int think_cache_length() const;

  // ---- tuning and test hooks (added by the implementation) -------------------------------
  // Bytes the fused LM heads may keep from forward to backward (their unit gradients) instead
  // of recomputing the logits in backward; speed only. Default 256 MiB.
  void set_logits_budget(int64_t bytes);
  // Compute the policy log-probs at every (r, m, i) for debug_tensor("policy_logp"); by default
  // only where the reward weight is non-zero (the only entries the loss needs).
  void set_full_policy_logp(bool on);
  // Reuse the reward weights of the previous forward_backward instead of recomputing them.
  // They are detached, so gradients are unchanged; finite-difference checks of the policy term
  // need them held fixed (same batch shape required).
  void set_freeze_rewards(bool on);

 private:
  struct Impl;
  QuietStar() = default;
  QuietStarOptions options_;
  Model* model_ = nullptr;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs
