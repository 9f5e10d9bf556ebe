// quietstar.cpp: the Quiet-STaR step's options, extra parameter names, creation, input checks,
// initialisation, public entry points, metrics and debug tensors (see quietstar.h). The two
// phases are in quietstar_sample.cpp (thoughts, no gradient) and quietstar_train.cpp (the
// packed differentiable pass); the step-specific CPU compute is in cpu/quietstar_heads.*.
#include <cmath>
#include <cstring>

#include "core/quietstar_impl.h"

namespace qs {

// ---------------------------------------------------------------------------------------------
// options (JS names: lib/quietstar/options.ts validates the same rules first)

Status QuietStarOptions::validate(const ModelConfig& c) const {
  auto in = [](int v, int lo) { return v >= lo && v <= (1 << 16); };
  QS_CHECK_ARG(in(n_ahead, 1), "quietstar.nAhead: must be an integer in [1, 65536] (got %d)", n_ahead);
  QS_CHECK_ARG(n_ahead != 2,
               "quietstar.nAhead: must be 1 (no thought) or >= 3 (start marker, nAhead - 3 sampled tokens, end marker) (got 2)");
  QS_CHECK_ARG(in(n_ahead_talk, 1), "quietstar.nAheadTalk: must be an integer in [1, 65536] (got %d)", n_ahead_talk);
  QS_CHECK_ARG(in(n_passes, 1), "quietstar.nPasses: must be an integer in [1, 65536] (got %d)", n_passes);
  QS_CHECK_ARG(std::isfinite(embedding_scale) && embedding_scale > 0,
               "quietstar.embeddingScale: must be a number > 0 (got %g)", embedding_scale);
  QS_CHECK_ARG(std::isfinite(original_loss_weight) && original_loss_weight >= 0 && original_loss_weight <= 1,
               "quietstar.originalLossWeight: must be a number in [0, 1] (got %g)", original_loss_weight);
  QS_CHECK_ARG(std::isfinite(base_loss_beta) && base_loss_beta >= 0, "quietstar.baseLossBeta: must be a number >= 0 (got %g)",
               base_loss_beta);
  QS_CHECK_ARG(std::isfinite(policy_loss_beta) && policy_loss_beta >= 0,
               "quietstar.policyLossBeta: must be a number >= 0 (got %g)", policy_loss_beta);
  QS_CHECK_ARG(std::isfinite(reinforce_temperature) && reinforce_temperature > 0,
               "quietstar.reinforceTemperature: must be a number > 0 (got %g)", reinforce_temperature);
  QS_CHECK_ARG(std::isfinite(thought_temperature) && thought_temperature >= 0,
               "quietstar.thoughtTemperature: must be a number >= 0 (got %g)", thought_temperature);
  QS_CHECK_ARG(start_id >= 0 && start_id < c.vocab_size,
               "quietstar.startId: the start marker's id must be in [0, config.vocabSize %d) (got %d)", c.vocab_size, start_id);
  QS_CHECK_ARG(end_id >= 0 && end_id < c.vocab_size,
               "quietstar.endId: the end marker's id must be in [0, config.vocabSize %d) (got %d)", c.vocab_size, end_id);
  QS_CHECK_ARG(start_id != end_id, "quietstar.endId: the start and end markers need different ids (both %d)", end_id);
  QS_CHECK_ARG(c.vocab_size >= 3, "config.vocabSize: Quiet-STaR needs at least one token besides the two markers (got %d)",
               c.vocab_size);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// names: the reference code's (spec §2.3), appended after the model's views

std::vector<ParamSpec> quietstar_param_specs(const ModelConfig& c) {
  const int64_t D = c.d_model;
  return {
      {"start_embedding", {2, D}, true},
      {"end_embedding", {2, D}, true},
      {"talk_head.0.0.weight", {D, 2 * D}, true},
      {"talk_head.0.0.bias", {D}, false},
      {"talk_head.0.2.weight", {D, D}, true},
      {"talk_head.0.2.bias", {D}, false},
      {"talk_head.0.4.weight", {1, D}, true},
  };
}

template <typename T>
QsWeights<T> bind_qs_weights(const ParamLayout& layout, T* flat) {
  auto get = [&](const char* name) -> T* {
    const ParamEntry* e = layout.find(name);
    return e ? flat + e->offset : nullptr;
  };
  QsWeights<T> w;
  w.start = get("start_embedding"), w.end = get("end_embedding");
  w.w1 = get("talk_head.0.0.weight"), w.b1 = get("talk_head.0.0.bias");
  w.w2 = get("talk_head.0.2.weight"), w.b2 = get("talk_head.0.2.bias");
  w.w3 = get("talk_head.0.4.weight");
  return w;
}
template QsWeights<float> bind_qs_weights<float>(const ParamLayout&, float*);
template QsWeights<double> bind_qs_weights<double>(const ParamLayout&, double*);

Status quietstar_model_layout(const ModelConfig& config, ParamLayout* out) {
  std::vector<ParamSpec> specs = model_param_specs(config);
  for (const ParamSpec& s : quietstar_param_specs(config)) specs.push_back(s);
  return ParamLayout::create(specs, out);
}

QsDims qs_dims(const ModelConfig& c, const QuietStarOptions& o, int B, int T) {
  QsDims d;
  d.B = B, d.T = T, d.P = o.n_passes, d.R = B * o.n_passes;
  d.N = o.n_ahead, d.A = o.n_ahead_talk;
  d.S = o.n_ahead == 1 ? 0 : o.chain_steps();
  d.M = o.thought_tokens();
  d.TA = std::max(T - 1 - d.A, 0);
  d.D = c.d_model, d.V = c.vocab_size, d.H = c.n_heads, d.Hkv = c.n_kv_heads, d.hd = c.head_dim;
  d.Q = c.n_heads * c.head_dim, d.KV = c.n_kv_heads * c.head_dim, d.F = c.d_ff, d.L = c.n_layers;
  d.BT = (int64_t)B * T, d.RT = (int64_t)d.R * T;
  d.chain = d.RT * d.S;
  d.rows = d.BT + d.chain;
  d.talk_off.assign(d.A + 1, 0);
  for (int k = 0; k < d.A; k++) d.talk_off[k + 1] = d.talk_off[k] + (int64_t)d.R * std::max(T - 1 - k, 0);
  d.talk = d.talk_off[d.A];
  return d;
}

template <typename T>
void qs_carve_layer(Carver& cv, const ModelConfig& c, int64_t n, cpu::LayerActs<T>& a, bool with_out, bool with_kv) {
  const int64_t D = c.d_model, F = c.d_ff;
  const int64_t Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
  const bool llama = c.family != ModelFamily::GPT2;
  a.ln1 = cv.take<T>(n * D);
  a.ln1_mean = llama ? nullptr : cv.take<T>(n);
  a.ln1_rstd = cv.take<T>(n);
  a.q = cv.take<T>(n * Q);
  a.k = with_kv ? cv.take<T>(n * KV) : nullptr;
  a.v = with_kv ? cv.take<T>(n * KV) : nullptr;
  a.att = cv.take<T>(n * Q);
  a.lse = cv.take<float>(n * c.n_heads);
  a.res2 = cv.take<T>(n * D);
  a.ln2 = cv.take<T>(n * D);
  a.ln2_mean = llama ? nullptr : cv.take<T>(n);
  a.ln2_rstd = cv.take<T>(n);
  a.fc = cv.take<T>(n * F);
  a.up = llama ? cv.take<T>(n * F) : nullptr;
  a.act = cv.take<T>(n * F);
  a.out = with_out ? cv.take<T>(n * D) : nullptr;
}
template void qs_carve_layer<float>(Carver&, const ModelConfig&, int64_t, cpu::LayerActs<float>&, bool, bool);
template void qs_carve_layer<double>(Carver&, const ModelConfig&, int64_t, cpu::LayerActs<double>&, bool, bool);

// ---------------------------------------------------------------------------------------------
// input checks

Status check_qs_inputs(const ModelConfig& c, const QuietStarOptions& o, Engine& e, const char* what, const Tensor& ids,
                       const Tensor& valid, const Tensor* labels, const Tensor* thoughts) {
  QS_RETURN_IF_ERROR(check_batch(c, e, what, ids, nullptr));
  const int64_t B = ids.dim(0), T = ids.dim(1);
  if (valid.defined()) {
    QS_CHECK_ARG(valid.dtype() == DType::U8 && valid.device() == Device::CPU && valid.rank() == 2 && valid.dim(0) == B &&
                     valid.dim(1) == T,
                 "%s: 'valid' must be a u8 tensor of shape [%lld, %lld] on the CPU (got %s)", what, (long long)B, (long long)T,
                 valid.describe().c_str());
  }
  if (labels) QS_RETURN_IF_ERROR(check_tokens(what, "labels", *labels, B, T, 0, c.vocab_size, true, "config.vocabSize"));
  const int S = o.n_ahead == 1 ? 0 : o.chain_steps();
  // Chain tokens sit at positions i + s (up to T - 1 + S): GPT-2's learned position table must
  // hold them (RoPE positions have no table).
  if (c.family == ModelFamily::GPT2)
    QS_CHECK_ARG(T - 1 + S < c.max_seq_len,
                 "%s: chain tokens reach position T - 1 + S = %lld (T = %lld, S = nAhead + nAheadTalk - 2 = %d) but "
                 "config.maxSeqLen is %d (GPT-2 learned positions)",
                 what, (long long)(T - 1 + S), (long long)T, S, c.max_seq_len);
  QS_CHECK_ARG((B * o.n_passes) * T * (int64_t)std::max(S, 1) <= ((int64_t)1 << 28),
               "%s: B x nPasses x T x chain steps is too many tokens for one call", what);
  if (thoughts) {
    const int M = o.thought_tokens();
    const int64_t R = B * o.n_passes;
    QS_CHECK_ARG(thoughts->defined() && thoughts->dtype() == DType::I32 && thoughts->device() == Device::CPU &&
                     thoughts->rank() == 3 && thoughts->dim(0) == R && thoughts->dim(1) == T && thoughts->dim(2) == M,
                 "%s: 'thoughts' must be an int32 tensor of shape [%lld, %lld, %d] (B x nPasses, T, nAhead - 3) on the CPU "
                 "(got %s)",
                 what, (long long)R, (long long)T, M, thoughts->defined() ? thoughts->describe().c_str() : "nothing");
    const int32_t* t = M > 0 ? thoughts->data<int32_t>() : nullptr;
    for (int64_t n = 0; n < R * T * M; n++) {
      const int v = t[n];
      QS_CHECK_ARG(v >= 0 && v < c.vocab_size && v != o.start_id && v != o.end_id,
                   "%s: thoughts[%lld, %lld, %lld] = %d is not a token id in [0, %d) other than the markers %d, %d", what,
                   (long long)(n / (T * M)), (long long)(n / M % T), (long long)(n % M), v, c.vocab_size, o.start_id, o.end_id);
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// creation

QuietStar::~QuietStar() = default;

Status QuietStar::create(Engine& engine, Model* model, const QuietStarOptions& options, std::unique_ptr<QuietStar>* out) {
  QS_CHECK_ARG(model != nullptr, "QuietStar.create: no model given");
  const ModelConfig& c = model->config();
  QS_RETURN_IF_ERROR(options.validate(c));
  const ParamLayout& layout = model->params().layout();
  for (const ParamSpec& s : quietstar_param_specs(c)) {
    const ParamEntry* e = layout.find(s.name);
    QS_CHECK_ARG(e != nullptr,
                 "QuietStar.create: the model's parameters have no view '%s' %s (create them with quietstar_model_layout: "
                 "the model's specs followed by quietstar_param_specs)",
                 s.name.c_str(), shape_string(s.shape).c_str());
    QS_CHECK_ARG(e->shape == s.shape, "QuietStar.create: parameter '%s' has shape %s, needs %s", s.name.c_str(),
                 shape_string(e->shape).c_str(), shape_string(s.shape).c_str());
  }
  QS_CHECK_ARG(model->params().params().device() == engine.device(), "QuietStar.create: the model lives on another device");
  std::unique_ptr<QuietStar> q(new QuietStar());
  q->options_ = options;
  q->model_ = model;
  q->impl_.reset(new Impl());
  q->impl_->engine = &engine;
  *out = std::move(q);
  return Status::Ok();
}

Status QuietStar::Impl::ensure(Tensor& mem, size_t bytes) {
  if (bytes == 0) bytes = 64;
  if (mem.defined() && mem.nbytes() >= bytes) return Status::Ok();
  mem = Tensor();  // free the old block before asking for the new one
  return engine->empty(DType::U8, {(int64_t)bytes}, &mem);
}

static Status require_cpu(Engine& e, const char* what) {
  QS_RETURN_IF_ERROR(e.check_alive());
  if (e.device() != Device::CPU)
    return QS_ERROR(UNIMPLEMENTED, "%s: Quiet-STaR has no CUDA path for this yet; create the engine with device 'cpu'",
                    what);
  return Status::Ok();
}


// ---------------------------------------------------------------------------------------------
// initialisation (spec §2.3): start/end row 0 = E[init token] / embedding_scale (row 1 zero);
// mixing head N(0, 0.02) weights (HF _init_weights), zero biases, zero last layer (w ≡ 0).

// flat: the whole parameter buffer in host memory.
template <typename T>
static void init_extras(const ModelConfig& c, const QuietStarOptions& o, const ParamLayout& layout, T* flat, int init_id,
                        uint64_t seed) {
  const QsWeights<T> w = bind_qs_weights<T>(layout, flat);
  const cpu::ModelWeights<T> mw = cpu::bind_weights<T>(c, layout, flat);
  const int D = c.d_model;
  const T* e = mw.wte + (int64_t)init_id * D;
  for (int i = 0; i < D; i++) {
    w.start[i] = (T)(e[i] / o.embedding_scale);
    w.end[i] = (T)(e[i] / o.embedding_scale);
    w.start[D + i] = w.end[D + i] = 0;
  }
  const uint64_t base = splitmix64(seed ^ 0x51e7a5a11ull);  // a stream apart from Model::init_weights'
  fill_normal<T>(w.w1, (int64_t)D * 2 * D, splitmix64(base + 1), 0.02);
  fill_normal<T>(w.w2, (int64_t)D * D, splitmix64(base + 2), 0.02);
  std::memset(w.b1, 0, sizeof(T) * D);
  std::memset(w.b2, 0, sizeof(T) * D);
  std::memset(w.w3, 0, sizeof(T) * D);
}

Status QuietStar::init_parameters(int init_token_id, uint64_t seed) {
  Engine& engine = *impl_->engine;
  QS_RETURN_IF_ERROR(engine.check_alive());
  const ModelConfig& c = model_->config();
  QS_CHECK_ARG(init_token_id >= 0 && init_token_id < c.vocab_size,
               "QuietStar.initParameters: initToken id %d is out of range [0, %d) (config.vocabSize)", init_token_id,
               c.vocab_size);
  ParamSet& p = model_->params();
  // On a CUDA engine the parameters come to the host, get their extras there (the same values
  // as on a CPU engine) and go back, as Model.initWeights does.
  const Tensor& params = p.params();
  Tensor flat = params;
  if (params.device() != Device::CPU) {
    QS_RETURN_IF_ERROR(engine.empty_on(Device::CPU, params.dtype(), params.shape(), &flat));
    QS_RETURN_IF_ERROR(engine.download(params, flat.raw(), flat.nbytes()));
  }
  if (flat.dtype() == DType::F64) init_extras<double>(c, options_, p.layout(), flat.data<double>(), init_token_id, seed);
  else init_extras<float>(c, options_, p.layout(), flat.data<float>(), init_token_id, seed);
  if (params.device() != Device::CPU) return engine.upload(flat.raw(), flat.nbytes(), params);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// public entry points: dispatch on the params' dtype

#define QS_QUIETSTAR_DISPATCH(name, ...)                                                         \
  do {                                                                                          \
    if (model_->params().params().dtype() == DType::F64) return impl_->name<double>(__VA_ARGS__); \
    return impl_->name<float>(__VA_ARGS__);                                                     \
  } while (0)

Status QuietStar::sample_thoughts(const Tensor& ids, const Tensor& valid, uint64_t seed, Tensor* thoughts,
                                 const Tensor& row_ids) {
  QS_RETURN_IF_ERROR(check_engine(*impl_->engine, model_->params().params().dtype(), "QuietStar.sampleThoughts"));
  QS_CHECK_ARG(thoughts != nullptr, "QuietStar.sampleThoughts: no output tensor");
  QS_QUIETSTAR_DISPATCH(sample_thoughts, model_->config(), options_, model_->params(), ids, valid, row_ids, seed,
                        thoughts);
}

Status QuietStar::forward_backward(const Tensor& ids, const Tensor& valid, const Tensor& labels, const Tensor& thoughts,
                                   bool backward, double loss_scale, QuietStarMetrics* metrics) {
  QS_RETURN_IF_ERROR(check_engine(*impl_->engine, model_->params().params().dtype(), "QuietStar.forwardBackward"));
  QS_CHECK_ARG(std::isfinite(loss_scale), "QuietStar.forwardBackward: lossScale must be a finite number (got %g)", loss_scale);
  QS_QUIETSTAR_DISPATCH(forward_backward, model_->config(), options_, model_->params(), ids, valid, labels, thoughts,
                        backward, loss_scale, metrics);
}

Status QuietStar::step(const Tensor& ids, const Tensor& valid, const Tensor& labels, uint64_t seed, double loss_scale,
                       QuietStarMetrics* metrics, Tensor* thoughts_out) {
  Tensor thoughts;
  QS_RETURN_IF_ERROR(sample_thoughts(ids, valid, seed, &thoughts));
  QS_RETURN_IF_ERROR(forward_backward(ids, valid, labels, thoughts, true, loss_scale, metrics));
  if (thoughts_out) *thoughts_out = thoughts;
  return Status::Ok();
}

void QuietStar::set_logits_budget(int64_t bytes) { impl_->logits_budget = bytes; }
void QuietStar::set_full_policy_logp(bool on) { impl_->full_policy = on; }
void QuietStar::set_freeze_rewards(bool on) { impl_->freeze_rewards = on; }

// ---------------------------------------------------------------------------------------------
// debug tensors (copies in the params' dtype)

template <typename T>
Status QuietStar::Impl::debug(const std::string& name, DType dt, Tensor* out) {
  const Impl& im = *this;
  const QsDims& d = dims;
  const TrainBuffers2<T>& tb = train<T>();
  auto make = [&](const Shape& shape, Tensor* t) { return engine->empty(dt, shape, t); };
  Tensor t;
  if (name == "base_hidden") {
    QS_RETURN_IF_ERROR(make({d.B, d.T, d.D}, &t));
    std::memcpy(t.raw(), tb.hf, sizeof(T) * (size_t)d.BT * d.D);
  } else if (name == "chain_hidden") {
    // nAhead = 1: the talk chains are the base pass; (R, A-1, T, D) holds h_base(i + s) (0 past T).
    const int S = d.N == 1 ? d.A - 1 : d.S;
    QS_CHECK_ARG(S > 0, "QuietStar.debugTensor: 'chain_hidden': no chain steps (nAhead = 1, nAheadTalk = 1)");
    QS_RETURN_IF_ERROR(make({d.R, S, d.T, d.D}, &t));
    T* o = t.data<T>();
    for (int r = 0; r < d.R; r++)
      for (int s = 1; s <= S; s++)
        for (int i = 0; i < d.T; i++) {
          T* dst = o + (((int64_t)r * S + s - 1) * d.T + i) * d.D;
          if (d.N == 1) {
            if (i + s < d.T) std::memcpy(dst, tb.hf + ((int64_t)(r / d.P) * d.T + i + s) * d.D, sizeof(T) * d.D);
          } else {
            std::memcpy(dst, tb.hf + d.chain_row(r, s, i) * d.D, sizeof(T) * d.D);
          }
        }
  } else if (name == "mix_weight" || name == "talk_nll") {
    QS_RETURN_IF_ERROR(make({d.R, d.A, d.T}, &t));
    const T* src = name == "mix_weight" ? tb.w : tb.talk_loss;
    T* o = t.data<T>();
    for (int k = 0; k < d.A; k++)
      for (int r = 0; r < d.R; r++)
        for (int i = 0; i < d.T - 1 - k; i++)
          o[((int64_t)r * d.A + k) * d.T + i] = src[d.talk_off[k] + (int64_t)r * (d.T - 1 - k) + i];
  } else if (name == "base_nll") {
    QS_RETURN_IF_ERROR(make({d.B, d.T}, &t));
    std::memcpy(t.raw(), tb.base_loss, sizeof(T) * (size_t)d.BT);
  } else if (name == "reward" || name == "reward_weight") {
    QS_RETURN_IF_ERROR(make({d.R, d.T}, &t));
    const std::vector<double>& src = name == "reward" ? im.reward : im.weight;
    for (size_t n = 0; n < src.size(); n++) t.data<T>()[n] = (T)src[n];
  } else if (name == "policy_logp") {
    QS_CHECK_ARG(d.M > 0, "QuietStar.debugTensor: 'policy_logp': no thought tokens (nAhead < 4)");
    QS_RETURN_IF_ERROR(make({d.R, d.M, d.T}, &t));
    for (size_t n = 0; n < im.pol_logp.size(); n++) t.data<T>()[n] = (T)im.pol_logp[n];
  } else {
    return QS_ERROR(INVALID_ARGUMENT,
                    "QuietStar.debugTensor: unknown name '%s' (known: base_hidden, chain_hidden, mix_weight, talk_nll, "
                    "base_nll, reward, reward_weight, policy_logp)",
                    name.c_str());
  }
  *out = t;
  return Status::Ok();
}

Status QuietStar::debug_tensor(const std::string& name, Tensor* out) const {
  QS_RETURN_IF_ERROR(require_cpu(*impl_->engine, "QuietStar.debugTensor"));
  QS_CHECK_ARG(impl_->has_forward, "QuietStar.debugTensor: no forwardBackward yet");
  const DType dt = model_->params().params().dtype();
  if (dt == DType::F64) return impl_->debug<double>(name, dt, out);
  return impl_->debug<float>(name, dt, out);
}

}  // namespace qs
