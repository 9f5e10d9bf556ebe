// params_wrap.cpp: see params_wrap.h.
#include "addon/params_wrap.h"

#include "addon/engine_wrap.h"
#include "addon/tensor_wrap.h"

namespace qs::addon {

struct ParamsInit {
  std::shared_ptr<ParamSet> set;
  ParamLayout layout;
};

static const char* kBufferNames[4] = {"params", "grads", "m", "v"};

Napi::Function ParamsWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeParameters",
                     {InstanceMethod<&ParamsWrap::Entries>("entries"), InstanceMethod<&ParamsWrap::Buffer>("buffer"),
                      InstanceMethod<&ParamsWrap::AdamwStep>("adamwStep"),
                      InstanceMethod<&ParamsWrap::ClipGradNorm>("clipGradNorm"),
                      InstanceMethod<&ParamsWrap::ZeroGrad>("zeroGrad"), InstanceMethod<&ParamsWrap::SetStep>("setStep"),
                      InstanceMethod<&ParamsWrap::Dispose>("dispose")});
}

Napi::Value ParamsWrap::Create(EngineWrap* engine, const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  engine->check_usable(env);
  if (info.Length() < 1 || !info[0].IsArray()) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "createParameters(specs): specs must be an array of {name, shape, decay}"));
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<ParamSpec> specs;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    std::string where = "specs[" + std::to_string(i) + "]";
    Napi::Value v = arr.Get(i);
    if (!v.IsObject()) throw_status(env, Status(Code::INVALID_ARGUMENT, where + " must be an object"));
    Napi::Object o = v.As<Napi::Object>();
    ParamSpec s;
    s.name = get_string(o.Get("name"), (where + ".name").c_str());
    s.shape = get_shape(o.Get("shape"), (where + ".shape").c_str());
    Napi::Value decay = o.Get("decay");
    s.decay = decay.IsUndefined() ? true : decay.ToBoolean().Value();
    specs.push_back(std::move(s));
  }
  std::string dtype_str = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "f32";
  DType dtype;
  if (!parse_dtype(dtype_str, &dtype)) throw_status(env, Status(Code::INVALID_ARGUMENT, "unknown dtype '" + dtype_str + "'"));
  bool with_optimizer = info.Length() > 2 ? info[2].ToBoolean().Value() : true;
  auto init = std::make_shared<ParamsInit>();
  QS_THROW_IF_ERROR(env, ParamLayout::create(specs, &init->layout));
  qs::Engine* e = engine->engine();
  Napi::ObjectReference* engine_obj = new Napi::ObjectReference(Napi::Persistent(engine->Value()));
  std::shared_ptr<Napi::ObjectReference> engine_ref(engine_obj);
  return engine->enqueue(
      env,
      [e, init, dtype, with_optimizer]() -> Status {
        std::unique_ptr<ParamSet> set;
        QS_RETURN_IF_ERROR(ParamSet::create(*e, dtype, init->layout, with_optimizer, &set));
        init->set = std::move(set);
        return Status::Ok();
      },
      [init, engine_ref](Napi::Env env) -> Napi::Value {
        auto* holder = new std::shared_ptr<ParamsInit>(init);
        auto ext = Napi::External<std::shared_ptr<ParamsInit>>::New(env, holder, [](Napi::Env, std::shared_ptr<ParamsInit>* p) { delete p; });
        return addon_data(env)->params_class.New({ext, engine_ref->Value()});
      });
}

ParamsWrap::ParamsWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ParamsWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsObject()) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "Parameters are created by engine.createParameters(), not with new"));
  }
  std::shared_ptr<ParamsInit> init = *info[0].As<Napi::External<std::shared_ptr<ParamsInit>>>().Data();
  set_ = std::move(init->set);  // the External lives until GC: it must not keep the buffers
  layout_ = init->layout;
  engine_ref_ = Napi::Persistent(info[1].As<Napi::Object>());
  engine_ = EngineWrap::Unwrap(info[1].As<Napi::Object>());
  const Tensor* flats[4] = {&set_->params(), &set_->grads(), &set_->m(), &set_->v()};
  for (int i = 0; i < 4; i++) {
    if (!flats[i]->defined()) continue;
    auto slot = engine_->new_slot(flats[i]->dtype(), flats[i]->shape());
    slot->tensor = *flats[i];
    buffers_[i] = Napi::Persistent(engine_->wrap_slot(env, slot));
  }
}

