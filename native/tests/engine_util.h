// engine_util.h: helpers of the native tests that run ops through an Engine
// (test_engine.cpp, test_sampling.cpp, test_thought_sampling.cpp, test_thought_attention.cpp,
// test_cuda_kernels.cpp).
//
// Kept apart from test_util.h, which the CPU kernel tests use without the engine.
#pragma once

#include <cstdio>
#include <cstring>
#include <memory>

#include "quietstar/engine.h"

namespace qs_test {

// An engine on `device`; null (with the reason printed) when it cannot be made. Its matrix
// products are exact f32 (precision "f32"), the math of the CPU twins the tests compare with.
inline std::unique_ptr<qs::Engine> make_engine(const char* device = "cpu") {
  qs::EngineOptions o;
  o.device = device;
  o.precision = "f32";
  std::unique_ptr<qs::Engine> e;
  qs::Status st = qs::Engine::create(o, &e);
  if (!st.ok()) fprintf(stdout, "    engine: %s\n", st.to_string().c_str());
  return e;
}

// A host tensor of `shape`, filled from `data` when given.
inline qs::Tensor host_tensor(qs::Engine& e, qs::DType dtype, qs::Shape shape, const void* data) {
  qs::Tensor t;
  qs::Status st = e.empty_on(qs::Device::CPU, dtype, shape, &t);
  if (st.ok() && data) std::memcpy(t.raw(), data, t.nbytes());
  return t;
}

}  // namespace qs_test
