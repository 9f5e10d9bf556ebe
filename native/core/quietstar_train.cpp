// quietstar_train.cpp: phase 2 of the Quiet-STaR step, the packed differentiable pass (spec
// §2.8-§2.10, §8 "two-phase training"), forward and backward.
//
// Given the thoughts (sampled by phase 1 or injected), the loss is a deterministic function of
// the parameters, computed in ONE pass over all tokens (quietstar_impl.h has the row layouts):
//
//   inputs     base rows: wte[x_i] at position i; chain row (r, s, i) at position i + s:
//              s = 1 embedding_scale·start_embedding[0], 2..N-2 wte[t_{s-1}], N-1
//              embedding_scale·end_embedding[0], N..S wte[x_{i+s-N+1}] (teacher forcing; past
//              the window a filler id: those tokens only feed outputs no loss reads)
//   layers     every linear layer, norm and MLP runs over all rows as one matrix; attention:
//              base queries the causal kernel (key validity = valid), chain queries the packed
//              thought attention over the shared base K/V and their own chain
//   heads      base NLL: fused LM head + cross-entropy on the base rows, target x_{i+1}
//              talk k = 0..A-1, i < T-1-k: mixing head on (h_base(i+k), h_chain(r, N-1+k, i)),
//                LM head + cross-entropy of the mixed hidden state, target x_{i+k+1}
//              rewards (detached), weights; policy: log_softmax(z/τ)[t_m] at the chain hidden
//                of step m over the vocabulary without the markers, for the (r, m, i) with a
//                non-zero weight (every other entry contributes 0 to the loss and its gradient)
//   loss       base_loss_beta·(w0·mean(ℓ_base) + (1-w0)·mean_k mean(ℓ_talk,k))
//              + policy_loss_beta·(1/M) Σ_m mean_{r, i < TA}(-weight·log π)
//
// Backward runs the heads' backward into d(final hidden), then the pass in reverse: the base
// queries' attention backward and the thought attention backward both add into the base rows'
// dK/dV (summed over the P rows and the steps inside the kernel), and the embeddings scatter.
//
// The policy log-probs use logits/τ = lm_head(h/τ) (the head has no bias) and drop the marker
// rows of the head (the reference sets their logits to -1e10, i.e. removes them): when the
// markers are the last two ids the first V-2 rows of W are the head, otherwise a compact copy.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/quietstar_backend.h"
#include "core/quietstar_impl.h"
#include "cpu/embedding.h"
#include "cpu/lmhead_xent.h"
#include "cpu/quietstar_heads.h"
#include "cpu/thought_attention.h"

