// linear.h: fully connected layers, in the two weight layouts checkpoints use.
//
//   out[M,N] = inp[M,K] · W + bias[N]
//   WeightLayout::OutIn : W stored [N,K] (torch nn.Linear, Llama); product is inp · Wᵀ
//   WeightLayout::InOut : W stored [K,N] (GPT-2 Conv1D);           product is inp · W
//
// Backward convention (llm.c's, used by every backward in native/cpu): gradients are ADDED
// (+=) into dinp, dweight and dbias, so branches that share an input compose and parameter
// gradients accumulate across micro-batches; callers zero them. Any of dinp, dweight, dbias
// (and bias) may be null to skip it.
#pragma once

namespace qs::cpu {

enum class WeightLayout { OutIn = 0, InOut = 1 };

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int M, int K, int N,
                    WeightLayout layout);
// out (M,N), inp (M,K), weight (N,K) or (K,N), bias (N) or null

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int M, int K, int N, WeightLayout layout);
// dinp (M,K) +=, dweight like weight +=, dbias (N) +=, dout (M,N)

}  // namespace qs::cpu
