// tensor_wrap.cpp: see tensor_wrap.h.
#include "addon/tensor_wrap.h"

#include "addon/engine_wrap.h"

namespace qs::addon {

Napi::Function TensorWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {InstanceAccessor<&TensorWrap::GetDtype>("dtype"), InstanceAccessor<&TensorWrap::GetShape>("shape"),
                      InstanceAccessor<&TensorWrap::GetDevice>("device"),
                      InstanceAccessor<&TensorWrap::GetDisposed>("disposed"),
                      InstanceMethod<&TensorWrap::Dispose>("dispose")});
}

// new NativeTensor(External<slot>, engine): only engines call this.
TensorWrap::TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsExternal() || !info[1].IsObject()) {
    throw_status(env, Status(Code::INVALID_ARGUMENT, "Tensors are created by Engine methods (engine.tensor(...)), not with new"));
  }
  slot_ = *info[0].As<Napi::External<std::shared_ptr<TensorSlot>>>().Data();
  engine_ref_ = Napi::Persistent(info[1].As<Napi::Object>());
  engine_ = EngineWrap::Unwrap(info[1].As<Napi::Object>());
}

std::shared_ptr<TensorSlot> tensor_slot(const Napi::Object& obj) { return TensorWrap::Unwrap(obj)->slot(); }

Napi::Value TensorWrap::GetDtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_name(slot_->dtype)); }
Napi::Value TensorWrap::GetShape(const Napi::CallbackInfo& info) { return shape_to_js(info.Env(), slot_->shape); }
Napi::Value TensorWrap::GetDevice(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_name(slot_->device)); }
Napi::Value TensorWrap::GetDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), slot_->disposed); }

Napi::Value TensorWrap::Dispose(const Napi::CallbackInfo& info) {
  if (!slot_->disposed) {
    slot_->disposed = true;
    engine_->release_slot(slot_);
    engine_ref_.Reset();  // the engine may now be collected once nothing else holds it
  }
  return info.Env().Undefined();
}

}  // namespace qs::addon