namespace qs {

namespace {

template <typename T>
void carve_train2(Carver& cv, const ModelConfig& c, const QsDims& d, TrainBuffers2<T>& t, int64_t pol_max, bool keep_base,
                  bool keep_talk, bool keep_pol, bool recompute) {
  const int64_t n = d.rows, D = d.D, Q = d.Q, KV = d.KV, F = d.F, V = d.V, nt = d.talk;
  const bool llama = c.family != ModelFamily::GPT2;
  t.x0 = cv.take<T>(n * D);
  t.layers.assign(d.L, cpu::LayerActs<T>());
  if (recompute) {
    for (auto& a : t.layers) a.out = cv.take<T>(n * D);
    qs_carve_layer(cv, c, n, t.work, false, true);
  } else {
    for (auto& a : t.layers) qs_carve_layer(cv, c, n, a, true, true);
  }
  t.hf = cv.take<T>(n * D);
  t.lnf_mean = llama ? nullptr : cv.take<T>(n);
  t.lnf_rstd = cv.take<T>(n);
  t.base_loss = cv.take<T>(d.BT);
  t.base_lse = cv.take<float>(d.BT);
  t.base_G = keep_base ? cv.take<T>(d.BT * V) : nullptr;
  t.Hb = cv.take<T>(nt * D), t.Hc = cv.take<T>(nt * D);
  t.z1 = cv.take<T>(nt * D), t.a1 = cv.take<T>(nt * D), t.z2 = cv.take<T>(nt * D), t.a2 = cv.take<T>(nt * D);
  t.wraw = cv.take<T>(nt), t.w = cv.take<T>(nt);
  t.hm = cv.take<T>(nt * D);
  t.talk_loss = cv.take<T>(nt);
  t.talk_lse = cv.take<float>(nt);
  t.talk_G = keep_talk ? cv.take<T>(nt * V) : nullptr;
  t.hp = cv.take<T>(pol_max * D);
  t.pol_loss = cv.take<T>(pol_max);
  t.pol_lse = cv.take<float>(pol_max);
  t.pol_G = keep_pol ? cv.take<T>(pol_max * V) : nullptr;
  t.dloss = cv.take<T>(std::max({nt, pol_max, d.BT}));
  cpu::Scratch<T>& s = t.s;
  s.dres = cv.take<T>(n * D);
  s.dln = cv.take<T>(n * D);
  s.datt = cv.take<T>(n * Q);
  s.dq = cv.take<T>(n * Q);
  s.dk = cv.take<T>(n * KV);
  s.dv = cv.take<T>(n * KV);
  s.dfc = cv.take<T>(n * F);
  s.dup = llama ? cv.take<T>(n * F) : nullptr;
  s.dact = cv.take<T>(n * F);
  t.dhm = cv.take<T>(nt * D), t.dHb = cv.take<T>(nt * D), t.dHc = cv.take<T>(nt * D), t.t1 = cv.take<T>(nt * D);
  t.dwv = cv.take<T>(nt);
  t.dhp = cv.take<T>(pol_max * D);
}

// Fused LM head + cross-entropy, keeping the unit gradient G when given (CPU only: on CUDA the
// head never keeps G; its backward recomputes the logits chunk by chunk).
template <typename T>
Status head_forward(const Exec& ex, StagedArrays& staged, T* loss, float* lse, T* G, const T* h, const T* W,
                    const int32_t* tg, int64_t n, int D, int V) {
  if (n <= 0) return Status::Ok();
  if (G) {
    cpu::ProfScope ps(cpu::kProfHead);
    cpu::lmhead_xent_forward_keep<T>(loss, lse, G, h, W, tg, (int)n, D, V, kIgnoreIndex, 0);
    return Status::Ok();
  }
  void* scratch;
  QS_RETURN_IF_ERROR(staged.scratch(be::xent_scratch_bytes(ex, (int)n, V), &scratch));
  return be::lmhead_xent_forward<T>(ex, loss, lse, h, W, tg, (int)n, D, V, kIgnoreIndex, scratch);
}

// dh +=, dW += from per-row dloss. With G: its counted rows are scaled by their dloss (G is
// spent), then one kept backward; otherwise the recomputing backward.
template <typename T>
Status head_backward(const Exec& ex, StagedArrays& staged, T* dh, T* dW, const T* dloss, T* G, const T* h, const T* W,
                     const int32_t* tg, const float* lse, int64_t n, int D, int V) {
  if (n <= 0) return Status::Ok();
  if (G) {
    cpu::ProfScope ps(cpu::kProfHead);
    std::vector<int64_t> counted;
    for (int64_t r = 0; r < n; r++)
      if (tg[r] != kIgnoreIndex) counted.push_back(r);
    const int64_t nc = (int64_t)counted.size();
#pragma omp parallel for schedule(static) if (nc * V > (1 << 15))
    for (int64_t k = 0; k < nc; k++) {
      T* g = G + k * V;
      const T f = dloss[counted[k]];
      for (int v = 0; v < V; v++) g[v] *= f;
    }
    cpu::lmhead_xent_backward_kept<T>(dh, dW, T(1), G, h, W, tg, (int)n, D, V, kIgnoreIndex);
    return Status::Ok();
  }
  void* scratch;
  QS_RETURN_IF_ERROR(staged.scratch(be::xent_scratch_bytes(ex, (int)n, V), &scratch));
  return be::lmhead_xent_backward<T>(ex, dh, dW, dloss, h, W, tg, lse, (int)n, D, V, kIgnoreIndex, scratch);
}

}  // namespace

template <typename T>
Status QuietStar::Impl::forward_backward(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids_t,
                                         const Tensor& valid_t, const Tensor& labels_t, const Tensor& thoughts_t,
                                         bool backward, double loss_scale, QuietStarMetrics* metrics_out) {
  const char* what = "QuietStar.forwardBackward";
  QS_RETURN_IF_ERROR(check_qs_inputs(c, o, *engine, what, ids_t, valid_t, &labels_t, &thoughts_t));
  const int B = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1);
  const QsDims d = qs_dims(c, o, B, T_);
  const bool frozen = freeze_rewards && has_forward && dims.B == B && dims.T == T_ && !weight.empty();
  has_forward = false;
  dims = d;
  const int D = d.D, V = d.V, P = d.P, R = d.R, S = d.S, M = d.M, N = d.N, A = d.A;
  const int64_t BT = d.BT, rows = d.rows;
  const Exec ex = exec_of(*engine);
  StagedArrays staged(*engine, ex);  // host arrays the kernels read, and device scratch

