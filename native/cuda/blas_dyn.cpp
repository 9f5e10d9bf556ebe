// blas_dyn.cpp: cuBLAS / cuBLASLt loaded at run time with dlopen, never linked.
//
// Linking cuBLAS would make the addon unloadable wherever the library is missing (our build
// machines have none; the GPU machines have it only inside a Python site-packages layout).
// So we dlopen the versioned SONAME (libcublasLt.so.13 first, then libcublas.so.13; the major
// must match the CUDA runtime we were built with), from an explicit search list, and resolve
// only the entry points we call into a function table with our own prototypes (opaque
// handles, int status and enums, the `_v2` names the header macros hide). Any failure is
// recorded as a reason and our own kernels are used: correctness never depends on cuBLAS.
// The handle is never dlclose()d (its destructors may run after the CUDA context is gone).
//
// blas_gemm() (the bottom of this file) is gemm.cu's cuBLAS path: one cuBLAS handle per
// (thread, device), so no handle is ever shared between threads (cuBLAS handles are not
// thread-safe once a stream is bound) and no lock is taken per call.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <string>
#include <vector>

#include "cuda/blas_dyn.h"
#include "cuda/common.cuh"
#include "quietstar/cuda_backend.h"

namespace qs::cuda {

static BlasTable g_table;
static BlasInfo g_info = [] {
  BlasInfo b;
  b.reason = "not loaded yet";
  return b;
}();
static std::mutex g_mutex;
static bool g_loaded = false;

const BlasTable& blas_table() { return g_table; }
const BlasInfo& blas_info() { return g_info; }

static void add_glob(std::vector<std::string>& dirs, const std::string& pattern) {
  glob_t g;
  if (glob(pattern.c_str(), GLOB_NOSORT, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; i++) dirs.push_back(g.gl_pathv[i]);
  }
  globfree(&g);
}

// Where cuBLAS may live, most specific first. "" means the default loader path.
static std::vector<std::string> search_dirs(const std::vector<std::string>& extra, int major) {
  std::vector<std::string> dirs(extra.begin(), extra.end());
  if (const char* d = std::getenv("QUIETSTAR_CUBLAS_DIR"); d && *d) dirs.push_back(d);
  dirs.push_back("");
  dirs.push_back("/usr/local/cuda/lib64");
  dirs.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
  add_glob(dirs, "/usr/local/cuda-*/lib64");
  // pip wheels: nvidia-cublas (cu13 puts every library in nvidia/cu13/lib; cu12 in nvidia/cublas/lib)
  std::string cu = "nvidia/cu" + std::to_string(major) + "/lib";
  std::vector<std::string> roots;
  for (const char* var : {"VIRTUAL_ENV", "CONDA_PREFIX"}) {
    if (const char* r = std::getenv(var); r && *r) roots.push_back(r);
  }
  if (const char* home = std::getenv("HOME"); home && *home) roots.push_back(std::string(home) + "/.local");
  for (const char* r : {"/usr/local", "/usr", "/opt/conda"}) roots.push_back(r);
  if (const char* pyroot = std::getenv("QUIETSTAR_PYTHON_PREFIX"); pyroot && *pyroot) roots.push_back(pyroot);
  for (const std::string& root : roots) {
    for (const char* pkgs : {"site-packages", "dist-packages"}) {
      add_glob(dirs, root + "/lib/python3*/" + pkgs + "/" + cu);
      add_glob(dirs, root + "/lib/python3*/" + pkgs + "/nvidia/cublas/lib");
    }
  }
  add_glob(dirs, "/root/.pyenv/versions/*/lib/python3*/site-packages/" + cu);
  add_glob(dirs, "/root/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cublas/lib");
  return dirs;
}

template <typename F>
static bool resolve(void* lib, const char* name, F* out, std::string* missing) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  if (!*out) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

const BlasInfo& load_blas(const std::vector<std::string>& extra_dirs) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_loaded) return g_info;
  g_loaded = true;
  BlasInfo info;
  if (const char* off = std::getenv("QUIETSTAR_CUBLAS"); off && std::string(off) == "0") {
    info.reason = "disabled by QUIETSTAR_CUBLAS=0";
    g_info = info;
    return g_info;
  }
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int major = runtime ? runtime / 1000 : CUDART_VERSION / 1000;
  std::string lt_name = "libcublasLt.so." + std::to_string(major);
  std::string blas_name = "libcublas.so." + std::to_string(major);
  std::string tried;
  for (const std::string& dir : search_dirs(extra_dirs, major)) {
    std::string prefix = dir.empty() ? "" : dir + "/";
    // Lt first: libcublas depends on it, and loading it by full path lets libcublas find it.
    void* lt = dlopen((prefix + lt_name).c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!lt) {
      tried += (tried.empty() ? "" : "; ") + (dir.empty() ? lt_name + " (loader path)" : prefix + lt_name);
      continue;
    }
    void* blas = dlopen((prefix + blas_name).c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!blas) {
      const char* err = dlerror();
      tried += "; " + prefix + blas_name + " (" + (err ? err : "?") + ")";
      continue;
    }
    std::string missing;
    BlasTable t;
    resolve(blas, "cublasCreate_v2", &t.create, &missing);
    resolve(blas, "cublasDestroy_v2", &t.destroy, &missing);
    resolve(blas, "cublasSetStream_v2", &t.set_stream, &missing);
    resolve(blas, "cublasSetMathMode", &t.set_math_mode, &missing);
    resolve(blas, "cublasSgemm_v2", &t.sgemm, &missing);
    resolve(blas, "cublasGemmEx", &t.gemm_ex, &missing);
    resolve(blas, "cublasGemmStridedBatchedEx", &t.gemm_strided_batched_ex, &missing);
    resolve(blas, "cublasGetVersion_v2", &t.get_version, &missing);
    resolve(lt, "cublasLtCreate", &t.lt_create, &missing);
    resolve(lt, "cublasLtDestroy", &t.lt_destroy, &missing);
    resolve(lt, "cublasLtMatmul", &t.lt_matmul, &missing);
    if (!missing.empty()) {
      tried += "; " + prefix + blas_name + " lacks " + missing;
      continue;
    }
    Dl_info where;
    info.path = (dladdr(reinterpret_cast<void*>(t.create), &where) && where.dli_fname) ? where.dli_fname : prefix + blas_name;
    info.found = true;
    info.lt = true;
    g_table = t;
    g_table.loaded = true;
    g_info = info;
    return g_info;
  }
  info.reason = "cuBLAS " + std::to_string(major) + " not found (tried " + tried +
                "); set QUIETSTAR_CUBLAS_DIR to the folder holding " + lt_name + "; own GEMM kernels are used";
  g_info = info;
  return g_info;
}

