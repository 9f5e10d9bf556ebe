/*
 * gemm_bench.cpp: float GEMM throughput of qs::cpu::gemm against OpenBLAS's cblas_sgemm.
 *
 * For each shape (the transformer's linear layers at 4096 tokens, plus a square 1024) and each
 * thread count (1 and 2 by default), time both libraries in the same run: a warm-up call, then
 * best-of-N wall time, GFLOP/s = 2*M*N*K / seconds. Output is one JSON object per line:
 *   {"name": "gemm_f32 M=4096 K=768 N=768 threads=1", "value": 180.1, "unit": "GFLOP/s",
 *    "baseline": 97.3, "ratio": 1.85}
 * (baseline / ratio only when OpenBLAS was found). The results of the two libraries are also
 * compared elementwise; a mismatch is reported on stderr and makes the exit status nonzero.
 *
 * OpenBLAS is dlopen()ed, never linked: $QUIETSTAR_OPENBLAS first, then the usual sonames.
 * Without it the benchmark still runs and just omits the baseline.
 *
 * Without OpenBLAS (or with --no-baseline) the results are checked against our portable
 * "generic" kernel instead, so a wrong fast path still fails the run.
 *
 * Usage: bench_gemm_bench [--quick] [--threads=1,2] [--no-baseline]
 */
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "cpu/gemm.h"
#include "cpu/parallel.h"

using qs_bench::best_time;

namespace {

// ---------------------------------------------------------------------------------------------
// OpenBLAS, loaded at run time

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };
using cblas_sgemm_fn = void (*)(int order, int ta, int tb, int M, int N, int K, float alpha,
                                const float* A, int lda, const float* B, int ldb, float beta,
                                float* C, int ldc);
using set_threads_fn = void (*)(int);
using get_config_fn = char* (*)();

struct OpenBlas {
  void* handle = nullptr;
  cblas_sgemm_fn sgemm = nullptr;
  set_threads_fn set_threads = nullptr;
  std::string config;

  bool load() {
    std::vector<std::string> names;
    if (const char* env = std::getenv("QUIETSTAR_OPENBLAS"); env && *env) names.push_back(env);
    for (const char* n : {"libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0"}) names.push_back(n);
    for (const auto& name : names) {
      handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!handle) continue;
      sgemm = (cblas_sgemm_fn)dlsym(handle, "cblas_sgemm");
      set_threads = (set_threads_fn)dlsym(handle, "openblas_set_num_threads");
      if (sgemm && set_threads) {
        auto get_config = (get_config_fn)dlsym(handle, "openblas_get_config");
        auto get_core = (get_config_fn)dlsym(handle, "openblas_get_corename");
        config = name;
        if (get_config) config += std::string(" | ") + get_config();
        if (get_core) config += std::string(" | core ") + get_core();
        return true;
      }
      dlclose(handle);
      handle = nullptr;
    }
    return false;
  }
};

// ---------------------------------------------------------------------------------------------
// Timing (best_time: bench_util.h)

// OpenBLAS worker threads spin for a while after each call, and so do OpenMP's; give the other
// library's threads time to go to sleep before timing.
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(200)); }

struct Shape {
  int M, K, N;
  bool ta, tb;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, no_baseline = false;
  std::vector<int> thread_counts = {1, 2};
  auto other = [&](const char* arg) {
    if (std::strcmp(arg, "--no-baseline") == 0) {
      no_baseline = true;
    } else if (std::strncmp(arg, "--threads=", 10) == 0) {
      thread_counts.clear();
      for (const char* s = arg + 10; *s;) {
        int t = std::atoi(s);
        if (t > 0) thread_counts.push_back(t);
        while (*s && *s != ',') s++;
        if (*s == ',') s++;
      }
    } else {
      return false;
    }
    return true;
  };
  if (!qs_bench::parse_args(argc, argv, "[--quick] [--threads=1,2] [--no-baseline]", &quick, other))
    return 2;
  const int reps = quick ? 2 : 5;

