// quietstar_wrap.h: the JS NativeQuietStar class over qs::QuietStar (the Quiet-STaR training
// step, native/include/quietstar/quietstar.h).
//
// createQuietStar(model, options) builds one over a NativeModel whose parameters were created
// from modelParamSpecs(config) ++ quietstarParamSpecs(config) and whose vocabulary already holds
// the two thought markers (options.startId, options.endId). Like NativeModel, every heavy call
// is a job on the engine's compute thread returning a Promise, and typed arrays are copied on
// the JS thread. The wrapper holds its own reference to the native Model, so disposing the
// NativeModel first cannot free it under a queued step. dispose() releases the step's buffers
// after the jobs already queued; later calls throw DISPOSED.
#pragma once

#include <napi.h>

#include <memory>

#include "addon/common.h"
#include "quietstar/quietstar.h"

namespace qs::addon {

class EngineWrap;

// quietstarParamSpecs(config): [{name, shape, decay}], the extra views appended after the
// model's (start_embedding, end_embedding, talk_head.*). Validates config.
Napi::Value QuietStarParamSpecs(const Napi::CallbackInfo& info);

class QuietStarWrap : public Napi::ObjectWrap<QuietStarWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  // createQuietStar(model: NativeModel, options): Promise<NativeQuietStar>
  static Napi::Value Create(const Napi::CallbackInfo& info);
  explicit QuietStarWrap(const Napi::CallbackInfo& info);

  // What a job needs: the step and the model it points into (kept alive together).
  struct State {
    std::shared_ptr<Model> model;
    std::unique_ptr<QuietStar> step;
  };

 private:
  Napi::Value InitParameters(const Napi::CallbackInfo& info);
  Napi::Value SampleThoughts(const Napi::CallbackInfo& info);
  Napi::Value ForwardBackward(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value DebugTensor(const Napi::CallbackInfo& info);
  Napi::Value TalkLogits(const Napi::CallbackInfo& info);
  Napi::Value ThinkResetCache(const Napi::CallbackInfo& info);
  Napi::Value ThinkDecode(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void check(Napi::Env env);
  // Queues `work(state)`; `done` (JS thread, on success) makes the result.
  Napi::Promise enqueue(Napi::Env env, std::function<Status(State&)> work, std::function<Napi::Value(Napi::Env)> done);

  std::shared_ptr<State> state_;  // used on the compute thread only; null once disposed
  Napi::ObjectReference engine_ref_;
  EngineWrap* engine_ = nullptr;
  bool disposed_ = false;
};

}  // namespace qs::addon
