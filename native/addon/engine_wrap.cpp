// engine_wrap.cpp: see engine_wrap.h.
#include "addon/engine_wrap.h"

#include <chrono>
#include <map>
#include <cstring>
#include <thread>

#include "addon/model_wrap.h"
#include "addon/params_wrap.h"
#include "addon/tensor_wrap.h"
#include "quietstar/ops.h"

namespace qs::addon {

// ---------------------------------------------------------------------------------------------
// job completion on the JS thread

void call_js(Napi::Env env, Napi::Function, EngineWrap* engine, Job* job) {
  std::unique_ptr<Job> owned(job);
  if (env == nullptr) return;  // environment shutting down: nothing to resolve
  if (job->status.ok()) {
    try {
      job->deferred.Resolve(job->resolve ? job->resolve(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      job->deferred.Reject(e.Value());
    }
  } else {
    job->deferred.Reject(make_error(env, job->status).Value());
  }
  engine->job_done(env);
}

// ---------------------------------------------------------------------------------------------
// construction and disposal

Napi::Function EngineWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeEngine",
                     {InstanceAccessor<&EngineWrap::GetDevice>("device"),
                      InstanceAccessor<&EngineWrap::GetThreads>("threads"),
                      InstanceAccessor<&EngineWrap::GetPrecision>("precision"),
                      InstanceAccessor<&EngineWrap::GetDisposed>("disposed"),
                      InstanceAccessor<&EngineWrap::GetPending>("pending"),
                      InstanceMethod<&EngineWrap::TensorFromArray>("tensorFromArray"),
                      InstanceMethod<&EngineWrap::Empty>("empty"),
                      InstanceMethod<&EngineWrap::View>("view"),
                      InstanceMethod<&EngineWrap::Run>("run"),
                      InstanceMethod<&EngineWrap::Read>("read"),
                      InstanceMethod<&EngineWrap::ReadSync>("readSync"),
                      InstanceMethod<&EngineWrap::Memory>("memory"),
                      InstanceMethod<&EngineWrap::ReleaseCachedMemory>("releaseCachedMemory"),
                      InstanceMethod<&EngineWrap::Synchronize>("synchronize"),
                      InstanceMethod<&EngineWrap::Sleep>("debugSleep"),
                      InstanceMethod<&EngineWrap::CreateParameters>("createParameters"),
                      InstanceMethod<&EngineWrap::CreateModel>("createModel"),
                      InstanceMethod<&EngineWrap::Dispose>("dispose")});
}

// new NativeEngine({device, threads, cudaDevice, precision})
EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  EngineOptions options;
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    if (o.Has("device") && !o.Get("device").IsUndefined()) options.device = get_string(o.Get("device"), "options.device");
    if (o.Has("threads") && !o.Get("threads").IsUndefined()) options.threads = (int)get_number(o.Get("threads"), "options.threads");
    if (o.Has("cudaDevice") && !o.Get("cudaDevice").IsUndefined())
      options.cuda_device = (int)get_number(o.Get("cudaDevice"), "options.cudaDevice");
    if (o.Has("precision") && !o.Get("precision").IsUndefined())
      options.precision = get_string(o.Get("precision"), "options.precision");
  }
  QS_THROW_IF_ERROR(env, Engine::create(options, &engine_));
  id_ = addon_data(env)->next_engine_id++;
  tsfn_ = Tsfn::New(env, "quietstar-engine", 0, 1, this);
  tsfn_.Unref(env);
  napi_add_env_cleanup_hook(env, reinterpret_cast<void (*)(void*)>(&EngineWrap::cleanup_hook), this);
}

EngineWrap::~EngineWrap() {
  destroy();
}

void EngineWrap::cleanup_hook(EngineWrap* self) {
  self->destroyed_ = true;  // the hook is consumed; the destructor must not remove it again
  self->engine_.reset();    // joins the compute thread after its queue
  self->tsfn_.Abort();
}

// Frees the engine once: joins the compute thread, releases the thread-safe function and the
// environment cleanup hook (which has nothing left to do).
void EngineWrap::destroy() {
  if (destroyed_) return;
  destroyed_ = true;
  napi_remove_env_cleanup_hook(env_, reinterpret_cast<void (*)(void*)>(&EngineWrap::cleanup_hook), this);
  engine_.reset();
  tsfn_.Release();
}