void ParamsWrap::check(Napi::Env env) {
  if (disposed_) throw_status(env, Status(Code::DISPOSED, "these Parameters were disposed"));
}

// entries(): [{name, shape, offset, numel, decay}] in buffer order
Napi::Value ParamsWrap::Entries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array arr = Napi::Array::New(env);
  uint32_t i = 0;
  for (const ParamEntry& e : layout_.entries()) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", e.name);
    o.Set("shape", shape_to_js(env, e.shape));
    o.Set("offset", (double)e.offset);
    o.Set("numel", (double)e.numel);
    o.Set("decay", e.decay);
    arr.Set(i++, o);
  }
  return arr;
}

// buffer('params' | 'grads' | 'm' | 'v'): the flat Tensor (the same object every call)
Napi::Value ParamsWrap::Buffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  std::string which = get_string(info[0], "buffer name");
  for (int i = 0; i < 4; i++) {
    if (which == kBufferNames[i]) {
      if (buffers_[i].IsEmpty()) {
        throw_status(env, Status(Code::INVALID_ARGUMENT, "buffer '" + which + "' was not allocated (created without optimizer state)"));
      }
      return buffers_[i].Value();
    }
  }
  throw_status(env, Status(Code::INVALID_ARGUMENT, "buffer must be 'params', 'grads', 'm' or 'v' (got '" + which + "')"));
}

// adamwStep({lr, beta1, beta2, eps, weightDecay, bf16State}): Promise<step number after the update>
Napi::Value ParamsWrap::AdamwStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  AdamWConfig c;
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* k, double* dst) {
      Napi::Value v = o.Get(k);
      if (!v.IsUndefined()) *dst = get_number(v, k);
    };
    num("lr", &c.lr);
    num("beta1", &c.beta1);
    num("beta2", &c.beta2);
    num("eps", &c.eps);
    num("weightDecay", &c.weight_decay);
    Napi::Value bf16 = o.Get("bf16State");
    if (!bf16.IsUndefined()) {
      if (!bf16.IsBoolean()) QS_THROW_IF_ERROR(env, QS_ERROR(INVALID_ARGUMENT, "adamwStep: bf16State must be a boolean"));
      c.bf16_state = bf16.As<Napi::Boolean>().Value();
    }
  }
  auto set = set_;
  auto step = std::make_shared<int64_t>(0);
  return engine_->enqueue(
      env,
      [set, c, step]() -> Status {
        QS_RETURN_IF_ERROR(set->adamw_step(c));
        *step = set->step();
        return Status::Ok();
      },
      [step](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, (double)*step); });
}

// clipGradNorm(maxNorm): Promise<norm before clipping>; maxNorm <= 0 only measures.
Napi::Value ParamsWrap::ClipGradNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check(env);
  double max_norm = info.Length() > 0 ? get_number(info[0], "maxNorm") : 0;
  auto set = set_;
  auto norm = std::make_shared<double>(0);
  return engine_->enqueue(
      env, [set, max_norm, norm]() { return set->clip_grad_norm(max_norm, norm.get()); },
      [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); });
}

Napi::Value ParamsWrap::ZeroGrad(const Napi::CallbackInfo& info) {
  check(info.Env());
  auto set = set_;
  return engine_->enqueue(info.Env(), [set]() { return set->zero_grad(); }, nullptr);
}

// setStep(n): the AdamW step counter (restoring a checkpoint)
Napi::Value ParamsWrap::SetStep(const Napi::CallbackInfo& info) {
  check(info.Env());
  double step = get_number(info[0], "step");
  if (!(step >= 0 && step == (double)(int64_t)step)) {
    throw_status(info.Env(), Status(Code::INVALID_ARGUMENT, "step must be a non-negative integer"));
  }
  auto set = set_;
  return engine_->enqueue(info.Env(), [set, step]() { set->set_step((int64_t)step); return Status::Ok(); }, nullptr);
}

Napi::Value ParamsWrap::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) return env.Undefined();
  disposed_ = true;
  for (auto& b : buffers_) {
    if (b.IsEmpty()) continue;
    b.Value().Get("dispose").As<Napi::Function>().Call(b.Value(), {});
    b.Reset();
  }
  // The ParamSet itself goes once the jobs already queued with it have run: each holds its
  // own reference.
  set_.reset();
  engine_ref_.Reset();
  return env.Undefined();
}

}  // namespace qs::addon
