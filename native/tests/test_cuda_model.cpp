// test_cuda_model.cpp: the whole model on a CUDA engine (native/cuda/transformer.cu through
// native/core/model_run.cpp) against the same model on a CPU engine, f32 both sides.
//
// For a tiny GPT-2 (c_attn column blocks, learned positions), a tiny Llama with GQA 2:1, RoPE,
// every optional bias and an untied head, and a tied bias-free Llama with a sliding window, the
// same random parameters go to both engines, then:
//   - forward: mean loss and token count (targets with ignored -100 entries);
//   - backward: the whole flat gradient buffer (lossScale 1.5);
//   - tokenLosses, logits of every position, logits of the last position only;
//   - decoding: resetCache, a 4-token prefill, then one token at a time; each step's logits
//     against the CPU's full-sequence logits at that position;
//   - ids given as a device tensor give the same logits as host ids;
//   - initWeights gives the same values on both engines; f64 parameters on CUDA are refused
//     with INVALID_ARGUMENT.
// Every comparison prints max abs / rel error. Skips cleanly without a usable GPU.
//
// Tolerances (f32 against f32): the CUDA kernels sum in other orders than the CPU's (tiled GEMM,
// warp reductions, the fused LM head's vocabulary splits), so each op differs by a few ulp
// (~1e-6 relative; the per-op tests in test_cuda_kernels.cpp hold 1e-4 / 1e-5). Two layers,
// the softmaxes and the final norm compound that by at most ~10x: forward outputs (O(1)
// values) use rtol 5e-4, atol 5e-5. Gradients are sums over all tokens with cancellation, so
// small entries carry larger relative error: rtol 1e-3, atol 5e-5 (the gradients are O(1e-2)
// to O(1)). A wrong layout, stride, head mapping or position would give O(0.1..1) errors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"

using namespace qs;
using namespace qs_test;

