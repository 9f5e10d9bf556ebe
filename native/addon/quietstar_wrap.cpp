// quietstar_wrap.cpp: see quietstar_wrap.h.
#include "addon/quietstar_wrap.h"

#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "addon/engine_wrap.h"
#include "addon/model_wrap.h"

namespace qs::addon {

// ---------------------------------------------------------------------------------------------
// arguments

[[noreturn]] static void bad_arg(Napi::Env env, const std::string& message) {
  throw_status(env, Status(Code::INVALID_ARGUMENT, message));
}

static constexpr int64_t kMaxSeed = (int64_t)1 << 53;  // the largest exact JS integer

// The JS options object (lib/quietstar/model.ts NativeQuietStarOptions: the fields of
// QuietStarOptions in lib/quietstar/options.ts, mixing as a boolean, plus the marker ids).
static QuietStarOptions parse_options(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsObject()) bad_arg(env, "quietstar options must be an object");
  Napi::Object o = v.As<Napi::Object>();
  QuietStarOptions q;
  auto integer = [&](const char* field, int* dst) {
    *dst = (int)get_int(o.Get(field), std::string("quietstar.") + field, INT_MIN, INT_MAX);
  };
  auto number = [&](const char* field, double* dst) {
    *dst = get_number(o.Get(field), (std::string("quietstar.") + field).c_str());
    if (!std::isfinite(*dst)) bad_arg(env, std::string("quietstar.") + field + " must be finite");
  };
  auto boolean = [&](const char* field, bool* dst) { *dst = get_bool(o.Get(field), std::string("quietstar.") + field); };
  integer("nAhead", &q.n_ahead);
  integer("nAheadTalk", &q.n_ahead_talk);
  integer("nPasses", &q.n_passes);
  integer("startId", &q.start_id);
  integer("endId", &q.end_id);
  number("embeddingScale", &q.embedding_scale);
  number("originalLossWeight", &q.original_loss_weight);
  number("baseLossBeta", &q.base_loss_beta);
  number("policyLossBeta", &q.policy_loss_beta);
  number("reinforceTemperature", &q.reinforce_temperature);
  number("thoughtTemperature", &q.thought_temperature);
  boolean("removeNegativeRewards", &q.remove_negative_rewards);
  boolean("triceBaseline", &q.trice_baseline);
  boolean("mixingWeightsBase", &q.mixing_weights_base);
  boolean("mixingSigmoid", &q.mixing_sigmoid);
  boolean("recomputeActivations", &q.recompute_activations);
  return q;
}

static int dim_arg(const Napi::Value& v, const std::string& what) { return (int)get_int(v, what, 1, INT_MAX); }

static uint64_t seed_arg(const Napi::Value& v) { return (uint64_t)get_int(v, "seed", 0, kMaxSeed); }

static double scale_arg(const Napi::Value& v) {
  if (v.IsUndefined()) return 1.0;
  double s = get_number(v, "lossScale");
  if (!std::isfinite(s)) bad_arg(v.Env(), "lossScale must be finite");
  return s;
}

// The (B, T) token arrays of a batch: ids, optional valid (undefined = all valid), labels.
struct BatchArrays {
  int B = 0, T = 0;
  HostArray ids, valid, labels;
};

static std::shared_ptr<BatchArrays> batch_arrays(const Napi::CallbackInfo& info, int b_arg, bool with_labels) {
  auto b = std::make_shared<BatchArrays>();
  b->B = dim_arg(info[b_arg], "batch.B");
  b->T = dim_arg(info[b_arg + 1], "batch.T");
  Shape shape{b->B, b->T};
  b->ids = host_array(info[0], DType::I32, shape, "batch.ids");
  if (!info[1].IsUndefined() && !info[1].IsNull()) b->valid = host_array(info[1], DType::U8, shape, "batch.valid");
  if (with_labels) b->labels = host_array(info[2], DType::I32, shape, "batch.labels");
  return b;
}

struct BatchTensors {
  Tensor ids, valid, labels;
};

