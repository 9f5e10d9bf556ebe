// kernels_sampling.h: launchers of the CUDA twins of cpu/sampling.h (sampling.cu) and
// cpu/thought_sampling.h (thought_sampling.cu).
//
// Plain C++ (no CUDA headers) so the ops and the Quiet-STaR step can include it. Device
// pointers (logits, hidden states, weights, row ids, positions and the suppress list too), f32,
// enqueued on `stream`, never synchronising. Given the same inputs and keys the tokens are the
// CPU twin's (see the .cu files for the exact guarantees). A row that cannot be sampled gets the
// CPU's negative code (cpu/sampling.h); the caller reads it back.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"
#include "quietstar/status.h"

namespace qs::cuda {

// sampling.cu: ids (B) from logits (B, V); rows, positions (B) or null; suppress (n_suppress).
// Device scratch of sample_tokens_scratch_bytes(B, V, p) bytes (0 without top-k / top-p).
size_t sample_tokens_scratch_bytes(int B, int V, const cpu::SampleParams& p);
Status sample_tokens_f32(int32_t* out, const float* logits, int B, int V, const cpu::SampleParams& p,
                         const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                         void* scratch, void* stream);

// thought_sampling.cu: tokens (N), logp (N), lse (N) from h (N, D) and the head W (V, D) without
// materialising logits; device scratch of thought_sample_scratch_bytes(N, V) bytes.
size_t thought_sample_scratch_bytes(int N, int V);
Status thought_sample_f32(int32_t* tokens, float* logp, float* lse, const float* h, const float* W, int N, int D,
                          int V, const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                          const cpu::ThoughtSampleParams& p, void* scratch, void* stream);

}  // namespace qs::cuda
