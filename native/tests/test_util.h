// test_util.h: helpers shared by the CPU kernel tests (test_kernels_grad.cpp, test_attention.cpp,
// test_lmhead_xent.cpp, the sampling and thought tests): float/double conversions, exact
// comparisons, a chi-square check of sampled frequencies, and scoped settings of the thread
// count and of QS_CPU_SIMD.
//
// harness.h stays free of quietstar headers (test_engine.cpp and test_blas_abi.cpp use it
// without the CPU kernels); what needs cpu/parallel.h lives here.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "cpu/parallel.h"
#include "harness.h"

namespace qs_test {

using VecD = std::vector<double>;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

inline VecF to_f32(const VecD& v) { return VecF(v.begin(), v.end()); }
inline VecD to_f64(const VecF& v) { return VecD(v.begin(), v.end()); }
// Round through float, so that the float and double kernels see exactly the same inputs.
inline VecD f32_exact(const VecD& v) { return to_f64(to_f32(v)); }

template <typename T>
bool bit_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// -inf (a query that sees nothing) compares equal to -inf: map both to a finite sentinel.
template <typename T>
VecD lse_comparable(const std::vector<T>& v) {
  VecD r(v.size());
  for (size_t i = 0; i < v.size(); i++) r[i] = std::isinf((double)v[i]) && v[i] < 0 ? -1e30 : (double)v[i];
  return r;
}

inline double max_abs_of(const VecD& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// check_close without the line of output: for the many small problems of a sweep, whose
// results are then checked together (loudly) with check_close. Records a failure naming the
// problem; returns whether every element passed.
template <typename A>
bool quiet_close(const std::string& what, const A* got, const double* want, size_t n, double rtol,
                 double atol) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++) {
    double err = std::fabs((double)got[i] - want[i]);
    if (!(err <= atol + rtol * std::fabs(want[i]))) {
      if (!bad) first = i;
      bad++;
    }
  }
  QS_EXPECT(bad == 0, "%s: %zu of %zu out of tolerance; first at %zu: got %.9g want %.9g", what.c_str(), bad, n,
            first, bad ? (double)got[first] : 0.0, bad ? want[first] : 0.0);
  return bad == 0;
}

// Chi-square of draw counts against probabilities p over the tokens with p > 0; also every
// token within 5 sigma and no draw outside the support. Prints the statistic.
inline void check_frequencies(const char* label, const VecI& draws, const VecD& p) {
  std::map<int, int> count;
  for (int d : draws) count[d]++;
  const double n = (double)draws.size();
  double chi2 = 0;
  int df = -1, outside = 0, worst = -1;
  double worst_z = 0;
  for (auto& kv : count) {
    if (kv.first < 0 || kv.first >= (int)p.size() || p[kv.first] == 0) outside += kv.second;
  }
  for (size_t v = 0; v < p.size(); v++) {
    if (p[v] == 0) continue;
    df++;
    double e = n * p[v], o = count.count((int)v) ? count[(int)v] : 0;
    chi2 += (o - e) * (o - e) / e;
    double z = std::fabs(o - e) / std::sqrt(e * (1 - p[v]) + 1e-12);
    if (z > worst_z) { worst_z = z; worst = (int)v; }
  }
  // Loose: the chi-square's mean is df and its sd sqrt(2 df); bound at mean + 8 sd + 10.
  double bound = df + 8 * std::sqrt(2.0 * df) + 10;
  fprintf(stdout, "    %-40s draws=%.0f df=%d chi2=%.1f (bound %.1f) worst z=%.2f (token %d)  %s\n", label, n, df, chi2,
          bound, worst_z, worst, chi2 < bound && worst_z < 5 && outside == 0 ? "OK" : "NOT OK");
  QS_EXPECT(outside == 0, "%s: %d draws outside the support", label, outside);
  QS_EXPECT(chi2 < bound, "%s: chi2 %.1f >= %.1f", label, chi2, bound);
  QS_EXPECT(worst_z < 5, "%s: token %d is %.2f sigma off", label, worst, worst_z);
}

// Sets the OpenMP thread count for one scope.
struct ScopedThreads {
  int saved;
  explicit ScopedThreads(int n) : saved(qs::cpu::get_num_threads()) { qs::cpu::set_num_threads(n); }
  ~ScopedThreads() { qs::cpu::set_num_threads(saved); }
};

// Sets QS_CPU_SIMD for one scope ("" = unset: the best the machine has).
struct ScopedSimd {
  explicit ScopedSimd(const char* isa) {
    if (isa && *isa) setenv("QS_CPU_SIMD", isa, 1);
    else unsetenv("QS_CPU_SIMD");
  }
  ~ScopedSimd() { unsetenv("QS_CPU_SIMD"); }
};

// run() with 1, 2 and 3 OpenMP threads (3 oversubscribes a 2-core machine on purpose: an
// uneven split of the work); true when same(a, b) holds between the 1-thread result and each
// of the others.
template <typename Run, typename Same>
bool same_for_1_2_3_threads(Run run, Same same) {
  auto with_threads = [&](int n) {
    ScopedThreads t(n);
    return run();
  };
  auto a = with_threads(1);
  auto b = with_threads(2);
  auto c = with_threads(3);
  return same(a, b) && same(a, c);
}

}  // namespace qs_test
