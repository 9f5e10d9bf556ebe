// test_cuda_quietstar.cpp: a whole Quiet-STaR step on a tiny model, CPU against GPU: phase 1
// (sample_thoughts: the base pass, the incremental thought attention and the fused sampler) and
// phase 2 (forward_backward: the packed pass with the thought attention, the mixing head, the
// three heads, the rewards and the whole backward) on a CUDA engine (native/core/quietstar_*.cpp
// over quietstar_backend.h, so native/cuda/transformer.cu, thought_attention.cu,
// thought_sampling.cu and quietstar_heads.cu) against the same step on a CPU engine.
//
// The same f32 parameters on both engines (random, as test_quietstar.cpp's rig: the mixing
// weight is of order 1 so the talk and policy paths carry gradient). Cases: GPT-2 with a tied
// head, Llama with GQA 4:2 (+ a sliding window), nAhead 1 (no chain: talk rows read base rows,
// repeated destinations in the scatters), a right-padded document, nPasses 2 (the trice
// baseline). Checked:
//   - thoughts: the device's logits differ from the CPU's in the last bits (another summation
//     order), so a token may differ where two Gumbel scores nearly tie, and a chain diverges
//     after that; at most kMaxThoughtMismatch of the tokens may differ;
//   - phase 2 with the CPU's thoughts on both engines: loss, base / talk NLL, policy loss,
//     reward mean within kRtol; every gradient (the whole flat buffer) within kGradTol of the
//     largest gradient magnitude. f32 with another summation order everywhere: errors ~1e-6
//     relative per op, compounded over 2 layers, the heads and the backward.
// Also: the same step at the default bf16 precision (losses to ~1e-2, gradient cosine > 0.995),
// thinking at inference (thinkDecode over 4 steps: logits and thoughts), and the ParamSet's
// device optimizer (zero_grad, clip_grad_norm, AdamW). Skipped, with the probe's reason, without
// a GPU. (The harness itself was checked with a CPU engine standing in for the GPU.)
#include <algorithm>
#include <iterator>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar_fixtures.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
using namespace qs_test;
using qs_test::make_engine;

namespace {

constexpr double kRtol = 1e-4, kGradTol = 1e-3;
constexpr double kMaxThoughtMismatch = 0.02;

struct Side {
  std::unique_ptr<Engine> owned;
  Engine* e = nullptr;
  std::shared_ptr<ParamSet> ps;
  std::unique_ptr<Model> m;
  std::unique_ptr<QuietStar> q;
};

Status make_side(Engine& e, const ModelConfig& c, const QuietStarOptions& o, const std::vector<float>& values, Side* s) {
  ParamLayout layout;
  QS_RETURN_IF_ERROR(quietstar_model_layout(c, &layout));
  std::unique_ptr<ParamSet> ps;
  QS_RETURN_IF_ERROR(ParamSet::create(e, DType::F32, layout, false, &ps));
  s->e = &e;
  s->ps = std::move(ps);
  QS_RETURN_IF_ERROR(Model::create(e, c, s->ps, &s->m));
  QS_RETURN_IF_ERROR(QuietStar::create(e, s->m.get(), o, &s->q));
  if (values.size() != (size_t)s->ps->params().numel())
    return QS_ERROR(INTERNAL, "parameter count %zu != %lld", values.size(), (long long)s->ps->params().numel());
  return e.upload(values.data(), values.size() * sizeof(float), s->ps->params());
}

// The same model on both engines (cs on the CPU, gs on the GPU), from the same values.
Status make_sides(Engine& cpu_e, Engine& gpu, const ModelConfig& c, const QuietStarOptions& o,
                  const std::vector<float>& values, Side* cs, Side* gs) {
  QS_RETURN_IF_ERROR(cpu_e.run_sync([&] { return make_side(cpu_e, c, o, values, cs); }));
  return gpu.run_sync([&] { return make_side(gpu, c, o, values, gs); });
}

// Quiet-STaR options of a test step: the markers last, an O(1) policy term.
QuietStarOptions step_options(int N, int A, int P) {
  QuietStarOptions o;
  o.n_ahead = N, o.n_ahead_talk = A, o.n_passes = P;
  o.start_id = kStart, o.end_id = kEnd;
  o.policy_loss_beta = 1.0;
  return o;
}

// Random parameters in the layout of c (+ the Quiet-STaR extras), as test_quietstar.cpp's rig.
std::vector<float> random_params(const ModelConfig& c, const QuietStarOptions& o, uint64_t seed) {
  ParamLayout layout;
  quietstar_model_layout(c, &layout);
  std::vector<float> v((size_t)layout.total(), 0.f);
  Rng rng(seed);
  for (const ParamEntry& e : layout.entries()) {
    const bool bias = e.name.size() > 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0;
    for (int64_t i = 0; i < e.numel; i++) {
      double x;
      if (e.name == "start_embedding" || e.name == "end_embedding") x = i < c.d_model ? rng.normal() / o.embedding_scale : 0;
      else if (e.name == "talk_head.0.4.weight") x = 0.3 * rng.normal();
      else if (e.name.compare(0, 9, "talk_head") == 0) x = 0.1 * rng.normal();
      else if (e.shape.size() >= 2) x = 0.15 * rng.normal();
      else if (bias) x = 0.1 * rng.normal();
      else x = 1.0 + 0.1 * rng.normal();
      v[(size_t)(e.offset + i)] = (float)x;
    }
  }
  return v;
}

// Host tensors (the step's inputs live on the CPU whatever the engine).
Tensor host_i32(Engine& e, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor t;
  e.empty_on(Device::CPU, DType::I32, shape, &t);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}
Tensor host_u8(Engine& e, const Shape& shape, const std::vector<uint8_t>& v) {
  Tensor t;
  e.empty_on(Device::CPU, DType::U8, shape, &t);
  std::copy(v.begin(), v.end(), t.data<uint8_t>());
  return t;
}

struct StepCase {
  const char* name;
  ModelConfig c;
  int N, A, P;
  int B, T, pad;
};

}  // namespace

