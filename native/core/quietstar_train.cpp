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

#include "core/quietstar_impl.h"
#include "cpu/embedding.h"
#include "cpu/lmhead_xent.h"
#include "cpu/quietstar_heads.h"
#include "cpu/thought_attention.h"

namespace qs {

namespace {

template <typename T>
void carve_train2(Carver& cv, const ModelConfig& c, const QsDims& d, TrainBuffers2<T>& t, int64_t pol_max, bool keep_base,
                  bool keep_talk, bool keep_pol) {
  const int64_t n = d.rows, D = d.D, Q = d.Q, KV = d.KV, F = d.F, V = d.V, nt = d.talk;
  const bool llama = c.family != ModelFamily::GPT2;
  t.x0 = cv.take<T>(n * D);
  t.layers.resize(d.L);
  for (auto& a : t.layers) qs_carve_layer(cv, c, n, a, true, true);
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

// Fused LM head + cross-entropy, keeping the unit gradient G when given.
template <typename T>
void head_forward(T* loss, float* lse, T* G, const T* h, const T* W, const int32_t* tg, int64_t n, int D, int V) {
  if (n <= 0) return;
  cpu::ProfScope ps(cpu::kProfHead);
  if (G) cpu::lmhead_xent_forward_keep<T>(loss, lse, G, h, W, tg, (int)n, D, V, kIgnoreIndex, 0);
  else cpu::lmhead_xent_forward<T>(loss, lse, h, W, tg, (int)n, D, V, kIgnoreIndex, 0);
}

// dh +=, dW += from per-row dloss. With G: its counted rows are scaled by their dloss (G is
// spent), then one kept backward; otherwise the recomputing backward.
template <typename T>
void head_backward(T* dh, T* dW, const T* dloss, T* G, const T* h, const T* W, const int32_t* tg, const float* lse,
                   int64_t n, int D, int V) {
  if (n <= 0) return;
  cpu::ProfScope ps(cpu::kProfHead);
  if (G) {
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
  } else {
    cpu::lmhead_xent_backward<T>(dh, dW, dloss, h, W, tg, lse, (int)n, D, V, kIgnoreIndex, 0);
  }
}

// dst[row(n)] += f · src[n] (n, D) over column chunks (each element summed in n order: rows may repeat)
template <typename T, typename RowOf>
void scatter_rows(T* dst, const T* src, int64_t n, int D, T f, RowOf row) {
  constexpr int kCols = 64;
  const int nch = (D + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (n * D > (1 << 15) && nch > 1)
  for (int ch = 0; ch < nch; ch++) {
    const int c0 = ch * kCols, c1 = std::min(D, c0 + kCols);
    for (int64_t k = 0; k < n; k++) {
      T* o = dst + row(k) * D;
      const T* s = src + k * D;
      for (int j = c0; j < c1; j++) o[j] += f * s[j];
    }
  }
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

  // ---- buffers (the policy rows are known only after the rewards: sized for the most)
  const int64_t pol_max = (int64_t)R * M * (full_policy ? T_ : d.TA);
  const int64_t sz = sizeof(T);
  keep_base = BT * V * sz <= logits_budget;
  keep_talk = (keep_base ? BT : 0) * V * sz + d.talk * V * sz <= logits_budget;
  keep_policy = ((keep_base ? BT : 0) + (keep_talk ? d.talk : 0) + pol_max) * V * sz <= logits_budget;
  TrainBuffers2<T>& tb = train<T>();
  Carver measure;
  carve_train2(measure, c, d, tb, pol_max, keep_base, keep_talk, keep_policy);
  QS_RETURN_IF_ERROR(ensure(train_mem, measure.used));
  Carver cv{static_cast<char*>(train_mem.raw())};
  carve_train2(cv, c, d, tb, pol_max, keep_base, keep_talk, keep_policy);
  policy_max = pol_max;

  T* flat = p.params().data<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), flat);
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), flat);
  const T scale = (T)(1.0 / std::sqrt((double)d.hd));
  const bool gpt2 = c.family == ModelFamily::GPT2;
  const uint8_t* vp = valid.data();

  // ---- inputs: token rows from the table, marker rows from start/end_embedding (× scale)
  {
    cpu::ProfScope ps(cpu::kProfEmbed);
    cpu::embedding_forward<T>(tb.x0, tok.data(), w.wte, (int)rows, D);
    for (int r = 0; r < R && S > 0; r++)
      for (int i = 0; i < T_; i++) {
        T* xs = tb.x0 + d.chain_row(r, 1, i) * D;
        T* xe = tb.x0 + d.chain_row(r, N - 1, i) * D;
        for (int j = 0; j < D; j++) {
          xs[j] = (T)(o.embedding_scale * qw.start[j]);
          xe[j] = (T)(o.embedding_scale * qw.end[j]);
        }
      }
    if (gpt2) cpu::position_embedding_forward<T>(tb.x0, pos.data(), w.wpe, (int)rows, D);
  }

