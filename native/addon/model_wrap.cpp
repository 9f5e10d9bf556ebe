// model_wrap.cpp: see model_wrap.h.
#include "addon/model_wrap.h"

#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "addon/engine_wrap.h"
#include "addon/params_wrap.h"
#include "addon/tensor_wrap.h"

namespace qs::addon {

// ---------------------------------------------------------------------------------------------
// arguments

[[noreturn]] static void bad_arg(Napi::Env env, const std::string& message) {
  throw_status(env, Status(Code::INVALID_ARGUMENT, message));
}

// An integer in [lo, hi], named `what` in the error.
int64_t get_int(const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi) {
  double x = get_number(v, what.c_str());
  if (!(x == std::floor(x) && x >= (double)lo && x <= (double)hi)) {
    bad_arg(v.Env(), what + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                         Napi::Number::New(v.Env(), x).ToString().Utf8Value() + ")");
  }
  return (int64_t)x;
}

bool get_bool(const Napi::Value& v, const std::string& what) {
  if (!v.IsBoolean()) bad_arg(v.Env(), what + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

// The JS ModelConfig (lib/model/config.ts field names) as the native struct, validated.
ModelConfig parse_model_config(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) bad_arg(env, "config must be an object");
  Napi::Object o = v.As<Napi::Object>();
  ModelConfig c;
  std::string type = get_string(o.Get("modelType"), "config.modelType");
  if (type == "gpt2") c.family = ModelFamily::GPT2;
  else if (type == "llama" || type == "mistral" || type == "qwen2") c.family = ModelFamily::Llama;
  else bad_arg(env, "config.modelType must be 'gpt2', 'llama', 'mistral' or 'qwen2' (got '" + type + "')");
  auto integer = [&](const char* field, int* dst) {
    *dst = (int)get_int(o.Get(field), std::string("config.") + field, INT_MIN, INT_MAX);
  };
  auto number = [&](const char* field, double* dst) {
    *dst = get_number(o.Get(field), (std::string("config.") + field).c_str());
  };
  auto boolean = [&](const char* field, bool* dst) { *dst = get_bool(o.Get(field), std::string("config.") + field); };
  integer("vocabSize", &c.vocab_size);
  integer("dModel", &c.d_model);
  integer("nLayers", &c.n_layers);
  integer("nHeads", &c.n_heads);
  integer("nKvHeads", &c.n_kv_heads);
  integer("headDim", &c.head_dim);
  integer("dFF", &c.d_ff);
  integer("maxSeqLen", &c.max_seq_len);
  number("normEps", &c.norm_eps);
  number("ropeTheta", &c.rope_theta);
  boolean("tieEmbeddings", &c.tie_embeddings);
  boolean("qkvBias", &c.qkv_bias);
  boolean("oBias", &c.o_bias);
  boolean("mlpBias", &c.mlp_bias);
  integer("slidingWindow", &c.sliding_window);
  QS_THROW_IF_ERROR(env, c.validate());
  return c;
}

HostArray host_array(const Napi::Value& v, DType dtype, const Shape& shape, const std::string& what) {
  Napi::Env env = v.Env();
  napi_typedarray_type want = dtype == DType::I32 ? napi_int32_array : napi_uint8_array;
  const char* type_name = dtype == DType::I32 ? "an Int32Array" : "a Uint8Array";
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != want) bad_arg(env, what + " must be " + type_name);
  Napi::TypedArray arr = v.As<Napi::TypedArray>();
  int64_t n = shape_numel(shape);
  if ((int64_t)arr.ElementLength() != n) {
    bad_arg(env, what + " has " + std::to_string(arr.ElementLength()) + " elements; shape " + shape_string(shape) +
                     " needs " + std::to_string(n));
  }
  HostArray h;
  h.dtype = dtype;
  h.shape = shape;
  h.defined = true;
  const char* src = static_cast<const char*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
  h.bytes.assign(src, src + (size_t)n * dtype_size(dtype));
  return h;
}

// Compute thread: the host tensor of a HostArray (undefined stays undefined). Token inputs stay
// on the host whatever the engine: the passes check them there and stage what the kernels read.
Status to_tensor(Engine& e, const HostArray& h, Tensor* out) {
  if (!h.defined) {
    *out = Tensor();
    return Status::Ok();
  }
  QS_RETURN_IF_ERROR(e.empty_on(Device::CPU, h.dtype, h.shape, out));
  if (!h.bytes.empty()) std::memcpy(out->raw(), h.bytes.data(), h.bytes.size());
  return Status::Ok();
}

static int dim_arg(const Napi::Value& v, const std::string& what) { return (int)get_int(v, what, 1, INT_MAX); }

// The (ids, targets, B, T) arguments of forward() and tokenLosses(), copied on the JS thread.
struct HostBatch {
  std::shared_ptr<HostArray> ids, targets;
};

static HostBatch batch_args(const Napi::CallbackInfo& info) {
  int B = dim_arg(info[2], "batch.B"), T = dim_arg(info[3], "batch.T");
  Shape shape{B, T};
  return {std::make_shared<HostArray>(host_array(info[0], DType::I32, shape, "batch.ids")),
          std::make_shared<HostArray>(host_array(info[1], DType::I32, shape, "batch.targets"))};
}

// Compute thread: the batch as tensors.
static Status batch_tensors(Engine& e, const HostBatch& b, Tensor* ids, Tensor* targets) {
  QS_RETURN_IF_ERROR(to_tensor(e, *b.ids, ids));
  return to_tensor(e, *b.targets, targets);
}

// ---------------------------------------------------------------------------------------------
// free function and construction

Napi::Value ModelParamSpecs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ModelConfig config = parse_model_config(info[0]);
  return param_specs_to_js(env, model_param_specs(config));
}

