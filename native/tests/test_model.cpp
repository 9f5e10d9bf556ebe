// test_model.cpp: the whole transformer (native/core/model*.cpp over cpu/transformer.cpp).
//
//   - configuration checks and parameter names (Hugging Face names and shapes);
//   - the forward against an independent textbook implementation in double (this file's
//     reference_logits), for GPT-2 and for a Llama with GQA, biases, a sliding window and an
//     untied head;
//   - float64 whole-model finite-difference gradient checks: a sample of coordinates of every
//     parameter view plus a random direction per view (gradcheck.h), with ignored targets;
//   - backward's contract: grads += loss_scale · d(mean loss), repeated backward accumulates;
//   - inference: token losses agree with forward's mean and with the logits; last-only logits;
//     KV-cached decoding (one token at a time, a prefill, left padding) equals full logits;
//   - determinism across 1 and 2 threads; weight initialisation; input validation.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/lmhead_xent.h"
#include "gradcheck.h"
#include "harness.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"

using namespace qs;
using namespace qs_test;

// ---------------------------------------------------------------------------------------------
// helpers

static std::unique_ptr<Engine> make_engine(int threads = 0) {
  EngineOptions o;
  o.device = "cpu";
  o.threads = threads;
  std::unique_ptr<Engine> e;
  Status st = Engine::create(o, &e);
  if (!st.ok()) fprintf(stdout, "    engine: %s\n", st.to_string().c_str());
  return e;
}

static ModelConfig tiny_gpt2() {
  ModelConfig c;
  c.family = ModelFamily::GPT2;
  c.vocab_size = 11, c.d_model = 8, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.head_dim = 4;
  c.d_ff = 12, c.max_seq_len = 9, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

// GQA (4 query heads, 2 kv heads), every optional bias, untied head, sliding window.
static ModelConfig tiny_llama() {
  ModelConfig c;
  c.family = ModelFamily::Llama;
  c.vocab_size = 13, c.d_model = 12, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
  c.d_ff = 10, c.max_seq_len = 16, c.norm_eps = 1e-6, c.rope_theta = 500.0, c.tie_embeddings = false;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.sliding_window = 4;
  return c;
}

struct Built {
  std::shared_ptr<ParamSet> params;
  std::unique_ptr<Model> model;
};

static Built build(Engine& e, const ModelConfig& c, DType dtype) {
  Built b;
  ParamLayout layout;
  Status st = ParamLayout::create(model_param_specs(c), &layout);
  QS_EXPECT(st.ok(), "layout: %s", st.to_string().c_str());
  std::unique_ptr<ParamSet> ps;
  st = ParamSet::create(e, dtype, layout, true, &ps);
  QS_EXPECT(st.ok(), "params: %s", st.to_string().c_str());
  b.params = std::move(ps);
  st = Model::create(e, c, b.params, &b.model);
  QS_EXPECT(st.ok(), "model: %s", st.to_string().c_str());
  return b;
}

// Parameters with enough spread that every nonlinearity matters: matrices N(0, 0.3), norm gains
// 1 + N(0, 0.1), biases N(0, 0.1). Same values for f32 and f64 builds (rounded through float).
static void randomize(ParamSet& p, uint64_t seed) {
  Rng rng(seed);
  for (const ParamEntry& e : p.layout().entries()) {
    bool bias = e.name.size() > 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0;
    for (int64_t i = 0; i < e.numel; i++) {
      double v = e.shape.size() >= 2 ? 0.3 * rng.normal() : bias ? 0.1 * rng.normal() : 1.0 + 0.1 * rng.normal();
      v = (double)(float)v;
      if (p.params().dtype() == DType::F64) p.params().data<double>()[e.offset + i] = v;
      else p.params().data<float>()[e.offset + i] = (float)v;
    }
  }
}

static Tensor i32_tensor(Engine& e, int B, int T, const std::vector<int32_t>& v) {
  Tensor t;
  e.empty(DType::I32, {B, T}, &t);
  std::memcpy(t.raw(), v.data(), sizeof(int32_t) * v.size());
  return t;
}

static std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> v(t.numel());
  for (int64_t i = 0; i < t.numel(); i++)
    v[i] = t.dtype() == DType::F64 ? t.data<double>()[i] : (double)t.data<float>()[i];
  return v;
}

static std::vector<double> view_values(ParamSet& p, const Tensor& flat, const std::string& name) {
  Tensor v;
  p.view(flat, name, &v);
  return to_doubles(v);
}

static double run_forward(Engine& e, Model& m, const Tensor& ids, const Tensor& tg, int64_t* count = nullptr) {
  double loss = 0;
  int64_t n = 0;
  Status st = e.run_sync([&] { return m.forward(ids, tg, &loss, &n); });
  QS_EXPECT(st.ok(), "forward: %s", st.to_string().c_str());
  if (count) *count = n;
  return loss;
}

static void run_backward(Engine& e, Model& m, double scale) {
  Status st = e.run_sync([&] { return m.backward(scale); });
  QS_EXPECT(st.ok(), "backward: %s", st.to_string().c_str());
}

static Tensor run_logits(Engine& e, Model& m, const Tensor& ids, bool last_only) {
  Tensor out;
  Status st = e.run_sync([&] { return m.logits(ids, last_only, &out); });
  QS_EXPECT(st.ok(), "logits: %s", st.to_string().c_str());
  return out;
}

static bool quiet_close_all(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  for (size_t i = 0; i < want.size(); i++)
    if (!(std::fabs(got[i] - want[i]) <= tol + tol * std::fabs(want[i]))) return false;
  return got.size() == want.size();
}