namespace {

constexpr double kFwdRtol = 5e-4, kFwdAtol = 5e-5;   // forward outputs (see the header)
constexpr double kGradRtol = 1e-3, kGradAtol = 5e-5;  // gradients
constexpr int kPrefill = 4;                           // decode: tokens of the first step

ModelConfig gpt2_config() {
  ModelConfig c;
  c.family = ModelFamily::GPT2;
  c.vocab_size = 53, c.d_model = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 8;
  c.d_ff = 80, c.max_seq_len = 16, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

// GQA 2:1 (4 query heads, 2 kv heads), RoPE, every optional bias, untied head.
ModelConfig llama_config() {
  ModelConfig c;
  c.family = ModelFamily::Llama;
  c.vocab_size = 47, c.d_model = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6;
  c.d_ff = 40, c.max_seq_len = 16, c.norm_eps = 1e-6, c.rope_theta = 10000.0, c.tie_embeddings = false;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

// Tied, no biases, a sliding window shorter than the sequence.
ModelConfig llama_window_config() {
  ModelConfig c = llama_config();
  c.qkv_bias = c.o_bias = c.mlp_bias = false;
  c.tie_embeddings = true;
  c.sliding_window = 5;
  return c;
}

// Everything one engine's model computed (the model and its buffers stay on the engine's thread).
struct Side {
  bool ran = false;
  double loss = 0;
  int64_t count = 0;
  std::vector<float> grads, token_losses, logits, last, decoded;  // decoded (steps, B, V)
  std::vector<float> last_from_device_ids;  // CUDA: last-position logits with ids given as a device tensor
};

// Random parameters by role: matrices N(0, 0.15²), biases N(0, 0.05²), norm gains 1 + N(0, 0.1²).
std::vector<float> random_params(const ParamLayout& layout, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v((size_t)layout.total(), 0.f);
  for (const ParamEntry& e : layout.entries()) {
    const bool bias = e.name.size() >= 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0;
    for (int64_t i = 0; i < e.numel; i++) {
      const double n = rng.normal();
      v[(size_t)(e.offset + i)] = (float)(e.shape.size() >= 2 ? 0.15 * n : bias ? 0.05 * n : 1.0 + 0.1 * n);
    }
  }
  return v;
}

Status host_i32(Engine& e, int B, int T, const std::vector<int32_t>& v, Tensor* t) {
  QS_RETURN_IF_ERROR(e.empty_on(Device::CPU, DType::I32, {B, T}, t));
  std::memcpy(t->raw(), v.data(), v.size() * sizeof(int32_t));
  return Status::Ok();
}

Status fetch_f32(Engine& e, const Tensor& t, std::vector<float>* v) {
  if (t.dtype() != DType::F32) return QS_ERROR(INTERNAL, "expected f32, got %s", t.describe().c_str());
  return fetch(e, t, v);
}

// Builds the model on `e` with parameters `host` and runs every pass; on the engine's thread.
Status run_side(Engine& e, const ModelConfig& c, const std::vector<float>& host, int B, int T,
                const std::vector<int32_t>& ids, const std::vector<int32_t>& targets, Side* s) {
  return e.run_sync([&]() -> Status {
    ParamLayout layout;
    QS_RETURN_IF_ERROR(ParamLayout::create(model_param_specs(c), &layout));
    std::unique_ptr<ParamSet> ps;
    QS_RETURN_IF_ERROR(ParamSet::create(e, DType::F32, layout, false, &ps));
    std::shared_ptr<ParamSet> params = std::move(ps);
    QS_RETURN_IF_ERROR(e.upload(host.data(), host.size() * sizeof(float), params->params()));
    std::unique_ptr<Model> model;
    QS_RETURN_IF_ERROR(Model::create(e, c, params, &model));
    Model& m = *model;
    Tensor ids_t, targets_t;
    QS_RETURN_IF_ERROR(host_i32(e, B, T, ids, &ids_t));
    QS_RETURN_IF_ERROR(host_i32(e, B, T, targets, &targets_t));

    QS_RETURN_IF_ERROR(m.forward(ids_t, targets_t, &s->loss, &s->count));
    QS_RETURN_IF_ERROR(m.backward(1.5));
    QS_RETURN_IF_ERROR(fetch_f32(e, params->grads(), &s->grads));

    Tensor out;
    QS_RETURN_IF_ERROR(m.token_losses(ids_t, targets_t, &out));
    QS_RETURN_IF_ERROR(fetch_f32(e, out, &s->token_losses));
    QS_RETURN_IF_ERROR(m.logits(ids_t, false, &out));
    QS_RETURN_IF_ERROR(fetch_f32(e, out, &s->logits));
    QS_RETURN_IF_ERROR(m.logits(ids_t, true, &out));
    QS_RETURN_IF_ERROR(fetch_f32(e, out, &s->last));
    if (e.device() == Device::CUDA) {  // token inputs may also live on the device
      Tensor dev_ids;
      QS_RETURN_IF_ERROR(device_tensor(e, DType::I32, {B, T}, ids, &dev_ids));
      QS_RETURN_IF_ERROR(m.logits(dev_ids, true, &out));
      QS_RETURN_IF_ERROR(fetch_f32(e, out, &s->last_from_device_ids));
    }

    // decoding: a prefill of kPrefill tokens, then one token per step
    QS_RETURN_IF_ERROR(m.reset_cache(B, T));
    s->decoded.clear();
    for (int t0 = 0; t0 < T;) {
      const int n = t0 == 0 ? kPrefill : 1;
      std::vector<int32_t> step_ids((size_t)B * n), step_pos((size_t)B * n);
      for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) {
          step_ids[(size_t)b * n + i] = ids[(size_t)b * T + t0 + i];
          step_pos[(size_t)b * n + i] = t0 + i;
        }
      Tensor sid, spos, logits;
      QS_RETURN_IF_ERROR(host_i32(e, B, n, step_ids, &sid));
      QS_RETURN_IF_ERROR(host_i32(e, B, n, step_pos, &spos));
      QS_RETURN_IF_ERROR(m.decode(sid, spos, Tensor(), &logits));
      std::vector<float> v;
      QS_RETURN_IF_ERROR(fetch_f32(e, logits, &v));
      s->decoded.insert(s->decoded.end(), v.begin(), v.end());
      t0 += n;
    }
    s->ran = true;
    return Status::Ok();
  });
}

void compare_model(const char* name, const ModelConfig& c, int B, int T, uint64_t seed) {
  std::string why;
  std::unique_ptr<Engine> gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  std::unique_ptr<Engine> cpu = make_engine();
  QS_EXPECT(cpu != nullptr, "cpu engine");
  if (!cpu) return;

  ParamLayout layout;
  Status st = ParamLayout::create(model_param_specs(c), &layout);
  QS_EXPECT(st.ok(), "layout: %s", st.to_string().c_str());
  const std::vector<float> host = random_params(layout, seed);
  Rng rng(seed + 1);
  std::vector<int32_t> ids((size_t)B * T), targets((size_t)B * T);
  for (size_t i = 0; i < ids.size(); i++) {
    ids[i] = rng.below(c.vocab_size);
    targets[i] = i % 7 == 3 ? -100 : rng.below(c.vocab_size);  // some ignored
  }

  Side want, got;
  st = run_side(*cpu, c, host, B, T, ids, targets, &want);
  QS_EXPECT(st.ok(), "%s cpu: %s", name, st.to_string().c_str());
  st = run_side(*gpu, c, host, B, T, ids, targets, &got);
  QS_EXPECT(st.ok(), "%s cuda: %s", name, st.to_string().c_str());
  if (!st.ok() || !want.ran) return;

  const std::string n = name;
  QS_EXPECT(got.count == want.count, "%s: count %lld vs %lld", name, (long long)got.count, (long long)want.count);
  check_close((n + " loss").c_str(), &got.loss, &want.loss, 1, kFwdRtol, kFwdAtol);
  QS_EXPECT(got.grads.size() == want.grads.size(), "%s: grads size", name);
  check_close((n + " grads (whole buffer)").c_str(), got.grads.data(), want.grads.data(),
              std::min(got.grads.size(), want.grads.size()), kGradRtol, kGradAtol);
  check_close((n + " tokenLosses").c_str(), got.token_losses.data(), want.token_losses.data(),
              std::min(got.token_losses.size(), want.token_losses.size()), kFwdRtol, kFwdAtol);
  check_close((n + " logits (all)").c_str(), got.logits.data(), want.logits.data(),
              std::min(got.logits.size(), want.logits.size()), kFwdRtol, kFwdAtol);
  check_close((n + " logits (last)").c_str(), got.last.data(), want.last.data(),
              std::min(got.last.size(), want.last.size()), kFwdRtol, kFwdAtol);
  // the same computation with the ids on the device: the kernels are deterministic, so exact
  QS_EXPECT(got.last_from_device_ids.size() == got.last.size(), "%s: logits from device ids missing", name);
  check_close((n + " logits (last, device ids)").c_str(), got.last_from_device_ids.data(), got.last.data(),
              std::min(got.last.size(), got.last_from_device_ids.size()), 0.0, 0.0);

  // decode steps against the CPU's full-sequence logits: step 0 ends at position kPrefill - 1,
  // step k > 0 is position kPrefill - 1 + k
  const int V = c.vocab_size, steps = T - kPrefill + 1;
  QS_EXPECT(got.decoded.size() == (size_t)steps * B * V, "%s: decoded %zu values, want %d", name, got.decoded.size(),
            steps * B * V);
  if (got.decoded.size() != (size_t)steps * B * V || want.logits.size() != (size_t)B * T * V) return;
  std::vector<float> full((size_t)steps * B * V);
  for (int k = 0; k < steps; k++)
    for (int b = 0; b < B; b++) {
      const int t = kPrefill - 1 + k;
      std::memcpy(&full[((size_t)k * B + b) * V], &want.logits[((size_t)b * T + t) * V], sizeof(float) * V);
    }
  check_close((n + " decode vs full logits").c_str(), got.decoded.data(), full.data(), full.size(), kFwdRtol, kFwdAtol);
}

}  // namespace

QS_TEST(gpt2_matches_cpu) { compare_model("gpt2", gpt2_config(), 3, 13, 11); }

QS_TEST(llama_gqa_rope_matches_cpu) { compare_model("llama", llama_config(), 2, 13, 12); }

QS_TEST(llama_sliding_window_matches_cpu) { compare_model("llama-window", llama_window_config(), 2, 14, 13); }

// initWeights makes its values on the host with the same generator: identical on both engines.
QS_TEST(init_weights_same_on_both_engines) {
  std::string why;
  std::unique_ptr<Engine> gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  std::unique_ptr<Engine> cpu = make_engine();
  const ModelConfig c = llama_config();
  std::vector<float> vals[2];
  Engine* engines[2] = {cpu.get(), gpu.get()};
  for (int i = 0; i < 2; i++) {
    Engine& e = *engines[i];
    Status st = e.run_sync([&]() -> Status {
      ParamLayout layout;
      QS_RETURN_IF_ERROR(ParamLayout::create(model_param_specs(c), &layout));
      std::unique_ptr<ParamSet> ps;
      QS_RETURN_IF_ERROR(ParamSet::create(e, DType::F32, layout, false, &ps));
      std::shared_ptr<ParamSet> params = std::move(ps);
      std::unique_ptr<Model> m;
      QS_RETURN_IF_ERROR(Model::create(e, c, params, &m));
      QS_RETURN_IF_ERROR(m->init_weights(7));
      return fetch(e, params->params(), &vals[i]);
    });
    QS_EXPECT(st.ok(), "engine %d: %s", i, st.to_string().c_str());
  }
  check_close("initWeights cuda vs cpu", vals[1].data(), vals[0].data(), std::min(vals[0].size(), vals[1].size()), 0.0,
              0.0);
}

// The CUDA kernels are f32 only: a model over f64 parameters on a CUDA engine says so.
QS_TEST(f64_params_on_cuda_are_refused) {
  std::string why;
  std::unique_ptr<Engine> gpu = cuda_engine(&why);
  if (!gpu) QS_SKIP(why);
  const ModelConfig c = gpt2_config();
  Status st = gpu->run_sync([&]() -> Status {
    ParamLayout layout;
    QS_RETURN_IF_ERROR(ParamLayout::create(model_param_specs(c), &layout));
    std::unique_ptr<ParamSet> ps;
    QS_RETURN_IF_ERROR(ParamSet::create(*gpu, DType::F64, layout, false, &ps));
    std::shared_ptr<ParamSet> params = std::move(ps);
    std::unique_ptr<Model> m;
    QS_RETURN_IF_ERROR(Model::create(*gpu, c, params, &m));
    Tensor ids;
    QS_RETURN_IF_ERROR(host_i32(*gpu, 1, 4, {1, 2, 3, 4}, &ids));
    double loss;
    int64_t count;
    Status f = m->forward(ids, ids, &loss, &count);
    QS_EXPECT(f.code() == Code::INVALID_ARGUMENT && f.message().find("f32") != std::string::npos, "forward: %s",
              f.to_string().c_str());
    Tensor out;
    Status l = m->logits(ids, true, &out);
    QS_EXPECT(l.code() == Code::INVALID_ARGUMENT, "logits: %s", l.to_string().c_str());
    Status r = m->reset_cache(1, 4);
    QS_EXPECT(r.code() == Code::INVALID_ARGUMENT, "resetCache: %s", r.to_string().c_str());
    return Status::Ok();
  });
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
}

QS_TEST_MAIN()