Napi::Value EngineWrap::Dispose(const Napi::CallbackInfo& info) {
  if (disposed_) return info.Env().Undefined();  // idempotent
  disposed_ = true;
  if (in_flight_ == 0) destroy();
  // else: the last job_done() destroys it
  return info.Env().Undefined();
}

void EngineWrap::check_usable(Napi::Env env) {
  if (disposed_) throw_status(env, Status(Code::DISPOSED, "this Engine was disposed"));
  QS_THROW_IF_ERROR(env, engine_->check_alive());
}

void EngineWrap::job_done(Napi::Env env) {
  if (--in_flight_ == 0) {
    tsfn_.Unref(env);
    Unref();
    if (disposed_) destroy();
  }
}

Napi::Promise EngineWrap::enqueue(Napi::Env env, std::function<Status()> work,
                                  std::function<Napi::Value(Napi::Env)> resolve) {
  check_usable(env);
  Job* job = new Job(env);
  job->work = std::move(work);
  job->resolve = std::move(resolve);
  Napi::Promise promise = job->deferred.Promise();
  if (in_flight_++ == 0) {
    tsfn_.Ref(env);
    Ref();
  }
  Tsfn tsfn = tsfn_;
  engine_->submit([job, tsfn]() mutable {
    try {
      job->status = job->work();
    } catch (const std::bad_alloc&) {
      job->status = QS_ERROR(OUT_OF_MEMORY, "host allocation failed (std::bad_alloc)");
    } catch (const std::exception& e) {
      job->status = QS_ERROR(INTERNAL, "unexpected C++ exception: %s", e.what());
    }
    tsfn.BlockingCall(job);
  });
  return promise;
}

// ---------------------------------------------------------------------------------------------
// tensors

std::shared_ptr<TensorSlot> EngineWrap::new_slot(DType dtype, const Shape& shape) {
  auto slot = std::make_shared<TensorSlot>();
  slot->dtype = dtype;
  slot->shape = shape;
  slot->device = engine_->device();
  slot->engine_id = id_;
  return slot;
}

void EngineWrap::fill_slot(Napi::Env env, const std::shared_ptr<TensorSlot>& slot, std::function<Status(Tensor*)> make) {
  if (engine_->device() == Device::CPU) {
    QS_THROW_IF_ERROR(env, make(&slot->tensor));
    return;
  }
  // CUDA: allocation and copies belong to the compute thread; later jobs see the result in order.
  engine_->submit([slot, make = std::move(make)] {
    Status st = make(&slot->tensor);
    if (!st.ok()) slot->error = st;
  });
}

void EngineWrap::release_slot(const std::shared_ptr<TensorSlot>& slot) {
  if (destroyed_ || !engine_) {
    slot->tensor = Tensor();
    return;
  }
  engine_->submit([slot] { slot->tensor = Tensor(); });
}

void EngineWrap::release_later(std::shared_ptr<void> owned) {
  if (destroyed_ || !engine_) return;  // `owned` goes here, with no compute thread left
  engine_->submit([owned]() mutable { owned.reset(); });
}

Napi::Object EngineWrap::wrap_slot(Napi::Env env, const std::shared_ptr<TensorSlot>& slot) {
  auto* holder = new std::shared_ptr<TensorSlot>(slot);
  auto ext = Napi::External<std::shared_ptr<TensorSlot>>::New(env, holder, [](Napi::Env, std::shared_ptr<TensorSlot>* p) { delete p; });
  return addon_data(env)->tensor_class.New({ext, Value()});
}