static std::vector<int32_t> random_ids(Rng& rng, int n, int V) {
  std::vector<int32_t> v(n);
  for (auto& x : v) x = rng.below(V);
  return v;
}

// ---------------------------------------------------------------------------------------------
// reference forward: textbook loops in double, straight from the HF definitions

static std::vector<double> reference_logits(ParamSet& p, const ModelConfig& c, const std::vector<int32_t>& ids, int B,
                                            int T) {
  auto W = [&](const std::string& name) { return view_values(p, p.params(), name); };
  auto has = [&](const std::string& name) { return p.layout().find(name) != nullptr; };
  const bool g2 = c.family == ModelFamily::GPT2;
  const int D = c.d_model, H = c.n_heads, Hkv = c.n_kv_heads, hd = c.head_dim, F = c.d_ff, V = c.vocab_size;
  const int Q = H * hd, KV = Hkv * hd;
  auto norm = [&](const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>* b) {
    std::vector<double> y(D);
    if (g2) {
      double mean = 0, var = 0;
      for (double v : x) mean += v;
      mean /= D;
      for (double v : x) var += (v - mean) * (v - mean);
      var /= D;
      for (int i = 0; i < D; i++) y[i] = (x[i] - mean) / std::sqrt(var + c.norm_eps) * w[i] + (b ? (*b)[i] : 0);
    } else {
      double ms = 0;
      for (double v : x) ms += v * v;
      ms /= D;
      for (int i = 0; i < D; i++) y[i] = x[i] / std::sqrt(ms + c.norm_eps) * w[i];
    }
    return y;
  };
  // y (n) = x (k) · W, W [k, n] (in_out) or [n, k] (out_in), plus bias
  auto lin = [&](const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>* b, int k, int n,
                 bool out_in, int col0 = 0, int ld = -1) {
    if (ld < 0) ld = n;
    std::vector<double> y(n);
    for (int j = 0; j < n; j++) {
      double s = b ? (*b)[col0 + j] : 0;
      for (int i = 0; i < k; i++) s += x[i] * (out_in ? w[(size_t)j * k + i] : w[(size_t)i * ld + col0 + j]);
      y[j] = s;
    }
    return y;
  };
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    int half = hd / 2;
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < half; i++) {
        double a = pos * std::pow(c.rope_theta, -2.0 * i / hd);
        double x1 = v[h * hd + i], x2 = v[h * hd + i + half];
        v[h * hd + i] = x1 * std::cos(a) - x2 * std::sin(a);
        v[h * hd + i + half] = x2 * std::cos(a) + x1 * std::sin(a);
      }
  };
  std::vector<double> wte = W(g2 ? "transformer.wte.weight" : "model.embed_tokens.weight");
  std::vector<double> head = c.tie_embeddings ? wte : W("lm_head.weight");
  std::vector<double> out((size_t)B * T * V);
  for (int b = 0; b < B; b++) {
    std::vector<std::vector<double>> x(T, std::vector<double>(D));
    for (int t = 0; t < T; t++)
      for (int i = 0; i < D; i++) x[t][i] = wte[(size_t)ids[b * T + t] * D + i];
    if (g2) {
      std::vector<double> wpe = W("transformer.wpe.weight");
      for (int t = 0; t < T; t++)
        for (int i = 0; i < D; i++) x[t][i] += wpe[(size_t)t * D + i];
    }
    for (int l = 0; l < c.n_layers; l++) {
      std::string p = g2 ? "transformer.h." + std::to_string(l) + "." : "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> q(T), k(T), v(T);
      for (int t = 0; t < T; t++) {
        if (g2) {
          auto w1 = W(p + "ln_1.weight"), b1 = W(p + "ln_1.bias"), wa = W(p + "attn.c_attn.weight"), ba = W(p + "attn.c_attn.bias");
          auto h = norm(x[t], w1, &b1);
          q[t] = lin(h, wa, &ba, D, D, false, 0, 3 * D);
          k[t] = lin(h, wa, &ba, D, D, false, D, 3 * D);
          v[t] = lin(h, wa, &ba, D, D, false, 2 * D, 3 * D);
        } else {
          auto h = norm(x[t], W(p + "input_layernorm.weight"), nullptr);
          std::vector<double> bq, bk, bv;
          if (c.qkv_bias) bq = W(p + "self_attn.q_proj.bias"), bk = W(p + "self_attn.k_proj.bias"), bv = W(p + "self_attn.v_proj.bias");
          q[t] = lin(h, W(p + "self_attn.q_proj.weight"), c.qkv_bias ? &bq : nullptr, D, Q, true);
          k[t] = lin(h, W(p + "self_attn.k_proj.weight"), c.qkv_bias ? &bk : nullptr, D, KV, true);
          v[t] = lin(h, W(p + "self_attn.v_proj.weight"), c.qkv_bias ? &bv : nullptr, D, KV, true);
          rope(q[t], H, t);
          rope(k[t], Hkv, t);
        }
      }
      std::vector<std::vector<double>> att(T, std::vector<double>(Q, 0.0));
      for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
          int kh = h / (H / Hkv);
          std::vector<double> s(T, -INFINITY);
          double mx = -INFINITY;
          for (int u = 0; u <= t; u++) {
            if (c.sliding_window > 0 && t - u >= c.sliding_window) continue;
            double d = 0;
            for (int i = 0; i < hd; i++) d += q[t][h * hd + i] * k[u][kh * hd + i];
            s[u] = d / std::sqrt((double)hd);
            mx = std::max(mx, s[u]);
          }
          double z = 0;
          for (int u = 0; u <= t; u++) z += std::isinf(s[u]) ? 0 : std::exp(s[u] - mx);
          for (int u = 0; u <= t; u++) {
            if (std::isinf(s[u])) continue;
            double pr = std::exp(s[u] - mx) / z;
            for (int i = 0; i < hd; i++) att[t][h * hd + i] += pr * v[u][kh * hd + i];
          }
        }
      for (int t = 0; t < T; t++) {
        std::vector<double> o;
        if (g2) {
          auto bo = W(p + "attn.c_proj.bias");
          o = lin(att[t], W(p + "attn.c_proj.weight"), &bo, D, D, false);
        } else {
          std::vector<double> bo;
          if (c.o_bias) bo = W(p + "self_attn.o_proj.bias");
          o = lin(att[t], W(p + "self_attn.o_proj.weight"), c.o_bias ? &bo : nullptr, Q, D, true);
        }
        for (int i = 0; i < D; i++) x[t][i] += o[i];
        std::vector<double> m;
        if (g2) {
          auto w2 = W(p + "ln_2.weight"), b2 = W(p + "ln_2.bias"), bf = W(p + "mlp.c_fc.bias"), bp = W(p + "mlp.c_proj.bias");
          auto h = norm(x[t], w2, &b2);
          auto f = lin(h, W(p + "mlp.c_fc.weight"), &bf, D, F, false);
          for (double& u : f) u = 0.5 * u * (1 + std::tanh(std::sqrt(2 / M_PI) * (u + 0.044715 * u * u * u)));
          m = lin(f, W(p + "mlp.c_proj.weight"), &bp, F, D, false);
        } else {
          auto h = norm(x[t], W(p + "post_attention_layernorm.weight"), nullptr);
          std::vector<double> bg, bu, bd;
          if (c.mlp_bias) bg = W(p + "mlp.gate_proj.bias"), bu = W(p + "mlp.up_proj.bias"), bd = W(p + "mlp.down_proj.bias");
          auto gt = lin(h, W(p + "mlp.gate_proj.weight"), c.mlp_bias ? &bg : nullptr, D, F, true);
          auto up = lin(h, W(p + "mlp.up_proj.weight"), c.mlp_bias ? &bu : nullptr, D, F, true);
          for (int i = 0; i < F; i++) gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
          m = lin(gt, W(p + "mlp.down_proj.weight"), c.mlp_bias ? &bd : nullptr, F, D, true);
        }
        for (int i = 0; i < D; i++) x[t][i] += m[i];
      }
    }
    for (int t = 0; t < T; t++) {
      std::vector<double> hf;
      if (g2) {
        auto bf = W("transformer.ln_f.bias");
        hf = norm(x[t], W("transformer.ln_f.weight"), &bf);
      } else {
        hf = norm(x[t], W("model.norm.weight"), nullptr);
      }
      for (int vv = 0; vv < V; vv++) {
        double s = 0;
        for (int i = 0; i < D; i++) s += hf[i] * head[(size_t)vv * D + i];
        out[((size_t)b * T + t) * V + vv] = s;
      }
    }
  }
  (void)has;
  return out;
}