  // ---- host-side layout: copies of the inputs, positions, input tokens, targets
  ids.assign(ids_t.data<int32_t>(), ids_t.data<int32_t>() + BT);
  labels.assign(labels_t.data<int32_t>(), labels_t.data<int32_t>() + BT);
  valid.assign(BT, 1);
  if (valid_t.defined()) std::memcpy(valid.data(), valid_t.data<uint8_t>(), (size_t)BT);
  thoughts.assign(thoughts_t.data<int32_t>(), thoughts_t.data<int32_t>() + d.RT * M);
  pos.resize(rows);
  tok.resize(rows);
  for (int64_t n = 0; n < BT; n++) pos[n] = (int32_t)(n % T_), tok[n] = ids[n];
  for (int r = 0; r < R; r++) {
    const int b = r / P;
    for (int s = 1; s <= S; s++)
      for (int i = 0; i < T_; i++) {
        const int64_t n = d.chain_row(r, s, i);
        pos[n] = i + s;
        int32_t t;
        if (s == 1) t = o.start_id;
        else if (s <= N - 2) t = thoughts[((int64_t)r * T_ + i) * M + s - 2];
        else if (s == N - 1) t = o.end_id;
        else t = ids[(int64_t)b * T_ + std::min(i + s - N + 1, T_ - 1)];  // x_{i+s-N+1}; filler past the end
        tok[n] = t;
      }
  }
  base_tg.assign(BT, kIgnoreIndex);
  count_base = 0;
  for (int b = 0; b < B; b++)
    for (int i = 0; i + 1 < T_; i++) {
      const int32_t t = labels[(int64_t)b * T_ + i + 1];
      base_tg[(int64_t)b * T_ + i] = t;
      count_base += t != kIgnoreIndex;
    }
  talk_tg.assign(d.talk, kIgnoreIndex);
  count_talk.assign(A, 0);
  for (int k = 0; k < A; k++)
    for (int r = 0; r < R; r++)
      for (int i = 0; i < T_ - 1 - k; i++) {
        const int32_t t = labels[(int64_t)(r / P) * T_ + i + k + 1];
        talk_tg[d.talk_off[k] + (int64_t)r * (T_ - 1 - k) + i] = t;
        count_talk[k] += t != kIgnoreIndex;
      }

  // the rows the heads read: talk row n = (k, r, i) reads base row (b, i + k) and its chain row;
  // the marker rows (r, 1, i) and (r, N - 1, i)
  std::vector<int64_t> talk_brow(d.talk), talk_crow(d.talk), start_rows(S > 0 ? d.RT : 0), end_rows(S > 0 ? d.RT : 0);
  for (int k = 0; k < A; k++)
    for (int r = 0; r < R; r++)
      for (int i = 0; i < T_ - 1 - k; i++) {
        const int64_t n = d.talk_off[k] + (int64_t)r * (T_ - 1 - k) + i;
        talk_brow[n] = (int64_t)(r / P) * T_ + i + k;
        talk_crow[n] = d.talk_chain_row(r, k, i);
      }
  for (int r = 0; r < R && S > 0; r++)
    for (int i = 0; i < T_; i++) {
      start_rows[(int64_t)r * T_ + i] = d.chain_row(r, 1, i);
      end_rows[(int64_t)r * T_ + i] = d.chain_row(r, N - 1, i);
    }

  // ---- buffers (the policy rows are known only after the rewards: sized for the most)
  const int64_t pol_max = (int64_t)R * M * (full_policy ? T_ : d.TA);
  const int64_t sz = sizeof(T);
  keep_base = !ex.cuda && BT * V * sz <= logits_budget;  // the CUDA head recomputes instead
  keep_talk = !ex.cuda && (keep_base ? BT : 0) * V * sz + d.talk * V * sz <= logits_budget;
  keep_policy = !ex.cuda && ((keep_base ? BT : 0) + (keep_talk ? d.talk : 0) + pol_max) * V * sz <= logits_budget;
  TrainBuffers2<T>& tb = train<T>();
  Carver measure;
  carve_train2(measure, c, d, tb, pol_max, keep_base, keep_talk, keep_policy, o.recompute_activations);
  QS_RETURN_IF_ERROR(ensure(train_mem, measure.used));
  Carver cv{static_cast<char*>(train_mem.raw())};
  carve_train2(cv, c, d, tb, pol_max, keep_base, keep_talk, keep_policy, o.recompute_activations);
  policy_max = pol_max;

