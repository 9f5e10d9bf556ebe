// rmsnorm.h: RMSNorm (Llama family) over the last dimension.
//   out = x * rstd * weight,  rstd = 1 / sqrt(mean(x²) + eps)
#pragma once

namespace qs::cpu {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps);
// out (N,C), rstd (N), inp (N,C), weight (C)

template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C);
// dinp (N,C) +=, dweight (C) +=, dout (N,C)

}  // namespace qs::cpu
