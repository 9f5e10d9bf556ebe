// tensor_wrap.h: the JS Tensor class: a handle to a TensorSlot plus its engine.
// Created only by engine methods; dispose() is idempotent and frees the memory once every job
// already queued that reads it has run.
#pragma once

#include <napi.h>

#include "addon/common.h"

namespace qs::addon {

class EngineWrap;

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit TensorWrap(const Napi::CallbackInfo& info);
  const std::shared_ptr<TensorSlot>& slot() const { return slot_; }

 private:
  Napi::Value GetDtype(const Napi::CallbackInfo& info);
  Napi::Value GetShape(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDisposed(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<TensorSlot> slot_;
  Napi::ObjectReference engine_ref_;  // keeps the engine alive while its tensors exist
  EngineWrap* engine_ = nullptr;
};

std::shared_ptr<TensorSlot> tensor_slot(const Napi::Object& obj);

}  // namespace qs::addon
