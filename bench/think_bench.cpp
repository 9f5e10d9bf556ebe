/*
think_bench.cpp: thinking at inference (spec §5) on the CPU: the cost of a thought per generated
token, against plain cached decoding and against the reference's way of evaluating.

Model: Llama style, 4 layers, d_model 256, 4 heads (GQA 4:2), MLP 688, vocab 4096 + the two
thought markers, fp32, random weights; one sequence: a prompt of 64 tokens, then 32 new tokens
(greedy), Quiet-STaR nAhead 8 (5 sampled thought tokens).

Rows (JSON lines on stdout, bench_util.h), for 1 and 2 threads (--quick: 1 thread, one rep):
  decode plain <n>T          tokens/s of Model::decode, one token per step (after the prefill)
  decode thinking <n>T       tokens/s of QuietStar::think_decode: per token the text slot, a
                             branch of nAhead - 1 slots forked on the cache (sampled), mixing,
                             the branch dropped
  decode eval-forward <n>T   tokens/s of the reference's method: for every new token rerun the
                             full eval forward (sample_thoughts + forward over every position,
                             nPasses 1, nAheadTalk 1) over the whole current sequence (plus a
                             filler token, so the last real position is scored), then talk_logits
  thinking / plain <n>T      time-per-token ratio b/a; "baseline" nAhead: the expected multiple
  thinking / eval-forward <n>T  time-per-token ratio b/c (< 1: thinking decode is faster)
Each rate is the best of `reps` runs of the 32 tokens; the three run in turn within each rep.
Usage: bench_think_bench [--quick]
*/
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/transformer.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
namespace cpu = qs::cpu;
using qs_bench::emit;
using qs_bench::lcg_tokens;
using qs_bench::now_s;

static bool ok(const Status& st, const char* what) { return qs_bench::report_ok("think_bench", st, what); }

static Tensor i32(Engine& e, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor t;
  e.empty(DType::I32, shape, &t);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), sizeof(int32_t) * v.size());
  return t;
}