static Status batch_tensors(Engine& e, const BatchArrays& b, BatchTensors* t) {
  QS_RETURN_IF_ERROR(to_tensor(e, b.ids, &t->ids));
  QS_RETURN_IF_ERROR(to_tensor(e, b.valid, &t->valid));
  return to_tensor(e, b.labels, &t->labels);
}

// Compute thread: an int32 tensor's values.
static Status download_i32(Engine& e, const Tensor& t, std::vector<int32_t>* out) {
  if (t.dtype() != DType::I32) return QS_ERROR(INTERNAL, "thoughts are %s, not int32", t.describe().c_str());
  out->resize((size_t)t.numel());
  return out->empty() ? Status::Ok() : e.download(t, out->data(), out->size() * sizeof(int32_t));
}

static Napi::Int32Array int32_array(Napi::Env env, const std::vector<int32_t>& v) {
  Napi::Int32Array arr = Napi::Int32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(arr.Data(), v.data(), v.size() * sizeof(int32_t));
  return arr;
}

// A float tensor's bytes (compute thread) and, on the JS thread, a Float32Array / Float64Array.
struct FloatBytes {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<char> bytes;
};

static Status download_float(Engine& e, const Tensor& t, const char* what, FloatBytes* out) {
  if (t.dtype() != DType::F32 && t.dtype() != DType::F64)
    return QS_ERROR(INTERNAL, "%s is %s, not f32/f64", what, t.describe().c_str());
  out->dtype = t.dtype();
  out->shape = t.shape();
  out->bytes.resize(t.nbytes());
  return out->bytes.empty() ? Status::Ok() : e.download(t, out->bytes.data(), out->bytes.size());
}

static Napi::Value float_array(Napi::Env env, const FloatBytes& r) {
  size_t n = r.bytes.size() / dtype_size(r.dtype);
  if (r.dtype == DType::F64) {
    Napi::Float64Array a = Napi::Float64Array::New(env, n);
    if (n) std::memcpy(a.Data(), r.bytes.data(), r.bytes.size());
    return a;
  }
  Napi::Float32Array a = Napi::Float32Array::New(env, n);
  if (n) std::memcpy(a.Data(), r.bytes.data(), r.bytes.size());
  return a;
}

static Napi::Object metrics_to_js(Napi::Env env, const QuietStarMetrics& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", m.loss);
  o.Set("nllBase", m.nll_base);
  o.Set("nllTalk", m.nll_talk);
  o.Set("policyLoss", m.policy_loss);
  o.Set("rewardMean", m.reward_mean);
  o.Set("rewardStd", m.reward_std);
  o.Set("positiveShare", m.positive_share);
  o.Set("mixMean", m.mix_mean);
  o.Set("mixStd", m.mix_std);
  o.Set("mixMin", m.mix_min);
  o.Set("mixMax", m.mix_max);
  o.Set("tokens", (double)m.tokens);
  return o;
}

// ---------------------------------------------------------------------------------------------
// free function and construction

Napi::Value QuietStarParamSpecs(const Napi::CallbackInfo& info) {
  return param_specs_to_js(info.Env(), quietstar_param_specs(parse_model_config(info[0])));
}

Napi::Function QuietStarWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeQuietStar",
                     {InstanceMethod<&QuietStarWrap::InitParameters>("initParameters"),
                      InstanceMethod<&QuietStarWrap::SampleThoughts>("sampleThoughts"),
                      InstanceMethod<&QuietStarWrap::ForwardBackward>("forwardBackward"),
                      InstanceMethod<&QuietStarWrap::Step>("step"),
                      InstanceMethod<&QuietStarWrap::DebugTensor>("debugTensor"),
                      InstanceMethod<&QuietStarWrap::TalkLogits>("talkLogits"),
                      InstanceMethod<&QuietStarWrap::ThinkResetCache>("thinkResetCache"),
                      InstanceMethod<&QuietStarWrap::ThinkDecode>("thinkDecode"),
                      InstanceAccessor<&QuietStarWrap::GetDisposed>("disposed"),
                      InstanceMethod<&QuietStarWrap::Dispose>("dispose")});
}

