/*
cuda_quietstar_bench.cpp: one Quiet-STaR training step on the GPU for random models shaped like
GPT-2 124M and Qwen2.5-0.5B, beside a plain LM step on the same batch and model (the baseline
measured in the same run).

Models (f32 parameters and activations, the CUDA kernels of native/cuda):
  gpt2-124m   GPT-2: 12 layers, d 768, 12 heads, MLP 3072, vocab 50257 + 2 markers, tied head
  qwen2.5-0.5b  Llama family: 24 layers, d 896, 14 heads / 2 KV heads (GQA 7:1), head 64,
              MLP 4864, vocab 151936 + 2, tied head, q/k/v biases, RoPE theta 1e6
Step: the reference defaults nAhead 12, nAheadTalk 4, nPasses 2; a batch of B documents of T
tokens (gpt2: B 2, T 256; qwen: B 1, T 256; --quick: T 128).

Rows (JSON lines, bench_util.h), per model:
  lm step                ms of zero grads + forward + backward + AdamW on the B·T tokens
  quietstar step         ms of zero grads + sampling (phase 1) + packed forward + backward + AdamW
  quietstar / lm step    their ratio, against the reference's FLOP multiple
                         nPasses·(nAhead + nAheadTalk − 1) = 30 as the baseline
  quietstar tokens/s     text tokens (B·T) per second of Quiet-STaR steps
  quietstar MFU          useful model FLOPs per second / 989e12 (the H100/H200 SXM dense bf16
                         peak the issue names; these kernels compute in f32, whose own peak
                         is ~67 TFLOP/s, so this is a floor for a bf16 build to beat).
                         Useful FLOPs: 6·P·n per trained row (P non-embedding parameters +
                         the head, n = B·T base rows + nPasses·B·T·(nAhead + nAheadTalk − 2)
                         chain rows) + 2·P per sampled row (phase 1) + the attention scores
                         actually visible (not the dense mask's).
  peak device memory per text token   (bytes reserved at the peak of the step) / (B·T)
Without a usable GPU one line says why it skipped, and the exit status is 0.
Usage: bench_cuda_quietstar_bench [--quick]
*/
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
using qs_bench::emit;
using qs_bench::lcg_tokens;
using qs_bench::now_s;

static bool ok(const Status& st, const char* what) { return qs_bench::report_ok("cuda_quietstar_bench", st, what); }

struct Shape_ {
  const char* name;
  ModelConfig c;
  int B, T;
};

