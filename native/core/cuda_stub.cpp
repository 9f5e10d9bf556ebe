// cuda_stub.cpp: the CUDA backend interface for builds without nvcc.
// Every call reports UNAVAILABLE, so a CPU-only addon (node-gyp fallback, QUIETSTAR_CUDA=off)
// still links, loads and explains itself.
#ifndef QUIETSTAR_HAVE_CUDA

#include "quietstar/cuda_backend.h"

namespace qs::cuda {

static const char* kNotBuilt =
    "this quietstar build has no CUDA backend (nvcc was not found or QUIETSTAR_CUDA=off at install; "
    "reinstall with nvcc on PATH or CUDACXX set: npm rebuild quietstar)";

const RuntimeInfo& probe() {
  static RuntimeInfo info = [] {
    RuntimeInfo i;
    i.unavailable_reason = kNotBuilt;
    return i;
  }();
  return info;
}

const BlasInfo& blas_info() {
  static BlasInfo info = [] {
    BlasInfo b;
    b.reason = "not searched: no CUDA backend in this build";
    return b;
  }();
  return info;
}
const BlasInfo& load_blas(const std::vector<std::string>&) { return blas_info(); }

static Status unavailable() { return Status(Code::UNAVAILABLE, kNotBuilt); }
Status set_device(int) { return unavailable(); }
Status stream_create(void**) { return unavailable(); }
void stream_destroy(void*) {}
Status stream_synchronize(void*) { return unavailable(); }
Status device_malloc(void**, size_t) { return unavailable(); }
void device_free(void*) {}
Status memcpy_h2d(void*, const void*, size_t, void*) { return unavailable(); }
Status memcpy_d2h(void*, const void*, size_t, void*) { return unavailable(); }
Status memcpy_d2d(void*, const void*, size_t, void*) { return unavailable(); }
Status memset_zero(void*, size_t, void*) { return unavailable(); }
Status mem_get_info(size_t*, size_t*) { return unavailable(); }
bool context_lost() { return false; }

}  // namespace qs::cuda

#endif  // !QUIETSTAR_HAVE_CUDA
