// tensor.cpp: storage allocation and tensor views (see tensor.h).
#include "quietstar/tensor.h"

#include <cstdlib>
#include <cstring>

#include "core/caching_allocator.h"
#include "quietstar/cuda_backend.h"

namespace qs {

bool parse_dtype(const std::string& name, DType* out) {
  static const struct { const char* name; DType dtype; } names[] = {
      {"f32", DType::F32}, {"float32", DType::F32}, {"f64", DType::F64}, {"float64", DType::F64},
      {"bf16", DType::BF16}, {"bfloat16", DType::BF16}, {"f16", DType::F16}, {"float16", DType::F16},
      {"i32", DType::I32}, {"int32", DType::I32}, {"u8", DType::U8}, {"uint8", DType::U8}};
  for (auto& n : names) {
    if (name == n.name) { *out = n.dtype; return true; }
  }
  return false;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

static void bump_peak(std::atomic<int64_t>& peak, int64_t value) {
  int64_t seen = peak.load();
  while (value > seen && !peak.compare_exchange_weak(seen, value)) {}
}

Status Storage::allocate(Device device, size_t bytes, std::shared_ptr<MemoryStats> stats,
                         std::shared_ptr<Storage>* out) {
  std::shared_ptr<Storage> s(new Storage());
  s->bytes_ = bytes;
  s->device_ = device;
  s->stats_ = std::move(stats);
  size_t padded = (bytes + 63) / 64 * 64;
  if (padded == 0) padded = 64;  // a valid pointer even for empty tensors
  if (device == Device::CPU) {
    s->ptr_ = std::aligned_alloc(64, padded);
    if (!s->ptr_) {
      return QS_ERROR(OUT_OF_MEMORY, "host allocation of %zu bytes failed (%lld bytes in use by quietstar)",
                      bytes, (long long)(s->stats_ ? s->stats_->host_bytes.load() : 0));
    }
    std::memset(s->ptr_, 0, padded);
    if (s->stats_) {
      int64_t now = s->stats_->host_bytes += (int64_t)bytes;
      s->stats_->host_storages++;
      bump_peak(s->stats_->host_peak, now);
    }
  } else {
    // The cache's OUT_OF_MEMORY already says what is asked, in use and cached.
    CachingAllocator* cache = s->stats_ ? s->stats_->device_cache.get() : nullptr;
    Status st = cache ? cache->allocate(padded, &s->ptr_) : cuda::device_malloc(&s->ptr_, padded);
    if (!st.ok()) {
      s->ptr_ = nullptr;
      return st;
    }
    if (s->stats_) {  // counted before the memset: if it fails, ~Storage takes these back
      int64_t now = s->stats_->device_bytes += (int64_t)bytes;
      s->stats_->device_storages++;
      bump_peak(s->stats_->device_peak, now);
    }
    QS_RETURN_IF_ERROR(cuda::memset_zero(s->ptr_, padded, nullptr));
  }
  *out = std::move(s);
  return Status::Ok();
}

Storage::~Storage() {
  if (!ptr_) return;
  if (device_ == Device::CPU) {
    std::free(ptr_);
    if (stats_) { stats_->host_bytes -= (int64_t)bytes_; stats_->host_storages--; }
  } else {
    if (stats_ && stats_->device_cache) {
      stats_->device_cache->free(ptr_);
    } else {
      cuda::device_free(ptr_);
    }
    if (stats_) { stats_->device_bytes -= (int64_t)bytes_; stats_->device_storages--; }
  }
}

Status Tensor::view(int64_t offset_elems, Shape shape, Tensor* out) const {
  QS_CHECK_ARG(defined(), "view of an undefined tensor");
  int64_t n = shape_numel(shape);
  QS_CHECK_ARG(offset_elems >= 0 && offset_elems + n <= numel(),
               "view of %lld elements at offset %lld does not fit in %s", (long long)n,
               (long long)offset_elems, describe().c_str());
  *out = Tensor(storage_, offset_ + (size_t)offset_elems * dtype_size(dtype_), dtype_, std::move(shape));
  return Status::Ok();
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_string(shape_) + " (" + device_name(device()) + ")";
}

}  // namespace qs