QS_TEST(cuda_quietstar_step_matches_cpu) {
  std::string why;
  auto gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  std::unique_ptr<Engine> cpu_e = make_engine("cpu");
  ModelConfig windowed = qs_llama();
  windowed.sliding_window = 5;
  const std::vector<StepCase> cases = {
      {"gpt2 N6 A3 P2", qs_gpt2(), 6, 3, 2, 2, 12, 3},
      {"llama-gqa N5 A2 P1", qs_llama(), 5, 2, 1, 3, 9, 0},
      {"llama-window N6 A2 P2", windowed, 6, 2, 2, 2, 13, 2},
      {"llama N1 A3 (no chain)", qs_llama(), 1, 3, 2, 2, 10, 1},
  };
  for (const StepCase& k : cases) {
    printf("  %s\n", k.name);
    const QuietStarOptions o = step_options(k.N, k.A, k.P);
    Side cs, gs;
    Status st = make_sides(*cpu_e, *gpu, k.c, o, random_params(k.c, o, 1234 + k.N), &cs, &gs);
    QS_EXPECT(st.ok(), "%s: sides: %s", k.name, st.to_string().c_str());
    if (!st.ok()) continue;
    Rng rng(77 + k.B);
    const PaddedBatch b = padded_batch(rng, k.B, k.T, k.pad);
    const Shape bt = {k.B, k.T};

    // phase 1
    Tensor th_cpu, th_gpu;
    st = cpu_e->run_sync([&] {
      return cs.q->sample_thoughts(host_i32(*cpu_e, bt, b.ids), host_u8(*cpu_e, bt, b.valid), 99, &th_cpu);
    });
    QS_EXPECT(st.ok(), "%s: cpu sample: %s", k.name, st.to_string().c_str());
    st = gpu->run_sync([&] {
      return gs.q->sample_thoughts(host_i32(*gpu, bt, b.ids), host_u8(*gpu, bt, b.valid), 99, &th_gpu);
    });
    QS_EXPECT(st.ok(), "%s: gpu sample: %s", k.name, st.to_string().c_str());
    if (!st.ok()) continue;
    QS_EXPECT(th_gpu.device() == Device::CPU && th_gpu.numel() == th_cpu.numel(), "%s: thoughts tensor", k.name);
    int64_t differ = 0;
    for (int64_t n = 0; n < th_cpu.numel(); n++) differ += th_cpu.data<int32_t>()[n] != th_gpu.data<int32_t>()[n];
    const double share = th_cpu.numel() ? (double)differ / th_cpu.numel() : 0.0;
    printf("    thoughts: %lld of %lld tokens differ (%.2f%%, near-ties and their chains)\n", (long long)differ,
           (long long)th_cpu.numel(), 100 * share);
    QS_EXPECT(share <= kMaxThoughtMismatch, "%s: %.1f%% of the thought tokens differ", k.name, 100 * share);

    // phase 2 with the CPU's thoughts on both
    QuietStarMetrics mc, mg;
    st = cpu_e->run_sync([&] {
      return cs.q->forward_backward(host_i32(*cpu_e, bt, b.ids), host_u8(*cpu_e, bt, b.valid),
                                    host_i32(*cpu_e, bt, b.labels), th_cpu, true, 1.0, &mc);
    });
    QS_EXPECT(st.ok(), "%s: cpu step: %s", k.name, st.to_string().c_str());
    st = gpu->run_sync([&] {
      return gs.q->forward_backward(host_i32(*gpu, bt, b.ids), host_u8(*gpu, bt, b.valid), host_i32(*gpu, bt, b.labels),
                                    th_cpu, true, 1.0, &mg);
    });
    QS_EXPECT(st.ok(), "%s: gpu step: %s", k.name, st.to_string().c_str());
    if (!st.ok()) continue;
    const double got[] = {mg.loss, mg.nll_base, mg.nll_talk, mg.policy_loss, mg.reward_mean, mg.mix_mean};
    const double want[] = {mc.loss, mc.nll_base, mc.nll_talk, mc.policy_loss, mc.reward_mean, mc.mix_mean};
    check_close("loss, nll_base, nll_talk, policy, reward, mix", got, want, 6, kRtol, kRtol);
    std::vector<float> g_cpu(cs.ps->grads().numel()), g_gpu;
    std::copy(cs.ps->grads().data<float>(), cs.ps->grads().data<float>() + g_cpu.size(), g_cpu.begin());
    st = gpu->run_sync([&] { return fetch(*gpu, gs.ps->grads(), &g_gpu); });
    QS_EXPECT(st.ok(), "%s: grads: %s", k.name, st.to_string().c_str());
    double gmax = 0;
    for (float x : g_cpu) gmax = std::max(gmax, (double)std::fabs(x));
    QS_EXPECT(gmax > 0, "%s: the CPU step gave no gradient", k.name);
    check_close("gradients (all parameters)", g_gpu.data(), g_cpu.data(), g_cpu.size(), 0, kGradTol * gmax);
  }
}

