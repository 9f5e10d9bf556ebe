/*
quietstar_bench.cpp: the cost of one Quiet-STaR training step on the CPU, against a plain LM step
on the same batch and model.

Model: GPT-2 style, 4 layers, d_model 256, 4 heads, MLP 1024, vocab 4096 + the two thought
markers, fp32; batch B = 2 documents of T = 128 tokens (--big: B 4, T 256); Quiet-STaR at the
reference defaults nAhead 12, nAheadTalk 4, nPasses 2.

Rows (JSON lines on stdout, bench_util.h):
  lm step <n>T              ms of a plain step: zero grads, forward, backward, AdamW (timed as
                            blocks of 30 steps alternating with the Quiet-STaR steps)
  quietstar step <n>T       ms of a Quiet-STaR step: zero grads, sampling (phase 1), the packed
                            pass forward + backward (phase 2), AdamW
  quietstar / lm <n>T       their ratio, with the reference's FLOP multiple
                            nPasses·(nAhead + nAheadTalk − 1) = 30 as "baseline" (the reference
                            runs that many full forward+backward passes of the batch); the
                            two-phase step adds a forward-only sampling pass, the target is
                            <= 1.3x the multiple
  phase 1 sample / phase 2 forward / phase 2 backward <n>T    the split of the step (ms)
for n = 1 and 2 threads (--quick: 1 thread, one repetition). A per-kernel-family profile of each
phase goes to stderr. On a shared machine trust the 1-thread rows: a busy core stalls every
OpenMP barrier of a 2-thread run.
Usage: bench_quietstar_bench [--quick] [--big]
*/
#include <algorithm>
#include <cstdio>
#include <cstring>
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

static bool ok(const Status& st, const char* what) { return qs_bench::report_ok("quietstar_bench", st, what); }

