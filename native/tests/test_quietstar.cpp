// test_quietstar.cpp: the native Quiet-STaR step (native/core/quietstar*.cpp) against the
// oracles of the specification's §9, on tiny random models (2 layers, D 64, GQA 4:2, vocab 50
// + 2 markers; a tied GPT-2 with learned positions as well), in float64 where gradients are
// checked.
//
// The independent reference is SEQUENTIAL: the plain Model run on the literal sequences
//   [x_0 .. x_i, <start>, t_1 .. t_{N-3}, <end>, x_{i+1} .. x_{i+A-1}]
// (a copy of the weights whose embedding rows start_id / end_id hold embedding_scale ·
// start/end_embedding[0], so the plain model feeds the markers as the step does), its hidden
// states at positions i + s, and the losses of spec §2.9 written out below in plain loops
// (seq_eval). Against it:
//   §9.1  parallel = sequential: every chain hidden state and its logits (injected and sampled
//         thoughts; Llama with RoPE and GPT-2 with learned positions)
//   §9.2  the same seed draws the same thoughts (sequential: sample_tokens on the plain
//         model's logits with rows r, positions i, step m)
//   §9.4  two-phase = sequential: the loss, and finite differences of the sequential loss
//         against the step's gradients for every parameter view (NLL and policy terms apart,
//         the policy with its detached weights held fixed; markers last and in the middle)
//   §9.5  mixing identities          §9.6  initial state          §9.7  nAhead = 1 is the base
//   §9.8  reward algebra             §9.9  gradient isolation     §9.10 schedule counts
//   §9.11 marker suppression         §9.12 padding invariance     §9.13 ×100 reparameterisation
//   §9.16 shared base K/V across passes = recomputing it per pass
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cpu/quietstar_heads.h"
#include "cpu/sampling.h"
#include "gradcheck.h"
#include "harness.h"
#include "quietstar_fixtures.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
using namespace qs_test;

// ---------------------------------------------------------------------------------------------
// rig: a Quiet-STaR model (model views + extras in one ParamSet) and a plain copy

static QuietStarOptions qs_opts(int N, int A, int P) {
  QuietStarOptions o;
  o.n_ahead = N, o.n_ahead_talk = A, o.n_passes = P;
  o.start_id = kStart, o.end_id = kEnd;
  o.policy_loss_beta = 1.0;  // O(1) terms in tests; the default 1e6 is checked where it matters
  return o;
}

struct Rig {
  std::unique_ptr<Engine> e;
  ModelConfig c;
  QuietStarOptions o;
  std::shared_ptr<ParamSet> ps;
  std::unique_ptr<Model> m;
  std::unique_ptr<QuietStar> q;
  std::shared_ptr<ParamSet> ps2;  // the plain model's own parameters (sequential runs)
  std::unique_ptr<Model> m2;
};

static std::unique_ptr<Engine> make_engine(int threads = 0) {
  EngineOptions eo;
  eo.device = "cpu";
  eo.threads = threads;
  std::unique_ptr<Engine> e;
  Status st = Engine::create(eo, &e);
  if (!st.ok()) fprintf(stdout, "    engine: %s\n", st.to_string().c_str());
  return e;
}

static bool is_bias(const std::string& n) { return n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0; }

static void set_value(ParamSet& p, int64_t at, double v) {
  if (p.params().dtype() == DType::F64) p.params().data<double>()[at] = v;
  else p.params().data<float>()[at] = (float)v;
}
static double get_value(const ParamSet& p, const Tensor& flat, int64_t at) {
  return flat.dtype() == DType::F64 ? flat.data<double>()[at] : (double)flat.data<float>()[at];
}

// Matrices N(0, 0.15), norm gains 1 + N(0, 0.1), biases N(0, 0.1); start/end row 0 N(0, 1) /
// scale; mixing head N(0, 0.1) with a last layer N(0, 0.3) (w of order 1) unless zero_w3.
static void randomize(Rig& g, uint64_t seed, bool zero_w3 = false) {
  Rng rng(seed);
  ParamSet& p = *g.ps;
  for (const ParamEntry& e : p.layout().entries()) {
    for (int64_t i = 0; i < e.numel; i++) {
      double v;
      if (e.name == "start_embedding" || e.name == "end_embedding") v = i < g.c.d_model ? rng.normal() / g.o.embedding_scale : 0;
      else if (e.name == "talk_head.0.4.weight") v = zero_w3 ? 0 : 0.3 * rng.normal();
      else if (e.name.compare(0, 9, "talk_head") == 0) v = 0.1 * rng.normal();
      else if (e.shape.size() >= 2) v = 0.15 * rng.normal();
      else if (is_bias(e.name)) v = 0.1 * rng.normal();
      else v = 1.0 + 0.1 * rng.normal();
      set_value(p, e.offset + i, (double)(float)v);
    }
  }
}

static Rig make_rig(const ModelConfig& c, const QuietStarOptions& o, DType dt = DType::F64, uint64_t seed = 1,
                    bool zero_w3 = false, int threads = 0) {
  Rig g;
  g.e = make_engine(threads);
  g.c = c, g.o = o;
  ParamLayout layout;
  Status st = quietstar_model_layout(c, &layout);
  QS_EXPECT(st.ok(), "layout: %s", st.to_string().c_str());
  std::unique_ptr<ParamSet> ps;
  st = ParamSet::create(*g.e, dt, layout, true, &ps);
  QS_EXPECT(st.ok(), "params: %s", st.to_string().c_str());
  g.ps = std::move(ps);
  st = Model::create(*g.e, c, g.ps, &g.m);
  QS_EXPECT(st.ok(), "model: %s", st.to_string().c_str());
  st = QuietStar::create(*g.e, g.m.get(), o, &g.q);
  QS_EXPECT(st.ok(), "quietstar: %s", st.to_string().c_str());
  ParamLayout l2;
  ParamLayout::create(model_param_specs(c), &l2);
  ParamSet::create(*g.e, dt, l2, false, &ps);
  g.ps2 = std::move(ps);
  st = Model::create(*g.e, c, g.ps2, &g.m2);
  QS_EXPECT(st.ok(), "plain model: %s", st.to_string().c_str());
  randomize(g, seed, zero_w3);
  return g;
}

static std::vector<double> view_of(const ParamSet& p, const Tensor& flat, const std::string& name) {
  const ParamEntry* e = p.layout().find(name);
  std::vector<double> v(e->numel);
  for (int64_t i = 0; i < e->numel; i++) v[i] = get_value(p, flat, e->offset + i);
  return v;
}

// The plain copy: the model's views, and the marker rows of the embedding = scale · row 0.
static void sync_plain(Rig& g) {
  for (const ParamEntry& e : g.ps2->layout().entries()) {
    const ParamEntry* s = g.ps->layout().find(e.name);
    const size_t sz = g.ps->params().dtype() == DType::F64 ? 8 : 4;
    std::memcpy((char*)g.ps2->params().raw() + e.offset * sz, (char*)g.ps->params().raw() + s->offset * sz, e.numel * sz);
  }
  const std::string wte = g.c.family == ModelFamily::GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight";
  const ParamEntry* w = g.ps2->layout().find(wte);
  const std::vector<double> st = view_of(*g.ps, g.ps->params(), "start_embedding");
  const std::vector<double> en = view_of(*g.ps, g.ps->params(), "end_embedding");
  for (int j = 0; j < g.c.d_model; j++) {
    set_value(*g.ps2, w->offset + (int64_t)g.o.start_id * g.c.d_model + j, g.o.embedding_scale * st[j]);
    set_value(*g.ps2, w->offset + (int64_t)g.o.end_id * g.c.d_model + j, g.o.embedding_scale * en[j]);
  }
}

// A batch: B documents of T tokens (ids in [0, 50): never a marker), right-padded by `pad`
// positions per document (valid 0, labels -100, id 0), and optionally an ignored label inside.
struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> ids, labels;
  std::vector<uint8_t> valid;
};

static Batch make_batch(Rng& rng, int B, int T, int pad = 0, bool hole = false) {
  Batch b;
  b.B = B, b.T = T;
  b.ids.resize((size_t)B * T), b.labels.resize((size_t)B * T), b.valid.resize((size_t)B * T);
  for (int d = 0; d < B; d++)
    for (int i = 0; i < T; i++) {
      const size_t n = (size_t)d * T + i;
      const bool real = i < T - (d == 0 ? pad : 0);  // document 0 is padded
      b.ids[n] = real ? rng.below(50) : 0;
      b.valid[n] = real;
      b.labels[n] = real ? b.ids[n] : -100;
    }
  if (hole && T > 3) b.labels[2] = -100;
  return b;
}

static std::vector<int32_t> random_thoughts(Rng& rng, int R, int T, int M) {
  std::vector<int32_t> t((size_t)R * T * M);
  for (auto& x : t) x = rng.below(50);
  return t;
}

static Status run_fb(Rig& g, const Batch& b, const std::vector<int32_t>& th, bool backward, QuietStarMetrics* mt,
                     double scale = 1.0) {
  const int R = b.B * g.o.n_passes, M = g.o.thought_tokens();
  return g.e->run_sync([&] {
    return g.q->forward_backward(i32(*g.e, {b.B, b.T}, b.ids), u8(*g.e, {b.B, b.T}, b.valid), i32(*g.e, {b.B, b.T}, b.labels),
                                 i32(*g.e, {R, b.T, M}, th), backward, scale, mt);
  });
}

static std::vector<int32_t> run_sample(Rig& g, const Batch& b, uint64_t seed) {
  Tensor out;
  Status st = g.e->run_sync([&] { return g.q->sample_thoughts(i32(*g.e, {b.B, b.T}, b.ids), u8(*g.e, {b.B, b.T}, b.valid), seed, &out); });
  QS_EXPECT(st.ok(), "sample_thoughts: %s", st.to_string().c_str());
  if (!st.ok()) return {};
  return std::vector<int32_t>(out.data<int32_t>(), out.data<int32_t>() + out.numel());
}

