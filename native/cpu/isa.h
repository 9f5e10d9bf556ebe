// isa.h: which x86 SIMD extension the CPU kernels may use, decided in one place.
//
// The binary targets baseline x86-64 (SSE2) so that it loads on any machine; kernels that want
// AVX2 or AVX-512 compile extra copies of their hot functions with QS_TARGET_AVX2 /
// QS_TARGET_AVX512 and pick one at run time:
//
//   best_isa()       the best extension this CPU runs (CPUID, probed once and cached)
//   isa_supported()  whether this CPU runs a given one (everything up to best_isa())
//   active_isa()     best_isa() capped by the environment variable QS_CPU_SIMD=generic|avx2,
//                    read on every call so that tests can switch paths between calls
//
// attention.cpp and lmhead_xent.cpp dispatch on active_isa(). gemm.cpp dispatches on
// best_isa() and does not read QS_CPU_SIMD; its override is gemm_force_kernel() (gemm.h).
// So under QS_CPU_SIMD the lmhead kernel changes its softmax code while its gemms stay on
// the CPUID choice.
//
// The AVX-512 level means F + VL + DQ + BW with AVX2 and FMA, what every AVX-512 core since
// Skylake-SP has; the AVX2 level means AVX2 + FMA (Haswell and later). Elsewhere (ARM, ...)
// QS_X86 is 0, the target macros are not defined and best_isa() is kIsaGeneric.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define QS_X86 1
#define QS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define QS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#else
#define QS_X86 0
#endif

namespace qs::cpu {

// Ordered: a CPU that runs one level runs every level below it.
enum Isa { kIsaGeneric = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

Isa best_isa();
bool isa_supported(Isa isa);
Isa active_isa();

// "generic", "avx2", "avx512": the names QS_CPU_SIMD and gemm_force_kernel() take.
const char* isa_name(Isa isa);
// The level called `name`; false (and *isa untouched) for any other string or null.
bool isa_from_name(const char* name, Isa* isa);

}  // namespace qs::cpu