// The greedy next token over the text ids [0, Vt).
static int32_t argmax(const Tensor& logits, int Vt) {
  const float* z = logits.data<float>();
  return (int32_t)(std::max_element(z, z + Vt) - z);
}

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  const int P = 64, G = 32, Vt = 4096;
  ModelConfig c;
  c.family = ModelFamily::Llama;
  c.vocab_size = Vt + 2, c.d_model = 256, c.n_layers = 4, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64;
  c.d_ff = 688, c.max_seq_len = 256, c.norm_eps = 1e-6, c.rope_theta = 10000.0, c.tie_embeddings = false;
  QuietStarOptions o;
  o.n_ahead = 8, o.start_id = Vt, o.end_id = Vt + 1;
  QuietStarOptions oe = o;  // the eval step (spec §4.1)
  oe.n_passes = 1, oe.n_ahead_talk = 1;
  const int reps = quick ? 1 : 2;
  fprintf(stderr, "think_bench: Llama L=%d D=%d V=%d, prompt %d, %d new tokens, nAhead %d\n", c.n_layers, c.d_model,
          c.vocab_size, P, G, o.n_ahead);

  std::vector<int32_t> prompt = lcg_tokens(P, Vt);
  std::vector<int32_t> ppos(P);
  for (int i = 0; i < P; i++) ppos[i] = i;
  ParamLayout layout;
  if (!ok(quietstar_model_layout(c, &layout), "layout")) return 1;

  for (int threads = 1; threads <= (quick ? 1 : 2); threads++) {
    EngineOptions eo;
    eo.device = "cpu";
    eo.threads = threads;
    std::unique_ptr<Engine> e;
    if (!ok(Engine::create(eo, &e), "engine")) return 1;
    std::unique_ptr<ParamSet> ps;
    if (!ok(ParamSet::create(*e, DType::F32, layout, false, &ps), "params")) return 1;
    std::shared_ptr<ParamSet> params(std::move(ps));
    std::unique_ptr<Model> m;
    std::unique_ptr<QuietStar> q, qe;
    if (!ok(Model::create(*e, c, params, &m), "model") || !ok(QuietStar::create(*e, m.get(), o, &q), "quietstar") ||
        !ok(QuietStar::create(*e, m.get(), oe, &qe), "eval quietstar"))
      return 1;
    Status st = e->run_sync([&]() -> Status {
      QS_RETURN_IF_ERROR(m->init_weights(1));
      QS_RETURN_IF_ERROR(q->init_parameters(10, 2));
      Tensor w3;  // a non-zero last mixing layer: the mixing is not skipped by w = 0 anywhere
      QS_RETURN_IF_ERROR(params->view(params->params(), "talk_head.0.4.weight", &w3));
      for (int j = 0; j < c.d_model; j++) w3.data<float>()[j] = (j % 2 ? 0.05f : -0.05f);
      return Status::Ok();
    });
    if (!ok(st, "init")) return 1;

    // (a) plain cached decoding; (b) thinking decoding; (c) the eval forward per token. Each
    // sets `elapsed` to the seconds of its G new tokens (the prompt's prefill excluded).
    double elapsed = 0;
    auto plain = [&]() -> Status {
      Tensor out;
      QS_RETURN_IF_ERROR(m->reset_cache(1, P + G));
      QS_RETURN_IF_ERROR(m->decode(i32(*e, {1, P}, prompt), i32(*e, {1, P}, ppos), Tensor(), &out));
      cpu::profile().reset();  // the profile counts the new tokens only
      const double t0 = now_s();
      for (int k = 0; k < G; k++)
        QS_RETURN_IF_ERROR(m->decode(i32(*e, {1, 1}, {argmax(out, Vt)}), i32(*e, {1, 1}, {P + k}), Tensor(), &out));
      elapsed = now_s() - t0;
      return Status::Ok();
    };
    auto thinking = [&]() -> Status {
      Tensor out;
      QS_RETURN_IF_ERROR(q->think_reset(1, P + G));
      QS_RETURN_IF_ERROR(q->think_decode(i32(*e, {1, P}, prompt), i32(*e, {1, P}, ppos), Tensor(), Tensor(), 7, &out,
                                         nullptr, nullptr));
      cpu::profile().reset();
      const double t0 = now_s();
      for (int k = 0; k < G; k++)
        QS_RETURN_IF_ERROR(q->think_decode(i32(*e, {1, 1}, {argmax(out, Vt)}), i32(*e, {1, 1}, {P + k}), Tensor(), Tensor(),
                                           7, &out, nullptr, nullptr));
      elapsed = now_s() - t0;
      return Status::Ok();
    };
    auto eval_forward = [&]() -> Status {
      std::vector<int32_t> seq = prompt;
      const double t0 = now_s();
      for (int k = 0; k < G; k++) {
        const int T = (int)seq.size() + 1;
        std::vector<int32_t> x = seq;
        x.push_back(0);  // filler: position T - 2 (the last real token) gets its talk prediction
        Tensor ids = i32(*e, {1, T}, x), th, mixed, base;
        QS_RETURN_IF_ERROR(qe->sample_thoughts(ids, Tensor(), 7, &th));
        QS_RETURN_IF_ERROR(qe->forward_backward(ids, Tensor(), ids, th, false, 1.0, nullptr));
        QS_RETURN_IF_ERROR(qe->talk_logits(i32(*e, {1, 2}, {0, T - 2}), &mixed, &base));
        seq.push_back(argmax(mixed, Vt));
      }
      elapsed = now_s() - t0;
      return Status::Ok();
    };
    const std::function<Status()> runs[3] = {plain, thinking, eval_forward};
    const char* names[3] = {"plain", "thinking", "eval-forward"};
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = 0; r <= reps; r++)  // r = 0 warms up (buffers allocated)
      for (int k = 0; k < 3; k++) {
        if (!ok(e->run_sync(runs[k]), names[k])) return 1;
        if (r > 0) best[k] = std::min(best[k], elapsed);
      }
    // One profiled run of each decoder: where a token's time goes (stderr).
    cpu::Profile& prof = cpu::profile();
    fprintf(stderr, "think_bench %dT profile (ms per token):", threads);
    for (int k = 0; k < cpu::kProfCount; k++) fprintf(stderr, " %9.9s", cpu::profile_name(k));
    fprintf(stderr, " %9s\n", "other");
    for (int k = 0; k < 2; k++) {
      prof.enabled = true;
      prof.reset();
      if (!ok(e->run_sync(runs[k]), names[k])) return 1;
      prof.enabled = false;
      double sum = 0;
      fprintf(stderr, "  %-12s", names[k]);
      for (int f = 0; f < cpu::kProfCount; f++) fprintf(stderr, " %9.3f", prof.seconds[f] * 1e3 / G), sum += prof.seconds[f];
      fprintf(stderr, " %9.3f\n", (elapsed - sum) * 1e3 / G);
    }
    const std::string tn = " " + std::to_string(threads) + "T";
    emit("decode plain" + tn, G / best[0], "tokens/s", -1, "%.1f");
    emit("decode thinking nAhead=8" + tn, G / best[1], "tokens/s", -1, "%.1f");
    emit("decode eval-forward per token" + tn, G / best[2], "tokens/s", -1, "%.2f");
    emit("thinking / plain time per token" + tn, best[1] / best[0], "x", o.n_ahead, "%.2f");
    emit("thinking / eval-forward time per token" + tn, best[1] / best[2], "x", -1, "%.4f");
  }
  return 0;
}
