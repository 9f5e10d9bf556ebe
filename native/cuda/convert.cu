// convert.cu: CUDA twin of native/cpu/convert.cpp and of the convert op's f32 / f64 casts.
// Every pair of f32, f64, bf16, f16 goes through f32, as on the CPU (exact from bf16 / f16;
// f64 -> f32 rounds once). The bf16 / f16 bit routines are convert.cpp's, line for line, so
// the twins agree bit for bit (NaN payloads included), not only to a tolerance.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

__device__ inline uint16_t bf16_from_float(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                            // round to nearest even
  return (uint16_t)(u >> 16);
}

__device__ inline uint16_t half_from_float(float f) {
  uint32_t x = __float_as_uint(f);
  uint32_t sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   // NaN
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // overflow -> inf (rounded)
  if (absx < 0x38800000u) {  // f16 subnormal or zero: the add by 0.5 rounds to nearest even for us
    float scaled = __fadd_rn(__uint_as_float(absx), 0.5f);
    return (uint16_t)(sign | (__float_as_uint(scaled) - __float_as_uint(0.5f)));
  }
  absx += 0xc8000fffu + ((absx >> 13) & 1u);  // rebias exponent, round to nearest even
  return (uint16_t)(sign | (absx >> 13));
}

__device__ inline float float_from_half(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) return __uint_as_float(__float_as_uint(__fmul_rn((float)mant, 1.0f / 16777216.0f)) | sign);
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
  return __uint_as_float(sign | ((exp + 112) << 23) | (mant << 13));
}

__device__ inline float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return ((const float*)p)[i];
    case DType::F64: return (float)((const double*)p)[i];
    case DType::BF16: return __uint_as_float((uint32_t)((const uint16_t*)p)[i] << 16);
    default: return float_from_half(((const uint16_t*)p)[i]);
  }
}

__device__ inline void store_f32(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::F32: ((float*)p)[i] = v; break;
    case DType::F64: ((double*)p)[i] = v; break;
    case DType::BF16: ((uint16_t*)p)[i] = bf16_from_float(v); break;
    default: ((uint16_t*)p)[i] = half_from_float(v); break;
  }
}

// out[i] (to) = inp[i] (from), through f32. The dtype switch is uniform across the grid.
__global__ void convert_kernel1(void* out, DType to, const void* inp, DType from, int64_t n) {
  QS_GRID_STRIDE(i, n) store_f32(out, to, i, load_f32(inp, from, i));
}

Status convert(void* out, DType to, const void* inp, DType from, int64_t n, void* stream) {
  if (n == 0) return Status::Ok();
  convert_kernel1<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(out, to, inp, from, n);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