static bool typed_array_dtype(const Napi::TypedArray& arr, const std::string& requested, DType* out, std::string* why) {
  DType natural;
  switch (arr.TypedArrayType()) {
    case napi_float32_array: natural = DType::F32; break;
    case napi_float64_array: natural = DType::F64; break;
    case napi_int32_array: natural = DType::I32; break;
    case napi_uint8_array: natural = DType::U8; break;
    case napi_uint16_array: natural = DType::BF16; break;  // storage of bf16 or f16: dtype must say which
    default: *why = "data must be a Float32Array, Float64Array, Int32Array, Uint8Array or Uint16Array (bf16/f16 bits)"; return false;
  }
  if (requested.empty()) {
    if (arr.TypedArrayType() == napi_uint16_array) { *why = "a Uint16Array needs dtype 'bf16' or 'f16'"; return false; }
    *out = natural;
    return true;
  }
  DType want;
  if (!parse_dtype(requested, &want)) { *why = "unknown dtype '" + requested + "'"; return false; }
  bool ok = want == natural || (arr.TypedArrayType() == napi_uint16_array && (want == DType::BF16 || want == DType::F16));
  if (!ok) { *why = std::string("dtype '") + requested + "' does not match the array type"; return false; }
  *out = want;
  return true;
}

// tensorFromArray(data: TypedArray, shape: number[], dtype?: string): Tensor
Napi::Value EngineWrap::TensorFromArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  if (info.Length() < 2 || !info[0].IsTypedArray()) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "tensorFromArray(data, shape): data must be a typed array"));
  }
  Napi::TypedArray arr = info[0].As<Napi::TypedArray>();
  Shape shape = get_shape(info[1], "shape");
  std::string requested = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  DType dtype;
  std::string why;
  if (!typed_array_dtype(arr, requested, &dtype, &why)) throw_status(env, Status(Code::INVALID_ARGUMENT, why));
  int64_t n = shape_numel(shape);
  if ((int64_t)arr.ElementLength() != n) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "data has " + std::to_string(arr.ElementLength()) +
                                                         " elements but shape " + shape_string(shape) + " needs " +
                                                         std::to_string(n)));
  }
  const char* src = static_cast<const char*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
  size_t bytes = (size_t)n * dtype_size(dtype);
  auto slot = new_slot(dtype, shape);
  qs::Engine* e = engine_.get();
  if (e->device() == Device::CPU) {
    fill_slot(env, slot, [&](Tensor* t) {
      QS_RETURN_IF_ERROR(e->empty(dtype, shape, t));
      std::memcpy(t->raw(), src, bytes);
      return Status::Ok();
    });
  } else {
    auto staging = std::make_shared<std::vector<char>>(src, src + bytes);  // JS may reuse its buffer
    fill_slot(env, slot, [e, dtype, shape, staging](Tensor* t) {
      QS_RETURN_IF_ERROR(e->empty(dtype, shape, t));
      return e->upload(staging->data(), staging->size(), *t);
    });
  }
  return wrap_slot(env, slot);
}

// empty(dtype: string, shape: number[]): Tensor (zero-filled)
Napi::Value EngineWrap::Empty(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  std::string name = get_string(info[0], "dtype");
  DType dtype;
  if (!parse_dtype(name, &dtype)) throw_status(env, Status(Code::INVALID_ARGUMENT, "unknown dtype '" + name + "'"));
  Shape shape = get_shape(info[1], "shape");
  auto slot = new_slot(dtype, shape);
  qs::Engine* e = engine_.get();
  fill_slot(env, slot, [e, dtype, shape](Tensor* t) { return e->empty(dtype, shape, t); });
  return wrap_slot(env, slot);
}

// view(tensor, offsetElements, shape): Tensor sharing the storage
Napi::Value EngineWrap::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  auto parent = slot_of(info[0], "tensor");
  double offset = get_number(info[1], "offset");
  Shape shape = get_shape(info[2], "shape");
  int64_t n = shape_numel(shape), total = shape_numel(parent->shape);
  if (!(offset >= 0 && offset == (double)(int64_t)offset && (int64_t)offset + n <= total)) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "view of " + shape_string(shape) + " at offset " +
                                                         std::to_string((int64_t)offset) + " does not fit in " +
                                                         std::string(dtype_name(parent->dtype)) + shape_string(parent->shape)));
  }
  auto slot = new_slot(parent->dtype, shape);
  fill_slot(env, slot, [parent, offset, shape](Tensor* t) {
    if (!parent->error.ok()) return parent->error;
    return parent->tensor.view((int64_t)offset, shape, t);
  });
  return wrap_slot(env, slot);
}

