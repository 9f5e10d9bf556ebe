// transformer.h: the decoder-only transformer's passes on the CPU, as reusable blocks (llm.c style).
//
// Everything works on raw pointers into one flat parameter buffer (weights and gradients are
// views of ParamSet's params / grads) and into activation buffers the caller owns (model_run.cpp
// carves them out of one allocation). Activations are (N, ·) row-major with N = B·T tokens.
//
// A layer (block) runs in three steps so that the attention in the middle can be swapped
// (KV-cached decoding reads keys/values from the cache; Quiet-STaR will use its own pattern):
//
//   block_qkv_forward   x ─norm1─> ln1 ─> q, k, v  (+ RoPE on q, k for Llama, in place)
//   attention_forward   q, k, v ─> att, lse              (attention.h's kernel, AttnPattern)
//   block_out_forward   res2 = x + att·Wo + bo;  out = res2 + MLP(norm2(res2))
//
// and backward mirrors it (block_out_backward, attention_backward_call, block_qkv_backward).
// The residual stream's gradient lives in one buffer (Scratch::dres) that each backward step
// updates in place: on entry it holds d(loss)/d(block output), on exit d(loss)/d(block input).
//
// Families (ModelConfig::family):
//   GPT2  : LayerNorm with bias; c_attn is one Conv1D [D, 3D] whose column blocks q | k | v are
//           multiplied separately (gemm with a row stride of 3D), so q, k, v land in their own
//           (N, H, hd) buffers without a split; GELU (tanh) MLP; learned positions (wpe).
//   Llama : RMSNorm; q/k/v/o [out, in] with optional biases; RoPE (rotate_half, rope_theta,
//           explicit positions); GQA by index in the attention kernel; SwiGLU down(silu(gate)·up).
//
// Backward convention (every kernel here): parameter gradients are ADDED into the grads views.
#pragma once

#include <cstdint>
#include <vector>

#include "quietstar/model.h"

namespace qs::cpu {

// Views of one layer's tensors in a flat buffer (params or grads); null = absent.
// GPT-2 names in brackets are the Conv1D [in, out] weights; Llama's are torch [out, in].
template <typename T>
struct LayerWeights {
  T *ln1_w = nullptr, *ln1_b = nullptr;  // (D)          ln_1 / input_layernorm
  T *qkv_w = nullptr, *qkv_b = nullptr;  // [D, 3D], (3D) GPT-2 c_attn
  T *q_w = nullptr, *q_b = nullptr;      // (H·hd, D)    Llama q_proj
  T *k_w = nullptr, *k_b = nullptr;      // (Hkv·hd, D)  k_proj
  T *v_w = nullptr, *v_b = nullptr;      // (Hkv·hd, D)  v_proj
  T *o_w = nullptr, *o_b = nullptr;      // [D, D] c_proj / (D, H·hd) o_proj
  T *ln2_w = nullptr, *ln2_b = nullptr;  // (D)          ln_2 / post_attention_layernorm
  T *fc_w = nullptr, *fc_b = nullptr;    // [D, F] c_fc / (F, D) gate_proj
  T *up_w = nullptr, *up_b = nullptr;    // (F, D)       up_proj (Llama only)
  T *proj_w = nullptr, *proj_b = nullptr;  // [F, D] mlp.c_proj / (D, F) down_proj
};

template <typename T>
struct ModelWeights {
  T *wte = nullptr;                      // (V, D) wte / embed_tokens
  T *wpe = nullptr;                      // (maxSeqLen, D) GPT-2 only
  T *lnf_w = nullptr, *lnf_b = nullptr;  // (D) ln_f / model.norm
  T *head = nullptr;                     // (V, D) lm_head, or wte when tied
  std::vector<LayerWeights<T>> layers;
};

// Binds the views of `flat` (params or grads, laid out by model_param_specs) to their roles.
template <typename T>
ModelWeights<T> bind_weights(const ModelConfig& c, const ParamLayout& layout, T* flat);

// One layer's saved activations (everything its backward reads). N = B·T rows.
template <typename T>
struct LayerActs {
  T *ln1 = nullptr, *ln1_mean = nullptr, *ln1_rstd = nullptr;  // (N, D), (N), (N); mean unused for RMSNorm
  T *q = nullptr, *k = nullptr, *v = nullptr;  // (N, H, hd), (N, Hkv, hd) x2 (after RoPE for Llama)
  T *att = nullptr;                            // (N, H·hd) attention output (before Wo)
  float *lse = nullptr;                        // (B, H, T) attention log-sum-exp
  T *res2 = nullptr;                           // (N, D) residual after the attention branch
  T *ln2 = nullptr, *ln2_mean = nullptr, *ln2_rstd = nullptr;  // (N, D), (N), (N)
  T *fc = nullptr;                             // (N, F) GPT-2: c_fc output (pre-GELU); Llama: gate
  T *up = nullptr;                             // (N, F) Llama: up (GPT-2: unused)
  T *act = nullptr;                            // (N, F) GELU(fc) / silu(gate)·up
  T *out = nullptr;                            // (N, D) the block's output (residual stream)
};

// Backward temporaries shared by all layers.
template <typename T>
struct Scratch {
  T *dres = nullptr;                  // (N, D) gradient of the residual stream (updated in place)
  T *dln = nullptr;                   // (N, D) gradient of a norm's output (also dhf)
  T *datt = nullptr;                  // (N, H·hd)
  T *dq = nullptr, *dk = nullptr, *dv = nullptr;  // (N, H·hd), (N, Hkv·hd) x2
  T *dfc = nullptr, *dup = nullptr, *dact = nullptr;  // (N, F)
};

// Who attends to whom (attention.h): key j of row b is visible from query i iff
// k_valid[b, j] (null = all) and k_pos[b, j] <= q_pos[b, i] (and within the window).
struct AttnPattern {
  int B = 0, Tq = 0, Tk = 0;
  const int32_t* q_pos = nullptr;    // (B, Tq)
  const int32_t* k_pos = nullptr;    // (B, Tk)
  const uint8_t* k_valid = nullptr;  // (B, Tk) or null
  int window = 0;                    // <= 0: none
};

// ---- embeddings --------------------------------------------------------------------------
// out (N, D) = wte[ids] (+ wpe[pos] for GPT-2)
template <typename T>
void embed_forward(const ModelConfig& c, const ModelWeights<T>& w, T* out, const int32_t* ids, const int32_t* pos, int N);
template <typename T>
void embed_backward(const ModelConfig& c, const ModelWeights<T>& g, const T* dout, const int32_t* ids, const int32_t* pos,
                    int N);

// ---- one block ---------------------------------------------------------------------------
// x (N, D) the block input; pos (N) the token positions (RoPE; unused by GPT-2).
template <typename T>
void block_qkv_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, const int32_t* pos,
                       int N);