// The default CUDA precision, bf16 products with f32 accumulation (EngineOptions.precision): the
// same step as the f32 case stays close to the CPU's exact f32. Each product's inputs carry a
// relative rounding error of 2^-9, so the losses agree to ~1e-2 and the gradient direction to a
// cosine similarity near 1 (not element by element).
QS_TEST(cuda_quietstar_step_in_bf16_stays_close_to_cpu) {
  std::string why;
  auto gpu = cuda_engine(&why, "bf16");
  if (!gpu) QS_SKIP(why);
  QS_EXPECT(gpu->precision() == "bf16", "precision %s", gpu->precision().c_str());
  std::unique_ptr<Engine> cpu_e = make_engine("cpu");
  const ModelConfig c = qs_gpt2();
  const QuietStarOptions o = step_options(6, 3, 2);
  Side cs, gs;
  Status st = make_sides(*cpu_e, *gpu, c, o, random_params(c, o, 4321), &cs, &gs);
  QS_EXPECT(st.ok(), "sides: %s", st.to_string().c_str());
  if (!st.ok()) return;
  Rng rng(8);
  const PaddedBatch b = padded_batch(rng, 2, 12, 0);
  const Shape bt = {2, 12};
  std::vector<int32_t> th((size_t)2 * 2 * 12 * 3);
  for (auto& t : th) t = rng.below(50);  // injected thoughts: phase 2 alone
  QuietStarMetrics mc, mg;
  st = cpu_e->run_sync([&] {
    return cs.q->forward_backward(host_i32(*cpu_e, bt, b.ids), Tensor(), host_i32(*cpu_e, bt, b.labels),
                                  host_i32(*cpu_e, {4, 12, 3}, th), true, 1.0, &mc);
  });
  QS_EXPECT(st.ok(), "cpu step: %s", st.to_string().c_str());
  st = gpu->run_sync([&] {
    return gs.q->forward_backward(host_i32(*gpu, bt, b.ids), Tensor(), host_i32(*gpu, bt, b.labels),
                                  host_i32(*gpu, {4, 12, 3}, th), true, 1.0, &mg);
  });
  QS_EXPECT(st.ok(), "gpu step: %s", st.to_string().c_str());
  if (!st.ok()) return;
  const double got[] = {mg.loss, mg.nll_base, mg.nll_talk}, want[] = {mc.loss, mc.nll_base, mc.nll_talk};
  check_close("bf16: loss, nll_base, nll_talk", got, want, 3, 2e-2, 1e-3);
  std::vector<float> g_gpu;
  st = gpu->run_sync([&] { return fetch(*gpu, gs.ps->grads(), &g_gpu); });
  QS_EXPECT(st.ok(), "grads: %s", st.to_string().c_str());
  const float* g_cpu = cs.ps->grads().data<float>();
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < g_gpu.size(); i++) dot += (double)g_gpu[i] * g_cpu[i], na += (double)g_gpu[i] * g_gpu[i], nb += (double)g_cpu[i] * g_cpu[i];
  const double cosine = dot / std::sqrt(na * nb + 1e-300);
  printf("    bf16 gradient cosine similarity to the CPU's f32: %.6f\n", cosine);
  QS_EXPECT(cosine > 0.995, "bf16 gradients point elsewhere: cosine %.4f", cosine);
}