std::shared_ptr<TensorSlot> EngineWrap::slot_of(const Napi::Value& v, const std::string& what) {
  Napi::Env env = v.Env();
  Napi::FunctionReference& cls = addon_data(env)->tensor_class;
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(cls.Value())) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, what + " must be a Tensor"));
  }
  std::shared_ptr<TensorSlot> slot = tensor_slot(v.As<Napi::Object>());
  if (slot->disposed) {
    throw_status(env, Status(Code::DISPOSED, what + " (" + dtype_name(slot->dtype) + shape_string(slot->shape) +
                                                 ") was disposed"));
  }
  if (slot->engine_id != id_) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, what + " belongs to another Engine"));
  }
  return slot;
}

// ---------------------------------------------------------------------------------------------
// ops

// run(op: string, tensors: {[name]: Tensor}, numbers: {[name]: number}, strings: {[name]: string})
//   -> Promise<{[name]: Tensor}>; in-place outputs come back as the same JS objects passed in.
Napi::Value EngineWrap::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  std::string op = get_string(info[0], "op");
  struct Input {
    std::string name;
    std::shared_ptr<TensorSlot> slot;
    std::shared_ptr<Napi::ObjectReference> js;
  };
  auto inputs = std::make_shared<std::vector<Input>>();
  auto args = std::make_shared<OpArgs>();
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Array keys = o.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); i++) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value v = o.Get(key);
      if (v.IsUndefined() || v.IsNull()) continue;
      auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(v.As<Napi::Object>()));
      inputs->push_back({key, slot_of(v, op + ": tensor '" + key + "'"), ref});
    }
  }
  if (info.Length() > 2 && info[2].IsObject()) {
    Napi::Object o = info[2].As<Napi::Object>();
    Napi::Array keys = o.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); i++) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value v = o.Get(key);
      if (v.IsUndefined()) continue;
      if (v.IsBoolean()) args->numbers[key] = v.As<Napi::Boolean>().Value() ? 1 : 0;
      else args->numbers[key] = get_number(v, (op + ": '" + key + "'").c_str());
    }
  }
  if (info.Length() > 3 && info[3].IsObject()) {
    Napi::Object o = info[3].As<Napi::Object>();
    Napi::Array keys = o.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); i++) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value v = o.Get(key);
      if (!v.IsUndefined()) args->strings[key] = get_string(v, (op + ": '" + key + "'").c_str());
    }
  }
  auto outputs = std::make_shared<OpOutputs>();
  // Output name -> index of the input it is (in-place ops), decided on the compute thread,
  // which owns the slots' tensors.
  auto in_place = std::make_shared<std::map<std::string, size_t>>();
  qs::Engine* e = engine_.get();
  return enqueue(
      env,
      [e, op, inputs, args, outputs, in_place]() -> Status {
        for (const Input& in : *inputs) {
          if (!in.slot->error.ok()) return in.slot->error;
          args->tensors[in.name] = in.slot->tensor;
        }
        Status st = run_op(*e, op, *args, outputs.get());
        args->tensors.clear();
        for (auto& kv : *outputs) {
          for (size_t i = 0; i < inputs->size(); i++) {
            const Tensor& t = (*inputs)[i].slot->tensor;
            if (t.storage() == kv.second.storage() && t.offset_bytes() == kv.second.offset_bytes() &&
                t.shape() == kv.second.shape() && t.dtype() == kv.second.dtype())
              (*in_place)[kv.first] = i;
          }
        }
        return st;
      },
      [this, inputs, outputs, in_place](Napi::Env env) -> Napi::Value {
        Napi::Object result = Napi::Object::New(env);
        for (auto& kv : *outputs) {
          auto same = in_place->find(kv.first);
          if (same != in_place->end()) {
            // An in-place output is the caller's own tensor: hand back that JS object.
            result.Set(kv.first, (*inputs)[same->second].js->Value());
          } else {
            auto slot = new_slot(kv.second.dtype(), kv.second.shape());
            slot->tensor = kv.second;
            result.Set(kv.first, wrap_slot(env, slot));
          }
        }
        return result;
      });
}

