// test_quietstar_inference.cpp: oracle §9.15 of the specification (inference equivalence).
//
// Single-position KV-cached inference (spec §5) — the plain model (marker embeddings installed
// in a copy, as test_quietstar.cpp does) decodes the prompt x_0..x_n, then the thought branch
// [<start>, t_1..t_{N-3}, <end>] one token at a time at positions n+1..n+N-1 on top of the
// cached prompt, and mixes the end token's logits with the base logits at n:
//   logits = (1 - w)·ℓ_base + w·ℓ_end,   w = mixing head([h_base ; h_end])
// (logit-space mixing = hidden-space mixing for the bias-free head, spec §2.8; the hidden
// states for w come from a plain full forward of the literal sequence) — must give the same
// next-token distribution as the full-sequence eval forward (QuietStar with nPasses 1,
// nAheadTalk 1, spec §2.4/§4.1, forward_backward without backward, the same thoughts injected)
// at every valid position n, in particular the last one, within 1e-10 in float64. The eval
// forward's mixed prediction is rebuilt from its debug tensors base_hidden / chain_hidden
// (end step) with the mixing head and the LM head; where the step computed it (n < T-1) its
// mix_weight and talk_nll are checked against the sequential side as well.
// Tiny untied Llama (RoPE, GQA 4:2) and tied GPT-2 (learned positions), a random nonzero mixing
// head, a batch whose first document is right-padded.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/quietstar_heads.h"
#include "harness.h"
#include "quietstar_fixtures.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
using namespace qs_test;

static std::vector<double> view_of(ParamSet& p, const std::string& name) {
  const ParamEntry* e = p.layout().find(name);
  const double* x = p.params().data<double>() + e->offset;
  return std::vector<double>(x, x + e->numel);
}

static std::vector<double> softmax(const std::vector<double>& z, int n) {
  const double mx = *std::max_element(z.begin(), z.begin() + n);
  std::vector<double> p(n);
  double s = 0;
  for (int v = 0; v < n; v++) s += (p[v] = std::exp(z[v] - mx));
  for (double& x : p) x /= s;
  return p;
}