// ---------------------------------------------------------------------------------------------
// configuration and names

QS_TEST(config_errors_name_the_field) {
  ModelConfig c = tiny_llama();
  c.n_heads = 8, c.n_kv_heads = 3;
  Status st = c.validate();
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT, "nKvHeads 3 / nHeads 8 accepted");
  QS_EXPECT(st.message().find("config.nKvHeads: 3 does not divide config.nHeads 8") == 0, "%s", st.message().c_str());
  struct Bad { const char* field; void (*edit)(ModelConfig&); };
  const Bad bad[] = {
      {"config.vocabSize", [](ModelConfig& c) { c.vocab_size = 0; }},
      {"config.dModel", [](ModelConfig& c) { c.d_model = -1; }},
      {"config.nLayers", [](ModelConfig& c) { c.n_layers = 0; }},
      {"config.headDim", [](ModelConfig& c) { c.head_dim = 3; }},
      {"config.dFF", [](ModelConfig& c) { c.d_ff = 0; }},
      {"config.maxSeqLen", [](ModelConfig& c) { c.max_seq_len = 0; }},
      {"config.normEps", [](ModelConfig& c) { c.norm_eps = -1; }},
      {"config.ropeTheta", [](ModelConfig& c) { c.rope_theta = 0; }},
      {"config.slidingWindow", [](ModelConfig& c) { c.sliding_window = -2; }},
  };
  for (const Bad& b : bad) {
    ModelConfig x = tiny_llama();
    b.edit(x);
    Status s = x.validate();
    QS_EXPECT(!s.ok() && s.message().find(b.field) == 0, "%s: %s", b.field, s.to_string().c_str());
  }
  ModelConfig g = tiny_gpt2();
  g.head_dim = 3;
  QS_EXPECT(g.validate().message().find("config.headDim") == 0, "GPT-2 headDim x nHeads != dModel accepted");
  QS_EXPECT(tiny_gpt2().validate().ok() && tiny_llama().validate().ok(), "valid configs refused");
}