Napi::Array param_specs_to_js(Napi::Env env, const std::vector<ParamSpec>& specs) {
  Napi::Array arr = Napi::Array::New(env, specs.size());
  for (size_t i = 0; i < specs.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", specs[i].name);
    o.Set("shape", shape_to_js(env, specs[i].shape));
    o.Set("decay", specs[i].decay);
    arr.Set((uint32_t)i, o);
  }
  return arr;
}

Napi::Function ModelWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {InstanceMethod<&ModelWrap::InitWeights>("initWeights"),
                      InstanceMethod<&ModelWrap::Forward>("forward"),
                      InstanceMethod<&ModelWrap::Backward>("backward"),
                      InstanceMethod<&ModelWrap::TokenLosses>("tokenLosses"),
                      InstanceMethod<&ModelWrap::Logits>("logits"),
                      InstanceMethod<&ModelWrap::ResetCache>("resetCache"),
                      InstanceMethod<&ModelWrap::Decode>("decode"),
                      InstanceAccessor<&ModelWrap::GetCacheLength>("cacheLength"),
                      InstanceAccessor<&ModelWrap::GetDisposed>("disposed"),
                      InstanceMethod<&ModelWrap::Dispose>("dispose")});
}

Napi::Value ModelWrap::Create(EngineWrap* engine, const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  engine->check_usable(env);
  ModelConfig config = parse_model_config(info[0]);
  Napi::Value pv = info[1];
  if (!pv.IsObject() || !pv.As<Napi::Object>().InstanceOf(addon_data(env)->params_class.Value())) {
    bad_arg(env, "createModel(config, parameters): parameters must come from engine.createParameters()");
  }
  ParamsWrap* params = ParamsWrap::Unwrap(pv.As<Napi::Object>());
  if (params->disposed()) throw_status(env, Status(Code::DISPOSED, "createModel: the parameters were disposed"));
  if (params->engine() != engine) bad_arg(env, "createModel: the parameters belong to another Engine");
  std::shared_ptr<ParamSet> set = params->set();
  qs::Engine* e = engine->engine();
  auto made = std::make_shared<std::shared_ptr<Model>>();
  auto engine_obj = std::make_shared<Napi::ObjectReference>(Napi::Persistent(engine->Value()));
  return engine->enqueue(
      env,
      [e, config, set, made]() -> Status {
        std::unique_ptr<Model> m;
        QS_RETURN_IF_ERROR(Model::create(*e, config, set, &m));
        *made = std::move(m);
        return Status::Ok();
      },
      [made, engine_obj](Napi::Env env) -> Napi::Value {
        auto* holder = new std::shared_ptr<Model>(std::move(*made));
        auto ext = Napi::External<std::shared_ptr<Model>>::New(env, holder, [](Napi::Env, std::shared_ptr<Model>* p) { delete p; });
        return addon_data(env)->model_class.New({ext, engine_obj->Value()});
      });
}