int main(int argc, char** argv) {
  bool quick = false, big = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick] [--big]", &quick, [&](const char* a) {
        if (std::strcmp(a, "--big") == 0) return big = true;
        return false;
      }))
    return 2;
  const int B = big ? 4 : 2, T = big ? 256 : 128;
  QuietStarOptions o;  // reference defaults: nAhead 12, nAheadTalk 4, nPasses 2
  const int S = o.chain_steps();
  ModelConfig c;
  c.family = ModelFamily::GPT2;
  c.vocab_size = 4096 + 2, c.d_model = 256, c.n_layers = 4, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 64;
  c.d_ff = 1024, c.max_seq_len = T + S, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  o.start_id = 4096, o.end_id = 4097;
  const double multiple = (double)o.n_passes * (o.n_ahead + o.n_ahead_talk - 1);
  const int reps = quick ? 1 : 3;
  fprintf(stderr, "quietstar_bench: GPT-2 L=%d D=%d V=%d, B=%d T=%d, nAhead %d nAheadTalk %d nPasses %d (S = %d chain steps)\n",
          c.n_layers, c.d_model, c.vocab_size, B, T, o.n_ahead, o.n_ahead_talk, o.n_passes, S);

  std::vector<int32_t> ids = lcg_tokens(B * T, 4096), labels = ids, tg(B * T);
  for (int i = 0; i < B * T; i++) tg[i] = (i + 1) % T == 0 ? -100 : ids[i + 1];

  ParamLayout layout;
  if (!ok(quietstar_model_layout(c, &layout), "layout")) return 1;

  for (int threads = 1; threads <= (quick ? 1 : 2); threads++) {
    EngineOptions eo;
    eo.device = "cpu";
    eo.threads = threads;
    std::unique_ptr<Engine> e;
    if (!ok(Engine::create(eo, &e), "engine")) return 1;
    std::unique_ptr<ParamSet> ps;
    if (!ok(ParamSet::create(*e, DType::F32, layout, true, &ps), "params")) return 1;
    std::shared_ptr<ParamSet> params(std::move(ps));
    std::unique_ptr<Model> m;
    if (!ok(Model::create(*e, c, params, &m), "model")) return 1;
    std::unique_ptr<QuietStar> q;
    if (!ok(QuietStar::create(*e, m.get(), o, &q), "quietstar")) return 1;
    e->run_sync([&]() -> Status {
      QS_RETURN_IF_ERROR(m->init_weights(1));
      QS_RETURN_IF_ERROR(q->init_parameters(10, 2));
      // a non-zero last mixing layer, as after some training: rewards and the policy term are live
      Tensor w3;
      QS_RETURN_IF_ERROR(params->view(params->params(), "talk_head.0.4.weight", &w3));
      for (int j = 0; j < c.d_model; j++) w3.data<float>()[j] = (j % 2 ? 0.05f : -0.05f);
      return Status::Ok();
    });
    Tensor ids_t, lab_t, tg_t;
    e->empty(DType::I32, {B, T}, &ids_t), e->empty(DType::I32, {B, T}, &lab_t), e->empty(DType::I32, {B, T}, &tg_t);
    std::memcpy(ids_t.raw(), ids.data(), ids.size() * 4);
    std::memcpy(lab_t.raw(), labels.data(), labels.size() * 4);
    std::memcpy(tg_t.raw(), tg.data(), tg.size() * 4);
    AdamWConfig opt;
    opt.lr = 1e-6, opt.weight_decay = 0.001;
    const std::string tn = " " + std::to_string(threads) + "T";

    // Alternate blocks of `multiple` plain steps with one Quiet-STaR step and keep the best of
    // each: both then span about the same wall time, so a shared machine's interference hits
    // them alike (a lone short LM step would catch quiet moments the long step cannot).
    double loss = 0;
    int64_t count = 0;
    const int n_lm = (int)multiple;
    auto lm_step = [&]() -> Status {
      params->zero_grad();
      QS_RETURN_IF_ERROR(m->forward(ids_t, tg_t, &loss, &count));
      QS_RETURN_IF_ERROR(m->backward(1.0));
      return params->adamw_step(opt);
    };
    QuietStarMetrics mt;
    uint64_t seed = 1;
    auto qs_step = [&]() -> Status {
      params->zero_grad();
      QS_RETURN_IF_ERROR(q->step(ids_t, Tensor(), lab_t, seed++, 1.0, &mt, nullptr));
      return params->adamw_step(opt);
    };
    double t_lm = 1e30, t_qs = 1e30;
    e->run_sync(lm_step), e->run_sync(qs_step);  // warm-up: buffers allocated
    for (int r = 0; r < reps; r++) {
      double t0 = now_s();
      e->run_sync([&]() -> Status {
        for (int k = 0; k < n_lm; k++) QS_RETURN_IF_ERROR(lm_step());
        return Status::Ok();
      });
      double t1 = now_s();
      e->run_sync(qs_step);
      double t2 = now_s();
      t_lm = std::min(t_lm, (t1 - t0) / n_lm), t_qs = std::min(t_qs, t2 - t1);
    }
    emit("lm step B=" + std::to_string(B) + " T=" + std::to_string(T) + tn, t_lm * 1e3, "ms", -1, "%.1f");
    emit("quietstar step" + tn, t_qs * 1e3, "ms", -1, "%.1f");
    emit("quietstar / lm step" + tn, t_qs / t_lm, "x", multiple, "%.2f");
    fprintf(stderr, "quietstar_bench %dT: loss %.4f (base %.4f talk %.4f policy %.3g), positive share %.2f, w mean %.3f\n",
            threads, mt.loss, mt.nll_base, mt.nll_talk, mt.policy_loss, mt.positive_share, mt.mix_mean);

    // one profiled step, phase by phase
    cpu::Profile& prof = cpu::profile();
    double ph[3][cpu::kProfCount], tt[3];
    Tensor thoughts;
    e->run_sync([&]() -> Status {
      params->zero_grad();
      prof.enabled = true;
      prof.reset();
      double t0 = now_s();
      QS_RETURN_IF_ERROR(q->sample_thoughts(ids_t, Tensor(), 7, &thoughts));
      tt[0] = now_s() - t0;
      std::copy(prof.seconds, prof.seconds + cpu::kProfCount, ph[0]);
      prof.reset();
      t0 = now_s();
      QS_RETURN_IF_ERROR(q->forward_backward(ids_t, Tensor(), lab_t, thoughts, false, 1.0, &mt));
      tt[1] = now_s() - t0;
      std::copy(prof.seconds, prof.seconds + cpu::kProfCount, ph[1]);
      prof.reset();
      t0 = now_s();
      QS_RETURN_IF_ERROR(q->forward_backward(ids_t, Tensor(), lab_t, thoughts, true, 1.0, &mt));
      tt[2] = now_s() - t0 - tt[1];  // backward = forward + backward - forward
      for (int k = 0; k < cpu::kProfCount; k++) ph[2][k] = prof.seconds[k] - ph[1][k];
      prof.enabled = false;
      return Status::Ok();
    });
    emit("phase 1 sample" + tn, tt[0] * 1e3, "ms", -1, "%.1f");
    emit("phase 2 forward" + tn, tt[1] * 1e3, "ms", -1, "%.1f");
    emit("phase 2 backward" + tn, tt[2] * 1e3, "ms", -1, "%.1f");
    fprintf(stderr, "quietstar_bench %dT profile (ms):   sample  p2 fwd  p2 bwd\n", threads);
    double sum[3] = {0, 0, 0};
    for (int k = 0; k < cpu::kProfCount; k++) {
      fprintf(stderr, "  %-14s %8.1f %7.1f %7.1f\n", cpu::profile_name(k), ph[0][k] * 1e3, ph[1][k] * 1e3, ph[2][k] * 1e3);
      for (int p = 0; p < 3; p++) sum[p] += ph[p][k];
    }
    fprintf(stderr, "  %-14s %8.1f %7.1f %7.1f\n", "other", (tt[0] - sum[0]) * 1e3, (tt[1] - sum[1]) * 1e3, (tt[2] - sum[2]) * 1e3);
    fprintf(stderr, "  %-14s %8.1f %7.1f %7.1f   (lm step %.1f ms; activations %.0f MiB)\n", "total", tt[0] * 1e3, tt[1] * 1e3,
            tt[2] * 1e3, t_lm * 1e3, (double)e->memory().host_peak / (1 << 20));
  }
  return 0;
}
