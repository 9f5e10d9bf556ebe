// model.h: decoder-only transformers (GPT-2 and the Llama family) over one parameter buffer.
//
// llm.c's design: the model is a config, a ParamSet (params, grads, AdamW moments, each one flat
// buffer whose named views carry the Hugging Face tensor names and shapes, so checkpoints load
// 1:1), and activation buffers sized for the last (B, T). The per-layer forward and backward
// passes live in native/cpu/transformer.* and native/cuda/transformer.*; this class validates
// inputs, owns the buffers and dispatches on the engine's device (core/model_backend.h). On a
// CUDA engine the parameters must be f32.
//
// Families:
//   GPT2  : LayerNorm (with bias), learned positions, GELU (tanh), Conv1D [in,out] weights,
//           fused c_attn (q|k|v), biases everywhere, tied head (unless tie_embeddings is false).
//   Llama : RMSNorm, RoPE (rotate_half, rope_theta) on q and k, GQA (n_kv_heads), SwiGLU MLP,
//           [out,in] weights, optional q/k/v biases (Qwen2), o-proj bias and MLP biases (Llama's
//           attention_bias / mlp_bias), optional sliding window (Mistral), tied or untied head.
//
// All methods run on the engine's compute thread (call them from a job or Engine::run_sync).
// Token tensors are int32, on the CPU or on the engine's CUDA device; ids must be in
// [0, vocab_size) and targets in [0, vocab_size) or -100 (ignored): both are checked, errors
// name the tensor and the index.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quietstar/params.h"

namespace qs {

enum class ModelFamily { GPT2 = 0, Llama = 1 };

struct ModelConfig {
  ModelFamily family = ModelFamily::Llama;
  int vocab_size = 0;
  int d_model = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;   // GPT-2: n_heads
  int head_dim = 0;     // usually d_model / n_heads
  int d_ff = 0;         // MLP hidden width
  int max_seq_len = 0;  // GPT-2: rows of wpe; Llama: the longest position accepted
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_embeddings = true;
  bool qkv_bias = false;   // GPT-2: always true (c_attn.bias)
  bool o_bias = false;     // GPT-2: always true (c_proj.bias)
  bool mlp_bias = false;   // GPT-2: always true
  int sliding_window = 0;  // <= 0: none

  // INVALID_ARGUMENT naming the JS field (config.nKvHeads, config.headDim, ...).
  Status validate() const;
};

// The parameter views of `config`, Hugging Face names and shapes, in a fixed order.
// Rank >= 2 tensors decay; norm gains and biases do not.
std::vector<ParamSpec> model_param_specs(const ModelConfig& config);

class Model {
 public:
  // `params` must have been created from model_param_specs(config), optionally followed by
  // extra views outside the model's namespaces (transformer.*, model.*, lm_head.*), e.g.
  // quietstar_param_specs(config): checked view by view. The model ignores the extras.
  static Status create(Engine& engine, const ModelConfig& config, std::shared_ptr<ParamSet> params,
                       std::unique_ptr<Model>* out);
  ~Model();

  const ModelConfig& config() const { return config_; }
  ParamSet& params() { return *params_; }
  const std::shared_ptr<ParamSet>& params_ptr() const { return params_; }

  // GPT-2 / Llama initialisation: weights ~ N(0, 0.02), residual output projections (attn out,
  // MLP down) ~ N(0, 0.02/sqrt(2·n_layers)), norm gains 1, biases 0. Deterministic in `seed`.
  Status init_weights(uint64_t seed);

  // ---- training ------------------------------------------------------------------------
  // ids, targets (B,T) int32. Positions are 0..T-1 (T <= max_seq_len). Keeps every activation
  // the backward needs. *mean_loss = mean NLL over targets != -100, *count = their number
  // (mean_loss = 0 when count = 0).
  Status forward(const Tensor& ids, const Tensor& targets, double* mean_loss, int64_t* count);
  // grads += loss_scale · d(mean_loss of the last forward)/d(params). INVALID_ARGUMENT
  // without a preceding forward. Gradients are never zeroed here (ParamSet::zero_grad).
  Status backward(double loss_scale);

  // The final hidden states (B,T,D) of the last forward, after the final norm (the LM head's
  // input): a view into the activation buffer, valid until the next forward. INVALID_ARGUMENT
  // without a preceding forward.
  Status last_hidden(Tensor* out) const;

  // ---- inference (no activations kept beyond the call) ----------------------------------
  // Per-token NLL (B,T) in the params' dtype, 0 where target == -100.
  Status token_losses(const Tensor& ids, const Tensor& targets, Tensor* losses);
  // Logits (B,T,V), or (B,V) at the last position when last_only.
  Status logits(const Tensor& ids, bool last_only, Tensor* out);

  // ---- KV-cached decoding ----------------------------------------------------------------
  // Allocates (or reuses) a cache of B rows x max_len slots and empties it.
  Status reset_cache(int B, int max_len);
  // Appends n = ids.dim(1) slots to every row: ids, positions (B,n) int32, valid (B,n) uint8
  // (undefined = all valid; invalid slots are padding, never attended). Writes the logits of
  // each row's last appended slot to *logits (B,V). INVALID_ARGUMENT when the cache is full.
  Status decode(const Tensor& ids, const Tensor& positions, const Tensor& valid, Tensor* logits);
  int cache_length() const;

  // Bytes held by activations and the cache (for memory reports).
  int64_t activation_bytes() const;

  // Training memory (bytes) the fused LM head may hold from forward to backward: when its unit
  // gradient (B·T·V elements) fits, forward keeps it and backward skips recomputing the logits
  // (a quarter of the head's FLOPs); otherwise backward recomputes them chunk by chunk.
  // Speed only: both paths give the same gradients up to rounding. Default 128 MiB.
  void set_logits_budget(int64_t bytes);

 private:
  struct Impl;
  Model() = default;
  ModelConfig config_;
  std::shared_ptr<ParamSet> params_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs
