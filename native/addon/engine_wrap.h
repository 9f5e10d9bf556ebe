// engine_wrap.h: the JS Engine class. Owns a qs::Engine and turns its compute-thread jobs into
// Promises: a job runs on the engine's compute thread, then its completion is handed back to
// the JS thread through a thread-safe function, which resolves or rejects the promise. While
// jobs are in flight the thread-safe function is ref'd (keeping the process alive for them)
// and the JS object is ref'd (so it is not collected under a running job); at zero both are
// released, so an idle engine never keeps Node running.
#pragma once

#include <napi.h>

#include <functional>
#include <memory>

#include "addon/common.h"

namespace qs::addon {

class EngineWrap;

struct Job {
  Napi::Promise::Deferred deferred;
  std::function<Status()> work;                          // compute thread
  std::function<Napi::Value(Napi::Env)> resolve;         // JS thread, after success
  Status status;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

void call_js(Napi::Env env, Napi::Function, EngineWrap* engine, Job* job);
using Tsfn = Napi::TypedThreadSafeFunction<EngineWrap, Job, call_js>;

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit EngineWrap(const Napi::CallbackInfo& info);
  ~EngineWrap() override;

  // Queues `work` on the compute thread; the promise resolves with resolve(env).
  Napi::Promise enqueue(Napi::Env env, std::function<Status()> work,
                        std::function<Napi::Value(Napi::Env)> resolve);
  // Fills a new slot with make(): at once on the CPU engine, as an ordered job on CUDA.
  void fill_slot(Napi::Env env, const std::shared_ptr<TensorSlot>& slot, std::function<Status(Tensor*)> make);
  // Releases a slot's storage after every job already queued (which may still read it).
  void release_slot(const std::shared_ptr<TensorSlot>& slot);
  // Drops `owned` on the compute thread after every job already queued (models, caches).
  void release_later(std::shared_ptr<void> owned);
  std::shared_ptr<TensorSlot> new_slot(DType dtype, const Shape& shape);
  Napi::Object wrap_slot(Napi::Env env, const std::shared_ptr<TensorSlot>& slot);
  // The slot of a JS Tensor argument, checked: a Tensor, not disposed, from this engine.
  std::shared_ptr<TensorSlot> slot_of(const Napi::Value& v, const std::string& what);

  qs::Engine* engine() { return engine_.get(); }
  uint64_t id() const { return id_; }
  void check_usable(Napi::Env env);
  void job_done(Napi::Env env);

 private:
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetThreads(const Napi::CallbackInfo& info);
  Napi::Value GetPrecision(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value GetPending(const Napi::CallbackInfo& info);
  Napi::Value TensorFromArray(const Napi::CallbackInfo& info);
  Napi::Value Empty(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value ReadSync(const Napi::CallbackInfo& info);
  Napi::Value Memory(const Napi::CallbackInfo& info);
  Napi::Value ReleaseCachedMemory(const Napi::CallbackInfo& info);
  Napi::Value Synchronize(const Napi::CallbackInfo& info);
  Napi::Value Sleep(const Napi::CallbackInfo& info);
  Napi::Value CreateParameters(const Napi::CallbackInfo& info);
  Napi::Value CreateModel(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void destroy();
  static void cleanup_hook(EngineWrap* self);

  std::unique_ptr<qs::Engine> engine_;
  Tsfn tsfn_;
  uint64_t id_ = 0;
  int in_flight_ = 0;
  bool disposed_ = false;
  bool destroyed_ = false;
  Napi::Env env_ = nullptr;
};

}  // namespace qs::addon
