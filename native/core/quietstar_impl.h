// quietstar_impl.h: QuietStar's private state (quietstar.cpp: options, names, creation,
// initialisation, metrics and debug tensors; quietstar_sample.cpp: phase 1, thought sampling;
// quietstar_train.cpp: phase 2, the packed differentiable pass; quietstar_infer.cpp: thinking
// at inference and the talk logits). Not part of the public API.
//
// Row layouts (row-major, every activation (rows, ·)):
//   packed pass   rows [0, B·T) base tokens (b, i); rows B·T + (r·S + s - 1)·T + i the chain
//                 token of row r, step s (1..S), position i. RoPE / wpe position: i, i + s.
//   talk rows     (k, r, i) for k = 0..A-1, i in [0, T-1-k): the positions whose talk-k target
//                 x_{i+k+1} lies inside the window; offset talk_off[k] + r·(T-1-k) + i.
//   policy rows   a list of (r, m, i) (m = 1..N-3): the sampled tokens the loss scores.
// nAhead = 1 (no thought): there are no chain rows; the "chain" of talk step k at position i is
// the literal sequence x_0..x_{i+k}, i.e. the base pass itself, so its hidden state is the base
// hidden state at i + k (the reference computes exactly this, spec §9.7).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_impl.h"
#include "cpu/transformer.h"
#include "quietstar/quietstar.h"

namespace qs {

// Sizes of one call.
struct QsDims {
  int B = 0, T = 0, P = 0, R = 0;
  int N = 0, A = 0, S = 0, M = 0;  // n_ahead, n_ahead_talk, chain steps (0 when N = 1), thought tokens
  int TA = 0;                      // reward positions per row: max(T - 1 - A, 0)
  int D = 0, V = 0, H = 0, Hkv = 0, hd = 0, Q = 0, KV = 0, F = 0, L = 0;
  int64_t BT = 0, RT = 0, chain = 0, rows = 0;  // base rows, R·T, chain rows R·S·T, all rows
  int64_t talk = 0;                             // talk rows Σ_k R·(T-1-k)
  std::vector<int64_t> talk_off;                // (A + 1) offsets of the k blocks
  // Packed row of chain token (r, s, i) and the hidden state used as talk k's chain input.
  int64_t chain_row(int r, int s, int i) const { return BT + ((int64_t)r * S + s - 1) * T + i; }
  int64_t talk_chain_row(int r, int k, int i) const {
    return N == 1 ? (int64_t)(r / P) * T + i + k : chain_row(r, N - 1 + k, i);
  }
};

QsDims qs_dims(const ModelConfig& c, const QuietStarOptions& o, int B, int T);

// Phase 1 (sampling) buffers: one layer's activations over R·T rows (the base pass uses the
// first B·T of them), the residual stream in two buffers, and the K/V the chain queries read.
template <typename T>
struct SampleBuffers {
  T *x0 = nullptr, *x1 = nullptr;   // (R·T, D)
  cpu::LayerActs<T> a;              // R·T rows; a.k / a.v are pointed at kx/vx or kb/vb
  T *kx = nullptr, *vx = nullptr;   // (R·T, KV) the new chain step's keys / values
  std::vector<T*> kb, vb;           // per layer (B, T, Hkv, d): base K/V, shared by the P rows
  std::vector<T*> kc, vc;           // per layer (R, M, T, Hkv, d): chain K/V cache, steps 1..M
  T *hf = nullptr, *mean = nullptr, *rstd = nullptr;  // (R·T, D), (R·T), (R·T)
  int32_t* tok = nullptr;           // (R·T) tokens of the step
  int32_t *rows = nullptr, *posi = nullptr, *posc = nullptr;  // (R·T) noise row r, position i, RoPE i + s
};

// Phase 2 buffers.
template <typename T>
struct TrainBuffers2 {
  T* x0 = nullptr;                         // (rows, D) inputs
  std::vector<cpu::LayerActs<T>> layers;   // rows; lse (rows·H): base (B,H,T) then chain (R,S,T,H)
  // recompute_activations: layers[l] holds only .out; the layer's other activations live in
  // `work`, recomputed from the layer's input during backward
  cpu::LayerActs<T> work;
  T *hf = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr;  // (rows, D), (rows), (rows)
  // base head over the B·T base rows
  T* base_loss = nullptr;  float* base_lse = nullptr;  T* base_G = nullptr;
  // talk: gathered inputs, mixing head activations, mixed hidden, head
  T *Hb = nullptr, *Hc = nullptr;          // (talk, D) base hidden at i + k, chain hidden
  T *z1 = nullptr, *a1 = nullptr, *z2 = nullptr, *a2 = nullptr;  // (talk, D)
  T *wraw = nullptr, *w = nullptr;         // (talk) mixing weight before / after the sigmoid
  T* hm = nullptr;                         // (talk, D) mixed hidden state
  T* talk_loss = nullptr;  float* talk_lse = nullptr;  T* talk_G = nullptr;
  // policy over the listed rows: h / reinforce_temperature
  T* hp = nullptr;  T* pol_loss = nullptr;  float* pol_lse = nullptr;  T* pol_G = nullptr;
  T* dloss = nullptr;                      // (max(talk, policy rows, B·T))
  // backward
  cpu::Scratch<T> s;                       // rows; s.dln doubles as d(hf)
  T *dhm = nullptr, *dHb = nullptr, *dHc = nullptr, *t1 = nullptr;  // (talk, D)
  T* dwv = nullptr;                        // (talk)
  T* dhp = nullptr;                        // (policy rows max, D)
};

struct QuietStar::Impl {
  Engine* engine = nullptr;
  int64_t logits_budget = (int64_t)256 << 20;
  bool full_policy = false, freeze_rewards = false;

