// parallel.h: the one CPU thread pool every kernel shares.
//
// All CPU kernels (GEMM included) parallelise with OpenMP, so there is exactly one pool of
// worker threads per compute thread. Two pools (say a BLAS pool and ours) fighting over two
// cores is what makes PyTorch's 2-thread training slower than 1-thread on small machines.
// The engine's compute thread calls set_num_threads() once; OpenMP's per-thread ICV means the
// setting follows every parallel region that thread opens.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace qs::cpu {

inline void set_num_threads(int n) {
#ifdef _OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

inline int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// This thread's index in the current parallel region (0 outside one): per-thread scratch slices.
inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Number of hardware threads, as OpenMP sees it (cgroup limits included where libgomp applies them).
inline int hardware_threads() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

}  // namespace qs::cpu
