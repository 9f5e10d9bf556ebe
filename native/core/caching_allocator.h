// caching_allocator.h: device memory kept and reused instead of given back (PyTorch-style).
//
// cudaMalloc is slow and cudaFree synchronises the whole device, while a training step frees
// and asks again for the same sizes every time. So a freed block goes into a cache, and the
// next request that fits takes it (best fit) without touching the device.
//
//   sizes      rounded up to 512 B. Requests up to 1 MiB come from the small pool, carved out
//              of 2 MiB segments; larger ones from the large pool, whose segments are the
//              request rounded up to 2 MiB.
//   splitting  a cached block larger than the request is split when the rest is worth keeping
//              (>= 512 B small, > 1 MiB large), so a block handed out is at most 1 MiB larger
//              than asked; freed neighbours within a segment merge again.
//   OOM        when the device refuses, every cached segment is given back and the request
//              retried once; if it still fails, OUT_OF_MEMORY says what was asked, what is in
//              use and cached, what the device has free, and what to do about it.
//
// The allocator knows nothing about CUDA: the device is two callbacks, so the tests run it on
// the CPU over a fake device. Every method takes one mutex, because a storage may be freed on
// the JS thread while the compute thread allocates; callbacks run under it and must not call
// back in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <unordered_map>

#include "quietstar/status.h"

namespace qs {

struct DeviceMemoryCallbacks {
  std::function<Status(void** ptr, size_t bytes)> allocate;  // OUT_OF_MEMORY when full
  std::function<void(void* ptr)> release;
  std::function<bool(size_t* free_bytes, size_t* total_bytes)> info;  // optional, for messages
};

struct AllocatorStats {
  int64_t allocated_bytes = 0;       // in blocks handed out (rounded sizes)
  int64_t reserved_bytes = 0;        // held from the device: allocated + cached
  int64_t peak_allocated_bytes = 0;  // since creation or reset_peak()
  int64_t peak_reserved_bytes = 0;
  int64_t device_allocations = 0;    // successful device allocate() calls, ever
  int64_t cache_hits = 0;            // requests served without a device allocation
  int64_t segments = 0;              // device allocations held now
  int64_t cached_bytes() const { return reserved_bytes - allocated_bytes; }
};

class CachingAllocator {
 public:
  static constexpr size_t kMinBlock = 512;              // rounding granularity
  static constexpr size_t kSmallRequest = 1 << 20;      // <= this: the small pool
  static constexpr size_t kSmallSegment = 2 << 20;      // what the small pool asks the device for
  static constexpr size_t kLargeRound = 2 << 20;        // large segments are multiples of this

  explicit CachingAllocator(DeviceMemoryCallbacks device) : device_(std::move(device)) {}
  ~CachingAllocator();  // gives every segment back (storages hold a reference, so none is in use)
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // At least `bytes` (0 is fine); offsets inside a segment are multiples of 512, so blocks are
  // as aligned as the device's own allocations.
  Status allocate(size_t bytes, void** out);
  // Returns a block from allocate() to the cache; unknown pointers are ignored.
  void free(void* ptr);
  // Gives every wholly free segment back to the device; returns the bytes given back.
  size_t release_cached();
  void reset_peak();
  AllocatorStats stats() const;

  static size_t round_size(size_t bytes);

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;
    bool small = false;      // which pool it belongs to
    bool in_use = false;
    Block* prev = nullptr;   // neighbours inside the same segment (null at its ends)
    Block* next = nullptr;
  };
  struct BySize {  // best fit: smallest size first, then address
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
  };
  using FreeList = std::set<Block*, BySize>;

  FreeList& pool(bool small) { return small ? small_free_ : large_free_; }
  Block* take_cached(bool small, size_t size);
  Status new_segment(size_t request, size_t size, bool small, Block** out);
  Block* split(Block* block, size_t size);
  Block* merge(Block* block, Block* neighbour);
  size_t release_cached_locked();
  Status out_of_memory(size_t request, size_t segment, size_t released) const;

  DeviceMemoryCallbacks device_;
  mutable std::mutex mutex_;
  FreeList small_free_, large_free_;
  std::unordered_map<void*, Block*> in_use_;
  AllocatorStats stats_;
};

}  // namespace qs