  T* flat = p.params().data<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), flat);
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), flat);
  const T scale = (T)(1.0 / std::sqrt((double)d.hd));
  const bool gpt2 = c.family == ModelFamily::GPT2;
  // the index arrays where the kernels read them (device copies on a CUDA engine)
  const int32_t *tok_e, *pos_e, *base_tg_e, *talk_tg_e;
  const uint8_t* valid_e;
  const int64_t *talk_brow_e, *talk_crow_e, *start_rows_e, *end_rows_e;
  QS_RETURN_IF_ERROR(staged.put(tok, &tok_e));
  QS_RETURN_IF_ERROR(staged.put(pos, &pos_e));
  QS_RETURN_IF_ERROR(staged.put(valid, &valid_e));
  QS_RETURN_IF_ERROR(staged.put(base_tg, &base_tg_e));
  QS_RETURN_IF_ERROR(staged.put(talk_tg, &talk_tg_e));
  QS_RETURN_IF_ERROR(staged.put(talk_brow, &talk_brow_e));
  QS_RETURN_IF_ERROR(staged.put(talk_crow, &talk_crow_e));
  QS_RETURN_IF_ERROR(staged.put(start_rows, &start_rows_e));
  QS_RETURN_IF_ERROR(staged.put(end_rows, &end_rows_e));

  // ---- inputs: token rows from the table, marker rows from start/end_embedding (× scale)
  {
    cpu::ProfScope ps(cpu::kProfEmbed);
    QS_RETURN_IF_ERROR(be::embedding_forward<T>(ex, tb.x0, tok_e, w.wte, (int)rows, D, V));
    if (S > 0) {
      QS_RETURN_IF_ERROR(be::fill_rows<T>(ex, tb.x0, qw.start, start_rows_e, d.RT, D, (T)o.embedding_scale));
      QS_RETURN_IF_ERROR(be::fill_rows<T>(ex, tb.x0, qw.end, end_rows_e, d.RT, D, (T)o.embedding_scale));
    }
    if (gpt2) QS_RETURN_IF_ERROR(be::position_embedding_forward<T>(ex, tb.x0, pos_e, w.wpe, (int)rows, D, c.max_seq_len));
  }

  // ---- the layers
  const cpu::AttnPattern base_pat{B, T_, T_, pos_e, pos_e, valid_e, c.sliding_window};
  const cpu::ThoughtAttentionShape chain_sh{B, P, T_, S, 1, S, d.H, d.Hkv, d.hd, c.sliding_window};
  const bool recompute = o.recompute_activations;
  // Layer l's forward into acts (the layer's own, or `work` with out = layers[l].out).
  auto layer_forward = [&](int l) -> Status {
    cpu::LayerActs<T>& a = recompute ? tb.work : tb.layers[l];
    if (recompute) a.out = tb.layers[l].out;
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    QS_RETURN_IF_ERROR(be::block_qkv_forward(ex, c, w.layers[l], a, x, pos_e, (int)rows));
    QS_RETURN_IF_ERROR(be::attention_forward_call(ex, c, a, a.k, a.v, base_pat));  // the base rows come first
    if (S > 0)
      QS_RETURN_IF_ERROR(be::thought_attention_forward<T>(ex, a.att + BT * d.Q, a.lse + BT * d.H, a.q + BT * d.Q, a.k,
                                                          a.v, a.k + BT * d.KV, a.v + BT * d.KV, valid_e, chain_sh,
                                                          scale));
    return be::block_out_forward(ex, c, w.layers[l], a, x, (int)rows);
  };
  for (int l = 0; l < d.L; l++) QS_RETURN_IF_ERROR(layer_forward(l));
  const T* x_last = tb.layers[d.L - 1].out;
  QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, tb.hf, tb.lnf_mean, tb.lnf_rstd, x_last, (int)rows));

  // ---- base head
  QS_RETURN_IF_ERROR(head_forward(ex, staged, tb.base_loss, tb.base_lse, tb.base_G, tb.hf, w.head, base_tg_e, BT, D, V));
  std::vector<T> base_loss_copy, talk_loss_copy, w_copy, pol_loss_copy;
  const T *base_loss_h, *talk_loss_h, *w_h, *pol_loss_h;
  QS_RETURN_IF_ERROR(be::host_view(ex, (const T*)tb.base_loss, BT, &base_loss_copy, &base_loss_h));
  double sum_base = 0;
  for (int64_t n = 0; n < BT; n++) sum_base += (double)base_loss_h[n];

  // ---- talk: gather (h_base(i + k), h_chain), mixing head, LM head on the mixed state
  const cpu::MixingWeights<T> mw{qw.w1, qw.b1, qw.w2, qw.b2, qw.w3};
  const cpu::MixingActs<T> ma{tb.z1, tb.a1, tb.z2, tb.a2, tb.wraw, tb.w, tb.hm};
  QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, tb.Hb, tb.hf, talk_brow_e, d.talk, D, T(1)));
  QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, tb.Hc, tb.hf, talk_crow_e, d.talk, D, T(1)));
  QS_RETURN_IF_ERROR(
      be::mixing_forward<T>(ex, ma, tb.Hb, tb.Hc, mw, (int)d.talk, D, o.mixing_weights_base, o.mixing_sigmoid));
  QS_RETURN_IF_ERROR(
      head_forward(ex, staged, tb.talk_loss, tb.talk_lse, tb.talk_G, tb.hm, w.head, talk_tg_e, d.talk, D, V));
  QS_RETURN_IF_ERROR(be::host_view(ex, (const T*)tb.talk_loss, d.talk, &talk_loss_copy, &talk_loss_h));
  QS_RETURN_IF_ERROR(be::host_view(ex, (const T*)tb.w, d.talk, &w_copy, &w_h));
  std::vector<double> sum_talk(A, 0.0);
  for (int k = 0; k < A; k++)
    for (int64_t n = d.talk_off[k]; n < d.talk_off[k + 1]; n++) sum_talk[k] += (double)talk_loss_h[n];

  // ---- rewards (detached) and the policy weights
  std::vector<double> kept_weight;
  if (frozen) kept_weight = weight;
  reward.assign(d.RT, 0.0);
  weight.assign(d.RT, 0.0);
  cpu::quietstar_rewards<T>(reward.data(), weight.data(), base_loss_h, talk_loss_h, d.talk_off.data(), B, P, T_, A,
                            o.trice_baseline, o.remove_negative_rewards);
  if (frozen) weight = kept_weight;

  // ---- policy: the scored sampled tokens, log_softmax(z/τ) over the vocabulary without markers
  const int lo = std::min(o.start_id, o.end_id), hi = std::max(o.start_id, o.end_id);
  const bool markers_last = lo == V - 2 && hi == V - 1;
  const int Vc = V - 2;
  T* Wc_copy = nullptr;            // (Vc, D) engine memory
  std::vector<int64_t> head_rows;  // the head's rows without the markers (when they are not last)
  if (!markers_last && M > 0) {
    for (int v = 0; v < V; v++)
      if (v != lo && v != hi) head_rows.push_back(v);
    const int64_t* head_rows_e;
    void* mem;
    QS_RETURN_IF_ERROR(staged.put(head_rows, &head_rows_e));
    QS_RETURN_IF_ERROR(staged.scratch(sizeof(T) * (size_t)Vc * D, &mem));
    Wc_copy = static_cast<T*>(mem);
    QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, Wc_copy, w.head, head_rows_e, Vc, D, T(1)));
  }
  const T* Wc = markers_last ? w.head : Wc_copy;
  pol_r.clear(), pol_m.clear(), pol_i.clear(), pol_tg.clear();
  for (int r = 0; r < R && d.TA > 0; r++)
    for (int m = 1; m <= M; m++)
      for (int i = 0; i < (full_policy ? T_ : d.TA); i++) {
        if (!full_policy && weight[(int64_t)r * T_ + i] == 0) continue;
        const int t = thoughts[((int64_t)r * T_ + i) * M + m - 1];
        pol_r.push_back(r), pol_m.push_back(m), pol_i.push_back(i);
        pol_tg.push_back(t - (t > lo) - (t > hi));
      }
  const int64_t np = (int64_t)pol_r.size();
  const T inv_tau = (T)(1.0 / o.reinforce_temperature);
  std::vector<int64_t> pol_row(np);  // the chain row each policy row reads
  for (int64_t n = 0; n < np; n++) pol_row[n] = d.chain_row(pol_r[n], pol_m[n], pol_i[n]);
  const int64_t* pol_row_e;
  const int32_t* pol_tg_e;
  QS_RETURN_IF_ERROR(staged.put(pol_row, &pol_row_e));
  QS_RETURN_IF_ERROR(staged.put(pol_tg, &pol_tg_e));
  QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, tb.hp, tb.hf, pol_row_e, np, D, inv_tau));
  QS_RETURN_IF_ERROR(head_forward(ex, staged, tb.pol_loss, tb.pol_lse, tb.pol_G, tb.hp, Wc, pol_tg_e, np, D, Vc));
  QS_RETURN_IF_ERROR(be::host_view(ex, (const T*)tb.pol_loss, np, &pol_loss_copy, &pol_loss_h));
  pol_logp.assign((size_t)R * M * T_, 0.0);
  double pol_sum = 0;
  for (int64_t n = 0; n < np; n++) {
    pol_logp[((int64_t)pol_r[n] * M + pol_m[n] - 1) * T_ + pol_i[n]] = -(double)pol_loss_h[n];
    if (pol_i[n] < d.TA) pol_sum += weight[(int64_t)pol_r[n] * T_ + pol_i[n]] * (double)pol_loss_h[n];
  }
  const double pol_den = (double)M * R * d.TA;
  const double policy_loss = pol_den > 0 ? pol_sum / pol_den : 0.0;

  // ---- metrics
  QuietStarMetrics& mt = metrics;
  mt = QuietStarMetrics();
  mt.nll_base = count_base > 0 ? sum_base / (double)count_base : 0.0;
  double talk_mean = 0;
  for (int k = 0; k < A; k++) talk_mean += count_talk[k] > 0 ? sum_talk[k] / (double)count_talk[k] : 0.0;
  mt.nll_talk = talk_mean / A;
  mt.policy_loss = policy_loss;
  mt.loss = o.base_loss_beta * (o.original_loss_weight * mt.nll_base + (1 - o.original_loss_weight) * mt.nll_talk) +
            o.policy_loss_beta * policy_loss;
  {
    double s1 = 0, s2 = 0, pos_n = 0;
    int64_t n = 0;
    for (int r = 0; r < R; r++)
      for (int i = 0; i < d.TA; i++) {
        if (labels[(int64_t)(r / P) * T_ + i + 1] == kIgnoreIndex) continue;
        const double x = reward[(int64_t)r * T_ + i];
        s1 += x, s2 += x * x, n++;
        pos_n += weight[(int64_t)r * T_ + i] > 0;
      }
    if (n > 0) {
      mt.reward_mean = s1 / n;
      mt.reward_std = std::sqrt(std::max(0.0, s2 / n - mt.reward_mean * mt.reward_mean));
      mt.positive_share = pos_n / n;
    }
    double w1 = 0, w2 = 0, wmin = 0, wmax = 0;
    int64_t nw = 0;
    for (int64_t k = 0; k < d.talk; k++) {
      if (talk_tg[k] == kIgnoreIndex) continue;
      const double x = (double)w_h[k];
      if (nw == 0) wmin = wmax = x;
      wmin = std::min(wmin, x), wmax = std::max(wmax, x);
      w1 += x, w2 += x * x, nw++;
    }
    if (nw > 0) {
      mt.mix_mean = w1 / nw;
      mt.mix_std = std::sqrt(std::max(0.0, w2 / nw - mt.mix_mean * mt.mix_mean));
      mt.mix_min = wmin, mt.mix_max = wmax;
    }
    int64_t nv = 0;
    for (uint8_t v : valid) nv += v != 0;
    mt.tokens = nv;
  }
  has_forward = true;
  if (metrics_out) *metrics_out = mt;
  if (!backward) return Status::Ok();

  // =============================================================================================
  // backward: grads += loss_scale · d(loss)

  const cpu::ModelWeights<T> g = cpu::bind_weights<T>(c, p.layout(), p.grads().data<T>());
  const QsWeights<T> qg = bind_qs_weights<T>(p.layout(), p.grads().data<T>());
  cpu::Scratch<T>& s = tb.s;
  T* dhf = s.dln;
  QS_RETURN_IF_ERROR(be::zero(ex, dhf, sizeof(T) * (size_t)rows * D));
  std::vector<T> dloss;  // per-row d(loss)/d(row loss) of one head, uploaded into tb.dloss

  // base NLL
  if (count_base > 0) {
    const T f = (T)(loss_scale * o.base_loss_beta * o.original_loss_weight / (double)count_base);
    dloss.assign(BT, T(0));
    for (int64_t n = 0; n < BT; n++) dloss[n] = base_tg[n] != kIgnoreIndex ? f : T(0);
    QS_RETURN_IF_ERROR(be::upload(ex, tb.dloss, dloss.data(), sizeof(T) * dloss.size()));
    QS_RETURN_IF_ERROR(
        head_backward(ex, staged, dhf, g.head, tb.dloss, tb.base_G, tb.hf, w.head, base_tg_e, tb.base_lse, BT, D, V));
  }

  // talk NLL: LM head, mixing head, then the two hidden states it read
  if (d.talk > 0) {
    dloss.assign(d.talk, T(0));
    for (int k = 0; k < A; k++) {
      const T f = count_talk[k] > 0
                      ? (T)(loss_scale * o.base_loss_beta * (1 - o.original_loss_weight) / ((double)A * count_talk[k]))
                      : T(0);
      for (int64_t n = d.talk_off[k]; n < d.talk_off[k + 1]; n++) dloss[n] = talk_tg[n] != kIgnoreIndex ? f : T(0);
    }
    QS_RETURN_IF_ERROR(be::upload(ex, tb.dloss, dloss.data(), sizeof(T) * dloss.size()));
    QS_RETURN_IF_ERROR(be::zero(ex, tb.dhm, sizeof(T) * (size_t)d.talk * D));
    QS_RETURN_IF_ERROR(head_backward(ex, staged, tb.dhm, g.head, tb.dloss, tb.talk_G, tb.hm, w.head, talk_tg_e,
                                     tb.talk_lse, d.talk, D, V));
    const cpu::MixingGrads<T> mg{qg.w1, qg.b1, qg.w2, qg.b2, qg.w3};
    QS_RETURN_IF_ERROR(be::mixing_backward<T>(ex, tb.dHb, tb.dHc, mg, tb.dhm, tb.t1, tb.dwv, ma, tb.Hb, tb.Hc, mw,
                                              (int)d.talk, D, o.mixing_weights_base, o.mixing_sigmoid));
    cpu::ProfScope ps(cpu::kProfElementwise);
    // base rows repeat (i + k for several k); chain rows repeat when nAhead = 1
    QS_RETURN_IF_ERROR(be::scatter_add_rows<T>(ex, staged, dhf, tb.dHb, talk_brow, D, T(1)));
    QS_RETURN_IF_ERROR(be::scatter_add_rows<T>(ex, staged, dhf, tb.dHc, talk_crow, D, T(1)));
  }

  // policy: -weight · log π at the scored rows (rewards detached: weights are constants)
  if (np > 0 && pol_den > 0 && o.policy_loss_beta != 0) {
    const double f = loss_scale * o.policy_loss_beta / pol_den;
    dloss.assign(np, T(0));
    for (int64_t n = 0; n < np; n++)
      dloss[n] = pol_i[n] < d.TA ? (T)(f * weight[(int64_t)pol_r[n] * T_ + pol_i[n]]) : T(0);
    QS_RETURN_IF_ERROR(be::upload(ex, tb.dloss, dloss.data(), sizeof(T) * dloss.size()));
    QS_RETURN_IF_ERROR(be::zero(ex, tb.dhp, sizeof(T) * (size_t)np * D));
    T* dWc = g.head;
    if (!markers_last) {  // the compact head's gradient, added back into the head's rows below
      void* mem;
      QS_RETURN_IF_ERROR(staged.scratch(sizeof(T) * (size_t)Vc * D, &mem));
      dWc = static_cast<T*>(mem);
      QS_RETURN_IF_ERROR(be::zero(ex, dWc, sizeof(T) * (size_t)Vc * D));
    }
    QS_RETURN_IF_ERROR(
        head_backward(ex, staged, tb.dhp, dWc, tb.dloss, tb.pol_G, tb.hp, Wc, pol_tg_e, tb.pol_lse, np, D, Vc));
    cpu::ProfScope ps(cpu::kProfElementwise);
    if (!markers_last) QS_RETURN_IF_ERROR(be::scatter_add_rows<T>(ex, staged, g.head, dWc, head_rows, D, T(1)));
    // h/τ: d(h) = d(h/τ) / τ; each chain row appears once
    QS_RETURN_IF_ERROR(be::scatter_add_rows<T>(ex, staged, dhf, tb.dhp, pol_row, D, inv_tau));
  }

  // final norm, then the layers in reverse
  QS_RETURN_IF_ERROR(be::zero(ex, s.dres, sizeof(T) * (size_t)rows * D));
  QS_RETURN_IF_ERROR(be::final_norm_backward(ex, c, w, g, s.dres, dhf, x_last, tb.lnf_mean, tb.lnf_rstd, (int)rows));
  void *att_scratch, *chain_scratch;
  QS_RETURN_IF_ERROR(staged.scratch(be::attention_scratch_bytes(ex, c, base_pat), &att_scratch));
  QS_RETURN_IF_ERROR(staged.scratch(S > 0 ? be::thought_attention_scratch_bytes(ex, chain_sh) : 0, &chain_scratch));
  for (int l = d.L - 1; l >= 0; l--) {
    // recomputation: the layer's activations again, deterministic kernels so exactly the
    // forward's (its output is rewritten with the same values)
    if (recompute) QS_RETURN_IF_ERROR(layer_forward(l));
    const cpu::LayerActs<T>& a = recompute ? tb.work : tb.layers[l];
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    QS_RETURN_IF_ERROR(be::block_out_backward(ex, c, w.layers[l], g.layers[l], a, s, (int)rows));
    // overwrites the base rows' dq, dk, dv
    QS_RETURN_IF_ERROR(be::attention_backward_call(ex, c, a, s, base_pat, att_scratch));
    if (S > 0) {
      const int64_t nq = d.chain * d.Q, nk = d.chain * d.KV;
      QS_RETURN_IF_ERROR(be::zero(ex, s.dq + BT * d.Q, sizeof(T) * (size_t)nq));
      QS_RETURN_IF_ERROR(be::zero(ex, s.dk + BT * d.KV, sizeof(T) * (size_t)nk));
      QS_RETURN_IF_ERROR(be::zero(ex, s.dv + BT * d.KV, sizeof(T) * (size_t)nk));
      QS_RETURN_IF_ERROR(be::thought_attention_backward<T>(
          ex, s.dq + BT * d.Q, s.dk, s.dv, s.dk + BT * d.KV, s.dv + BT * d.KV, s.datt + BT * d.Q, a.q + BT * d.Q, a.k,
          a.v, a.k + BT * d.KV, a.v + BT * d.KV, a.att + BT * d.Q, a.lse + BT * d.H, valid_e, chain_sh, scale,
          chain_scratch));
    }
    QS_RETURN_IF_ERROR(be::block_qkv_backward(ex, c, w.layers[l], g.layers[l], a, x, pos_e, s, (int)rows));
  }

  // embeddings: positions for every row; the table for the token rows; start/end (× scale)
  {
    cpu::ProfScope ps(cpu::kProfEmbed);
    const T* dx = s.dres;
    if (gpt2) QS_RETURN_IF_ERROR(be::position_embedding_backward<T>(ex, g.wpe, dx, pos_e, (int)rows, D, c.max_seq_len));
    QS_RETURN_IF_ERROR(be::embedding_backward<T>(ex, g.wte, dx, tok_e, (int)BT, D, V));
    for (int r = 0; r < R && S > 0; r++) {
      // token rows of row r: steps 2..N-2 (thought) and N..S (true tokens), each a contiguous block
      if (N - 2 >= 2) {
        const int64_t n0 = d.chain_row(r, 2, 0), len = (int64_t)(N - 3) * T_;
        QS_RETURN_IF_ERROR(be::embedding_backward<T>(ex, g.wte, dx + n0 * D, tok_e + n0, (int)len, D, V));
      }
      if (S >= N) {
        const int64_t n0 = d.chain_row(r, N, 0), len = (int64_t)(S - N + 1) * T_;
        QS_RETURN_IF_ERROR(be::embedding_backward<T>(ex, g.wte, dx + n0 * D, tok_e + n0, (int)len, D, V));
      }
    }
    if (S > 0) {
      QS_RETURN_IF_ERROR(be::sum_rows<T>(ex, qg.start, dx, start_rows_e, d.RT, D, (T)o.embedding_scale));
      QS_RETURN_IF_ERROR(be::sum_rows<T>(ex, qg.end, dx, end_rows_e, d.RT, D, (T)o.embedding_scale));
    }
  }
  return Status::Ok();
}

#define QS_INST(T)                                                                                                  \
  template Status QuietStar::Impl::forward_backward<T>(const ModelConfig&, const QuietStarOptions&, ParamSet&,      \
                                                       const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, \
                                                       double, QuietStarMetrics*);
QS_INST(float)
QS_INST(double)

}  // namespace qs