// ---------------------------------------------------------------------------------------------
// GEMM through cuBLAS

const char* cublas_status_name(int status) {
  switch (status) {
    case kCublasStatusSuccess: return "CUBLAS_STATUS_SUCCESS";
    case kCublasStatusNotInitialized: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case kCublasStatusAllocFailed: return "CUBLAS_STATUS_ALLOC_FAILED";
    case kCublasStatusInvalidValue: return "CUBLAS_STATUS_INVALID_VALUE";
    case kCublasStatusArchMismatch: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case kCublasStatusMappingError: return "CUBLAS_STATUS_MAPPING_ERROR";
    case kCublasStatusExecutionFailed: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case kCublasStatusInternalError: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case kCublasStatusNotSupported: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case kCublasStatusLicenseError: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_?";
  }
}

static Status blas_error(const char* call, int status) {
  Code code = status == kCublasStatusAllocFailed ? Code::OUT_OF_MEMORY
              : status == kCublasStatusInvalidValue || status == kCublasStatusNotSupported ? Code::INVALID_ARGUMENT
                                                                                         : Code::CUDA_ERROR;
  return Status(code, std::string(call) + " failed: " + cublas_status_name(status) + " (" + std::to_string(status) + ")");
}

// The calling thread's handles, one per device. Destroyed when the thread exits (the engine's
// compute thread is joined while the CUDA context is alive), unless the context was lost.
struct ThreadHandles {
  std::vector<std::pair<int, cublasHandle>> by_device;
  ~ThreadHandles() {
    if (!g_table.loaded || context_lost()) return;
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess) current = -1;
    for (auto& [device, handle] : by_device) {
      if (cudaSetDevice(device) != cudaSuccess) continue;
      g_table.set_stream(handle, nullptr);  // the stream it last ran on may be gone already
      g_table.destroy(handle);
    }
    if (current >= 0) cudaSetDevice(current);
    (void)cudaGetLastError();
  }
};
static thread_local ThreadHandles t_handles;