  // ---- the layers
  const cpu::AttnPattern base_pat{B, T_, T_, pos.data(), pos.data(), vp, c.sliding_window};
  const cpu::ThoughtAttentionShape chain_sh{B, P, T_, S, 1, S, d.H, d.Hkv, d.hd, c.sliding_window};
  for (int l = 0; l < d.L; l++) {
    cpu::LayerActs<T>& a = tb.layers[l];
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    cpu::block_qkv_forward(c, w.layers[l], a, x, pos.data(), (int)rows);
    cpu::attention_forward_call(c, a, a.k, a.v, base_pat);  // the base rows come first
    if (S > 0) {
      cpu::ProfScope ps(cpu::kProfAttention);
      cpu::thought_attention_forward<T>(a.att + BT * d.Q, a.lse + BT * d.H, a.q + BT * d.Q, a.k, a.v, a.k + BT * d.KV,
                                        a.v + BT * d.KV, vp, chain_sh, scale);
    }
    cpu::block_out_forward(c, w.layers[l], a, x, (int)rows);
  }
  const T* x_last = tb.layers[d.L - 1].out;
  cpu::final_norm_forward(c, w, tb.hf, tb.lnf_mean, tb.lnf_rstd, x_last, (int)rows);

  // ---- base head
  head_forward(tb.base_loss, tb.base_lse, tb.base_G, tb.hf, w.head, base_tg.data(), BT, D, V);
  double sum_base = 0;
  for (int64_t n = 0; n < BT; n++) sum_base += (double)tb.base_loss[n];

  // ---- talk: gather (h_base(i + k), h_chain), mixing head, LM head on the mixed state
  const cpu::MixingWeights<T> mw{qw.w1, qw.b1, qw.w2, qw.b2, qw.w3};
  const cpu::MixingActs<T> ma{tb.z1, tb.a1, tb.z2, tb.a2, tb.wraw, tb.w, tb.hm};
  auto talk_base_row = [&](int k, int r, int i) { return (int64_t)(r / P) * T_ + i + k; };
  for (int k = 0; k < A; k++) {
    const int len = T_ - 1 - k;
    if (len <= 0) continue;
#pragma omp parallel for schedule(static) if ((int64_t)R * len * D > (1 << 15))
    for (int r = 0; r < R; r++)
      for (int i = 0; i < len; i++) {
        const int64_t n = d.talk_off[k] + (int64_t)r * len + i;
        std::memcpy(tb.Hb + n * D, tb.hf + talk_base_row(k, r, i) * D, sizeof(T) * (size_t)D);
        std::memcpy(tb.Hc + n * D, tb.hf + d.talk_chain_row(r, k, i) * D, sizeof(T) * (size_t)D);
      }
  }
  {
    cpu::ProfScope ps(cpu::kProfMatmul);
    cpu::mixing_forward<T>(ma, tb.Hb, tb.Hc, mw, (int)d.talk, D, o.mixing_weights_base, o.mixing_sigmoid);
  }
  head_forward(tb.talk_loss, tb.talk_lse, tb.talk_G, tb.hm, w.head, talk_tg.data(), d.talk, D, V);
  std::vector<double> sum_talk(A, 0.0);
  for (int k = 0; k < A; k++)
    for (int64_t n = d.talk_off[k]; n < d.talk_off[k + 1]; n++) sum_talk[k] += (double)tb.talk_loss[n];

  // ---- rewards (detached) and the policy weights
  std::vector<double> kept_weight;
  if (frozen) kept_weight = weight;
  reward.assign(d.RT, 0.0);
  weight.assign(d.RT, 0.0);
  cpu::quietstar_rewards<T>(reward.data(), weight.data(), tb.base_loss, tb.talk_loss, d.talk_off.data(), B, P, T_, A,
                            o.trice_baseline, o.remove_negative_rewards);
  if (frozen) weight = kept_weight;

