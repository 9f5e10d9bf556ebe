// rope.h: rotary position embedding, Hugging Face "rotate_half" convention.
//
// For head dim d (even) and half = d/2, frequency f_i = theta^(-2i/d), angle a = pos * f_i:
//   out[i]        = x[i] * cos(a) - x[i + half] * sin(a)
//   out[i + half] = x[i + half] * cos(a) + x[i] * sin(a)
// Each token has its own position id (Quiet-STaR thought tokens sit at i + s), so positions
// are an explicit int32 array, not implied by the row index. Angles are computed in double
// and rounded once, matching HF's float32 inv_freq table to ~1 ulp.
// out may alias inp (in-place rotation).
#pragma once

#include <cstdint>

namespace qs::cpu {

template <typename T>
void rope_forward(T* out, const T* inp, const int32_t* pos, int N, int H, int d, double theta);
// out (N,H,d), inp (N,H,d), pos (N)

template <typename T>
void rope_backward(T* dinp, const T* dout, const int32_t* pos, int N, int H, int d, double theta);
// dinp (N,H,d) += rotation of dout by -angle (the transpose of the forward rotation)

}  // namespace qs::cpu
