// harness.h: a tiny test harness for the native test programs (no framework to download).
//
// Each test_*.cpp is its own executable (registered with ctest). It defines cases with
// QS_TEST(name) { ... } and ends with QS_TEST_MAIN(). Inside a case, QS_EXPECT(cond, fmt, ...)
// records a failure and goes on; QS_SKIP(reason) ends the case as skipped (e.g. no GPU).
// check_close() prints a tensor comparison in the spirit of llm.c's check_tensor: max
// absolute and relative error with OK / NOT OK. The last line of output is machine-readable:
//   QS_TEST_SUMMARY passed=N failed=M skipped=K
// and .ci/run adds these up. The exit status is nonzero iff a case failed.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace qs_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

struct CaseState {
  int failures = 0;
  bool skipped = false;
  std::string skip_reason;
};

inline CaseState& current() {
  static CaseState state;
  return state;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline void fail(const char* file, int line, const char* fmt, ...) {
  char buf[2048];
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  fprintf(stdout, "    FAIL %s:%d: %s\n", file, line, buf);
  current().failures++;
}

// Deterministic pseudo-random numbers for test inputs (splitmix64).
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next_u64() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }  // [0,1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  int below(int n) { return (int)(next_u64() % (uint64_t)n); }
};

template <typename T>
std::vector<T> random_vector(Rng& rng, size_t n, double scale = 1.0) {
  std::vector<T> v(n);
  for (auto& x : v) x = (T)(rng.normal() * scale);
  return v;
}

// Compare `got` against `want`: passes when |got - want| <= atol + rtol * |want| everywhere.
// Prints max abs / rel error and OK / NOT OK; returns whether it passed.
template <typename A, typename B>
bool check_close(const char* label, const A* got, const B* want, size_t n, double rtol, double atol) {
  double max_abs = 0, max_rel = 0;
  size_t worst = 0, bad = 0;
  for (size_t i = 0; i < n; i++) {
    double g = (double)got[i], w = (double)want[i];
    double err = std::fabs(g - w);
    if (!(err <= atol + rtol * std::fabs(w))) {  // also catches NaN
      if (bad == 0) worst = i;
      bad++;
    }
    if (err > max_abs || std::isnan(err)) { max_abs = err; if (bad == 0) worst = i; }
    double rel = err / (std::fabs(w) + 1e-30);
    if (std::fabs(w) > atol && rel > max_rel) max_rel = rel;
  }
  bool ok = bad == 0;
  fprintf(stdout, "    %-40s n=%-8zu max_abs=%.3e max_rel=%.3e  %s\n", label, n, max_abs, max_rel,
          ok ? "OK" : "NOT OK");
  if (!ok) {
    fail(__FILE__, __LINE__, "%s: %zu of %zu elements out of tolerance (rtol %.1e, atol %.1e); first at %zu: got %.9g want %.9g",
         label, bad, n, rtol, atol, worst, (double)got[worst], (double)want[worst]);
  }
  return ok;
}

inline int run_all(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0, skipped = 0;
  for (auto& c : registry()) {
    if (filter && std::string(c.name).find(filter) == std::string::npos) continue;
    current() = CaseState();
    fprintf(stdout, "[ RUN  ] %s\n", c.name);
    fflush(stdout);
    c.fn();
    if (current().skipped) {
      fprintf(stdout, "[ SKIP ] %s: %s\n", c.name, current().skip_reason.c_str());
      skipped++;
    } else if (current().failures) {
      fprintf(stdout, "[ FAIL ] %s\n", c.name);
      failed++;
    } else {
      fprintf(stdout, "[  OK  ] %s\n", c.name);
      passed++;
    }
    fflush(stdout);
  }
  fprintf(stdout, "QS_TEST_SUMMARY passed=%d failed=%d skipped=%d\n", passed, failed, skipped);
  return failed ? 1 : 0;
}

}  // namespace qs_test

#define QS_TEST_CONCAT2(a, b) a##b
#define QS_TEST_CONCAT(a, b) QS_TEST_CONCAT2(a, b)
#define QS_TEST(name)                                                                  \
  static void QS_TEST_CONCAT(qs_test_fn_, name)();                                     \
  static ::qs_test::Registrar QS_TEST_CONCAT(qs_test_reg_, name)(#name, QS_TEST_CONCAT(qs_test_fn_, name)); \
  static void QS_TEST_CONCAT(qs_test_fn_, name)()

#define QS_EXPECT(cond, ...)                                             \
  do {                                                                   \
    if (!(cond)) ::qs_test::fail(__FILE__, __LINE__, __VA_ARGS__);       \
  } while (0)

#define QS_SKIP(reason)                             \
  do {                                              \
    ::qs_test::current().skipped = true;            \
    ::qs_test::current().skip_reason = (reason);    \
    return;                                         \
  } while (0)

#define QS_TEST_MAIN() \
  int main(int argc, char** argv) { return ::qs_test::run_all(argc, argv); }
