// arena.cpp: see arena.h.
#include "quietstar/arena.h"

namespace qs {

Status Arena::begin(Engine& engine, const std::string& key, size_t bytes) {
  used_ = 0;
  if (storage_ && key == key_ && bytes <= storage_->bytes()) return Status::Ok();
  storage_.reset();  // free the old block before asking for the new one
  QS_RETURN_IF_ERROR(Storage::allocate(engine.device(), bytes, engine.stats(), &storage_));
  key_ = key;
  reallocations_++;
  return Status::Ok();
}

Status Arena::take(DType dtype, const Shape& shape, Tensor* out) {
  QS_CHECK_ARG(storage_ != nullptr, "arena: take() before begin()");
  size_t bytes = (size_t)shape_numel(shape) * dtype_size(dtype);
  size_t offset = (used_ + 63) / 64 * 64;
  if (offset + bytes > storage_->bytes()) {
    return QS_ERROR(INTERNAL, "arena: %s %s needs %zu bytes at offset %zu but the step reserved %zu (key '%s')",
                    dtype_name(dtype), shape_string(shape).c_str(), bytes, offset, storage_->bytes(), key_.c_str());
  }
  used_ = offset + bytes;
  *out = Tensor(storage_, offset, dtype, shape);
  return Status::Ok();
}

}  // namespace qs
