// bench_util.h: what the C++ benchmarks (bench/*.cpp) share: the clock, best-of timing, the
// JSON result line and the command line.
//
// Header-only on purpose: CMakeLists.txt builds every bench/*.cpp as its own executable from
// that one file, so shared code cannot live in a .cpp of its own.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "quietstar/status.h"

namespace qs_bench {

// n token ids in [0, vocab) from a fixed LCG (seed 12345): every run and every benchmark
// that asks for the same n sees the same tokens.
inline std::vector<int32_t> lcg_tokens(int64_t n, int vocab) {
  std::vector<int32_t> ids((size_t)n);
  uint64_t s = 12345;
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[(size_t)i] = (int32_t)((s >> 33) % (uint64_t)vocab);
  }
  return ids;
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best-of-`reps` seconds of fn() after one warm-up call (warmup = false to skip it). Best-of,
// not mean: the machine is shared, and interference only ever adds time.
template <typename F>
double best_time(int reps, F&& fn, bool warmup = true) {
  if (warmup) fn();
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    fn();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

// One result line on stdout, the format bench/run.ts reads:
//   {"name": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}
// baseline and ratio only when baseline > 0. `num` is the printf conversion for value and
// baseline ("%.2f", "%.4g", ...), so each benchmark keeps the precision it has always printed.
inline void emit(const std::string& name, double value, const char* unit, double baseline = -1,
                 const char* num = "%.4g") {
  char v[64], b[64];
  snprintf(v, sizeof v, num, value);
  if (baseline > 0) {
    snprintf(b, sizeof b, num, baseline);
    printf("{\"name\": \"%s\", \"value\": %s, \"unit\": \"%s\", \"baseline\": %s, \"ratio\": %.3f}\n",
           name.c_str(), v, unit, b, value / baseline);
  } else {
    printf("{\"name\": \"%s\", \"value\": %s, \"unit\": \"%s\"}\n", name.c_str(), v, unit);
  }
  fflush(stdout);
}

// The one row of a benchmark that cannot run here (a GPU benchmark without a usable GPU):
//   {"name": "<bench> skipped: <why>", "value": 0, "unit": "skipped", "skipped": true}
// (quotes and backslashes in `why` become ' so the line stays valid JSON).
inline void emit_skip(const char* bench, const std::string& why) {
  std::string w;
  for (char c : why) w += c == '"' || c == '\\' ? '\'' : c;
  printf("{\"name\": \"%s skipped: %s\", \"value\": 0, \"unit\": \"skipped\", \"skipped\": true}\n", bench, w.c_str());
  fflush(stdout);
}

// The command line: "--quick" sets *quick; any other argument goes to other(arg), which says
// whether it took it. An argument nobody takes prints "usage: <argv[0]> <usage>" on stderr
// and returns false (the caller exits with status 2).
template <typename Other>
bool parse_args(int argc, char** argv, const char* usage, bool* quick, Other other) {
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      *quick = true;
    } else if (!other(argv[i])) {
      fprintf(stderr, "usage: %s %s\n", argv[0], usage);
      return false;
    }
  }
  return true;
}
inline bool parse_args(int argc, char** argv, const char* usage, bool* quick) {
  return parse_args(argc, argv, usage, quick, [](const char*) { return false; });
}

// A failed Status on stderr as "<bench>: <what>: <message>"; returns whether it was OK.
inline bool report_ok(const char* bench, const qs::Status& st, const char* what) {
  if (!st.ok()) fprintf(stderr, "%s: %s: %s\n", bench, what, st.to_string().c_str());
  return st.ok();
}

}  // namespace qs_bench