static std::vector<double> debug(Rig& g, const char* name, Shape* shape = nullptr) {
  Tensor t;
  Status st = g.e->run_sync([&] { return g.q->debug_tensor(name, &t); });
  QS_EXPECT(st.ok(), "debug_tensor(%s): %s", name, st.to_string().c_str());
  if (!st.ok()) return {};
  if (shape) *shape = t.shape();
  return doubles(t);
}

// ---------------------------------------------------------------------------------------------
// the sequential reference

// Final hidden states (n, L, D) of the plain copy on n sequences of length L.
static std::vector<double> plain_hidden(Rig& g, const std::vector<int32_t>& seqs, int n, int L) {
  std::vector<int32_t> zeros(seqs.size(), 0);
  double loss;
  int64_t cnt;
  Tensor h;
  Status st = g.e->run_sync([&]() -> Status {
    QS_RETURN_IF_ERROR(g.m2->forward(i32(*g.e, {n, L}, seqs), i32(*g.e, {n, L}, zeros), &loss, &cnt));
    return g.m2->last_hidden(&h);
  });
  QS_EXPECT(st.ok(), "plain forward: %s", st.to_string().c_str());
  return st.ok() ? doubles(h) : std::vector<double>();
}

struct SeqHidden {
  int L = 0;
  std::vector<double> base;   // (B, T, D)
  std::vector<double> chain;  // (R, S, T, D): the sequence of (r, i) at position i + s
};

// The literal sequence of (r, i) (length i + 1 + S), padded with 0 to L = T + S.
static std::vector<int32_t> literal_sequence(const Rig& g, const Batch& b, const std::vector<int32_t>& th, int r, int i) {
  const QuietStarOptions& o = g.o;
  const int T = b.T, N = o.n_ahead, A = o.n_ahead_talk, M = o.thought_tokens(), S = o.chain_steps();
  const int d = r / o.n_passes;
  std::vector<int32_t> s(T + S, 0);
  for (int j = 0; j <= i; j++) s[j] = b.ids[(size_t)d * T + j];
  s[i + 1] = o.start_id;
  for (int m = 1; m <= M; m++) s[i + 1 + m] = th[((size_t)r * T + i) * M + m - 1];
  s[i + N - 1] = o.end_id;
  for (int k = 1; k <= A - 1; k++) s[i + N - 1 + k] = b.ids[(size_t)d * T + std::min(i + k, T - 1)];
  return s;
}

static SeqHidden sequential_hidden(Rig& g, const Batch& b, const std::vector<int32_t>& th) {
  sync_plain(g);
  SeqHidden h;
  const int B = b.B, T = b.T, P = g.o.n_passes, R = B * P, D = g.c.d_model;
  const int S = g.o.n_ahead == 1 ? 0 : g.o.chain_steps();
  h.L = T + S;
  h.base = plain_hidden(g, b.ids, B, T);
  if (S == 0) return h;
  std::vector<int32_t> seqs;
  for (int r = 0; r < R; r++)
    for (int i = 0; i < T; i++) {
      std::vector<int32_t> s = literal_sequence(g, b, th, r, i);
      seqs.insert(seqs.end(), s.begin(), s.end());
    }
  std::vector<double> hs = plain_hidden(g, seqs, R * T, h.L);
  h.chain.assign((size_t)R * S * T * D, 0.0);
  for (int r = 0; r < R; r++)
    for (int s = 1; s <= S; s++)
      for (int i = 0; i < T; i++)
        for (int j = 0; j < D; j++)
          h.chain[(((size_t)r * S + s - 1) * T + i) * D + j] = hs[(((size_t)r * T + i) * h.L + i + s) * D + j];
  return h;
}

struct SeqLoss {
  double nll_base = 0, nll_talk = 0, policy = 0, total = 0;
  std::vector<double> base_nll, talk_nll, mix, reward, weight, logp;  // (B,T), (R,A,T), (R,A,T), (R,T), (R,T), (R,M,T)
};

