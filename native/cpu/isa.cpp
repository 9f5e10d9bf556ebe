/*
 * isa.cpp: CPUID probe and the QS_CPU_SIMD cap behind isa.h.
 *
 * The probe runs once (a function-local static, so it is thread-safe and costs one load per
 * call afterwards); the environment is read on every active_isa() call on purpose, so that a
 * test can set QS_CPU_SIMD between two kernel calls and get the other path.
 */
#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace qs::cpu {
namespace {

Isa detect_isa() {
#if QS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaGeneric;
}

const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

}  // namespace

Isa best_isa() {
  static const Isa best = detect_isa();
  return best;
}

bool isa_supported(Isa isa) { return isa <= best_isa(); }

// QS_CPU_SIMD only ever lowers the choice: "avx512" on an AVX2 machine still gets AVX2, and a
// value that is no level name is ignored.
Isa active_isa() {
  const Isa best = best_isa();
  Isa cap;
  const char* env = std::getenv("QS_CPU_SIMD");
  if (env && isa_from_name(env, &cap) && cap < best) return cap;
  return best;
}

const char* isa_name(Isa isa) { return kIsaNames[isa]; }

bool isa_from_name(const char* name, Isa* isa) {
  if (!name) return false;
  for (int i = 0; i < 3; i++) {
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      *isa = (Isa)i;
      return true;
    }
  }
  return false;
}

}  // namespace qs::cpu
