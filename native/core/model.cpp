// model.cpp: the model's configuration, parameter names, creation, input checks and weight
// initialisation (see model.h). The passes themselves are in model_run.cpp (buffers, dispatch)
// and cpu/transformer.cpp (the per-layer kernels).
#include <cmath>
#include <cstring>

#include "core/model_impl.h"

namespace qs {

// ---------------------------------------------------------------------------------------------
// configuration

Status ModelConfig::validate() const {
  QS_CHECK_ARG(vocab_size > 0, "config.vocabSize: must be a positive integer (got %d)", vocab_size);
  QS_CHECK_ARG(d_model > 0, "config.dModel: must be a positive integer (got %d)", d_model);
  QS_CHECK_ARG(n_layers > 0, "config.nLayers: must be a positive integer (got %d)", n_layers);
  QS_CHECK_ARG(n_heads > 0, "config.nHeads: must be a positive integer (got %d)", n_heads);
  QS_CHECK_ARG(n_kv_heads > 0, "config.nKvHeads: must be a positive integer (got %d)", n_kv_heads);
  QS_CHECK_ARG(n_heads % n_kv_heads == 0, "config.nKvHeads: %d does not divide config.nHeads %d", n_kv_heads, n_heads);
  QS_CHECK_ARG(head_dim > 0, "config.headDim: must be a positive integer (got %d)", head_dim);
  QS_CHECK_ARG(d_ff > 0, "config.dFF: must be a positive integer (got %d)", d_ff);
  QS_CHECK_ARG(max_seq_len > 0, "config.maxSeqLen: must be a positive integer (got %d)", max_seq_len);
  QS_CHECK_ARG(std::isfinite(norm_eps) && norm_eps >= 0, "config.normEps: must be a finite number >= 0 (got %g)", norm_eps);
  QS_CHECK_ARG(sliding_window >= 0, "config.slidingWindow: must be >= 0 (0 = none) (got %d)", sliding_window);
  // Sizes whose products index flat buffers must stay well inside int (the kernels take int dims).
  QS_CHECK_ARG((int64_t)n_heads * head_dim <= (1 << 20), "config.headDim: nHeads %d x headDim %d is too large", n_heads, head_dim);
  QS_CHECK_ARG((int64_t)vocab_size * d_model < ((int64_t)1 << 40), "config.vocabSize: %d x dModel %d is too large", vocab_size, d_model);
  if (family == ModelFamily::GPT2) {
    QS_CHECK_ARG(n_kv_heads == n_heads, "config.nKvHeads: GPT-2 has no grouped-query attention: must equal config.nHeads %d (got %d)",
                 n_heads, n_kv_heads);
    QS_CHECK_ARG((int64_t)n_heads * head_dim == d_model,
                 "config.headDim: GPT-2 needs nHeads x headDim = dModel (%d x %d != %d)", n_heads, head_dim, d_model);
    QS_CHECK_ARG(sliding_window == 0, "config.slidingWindow: GPT-2 has no sliding window (got %d)", sliding_window);
  } else {
    QS_CHECK_ARG(head_dim % 2 == 0, "config.headDim: must be even for rotary embeddings (got %d)", head_dim);
    QS_CHECK_ARG(std::isfinite(rope_theta) && rope_theta > 0, "config.ropeTheta: must be a finite number > 0 (got %g)", rope_theta);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// parameter names: Hugging Face's, in a fixed order (model.h, /tmp design "Names")

std::vector<ParamSpec> model_param_specs(const ModelConfig& c) {
  std::vector<ParamSpec> s;
  const int64_t D = c.d_model, V = c.vocab_size, F = c.d_ff;
  auto add = [&](std::string name, Shape shape) {
    bool decay = shape.size() >= 2;  // nanoGPT's rule: matrices and embeddings decay, gains and biases not
    s.push_back({std::move(name), std::move(shape), decay});
  };
  if (c.family == ModelFamily::GPT2) {
    add("transformer.wte.weight", {V, D});
    add("transformer.wpe.weight", {c.max_seq_len, D});
    for (int i = 0; i < c.n_layers; i++) {
      std::string p = "transformer.h." + std::to_string(i) + ".";
      add(p + "ln_1.weight", {D});
      add(p + "ln_1.bias", {D});
      add(p + "attn.c_attn.weight", {D, 3 * D});  // Conv1D [in, out]
      add(p + "attn.c_attn.bias", {3 * D});
      add(p + "attn.c_proj.weight", {D, D});
      add(p + "attn.c_proj.bias", {D});
      add(p + "ln_2.weight", {D});
      add(p + "ln_2.bias", {D});
      add(p + "mlp.c_fc.weight", {D, F});
      add(p + "mlp.c_fc.bias", {F});
      add(p + "mlp.c_proj.weight", {F, D});
      add(p + "mlp.c_proj.bias", {D});
    }
    add("transformer.ln_f.weight", {D});
    add("transformer.ln_f.bias", {D});
  } else {
    const int64_t Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
    add("model.embed_tokens.weight", {V, D});
    for (int i = 0; i < c.n_layers; i++) {
      std::string p = "model.layers." + std::to_string(i) + ".";
      add(p + "input_layernorm.weight", {D});
      add(p + "self_attn.q_proj.weight", {Q, D});  // torch Linear [out, in]
      if (c.qkv_bias) add(p + "self_attn.q_proj.bias", {Q});
      add(p + "self_attn.k_proj.weight", {KV, D});
      if (c.qkv_bias) add(p + "self_attn.k_proj.bias", {KV});
      add(p + "self_attn.v_proj.weight", {KV, D});
      if (c.qkv_bias) add(p + "self_attn.v_proj.bias", {KV});
      add(p + "self_attn.o_proj.weight", {D, Q});
      if (c.o_bias) add(p + "self_attn.o_proj.bias", {D});
      add(p + "post_attention_layernorm.weight", {D});
      add(p + "mlp.gate_proj.weight", {F, D});
      if (c.mlp_bias) add(p + "mlp.gate_proj.bias", {F});
      add(p + "mlp.up_proj.weight", {F, D});
      if (c.mlp_bias) add(p + "mlp.up_proj.bias", {F});
      add(p + "mlp.down_proj.weight", {D, F});
      if (c.mlp_bias) add(p + "mlp.down_proj.bias", {D});
    }
    add("model.norm.weight", {D});
  }
  if (!c.tie_embeddings) add("lm_head.weight", {V, D});
  return s;
}

// ---------------------------------------------------------------------------------------------
// creation

Model::~Model() = default;

Status Model::create(Engine& engine, const ModelConfig& config, std::shared_ptr<ParamSet> params,
                     std::unique_ptr<Model>* out) {
  ModelConfig c = config;
  if (c.family == ModelFamily::GPT2) {  // GPT-2 has all of these, whatever the caller said
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
  }
  QS_RETURN_IF_ERROR(c.validate());
  QS_CHECK_ARG(params != nullptr, "Model.create: no parameters given");
  const Tensor& flat = params->params();
  QS_CHECK_ARG(flat.dtype() == DType::F32 || flat.dtype() == DType::F64,
               "Model.create: parameters must be f32 or f64 (got %s)", dtype_name(flat.dtype()));
  QS_CHECK_ARG(flat.device() == engine.device(), "Model.create: parameters live on %s but the engine is %s",
               device_name(flat.device()), device_name(engine.device()));

  // The layout must be the one model_param_specs gives, optionally followed by extra views
  // (Quiet-STaR's start/end embeddings and mixing head live in the same buffer): same views,
  // shapes and offsets as ParamLayout::create(model specs + the extras, in the layout's order).
  // Extra views may not use the model's own namespaces (a tied model given lm_head.weight is
  // a mistake, not an extra).
  std::vector<ParamSpec> specs = model_param_specs(c);
  ParamLayout model_only;
  QS_RETURN_IF_ERROR(ParamLayout::create(specs, &model_only));
  const auto& have = params->layout().entries();
  for (const ParamSpec& n : specs) {
    const ParamEntry* e = params->layout().find(n.name);
    QS_CHECK_ARG(e != nullptr, "Model.create: the parameters have no view '%s' %s (build them from the model's parameter specs)",
                 n.name.c_str(), shape_string(n.shape).c_str());
    QS_CHECK_ARG(e->shape == n.shape, "Model.create: parameter '%s' has shape %s, the config needs %s", e->name.c_str(),
                 shape_string(e->shape).c_str(), shape_string(n.shape).c_str());
  }
  auto starts = [](const std::string& s, const char* p) { return s.compare(0, std::strlen(p), p) == 0; };
  for (const ParamEntry& e : have) {
    if (model_only.find(e.name) != nullptr) continue;
    QS_CHECK_ARG(!starts(e.name, "transformer.") && !starts(e.name, "model.") && !starts(e.name, "lm_head."),
                 "Model.create: the parameters have a view '%s' the config does not use", e.name.c_str());
    specs.push_back({e.name, e.shape, e.decay});
  }
  ParamLayout want;
  QS_RETURN_IF_ERROR(ParamLayout::create(specs, &want));
  for (const ParamEntry& n : want.entries()) {  // same names and shapes: now the placement
    const ParamEntry* e = params->layout().find(n.name);
    QS_CHECK_ARG(e->offset == n.offset && e->decay == n.decay,
                 "Model.create: parameter '%s' sits at offset %lld (decay %d), the model's layout puts it at %lld (decay %d)",
                 e->name.c_str(), (long long)e->offset, (int)e->decay, (long long)n.offset, (int)n.decay);
  }
  QS_CHECK_ARG(params->layout().total() == want.total(), "Model.create: parameter buffer has %lld elements, the model needs %lld",
               (long long)params->layout().total(), (long long)want.total());

  std::unique_ptr<Model> m(new Model());
  m->config_ = c;
  m->params_ = std::move(params);
  m->impl_.reset(new Impl());
  m->impl_->engine = &engine;
  *out = std::move(m);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// input checks (messages name the tensor and the index)

Status check_tokens(const char* what, const char* name, const Tensor& t, int64_t B, int64_t T, int lo, int hi,
                    bool allow_ignore, const char* range_field) {
  QS_CHECK_ARG(t.defined(), "%s: '%s' is missing", what, name);
  QS_CHECK_ARG(t.dtype() == DType::I32, "%s: '%s' must be int32 (got %s)", what, name, t.describe().c_str());
  QS_CHECK_ARG(t.device() == Device::CPU, "%s: '%s' must be on the CPU for now (got %s)", what, name, t.describe().c_str());
  QS_CHECK_ARG(t.rank() == 2 && t.dim(0) == B && t.dim(1) == T, "%s: '%s' must have shape [%lld, %lld] (got %s)", what, name,
               (long long)B, (long long)T, t.describe().c_str());
  const int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < B * T; i++) {
    int v = p[i];
    if ((v < lo || v >= hi) && !(allow_ignore && v == kIgnoreIndex)) {
      return QS_ERROR(INVALID_ARGUMENT, "%s: %s[%lld, %lld] = %d is out of range [%d, %d) (%s)%s", what, name,
                      (long long)(i / T), (long long)(i % T), v, lo, hi, range_field, allow_ignore ? " and is not -100 (ignored)" : "");
    }
  }
  return Status::Ok();
}

Status check_batch(const ModelConfig& config_, Engine& engine, const char* what, const Tensor& ids, const Tensor* targets) {
  QS_RETURN_IF_ERROR(engine.check_alive());
  QS_CHECK_ARG(ids.defined(), "%s: 'ids' is missing", what);
  QS_CHECK_ARG(ids.rank() == 2, "%s: 'ids' must have shape [B, T] (got %s)", what, ids.describe().c_str());
  const int64_t B = ids.dim(0), T = ids.dim(1);
  QS_CHECK_ARG(B >= 1 && T >= 1, "%s: 'ids' must have B >= 1 and T >= 1 (got %s)", what, ids.describe().c_str());
  QS_CHECK_ARG(T <= config_.max_seq_len, "%s: sequence length T = %lld exceeds config.maxSeqLen %d", what, (long long)T,
               config_.max_seq_len);
  QS_CHECK_ARG(B * T <= (int64_t)1 << 28, "%s: B x T = %lld tokens is too many for one call", what, (long long)(B * T));
  QS_RETURN_IF_ERROR(check_tokens(what, "ids", ids, B, T, 0, config_.vocab_size, false, "config.vocabSize"));
  if (targets) QS_RETURN_IF_ERROR(check_tokens(what, "targets", *targets, B, T, 0, config_.vocab_size, true, "config.vocabSize"));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// initialisation: a counter-based normal generator, so every element's value depends only on
// (seed, view index, element index): independent of threads and of the order views are filled.
//   key  = splitmix64(seed ^ splitmix64(view + 1))
//   u1, u2 = the top 53 bits of splitmix64(key + 2k), splitmix64(key + 2k + 1), in (0, 1]
//   element 2k = r cos(2 pi u2), element 2k + 1 = r sin(2 pi u2),  r = sqrt(-2 ln u1)   (Box-Muller)

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
void fill_normal(T* x, int64_t n, uint64_t key, double stddev) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t k = 0; k < (n + 1) / 2; k++) {
    double u1 = ((splitmix64(key + 2 * (uint64_t)k) >> 11) + 1) * (1.0 / 9007199254740992.0);  // (0, 1]
    double u2 = (splitmix64(key + 2 * (uint64_t)k + 1) >> 11) * (1.0 / 9007199254740992.0);
    double r = std::sqrt(-2.0 * std::log(u1)) * stddev, a = 6.283185307179586 * u2;
    x[2 * k] = (T)(r * std::cos(a));
    if (2 * k + 1 < n) x[2 * k + 1] = (T)(r * std::sin(a));
  }
}

template void fill_normal<float>(float*, int64_t, uint64_t, double);
template void fill_normal<double>(double*, int64_t, uint64_t, double);

static bool is_residual_projection(const std::string& name) {
  auto ends = [&](const char* s) {
    size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends("attn.c_proj.weight") || ends("mlp.c_proj.weight") || ends("self_attn.o_proj.weight") ||
         ends("mlp.down_proj.weight");
}

Status Model::init_weights(uint64_t seed) {
  Engine& engine = *impl_->engine;
  QS_RETURN_IF_ERROR(engine.check_alive());
  const Tensor& params = params_->params();
  // On a CUDA engine the values are made on the host (the same generator, so the same values
  // as on a CPU engine) and uploaded.
  Tensor flat = params;
  if (params.device() != Device::CPU) QS_RETURN_IF_ERROR(engine.empty_on(Device::CPU, params.dtype(), params.shape(), &flat));
  const auto& entries = params_->layout().entries();
  const double resid = 0.02 / std::sqrt(2.0 * config_.n_layers);
  std::memset(flat.raw(), 0, flat.nbytes());  // biases 0 (and the padding between views stays 0)
  for (size_t i = 0; i < entries.size(); i++) {
    const ParamEntry& e = entries[i];
    uint64_t key = splitmix64(seed ^ splitmix64((uint64_t)i + 1));
    bool is_bias = e.name.size() >= 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0;
    if (e.shape.size() >= 2) {
      double sd = is_residual_projection(e.name) ? resid : 0.02;
      if (flat.dtype() == DType::F64) fill_normal(flat.data<double>() + e.offset, e.numel, key, sd);
      else fill_normal(flat.data<float>() + e.offset, e.numel, key, sd);
    } else if (!is_bias) {  // norm gains
      if (flat.dtype() == DType::F64) std::fill_n(flat.data<double>() + e.offset, e.numel, 1.0);
      else std::fill_n(flat.data<float>() + e.offset, e.numel, 1.0f);
    }
  }
  if (params.device() != Device::CPU) return engine.upload(flat.raw(), flat.nbytes(), params);
  return Status::Ok();
}

}  // namespace qs