// att, lse from q (B, Tq, H, hd) and k, v (B, Tk, Hkv, hd) (a.k / a.v, or a KV cache).
template <typename T>
void attention_forward_call(const ModelConfig& c, LayerActs<T>& a, const T* k, const T* v, const AttnPattern& p);
template <typename T>
void block_out_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, int N);
// The three above with the layer's own k, v.
template <typename T>
void block_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, const int32_t* pos,
                   const AttnPattern& p);

// s.dres: d/d(out) on entry, d/d(res2) on exit; writes s.datt. Grads += into g.
template <typename T>
void block_out_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                        Scratch<T>& s, int N);
// s.datt -> s.dq, s.dk, s.dv (overwritten)
template <typename T>
void attention_backward_call(const ModelConfig& c, const LayerActs<T>& a, Scratch<T>& s, const AttnPattern& p);
// s.dq, s.dk, s.dv -> s.dres += d/dx (so s.dres becomes d/d(block input)). Clobbers s.dq, s.dk (RoPE).
template <typename T>
void block_qkv_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                        const T* x, const int32_t* pos, Scratch<T>& s, int N);
template <typename T>
void block_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                    const T* x, const int32_t* pos, Scratch<T>& s, const AttnPattern& p);

// ---- final norm and head -----------------------------------------------------------------
// hf (N, D) = norm_f(x); mean unused (may be null) for RMSNorm.
template <typename T>
void final_norm_forward(const ModelConfig& c, const ModelWeights<T>& w, T* hf, T* mean, T* rstd, const T* x, int N);
// dx (N, D) += d/dx from dhf; grads += into g.
template <typename T>
void final_norm_backward(const ModelConfig& c, const ModelWeights<T>& w, const ModelWeights<T>& g, T* dx, const T* dhf,
                         const T* x, const T* mean, const T* rstd, int N);
// logits (N, V) = hf · headᵀ
template <typename T>
void head_logits(const ModelConfig& c, const ModelWeights<T>& w, T* logits, const T* hf, int N);

// ---- time profile (benchmarks) -------------------------------------------------------------
// Seconds spent per kernel family since the last reset, when enabled (off by default: the
// timer reads the clock around every call).
enum ProfileKind { kProfMatmul = 0, kProfAttention, kProfHead, kProfNorm, kProfElementwise, kProfEmbed, kProfCount };
struct Profile {
  bool enabled = false;
  double seconds[kProfCount] = {};
  void reset() { for (double& s : seconds) s = 0; }
};
Profile& profile();
const char* profile_name(int kind);
// Adds the scope's duration to profile().seconds[kind] when profiling is enabled.
struct ProfScope {
  int kind;
  double t0;
  explicit ProfScope(int k);
  ~ProfScope();
};

}  // namespace qs::cpu
