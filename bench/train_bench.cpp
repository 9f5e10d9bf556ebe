/*
train_bench.cpp: end-to-end model throughput on the CPU, for the reference configuration:
GPT-2 style, 4 layers, d_model 256, 4 heads, MLP 4x (1024), vocab 4096, T 256, B 8, fp32, AdamW.

Rows (JSON lines on stdout, bench_util.h):
  peak gemm <n>T            our gemm on a 2048^3 fp32 product (GFLOP/s): the peak MFU is taken against
  train <n>T                tokens/s of a full step (zero grads, forward, backward, AdamW), with
                            PyTorch 1.13's figure on this machine as "baseline" (2,480 tokens/s on
                            1 thread, 4,430 on 2 threads, its best configuration)
  train MFU <n>T            model FLOP/s / peak gemm FLOP/s, in percent
  forward <n>T              tokens/s of the training forward alone (loss included)
  generate B=<b> <n>T       tokens/s of KV-cached decoding, one token per row per step
for n = 1 and 2 threads. A per-kernel-family time profile of one training step goes to stderr.

Model FLOPs per token (PaLM appendix B, the standard MFU count):
  6 · N_nonembedding            (every non-embedding parameter: 2 FLOPs forward, 4 backward)
  + 6 · V · D                   (the LM head, a tied matrix the embedding count leaves out)
  + 12 · L · T · D              (attention scores and values, forward + backward, counted dense
                                 although causal attention computes about half of them)
Usage: bench_train_bench [--quick]
*/
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/gemm.h"
#include "cpu/transformer.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"

using namespace qs;
namespace cpu = qs::cpu;
using qs_bench::emit;
using qs_bench::lcg_tokens;
using qs_bench::now_s;

static bool ok(const Status& st, const char* what) { return qs_bench::report_ok("train_bench", st, what); }

