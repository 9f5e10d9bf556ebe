// params_wrap.h: the JS Parameters class over qs::ParamSet (one flat buffer each for
// parameters, gradients and AdamW moments, with named views).
#pragma once

#include <napi.h>

#include "addon/common.h"
#include "quietstar/params.h"

namespace qs::addon {

class EngineWrap;

class ParamsWrap : public Napi::ObjectWrap<ParamsWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  // engine.createParameters(specs: {name, shape, decay}[], dtype, withOptimizer): Promise<Parameters>
  static Napi::Value Create(EngineWrap* engine, const Napi::CallbackInfo& info);
  explicit ParamsWrap(const Napi::CallbackInfo& info);
  // For engine.createModel: the set (compute thread use only), its engine, whether disposed.
  const std::shared_ptr<ParamSet>& set() const { return set_; }
  EngineWrap* engine() const { return engine_; }
  bool disposed() const { return disposed_; }

 private:
  Napi::Value Entries(const Napi::CallbackInfo& info);
  Napi::Value Buffer(const Napi::CallbackInfo& info);
  Napi::Value AdamwStep(const Napi::CallbackInfo& info);
  Napi::Value ClipGradNorm(const Napi::CallbackInfo& info);
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info);
  Napi::Value SetStep(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  void check(Napi::Env env);

  std::shared_ptr<ParamSet> set_;  // used on the compute thread only
  ParamLayout layout_;             // main-thread copy for entries()
  Napi::ObjectReference engine_ref_;
  EngineWrap* engine_ = nullptr;
  Napi::ObjectReference buffers_[4];  // params, grads, m, v Tensor objects
  bool disposed_ = false;
};

}  // namespace qs::addon
