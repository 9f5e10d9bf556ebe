// device.cu: CUDA runtime probe, memory, streams and copies (see quietstar/cuda_backend.h).
//
// Nothing runs at load time. probe() asks for the device count once; on a machine without a
// driver or GPU (our build machines) it records why and the engine falls back to the CPU.
// The runtime is linked statically, so this file works wherever the .node loads.
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

#include "cuda/common.cuh"
#include "quietstar/cuda_backend.h"

#ifndef QUIETSTAR_CUDA_ARCHS
#define QUIETSTAR_CUDA_ARCHS "unknown"
#endif
#ifndef QUIETSTAR_NVCC_VERSION
#define QUIETSTAR_NVCC_VERSION "unknown"
#endif

namespace qs::cuda {

static std::atomic<bool> g_context_lost{false};

void mark_context_lost() { g_context_lost = true; }
bool context_lost() { return g_context_lost.load(); }

bool sync_after_launch() {
  static const bool sync = [] {
    const char* e = std::getenv("QUIETSTAR_SYNC");
    return e && *e && std::string(e) != "0";
  }();
  return sync;
}

static bool is_sticky(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorAssert:
      return true;
    default:
      return false;
  }
}

Status from_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return Status::Ok();
  Code code = Code::CUDA_ERROR;
  if (err == cudaErrorMemoryAllocation) code = Code::OUT_OF_MEMORY;
  if (is_sticky(err)) {
    mark_context_lost();
    code = Code::ENGINE_FAILED;
  }
  Status s = make_status(code, file, line, "%s failed: %s (%s)%s", what, cudaGetErrorName(err), cudaGetErrorString(err),
                         code == Code::ENGINE_FAILED ? "; the CUDA context is lost, restart the process" : "");
  if (code != Code::ENGINE_FAILED) (void)cudaGetLastError();  // clear a non-sticky error
  return s;
}

// ---------------------------------------------------------------------------------------------
// probe

__global__ void probe_kernel(int* out) { *out = 42; }

static std::string describe_error(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

static RuntimeInfo run_probe() {
  RuntimeInfo info;
  info.compiled = true;
  info.archs = QUIETSTAR_CUDA_ARCHS;
  info.nvcc_version = QUIETSTAR_NVCC_VERSION;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  if (const char* e = std::getenv("QUIETSTAR_CUDA_DISABLE"); e && *e && std::string(e) != "0") {
    info.unavailable_reason = "disabled by QUIETSTAR_CUDA_DISABLE";
    return info;
  }
  if (info.driver_version == 0) {
    info.unavailable_reason = "no NVIDIA driver is installed (libcuda.so not found)";
    return info;
  }
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    std::string reason = "cudaGetDeviceCount failed: " + describe_error(err);
    if (err == cudaErrorInsufficientDriver || info.driver_version < info.runtime_version) {
      reason += "; the driver supports CUDA " + std::to_string(info.driver_version / 1000) + "." +
                std::to_string(info.driver_version % 1000 / 10) + " but this build needs " +
                std::to_string(info.runtime_version / 1000) + "." + std::to_string(info.runtime_version % 1000 / 10) +
                " (update the NVIDIA driver, >= 580 for CUDA 13)";
    }
    info.unavailable_reason = reason;
    return info;
  }
  if (count == 0) {
    info.unavailable_reason = "no CUDA device found";
    return info;
  }
  for (int i = 0; i < count; i++) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) { (void)cudaGetLastError(); continue; }
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.total_memory = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    info.devices.push_back(d);
  }
  // Launch one trivial kernel: a GPU whose architecture is missing from the build list fails
  // here ("no kernel image is available") rather than at the first real op.
  int* flag = nullptr;
  err = cudaMalloc(&flag, sizeof(int));
  if (err == cudaSuccess) {
    probe_kernel<<<1, 1>>>(flag);
    err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    int host = 0;
    if (err == cudaSuccess) err = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
    if (err == cudaSuccess && host != 42) err = cudaErrorUnknown;
    cudaFree(flag);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    info.unavailable_reason = "test kernel failed on device 0: " + describe_error(err);
    if (err == cudaErrorNoKernelImageForDevice && !info.devices.empty()) {
      info.unavailable_reason += " (compute capability " + std::to_string(info.devices[0].cc_major) +
                                 std::to_string(info.devices[0].cc_minor) + " is not in the build's architectures " +
                                 info.archs + "; reinstall with QUIETSTAR_CUDA_ARCHS including it)";
    }
    return info;
  }
  info.usable = true;
  return info;
}

const RuntimeInfo& probe() {
  static std::once_flag once;
  static RuntimeInfo info;
  std::call_once(once, [] { info = run_probe(); });
  return info;
}

// ---------------------------------------------------------------------------------------------
// memory, streams, copies

Status set_device(int index) {
  const RuntimeInfo& info = probe();
  if (!info.usable) return Status(Code::UNAVAILABLE, "CUDA is not usable: " + info.unavailable_reason);
  if (index < 0 || index >= (int)info.devices.size()) {
    return QS_ERROR(INVALID_ARGUMENT, "cuda device %d does not exist (%zu found)", index, info.devices.size());
  }
  return QS_CUDA(cudaSetDevice(index));
}

Status stream_create(void** stream) {
  cudaStream_t s;
  // A blocking stream: allocation-time memsets on the legacy default stream stay ordered with it.
  QS_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&s));
  *stream = s;
  return Status::Ok();
}

void stream_destroy(void* stream) {
  if (stream && !context_lost()) cudaStreamDestroy((cudaStream_t)stream);
}

Status stream_synchronize(void* stream) { return QS_CUDA(cudaStreamSynchronize((cudaStream_t)stream)); }

Status device_malloc(void** ptr, size_t bytes) {
  if (context_lost()) return QS_ERROR(ENGINE_FAILED, "the CUDA context was lost earlier; restart the process");
  cudaError_t err = cudaMalloc(ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return QS_ERROR(OUT_OF_MEMORY, "CUDA out of memory allocating %zu bytes (device has %zu free of %zu)", bytes, free_b,
                    total_b);
  }
  return QS_CUDA(err);
}

void device_free(void* ptr) {
  // After a lost context or during process teardown (cudaErrorCudartUnloading) the memory is
  // gone anyway; ignore the error rather than report it from a destructor.
  if (ptr && !context_lost()) {
    if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
  }
}

Status memcpy_h2d(void* dst, const void* src, size_t bytes, void* stream) {
  QS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, (cudaStream_t)stream));
  // The source is pageable host memory the caller may free right after: wait for the copy.
  return QS_CUDA(cudaStreamSynchronize((cudaStream_t)stream));
}

Status memcpy_d2h(void* dst, const void* src, size_t bytes, void* stream) {
  QS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
  return QS_CUDA(cudaStreamSynchronize((cudaStream_t)stream));
}

Status memcpy_d2d(void* dst, const void* src, size_t bytes, void* stream) {
  return QS_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
}

Status memset_zero(void* dst, size_t bytes, void* stream) {
  return QS_CUDA(cudaMemsetAsync(dst, 0, bytes, (cudaStream_t)stream));
}

Status mem_get_info(size_t* free_bytes, size_t* total_bytes) {
  return QS_CUDA(cudaMemGetInfo(free_bytes, total_bytes));
}

}  // namespace qs::cuda