static Status thread_handle(cublasHandle* out) {
  int device = 0;
  QS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  for (auto& [d, h] : t_handles.by_device) {
    if (d == device) {
      *out = h;
      return Status::Ok();
    }
  }
  cublasHandle h = nullptr;
  if (int st = g_table.create(&h); st != kCublasStatusSuccess) return blas_error("cublasCreate", st);
  t_handles.by_device.push_back({device, h});
  *out = h;
  return Status::Ok();
}

static int cuda_data_type(DType t) {
  return t == DType::BF16 ? kCudaR16BF : t == DType::F16 ? kCudaR16F : kCudaR32F;
}

Status blas_gemm(const BlasGemm& g, void* stream) {
  if (!g_table.loaded) return QS_ERROR(UNAVAILABLE, "cuBLAS is not loaded: %s", g_info.reason.c_str());
  cublasHandle h = nullptr;
  QS_RETURN_IF_ERROR(thread_handle(&h));
  if (int st = g_table.set_stream(h, stream); st != kCublasStatusSuccess) return blas_error("cublasSetStream", st);
  // cuBLAS is column-major: our row-major C (M, N) is its column-major Cᵀ (N, M) with the same
  // leading dimension, and Cᵀ = op(B)ᵀ op(A)ᵀ. A row-major stored matrix read column-major is
  // its transpose, so B goes first with op trans_b, A second with op trans_a, m = N and n = M.
  const int op_first = g.trans_b ? kCublasOpT : kCublasOpN, op_second = g.trans_a ? kCublasOpT : kCublasOpN;
  const int ab = cuda_data_type(g.ab_dtype), c = cuda_data_type(g.c_dtype);
  int compute = kCublasComputeF32;
  if (g.ab_dtype == DType::F32 && g.math == GemmMath::Tf32) compute = kCublasComputeF32FastTF32;
  if (g.ab_dtype == DType::F32 && g.math == GemmMath::Bf16) compute = kCublasComputeF32Fast16BF;
  const size_t ab_size = dtype_size(g.ab_dtype), c_size = dtype_size(g.c_dtype);
  if (g.batch == 1) {
    int st = g_table.gemm_ex(h, op_first, op_second, g.N, g.M, g.K, &g.alpha, g.B, ab, g.ldb, g.A, ab, g.lda, &g.beta,
                             g.C, c, g.ldc, compute, kCublasGemmDefault);
    return st == kCublasStatusSuccess ? Status::Ok() : blas_error("cublasGemmEx", st);
  }
  // Batches in pieces of at most 65535 (the grid's z limit, which some cuBLAS kernels map the batch onto).
  constexpr int kMaxBatch = 65535;
  for (int b0 = 0; b0 < g.batch; b0 += kMaxBatch) {
    const int count = g.batch - b0 < kMaxBatch ? g.batch - b0 : kMaxBatch;
    const char* A = (const char*)g.A + (int64_t)b0 * g.stride_a * (int64_t)ab_size;
    const char* B = (const char*)g.B + (int64_t)b0 * g.stride_b * (int64_t)ab_size;
    char* C = (char*)g.C + (int64_t)b0 * g.stride_c * (int64_t)c_size;
    int st = g_table.gemm_strided_batched_ex(h, op_first, op_second, g.N, g.M, g.K, &g.alpha, B, ab, g.ldb,
                                             (long long)g.stride_b, A, ab, g.lda, (long long)g.stride_a, &g.beta, C, c,
                                             g.ldc, (long long)g.stride_c, count, compute, kCublasGemmDefault);
    if (st != kCublasStatusSuccess) return blas_error("cublasGemmStridedBatchedEx", st);
  }
  return Status::Ok();
}

}  // namespace qs::cuda