static double max_diff(const std::vector<double>& a, const std::vector<double>& b, int n) {
  double m = 0;
  for (int i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// One configuration: B = 2 documents of T tokens (document 0 right-padded by `pad`), thoughts of
// N - 3 tokens injected; every valid position n of every document is the last position of the
// prefix x_0..x_n (the eval forward is causal), n = T - 1 - pad_d among them.
static void check_inference(const ModelConfig& c, int N, int T, int pad, uint64_t seed, const char* label) {
  EngineOptions eo;
  eo.device = "cpu";
  std::unique_ptr<Engine> e;
  Status st = Engine::create(eo, &e);
  QS_EXPECT(st.ok(), "engine: %s", st.to_string().c_str());
  if (!st.ok()) return;
  QuietStarOptions o;
  o.n_ahead = N, o.n_ahead_talk = 1, o.n_passes = 1, o.start_id = kStart, o.end_id = kEnd;
  const int B = 2, D = c.d_model, V = c.vocab_size, M = o.thought_tokens(), S = o.chain_steps();

  // The Quiet-STaR model (model views + extras in one ParamSet) and a plain copy.
  ParamLayout layout, plain_layout;
  std::unique_ptr<ParamSet> tmp;
  quietstar_model_layout(c, &layout);
  ParamLayout::create(model_param_specs(c), &plain_layout);
  ParamSet::create(*e, DType::F64, layout, false, &tmp);
  std::shared_ptr<ParamSet> ps = std::move(tmp);
  ParamSet::create(*e, DType::F64, plain_layout, false, &tmp);
  std::shared_ptr<ParamSet> ps2 = std::move(tmp);
  std::unique_ptr<Model> m, m2;
  std::unique_ptr<QuietStar> q;
  st = Model::create(*e, c, ps, &m);
  if (st.ok()) st = QuietStar::create(*e, m.get(), o, &q);
  if (st.ok()) st = Model::create(*e, c, ps2, &m2);
  QS_EXPECT(st.ok(), "create: %s", st.to_string().c_str());
  if (!st.ok()) return;

  // Random weights; a mixing head whose last layer is N(0, 0.3) so that w is of order 1, not 0.
  Rng rng(seed);
  for (const ParamEntry& en : ps->layout().entries()) {
    double* x = ps->params().data<double>() + en.offset;
    const bool bias = en.name.size() > 5 && en.name.compare(en.name.size() - 5, 5, ".bias") == 0;
    for (int64_t i = 0; i < en.numel; i++) {
      double v;
      if (en.name == "start_embedding" || en.name == "end_embedding") v = i < D ? rng.normal() / o.embedding_scale : 0;
      else if (en.name == "talk_head.0.4.weight") v = 0.3 * rng.normal();
      else if (en.name.compare(0, 9, "talk_head") == 0) v = 0.1 * rng.normal();
      else if (en.shape.size() >= 2) v = 0.15 * rng.normal();
      else v = bias ? 0.1 * rng.normal() : 1.0 + 0.1 * rng.normal();
      x[i] = v;
    }
  }
  // The plain copy: same views, marker rows of the embedding = scale · start/end_embedding[0].
  for (const ParamEntry& en : ps2->layout().entries())
    std::memcpy(ps2->params().data<double>() + en.offset, ps->params().data<double>() + ps->layout().find(en.name)->offset,
                sizeof(double) * en.numel);
  const std::string wte = c.family == ModelFamily::GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight";
  {
    double* emb = ps2->params().data<double>() + ps2->layout().find(wte)->offset;
    const std::vector<double> se = view_of(*ps, "start_embedding"), ee = view_of(*ps, "end_embedding");
    for (int j = 0; j < D; j++) {
      emb[(size_t)kStart * D + j] = o.embedding_scale * se[j];
      emb[(size_t)kEnd * D + j] = o.embedding_scale * ee[j];
    }
  }
  // The Quiet-STaR model's LM head (for a tied model its marker rows differ from the plain
  // copy's, see below). Distributions are compared over all V ids and over the text ids < 50
  // (markers masked, spec §5 step 4).
  const std::vector<double> W = view_of(*ps, c.tie_embeddings ? wte : "lm_head.weight");
  const std::vector<double> w1 = view_of(*ps, "talk_head.0.0.weight"), b1 = view_of(*ps, "talk_head.0.0.bias");
  const std::vector<double> w2 = view_of(*ps, "talk_head.0.2.weight"), b2 = view_of(*ps, "talk_head.0.2.bias");
  const std::vector<double> w3 = view_of(*ps, "talk_head.0.4.weight");
  const cpu::MixingWeights<double> mw{w1.data(), b1.data(), w2.data(), b2.data(), w3.data()};
  auto mix_w = [&](const double* hb, const double* hc) {  // the step's own mixing head kernel
    std::vector<double> z1(D), a1(D), z2(D), a2(D), hm(D);
    double wraw = 0, w = 0;
    const cpu::MixingActs<double> acts{z1.data(), a1.data(), z2.data(), a2.data(), &wraw, &w, hm.data()};
    e->run_sync([&] {
      cpu::mixing_forward<double>(acts, hb, hc, mw, 1, D, o.mixing_weights_base, o.mixing_sigmoid);
      return Status();
    });
    return w;
  };
  auto lm_head = [&](const double* h) {
    std::vector<double> z(V);
    for (int v = 0; v < V; v++) {
      double s = 0;
      for (int j = 0; j < D; j++) s += W[(size_t)v * D + j] * h[j];
      z[v] = s;
    }
    return z;
  };

  // The batch and the injected thoughts.
  PaddedBatch batch = padded_batch(rng, B, T, pad);
  std::vector<int32_t>& ids = batch.ids;
  std::vector<int32_t>& labels = batch.labels;
  std::vector<uint8_t>& valid = batch.valid;
  std::vector<int>& len = batch.len;
  std::vector<int32_t> th((size_t)B * T * M);
  for (auto& x : th) x = rng.below(50);

  // The full-sequence eval forward.
  QuietStarMetrics mt;
  Tensor hb_t, hc_t, w_t, nll_t;
  st = e->run_sync([&]() -> Status {
    QS_RETURN_IF_ERROR(q->forward_backward(i32(*e, {B, T}, ids), u8(*e, {B, T}, valid), i32(*e, {B, T}, labels),
                                           i32(*e, {B, T, M}, th), false, 1.0, &mt));
    QS_RETURN_IF_ERROR(q->debug_tensor("base_hidden", &hb_t));
    QS_RETURN_IF_ERROR(q->debug_tensor("chain_hidden", &hc_t));
    QS_RETURN_IF_ERROR(q->debug_tensor("mix_weight", &w_t));
    return q->debug_tensor("talk_nll", &nll_t);
  });
  QS_EXPECT(st.ok(), "eval forward: %s", st.to_string().c_str());
  if (!st.ok()) return;
  const std::vector<double> hbase = doubles(hb_t), hchain = doubles(hc_t), wdbg = doubles(w_t), nlldbg = doubles(nll_t);

  double e_prob = 0, e_prob_text = 0, e_w = 0, e_wdbg = 0, e_nll = 0, e_logit = 0, sum_absw = 0;
  int positions = 0;
  for (int d = 0; d < B; d++)
    for (int n = 0; n < len[d]; n++) {
      // Parallel side: the eval forward's talk-0 prediction at n.
      const double* hb = &hbase[((size_t)d * T + n) * D];
      const double* hc = &hchain[(((size_t)d * S + (N - 2)) * T + n) * D];  // chain step s = N-1: <end>
      const double w_par = mix_w(hb, hc);
      std::vector<double> hm(D);
      for (int j = 0; j < D; j++) hm[j] = (1 - w_par) * hb[j] + w_par * hc[j];
      const std::vector<double> z_par = lm_head(hm.data());

      // Sequential side: cached decoding of the prompt, then the branch one token at a time.
      std::vector<int32_t> prompt(ids.begin() + (size_t)d * T, ids.begin() + (size_t)d * T + n + 1), pos(n + 1);
      std::vector<int32_t> branch(N - 1);
      branch[0] = kStart;
      for (int k = 1; k <= M; k++) branch[k] = th[((size_t)d * T + n) * M + k - 1];
      branch[N - 2] = kEnd;
      for (int i = 0; i <= n; i++) pos[i] = i;
      std::vector<double> l_base, l_end, h_seq;
      st = e->run_sync([&]() -> Status {
        Tensor out, h;
        QS_RETURN_IF_ERROR(m2->reset_cache(1, n + N));
        QS_RETURN_IF_ERROR(m2->decode(i32(*e, {1, n + 1}, prompt), i32(*e, {1, n + 1}, pos), Tensor(), &out));
        l_base = doubles(out);
        for (int k = 0; k < N - 1; k++) {
          QS_RETURN_IF_ERROR(m2->decode(i32(*e, {1, 1}, {branch[k]}), i32(*e, {1, 1}, {n + 1 + k}), Tensor(), &out));
        }
        l_end = doubles(out);
        if (m2->cache_length() != n + N) return QS_ERROR(INTERNAL, "cache length %d, want %d", m2->cache_length(), n + N);
        // Hidden states for the mixing weight: a plain full forward of the literal sequence.
        std::vector<int32_t> lit = prompt, zeros(n + N, 0);
        lit.insert(lit.end(), branch.begin(), branch.end());
        double loss;
        int64_t cnt;
        QS_RETURN_IF_ERROR(m2->forward(i32(*e, {1, n + N}, lit), i32(*e, {1, n + N}, zeros), &loss, &cnt));
        QS_RETURN_IF_ERROR(m2->last_hidden(&h));
        h_seq = doubles(h);
        return Status();
      });
      QS_EXPECT(st.ok(), "%s: sequential d=%d n=%d: %s", label, d, n, st.to_string().c_str());
      if (!st.ok()) return;
      const double* hb_s = &h_seq[(size_t)n * D];
      const double* he_s = &h_seq[(size_t)(n + N - 1) * D];
      const double w_seq = mix_w(hb_s, he_s);
      std::vector<double> z_seq(V);
      for (int v = 0; v < V; v++) z_seq[v] = (1 - w_seq) * l_base[v] + w_seq * l_end[v];
      // The decode path's logits are the full forward's (text ids; all ids when untied).
      const int nv = c.tie_embeddings ? kStart : V;
      const std::vector<double> zb_s = lm_head(hb_s), ze_s = lm_head(he_s);
      e_logit = std::max({e_logit, max_diff(zb_s, l_base, nv), max_diff(ze_s, l_end, nv)});
      // Tied: the plain copy's marker rows are its marker embeddings, not the Quiet-STaR model's
      // head rows; take those two logits from the Quiet-STaR head on the sequential hidden states.
      for (int v = nv; v < V; v++) z_seq[v] = (1 - w_seq) * zb_s[v] + w_seq * ze_s[v];

      e_w = std::max(e_w, std::fabs(w_seq - w_par));
      sum_absw += std::fabs(w_par);
      const std::vector<double> p_all = softmax(z_seq, V);
      e_prob = std::max(e_prob, max_diff(p_all, softmax(z_par, V), V));
      const std::vector<double> p_seq = softmax(z_seq, kStart);  // markers masked (spec §5 step 4)
      e_prob_text = std::max(e_prob_text, max_diff(p_seq, softmax(z_par, kStart), kStart));
      if (n < T - 1) {  // the step itself mixed here: its w and its talk NLL of x_{n+1}
        e_wdbg = std::max(e_wdbg, std::fabs(wdbg[(size_t)d * T + n] - w_seq));
        const int t = labels[(size_t)d * T + n + 1];
        if (t >= 0) e_nll = std::max(e_nll, std::fabs(nlldbg[(size_t)d * T + n] + std::log(p_all[t])));
      }
      positions++;
    }
  fprintf(stdout,
          "    %-14s positions=%d  |dp| all ids %.2e  text ids %.2e  |dw| %.2e  |dw step| %.2e  |dnll step| %.2e  "
          "|dlogit decode| %.2e  mean|w| %.2f\n",
          label, positions, e_prob, e_prob_text, e_w, e_wdbg, e_nll, e_logit, sum_absw / positions);
  const double tol = 1e-10;
  QS_EXPECT(e_prob <= tol, "%s: next-token distribution (all ids) differs by %.3e", label, e_prob);
  QS_EXPECT(e_prob_text <= tol, "%s: next-token distribution (text ids) differs by %.3e", label, e_prob_text);
  QS_EXPECT(e_w <= tol, "%s: mixing weight differs by %.3e", label, e_w);
  QS_EXPECT(e_wdbg <= tol, "%s: the step's mix_weight differs by %.3e", label, e_wdbg);
  QS_EXPECT(e_nll <= tol, "%s: the step's talk_nll differs by %.3e", label, e_nll);
  QS_EXPECT(e_logit <= tol, "%s: decode logits differ from the full forward by %.3e", label, e_logit);
  // A nonzero mixing weight: the thought actually changes the prediction.
  QS_EXPECT(sum_absw / positions > 0.05, "%s: mean |w| %.3e: the check would not see the thought", label, sum_absw / positions);
}

QS_TEST(cached_inference_equals_eval_forward_llama) {
  check_inference(qs_llama(), 6, 9, 3, 11, "llama N=6");
  check_inference(qs_llama(), 4, 7, 2, 12, "llama N=4");
}

QS_TEST(cached_inference_equals_eval_forward_gpt2_tied) {
  check_inference(qs_gpt2(), 5, 8, 3, 21, "gpt2 N=5");
}

QS_TEST(cached_inference_equals_eval_forward_no_thought_tokens) {
  check_inference(qs_llama(), 3, 6, 1, 31, "llama N=3");  // [<start>, <end>] only
}

QS_TEST_MAIN()