// read(tensor): Promise<ArrayBuffer> with the tensor's bytes (a copy).
Napi::Value EngineWrap::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  auto slot = slot_of(info[0], "tensor");
  size_t bytes = (size_t)shape_numel(slot->shape) * dtype_size(slot->dtype);
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
  auto ref = std::make_shared<Napi::ObjectReference>(Napi::Persistent(buffer.As<Napi::Object>()));
  void* dst = buffer.Data();
  qs::Engine* e = engine_.get();
  return enqueue(
      env,
      [e, slot, dst, bytes]() -> Status {
        if (!slot->error.ok()) return slot->error;
        return e->download(slot->tensor, dst, bytes);
      },
      [ref](Napi::Env) -> Napi::Value { return ref->Value(); });
}

// readSync(tensor): ArrayBuffer, CPU engines only, with no job in flight.
Napi::Value EngineWrap::ReadSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_usable(env);
  auto slot = slot_of(info[0], "tensor");
  if (engine_->device() != Device::CPU) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "dataSync() works on CPU engines only; use await data()"));
  }
  if (in_flight_ > 0) {
    throw_status(env, Status(Code::INVALID_ARGUMENT,
                             "dataSync() while " + std::to_string(in_flight_) +
                                 " job(s) are in flight could see half-written data; await them or use await data()"));
  }
  size_t bytes = slot->tensor.nbytes();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
  if (bytes) std::memcpy(buffer.Data(), slot->tensor.raw(), bytes);
  return buffer;
}

// releaseCachedMemory(): number — bytes of cached device memory given back (0 on the CPU or
// after dispose). Safe from the JS thread: the allocator has its own lock.
Napi::Value EngineWrap::ReleaseCachedMemory(const Napi::CallbackInfo& info) {
  if (destroyed_ || !engine_) return Napi::Number::New(info.Env(), 0);
  return Napi::Number::New(info.Env(), (double)engine_->release_cached_memory());
}

Napi::Value EngineWrap::Memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  if (destroyed_ || !engine_) {
    o.Set("hostBytes", 0.0);
    o.Set("deviceBytes", 0.0);
    return o;
  }
  MemorySnapshot m = engine_->memory();
  o.Set("hostBytes", (double)m.host_bytes);
  o.Set("deviceBytes", (double)m.device_bytes);
  o.Set("hostPeakBytes", (double)m.host_peak);
  o.Set("devicePeakBytes", (double)m.device_peak);
  o.Set("hostBuffers", (double)m.host_storages);
  o.Set("deviceBuffers", (double)m.device_storages);
  if (m.device_total >= 0) {
    o.Set("deviceFreeBytes", (double)m.device_free);
    o.Set("deviceTotalBytes", (double)m.device_total);
  }
  if (engine_->device() == Device::CUDA) {
    o.Set("deviceReservedBytes", (double)m.device_reserved);
    o.Set("deviceReservedPeakBytes", (double)m.device_reserved_peak);
    o.Set("deviceCachedBytes", (double)m.device_cached);
    o.Set("deviceAllocations", (double)m.device_allocations);
    o.Set("deviceCacheHits", (double)m.device_cache_hits);
  }
  return o;
}

Napi::Value EngineWrap::Synchronize(const Napi::CallbackInfo& info) {
  qs::Engine* e = engine_ ? engine_.get() : nullptr;
  return enqueue(info.Env(), [e]() { return e->synchronize(); }, nullptr);
}

// debugSleep(ms): a job that occupies the compute thread (tests of ordering and the event loop).
Napi::Value EngineWrap::Sleep(const Napi::CallbackInfo& info) {
  double ms = get_number(info[0], "ms");
  return enqueue(
      info.Env(),
      [ms]() {
        std::this_thread::sleep_for(std::chrono::microseconds((int64_t)(ms * 1000)));
        return Status::Ok();
      },
      nullptr);
}

Napi::Value EngineWrap::GetDevice(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), engine_ ? device_name(engine_->device()) : "disposed");
}
Napi::Value EngineWrap::GetThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), engine_ ? engine_->threads() : 0);
}
Napi::Value EngineWrap::GetPrecision(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), engine_ ? engine_->precision() : "disposed");
}
Napi::Value EngineWrap::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
Napi::Value EngineWrap::GetPending(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), in_flight_); }

Napi::Value EngineWrap::CreateParameters(const Napi::CallbackInfo& info) { return ParamsWrap::Create(this, info); }
Napi::Value EngineWrap::CreateModel(const Napi::CallbackInfo& info) { return ModelWrap::Create(this, info); }

}  // namespace qs::addon
