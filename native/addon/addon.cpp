// addon.cpp: module initialisation and the free functions of the binding.
//
//   backendInfo(): what was built and what this machine can run (see lib/native.ts BackendInfo)
//   opNames(): every op engine.run() accepts
//   setErrorClass(ctor): the JS class native errors are instances of (lib/errors.ts)
//   modelParamSpecs(config): the parameter views of a model configuration (model_wrap.h)
//   quietstarParamSpecs(config), createQuietStar(model, options): the Quiet-STaR extras' views
//   and the Quiet-STaR step over a model (quietstar_wrap.h)
//   NativeEngine, NativeTensor, NativeParameters, NativeModel: classes (engine_wrap.h, tensor_wrap.h,
//   params_wrap.h, model_wrap.h; models come from engine.createModel)
#include <napi.h>

#include "addon/common.h"
#include "addon/engine_wrap.h"
#include "addon/model_wrap.h"
#include "addon/params_wrap.h"
#include "addon/quietstar_wrap.h"
#include "addon/tensor_wrap.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/ops.h"

namespace qs::addon {

static std::string version_string(int v) {
  if (v <= 0) return "";
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

static Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cuda::RuntimeInfo& rt = cuda::probe();
  std::vector<std::string> extra;
  if (info.Length() > 0 && info[0].IsArray()) {
    Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++)
      if (a.Get(i).IsString()) extra.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  }
  const cuda::BlasInfo& blas = rt.compiled ? cuda::load_blas(extra) : cuda::blas_info();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array built = Napi::Array::New(env);
  built.Set(0u, "cpu");
  if (rt.compiled) built.Set(1u, "cuda");
  o.Set("built", built);
  std::string active = "cpu";
  if (const char* forced = std::getenv("QUIETSTAR_DEVICE"); forced && std::string(forced) == "cpu") active = "cpu";
  else if (rt.usable) active = "cuda";
  o.Set("active", active);
  o.Set("cudaCompiled", rt.compiled);
  o.Set("cudaArchs", rt.compiled ? Napi::Value(Napi::String::New(env, rt.archs)) : env.Null());
  o.Set("nvccVersion", rt.compiled ? Napi::Value(Napi::String::New(env, rt.nvcc_version)) : env.Null());
  o.Set("cudaRuntimeVersion", rt.runtime_version ? Napi::Value(Napi::String::New(env, version_string(rt.runtime_version))) : env.Null());
  o.Set("cudaDriverVersion", rt.driver_version ? Napi::Value(Napi::String::New(env, version_string(rt.driver_version))) : env.Null());
  o.Set("cudaUsable", rt.usable);
  o.Set("cudaUnavailableReason", rt.usable ? env.Null() : Napi::Value(Napi::String::New(env, rt.unavailable_reason)));
  Napi::Array gpus = Napi::Array::New(env);
  for (size_t i = 0; i < rt.devices.size(); i++) {
    const cuda::DeviceInfo& d = rt.devices[i];
    Napi::Object g = Napi::Object::New(env);
    g.Set("index", d.index);
    g.Set("name", d.name);
    g.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
    g.Set("memoryBytes", (double)d.total_memory);
    g.Set("multiprocessors", d.multiprocessors);
    gpus.Set((uint32_t)i, g);
  }
  o.Set("gpus", gpus);
  Napi::Object cublas = Napi::Object::New(env);
  cublas.Set("found", blas.found);
  cublas.Set("path", blas.found ? Napi::Value(Napi::String::New(env, blas.path)) : env.Null());
  cublas.Set("reason", blas.found ? env.Null() : Napi::Value(Napi::String::New(env, blas.reason)));
  o.Set("cublas", cublas);
  Napi::Object gemm = Napi::Object::New(env);
  gemm.Set("cpu", cpu::gemm_kernel_name());
  gemm.Set("cuda", rt.compiled ? (blas.found ? "cublas" : "own kernels") : "none");
  o.Set("gemm", gemm);
  o.Set("gemmKernel", cpu::gemm_kernel_name());
  o.Set("cpuThreads", cpu::hardware_threads());
#ifdef _OPENMP
  o.Set("openmp", true);
#else
  o.Set("openmp", false);
#endif
  o.Set("napiVersion", NAPI_VERSION);
  return o;
}

static Napi::Value OpNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> names = op_names();
  Napi::Array arr = Napi::Array::New(env, names.size());
  for (size_t i = 0; i < names.size(); i++) arr.Set((uint32_t)i, names[i]);
  return arr;
}

static Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) {
    throw_status(info.Env(), Status(Code::INVALID_ARGUMENT, "setErrorClass(ctor): ctor must be a class"));
  }
  set_error_class(info.Env(), info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = addon_data(env);
  Napi::Function engine = EngineWrap::Init(env);
  Napi::Function tensor = TensorWrap::Init(env);
  Napi::Function params = ParamsWrap::Init(env);
  data->tensor_class = Napi::Persistent(tensor);
  data->params_class = Napi::Persistent(params);
  data->model_class = Napi::Persistent(ModelWrap::Init(env));
  data->quietstar_class = Napi::Persistent(QuietStarWrap::Init(env));
  exports.Set("NativeEngine", engine);
  exports.Set("NativeTensor", tensor);
  exports.Set("NativeParameters", params);
  exports.Set("backendInfo", Napi::Function::New(env, BackendInfo));
  exports.Set("opNames", Napi::Function::New(env, OpNames));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("modelParamSpecs", Napi::Function::New(env, ModelParamSpecs));
  exports.Set("quietstarParamSpecs", Napi::Function::New(env, QuietStarParamSpecs));
  exports.Set("createQuietStar", Napi::Function::New(env, QuietStarWrap::Create));
  return exports;
}

}  // namespace qs::addon

static Napi::Object InitQuietstar(Napi::Env env, Napi::Object exports) { return qs::addon::Init(env, exports); }

NODE_API_MODULE(quietstar, InitQuietstar)