// new NativeModel(External<shared_ptr<Model>>, engine): only createModel calls this.
ModelWrap::ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsObject()) {
    bad_arg(env, "models are created by Model.create() (engine.createModel), not with new");
  }
  // Taken, not copied: the External lives until GC and must not keep the model's memory.
  model_ = std::move(*info[0].As<Napi::External<std::shared_ptr<Model>>>().Data());
  engine_ref_ = Napi::Persistent(info[1].As<Napi::Object>());
  engine_ = EngineWrap::Unwrap(info[1].As<Napi::Object>());
}

void ModelWrap::check(Napi::Env env) {
  if (disposed_) throw_status(env, Status(Code::DISPOSED, "this Model was disposed"));
}

Napi::Promise ModelWrap::enqueue(Napi::Env env, std::function<Status(Model&)> work,
                                 std::function<Napi::Value(Napi::Env, ModelWrap&)> done) {
  check(env);
  // The job drops its reference on the compute thread, so the model's memory is never freed
  // on the JS thread while kernels run (dispose() hands the last reference to that thread too).
  auto model = std::make_shared<std::shared_ptr<Model>>(model_);
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));  // alive until resolved
  return engine_->enqueue(
      env,
      [model, work = std::move(work)]() -> Status {
        Status st = work(**model);
        model->reset();
        return st;
      },
      [self, done = std::move(done)](Napi::Env env) -> Napi::Value {
        return done ? done(env, *ModelWrap::Unwrap(self->Value())) : env.Undefined();
      });
}

// ---------------------------------------------------------------------------------------------
// methods

// initWeights(seed): Promise<void>
Napi::Value ModelWrap::InitWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  uint64_t seed = (uint64_t)get_int(info[0], "seed", 0, (int64_t)1 << 53);
  return enqueue(env, [seed](Model& m) { return m.init_weights(seed); }, nullptr);
}

// forward(ids: Int32Array, targets: Int32Array, B, T): Promise<{loss, tokens}>
Napi::Value ModelWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  HostBatch batch = batch_args(info);
  struct Result { double loss = 0; int64_t count = 0; };
  auto r = std::make_shared<Result>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, batch, r](Model& m) -> Status {
        Tensor ti, tt;
        QS_RETURN_IF_ERROR(batch_tensors(*e, batch, &ti, &tt));
        return m.forward(ti, tt, &r->loss, &r->count);
      },
      [r](Napi::Env env, ModelWrap&) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("loss", r->loss);
        o.Set("tokens", (double)r->count);
        return o;
      });
}

// backward(lossScale): Promise<void>
Napi::Value ModelWrap::Backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  double scale = info.Length() > 0 && !info[0].IsUndefined() ? get_number(info[0], "lossScale") : 1.0;
  if (!std::isfinite(scale)) bad_arg(env, "lossScale must be finite");
  return enqueue(env, [scale](Model& m) { return m.backward(scale); }, nullptr);
}

// tokenLosses(ids, targets, B, T): Promise<Float32Array> of B·T NLLs (0 where ignored)
Napi::Value ModelWrap::TokenLosses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  HostBatch batch = batch_args(info);
  auto out = std::make_shared<std::vector<float>>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, batch, out](Model& m) -> Status {
        Tensor ti, tt, losses;
        QS_RETURN_IF_ERROR(batch_tensors(*e, batch, &ti, &tt));
        QS_RETURN_IF_ERROR(m.token_losses(ti, tt, &losses));
        size_t n = (size_t)losses.numel();
        out->resize(n);
        if (losses.dtype() == DType::F32) return e->download(losses, out->data(), n * sizeof(float));
        if (losses.dtype() != DType::F64) return QS_ERROR(INTERNAL, "token_losses returned %s", losses.describe().c_str());
        std::vector<double> tmp(n);
        QS_RETURN_IF_ERROR(e->download(losses, tmp.data(), n * sizeof(double)));
        for (size_t i = 0; i < n; i++) (*out)[i] = (float)tmp[i];
        return Status::Ok();
      },
      [out](Napi::Env env, ModelWrap&) -> Napi::Value {
        Napi::Float32Array arr = Napi::Float32Array::New(env, out->size());
        if (!out->empty()) std::memcpy(arr.Data(), out->data(), out->size() * sizeof(float));
        return arr;
      });
}

