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
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/blas_dyn.h"
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

}  // namespace qs::cuda