QS_TEST(param_specs_use_hugging_face_names_and_shapes) {
  ModelConfig g = tiny_gpt2();
  auto s = model_param_specs(g);
  QS_EXPECT(s.size() == 2 + 12 * 2 + 2, "GPT-2 has %zu views", s.size());
  QS_EXPECT(s[0].name == "transformer.wte.weight" && s[0].shape == Shape({11, 8}) && s[0].decay, "wte");
  QS_EXPECT(s[1].name == "transformer.wpe.weight" && s[1].shape == Shape({9, 8}), "wpe");
  QS_EXPECT(s[4].name == "transformer.h.0.attn.c_attn.weight" && s[4].shape == Shape({8, 24}), "c_attn [in, out]");
  QS_EXPECT(s[10].name == "transformer.h.0.mlp.c_fc.weight" && s[10].shape == Shape({8, 12}), "c_fc [in, out]");
  QS_EXPECT(s[2].name == "transformer.h.0.ln_1.weight" && !s[2].decay, "norm gains do not decay");
  QS_EXPECT(s.back().name == "transformer.ln_f.bias" && !s.back().decay, "ln_f.bias last");
  ModelConfig l = tiny_llama();
  auto t = model_param_specs(l);
  QS_EXPECT(t.size() == 1 + 2 * 16 + 1 + 1, "Llama has %zu views", t.size());
  QS_EXPECT(t[2].name == "model.layers.0.self_attn.q_proj.weight" && t[2].shape == Shape({16, 12}), "q_proj [out, in]");
  QS_EXPECT(t[4].name == "model.layers.0.self_attn.k_proj.weight" && t[4].shape == Shape({8, 12}), "k_proj GQA");
  QS_EXPECT(t.back().name == "lm_head.weight" && t.back().shape == Shape({13, 12}), "untied lm_head");
  l.qkv_bias = l.o_bias = l.mlp_bias = false;
  l.tie_embeddings = true;
  QS_EXPECT(model_param_specs(l).size() == 1 + 2 * 9 + 1, "Llama without biases");
}

QS_TEST(create_checks_the_layout) {
  auto e = make_engine();
  ModelConfig c = tiny_llama();
  ModelConfig other = c;
  other.d_ff = 11;
  ParamLayout layout;
  ParamLayout::create(model_param_specs(other), &layout);
  std::unique_ptr<ParamSet> ps;
  ParamSet::create(*e, DType::F32, layout, false, &ps);
  std::unique_ptr<Model> m;
  Status st = Model::create(*e, c, std::shared_ptr<ParamSet>(std::move(ps)), &m);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("mlp.gate_proj.weight' has shape [11, 12], the config needs [10, 12]") != std::string::npos,
            "%s", st.to_string().c_str());
  ModelConfig untied = c;
  ParamLayout l2;
  c.tie_embeddings = true;  // params have lm_head.weight, config does not use it
  ParamLayout::create(model_param_specs(untied), &l2);
  ParamSet::create(*e, DType::F32, l2, false, &ps);
  st = Model::create(*e, c, std::shared_ptr<ParamSet>(std::move(ps)), &m);
  QS_EXPECT(!st.ok() && st.message().find("lm_head.weight") != std::string::npos, "%s", st.to_string().c_str());
}

// ---------------------------------------------------------------------------------------------
// forward against the reference

static void check_reference(const ModelConfig& c, const char* label) {
  auto e = make_engine();
  Built b = build(*e, c, DType::F64);
  randomize(*b.params, 7);
  Rng rng(3);
  const int B = 2, T = 7;
  std::vector<int32_t> ids = random_ids(rng, B * T, c.vocab_size);
  Tensor logits = run_logits(*e, *b.model, i32_tensor(*e, B, T, ids), false);
  std::vector<double> got = to_doubles(logits), want = reference_logits(*b.params, c, ids, B, T);
  QS_EXPECT(logits.shape() == Shape({B, T, c.vocab_size}), "logits shape %s", logits.describe().c_str());
  check_close(label, got.data(), want.data(), want.size(), 1e-9, 1e-9);
}

QS_TEST(gpt2_forward_matches_reference) { check_reference(tiny_gpt2(), "gpt2 logits f64 vs reference"); }
QS_TEST(llama_forward_matches_reference) { check_reference(tiny_llama(), "llama logits f64 vs reference"); }
QS_TEST(llama_tied_no_bias_matches_reference) {
  ModelConfig c = tiny_llama();
  c.qkv_bias = c.o_bias = c.mlp_bias = false, c.tie_embeddings = true, c.sliding_window = 0, c.n_kv_heads = 1;
  check_reference(c, "llama (MQA, tied) logits vs reference");
}

// ---------------------------------------------------------------------------------------------
// gradients

// logits_budget 0: the LM head recomputes its logits in backward; default: it keeps its gradient.
static void gradcheck_model(const ModelConfig& c, int64_t logits_budget = -1) {
  auto e = make_engine();
  Built b = build(*e, c, DType::F64);
  if (logits_budget >= 0) b.model->set_logits_budget(logits_budget);
  randomize(*b.params, 11);
  Rng rng(5);
  const int B = 2, T = 7;
  std::vector<int32_t> ids = random_ids(rng, B * T, c.vocab_size), tg = random_ids(rng, B * T, c.vocab_size);
  tg[2] = tg[9] = tg[13] = -100;
  Tensor ids_t = i32_tensor(*e, B, T, ids), tg_t = i32_tensor(*e, B, T, tg);
  ParamSet& p = *b.params;
  p.zero_grad();
  int64_t count = 0;
  run_forward(*e, *b.model, ids_t, tg_t, &count);
  QS_EXPECT(count == B * T - 3, "count %lld", (long long)count);
  run_backward(*e, *b.model, 1.0);
  for (const ParamEntry& entry : p.layout().entries()) {
    Tensor view;
    p.view(p.params(), entry.name, &view);
    std::vector<double> x = to_doubles(view);
    std::vector<double> analytic = view_values(p, p.grads(), entry.name);
    double* dst = view.data<double>();
    auto loss = [&]() {
      std::memcpy(dst, x.data(), sizeof(double) * x.size());
      return run_forward(*e, *b.model, ids_t, tg_t);
    };
    check_gradient(entry.name.c_str(), x, analytic, loss, rng, 10, 1e-5, 2e-5, 1e-9);
    std::memcpy(dst, x.data(), sizeof(double) * x.size());
  }
}