  // ---- policy: the scored sampled tokens, log_softmax(z/τ) over the vocabulary without markers
  const int lo = std::min(o.start_id, o.end_id), hi = std::max(o.start_id, o.end_id);
  const bool markers_last = lo == V - 2 && hi == V - 1;
  const int Vc = V - 2;
  std::vector<T> Wc_copy;
  if (!markers_last && M > 0) {
    Wc_copy.resize((size_t)Vc * D);
    for (int v = 0, u = 0; v < V; v++)
      if (v != lo && v != hi) std::memcpy(Wc_copy.data() + (size_t)(u++) * D, w.head + (int64_t)v * D, sizeof(T) * D);
  }
  const T* Wc = markers_last ? w.head : Wc_copy.data();
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
#pragma omp parallel for schedule(static) if (np * D > (1 << 15))
  for (int64_t n = 0; n < np; n++) {
    const T* src = tb.hf + d.chain_row(pol_r[n], pol_m[n], pol_i[n]) * D;
    T* dst = tb.hp + n * D;
    for (int j = 0; j < D; j++) dst[j] = src[j] * inv_tau;
  }
  head_forward(tb.pol_loss, tb.pol_lse, tb.pol_G, tb.hp, Wc, pol_tg.data(), np, D, Vc);
  pol_logp.assign((size_t)R * M * T_, 0.0);
  double pol_sum = 0;
  for (int64_t n = 0; n < np; n++) {
    pol_logp[((int64_t)pol_r[n] * M + pol_m[n] - 1) * T_ + pol_i[n]] = -(double)tb.pol_loss[n];
    if (pol_i[n] < d.TA) pol_sum += weight[(int64_t)pol_r[n] * T_ + pol_i[n]] * (double)tb.pol_loss[n];
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
      const double x = (double)tb.w[k];
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
  std::memset(dhf, 0, sizeof(T) * (size_t)rows * D);

  // base NLL
  if (count_base > 0) {
    const T f = (T)(loss_scale * o.base_loss_beta * o.original_loss_weight / (double)count_base);
    for (int64_t n = 0; n < BT; n++) tb.dloss[n] = base_tg[n] != kIgnoreIndex ? f : T(0);
    head_backward(dhf, g.head, tb.dloss, tb.base_G, tb.hf, w.head, base_tg.data(), tb.base_lse, BT, D, V);
  }

  // talk NLL: LM head, mixing head, then the two hidden states it read
  if (d.talk > 0) {
    for (int k = 0; k < A; k++) {
      const T f = count_talk[k] > 0
                      ? (T)(loss_scale * o.base_loss_beta * (1 - o.original_loss_weight) / ((double)A * count_talk[k]))
                      : T(0);
      for (int64_t n = d.talk_off[k]; n < d.talk_off[k + 1]; n++) tb.dloss[n] = talk_tg[n] != kIgnoreIndex ? f : T(0);
    }
    std::memset(tb.dhm, 0, sizeof(T) * (size_t)d.talk * D);
    head_backward(tb.dhm, g.head, tb.dloss, tb.talk_G, tb.hm, w.head, talk_tg.data(), tb.talk_lse, d.talk, D, V);
    const cpu::MixingGrads<T> mg{qg.w1, qg.b1, qg.w2, qg.b2, qg.w3};
    {
      cpu::ProfScope ps(cpu::kProfMatmul);
      cpu::mixing_backward<T>(tb.dHb, tb.dHc, mg, tb.dhm, tb.t1, tb.dwv, ma, tb.Hb, tb.Hc, mw, (int)d.talk, D,
                              o.mixing_weights_base, o.mixing_sigmoid);
    }
    // row of talk row n: (k, r, i) from the block offsets
    std::vector<int64_t> brow(d.talk), crow(d.talk);
    for (int k = 0; k < A; k++) {
      const int len = T_ - 1 - k;
      for (int r = 0; r < R && len > 0; r++)
        for (int i = 0; i < len; i++) {
          const int64_t n = d.talk_off[k] + (int64_t)r * len + i;
          brow[n] = talk_base_row(k, r, i);
          crow[n] = d.talk_chain_row(r, k, i);
        }
    }
    cpu::ProfScope ps(cpu::kProfElementwise);
    scatter_rows<T>(dhf, tb.dHb, d.talk, D, T(1), [&](int64_t n) { return brow[n]; });
    scatter_rows<T>(dhf, tb.dHc, d.talk, D, T(1), [&](int64_t n) { return crow[n]; });
  }

  // policy: -weight · log π at the scored rows (rewards detached: weights are constants)
  if (np > 0 && pol_den > 0 && o.policy_loss_beta != 0) {
    const double f = loss_scale * o.policy_loss_beta / pol_den;
    for (int64_t n = 0; n < np; n++)
      tb.dloss[n] = pol_i[n] < d.TA ? (T)(f * weight[(int64_t)pol_r[n] * T_ + pol_i[n]]) : T(0);
    std::memset(tb.dhp, 0, sizeof(T) * (size_t)np * D);
    std::vector<T> dWc_copy;
    T* dWc = g.head;
    if (!markers_last) {
      dWc_copy.assign((size_t)Vc * D, T(0));
      dWc = dWc_copy.data();
    }
    head_backward(tb.dhp, dWc, tb.dloss, tb.pol_G, tb.hp, Wc, pol_tg.data(), tb.pol_lse, np, D, Vc);
    if (!markers_last)
      for (int v = 0, u = 0; v < V; v++) {
        if (v == lo || v == hi) continue;
        T* dst = g.head + (int64_t)v * D;
        const T* src = dWc_copy.data() + (size_t)(u++) * D;
        for (int j = 0; j < D; j++) dst[j] += src[j];
      }
    // h/τ: d(h) = d(h/τ) / τ; each chain row appears once
    cpu::ProfScope ps(cpu::kProfElementwise);
    scatter_rows<T>(dhf, tb.dhp, np, D, inv_tau, [&](int64_t n) { return d.chain_row(pol_r[n], pol_m[n], pol_i[n]); });
  }

  // final norm, then the layers in reverse
  std::memset(s.dres, 0, sizeof(T) * (size_t)rows * D);
  cpu::final_norm_backward(c, w, g, s.dres, dhf, x_last, tb.lnf_mean, tb.lnf_rstd, (int)rows);
  for (int l = d.L - 1; l >= 0; l--) {
    const cpu::LayerActs<T>& a = tb.layers[l];
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    cpu::block_out_backward(c, w.layers[l], g.layers[l], a, s, (int)rows);
    cpu::attention_backward_call(c, a, s, base_pat);  // overwrites the base rows' dq, dk, dv
    if (S > 0) {
      const int64_t nq = d.chain * d.Q, nk = d.chain * d.KV;
      std::memset(s.dq + BT * d.Q, 0, sizeof(T) * (size_t)nq);
      std::memset(s.dk + BT * d.KV, 0, sizeof(T) * (size_t)nk);
      std::memset(s.dv + BT * d.KV, 0, sizeof(T) * (size_t)nk);
      cpu::ProfScope ps(cpu::kProfAttention);
      cpu::thought_attention_backward<T>(s.dq + BT * d.Q, s.dk, s.dv, s.dk + BT * d.KV, s.dv + BT * d.KV,
                                         s.datt + BT * d.Q, a.q + BT * d.Q, a.k, a.v, a.k + BT * d.KV, a.v + BT * d.KV,
                                         a.att + BT * d.Q, a.lse + BT * d.H, vp, chain_sh, scale);
    }
    cpu::block_qkv_backward(c, w.layers[l], g.layers[l], a, x, pos.data(), s, (int)rows);
  }

  // embeddings: positions for every row; the table for the token rows; start/end (× scale)
  {
    cpu::ProfScope ps(cpu::kProfEmbed);
    const T* dx = s.dres;
    if (gpt2) cpu::position_embedding_backward<T>(g.wpe, dx, pos.data(), (int)rows, D);
    cpu::embedding_backward<T>(g.wte, dx, tok.data(), (int)BT, D);
    for (int r = 0; r < R && S > 0; r++) {
      // token rows of row r: steps 2..N-2 (thought) and N..S (true tokens), each a contiguous block
      if (N - 2 >= 2) {
        const int64_t n0 = d.chain_row(r, 2, 0), len = (int64_t)(N - 3) * T_;
        cpu::embedding_backward<T>(g.wte, dx + n0 * D, tok.data() + n0, (int)len, D);
      }
      if (S >= N) {
        const int64_t n0 = d.chain_row(r, N, 0), len = (int64_t)(S - N + 1) * T_;
        cpu::embedding_backward<T>(g.wte, dx + n0 * D, tok.data() + n0, (int)len, D);
      }
    }
    if (S > 0) {
      const T es = (T)o.embedding_scale;
      for (int j = 0; j < D; j++) {
        T gs = 0, ge = 0;
        for (int r = 0; r < R; r++)
          for (int i = 0; i < T_; i++) {
            gs += dx[d.chain_row(r, 1, i) * D + j];
            ge += dx[d.chain_row(r, N - 1, i) * D + j];
          }
        qg.start[j] += es * gs;
        qg.end[j] += es * ge;
      }
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