// A Tensor made by a model job, handed to JS (the caller disposes it).
static Napi::Value wrap_result(Napi::Env env, EngineWrap* engine, const Tensor& t) {
  auto slot = engine->new_slot(t.dtype(), t.shape());
  slot->tensor = t;
  return engine->wrap_slot(env, slot);
}

// logits(ids, B, T, lastOnly): Promise<Tensor> (B,T,V) or (B,V)
Napi::Value ModelWrap::Logits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int B = dim_arg(info[1], "batch.B"), T = dim_arg(info[2], "batch.T");
  bool last_only = info.Length() > 3 && info[3].ToBoolean().Value();
  auto ids = std::make_shared<HostArray>(host_array(info[0], DType::I32, Shape{B, T}, "batch.ids"));
  auto out = std::make_shared<Tensor>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, ids, last_only, out](Model& m) -> Status {
        Tensor ti;
        QS_RETURN_IF_ERROR(to_tensor(*e, *ids, &ti));
        return m.logits(ti, last_only, out.get());
      },
      [out](Napi::Env env, ModelWrap& self) -> Napi::Value { return wrap_result(env, self.engine_, *out); });
}

// resetCache(B, maxLen): Promise<void>
Napi::Value ModelWrap::ResetCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int B = dim_arg(info[0], "B"), max_len = dim_arg(info[1], "maxLen");
  auto len = std::make_shared<int>(0);
  return enqueue(
      env,
      [B, max_len, len](Model& m) -> Status {
        QS_RETURN_IF_ERROR(m.reset_cache(B, max_len));
        *len = m.cache_length();
        return Status::Ok();
      },
      [len](Napi::Env env, ModelWrap& self) -> Napi::Value {
        if (!self.disposed_) self.cache_length_ = *len;
        return env.Undefined();
      });
}

// decode(ids, positions, valid | undefined, n): Promise<Tensor> (B,V), B = ids.length / n
Napi::Value ModelWrap::Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int n = dim_arg(info[3], "step.n");
  if (!info[0].IsTypedArray()) bad_arg(env, "step.ids must be an Int32Array");
  size_t count = info[0].As<Napi::TypedArray>().ElementLength();
  if (count == 0 || count % (size_t)n != 0) {
    bad_arg(env, "step.ids has " + std::to_string(count) + " elements: must be B·n with B >= 1 and n = " + std::to_string(n));
  }
  Shape shape{(int64_t)(count / n), n};
  auto ids = std::make_shared<HostArray>(host_array(info[0], DType::I32, shape, "step.ids"));
  auto positions = std::make_shared<HostArray>(host_array(info[1], DType::I32, shape, "step.positions"));
  auto valid = std::make_shared<HostArray>();
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) *valid = host_array(info[2], DType::U8, shape, "step.valid");
  auto out = std::make_shared<Tensor>();
  auto len = std::make_shared<int>(0);
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, ids, positions, valid, out, len](Model& m) -> Status {
        Tensor ti, tp, tv;
        QS_RETURN_IF_ERROR(to_tensor(*e, *ids, &ti));
        QS_RETURN_IF_ERROR(to_tensor(*e, *positions, &tp));
        QS_RETURN_IF_ERROR(to_tensor(*e, *valid, &tv));
        Status st = m.decode(ti, tp, tv, out.get());
        *len = m.cache_length();
        return st;
      },
      [out, len](Napi::Env env, ModelWrap& self) -> Napi::Value {
        if (!self.disposed_) self.cache_length_ = *len;
        return wrap_result(env, self.engine_, *out);
      });
}

Napi::Value ModelWrap::GetCacheLength(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), cache_length_); }
Napi::Value ModelWrap::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

// dispose(): frees activations and the cache once the jobs already queued have run
// (idempotent). The parameters are not the model's to free: they have their own dispose().
Napi::Value ModelWrap::Dispose(const Napi::CallbackInfo& info) {
  if (disposed_) return info.Env().Undefined();
  disposed_ = true;
  cache_length_ = 0;
  engine_->release_later(std::move(model_));
  model_.reset();
  engine_ref_.Reset();
  return info.Env().Undefined();
}

}  // namespace qs::addon
