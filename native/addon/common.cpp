// common.cpp: Status -> JS error mapping and argument helpers.
#include "addon/common.h"

namespace qs::addon {

AddonData* addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) {
    d = new AddonData();
    env.SetInstanceData<AddonData>(d);
  }
  return d;
}

void set_error_class(Napi::Env env, Napi::Function ctor) { addon_data(env)->error_class = Napi::Persistent(ctor); }

Napi::Error make_error(Napi::Env env, const Status& status) {
  AddonData* d = addon_data(env);
  Napi::String message = Napi::String::New(env, status.message());
  Napi::String code = Napi::String::New(env, code_name(status.code()));
  if (!d->error_class.IsEmpty()) {
    Napi::Object err = d->error_class.New({message, code});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, status.message());
  err.Set("code", code);
  return err;
}

void throw_status(Napi::Env env, const Status& status) { throw make_error(env, status); }

static Status bad_arg(const char* what, const char* expected) {
  return Status(Code::INVALID_ARGUMENT, std::string(what) + " must be " + expected);
}

std::string get_string(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw_status(v.Env(), bad_arg(what, "a string"));
  return v.As<Napi::String>().Utf8Value();
}

double get_number(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw_status(v.Env(), bad_arg(what, "a number"));
  return v.As<Napi::Number>().DoubleValue();
}

Shape get_shape(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw_status(v.Env(), bad_arg(what, "an array of non-negative integers"));
  Napi::Array arr = v.As<Napi::Array>();
  Shape shape;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value d = arr.Get(i);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0 && x == (double)(int64_t)x && x < 9.0e15)) {
      throw_status(v.Env(), Status(Code::INVALID_ARGUMENT, std::string(what) + "[" + std::to_string(i) +
                                                                "] must be a non-negative integer"));
    }
    shape.push_back((int64_t)x);
  }
  return shape;
}

Napi::Array shape_to_js(Napi::Env env, const Shape& shape) {
  Napi::Array arr = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); i++) arr.Set((uint32_t)i, Napi::Number::New(env, (double)shape[i]));
  return arr;
}

}  // namespace qs::addon