QS_TEST(gpt2_gradients_f64) { gradcheck_model(tiny_gpt2()); }
QS_TEST(llama_gqa_bias_window_gradients_f64) { gradcheck_model(tiny_llama()); }
QS_TEST(gradients_with_recomputed_head_f64) {
  gradcheck_model(tiny_gpt2(), 0);
  gradcheck_model(tiny_llama(), 0);
}
// One kv head: B x Hkv = 2 (batch row, kv head) tasks are too few for the gemm attention
// backward, so this one runs the flash kernel's backward (the others run the gemm one).
QS_TEST(llama_mqa_tied_gradients_f64) {
  ModelConfig c = tiny_llama();
  c.n_kv_heads = 1, c.tie_embeddings = true, c.qkv_bias = false, c.sliding_window = 0;
  gradcheck_model(c);
}

static void check_backward_accumulates(int64_t logits_budget) {
  auto e = make_engine();
  ModelConfig c = tiny_llama();
  Built b = build(*e, c, DType::F64);
  b.model->set_logits_budget(logits_budget);
  randomize(*b.params, 2);
  Rng rng(9);
  const int B = 2, T = 5;
  std::vector<int32_t> ids = random_ids(rng, B * T, c.vocab_size), tg = random_ids(rng, B * T, c.vocab_size);
  tg[0] = -100;
  Tensor ids_t = i32_tensor(*e, B, T, ids), tg_t = i32_tensor(*e, B, T, tg);
  ParamSet& p = *b.params;
  const int64_t n = p.layout().total();
  p.zero_grad();
  run_forward(*e, *b.model, ids_t, tg_t);
  run_backward(*e, *b.model, 1.0);
  std::vector<double> g1 = to_doubles(p.grads());
  // prefilled grads, then backward(0.75) twice from the same forward: prefill + 1.5 g1
  std::vector<double> pre = random_vector<double>(rng, n);
  std::memcpy(p.grads().raw(), pre.data(), sizeof(double) * n);
  run_backward(*e, *b.model, 0.75);
  run_backward(*e, *b.model, 0.75);
  std::vector<double> got = to_doubles(p.grads()), want(n);
  for (int64_t i = 0; i < n; i++) want[i] = pre[i] + 1.5 * g1[i];
  check_close("grads = prefill + 2 x 0.75 x g", got.data(), want.data(), n, 1e-12, 1e-12);
  // all targets ignored: loss 0, count 0, backward adds nothing
  std::vector<int32_t> none(B * T, -100);
  int64_t count = -1;
  double loss = run_forward(*e, *b.model, ids_t, i32_tensor(*e, B, T, none), &count);
  QS_EXPECT(loss == 0 && count == 0, "all ignored: loss %g count %lld", loss, (long long)count);
  run_backward(*e, *b.model, 1.0);
  std::vector<double> after = to_doubles(p.grads());
  QS_EXPECT(after == got, "backward with no counted targets changed the grads");
}

QS_TEST(backward_accumulates_and_scales) {
  check_backward_accumulates((int64_t)1 << 30);
  check_backward_accumulates(0);
}

