// convert.cpp: bf16 / f16 storage conversions (see convert.h).
#include "cpu/convert.h"

#include <cstring>

namespace qs::cpu {

static inline uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

void f32_to_bf16(uint16_t* out, const float* inp, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) {
    uint32_t u = bits_of(inp[i]);
    if ((u & 0x7fffffffu) > 0x7f800000u) { out[i] = (uint16_t)((u >> 16) | 0x40); continue; }  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    out[i] = (uint16_t)(u >> 16);
  }
}

void bf16_to_f32(float* out, const uint16_t* inp, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) out[i] = float_of((uint32_t)inp[i] << 16);
}

static inline uint16_t half_from_float(float f) {
  uint32_t x = bits_of(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          // NaN
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         // overflow -> inf (rounded)
  if (absx < 0x38800000u) {                                           // subnormal or zero in f16
    // Scale into the subnormal range with a float add that rounds to nearest even for us.
    float scaled = float_of(absx) + 0.5f;  // 0.5 = 2^-1: aligns the f16 subnormal ulp (2^-24) at the mantissa's last bit
    return (uint16_t)(sign | (bits_of(scaled) - bits_of(0.5f)));
  }
  uint32_t mant_odd = (absx >> 13) & 1u;
  absx += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return (uint16_t)(sign | (absx >> 13));
}

static inline float float_from_half(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float v = (float)mant * (1.0f / 16777216.0f);  // mant * 2^-24
    return float_of(bits_of(v) | sign);
  }
  if (exp == 31) return float_of(sign | 0x7f800000u | (mant << 13));
  return float_of(sign | ((exp + 112) << 23) | (mant << 13));
}

void f32_to_f16(uint16_t* out, const float* inp, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) out[i] = half_from_float(inp[i]);
}

void f16_to_f32(float* out, const uint16_t* inp, int64_t n) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; i++) out[i] = float_from_half(inp[i]);
}

}  // namespace qs::cpu