Napi::Value QuietStarWrap::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value mv = info[0];
  if (!mv.IsObject() || !mv.As<Napi::Object>().InstanceOf(addon_data(env)->model_class.Value())) {
    bad_arg(env, "createQuietStar(model, options): model must come from engine.createModel()");
  }
  ModelWrap* mw = ModelWrap::Unwrap(mv.As<Napi::Object>());
  if (!mw->model()) throw_status(env, Status(Code::DISPOSED, "createQuietStar: the model was disposed"));
  EngineWrap* engine = mw->engine_wrap();
  engine->check_usable(env);
  QuietStarOptions options = parse_options(info[1]);
  // The config is fixed at creation, so reading it here races with nothing.
  QS_THROW_IF_ERROR(env, options.validate(mw->model()->config()));
  auto state = std::make_shared<State>();
  state->model = mw->model();
  qs::Engine* e = engine->engine();
  auto engine_obj = std::make_shared<Napi::ObjectReference>(Napi::Persistent(engine->Value()));
  return engine->enqueue(
      env,
      [e, options, state]() -> Status { return QuietStar::create(*e, state->model.get(), options, &state->step); },
      [state, engine_obj](Napi::Env env) -> Napi::Value {
        auto* holder = new std::shared_ptr<State>(state);
        auto ext = Napi::External<std::shared_ptr<State>>::New(env, holder, [](Napi::Env, std::shared_ptr<State>* p) { delete p; });
        return addon_data(env)->quietstar_class.New({ext, engine_obj->Value()});
      });
}

// new NativeQuietStar(External<shared_ptr<State>>, engine): only createQuietStar calls this.
QuietStarWrap::QuietStarWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<QuietStarWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsObject()) {
    bad_arg(env, "Quiet-STaR steps are created by createQuietStar(model, options), not with new");
  }
  // Taken, not copied: the External lives until GC and must not keep the step's memory.
  state_ = std::move(*info[0].As<Napi::External<std::shared_ptr<State>>>().Data());
  engine_ref_ = Napi::Persistent(info[1].As<Napi::Object>());
  engine_ = EngineWrap::Unwrap(info[1].As<Napi::Object>());
}

void QuietStarWrap::check(Napi::Env env) {
  if (disposed_) throw_status(env, Status(Code::DISPOSED, "this QuietStarModel was disposed"));
}

Napi::Promise QuietStarWrap::enqueue(Napi::Env env, std::function<Status(State&)> work,
                                     std::function<Napi::Value(Napi::Env)> done) {
  check(env);
  // As in ModelWrap::enqueue: the job drops its reference on the compute thread.
  auto state = std::make_shared<std::shared_ptr<State>>(state_);
  auto self = std::make_shared<Napi::ObjectReference>(Napi::Persistent(Value()));  // alive until resolved
  return engine_->enqueue(
      env,
      [state, work = std::move(work)]() -> Status {
        Status st = work(**state);
        state->reset();
        return st;
      },
      [self, done = std::move(done)](Napi::Env env) -> Napi::Value { return done ? done(env) : env.Undefined(); });
}

// ---------------------------------------------------------------------------------------------
// methods

// initParameters(initTokenId, seed): Promise<void>
Napi::Value QuietStarWrap::InitParameters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int token = (int)get_int(info[0], "initTokenId", 0, INT_MAX);
  uint64_t seed = seed_arg(info[1]);
  return enqueue(env, [token, seed](State& s) { return s.step->init_parameters(token, seed); }, nullptr);
}