  OpenBlas blas;
  const bool have_blas = !no_baseline && blas.load();
  if (!have_blas && !no_baseline)
    fprintf(stderr, "gemm_bench: OpenBLAS not found (set QUIETSTAR_OPENBLAS to its path); "
                    "measuring quietstar only\n");
  if (have_blas) fprintf(stderr, "gemm_bench: baseline %s\n", blas.config.c_str());

  printf("{\"name\": \"gemm_f32 kernel=%s\", \"value\": 1, \"unit\": \"info\", \"kernel\": \"%s\"}\n",
         qs::cpu::gemm_kernel_name(), qs::cpu::gemm_kernel_name());
  fflush(stdout);

  // The four forward shapes, then the transposed variants the backward passes use.
  std::vector<Shape> shapes = {
      {4096, 768, 768, false, false},  {4096, 768, 3072, false, false},
      {4096, 3072, 768, false, false}, {1024, 1024, 1024, false, false},
      {4096, 768, 768, false, true},   {768, 4096, 768, true, false},
  };

  int mismatches = 0;
  for (const Shape& s : shapes) {
    const int M = s.M, K = s.K, N = s.N;
    // op(A) is M x K, op(B) is K x N; stored transposed when ta / tb.
    const int lda = s.ta ? M : K, ldb = s.tb ? K : N, ldc = N;
    std::vector<float> A((size_t)M * K), B((size_t)K * N), C((size_t)M * N), Cref((size_t)M * N);
    uint64_t st = 0x243F6A8885A308D3ull;
    auto uni = [&st]() {  // uniform in [-1, 1)
      st = st * 6364136223846793005ull + 1442695040888963407ull;
      return (float)((st >> 40) * (1.0 / 8388608.0)) - 1.0f;
    };
    for (auto& x : A) x = uni();
    for (auto& x : B) x = uni();

    for (int threads : thread_counts) {
      char name[160];
      snprintf(name, sizeof(name), "gemm_f32%s M=%d K=%d N=%d threads=%d",
               s.ta ? " trans_a" : (s.tb ? " trans_b" : ""), M, K, N, threads);
      const double flops = 2.0 * M * N * K;

      qs::cpu::set_num_threads(threads);
      double t_ours = best_time(reps, [&] {
        qs::cpu::gemm<float>(s.ta, s.tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                             C.data(), ldc);
      });
      const double ours = flops / t_ours * 1e-9;

      double theirs = 0;
      if (have_blas) {
        settle();
        blas.set_threads(threads);
        double t_blas = best_time(reps, [&] {
          blas.sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans,
                     s.tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A.data(), lda, B.data(), ldb,
                     0.0f, Cref.data(), ldc);
        });
        theirs = flops / t_blas * 1e-9;
        settle();
      } else if (threads == thread_counts.front()) {
        // No baseline: the reference result comes from the portable kernel (once per shape).
        qs::cpu::gemm_force_kernel("generic");
        qs::cpu::gemm<float>(s.ta, s.tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                             Cref.data(), ldc);
        qs::cpu::gemm_force_kernel("auto");
      }

      // Entries are sums of K products of values in [-1,1): rounding differences between two
      // summation orders stay far below 1e-5 * K, while any indexing bug is O(sqrt(K)).
      const double tol = 1e-5 * K;
      double max_err = 0;
      size_t worst = 0;
      for (size_t i = 0; i < C.size(); i++) {
        double e = std::fabs((double)C[i] - (double)Cref[i]);
        if (!(e <= max_err)) {  // NaN-aware
          max_err = e;
          worst = i;
        }
      }
      if (!(max_err <= tol)) {
        fprintf(stderr, "gemm_bench: MISMATCH %s: max |ours - %s| = %.3e at %zu (%g vs %g), tol %.1e\n",
                name, have_blas ? "openblas" : "generic", max_err, worst, C[worst], Cref[worst], tol);
        mismatches++;
      }
      qs_bench::emit(name, ours, "GFLOP/s", have_blas ? theirs : -1, "%.2f");
    }
  }
  return mismatches ? 1 : 0;
}