static ModelConfig reference_config() {
  ModelConfig c;
  c.family = ModelFamily::GPT2;
  c.vocab_size = 4096, c.d_model = 256, c.n_layers = 4, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 64;
  c.d_ff = 1024, c.max_seq_len = 256, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

static double peak_gemm(Engine& e, int reps) {
  const int n = 2048;
  std::vector<float> A((size_t)n * n), B((size_t)n * n), C((size_t)n * n);
  for (size_t i = 0; i < A.size(); i++) A[i] = (float)((i * 7) % 13) * 0.01f, B[i] = (float)((i * 5) % 11) * 0.01f;
  double best = 1e30;
  e.run_sync([&] {
    best = qs_bench::best_time(reps, [&] {
      cpu::gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
    });
    return Status::Ok();
  });
  return 2.0 * n * n * (double)n / best / 1e9;
}

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  const ModelConfig c = reference_config();
  const int B = 8, T = 256, N = B * T;
  const int reps = quick ? 2 : 5;
  const double torch_tps[3] = {0, 2480, 4430};

  ParamLayout layout;
  if (!ok(ParamLayout::create(model_param_specs(c), &layout), "layout")) return 1;
  int64_t n_params = 0, n_embed = 0;
  for (const ParamEntry& p : layout.entries()) {
    n_params += p.numel;
    if (p.name == "transformer.wte.weight" || p.name == "transformer.wpe.weight") n_embed += p.numel;
  }
  const double flops_per_token = 6.0 * (double)(n_params - n_embed) + 6.0 * c.vocab_size * c.d_model +
                                 12.0 * c.n_layers * T * c.d_model;
  fprintf(stderr, "train_bench: GPT-2 L=%d D=%d H=%d F=%d V=%d, B=%d T=%d: %.2fM params (%.2fM non-embedding), %.1f MFLOP/token\n",
          c.n_layers, c.d_model, c.n_heads, c.d_ff, c.vocab_size, B, T, n_params / 1e6, (n_params - n_embed) / 1e6,
          flops_per_token / 1e6);

  std::vector<int32_t> ids = lcg_tokens(N, c.vocab_size), tg(N);
  for (int i = 0; i < N; i++) tg[i] = (i + 1) % T == 0 ? ids[i] : ids[i + 1];

  for (int threads = 1; threads <= 2; threads++) {
    EngineOptions o;
    o.device = "cpu";
    o.threads = threads;
    std::unique_ptr<Engine> e;
    if (!ok(Engine::create(o, &e), "engine")) return 1;
    std::unique_ptr<ParamSet> ps;
    if (!ok(ParamSet::create(*e, DType::F32, layout, true, &ps), "params")) return 1;
    std::shared_ptr<ParamSet> params(std::move(ps));
    std::unique_ptr<Model> m;
    if (!ok(Model::create(*e, c, params, &m), "model")) return 1;
    e->run_sync([&] { return m->init_weights(1); });
    Tensor ids_t, tg_t;
    e->empty(DType::I32, {B, T}, &ids_t);
    e->empty(DType::I32, {B, T}, &tg_t);
    std::memcpy(ids_t.raw(), ids.data(), ids.size() * 4);
    std::memcpy(tg_t.raw(), tg.data(), tg.size() * 4);
    AdamWConfig opt;
    opt.lr = 1e-4, opt.weight_decay = 0.1;
    const std::string tn = " " + std::to_string(threads) + "T";

    const double peak = peak_gemm(*e, reps);
    emit("peak gemm 2048^3" + tn, peak, "GFLOP/s", -1, "%.1f");

    double loss = 0;
    int64_t count = 0;
    auto step = [&] {
      e->run_sync([&]() -> Status {
        params->zero_grad();
        QS_RETURN_IF_ERROR(m->forward(ids_t, tg_t, &loss, &count));
        QS_RETURN_IF_ERROR(m->backward(1.0));
        return params->adamw_step(opt);
      });
    };
    const double t_step = qs_bench::best_time(reps, step);
    const double tps = N / t_step;
    emit("train B=8 T=256 tokens/s" + tn, tps, "tokens/s", torch_tps[threads], "%.0f");
    emit("train MFU" + tn, 100.0 * tps * flops_per_token / (peak * 1e9), "%", -1, "%.1f");
    fprintf(stderr, "train_bench %dT: step %.1f ms, loss %.4f, %.1f GFLOP/s model FLOPs\n", threads, t_step * 1e3, loss,
            tps * flops_per_token / 1e9);

    // one profiled step: forward and backward by kernel family, then AdamW
    {
      cpu::Profile& prof = cpu::profile();
      double fwd[cpu::kProfCount], t0, t1, t2, t3;
      e->run_sync([&]() -> Status {
        params->zero_grad();
        prof.enabled = true;
        prof.reset();
        t0 = now_s();
        QS_RETURN_IF_ERROR(m->forward(ids_t, tg_t, &loss, &count));
        t1 = now_s();
        std::copy(prof.seconds, prof.seconds + cpu::kProfCount, fwd);
        prof.reset();
        QS_RETURN_IF_ERROR(m->backward(1.0));
        t2 = now_s();
        prof.enabled = false;
        QS_RETURN_IF_ERROR(params->adamw_step(opt));
        t3 = now_s();
        return Status::Ok();
      });
      fprintf(stderr, "train_bench %dT profile of one step (ms):   forward  backward\n", threads);
      double sf = 0, sb = 0;
      for (int k = 0; k < cpu::kProfCount; k++) {
        fprintf(stderr, "  %-14s %8.2f %9.2f\n", cpu::profile_name(k), fwd[k] * 1e3, prof.seconds[k] * 1e3);
        sf += fwd[k], sb += prof.seconds[k];
      }
      fprintf(stderr, "  %-14s %8.2f %9.2f\n", "other", (t1 - t0 - sf) * 1e3, (t2 - t1 - sb) * 1e3);
      fprintf(stderr, "  %-14s %8.2f %9.2f   adamw %.2f  zero_grad+step total %.2f\n", "total", (t1 - t0) * 1e3,
              (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3);
    }

    const double t_fwd = qs_bench::best_time(reps, [&] {
      e->run_sync([&] { return m->forward(ids_t, tg_t, &loss, &count); });
    });
    emit("forward B=8 T=256 tokens/s" + tn, N / t_fwd, "tokens/s", -1, "%.0f");

    for (int gb : {1, 8}) {
      const int steps = quick ? 32 : 128;
      std::vector<int32_t> pos_v(gb), id_v(gb);
      Tensor id1, pos1, logits;
      e->empty(DType::I32, {gb, 1}, &id1);
      e->empty(DType::I32, {gb, 1}, &pos1);
      const double t_gen = qs_bench::best_time(quick ? 1 : 3, [&] {
        e->run_sync([&]() -> Status {
          QS_RETURN_IF_ERROR(m->reset_cache(gb, steps));
          for (int t = 0; t < steps; t++) {
            for (int b = 0; b < gb; b++) id1.data<int32_t>()[b] = ids[(b * T + t) % N], pos1.data<int32_t>()[b] = t;
            QS_RETURN_IF_ERROR(m->decode(id1, pos1, Tensor(), &logits));
          }
          return Status::Ok();
        });
      });
      emit("generate B=" + std::to_string(gb) + " tokens/s" + tn, gb * steps / t_gen, "tokens/s", -1, "%.0f");
    }
  }
  return 0;
}
