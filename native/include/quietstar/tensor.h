// tensor.h: n-dimensional arrays owned by the native core.
//
// A Tensor is a view (dtype, shape, byte offset) into a reference-counted Storage, so the flat
// parameter buffer can hand out named views (llm.c's ParameterTensors) and a job in flight keeps
// the memory it reads alive even if the user disposes the JS object meanwhile. Storage frees
// itself deterministically when the last reference goes: there is no garbage collector here.
// Host memory is 64-byte aligned (AVX-512 loads). Every byte is counted in MemoryStats. Device
// memory comes from the engine's caching allocator (core/caching_allocator.h) when it has one.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quietstar/dtype.h"
#include "quietstar/status.h"

namespace qs {

class CachingAllocator;

// What an engine shares with every storage it allocated (storages may outlive it): byte
// counters of the tensors (requested sizes) and, on CUDA, the device cache they come from.
struct MemoryStats {
  std::atomic<int64_t> host_bytes{0};
  std::atomic<int64_t> device_bytes{0};
  std::atomic<int64_t> host_storages{0};
  std::atomic<int64_t> device_storages{0};
  std::atomic<int64_t> host_peak{0};
  std::atomic<int64_t> device_peak{0};
  std::shared_ptr<CachingAllocator> device_cache;  // set once, before the first allocation
};

class Storage {
 public:
  // Allocates `bytes` (zero-filled) on `device`; device memory goes through the CUDA backend.
  static Status allocate(Device device, size_t bytes, std::shared_ptr<MemoryStats> stats,
                         std::shared_ptr<Storage>* out);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Storage() = default;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::CPU;
  std::shared_ptr<MemoryStats> stats_;
};

using Shape = std::vector<int64_t>;

std::string shape_string(const Shape& shape);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t offset_bytes, DType dtype, Shape shape)
      : storage_(std::move(storage)), offset_(offset_bytes), dtype_(dtype), shape_(std::move(shape)) {}

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int rank() const { return (int)shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return (size_t)numel() * dtype_size(dtype_); }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t offset_bytes() const { return offset_; }

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
  template <typename T> T* data() const { return static_cast<T*>(raw()); }

  // A view of `shape` starting `offset_elems` elements into this tensor (same dtype).
  Status view(int64_t offset_elems, Shape shape, Tensor* out) const;

  // "f32[2, 3] (cpu)" for messages.
  std::string describe() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  Shape shape_;
};

}  // namespace qs
