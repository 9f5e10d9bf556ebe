// arena.h: activation memory reused from step to step while shapes stay the same.
//
// A training step needs the same activations every time for the same (B, T, model): the
// arena keeps one storage sized for them and hands out tensor views by bumping an offset.
// begin(key, bytes) starts a step: with the same key and enough capacity nothing is
// allocated; a new key (new shapes) reallocates exactly once. Views handed out earlier
// share the storage, so they stay valid (and keep the old block alive) until released.
#pragma once

#include <string>

#include "quietstar/engine.h"

namespace qs {

class Arena {
 public:
  // Starts a step needing up to `bytes` for shapes identified by `key`.
  Status begin(Engine& engine, const std::string& key, size_t bytes);
  // A zero-initialised-at-allocation (not per step) view of `shape`, 64-byte aligned.
  Status take(DType dtype, const Shape& shape, Tensor* out);
  size_t capacity() const { return storage_ ? storage_->bytes() : 0; }
  size_t used() const { return used_; }
  int reallocations() const { return reallocations_; }
  void release() { storage_.reset(); used_ = 0; key_.clear(); }

 private:
  std::shared_ptr<Storage> storage_;
  std::string key_;
  size_t used_ = 0;
  int reallocations_ = 0;
};

}  // namespace qs
