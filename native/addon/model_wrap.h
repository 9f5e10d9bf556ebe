// model_wrap.h: the JS NativeModel class over qs::Model (GPT-2 / Llama-family transformers).
//
// engine.createModel(config, parameters) builds one over a NativeParameters whose views came
// from modelParamSpecs(config) (the native model_param_specs: TypeScript never lists parameter
// names itself). Every heavy call is a job on the engine's compute thread returning a Promise;
// token arrays are copied on the JS thread, so callers may reuse theirs at once. dispose()
// frees activations and the KV cache after the jobs already queued; later calls throw DISPOSED.
#pragma once

#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "addon/common.h"
#include "quietstar/model.h"

namespace qs::addon {

class EngineWrap;

// modelParamSpecs(config): [{name, shape, decay}] in the native layout order. Validates config.
Napi::Value ModelParamSpecs(const Napi::CallbackInfo& info);

// ---- shared with the wrappers built over a model (quietstar_wrap.cpp) ----------------------
// The JS ModelConfig (lib/model/config.ts field names) as the native struct, validated.
ModelConfig parse_model_config(const Napi::Value& v);
// Parameter views as [{name, shape, decay}].
Napi::Array param_specs_to_js(Napi::Env env, const std::vector<ParamSpec>& specs);
// An integer in [lo, hi] / a boolean; INVALID_ARGUMENT naming `what` otherwise.
int64_t get_int(const Napi::Value& v, const std::string& what, int64_t lo, int64_t hi);
bool get_bool(const Napi::Value& v, const std::string& what);

// Token data copied off a JS typed array on the JS thread (the caller may reuse its array at
// once); a job turns it into a tensor on the engine's device.
struct HostArray {
  DType dtype = DType::I32;
  Shape shape;
  std::vector<char> bytes;
  bool defined = false;
};
// An Int32Array (I32) or Uint8Array (U8) of exactly shape's elements, named `what` in errors.
HostArray host_array(const Napi::Value& v, DType dtype, const Shape& shape, const std::string& what);
// Compute thread: the tensor of a HostArray (undefined stays undefined).
Status to_tensor(Engine& e, const HostArray& h, Tensor* out);

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  // engine.createModel(config, parameters): Promise<NativeModel>
  static Napi::Value Create(EngineWrap* engine, const Napi::CallbackInfo& info);
  explicit ModelWrap(const Napi::CallbackInfo& info);
  // For wrappers built over this model (quietstar_wrap): null once disposed.
  const std::shared_ptr<Model>& model() const { return model_; }
  EngineWrap* engine_wrap() const { return engine_; }

 private:
  Napi::Value InitWeights(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Backward(const Napi::CallbackInfo& info);
  Napi::Value TokenLosses(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value ResetCache(const Napi::CallbackInfo& info);
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value GetCacheLength(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void check(Napi::Env env);
  // Queues `work(model)`; `done` (JS thread, on success) makes the result from this wrapper.
  Napi::Promise enqueue(Napi::Env env, std::function<Status(Model&)> work,
                        std::function<Napi::Value(Napi::Env, ModelWrap&)> done);

  std::shared_ptr<Model> model_;  // used on the compute thread only; null once disposed
  Napi::ObjectReference engine_ref_;
  EngineWrap* engine_ = nullptr;
  int cache_length_ = 0;  // as of the last completed cache job
  bool disposed_ = false;
};

}  // namespace qs::addon