// Thinking at inference on the GPU (quietstar_infer.cpp): a 5-token prompt then 3 decode steps,
// each with a thought branch on the KV cache and a rewind, and talkLogits after a phase 2, against
// the CPU engine. Mixed and base logits within f32 tolerance; thoughts equal but for near-ties.
QS_TEST(cuda_thinking_decode_matches_cpu) {
  std::string why;
  auto gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  std::unique_ptr<Engine> cpu_e = make_engine("cpu");
  for (const ModelConfig& c : {qs_gpt2(), qs_llama()}) {
    const QuietStarOptions o = step_options(6, 2, 1);
    Side cs, gs;
    Status st = make_sides(*cpu_e, *gpu, c, o, random_params(c, o, 99), &cs, &gs);
    QS_EXPECT(st.ok(), "sides: %s", st.to_string().c_str());
    if (!st.ok()) return;
    const int B = 2;
    Rng rng(3);
    std::vector<int32_t> prompt(B * 5);
    for (auto& t : prompt) t = rng.below(50);
    std::vector<float> got, want;
    std::vector<int32_t> th_got, th_want;
    int thought_diff = 0, thought_n = 0;
    for (int side = 0; side < 2; side++) {
      Engine& e = side == 0 ? *cpu_e : *gpu;
      Side& sd = side == 0 ? cs : gs;
      std::vector<float>& lg = side == 0 ? want : got;
      std::vector<int32_t>& th = side == 0 ? th_want : th_got;
      st = e.run_sync([&]() -> Status {
        QS_RETURN_IF_ERROR(sd.q->think_reset(B, 12));
        std::vector<int32_t> ids = prompt, pos(B * 5);
        for (int b = 0; b < B; b++)
          for (int i = 0; i < 5; i++) pos[b * 5 + i] = i;
        int n = 5;
        for (int step = 0; step < 4; step++) {
          Tensor logits, base, thoughts;
          QS_RETURN_IF_ERROR(sd.q->think_decode(host_i32(e, {B, n}, ids), host_i32(e, {B, n}, pos), Tensor(), Tensor(), 11,
                                                &logits, &base, &thoughts));
          std::vector<float> l;
          QS_RETURN_IF_ERROR(fetch(e, logits, &l));
          lg.insert(lg.end(), l.begin(), l.end());
          th.insert(th.end(), thoughts.data<int32_t>(), thoughts.data<int32_t>() + thoughts.numel());
          // the next token: the CPU's greedy choice on both sides, so the texts stay equal
          ids.assign(B, 0), pos.assign(B, 0);
          for (int b = 0; b < B; b++) {
            const float* row = want.data() + ((size_t)step * B + b) * kV;  // step's row b on the CPU
            ids[b] = (int32_t)(std::max_element(row, row + kV) - row);
            pos[b] = 5 + step;
          }
          n = 1;
        }
        return Status::Ok();
      });
      QS_EXPECT(st.ok(), "%s think_decode: %s", side == 0 ? "cpu" : "gpu", st.to_string().c_str());
      if (!st.ok()) return;
    }
    for (size_t k = 0; k < th_want.size(); k++) thought_diff += th_got[k] != th_want[k], thought_n++;
    printf("  %s: thoughts differ at %d of %d tokens (near-ties)\n", c.family == ModelFamily::GPT2 ? "gpt2" : "llama",
           thought_diff, thought_n);
    QS_EXPECT(thought_diff <= thought_n / 10, "%d of %d thought tokens differ", thought_diff, thought_n);
    for (size_t k = 0; k < want.size(); k++)  // the markers' -inf must match; compare the rest
      if (std::isinf(want[k]) && got[k] == want[k]) got[k] = want[k] = 0;
    if (thought_diff == 0) check_close("thinking logits (4 steps)", got.data(), want.data(), want.size(), 1e-3, 1e-4);
  }
}

