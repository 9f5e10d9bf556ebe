// layernorm.h: LayerNorm (GPT-2) over the last dimension, biased variance as torch computes it.
//   out = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)
// Forward caches mean and rstd per row for the backward pass.
#pragma once

namespace qs::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int N, int C, T eps);
// out (N,C), mean (N), rstd (N), inp (N,C), weight (C), bias (C) or null

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int N, int C);
// dinp (N,C) +=, dweight (C) +=, dbias (C) += (null to skip), dout (N,C)

}  // namespace qs::cpu