// The loss of spec §2.9 in plain loops from the sequential hidden states. frozen: the policy
// weights to use instead of recomputing them from the rewards.
static SeqLoss seq_eval(Rig& g, const Batch& b, const std::vector<int32_t>& th, const std::vector<double>* frozen = nullptr) {
  const ModelConfig& c = g.c;
  const QuietStarOptions& o = g.o;
  SeqHidden sh = sequential_hidden(g, b, th);
  const int B = b.B, T = b.T, P = o.n_passes, R = B * P, D = c.d_model, V = c.vocab_size;
  const int N = o.n_ahead, A = o.n_ahead_talk, M = o.thought_tokens(), S = N == 1 ? 0 : o.chain_steps();
  const int TA = std::max(T - 1 - A, 0);
  const ParamSet& p = *g.ps;
  const std::vector<double> W = view_of(p, p.params(), c.tie_embeddings ? (c.family == ModelFamily::GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight") : "lm_head.weight");
  const std::vector<double> w1 = view_of(p, p.params(), "talk_head.0.0.weight"), b1 = view_of(p, p.params(), "talk_head.0.0.bias");
  const std::vector<double> w2 = view_of(p, p.params(), "talk_head.0.2.weight"), b2 = view_of(p, p.params(), "talk_head.0.2.bias");
  const std::vector<double> w3 = view_of(p, p.params(), "talk_head.0.4.weight");
  auto logits = [&](const double* h) {
    std::vector<double> z(V);
    for (int v = 0; v < V; v++) {
      double s = 0;
      for (int j = 0; j < D; j++) s += W[(size_t)v * D + j] * h[j];
      z[v] = s;
    }
    return z;
  };
  auto ce = [&](const double* h, int target) {
    std::vector<double> z = logits(h);
    double mx = *std::max_element(z.begin(), z.end()), s = 0;
    for (double x : z) s += std::exp(x - mx);
    return mx + std::log(s) - z[target];
  };
  auto hb_of = [&](int d, int i) { return &sh.base[((size_t)d * T + i) * D]; };
  auto hc_of = [&](int r, int s, int i) {
    return N == 1 ? hb_of(r / P, i + s - N + 1) : &sh.chain[(((size_t)r * S + s - 1) * T + i) * D];
  };
  SeqLoss out;
  out.base_nll.assign((size_t)B * T, 0), out.talk_nll.assign((size_t)R * A * T, 0), out.mix.assign((size_t)R * A * T, 0);
  double sb = 0;
  int64_t nb = 0;
  for (int d = 0; d < B; d++)
    for (int i = 0; i + 1 < T; i++) {
      const int t = b.labels[(size_t)d * T + i + 1];
      if (t < 0) continue;
      out.base_nll[(size_t)d * T + i] = ce(hb_of(d, i), t);
      sb += out.base_nll[(size_t)d * T + i], nb++;
    }
  out.nll_base = nb ? sb / nb : 0;
  double talk = 0;
  for (int k = 0; k < A; k++) {
    double st = 0;
    int64_t nt = 0;
    for (int r = 0; r < R; r++)
      for (int i = 0; i + 1 + k < T; i++) {
        const int d = r / P;
        const double* hb = hb_of(d, i + k);
        const double* hc = hc_of(r, N - 1 + k, i);
        std::vector<double> a1(D), a2(D);
        for (int u = 0; u < D; u++) {
          double z = b1[u];
          for (int j = 0; j < D; j++) z += w1[(size_t)u * 2 * D + j] * hb[j] + w1[(size_t)u * 2 * D + D + j] * hc[j];
          a1[u] = std::max(z, 0.0);
        }
        for (int u = 0; u < D; u++) {
          double z = b2[u];
          for (int j = 0; j < D; j++) z += w2[(size_t)u * D + j] * a1[j];
          a2[u] = std::max(z, 0.0);
        }
        double w = 0;
        for (int j = 0; j < D; j++) w += w3[j] * a2[j];
        if (o.mixing_sigmoid) w = 1 / (1 + std::exp(-w));
        const double wc = o.mixing_weights_base ? 1 - w : w;  // weight of the chain
        std::vector<double> hm(D);
        for (int j = 0; j < D; j++) hm[j] = (1 - wc) * hb[j] + wc * hc[j];
        out.mix[((size_t)r * A + k) * T + i] = w;
        const int t = b.labels[(size_t)d * T + i + k + 1];
        if (t < 0) continue;
        const double l = ce(hm.data(), t);
        out.talk_nll[((size_t)r * A + k) * T + i] = l;
        st += l, nt++;
      }
    talk += nt ? st / nt : 0;
  }
  out.nll_talk = talk / A;
  out.reward.assign((size_t)R * T, 0), out.weight.assign((size_t)R * T, 0);
  for (int r = 0; r < R; r++)
    for (int i = 0; i < TA; i++) {
      double s = 0;
      for (int k = 0; k < A; k++) s += out.base_nll[(size_t)(r / P) * T + i + k] - out.talk_nll[((size_t)r * A + k) * T + i];
      out.reward[(size_t)r * T + i] = s;
    }
  for (int d = 0; d < B; d++)
    for (int i = 0; i < TA; i++) {
      double mean = 0;
      if (o.trice_baseline && P > 1) {
        for (int q = 0; q < P; q++) mean += out.reward[((size_t)d * P + q) * T + i];
        mean /= P;
      }
      for (int q = 0; q < P; q++) {
        double x = out.reward[((size_t)d * P + q) * T + i] - mean;
        out.weight[((size_t)d * P + q) * T + i] = o.remove_negative_rewards ? std::max(x, 0.0) : x;
      }
    }
  const std::vector<double>& wt = frozen ? *frozen : out.weight;
  out.logp.assign((size_t)R * M * T, 0);
  double pol = 0;
  for (int r = 0; r < R; r++)
    for (int m = 1; m <= M; m++)
      for (int i = 0; i < T; i++) {
        std::vector<double> z = logits(hc_of(r, m, i));
        double mx = -1e300;
        for (int v = 0; v < V; v++)
          if (v != o.start_id && v != o.end_id) mx = std::max(mx, z[v] / o.reinforce_temperature);
        double s = 0;
        for (int v = 0; v < V; v++)
          if (v != o.start_id && v != o.end_id) s += std::exp(z[v] / o.reinforce_temperature - mx);
        const int t = th[((size_t)r * T + i) * M + m - 1];
        const double lp = z[t] / o.reinforce_temperature - mx - std::log(s);
        out.logp[((size_t)r * M + m - 1) * T + i] = lp;
        if (i < TA) pol += -wt[(size_t)r * T + i] * lp;
      }
  out.policy = M > 0 && TA > 0 ? pol / ((double)M * R * TA) : 0;
  out.total = o.base_loss_beta * (o.original_loss_weight * out.nll_base + (1 - o.original_loss_weight) * out.nll_talk) +
              o.policy_loss_beta * out.policy;
  return out;
}

// ---------------------------------------------------------------------------------------------
// options, names, creation, validation

QS_TEST(options_names_and_creation) {
  ModelConfig c = qs_llama();
  QuietStarOptions o = qs_opts(12, 4, 2);
  QS_EXPECT(o.validate(c).ok(), "defaults refused: %s", o.validate(c).to_string().c_str());
  struct Bad { const char* field; void (*edit)(QuietStarOptions&); };
  const Bad bad[] = {
      {"quietstar.nAhead", [](QuietStarOptions& o) { o.n_ahead = 2; }},
      {"quietstar.nAhead", [](QuietStarOptions& o) { o.n_ahead = 0; }},
      {"quietstar.nAheadTalk", [](QuietStarOptions& o) { o.n_ahead_talk = 0; }},
      {"quietstar.nPasses", [](QuietStarOptions& o) { o.n_passes = 0; }},
      {"quietstar.embeddingScale", [](QuietStarOptions& o) { o.embedding_scale = 0; }},
      {"quietstar.originalLossWeight", [](QuietStarOptions& o) { o.original_loss_weight = 1.5; }},
      {"quietstar.baseLossBeta", [](QuietStarOptions& o) { o.base_loss_beta = -1; }},
      {"quietstar.policyLossBeta", [](QuietStarOptions& o) { o.policy_loss_beta = NAN; }},
      {"quietstar.reinforceTemperature", [](QuietStarOptions& o) { o.reinforce_temperature = 0; }},
      {"quietstar.thoughtTemperature", [](QuietStarOptions& o) { o.thought_temperature = -1; }},
      {"quietstar.startId", [](QuietStarOptions& o) { o.start_id = -1; }},
      {"quietstar.endId", [](QuietStarOptions& o) { o.end_id = kV; }},
      {"quietstar.endId", [](QuietStarOptions& o) { o.end_id = o.start_id; }},
  };
  for (const Bad& b : bad) {
    QuietStarOptions x = o;
    b.edit(x);
    Status s = x.validate(c);
    QS_EXPECT(s.code() == Code::INVALID_ARGUMENT && s.message().find(b.field) == 0, "%s: %s", b.field, s.to_string().c_str());
  }
  QS_EXPECT(o.chain_steps() == 14 && o.thought_tokens() == 9, "S %d, N-3 %d", o.chain_steps(), o.thought_tokens());
  auto specs = quietstar_param_specs(c);
  const char* names[] = {"start_embedding", "end_embedding", "talk_head.0.0.weight", "talk_head.0.0.bias",
                         "talk_head.0.2.weight", "talk_head.0.2.bias", "talk_head.0.4.weight"};
  const Shape shapes[] = {{2, 64}, {2, 64}, {64, 128}, {64}, {64, 64}, {64}, {1, 64}};
  QS_EXPECT(specs.size() == 7, "%zu extra views", specs.size());
  for (size_t i = 0; i < specs.size() && i < 7; i++)
    QS_EXPECT(specs[i].name == names[i] && specs[i].shape == shapes[i] && specs[i].decay == (shapes[i].size() == 2),
              "view %zu: %s %s", i, specs[i].name.c_str(), shape_string(specs[i].shape).c_str());
  // a model's ParamSet without the extras is refused, naming the missing view
  auto e = make_engine();
  ParamLayout l;
  ParamLayout::create(model_param_specs(c), &l);
  std::unique_ptr<ParamSet> ps;
  ParamSet::create(*e, DType::F32, l, false, &ps);
  std::unique_ptr<Model> m;
  Model::create(*e, c, std::shared_ptr<ParamSet>(std::move(ps)), &m);
  std::unique_ptr<QuietStar> q;
  Status st = QuietStar::create(*e, m.get(), o, &q);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("'start_embedding'") != std::string::npos, "%s",
            st.to_string().c_str());
}

QS_TEST(inputs_are_validated) {
  Rig g = make_rig(qs_llama(), qs_opts(5, 3, 2), DType::F32);
  Rng rng(3);
  Batch b = make_batch(rng, 2, 7);
  std::vector<int32_t> th = random_thoughts(rng, 4, 7, 2);
  QuietStarMetrics mt;
  th[5] = kStart;
  Status st = run_fb(g, b, th, false, &mt);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("thoughts[0, 2, 1] = 50") != std::string::npos, "%s",
            st.to_string().c_str());
  th[5] = 1;
  st = g.e->run_sync([&] {
    return g.q->forward_backward(i32(*g.e, {2, 7}, b.ids), Tensor(), i32(*g.e, {2, 7}, b.labels), i32(*g.e, {4, 7, 3}, std::vector<int32_t>(84, 1)),
                                 false, 1.0, &mt);
  });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("'thoughts' must be an int32 tensor of shape [4, 7, 2]") != std::string::npos,
            "%s", st.to_string().c_str());
  b.labels[3] = 60;
  st = run_fb(g, b, th, false, &mt);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("labels[0, 3] = 60") != std::string::npos, "%s",
            st.to_string().c_str());
  Tensor out;
  st = g.e->run_sync([&] { return g.q->debug_tensor("nope", &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT, "unknown debug name accepted");
  // GPT-2: chain positions i + s must fit the learned position table
  ModelConfig c2 = qs_gpt2();
  c2.max_seq_len = 12;
  Rig h = make_rig(c2, qs_opts(5, 3, 2), DType::F32);
  Batch b2 = make_batch(rng, 2, 7);
  Tensor t;
  st = h.e->run_sync([&] { return h.q->sample_thoughts(i32(*h.e, {2, 7}, b2.ids), Tensor(), 1, &t); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("config.maxSeqLen is 12") != std::string::npos, "%s",
            st.to_string().c_str());
}

// ---------------------------------------------------------------------------------------------
// §9.1 / §9.2 / §9.10: parallel = sequential, same seed = same thoughts, schedule

static void compare_hidden(Rig& g, const Batch& b, const std::vector<int32_t>& th, const char* label, double tol) {
  QuietStarMetrics mt;
  Status st = run_fb(g, b, th, false, &mt);
  QS_EXPECT(st.ok(), "forward: %s", st.to_string().c_str());
  if (!st.ok()) return;
  Shape cs;
  std::vector<double> chain = debug(g, "chain_hidden", &cs), base = debug(g, "base_hidden");
  const int R = b.B * g.o.n_passes, S = g.o.chain_steps(), T = b.T, D = g.c.d_model, V = g.c.vocab_size;
  QS_EXPECT(cs == Shape({R, S, T, D}), "chain_hidden shape %s", shape_string(cs).c_str());
  SeqHidden sh = sequential_hidden(g, b, th);
  std::string l = std::string(label) + " base hidden";
  check_close(l.c_str(), base.data(), sh.base.data(), base.size(), tol, tol);
  l = std::string(label) + " chain hidden (all steps)";
  check_close(l.c_str(), chain.data(), sh.chain.data(), chain.size(), tol, tol);
  // logits of every chain token: the parallel hidden through the head vs the plain model's logits
  if (g.c.tie_embeddings) return;  // the copy's marker embedding rows are the tied head's rows
  std::vector<int32_t> seqs;
  for (int r = 0; r < R; r++)
    for (int i = 0; i < T; i++) {
      auto s = literal_sequence(g, b, th, r, i);
      seqs.insert(seqs.end(), s.begin(), s.end());
    }
  Tensor lg;
  st = g.e->run_sync([&] { return g.m2->logits(i32(*g.e, {R * T, sh.L}, seqs), false, &lg); });
  QS_EXPECT(st.ok(), "logits: %s", st.to_string().c_str());
  std::vector<double> want = doubles(lg), W = view_of(*g.ps, g.ps->params(), "lm_head.weight");
  std::vector<double> got((size_t)R * S * T * V), ref(got.size());
  for (int r = 0; r < R; r++)
    for (int s = 1; s <= S; s++)
      for (int i = 0; i < T; i++)
        for (int v = 0; v < V; v++) {
          const size_t n = ((size_t)r * S + s - 1) * T + i;
          double z = 0;
          for (int j = 0; j < D; j++) z += W[(size_t)v * D + j] * chain[n * D + j];
          got[n * V + v] = z;
          ref[n * V + v] = want[(((size_t)r * T + i) * sh.L + i + s) * V + v];
        }
  l = std::string(label) + " chain logits";
  check_close(l.c_str(), got.data(), ref.data(), got.size(), tol, tol);
}

QS_TEST(parallel_equals_sequential_injected_thoughts) {
  Rng rng(5);
  {
    Rig g = make_rig(qs_llama(), qs_opts(5, 3, 2));
    Batch b = make_batch(rng, 2, 7);
    compare_hidden(g, b, random_thoughts(rng, 4, 7, 2), "llama f64", 1e-10);
  }
  {
    Rig g = make_rig(qs_gpt2(), qs_opts(6, 2, 2));
    Batch b = make_batch(rng, 2, 9);
    compare_hidden(g, b, random_thoughts(rng, 4, 9, 3), "gpt2 (learned positions) f64", 1e-10);
  }
  {  // float32: the same up to rounding
    Rig g = make_rig(qs_llama(), qs_opts(4, 2, 1), DType::F32);
    Batch b = make_batch(rng, 3, 8);
    compare_hidden(g, b, random_thoughts(rng, 3, 8, 1), "llama f32", 2e-4);
  }
}

// Sequential sampling: t_m from sample_tokens on the plain model's logits at the end of
// [x_0..x_i, <start>, t_1..t_{m-1}], noise stream (seed, row r, step m, position i).
static std::vector<int32_t> sequential_thoughts(Rig& g, const Batch& b, uint64_t seed) {
  sync_plain(g);
  const int T = b.T, P = g.o.n_passes, R = b.B * P, M = g.o.thought_tokens(), V = g.c.vocab_size;
  const int L = T + M + 1;
  std::vector<int32_t> th((size_t)R * T * M, 0);
  std::vector<int32_t> rows(R * T), positions(R * T), suppress = {g.o.start_id, g.o.end_id};
  for (int r = 0; r < R; r++)
    for (int i = 0; i < T; i++) rows[r * T + i] = r, positions[r * T + i] = i;
  for (int m = 1; m <= M; m++) {
    std::vector<int32_t> seqs((size_t)R * T * L, 0);
    for (int r = 0; r < R; r++)
      for (int i = 0; i < T; i++) {
        int32_t* s = &seqs[((size_t)r * T + i) * L];
        for (int j = 0; j <= i; j++) s[j] = b.ids[(size_t)(r / P) * T + j];
        s[i + 1] = g.o.start_id;
        for (int u = 1; u < m; u++) s[i + 1 + u] = th[((size_t)r * T + i) * M + u - 1];
      }
    Tensor lg;
    Status st = g.e->run_sync([&] { return g.m2->logits(i32(*g.e, {R * T, L}, seqs), false, &lg); });
    QS_EXPECT(st.ok(), "logits: %s", st.to_string().c_str());
    std::vector<double> all = doubles(lg), last((size_t)R * T * V);
    for (int n = 0; n < R * T; n++) {
      const int i = n % T;
      std::memcpy(&last[(size_t)n * V], &all[((size_t)n * L + i + m) * V], sizeof(double) * V);
    }
    cpu::SampleParams sp;
    sp.temperature = g.o.thought_temperature, sp.seed = seed, sp.step = (uint32_t)m;
    std::vector<int32_t> tok(R * T);
    cpu::sample_tokens<double>(tok.data(), last.data(), R * T, V, sp, rows.data(), positions.data(), suppress.data(), 2);
    for (int n = 0; n < R * T; n++) th[(size_t)n * M + m - 1] = tok[n];
  }
  return th;
}

QS_TEST(same_seed_same_thoughts_parallel_and_sequential) {
  Rng rng(7);
  for (double temp : {1.0, 0.0}) {
    QuietStarOptions o = qs_opts(6, 2, 2);
    o.thought_temperature = temp;
    Rig g = make_rig(qs_llama(), o);
    Batch b = make_batch(rng, 2, 8);
    std::vector<int32_t> par = run_sample(g, b, 1234), seq = sequential_thoughts(g, b, 1234);
    QS_EXPECT(par.size() == (size_t)4 * 8 * 3, "thoughts size %zu", par.size());
    size_t diff = 0;
    for (size_t n = 0; n < par.size() && n < seq.size(); n++) diff += par[n] != seq[n];
    fprintf(stdout, "    temperature %g: %zu of %zu thought tokens differ\n", temp, diff, par.size());
    QS_EXPECT(diff == 0 && par.size() == seq.size(), "parallel and sequential thoughts differ");
    // a different seed gives different thoughts; passes of one document differ (independent noise)
    if (temp > 0) {
      std::vector<int32_t> other = run_sample(g, b, 99);
      QS_EXPECT(other != par, "seed ignored");
      size_t same = 0;
      for (int i = 0; i < 8 * 3; i++) same += par[i] == par[8 * 3 + i];
      QS_EXPECT(same < 8 * 3, "the two passes drew identical thoughts");
    }
    // §9.1 with the sampled thoughts
    compare_hidden(g, b, par, temp > 0 ? "sampled thoughts" : "greedy thoughts", 1e-10);
  }
}

QS_TEST(schedule_counts) {
  Rng rng(9);
  const int N = 7, A = 3, P = 2, B = 2, T = 9;
  Rig g = make_rig(qs_llama(), qs_opts(N, A, P), DType::F32);
  Batch b = make_batch(rng, B, T);
  Tensor th_t;
  QuietStarMetrics mt;
  Status st = g.e->run_sync([&] {
    return g.q->step(i32(*g.e, {B, T}, b.ids), Tensor(), i32(*g.e, {B, T}, b.labels), 5, 1.0, &mt, &th_t);
  });
  QS_EXPECT(st.ok(), "step: %s", st.to_string().c_str());
  QS_EXPECT(th_t.shape() == Shape({B * P, T, N - 3}), "thoughts %s (N - 3 = 4 per position)", th_t.describe().c_str());
  Shape s1, s2, s3, s4;
  debug(g, "chain_hidden", &s1);
  std::vector<double> talk = debug(g, "talk_nll", &s2), rew = debug(g, "reward", &s3);
  debug(g, "policy_logp", &s4);
  QS_EXPECT(s1 == Shape({B * P, N + A - 2, T, 64}), "chain %s: S = N + A - 2 steps", shape_string(s1).c_str());
  QS_EXPECT(s2 == Shape({B * P, A, T}) && s3 == Shape({B * P, T}) && s4 == Shape({B * P, N - 3, T}), "shapes");
  // talk k scores positions 0..T-2-k; rewards positions 0..T-2-A
  bool ok = true;
  for (int r = 0; r < B * P; r++)
    for (int k = 0; k < A; k++)
      for (int i = 0; i < T; i++) ok &= (talk[((size_t)r * A + k) * T + i] != 0) == (i <= T - 2 - k);
  QS_EXPECT(ok, "talk NLL slices are not (R, T-1-k)");
  ok = true;
  for (int r = 0; r < B * P; r++)
    for (int i = T - 1 - A; i < T; i++) ok &= rew[(size_t)r * T + i] == 0;
  QS_EXPECT(ok, "rewards beyond T-2-A");
  QS_EXPECT(mt.tokens == B * T && std::isfinite(mt.loss), "metrics: tokens %lld loss %g", (long long)mt.tokens, mt.loss);
}

static void zero_grads(Rig& g) { g.ps->zero_grad(); }

// degenerate shapes: no thought token (nAhead 3), one pass, windows shorter than the talk
QS_TEST(small_and_degenerate_shapes_run) {
  Rng rng(41);
  struct Case { int N, A, P, T; };
  for (Case k : {Case{3, 2, 2, 6}, Case{4, 4, 1, 3}, Case{12, 4, 2, 2}, Case{5, 3, 2, 1}, Case{1, 1, 3, 5}}) {
    Rig g = make_rig(qs_llama(), qs_opts(k.N, k.A, k.P), DType::F64, 2);
    Batch b = make_batch(rng, 2, k.T);
    zero_grads(g);
    Tensor th;
    QuietStarMetrics mt;
    Status st = g.e->run_sync([&] {
      return g.q->step(i32(*g.e, {2, k.T}, b.ids), u8(*g.e, {2, k.T}, b.valid), i32(*g.e, {2, k.T}, b.labels), 4, 1.0, &mt, &th);
    });
    QS_EXPECT(st.ok(), "N %d A %d P %d T %d: %s", k.N, k.A, k.P, k.T, st.to_string().c_str());
    if (!st.ok()) continue;
    QS_EXPECT(th.shape() == Shape({2 * k.P, k.T, std::max(k.N - 3, 0)}) && std::isfinite(mt.loss),
              "N %d A %d P %d T %d: thoughts %s loss %g", k.N, k.A, k.P, k.T, th.describe().c_str(), mt.loss);
    std::vector<int32_t> tv(th.data<int32_t>(), th.data<int32_t>() + th.numel());
    SeqLoss ref = seq_eval(g, b, tv);
    QS_EXPECT(std::fabs(mt.loss - ref.total) <= 1e-10 * (1 + std::fabs(ref.total)), "N %d A %d P %d T %d: loss %.15g vs %.15g",
              k.N, k.A, k.P, k.T, mt.loss, ref.total);
  }
}

// ---------------------------------------------------------------------------------------------
// §9.4: two-phase = sequential (loss), and finite differences of the sequential loss

static void fd_against_sequential(Rig& g, const Batch& b, const std::vector<int32_t>& th, const char* label, size_t coords) {
  Rng rng(17);
  // the policy weights of the analytic forward, held fixed in every finite difference
  zero_grads(g);
  QuietStarMetrics mt;
  Status st = run_fb(g, b, th, true, &mt);
  QS_EXPECT(st.ok(), "forward_backward: %s", st.to_string().c_str());
  const std::vector<double> weight = debug(g, "reward_weight");
  SeqLoss ref = seq_eval(g, b, th, &weight);
  fprintf(stdout, "    %s: loss %.12f vs sequential %.12f (base %.6f talk %.6f policy %.6f)\n", label, mt.loss, ref.total,
          mt.nll_base, mt.nll_talk, mt.policy_loss);
  QS_EXPECT(std::fabs(mt.loss - ref.total) <= 1e-9 * (1 + std::fabs(ref.total)), "%s: loss %.15g vs sequential %.15g", label,
            mt.loss, ref.total);
  ParamSet& p = *g.ps;
  for (const ParamEntry& e : p.layout().entries()) {
    std::vector<double> x = view_of(p, p.params(), e.name), analytic = view_of(p, p.grads(), e.name);
    double* dst = p.params().data<double>() + e.offset;
    auto loss = [&]() {
      std::memcpy(dst, x.data(), sizeof(double) * x.size());
      return seq_eval(g, b, th, &weight).total;
    };
    // Small steps: the mixing head's ReLUs have kinks a wide step can cross (the markers are
    // fed × embedding_scale, so their step is scaled down by it).
    const bool marker = e.name == "start_embedding" || e.name == "end_embedding";
    const double h = marker ? 1e-6 / g.o.embedding_scale : 1e-6;
    std::string l = std::string(label) + " " + e.name;
    check_gradient(l.c_str(), x, analytic, loss, rng, coords, h, 3e-5, 1e-8);
    std::memcpy(dst, x.data(), sizeof(double) * x.size());
  }
}

QS_TEST(two_phase_equals_sequential_nll_gradients_f64) {
  Rng rng(11);
  QuietStarOptions o = qs_opts(5, 3, 2);
  o.policy_loss_beta = 0;  // the NLL term alone
  Rig g = make_rig(qs_llama(), o);
  Batch b = make_batch(rng, 2, 7, 2, true);  // right padding and an ignored label inside
  fd_against_sequential(g, b, random_thoughts(rng, 4, 7, 2), "nll", 4);
}

QS_TEST(two_phase_equals_sequential_policy_gradients_f64) {
  Rng rng(13);
  QuietStarOptions o = qs_opts(5, 3, 2);
  o.base_loss_beta = 0;  // the policy term alone (weights from the talk NLL, held fixed)
  Rig g = make_rig(qs_llama(), o);
  Batch b = make_batch(rng, 2, 8, 2);
  fd_against_sequential(g, b, random_thoughts(rng, 4, 8, 2), "policy", 4);
  // markers in the middle of the vocabulary (the head without them is a compact copy), no clamp,
  // paper mixing with a sigmoid, the whole loss at once
  QuietStarOptions o2 = qs_opts(6, 2, 2);
  o2.start_id = 3, o2.end_id = 17;
  o2.remove_negative_rewards = false;
  o2.mixing_weights_base = true, o2.mixing_sigmoid = true;
  Rig h = make_rig(qs_llama(), o2);
  Batch b2 = make_batch(rng, 2, 7);
  for (auto& x : b2.ids) x = x == 3 || x == 17 ? 4 : x;
  b2.labels = b2.ids;
  std::vector<int32_t> th = random_thoughts(rng, 4, 7, 3);
  for (auto& x : th) x = x == 3 || x == 17 ? 5 : x;
  fd_against_sequential(h, b2, th, "all, markers 3/17", 3);
}

QS_TEST(gpt2_full_loss_gradients_f64) {
  Rng rng(15);
  Rig g = make_rig(qs_gpt2(), qs_opts(4, 3, 2));
  Batch b = make_batch(rng, 2, 6, 1);
  fd_against_sequential(g, b, random_thoughts(rng, 4, 6, 1), "gpt2 all", 3);
}

// the default policy_loss_beta (1e6) and the loss value from step() (sampled thoughts)
QS_TEST(step_loss_matches_sequential_at_default_betas) {
  Rng rng(19);
  QuietStarOptions o = qs_opts(6, 4, 2);
  o.policy_loss_beta = 1e6;
  Rig g = make_rig(qs_llama(), o);
  Batch b = make_batch(rng, 2, 9);
  Tensor th_t;
  QuietStarMetrics mt;
  Status st = g.e->run_sync([&] {
    return g.q->step(i32(*g.e, {2, 9}, b.ids), u8(*g.e, {2, 9}, b.valid), i32(*g.e, {2, 9}, b.labels), 77, 1.0, &mt, &th_t);
  });
  QS_EXPECT(st.ok(), "step: %s", st.to_string().c_str());
  std::vector<int32_t> th(th_t.data<int32_t>(), th_t.data<int32_t>() + th_t.numel());
  SeqLoss ref = seq_eval(g, b, th);
  QS_EXPECT(std::fabs(mt.loss - ref.total) <= 1e-9 * std::fabs(ref.total), "loss %.15g vs %.15g", mt.loss, ref.total);
  QS_EXPECT(std::fabs(mt.policy_loss - ref.policy) <= 1e-12 + 1e-9 * std::fabs(ref.policy), "policy %.15g vs %.15g",
            mt.policy_loss, ref.policy);
  std::vector<double> rew = debug(g, "reward"), wt = debug(g, "reward_weight"), mix = debug(g, "mix_weight");
  check_close("rewards vs sequential", rew.data(), ref.reward.data(), rew.size(), 1e-9, 1e-9);
  check_close("weights vs sequential", wt.data(), ref.weight.data(), wt.size(), 1e-9, 1e-9);
  check_close("mixing weights vs sequential", mix.data(), ref.mix.data(), mix.size(), 1e-9, 1e-9);
  QS_EXPECT(mt.policy_loss > 0 && mt.positive_share > 0, "policy %g, positive share %g", mt.policy_loss, mt.positive_share);
}

// ---------------------------------------------------------------------------------------------
// §9.5 mixing identities

QS_TEST(mixing_identities) {
  Rng rng(21);
  const int B = 2, T = 7, A = 3, P = 2, R = B * P, D = 64, V = kV;
  Batch b = make_batch(rng, B, T);
  std::vector<int32_t> th = random_thoughts(rng, R, T, 2);
  auto log_softmax = [&](const std::vector<double>& W, const double* h) {
    std::vector<double> z(V);
    for (int v = 0; v < V; v++) {
      z[v] = 0;
      for (int j = 0; j < D; j++) z[v] += W[(size_t)v * D + j] * h[j];
    }
    double mx = *std::max_element(z.begin(), z.end()), s = 0;
    for (double x : z) s += std::exp(x - mx);
    for (double& x : z) x -= mx + std::log(s);
    return z;
  };
  for (int mode = 0; mode < 3; mode++) {
    // 0: reference, w ≡ 0  1: paper, w ≡ 0 (the thought alone)  2: reference, random w
    QuietStarOptions o = qs_opts(5, A, P);
    o.mixing_weights_base = mode == 1;
    Rig g = make_rig(qs_llama(), o, DType::F64, 3, mode < 2);
    QuietStarMetrics mt;
    QS_EXPECT(run_fb(g, b, th, false, &mt).ok(), "forward");
    std::vector<double> talk = debug(g, "talk_nll"), base = debug(g, "base_nll"), mix = debug(g, "mix_weight");
    std::vector<double> hb = debug(g, "base_hidden"), hc = debug(g, "chain_hidden");
    std::vector<double> W = view_of(*g.ps, g.ps->params(), "lm_head.weight");
    const int S = 5 + A - 2;
    double worst = 0;
    bool exact0 = true;
    for (int r = 0; r < R; r++)
      for (int k = 0; k < A; k++)
        for (int i = 0; i + 1 + k < T; i++) {
          const int d = r / P, t = b.labels[(size_t)d * T + i + k + 1];
          const double got = talk[((size_t)r * A + k) * T + i];
          if (mode == 0) {
            exact0 &= mix[((size_t)r * A + k) * T + i] == 0;
            worst = std::max(worst, std::fabs(got - base[(size_t)d * T + i + k]));  // base NLL at i + k
          } else {
            // log softmax of mixed logits = normalised (1 - w)·log p_base + w·log p_thought
            const double w = mix[((size_t)r * A + k) * T + i], wc = mode == 1 ? 1 - w : w;
            auto lb = log_softmax(W, &hb[((size_t)d * T + i + k) * D]);
            auto lc = log_softmax(W, &hc[(((size_t)r * S + (5 - 1 + k) - 1) * T + i) * D]);  // step N-1+k
            std::vector<double> z(V);
            for (int v = 0; v < V; v++) z[v] = (1 - wc) * lb[v] + wc * lc[v];
            double mx = *std::max_element(z.begin(), z.end()), s = 0;
            for (double x : z) s += std::exp(x - mx);
            worst = std::max(worst, std::fabs(got - (mx + std::log(s) - z[t])));
          }
        }
    fprintf(stdout, "    mode %d: max |talk NLL - identity| = %.3e\n", mode, worst);
    QS_EXPECT(worst < 1e-10, "mode %d: talk NLL off the identity by %g", mode, worst);
    if (mode == 0) QS_EXPECT(exact0, "w is not exactly 0 with a zero last layer");
    if (mode == 2) QS_EXPECT(mt.mix_std > 0.1, "random head gave w std %g", mt.mix_std);
  }
}

// ---------------------------------------------------------------------------------------------
// §9.6 initial state, §9.9 gradient isolation

static bool all_zero(const std::vector<double>& v) {
  for (double x : v) if (x != 0) return false;
  return true;
}
static double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

QS_TEST(initial_state) {
  Rng rng(23);
  QuietStarOptions o = qs_opts(6, 3, 2);
  o.policy_loss_beta = 1e6;
  Rig g = make_rig(qs_llama(), o);
  Status st = g.e->run_sync([&] { return g.q->init_parameters(7, 42); });
  QS_EXPECT(st.ok(), "init: %s", st.to_string().c_str());
  // init: start/end row 0 = E[7] / 100, row 1 zero; last mixing layer zero; others N(0, 0.02)
  std::vector<double> E = view_of(*g.ps, g.ps->params(), "model.embed_tokens.weight");
  std::vector<double> se = view_of(*g.ps, g.ps->params(), "start_embedding"), w1 = view_of(*g.ps, g.ps->params(), "talk_head.0.0.weight");
  bool ok = true;
  for (int j = 0; j < 64; j++) ok &= std::fabs(se[j] - E[7 * 64 + j] / 100) < 1e-15 && se[64 + j] == 0;
  QS_EXPECT(ok, "start_embedding is not E['---'] / 100");
  double s2 = 0;
  for (double x : w1) s2 += x * x;
  QS_EXPECT(std::fabs(std::sqrt(s2 / w1.size()) - 0.02) < 0.002, "talk_head.0.0.weight std %g", std::sqrt(s2 / w1.size()));
  QS_EXPECT(all_zero(view_of(*g.ps, g.ps->params(), "talk_head.0.4.weight")) && all_zero(view_of(*g.ps, g.ps->params(), "talk_head.0.2.bias")),
            "last layer / biases not zero");

  const int B = 2, T = 8, A = 3, R = 4;
  Batch b = make_batch(rng, B, T);
  std::vector<int32_t> th = random_thoughts(rng, R, T, 3);
  th[0] = 50 - 1;  // a token id used only inside thoughts
  for (auto& x : b.ids) x = x == 49 ? 48 : x;
  b.labels = b.ids;
  zero_grads(g);
  QuietStarMetrics mt;
  QS_EXPECT(run_fb(g, b, th, true, &mt).ok(), "forward_backward");
  std::vector<double> rew = debug(g, "reward"), talk = debug(g, "talk_nll"), base = debug(g, "base_nll");
  fprintf(stdout, "    max |reward| %.3e, policy loss %.3e, loss %.9f\n", max_abs(rew), mt.policy_loss, mt.loss);
  // exactly: w = 0 makes the mixed state the base state bit for bit
  QS_EXPECT(max_abs(rew) == 0 && mt.policy_loss == 0, "rewards %g, policy loss %g at init", max_abs(rew), mt.policy_loss);
  double shifted = 0;
  for (int k = 0; k < A; k++) {
    double s = 0;
    int n = 0;
    for (int d = 0; d < B; d++)
      for (int i = 0; i + 1 + k < T; i++) s += base[(size_t)d * T + i + k], n++;
    shifted += s / n;
    for (int r = 0; r < R; r++)
      for (int i = 0; i + 1 + k < T; i++)
        QS_EXPECT(std::fabs(talk[((size_t)r * A + k) * T + i] - base[(size_t)(r / 2) * T + i + k]) < 1e-12, "talk NLL k=%d i=%d", k, i);
  }
  const double want = 0.5 * mt.nll_base + 0.5 * shifted / A;
  QS_EXPECT(std::fabs(mt.loss - want) < 1e-10, "loss %.12f vs 0.5 L_base + 0.5 mean_k L_base,shift k %.12f", mt.loss, want);
  // gradients: only the last mixing layer and the base path
  auto grad = [&](const char* n) { return view_of(*g.ps, g.ps->grads(), n); };
  for (const char* n : {"talk_head.0.0.weight", "talk_head.0.0.bias", "talk_head.0.2.weight", "talk_head.0.2.bias",
                        "start_embedding", "end_embedding"})
    QS_EXPECT(max_abs(grad(n)) == 0, "%s has gradient %g at init", n, max_abs(grad(n)));
  QS_EXPECT(max_abs(grad("talk_head.0.4.weight")) > 1e-6, "the last mixing layer gets no gradient");
  std::vector<double> ge = grad("model.embed_tokens.weight");
  double thought_row = 0;
  for (int j = 0; j < 64; j++) thought_row = std::max(thought_row, std::fabs(ge[49 * 64 + j]));
  QS_EXPECT(thought_row == 0, "a token fed only inside thoughts gets gradient %g", thought_row);
  QS_EXPECT(max_abs(grad("model.layers.0.self_attn.q_proj.weight")) > 1e-6 && max_abs(grad("lm_head.weight")) > 1e-6,
            "the base path gets no gradient");
}

QS_TEST(gradient_isolation) {
  Rng rng(25);
  Batch b = make_batch(rng, 2, 8);
  std::vector<int32_t> th = random_thoughts(rng, 4, 8, 2);
  auto grads_with = [&](double base_beta, double w0, double pol_beta) {
    QuietStarOptions o = qs_opts(5, 3, 2);
    o.base_loss_beta = base_beta, o.original_loss_weight = w0, o.policy_loss_beta = pol_beta;
    Rig g = make_rig(qs_llama(), o, DType::F64, 4);
    zero_grads(g);
    QuietStarMetrics mt;
    QS_EXPECT(run_fb(g, b, th, true, &mt).ok(), "forward_backward");
    std::vector<std::pair<std::string, double>> out;
    for (const ParamEntry& e : g.ps->layout().entries()) out.push_back({e.name, max_abs(view_of(*g.ps, g.ps->grads(), e.name))});
    QS_EXPECT(mt.policy_loss > 0, "no policy signal (policy loss %g)", mt.policy_loss);
    return out;
  };
  auto get = [](const std::vector<std::pair<std::string, double>>& v, const std::string& n) {
    for (auto& x : v) if (x.first == n) return x.second;
    return -1.0;
  };
  // policy alone: nothing to the mixing head and end_embedding; start_embedding moves
  auto pol = grads_with(0, 0.5, 1.0);
  for (const char* n : {"talk_head.0.0.weight", "talk_head.0.0.bias", "talk_head.0.2.weight", "talk_head.0.2.bias",
                        "talk_head.0.4.weight", "end_embedding"})
    QS_EXPECT(get(pol, n) == 0, "policy gives %s gradient %g", n, get(pol, n));
  QS_EXPECT(get(pol, "start_embedding") > 1e-8, "policy gives start_embedding no gradient");
  QS_EXPECT(get(pol, "model.layers.1.mlp.up_proj.weight") > 1e-8 && get(pol, "lm_head.weight") > 1e-8, "policy reaches no LM weight");
  // base NLL alone: nothing to the mixing head or the markers
  auto base = grads_with(1.0, 1.0, 0);
  for (const char* n : {"talk_head.0.0.weight", "talk_head.0.0.bias", "talk_head.0.2.weight", "talk_head.0.2.bias",
                        "talk_head.0.4.weight", "start_embedding", "end_embedding"})
    QS_EXPECT(get(base, n) == 0, "base NLL gives %s gradient %g", n, get(base, n));
  QS_EXPECT(get(base, "model.layers.0.self_attn.q_proj.weight") > 1e-8, "base NLL reaches no LM weight");
  // talk NLL alone reaches everything of the chain, the markers included
  auto talk = grads_with(1.0, 0.0, 0);
  for (const char* n : {"talk_head.0.0.weight", "talk_head.0.4.weight", "start_embedding", "end_embedding"})
    QS_EXPECT(get(talk, n) > 1e-8, "talk NLL gives %s no gradient", n);
}

// ---------------------------------------------------------------------------------------------
// §9.7 nAhead = 1 reproduces the base model

QS_TEST(n_ahead_one_is_the_base_model) {
  Rng rng(27);
  const int B = 2, T = 9, A = 3;
  for (int variant = 0; variant < 2; variant++) {
    Rig g = make_rig(variant ? qs_gpt2() : qs_llama(), qs_opts(1, A, 2), DType::F64, 6);  // random mixing head: w != 0
    Batch b = make_batch(rng, B, T);
    std::vector<int32_t> none;
    QS_EXPECT(run_sample(g, b, 3).empty(), "nAhead 1 sampled thoughts");
    QuietStarMetrics mt;
    zero_grads(g);
    QS_EXPECT(run_fb(g, b, none, true, &mt).ok(), "forward_backward");
    std::vector<double> talk = debug(g, "talk_nll"), base = debug(g, "base_nll"), rew = debug(g, "reward");
    // the plain model's per-token losses, targets x_{i+1}
    std::vector<int32_t> tg(B * T, -100);
    for (int d = 0; d < B; d++)
      for (int i = 0; i + 1 < T; i++) tg[d * T + i] = b.labels[d * T + i + 1];
    Tensor tl;
    QS_EXPECT(g.e->run_sync([&] { return g.m->token_losses(i32(*g.e, {B, T}, b.ids), i32(*g.e, {B, T}, tg), &tl); }).ok(), "token losses");
    std::vector<double> want = doubles(tl);
    check_close("base NLL = plain model token losses", base.data(), want.data(), want.size(), 1e-12, 1e-12);
    double worst = 0;
    for (int r = 0; r < 2 * B; r++)
      for (int k = 0; k < A; k++)
        for (int i = 0; i + 1 + k < T; i++) worst = std::max(worst, std::fabs(talk[((size_t)r * A + k) * T + i] - want[(r / 2) * T + i + k]));
    QS_EXPECT(worst < 1e-12 && max_abs(rew) < 1e-12, "talk NLL off the base by %g, rewards %g", worst, max_abs(rew));
    QS_EXPECT(mt.mix_std > 0.01, "the mixing weight should vary (std %g) and still not matter", mt.mix_std);
    QS_EXPECT(max_abs(view_of(*g.ps, g.ps->grads(), "talk_head.0.0.weight")) < 1e-12, "the mixing head learns without thoughts");
  }
}

// ---------------------------------------------------------------------------------------------
// §9.8 reward algebra (the reward function directly, then through the step)

QS_TEST(reward_algebra) {
  Rng rng(29);
  const int B = 2, T = 9, A = 3;
  for (int P : {2, 3}) {
    const int R = B * P;
    std::vector<int64_t> off(A + 1, 0);
    for (int k = 0; k < A; k++) off[k + 1] = off[k] + (int64_t)R * (T - 1 - k);
    std::vector<double> base(B * T), talk(off[A]);
    for (auto& x : base) x = rng.uniform(0, 4);
    for (auto& x : talk) x = rng.uniform(0, 4);
    std::vector<double> rw(R * T), w(R * T), wc(R * T), w2(R * T), rw2(R * T);
    cpu::quietstar_rewards<double>(rw.data(), w.data(), base.data(), talk.data(), off.data(), B, P, T, A, true, false);
    cpu::quietstar_rewards<double>(rw.data(), wc.data(), base.data(), talk.data(), off.data(), B, P, T, A, true, true);
    double worst = 0;
    bool one_positive = true;
    for (int d = 0; d < B; d++)
      for (int i = 0; i < T - 1 - A; i++) {
        double s = 0;
        int npos = 0;
        for (int p = 0; p < P; p++) s += w[(d * P + p) * T + i], npos += wc[(d * P + p) * T + i] > 0;
        worst = std::max(worst, std::fabs(s));
        if (P == 2) {
          const double r1 = rw[(d * 2) * T + i], r2 = rw[(d * 2 + 1) * T + i];
          const double hi = std::max(wc[(d * 2) * T + i], wc[(d * 2 + 1) * T + i]);
          one_positive &= npos == (r1 != r2) && std::fabs(hi - std::fabs(r1 - r2) / 2) < 1e-12;
        }
      }
    QS_EXPECT(worst < 1e-12, "P=%d: centred rewards sum to %g per position", P, worst);
    if (P == 2) QS_EXPECT(one_positive, "P=2: exactly one pass per position has weight |R1-R2|/2");
    // the base term cancels after centring
    for (auto& x : base) x += rng.uniform(-1, 1);
    cpu::quietstar_rewards<double>(rw2.data(), w2.data(), base.data(), talk.data(), off.data(), B, P, T, A, true, false);
    double dw = 0, dr = 0;
    for (int n = 0; n < R * T; n++) dw = std::max(dw, std::fabs(w2[n] - w[n])), dr = std::max(dr, std::fabs(rw2[n] - rw[n]));
    QS_EXPECT(dw < 1e-12 && dr > 1e-3, "P=%d: changing the base NLL moved the centred rewards by %g", P, dw);
  }
  // without the baseline (or P = 1) the weight is the raw reward log p_talk - log p_base
  std::vector<int64_t> off = {0, 8, 15};
  std::vector<double> base(9, 1.0), talk(15, 0.25), rw(9), w(9);
  cpu::quietstar_rewards<double>(rw.data(), w.data(), base.data(), talk.data(), off.data(), 1, 1, 9, 2, true, true);
  QS_EXPECT(std::fabs(w[0] - 1.5) < 1e-15 && w[6] == 0, "P=1: weight %g (want 2 x (1 - 0.25))", w[0]);
}

// ---------------------------------------------------------------------------------------------
// §9.11 marker suppression

QS_TEST(markers_are_never_sampled) {
  Rng rng(31);
  Rig g = make_rig(qs_llama(), qs_opts(8, 2, 2), DType::F32);
  // make the markers' LM-head rows dominate every logit
  const ParamEntry* e = g.ps->layout().find("lm_head.weight");
  std::vector<double> fn = view_of(*g.ps, g.ps->params(), "model.norm.weight");
  for (int j = 0; j < 64; j++) {
    set_value(*g.ps, e->offset + (int64_t)kStart * 64 + j, 40.0 * (fn[j] > 0 ? 1 : -1));
    set_value(*g.ps, e->offset + (int64_t)kEnd * 64 + j, 40.0 * (fn[j] > 0 ? 1 : -1));
  }
  for (double temp : {1.0, 0.0}) {
    g.q.reset();
    QuietStarOptions o = g.o;
    o.thought_temperature = temp;
    QuietStar::create(*g.e, g.m.get(), o, &g.q);
    Batch b = make_batch(rng, 2, 10);
    std::vector<int32_t> th = run_sample(g, b, 8);
    size_t markers = 0;
    for (int32_t t : th) markers += t == kStart || t == kEnd || t < 0 || t >= kV;
    QS_EXPECT(!th.empty() && markers == 0, "temperature %g: %zu sampled markers", temp, markers);
    // and the policy log-probs exclude the markers: finite and <= 0
    g.q->set_full_policy_logp(true);
    QuietStarMetrics mt;
    QS_EXPECT(run_fb(g, b, th, false, &mt).ok(), "forward");
    std::vector<double> lp = debug(g, "policy_logp");
    bool ok = !lp.empty();
    for (double x : lp) ok &= std::isfinite(x) && x <= 0 && x > -20;
    QS_EXPECT(ok, "policy log-probs include the markers");
  }
}

// ---------------------------------------------------------------------------------------------
// §9.12 padding invariance

QS_TEST(padding_invariance) {
  Rng rng(33);
  Rig g = make_rig(qs_llama(), qs_opts(5, 3, 2), DType::F64, 8);
  const int B = 2, T = 8, pad = 4, T2 = T + pad;
  Batch b = make_batch(rng, B, T);
  Batch b2;
  b2.B = B, b2.T = T2;
  for (int d = 0; d < B; d++)
    for (int i = 0; i < T2; i++) {
      const bool real = i < T;
      b2.ids.push_back(real ? b.ids[d * T + i] : 0);
      b2.labels.push_back(real ? b.labels[d * T + i] : -100);
      b2.valid.push_back(real);
    }
  // the same seed draws the same thoughts at the real positions
  std::vector<int32_t> t1 = run_sample(g, b, 21), t2 = run_sample(g, b2, 21);
  bool same = true;
  for (int r = 0; r < 2 * B; r++)
    for (int i = 0; i < T; i++)
      for (int m = 0; m < 2; m++) same &= t1[((size_t)r * T + i) * 2 + m] == t2[((size_t)r * T2 + i) * 2 + m];
  QS_EXPECT(same, "padding changed the thoughts of real positions");
  QuietStarMetrics m1, m2;
  QS_EXPECT(run_fb(g, b, t1, false, &m1).ok(), "forward");
  std::vector<double> bn1 = debug(g, "base_nll"), tn1 = debug(g, "talk_nll"), rw1 = debug(g, "reward"), mx1 = debug(g, "mix_weight");
  QS_EXPECT(run_fb(g, b2, t2, false, &m2).ok(), "forward padded");
  std::vector<double> bn2 = debug(g, "base_nll"), tn2 = debug(g, "talk_nll"), rw2 = debug(g, "reward"), mx2 = debug(g, "mix_weight");
  double worst = 0;
  for (int d = 0; d < B; d++)
    for (int i = 0; i < T; i++) worst = std::max(worst, std::fabs(bn1[d * T + i] - bn2[d * T2 + i]));
  for (int r = 0; r < 2 * B; r++)
    for (int k = 0; k < 3; k++)
      for (int i = 0; i < T; i++) {
        worst = std::max(worst, std::fabs(tn1[(r * 3 + k) * T + i] - tn2[(r * 3 + k) * T2 + i]));
        if (i + 1 + k < T) worst = std::max(worst, std::fabs(mx1[(r * 3 + k) * T + i] - mx2[(r * 3 + k) * T2 + i]));
      }
  // rewards and weights of the positions whose A targets are all real text (the later ones
  // now score a partial window: pad terms are 0, as in the reference)
  const int TA = T - 1 - 3, TA2 = T2 - 1 - 3;
  std::vector<double> wt2 = debug(g, "reward_weight");
  g.q->set_full_policy_logp(true);
  QS_EXPECT(run_fb(g, b, t1, false, &m1).ok(), "forward");
  std::vector<double> wt1 = debug(g, "reward_weight");
  for (int r = 0; r < 2 * B; r++)
    for (int i = 0; i < TA; i++) {
      worst = std::max(worst, std::fabs(rw1[r * T + i] - rw2[r * T2 + i]));
      worst = std::max(worst, std::fabs(wt1[r * T + i] - wt2[r * T2 + i]));
    }
  QS_EXPECT(worst < 1e-12, "padding changed real losses / rewards by %g", worst);
  QS_EXPECT(std::fabs(m1.nll_base - m2.nll_base) < 1e-12 && std::fabs(m1.nll_talk - m2.nll_talk) < 1e-12,
            "padding changed the NLL means (pads must be out of the denominators)");
  // the policy mean is the reference's plain mean over all R·(T-1-A) entries, pads included
  QS_EXPECT(run_fb(g, b2, t2, false, &m2).ok(), "forward padded");
  std::vector<double> lp2 = debug(g, "policy_logp");
  double s_real = 0, s_all = 0;
  for (int r = 0; r < 2 * B; r++)
    for (int m = 0; m < 2; m++)
      for (int i = 0; i < TA2; i++) {
        const double x = -wt2[r * T2 + i] * lp2[((size_t)r * 2 + m) * T2 + i];
        s_all += x;
        if (i < TA) s_real += x;
      }
  QS_EXPECT(std::fabs(m2.policy_loss - s_all / (2.0 * 2 * B * TA2)) < 1e-12, "padded policy mean %.15g vs %.15g",
            m2.policy_loss, s_all / (2.0 * 2 * B * TA2));
  QS_EXPECT(m1.policy_loss > 0 && std::fabs(m1.policy_loss - s_real / (2.0 * 2 * B * TA)) < 1e-12,
            "unpadded policy %.15g vs the padded run's real part %.15g", m1.policy_loss, s_real / (2.0 * 2 * B * TA));
  QS_EXPECT(m1.tokens == B * T && m2.tokens == B * T, "tokens %lld %lld", (long long)m1.tokens, (long long)m2.tokens);
}

// ---------------------------------------------------------------------------------------------
// §9.13 the ×100 reparameterisation

QS_TEST(marker_embeddings_move_100x_under_adam) {
  Rng rng(35);
  Rig g = make_rig(qs_llama(), qs_opts(5, 3, 2), DType::F32, 10);
  Batch b = make_batch(rng, 2, 8);
  std::vector<double> s0 = view_of(*g.ps, g.ps->params(), "start_embedding"), e0 = view_of(*g.ps, g.ps->params(), "lm_head.weight");
  zero_grads(g);
  QuietStarMetrics mt;
  Status st = g.e->run_sync([&] {
    return g.q->step(i32(*g.e, {2, 8}, b.ids), u8(*g.e, {2, 8}, b.valid), i32(*g.e, {2, 8}, b.labels), 3, 1.0, &mt, nullptr);
  });
  QS_EXPECT(st.ok(), "step: %s", st.to_string().c_str());
  std::vector<double> gs = view_of(*g.ps, g.ps->grads(), "start_embedding");
  AdamWConfig ac;
  ac.lr = 1e-3, ac.weight_decay = 0;
  QS_EXPECT(g.ps->adamw_step(ac).ok(), "adamw");
  std::vector<double> s1 = view_of(*g.ps, g.ps->params(), "start_embedding"), e1 = view_of(*g.ps, g.ps->params(), "lm_head.weight");
  double worst = 0;
  int n = 0;
  for (int j = 0; j < 64; j++) {
    if (std::fabs(gs[j]) < 1e-4) continue;  // Adam's first step is lr·sign(g) when |g| >> eps
    const double moved = std::fabs(100 * (s1[j] - s0[j]));  // the vector the model is fed
    worst = std::max(worst, std::fabs(moved - 100 * ac.lr) / (100 * ac.lr));
    n++;
  }
  double plain = 0;
  for (size_t j = 0; j < e0.size(); j++) plain = std::max(plain, std::fabs(e1[j] - e0[j]));
  fprintf(stdout, "    %d coordinates: 100·start moved 100·lr within %.2e relative; a plain weight moves <= %.3g\n", n, worst, plain);
  QS_EXPECT(n > 32 && worst < 1e-2, "100·start_embedding moved off 100·lr by %g (%d coords)", worst, n);
  QS_EXPECT(plain < 1.01 * ac.lr, "a plain weight moved %g", plain);
}

// ---------------------------------------------------------------------------------------------
// §9.16 the base K/V shared across passes = recomputing it per pass

QS_TEST(shared_base_equals_per_pass_base) {
  Rng rng(37);
  const int B = 2, T = 8, P = 2, M = 2;
  QuietStarOptions o = qs_opts(5, 3, P);
  o.policy_loss_beta = 0;  // the centring differs between the two layouts; the NLL terms do not
  Rig g = make_rig(qs_llama(), o, DType::F64, 12);
  QuietStarOptions o1 = o;
  o1.n_passes = 1;
  Rig h = make_rig(qs_llama(), o1, DType::F64, 12);
  Batch b = make_batch(rng, B, T, 2);
  Batch bb;  // every document repeated P times as its own document
  bb.B = B * P, bb.T = T;
  for (int d = 0; d < B; d++)
    for (int p = 0; p < P; p++) {
      bb.ids.insert(bb.ids.end(), b.ids.begin() + d * T, b.ids.begin() + (d + 1) * T);
      bb.labels.insert(bb.labels.end(), b.labels.begin() + d * T, b.labels.begin() + (d + 1) * T);
      bb.valid.insert(bb.valid.end(), b.valid.begin() + d * T, b.valid.begin() + (d + 1) * T);
    }
  // rows r = b·P + p in one layout are documents r in the other: same noise stream, same thoughts
  std::vector<int32_t> t1 = run_sample(g, b, 5), t2 = run_sample(h, bb, 5);
  QS_EXPECT(t1 == t2, "thoughts differ between the shared and the repeated layout");
  (void)M;
  zero_grads(g), zero_grads(h);
  QuietStarMetrics m1, m2;
  QS_EXPECT(run_fb(g, b, t1, true, &m1).ok() && run_fb(h, bb, t2, true, &m2).ok(), "forward_backward");
  std::vector<double> c1 = debug(g, "chain_hidden"), c2 = debug(h, "chain_hidden");
  std::vector<double> n1 = debug(g, "talk_nll"), n2 = debug(h, "talk_nll");
  check_close("chain hidden shared vs per pass", c1.data(), c2.data(), c2.size(), 1e-12, 1e-12);
  check_close("talk NLL shared vs per pass", n1.data(), n2.data(), n2.size(), 1e-12, 1e-12);
  QS_EXPECT(std::fabs(m1.loss - m2.loss) < 1e-12, "loss %.15g vs %.15g", m1.loss, m2.loss);
  std::vector<double> g1 = doubles(g.ps->grads()), g2 = doubles(h.ps->grads());
  check_close("gradients shared vs per pass", g1.data(), g2.data(), g2.size(), 1e-9, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// determinism across thread counts, float32 vs float64

QS_TEST(step_is_deterministic_across_threads) {
  Rng rng(39);
  Batch b = make_batch(rng, 2, 12, 3);
  std::vector<float> gsum[2];
  std::vector<int32_t> ths[2];
  double loss[2];
  for (int t = 0; t < 2; t++) {
    Rig g = make_rig(qs_llama(), qs_opts(6, 3, 2), DType::F32, 14, false, t + 1);
    zero_grads(g);
    Tensor th;
    QuietStarMetrics mt;
    Status st = g.e->run_sync([&] {
      return g.q->step(i32(*g.e, {2, 12}, b.ids), u8(*g.e, {2, 12}, b.valid), i32(*g.e, {2, 12}, b.labels), 9, 1.0, &mt, &th);
    });
    QS_EXPECT(st.ok(), "step: %s", st.to_string().c_str());
    gsum[t].assign(g.ps->grads().data<float>(), g.ps->grads().data<float>() + g.ps->grads().numel());
    ths[t].assign(th.data<int32_t>(), th.data<int32_t>() + th.numel());
    loss[t] = mt.loss;
  }
  QS_EXPECT(ths[0] == ths[1] && loss[0] == loss[1] && gsum[0] == gsum[1], "1 and 2 threads differ (loss %.9g vs %.9g)", loss[0], loss[1]);
}

// The step's row moves (cpu/quietstar_heads.h) against their one-line definitions.
QS_TEST(row_moves_match_their_definitions) {
  const int D = 5;
  const int64_t rows = 7, n = 19;
  Rng r(42);
  std::vector<int64_t> idx(n);
  for (auto& x : idx) x = r.below((int)rows);
  const auto src = random_vector<double>(r, (size_t)n * D), vec = random_vector<double>(r, D);
  cpu::ScatterLists L;
  cpu::scatter_lists(idx.data(), n, &L);
  // lists: distinct increasing destinations, sources increasing within each, every k once
  QS_EXPECT(L.start.size() == L.dest.size() + 1 && L.start.back() == n && L.from.size() == (size_t)n, "list sizes");
  for (size_t j = 0; j + 1 < L.dest.size(); j++) QS_EXPECT(L.dest[j] < L.dest[j + 1], "destinations not increasing");
  for (size_t j = 0; j < L.dest.size(); j++)
    for (int64_t q = L.start[j]; q < L.start[j + 1]; q++) {
      QS_EXPECT(idx[L.from[q]] == L.dest[j], "source %lld listed under the wrong destination", (long long)L.from[q]);
      if (q > L.start[j]) QS_EXPECT(L.from[q - 1] < L.from[q], "sources not increasing");
    }
  std::vector<double> got((size_t)rows * D, 1.0), want = got;
  cpu::scatter_add_rows<double>(got.data(), src.data(), L.dest.data(), L.start.data(), L.from.data(),
                                (int64_t)L.dest.size(), D, 0.5);
  for (int64_t k = 0; k < n; k++)
    for (int c = 0; c < D; c++) want[idx[k] * D + c] += 0.5 * src[k * D + c];
  check_close("scatter_add_rows", got.data(), want.data(), got.size(), 1e-14, 1e-14);
  std::vector<double> g((size_t)n * D);
  cpu::gather_rows<double>(g.data(), want.data(), idx.data(), n, D, 2.0);
  for (int64_t k = 0; k < n; k++)
    for (int c = 0; c < D; c++) QS_EXPECT(g[k * D + c] == 2.0 * want[idx[k] * D + c], "gather_rows at %lld", (long long)k);
  std::vector<double> sum(D, 1.0), sum_want(D, 0.0);
  cpu::sum_rows<double>(sum.data(), src.data(), idx.data(), n, D, 3.0);  // src rows idx[k] < rows <= n: in range
  for (int c = 0; c < D; c++) {
    for (int64_t k = 0; k < n; k++) sum_want[c] += src[idx[k] * D + c];
    sum_want[c] = 1.0 + 3.0 * sum_want[c];
  }
  check_close("sum_rows", sum.data(), sum_want.data(), D, 1e-14, 1e-14);
  std::vector<double> fill((size_t)rows * D, 9.0);
  const int64_t two[2] = {1, 4};
  cpu::fill_rows<double>(fill.data(), vec.data(), two, 2, D, -1.0);
  for (int64_t row = 0; row < rows; row++)
    for (int c = 0; c < D; c++) {
      const double w = row == 1 || row == 4 ? -vec[c] : 9.0;
      QS_EXPECT(fill[row * D + c] == w, "fill_rows at row %lld", (long long)row);
    }
}

// recompute_activations keeps only each layer's output and recomputes the rest in backward:
// the same deterministic kernels run on the same inputs, so loss and gradients are bit-identical,
// and the packed pass's buffers shrink.
QS_TEST(recomputed_activations_give_identical_gradients) {
  Rng rng(41);
  Batch b = make_batch(rng, 2, 10, 2);
  std::vector<float> grads[2];
  double loss[2];
  int64_t bytes[2];
  for (int k = 0; k < 2; k++) {
    QuietStarOptions o = qs_opts(6, 3, 2);
    o.recompute_activations = k == 1;
    Rig g = make_rig(qs_llama(), o, DType::F32, 17, false);
    zero_grads(g);
    QuietStarMetrics mt;
    Status st = g.e->run_sync([&] {
      return g.q->step(i32(*g.e, {2, 10}, b.ids), u8(*g.e, {2, 10}, b.valid), i32(*g.e, {2, 10}, b.labels), 5, 1.0, &mt,
                       nullptr);
    });
    QS_EXPECT(st.ok(), "step (recompute %d): %s", k, st.to_string().c_str());
    grads[k].assign(g.ps->grads().data<float>(), g.ps->grads().data<float>() + g.ps->grads().numel());
    loss[k] = mt.loss;
    bytes[k] = g.e->memory().host_peak;
  }
  QS_EXPECT(loss[0] == loss[1], "loss %.9g vs %.9g", loss[0], loss[1]);
  QS_EXPECT(grads[0] == grads[1], "gradients differ with recomputation");
  printf("    host peak: %lld bytes kept, %lld recomputed\n", (long long)bytes[0], (long long)bytes[1]);
  QS_EXPECT(bytes[1] < bytes[0], "recomputation did not save memory (%lld vs %lld)", (long long)bytes[1],
            (long long)bytes[0]);
}

QS_TEST_MAIN()
