// cuda_test_util.h: helpers of the tests that run CUDA kernels against their CPU twins through
// the ops on a CUDA engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"

namespace qs_test {

// A CUDA engine, or null with the reason in *why (the case then skips). Exact f32 products
// (precision "f32"), the math of the CPU twins the tests compare with, unless asked otherwise.
inline std::unique_ptr<qs::Engine> cuda_engine(std::string* why, const char* precision = "f32") {
  const qs::cuda::RuntimeInfo& info = qs::cuda::probe();
  if (!info.usable) {
    *why = "no usable CUDA device: " + info.unavailable_reason;
    return nullptr;
  }
  qs::EngineOptions o;
  o.device = "cuda";
  o.precision = precision;
  std::unique_ptr<qs::Engine> e;
  qs::Status st = qs::Engine::create(o, &e);
  if (!st.ok()) *why = "cuda engine: " + st.to_string();
  return e;
}

// A device tensor holding `v`.
template <typename T>
qs::Status device_tensor(qs::Engine& e, qs::DType dtype, qs::Shape shape, const std::vector<T>& v, qs::Tensor* t) {
  QS_RETURN_IF_ERROR(e.empty(dtype, shape, t));
  return v.empty() ? qs::Status::Ok() : e.upload(v.data(), v.size() * sizeof(T), *t);
}

// The contents of a tensor, on the host.
template <typename T>
qs::Status fetch(qs::Engine& e, const qs::Tensor& t, std::vector<T>* v) {
  v->resize(t.numel());
  return e.download(t, v->data(), v->size() * sizeof(T));
}

}  // namespace qs_test