// ParamSet on a CUDA engine: zero_grad, clip_grad_norm (norm only, and scaling) and AdamW (the
// decayed range and the rest) against the same calls on a CPU engine.
QS_TEST(cuda_paramset_optimizer_matches_cpu) {
  std::string why;
  auto gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  std::unique_ptr<Engine> cpu_e = make_engine("cpu");
  ParamLayout layout;
  QS_EXPECT(ParamLayout::create({{"w", {37, 5}, true}, {"b", {37}, false}}, &layout).ok(), "layout");
  Rng rng(5);
  const int64_t n = layout.total();
  const std::vector<float> p0 = random_vector<float>(rng, (size_t)n), g0 = random_vector<float>(rng, (size_t)n);
  AdamWConfig cfg;
  cfg.lr = 1e-2, cfg.weight_decay = 0.1;
  std::vector<float> got_p, got_g, want_p(n), want_g(n);
  double norms[2][2];
  for (int side = 0; side < 2; side++) {
    Engine& e = side == 0 ? *cpu_e : *gpu;
    Status st = e.run_sync([&]() -> Status {
      std::unique_ptr<ParamSet> ps;
      QS_RETURN_IF_ERROR(ParamSet::create(e, DType::F32, layout, true, &ps));
      QS_RETURN_IF_ERROR(e.upload(p0.data(), n * sizeof(float), ps->params()));
      QS_RETURN_IF_ERROR(e.upload(g0.data(), n * sizeof(float), ps->grads()));
      QS_RETURN_IF_ERROR(ps->clip_grad_norm(0, &norms[side][0]));    // the norm only
      QS_RETURN_IF_ERROR(ps->clip_grad_norm(1.5, &norms[side][1]));  // and scaled to 1.5
      for (int k = 0; k < 3; k++) QS_RETURN_IF_ERROR(ps->adamw_step(cfg));
      std::vector<float> pv(n), gv(n);
      QS_RETURN_IF_ERROR(e.download(ps->params(), pv.data(), n * sizeof(float)));
      QS_RETURN_IF_ERROR(ps->zero_grad());
      QS_RETURN_IF_ERROR(e.download(ps->grads(), gv.data(), n * sizeof(float)));
      if (side == 0) want_p = pv, want_g = gv;
      else got_p = pv, got_g = gv;
      return Status::Ok();
    });
    QS_EXPECT(st.ok(), "%s: %s", side == 0 ? "cpu" : "cuda", st.to_string().c_str());
    if (!st.ok()) return;
  }
  check_close("grad norm", &norms[1][0], &norms[0][0], 2, 1e-6, 0);
  check_close("params after clip + 3 AdamW steps", got_p.data(), want_p.data(), (size_t)n, 1e-5, 1e-6);
  check_close("grads after zero_grad", got_g.data(), want_g.data(), (size_t)n, 0, 0);
}

QS_TEST_MAIN()
