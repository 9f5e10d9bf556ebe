// convert.h: storage dtype conversions (bf16 and f16 are storage formats; compute is f32/f64).
// bf16 rounds to nearest even (as torch does); f16 per IEEE 754 binary16 with subnormals.
#pragma once

#include <cstdint>

namespace qs::cpu {

void f32_to_bf16(uint16_t* out, const float* inp, int64_t n);
void bf16_to_f32(float* out, const uint16_t* inp, int64_t n);
void f32_to_f16(uint16_t* out, const float* inp, int64_t n);
void f16_to_f32(float* out, const uint16_t* inp, int64_t n);

}  // namespace qs::cpu
