// gemm_epilogue.cuh: what gemm.cu's two own kernels share: the problem description passed to
// the device, and the epilogue that turns one accumulated dot product into an element of C.
//
//   C[b][r, c] = alpha * acc + bias[c] + beta * C[b][r, c]     (beta = 0: C is not read)
//
// C and the bias may be f32, bf16 or f16 (chosen at run time: the switch is uniform across the
// grid, and the epilogue is a small part of the work); the accumulator is always f32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "quietstar/dtype.h"

namespace qs::cuda {

// One (strided-batched) product, row-major, the cpu/gemm.h contract. Leading dimensions are in
// elements, batch strides in bytes (so the kernels can offset a void* without its type).
struct GemmParams {
  bool trans_a, trans_b;
  int batch, M, N, K;
  float alpha, beta;
  const void* A; int64_t lda, stride_a_bytes;  // A (M, K), or (K, M) stored when trans_a
  const void* B; int64_t ldb, stride_b_bytes;  // B (K, N), or (N, K) stored when trans_b
  void* C; int64_t ldc, stride_c_bytes;        // C (M, N), of c_dtype
  DType c_dtype;
  const void* bias;                            // (N) of bias_dtype, or null
  DType bias_dtype;
  bool vec_a, vec_b;  // the tensor-core kernel may copy A / B in aligned 16-byte chunks
};

__device__ __forceinline__ float gemm_load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::BF16: return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    case DType::F16: return __half2float(((const __half*)p)[i]);
    default: return ((const float*)p)[i];
  }
}

__device__ __forceinline__ void gemm_store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::BF16: ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v); break;
    case DType::F16: ((__half*)p)[i] = __float2half_rn(v); break;
    default: ((float*)p)[i] = v; break;
  }
}

// C (this batch's matrix) [r, c] from the f32 accumulator; the caller checks r < M, c < N.
__device__ __forceinline__ void gemm_write(const GemmParams& g, void* C, int r, int c, float acc) {
  float v = g.alpha * acc;
  if (g.bias) v += gemm_load(g.bias, g.bias_dtype, c);
  const int64_t i = (int64_t)r * g.ldc + c;
  if (g.beta != 0.f) v += g.beta * gemm_load(C, g.c_dtype, i);  // beta = 0 never reads C (NaN-safe)
  gemm_store(C, g.c_dtype, i, v);
}

}  // namespace qs::cuda