// sampleThoughts(ids, valid | undefined, B, T, seed, rowIds | undefined): Promise<Int32Array> (R, T, nAhead - 3)
Napi::Value QuietStarWrap::SampleThoughts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  auto batch = batch_arrays(info, 2, false);
  uint64_t seed = seed_arg(info[4]);
  auto rows = std::make_shared<HostArray>();
  if (info.Length() > 5 && !info[5].IsUndefined() && !info[5].IsNull()) *rows = host_array(info[5], DType::I32, Shape{batch->B}, "rowIds");
  auto out = std::make_shared<std::vector<int32_t>>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, batch, rows, seed, out](State& s) -> Status {
        BatchTensors t;
        QS_RETURN_IF_ERROR(batch_tensors(*e, *batch, &t));
        Tensor thoughts, tr;
        QS_RETURN_IF_ERROR(to_tensor(*e, *rows, &tr));
        QS_RETURN_IF_ERROR(s.step->sample_thoughts(t.ids, t.valid, seed, &thoughts, tr));
        return download_i32(*e, thoughts, out.get());
      },
      [out](Napi::Env env) -> Napi::Value { return int32_array(env, *out); });
}

// forwardBackward(ids, valid | undefined, labels, B, T, thoughts, backward, lossScale): Promise<metrics>
Napi::Value QuietStarWrap::ForwardBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  auto batch = batch_arrays(info, 3, true);
  const QuietStarOptions& o = state_->step->options();  // fixed at creation
  Shape tshape{(int64_t)batch->B * o.n_passes, batch->T, o.thought_tokens()};
  auto thoughts = std::make_shared<HostArray>(host_array(info[5], DType::I32, tshape, "thoughts"));
  bool backward = get_bool(info[6], "backward");
  double scale = scale_arg(info[7]);
  auto m = std::make_shared<QuietStarMetrics>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, batch, thoughts, backward, scale, m](State& s) -> Status {
        BatchTensors t;
        QS_RETURN_IF_ERROR(batch_tensors(*e, *batch, &t));
        Tensor tt;
        QS_RETURN_IF_ERROR(to_tensor(*e, *thoughts, &tt));
        return s.step->forward_backward(t.ids, t.valid, t.labels, tt, backward, scale, m.get());
      },
      [m](Napi::Env env) -> Napi::Value { return metrics_to_js(env, *m); });
}

// step(ids, valid | undefined, labels, B, T, seed, lossScale): Promise<metrics & {thoughts}>
Napi::Value QuietStarWrap::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  auto batch = batch_arrays(info, 3, true);
  uint64_t seed = seed_arg(info[5]);
  double scale = scale_arg(info[6]);
  auto m = std::make_shared<QuietStarMetrics>();
  auto out = std::make_shared<std::vector<int32_t>>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, batch, seed, scale, m, out](State& s) -> Status {
        BatchTensors t;
        QS_RETURN_IF_ERROR(batch_tensors(*e, *batch, &t));
        Tensor thoughts;
        QS_RETURN_IF_ERROR(s.step->step(t.ids, t.valid, t.labels, seed, scale, m.get(), &thoughts));
        return download_i32(*e, thoughts, out.get());
      },
      [m, out](Napi::Env env) -> Napi::Value {
        Napi::Object o = metrics_to_js(env, *m);
        o.Set("thoughts", int32_array(env, *out));
        return o;
      });
}

// debugTensor(name): Promise<{data: Float32Array | Float64Array, shape}>, a copy
Napi::Value QuietStarWrap::DebugTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  std::string name = get_string(info[0], "name");
  auto r = std::make_shared<FloatBytes>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, name, r](State& s) -> Status {
        Tensor t;
        QS_RETURN_IF_ERROR(s.step->debug_tensor(name, &t));
        return download_float(*e, t, ("debug tensor '" + name + "'").c_str(), r.get());
      },
      [r](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("data", float_array(env, *r));
        o.Set("shape", shape_to_js(env, r->shape));
        return o;
      });
}

