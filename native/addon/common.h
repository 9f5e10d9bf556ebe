// common.h: shared pieces of the Node-API layer (the only Node-API code in quietstar).
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "quietstar/engine.h"
#include "quietstar/status.h"

namespace qs::addon {

// Per-environment state (each worker thread loads the addon separately).
struct AddonData {
  Napi::FunctionReference error_class;
  Napi::FunctionReference tensor_class;
  Napi::FunctionReference params_class;
  Napi::FunctionReference model_class;
  Napi::FunctionReference quietstar_class;
  uint64_t next_engine_id = 1;
};
AddonData* addon_data(Napi::Env env);

// A JS error for a failed Status: an instance of the QuietstarError class registered by
// lib/errors.ts (setErrorClass), with `code` set; a plain Error with `code` before that.
Napi::Error make_error(Napi::Env env, const Status& status);
[[noreturn]] void throw_status(Napi::Env env, const Status& status);
void set_error_class(Napi::Env env, Napi::Function ctor);
#define QS_THROW_IF_ERROR(env, expr)               \
  do {                                             \
    ::qs::Status qs_st_ = (expr);                  \
    if (!qs_st_.ok()) ::qs::addon::throw_status((env), qs_st_); \
  } while (0)

// Argument helpers: throw INVALID_ARGUMENT naming the argument.
std::string get_string(const Napi::Value& v, const char* what);
double get_number(const Napi::Value& v, const char* what);
Shape get_shape(const Napi::Value& v, const char* what);
Napi::Array shape_to_js(Napi::Env env, const Shape& shape);

// A tensor as the addon holds it: dtype and shape are known at once, the storage may be
// filled later by a job on the compute thread (CUDA uploads), which records any failure.
struct TensorSlot {
  DType dtype = DType::F32;
  Shape shape;
  Device device = Device::CPU;
  uint64_t engine_id = 0;  // the engine that made it: ops refuse tensors of another engine
  Tensor tensor;        // touched only on the compute thread once the engine runs jobs
  Status error;         // set when the job that was to fill it failed
  bool disposed = false;  // main thread only
};

}  // namespace qs::addon
