// dtype.h: element types of tensors.
// f32 and f64 are compute types on the CPU (f64 for gradient checks); bf16 and f16 are storage
// formats (convert to f32 to compute); i32 holds token ids and positions; u8 holds masks.
#pragma once

#include <cstddef>
#include <string>

namespace qs {

enum class DType { F32 = 0, F64, BF16, F16, I32, U8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
  }
  return "?";
}

// Parses "f32", "float32", ...; false for an unknown name.
bool parse_dtype(const std::string& name, DType* out);

enum class Device { CPU = 0, CUDA = 1 };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

}  // namespace qs