// talkLogits(at: Int32Array (K·2), K): Promise<{mixed, base}> each (K, V) row-major
Napi::Value QuietStarWrap::TalkLogits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int K = (int)get_int(info[1], "K", 0, INT_MAX);
  auto at = std::make_shared<HostArray>(host_array(info[0], DType::I32, Shape{K, 2}, "at"));
  auto mixed = std::make_shared<FloatBytes>(), base = std::make_shared<FloatBytes>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, at, mixed, base](State& s) -> Status {
        Tensor t, m, b;
        QS_RETURN_IF_ERROR(to_tensor(*e, *at, &t));
        QS_RETURN_IF_ERROR(s.step->talk_logits(t, &m, &b));
        QS_RETURN_IF_ERROR(download_float(*e, m, "talk logits", mixed.get()));
        return download_float(*e, b, "base logits", base.get());
      },
      [mixed, base](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("mixed", float_array(env, *mixed));
        o.Set("base", float_array(env, *base));
        return o;
      });
}

// thinkResetCache(B, maxLen): Promise<void>
Napi::Value QuietStarWrap::ThinkResetCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int B = dim_arg(info[0], "B");
  int max_len = dim_arg(info[1], "maxLen");
  return enqueue(env, [B, max_len](State& s) { return s.step->think_reset(B, max_len); }, nullptr);
}

// thinkDecode(ids, positions, valid | undefined, B, n, seed, rowIds | undefined):
//   Promise<{logits, baseLogits: Float32Array | Float64Array (B, V), thoughts: Int32Array (B, nAhead - 3)}>
Napi::Value QuietStarWrap::ThinkDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  int B = dim_arg(info[3], "B"), n = dim_arg(info[4], "n");
  Shape shape{B, n};
  auto ids = std::make_shared<HostArray>(host_array(info[0], DType::I32, shape, "ids"));
  auto positions = std::make_shared<HostArray>(host_array(info[1], DType::I32, shape, "positions"));
  auto valid = std::make_shared<HostArray>();
  if (!info[2].IsUndefined() && !info[2].IsNull()) *valid = host_array(info[2], DType::U8, shape, "valid");
  uint64_t seed = seed_arg(info[5]);
  auto rows = std::make_shared<HostArray>();
  if (info.Length() > 6 && !info[6].IsUndefined() && !info[6].IsNull()) *rows = host_array(info[6], DType::I32, Shape{B}, "rowIds");
  auto logits = std::make_shared<FloatBytes>(), base = std::make_shared<FloatBytes>();
  auto thoughts = std::make_shared<std::vector<int32_t>>();
  qs::Engine* e = engine_->engine();
  return enqueue(
      env,
      [e, ids, positions, valid, rows, seed, logits, base, thoughts](State& s) -> Status {
        Tensor ti, tp, tv, tr, l, b, th;
        QS_RETURN_IF_ERROR(to_tensor(*e, *ids, &ti));
        QS_RETURN_IF_ERROR(to_tensor(*e, *positions, &tp));
        QS_RETURN_IF_ERROR(to_tensor(*e, *valid, &tv));
        QS_RETURN_IF_ERROR(to_tensor(*e, *rows, &tr));
        QS_RETURN_IF_ERROR(s.step->think_decode(ti, tp, tv, tr, seed, &l, &b, &th));
        QS_RETURN_IF_ERROR(download_float(*e, l, "logits", logits.get()));
        QS_RETURN_IF_ERROR(download_float(*e, b, "base logits", base.get()));
        return download_i32(*e, th, thoughts.get());
      },
      [logits, base, thoughts](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("logits", float_array(env, *logits));
        o.Set("baseLogits", float_array(env, *base));
        o.Set("thoughts", int32_array(env, *thoughts));
        return o;
      });
}

Napi::Value QuietStarWrap::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

// dispose(): frees the step's buffers (and its reference to the model) once the jobs already
// queued have run (idempotent).
Napi::Value QuietStarWrap::Dispose(const Napi::CallbackInfo& info) {
  if (disposed_) return info.Env().Undefined();
  disposed_ = true;
  engine_->release_later(std::move(state_));
  state_.reset();
  engine_ref_.Reset();
  return info.Env().Undefined();
}

}  // namespace qs::addon
