// common.cuh: CUDA error handling for the CUDA backend.
//
// CUDA errors become Statuses; the process is never ended: llm.c's cudaCheck() exits, which
// inside Node kills the user's whole program. A "sticky" error (illegal address, launch
// failure, ...) corrupts the context for the rest of the process, so we remember it and the
// engine refuses further work (ENGINE_FAILED) instead of pretending to recover.
#pragma once

#include <cuda_runtime.h>

#include "quietstar/status.h"

namespace qs::cuda {

// Converts a CUDA error to a Status (OK for cudaSuccess) and records sticky ones.
Status from_cuda(cudaError_t err, const char* what, const char* file, int line);
// Marks the context lost (called by from_cuda for sticky errors).
void mark_context_lost();

}  // namespace qs::cuda

#define QS_CUDA(expr) ::qs::cuda::from_cuda((expr), #expr, __FILE__, __LINE__)

#define QS_CUDA_RETURN_IF_ERROR(expr)                                   \
  do {                                                                  \
    ::qs::Status qs_cuda_status_ = QS_CUDA(expr);                       \
    if (!qs_cuda_status_.ok()) return qs_cuda_status_;                  \
  } while (0)

// After a kernel launch: catches bad launch configurations and, with QUIETSTAR_SYNC=1,
// synchronises so an asynchronous fault is reported at the kernel that caused it.
#define QS_CUDA_CHECK_LAUNCH(stream)                                            \
  do {                                                                          \
    QS_CUDA_RETURN_IF_ERROR(cudaGetLastError());                                \
    if (::qs::cuda::sync_after_launch())                                        \
      QS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize((cudaStream_t)(stream)));   \
  } while (0)

namespace qs::cuda {
bool sync_after_launch();
}