  // ---- phase 1 ----
  Tensor sample_mem;
  SampleBuffers<float> sf;
  SampleBuffers<double> sd;

  // ---- phase 2 (the last forward_backward) ----
  Tensor train_mem;
  TrainBuffers2<float> tf;
  TrainBuffers2<double> td;
  bool has_forward = false;
  QsDims dims;
  int64_t policy_max = 0;                  // policy rows the buffers hold
  bool keep_base = false, keep_talk = false, keep_policy = false;
  std::vector<int32_t> ids, labels, pos;   // ids/labels (B·T), pos (rows)
  std::vector<uint8_t> valid;              // (B·T)
  std::vector<int32_t> tok;                // (rows) input token of each packed row; markers: their ids
  std::vector<int32_t> thoughts;           // (R, T, M)
  std::vector<int32_t> base_tg, talk_tg;   // (B·T), (talk) targets, -100 ignored
  std::vector<int64_t> count_talk;         // (A) counted targets per talk step
  int64_t count_base = 0;
  std::vector<double> reward, weight;      // (R, T) raw reward, clamped centred weight (0 outside [0, TA))
  std::vector<int32_t> pol_r, pol_m, pol_i, pol_tg;  // the policy rows and their (compact) targets
  std::vector<double> pol_logp;            // (R, M, T) log-probs computed (0 elsewhere)
  QuietStarMetrics metrics;

  // ---- thinking at inference (quietstar_infer.cpp) ----
  KvCache think_kv;                        // B × (max_len + think length) slots
  int think_text_max = 0;                  // text slots (max_len of think_reset)
  Tensor think_mem;                        // InferBuffers for B·n rows
  InferBuffers<float> thf;
  InferBuffers<double> thd;

  template <typename B_> SampleBuffers<B_>& sample();
  template <typename B_> TrainBuffers2<B_>& train();
  template <typename B_> InferBuffers<B_>& think();
  Status ensure(Tensor& mem, size_t bytes);

  template <typename T>
  Status sample_thoughts(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids,
                         const Tensor& valid, const Tensor& row_ids, uint64_t seed, Tensor* thoughts);
  template <typename T>
  Status forward_backward(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids,
                          const Tensor& valid, const Tensor& labels, const Tensor& thoughts, bool backward,
                          double loss_scale, QuietStarMetrics* metrics);
  template <typename T>
  Status debug(const std::string& name, DType dt, Tensor* out);
  template <typename T>
  Status talk_logits(const ModelConfig& c, ParamSet& p, const Tensor& at, Tensor* mixed, Tensor* base);
  template <typename T>
  Status think_decode(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids,
                      const Tensor& positions, const Tensor& valid, const Tensor& row_ids, uint64_t seed, Tensor* logits,
                      Tensor* base_logits, Tensor* thoughts);
};

template <> inline SampleBuffers<float>& QuietStar::Impl::sample<float>() { return sf; }
template <> inline SampleBuffers<double>& QuietStar::Impl::sample<double>() { return sd; }
template <> inline TrainBuffers2<float>& QuietStar::Impl::train<float>() { return tf; }
template <> inline TrainBuffers2<double>& QuietStar::Impl::train<double>() { return td; }
template <> inline InferBuffers<float>& QuietStar::Impl::think<float>() { return thf; }
template <> inline InferBuffers<double>& QuietStar::Impl::think<double>() { return thd; }

// The extra parameters bound to their roles in a flat buffer (params or grads).
template <typename T>
struct QsWeights {
  T *start = nullptr, *end = nullptr;    // (2, D): row 0 used
  T *w1 = nullptr, *b1 = nullptr;        // (D, 2D), (D)
  T *w2 = nullptr, *b2 = nullptr;        // (D, D), (D)
  T *w3 = nullptr;                       // (1, D)
};
template <typename T>
QsWeights<T> bind_qs_weights(const ParamLayout& layout, T* flat);

// The noise row of each of the B·P rows: row_ids[b]·P + p, or b·P + p when row_ids is
// undefined; row_ids must be a CPU int32 (B) tensor of ids >= 0 (errors name `what`).
Status noise_rows(const char* what, const Tensor& row_ids, int B, int P, std::vector<int32_t>* rows);

// Shared input checks: ids (B,T) in [0,V), valid (B,T) u8 or undefined, labels, thoughts.
Status check_qs_inputs(const ModelConfig& c, const QuietStarOptions& o, Engine& e, const char* what, const Tensor& ids,
                       const Tensor& valid, const Tensor* labels, const Tensor* thoughts);

// The carving of one transformer layer's activations for `n` rows (as model_run.cpp's).
template <typename T>
void qs_carve_layer(Carver& cv, const ModelConfig& c, int64_t n, cpu::LayerActs<T>& a, bool with_out, bool with_kv);

}  // namespace qs
