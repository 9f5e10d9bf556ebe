// cuda_backend.h: what the core needs from CUDA, in plain C++ (no CUDA headers here).
//
// Implemented in native/cuda/*.cu when the build found nvcc (QUIETSTAR_HAVE_CUDA), and by
// native/core/cuda_stub.cpp otherwise, whose functions report UNAVAILABLE "built without CUDA".
// Nothing here touches CUDA at load time: probe() runs on first use, so the addon loads on
// machines with no driver at all and finds out then whether a GPU exists.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quietstar/status.h"

namespace qs::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

struct BlasInfo {
  bool found = false;
  std::string path;     // the library that was loaded, e.g. .../nvidia/cu13/lib/libcublasLt.so.13
  std::string reason;   // why not, when not found (every place tried)
  bool lt = false;      // cuBLASLt resolved
};

struct RuntimeInfo {
  bool compiled = false;       // this build contains the CUDA backend
  std::string archs;           // CMAKE_CUDA_ARCHITECTURES it was built for
  std::string nvcc_version;    // "13.0"
  int runtime_version = 0;     // cudaRuntimeGetVersion, e.g. 13000
  int driver_version = 0;      // cudaDriverGetVersion (0: no driver)
  std::vector<DeviceInfo> devices;
  bool usable = false;         // a device exists, the driver is new enough, and a kernel ran
  std::string unavailable_reason;
};

// Probes once (thread-safe) and caches: device count, versions, a test kernel launch.
const RuntimeInfo& probe();

// Loads cuBLASLt/cuBLAS with dlopen once, searching `extra_dirs` first, then
// QUIETSTAR_CUBLAS_DIR, the default loader path and /usr/local/cuda*/lib64. QUIETSTAR_CUBLAS=0
// disables it. Never fails: the result says what happened.
// The CUDA GEMMs (native/cuda/gemm.cu) use cuBLAS when it is loaded (the first GEMM loads it
// with no extra folders if nothing did before), else our own kernels. f32 products take the
// calling thread's math when one was set (cuda::set_thread_gemm_math in native/cuda/kernels_nn.h:
// the engine sets its precision option on its compute thread), else the process default:
// QUIETSTAR_MATMUL=f32 | tf32 | bf16 (bf16: inputs rounded to bf16 for the multiply, f32
// accumulation and storage), else QUIETSTAR_TF32=1 -> tf32, else exact f32. A call may also ask
// for one explicitly (GemmOptions::math).
const BlasInfo& load_blas(const std::vector<std::string>& extra_dirs);
const BlasInfo& blas_info();  // the last load_blas() result (not loaded yet: found = false)

// All calls below act on the calling thread's current device (set_device per compute thread).
Status set_device(int index);
Status stream_create(void** stream);
void stream_destroy(void* stream);
Status stream_synchronize(void* stream);
Status device_malloc(void** ptr, size_t bytes);
void device_free(void* ptr);
Status memcpy_h2d(void* dst, const void* src, size_t bytes, void* stream);
Status memcpy_d2h(void* dst, const void* src, size_t bytes, void* stream);
Status memcpy_d2d(void* dst, const void* src, size_t bytes, void* stream);
Status memset_zero(void* dst, size_t bytes, void* stream);
Status mem_get_info(size_t* free_bytes, size_t* total_bytes);

// True after a sticky error (illegal address, launch failure): the context is lost for the
// process, and the engine refuses further work with ENGINE_FAILED.
bool context_lost();

}  // namespace qs::cuda