// The LM head's kept-gradient pair (the model's default) against the recomputing pair, with
// ignored rows in the middle (gathered) and several vocabulary chunks.
QS_TEST(lmhead_kept_gradient_matches_recompute) {
  Rng rng(13);
  for (int chunk : {0, 5}) {
    const int N = 9, C = 7, V = 13;
    std::vector<double> h = random_vector<double>(rng, N * C), W = random_vector<double>(rng, V * C);
    std::vector<int32_t> tg = random_ids(rng, N, V);
    tg[3] = tg[4] = -100;
    std::vector<double> loss1(N), loss2(N), G(N * V), dh1(N * C, 0.5), dh2(N * C, 0.5), dW1(V * C, 0.25), dW2(V * C, 0.25);
    std::vector<float> lse1(N), lse2(N);
    const double g = 0.3;
    std::vector<double> dl(N);
    for (int n = 0; n < N; n++) dl[n] = tg[n] == -100 ? 0 : g;
    qs::cpu::lmhead_xent_forward<double>(loss1.data(), lse1.data(), h.data(), W.data(), tg.data(), N, C, V, -100, chunk);
    qs::cpu::lmhead_xent_backward<double>(dh1.data(), dW1.data(), dl.data(), h.data(), W.data(), tg.data(), lse1.data(), N, C, V,
                                          -100, chunk);
    qs::cpu::lmhead_xent_forward_keep<double>(loss2.data(), lse2.data(), G.data(), h.data(), W.data(), tg.data(), N, C, V, -100,
                                              chunk);
    qs::cpu::lmhead_xent_backward_kept<double>(dh2.data(), dW2.data(), g, G.data(), h.data(), W.data(), tg.data(), N, C, V, -100);
    check_close("kept vs recompute: losses", loss2.data(), loss1.data(), N, 1e-13, 1e-13);
    check_close("kept vs recompute: dh", dh2.data(), dh1.data(), dh1.size(), 1e-12, 1e-12);
    check_close("kept vs recompute: dW", dW2.data(), dW1.data(), dW1.size(), 1e-12, 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// inference

static void check_losses_and_logits(const ModelConfig& c, DType dtype, double tol) {
  auto e = make_engine();
  Built b = build(*e, c, dtype);
  randomize(*b.params, 4);
  Rng rng(21);
  const int B = 3, T = 6, V = c.vocab_size;
  std::vector<int32_t> ids = random_ids(rng, B * T, V), tg = random_ids(rng, B * T, V);
  tg[4] = tg[7] = -100;
  Tensor ids_t = i32_tensor(*e, B, T, ids), tg_t = i32_tensor(*e, B, T, tg);
  double loss = run_forward(*e, *b.model, ids_t, tg_t);
  Tensor losses;
  Status st = e->run_sync([&] { return b.model->token_losses(ids_t, tg_t, &losses); });
  QS_EXPECT(st.ok() && losses.shape() == Shape({B, T}) && losses.dtype() == dtype, "tokenLosses: %s", st.to_string().c_str());
  std::vector<double> tl = to_doubles(losses);
  double sum = 0;
  int n = 0;
  for (int i = 0; i < B * T; i++)
    if (tg[i] != -100) sum += tl[i], n++;
    else QS_EXPECT(tl[i] == 0, "ignored token %d has loss %g", i, tl[i]);
  QS_EXPECT(std::fabs(sum / n - loss) <= tol * std::fabs(loss), "mean token loss %.9g vs forward %.9g", sum / n, loss);
  // token losses = -log_softmax(logits)[target]
  std::vector<double> lg = to_doubles(run_logits(*e, *b.model, ids_t, false));
  std::vector<double> want(B * T, 0.0), got;
  for (int i = 0; i < B * T; i++) {
    if (tg[i] == -100) continue;
    double mx = -INFINITY, z = 0;
    for (int v = 0; v < V; v++) mx = std::max(mx, lg[(size_t)i * V + v]);
    for (int v = 0; v < V; v++) z += std::exp(lg[(size_t)i * V + v] - mx);
    want[i] = mx + std::log(z) - lg[(size_t)i * V + tg[i]];
  }
  check_close("token losses vs log-softmax(logits)", tl.data(), want.data(), want.size(), tol, tol);
  // the last forward's final hidden states times the head give the logits
  Tensor hid;
  Status hs = b.model->last_hidden(&hid);
  QS_EXPECT(hs.ok() && hid.shape() == Shape({B, T, c.d_model}), "last_hidden: %s", hs.to_string().c_str());
  if (hs.ok()) {
    std::vector<double> hv = to_doubles(hid), head = view_values(*b.params, b.params->params(),
        c.tie_embeddings ? (c.family == ModelFamily::GPT2 ? "transformer.wte.weight" : "model.embed_tokens.weight") : "lm_head.weight");
    std::vector<double> hl((size_t)B * T * V);
    for (int i = 0; i < B * T; i++)
      for (int v = 0; v < V; v++) {
        double s = 0;
        for (int k = 0; k < c.d_model; k++) s += hv[(size_t)i * c.d_model + k] * head[(size_t)v * c.d_model + k];
        hl[(size_t)i * V + v] = s;
      }
    check_close("last_hidden x head vs logits", hl.data(), lg.data(), lg.size(), tol, tol);
  }
  // last-only = the last position of the full logits
  std::vector<double> last = to_doubles(run_logits(*e, *b.model, ids_t, true)), want_last;
  for (int bb = 0; bb < B; bb++)
    for (int v = 0; v < V; v++) want_last.push_back(lg[((size_t)bb * T + T - 1) * V + v]);
  check_close("last-only logits", last.data(), want_last.data(), want_last.size(), tol, tol);
}

QS_TEST(token_losses_and_logits_agree) {
  check_losses_and_logits(tiny_gpt2(), DType::F64, 1e-10);
  check_losses_and_logits(tiny_llama(), DType::F64, 1e-10);
  check_losses_and_logits(tiny_gpt2(), DType::F32, 2e-5);
  check_losses_and_logits(tiny_llama(), DType::F32, 2e-5);
}

// Decoding row by row against full-sequence logits. Row b is padded on the left with pad[b]
// invalid slots (positions 0, never attended), then holds its sequence at positions 0..len-1.
static void check_decode(const ModelConfig& c, DType dtype, double tol, int prefill) {
  auto e = make_engine();
  Built b = build(*e, c, dtype);
  randomize(*b.params, 8);
  Rng rng(31);
  const int B = 3, total = 8, V = c.vocab_size;
  const int pad[B] = {0, 2, 1};
  std::vector<int32_t> seq = random_ids(rng, B * total, V);
  // reference: each row alone, full logits of its unpadded sequence
  std::vector<std::vector<double>> ref(B);
  for (int bb = 0; bb < B; bb++) {
    int len = total - pad[bb];
    std::vector<int32_t> row(seq.begin() + bb * total + pad[bb], seq.begin() + (bb + 1) * total);
    ref[bb] = to_doubles(run_logits(*e, *b.model, i32_tensor(*e, 1, len, row), false));
  }
  Status st = e->run_sync([&] { return b.model->reset_cache(B, total + 2); });
  QS_EXPECT(st.ok(), "reset_cache: %s", st.to_string().c_str());
  int slot = 0;
  while (slot < total) {
    int n = slot == 0 ? prefill : 1;
    std::vector<int32_t> ids(B * n), pos(B * n);
    Tensor valid;
    e->empty(DType::U8, {B, n}, &valid);
    for (int bb = 0; bb < B; bb++)
      for (int i = 0; i < n; i++) {
        int s = slot + i;
        bool is_pad = s < pad[bb];
        ids[bb * n + i] = seq[bb * total + s];
        pos[bb * n + i] = is_pad ? 0 : s - pad[bb];
        valid.data<uint8_t>()[bb * n + i] = is_pad ? 0 : 1;
      }
    Tensor out;
    st = e->run_sync([&] { return b.model->decode(i32_tensor(*e, B, n, ids), i32_tensor(*e, B, n, pos), valid, &out); });
    QS_EXPECT(st.ok(), "decode: %s", st.to_string().c_str());
    if (!st.ok()) return;
    slot += n;
    QS_EXPECT(b.model->cache_length() == slot, "cache length %d, want %d", b.model->cache_length(), slot);
    std::vector<double> got = to_doubles(out), want;
    for (int bb = 0; bb < B; bb++) {
      int t = slot - 1 - pad[bb];  // the row's position of its last appended slot
      for (int v = 0; v < V; v++) want.push_back(t >= 0 ? ref[bb][(size_t)t * V + v] : got[(size_t)bb * V + v]);
    }
    if (!quiet_close_all(got, want, tol)) {
      fail(__FILE__, __LINE__, "decode logits after %d slots differ from full logits", slot);
      check_close("decode vs logits", got.data(), want.data(), want.size(), tol, tol);
      return;
    }
  }
  fprintf(stdout, "    decode (%s, prefill %d) matches full logits at every step\n", dtype_name(dtype), prefill);
  // the cache is full after maxLen slots
  std::vector<int32_t> one(B, 0);
  Tensor out;
  e->run_sync([&] { return b.model->decode(i32_tensor(*e, B, 1, one), i32_tensor(*e, B, 1, one), Tensor(), &out); });
  e->run_sync([&] { return b.model->decode(i32_tensor(*e, B, 1, one), i32_tensor(*e, B, 1, one), Tensor(), &out); });
  st = e->run_sync([&] { return b.model->decode(i32_tensor(*e, B, 1, one), i32_tensor(*e, B, 1, one), Tensor(), &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("cache is full") != std::string::npos, "%s",
            st.to_string().c_str());
}

QS_TEST(decode_matches_full_logits) {
  for (int prefill : {1, 3}) {
    check_decode(tiny_gpt2(), DType::F64, 1e-10, prefill);
    check_decode(tiny_llama(), DType::F64, 1e-10, prefill);
    check_decode(tiny_gpt2(), DType::F32, 1e-4, prefill);
    check_decode(tiny_llama(), DType::F32, 1e-4, prefill);
  }
}

// ---------------------------------------------------------------------------------------------
// determinism, initialisation, validation

QS_TEST(training_step_is_deterministic_across_threads) {
  ModelConfig c = tiny_llama();
  c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.d_ff = 96, c.vocab_size = 50, c.max_seq_len = 80;
  ModelConfig g = tiny_gpt2();
  g.d_model = 64, g.n_heads = 4, g.n_kv_heads = 4, g.head_dim = 16, g.d_ff = 128, g.vocab_size = 50, g.max_seq_len = 80;
  for (const ModelConfig& cfg : {c, g}) {
    std::vector<float> grads[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
      auto e = make_engine(k + 1);
      Built b = build(*e, cfg, DType::F32);
      e->run_sync([&] { return b.model->init_weights(123); });
      Rng rng(77);
      const int B = 3, T = 70;
      std::vector<int32_t> ids = random_ids(rng, B * T, cfg.vocab_size), tg = random_ids(rng, B * T, cfg.vocab_size);
      tg[5] = -100;
      loss[k] = run_forward(*e, *b.model, i32_tensor(*e, B, T, ids), i32_tensor(*e, B, T, tg));
      run_backward(*e, *b.model, 1.0);
      const float* gp = b.params->grads().data<float>();
      grads[k].assign(gp, gp + b.params->layout().total());
    }
    QS_EXPECT(loss[0] == loss[1], "loss differs: %.9g vs %.9g", loss[0], loss[1]);
    QS_EXPECT(grads[0] == grads[1], "%s grads differ between 1 and 2 threads",
              cfg.family == ModelFamily::GPT2 ? "gpt2" : "llama");
  }
}

QS_TEST(init_weights_is_deterministic_with_the_documented_statistics) {
  auto e = make_engine();
  ModelConfig c = tiny_gpt2();
  c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 16, c.d_ff = 256, c.n_layers = 4, c.vocab_size = 300;
  Built a = build(*e, c, DType::F32), b = build(*e, c, DType::F32), d = build(*e, c, DType::F32);
  e->run_sync([&] { return a.model->init_weights(5); });
  e->run_sync([&] { return b.model->init_weights(5); });
  e->run_sync([&] { return d.model->init_weights(6); });
  std::vector<double> pa = to_doubles(a.params->params()), pb = to_doubles(b.params->params()), pd = to_doubles(d.params->params());
  QS_EXPECT(pa == pb, "same seed, different weights");
  QS_EXPECT(pa != pd, "different seeds, same weights");
  auto stats = [&](const std::string& name, double* mean, double* sd) {
    std::vector<double> v = view_values(*a.params, a.params->params(), name);
    double s = 0, ss = 0;
    for (double x : v) s += x, ss += x * x;
    *mean = s / v.size();
    *sd = std::sqrt(ss / v.size() - *mean * *mean);
  };
  double m, sd;
  stats("transformer.wte.weight", &m, &sd);
  QS_EXPECT(std::fabs(m) < 0.002 && std::fabs(sd - 0.02) < 0.001, "wte mean %g sd %g", m, sd);
  stats("transformer.h.1.mlp.c_fc.weight", &m, &sd);
  QS_EXPECT(std::fabs(sd - 0.02) < 0.001, "c_fc sd %g", sd);
  stats("transformer.h.2.mlp.c_proj.weight", &m, &sd);
  QS_EXPECT(std::fabs(sd - 0.02 / std::sqrt(8.0)) < 0.0006, "residual c_proj sd %g (want %g)", sd, 0.02 / std::sqrt(8.0));
  stats("transformer.h.0.ln_1.weight", &m, &sd);
  QS_EXPECT(m == 1 && sd == 0, "ln_1 gain mean %g sd %g", m, sd);
  stats("transformer.h.0.attn.c_attn.bias", &m, &sd);
  QS_EXPECT(m == 0 && sd == 0, "bias mean %g sd %g", m, sd);
}

QS_TEST(inputs_are_validated) {
  auto e = make_engine();
  ModelConfig c = tiny_gpt2();
  Built b = build(*e, c, DType::F32);
  Model& m = *b.model;
  double loss;
  int64_t n;
  Status st = e->run_sync([&] { return m.backward(1.0); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("no forward") != std::string::npos, "%s", st.to_string().c_str());
  std::vector<int32_t> ids(2 * 4, 1), tg(2 * 4, 2);
  ids[5] = 11;  // = vocab size
  st = e->run_sync([&] { return m.forward(i32_tensor(*e, 2, 4, ids), i32_tensor(*e, 2, 4, tg), &loss, &n); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("ids[1, 1] = 11 is out of range [0, 11)") != std::string::npos,
            "%s", st.to_string().c_str());
  ids[5] = 1;
  tg[3] = -1;
  st = e->run_sync([&] { return m.forward(i32_tensor(*e, 2, 4, ids), i32_tensor(*e, 2, 4, tg), &loss, &n); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("targets[0, 3] = -1") != std::string::npos, "%s",
            st.to_string().c_str());
  std::vector<int32_t> long_ids(10, 1);
  st = e->run_sync([&] { return m.forward(i32_tensor(*e, 1, 10, long_ids), i32_tensor(*e, 1, 10, long_ids), &loss, &n); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("T = 10 exceeds config.maxSeqLen 9") != std::string::npos,
            "%s", st.to_string().c_str());
  st = e->run_sync([&] { return m.forward(i32_tensor(*e, 2, 4, ids), i32_tensor(*e, 1, 8, tg), &loss, &n); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("'targets' must have shape [2, 4]") != std::string::npos,
            "%s", st.to_string().c_str());
  Tensor f;
  e->empty(DType::F32, {2, 4}, &f);
  Tensor out;
  st = e->run_sync([&] { return m.logits(f, false, &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("'ids' must be int32") != std::string::npos, "%s",
            st.to_string().c_str());
  st = e->run_sync([&] { return m.decode(i32_tensor(*e, 2, 1, {1, 1}), i32_tensor(*e, 2, 1, {0, 0}), Tensor(), &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("resetCache") != std::string::npos, "%s", st.to_string().c_str());
  e->run_sync([&] { return m.reset_cache(2, 4); });
  st = e->run_sync([&] { return m.decode(i32_tensor(*e, 2, 1, {1, 1}), i32_tensor(*e, 2, 1, {0, 9}), Tensor(), &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("positions[1, 0] = 9 is out of range [0, 9)") != std::string::npos,
            "%s", st.to_string().c_str());
  st = e->run_sync([&] { return m.decode(i32_tensor(*e, 3, 1, {1, 1, 1}), i32_tensor(*e, 3, 1, {0, 0, 0}), Tensor(), &out); });
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find("B = 2") != std::string::npos, "%s", st.to_string().c_str());
}

QS_TEST(adamw_training_lowers_the_loss) {
  auto e = make_engine();
  ModelConfig c = tiny_llama();
  c.d_model = 32, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 8, c.d_ff = 64, c.vocab_size = 20;
  Built b = build(*e, c, DType::F32);
  e->run_sync([&] { return b.model->init_weights(1); });
  Rng rng(4);
  const int B = 4, T = 12;
  std::vector<int32_t> ids = random_ids(rng, B * T, c.vocab_size), tg(B * T);
  for (int i = 0; i < B * T; i++) tg[i] = (ids[i] * 7 + 3) % c.vocab_size;  // a function of the current token
  Tensor ids_t = i32_tensor(*e, B, T, ids), tg_t = i32_tensor(*e, B, T, tg);
  AdamWConfig opt;
  opt.lr = 1e-2, opt.weight_decay = 0;
  double first = 0, last = 0;
  for (int step = 0; step < 60; step++) {
    b.params->zero_grad();
    double loss = run_forward(*e, *b.model, ids_t, tg_t);
    run_backward(*e, *b.model, 1.0);
    b.params->adamw_step(opt);
    if (step == 0) first = loss;
    last = loss;
  }
  fprintf(stdout, "    loss %.4f -> %.4f (ln V = %.4f)\n", first, last, std::log((double)c.vocab_size));
  QS_EXPECT(first > 2.5 && last < 0.5, "loss %g -> %g", first, last);
}

QS_TEST_MAIN()
