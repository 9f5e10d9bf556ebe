// kernels_quietstar.h: launchers of the CUDA twin of cpu/quietstar_heads.h (quietstar_heads.cu):
// the Quiet-STaR step's mixing ("talk") head and its row moves.
//
// Plain C++ (no CUDA headers) so the step and the tests can include it. Device pointers, f32,
// enqueued on `stream`, never synchronising. Shapes, formulas and the "+=" / "overwritten" conventions are the CPU twin's;
// MixingActs / MixingWeights / MixingGrads are the CPU structs holding device pointers.
#pragma once

#include <cstdint>

#include "cpu/quietstar_heads.h"
#include "quietstar/status.h"

namespace qs::cuda {

// hm (n, D) = mix(h_base, h_chain) by the head's weight w (n); fills every field of `a`.
Status mixing_forward(const cpu::MixingActs<float>& a, const float* h_base, const float* h_chain,
                      const cpu::MixingWeights<float>& w, int n, int D, bool weights_base, bool sigmoid, void* stream);
// dhm (n, D) is clobbered; dh_base, dh_chain (n, D) overwritten; parameter gradients +=;
// t1 (n, D) and dw (n) scratch (dw ends as d(loss)/d(wraw)).
Status mixing_backward(float* dh_base, float* dh_chain, const cpu::MixingGrads<float>& g, float* dhm, float* t1,
                       float* dw, const cpu::MixingActs<float>& a, const float* h_base, const float* h_chain,
                       const cpu::MixingWeights<float>& w, int n, int D, bool weights_base, bool sigmoid, void* stream);

// Row moves (cpu/quietstar_heads.h): row indices and lists are int64 device arrays; the same
// sums in the same order as the CPU twins.
Status gather_rows(float* dst, const float* src, const int64_t* rows, int64_t n, int D, float f, void* stream);
Status fill_rows(float* dst, const float* vec, const int64_t* rows, int64_t n, int D, float f, void* stream);
Status sum_rows(float* out, const float* src, const int64_t* rows, int64_t n, int D, float f, void* stream);
Status scatter_add_rows(float* dst, const float* src, const int64_t* dest, const int64_t* start, const int64_t* from,
                        int64_t m, int D, float f, void* stream);

}  // namespace qs::cuda