static ModelConfig gpt2_124m(int max_len) {
  ModelConfig c;
  c.family = ModelFamily::GPT2;
  c.vocab_size = 50257 + 2, c.d_model = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12, c.head_dim = 64;
  c.d_ff = 3072, c.max_seq_len = max_len, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

static ModelConfig qwen25_05b(int max_len) {
  ModelConfig c;
  c.family = ModelFamily::Llama;
  c.vocab_size = 151936 + 2, c.d_model = 896, c.n_layers = 24, c.n_heads = 14, c.n_kv_heads = 2, c.head_dim = 64;
  c.d_ff = 4864, c.max_seq_len = max_len, c.norm_eps = 1e-6, c.rope_theta = 1e6, c.tie_embeddings = true;
  c.qkv_bias = true, c.o_bias = false, c.mlp_bias = false;
  return c;
}

// Matmul parameters per token of one forward (the layers' weights and the LM head).
static double matmul_params(const ModelConfig& c) {
  const double D = c.d_model, Q = (double)c.n_heads * c.head_dim, KV = (double)c.n_kv_heads * c.head_dim, F = c.d_ff;
  const double mlp = c.family == ModelFamily::GPT2 ? 2 * D * F : 3 * D * F;
  return c.n_layers * (D * Q + 2 * D * KV + Q * D + mlp) + D * c.vocab_size;
}

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  const cuda::RuntimeInfo& info = cuda::probe();
  if (!info.usable) {
    qs_bench::emit_skip("cuda_quietstar", "no usable CUDA device: " + info.unavailable_reason);
    return 0;
  }
  const std::string gpu = info.devices.empty() ? "?" : info.devices[0].name;
  QuietStarOptions o;  // reference defaults: nAhead 12, nAheadTalk 4, nPasses 2
  const int S = o.chain_steps();
  const int T = quick ? 128 : 256;
  const std::vector<Shape_> shapes = {{"gpt2-124m", gpt2_124m(T + S + 1), 2, T},
                                      {"qwen2.5-0.5b", qwen25_05b(T + S + 1), 1, T}};
  const double multiple = (double)o.n_passes * (o.n_ahead + o.n_ahead_talk - 1);
  const int reps = quick ? 2 : 5;
  EngineOptions eo;
  eo.device = "cuda";
  std::unique_ptr<Engine> e;
  if (!ok(Engine::create(eo, &e), "engine")) return 1;
  fprintf(stderr, "cuda_quietstar_bench on %s: nAhead %d nAheadTalk %d nPasses %d\n", gpu.c_str(), o.n_ahead,
          o.n_ahead_talk, o.n_passes);

  for (const Shape_& sh : shapes) {
    const ModelConfig& c = sh.c;
    const int B = sh.B, text = c.vocab_size - 2;
    QuietStarOptions qo = o;
    qo.start_id = text, qo.end_id = text + 1;
    std::vector<int32_t> ids = lcg_tokens((int64_t)B * T, text), tg((size_t)B * T);
    for (int i = 0; i < B * T; i++) tg[i] = (i + 1) % T == 0 ? -100 : ids[i + 1];
    ParamLayout layout;
    if (!ok(quietstar_model_layout(c, &layout), "layout")) return 1;
    std::shared_ptr<ParamSet> params;
    std::unique_ptr<Model> m;
    std::unique_ptr<QuietStar> q;
    Tensor ids_t, lab_t, tg_t;  // host tensors: the step reads its inputs on the host
    Status st = e->run_sync([&]() -> Status {
      std::unique_ptr<ParamSet> ps;
      QS_RETURN_IF_ERROR(ParamSet::create(*e, DType::F32, layout, true, &ps));
      params = std::move(ps);
      QS_RETURN_IF_ERROR(Model::create(*e, c, params, &m));
      QS_RETURN_IF_ERROR(QuietStar::create(*e, m.get(), qo, &q));
      QS_RETURN_IF_ERROR(m->init_weights(1));
      QS_RETURN_IF_ERROR(q->init_parameters(10, 2));
      for (Tensor* t : {&ids_t, &lab_t, &tg_t}) QS_RETURN_IF_ERROR(e->empty_on(Device::CPU, DType::I32, {B, T}, t));
      std::memcpy(ids_t.raw(), ids.data(), ids.size() * 4);
      std::memcpy(lab_t.raw(), ids.data(), ids.size() * 4);
      std::memcpy(tg_t.raw(), tg.data(), tg.size() * 4);
      return Status::Ok();
    });
    if (!ok(st, sh.name)) return 1;
    AdamWConfig opt;
    opt.lr = 1e-6, opt.weight_decay = 0.001;
    double loss = 0;
    int64_t count = 0;
    auto lm_step = [&]() -> Status {
      QS_RETURN_IF_ERROR(params->zero_grad());
      QS_RETURN_IF_ERROR(m->forward(ids_t, tg_t, &loss, &count));
      QS_RETURN_IF_ERROR(m->backward(1.0));
      QS_RETURN_IF_ERROR(params->adamw_step(opt));
      return e->synchronize();
    };
    QuietStarMetrics mt;
    uint64_t seed = 1;
    auto qs_step = [&]() -> Status {
      QS_RETURN_IF_ERROR(params->zero_grad());
      QS_RETURN_IF_ERROR(q->step(ids_t, Tensor(), lab_t, seed++, 1.0, &mt, nullptr));
      QS_RETURN_IF_ERROR(params->adamw_step(opt));
      return e->synchronize();
    };
    if (!ok(e->run_sync(lm_step), "lm warm-up") || !ok(e->run_sync(qs_step), "quietstar warm-up")) return 1;
    double t_lm = 1e30, t_qs = 1e30;
    for (int r = 0; r < reps; r++) {
      double t0 = now_s();
      if (!ok(e->run_sync(lm_step), "lm step")) return 1;
      double t1 = now_s();
      if (!ok(e->run_sync(qs_step), "quietstar step")) return 1;
      double t2 = now_s();
      t_lm = std::min(t_lm, t1 - t0), t_qs = std::min(t_qs, t2 - t1);
    }
    const MemorySnapshot mem = e->memory();
    const double P = matmul_params(c), BT = (double)B * T;
    const double chain_rows = (double)qo.n_passes * BT * S, sampled_rows = (double)qo.n_passes * BT * qo.thought_tokens();
    // visible scores per head: base causal T(T+1)/2 per document; chain row (s, i): i + 1 base
    // keys + s chain keys; forward 4·d FLOPs per score (QKᵀ and PV), backward twice that
    const double hd = c.head_dim, H = c.n_heads;
    double base_scores = B * (double)T * (T + 1) / 2, chain_scores = 0;
    for (int s = 1; s <= S; s++) chain_scores += qo.n_passes * B * ((double)T * (T + 1) / 2 + (double)s * T);
    const double attn = 3 * 4 * hd * H * c.n_layers * (base_scores + chain_scores);
    const double flops = 6 * P * (BT + chain_rows) + 2 * P * sampled_rows + attn;
    const std::string tag = std::string(" ") + sh.name + " B=" + std::to_string(B) + " T=" + std::to_string(T);
    emit("lm step" + tag, t_lm * 1e3, "ms", -1, "%.1f");
    emit("quietstar step" + tag, t_qs * 1e3, "ms", -1, "%.1f");
    emit("quietstar / lm step" + tag, t_qs / t_lm, "x", multiple, "%.2f");
    emit("quietstar tokens/s" + tag, BT / t_qs, "tok/s", -1, "%.0f");
    emit("quietstar MFU vs 989 TFLOP/s" + tag, 100 * flops / t_qs / 989e12, "%", -1, "%.2f");
    emit("quietstar achieved TFLOP/s" + tag, flops / t_qs / 1e12, "TFLOP/s", -1, "%.1f");
    emit("peak device memory per text token" + tag, (double)mem.device_reserved_peak / BT / 1e6, "MB", -1, "%.2f");
    fprintf(stderr, "  %s on %s: loss %.4f (base %.4f talk %.4f), peak reserved %.2f GB\n", sh.name, gpu.c_str(),
            mt.loss, mt.nll_base, mt.nll_talk, (double)mem.device_reserved_peak / 1e9);
    // free this model's buffers before the next one
    q.reset(), m.reset(), params.reset();
    e->release_cached_memory();
  }
  return 0;
}
