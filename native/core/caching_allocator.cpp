// caching_allocator.cpp: see caching_allocator.h.
#include "core/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace qs {

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes < kMinBlock) return kMinBlock;
  return (bytes + kMinBlock - 1) / kMinBlock * kMinBlock;
}

static size_t segment_size(size_t size, bool small) {
  if (small) return CachingAllocator::kSmallSegment;
  const size_t r = CachingAllocator::kLargeRound;
  return (size + r - 1) / r * r;
}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  // Walk each segment from its first block so every device pointer is released exactly once.
  std::vector<Block*> blocks(small_free_.begin(), small_free_.end());
  blocks.insert(blocks.end(), large_free_.begin(), large_free_.end());
  for (auto& kv : in_use_) blocks.push_back(kv.second);
  for (Block* b : blocks) {
    if (b->prev) continue;  // not a segment head: freed with its head below
    device_.release(b->ptr);
  }
  for (Block* b : blocks) delete b;
}

Status CachingAllocator::allocate(size_t bytes, void** out) {
  std::lock_guard<std::mutex> lock(mutex_);
  // No device has 2^60 bytes; refusing here also keeps the rounding below from wrapping.
  if (bytes > ((size_t)1 << 60)) return out_of_memory(bytes, bytes, 0);
  const size_t size = round_size(bytes);
  const bool small = size <= kSmallRequest;
  Block* block = take_cached(small, size);
  if (block) {
    stats_.cache_hits++;
  } else {
    QS_RETURN_IF_ERROR(new_segment(bytes, size, small, &block));
  }
  block = split(block, size);
  block->in_use = true;
  in_use_[block->ptr] = block;
  stats_.allocated_bytes += (int64_t)block->size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  *out = block->ptr;
  return Status::Ok();
}

// The smallest cached block of the pool that holds `size`, taken off the free list.
CachingAllocator::Block* CachingAllocator::take_cached(bool small, size_t size) {
  FreeList& list = pool(small);
  Block key;
  key.size = size;
  auto it = list.lower_bound(&key);  // key.ptr is null: the first block of at least `size`
  if (it == list.end()) return nullptr;
  Block* block = *it;
  list.erase(it);
  return block;
}

// Asks the device for a segment; on OUT_OF_MEMORY empties the cache and asks once more.
Status CachingAllocator::new_segment(size_t request, size_t size, bool small, Block** out) {
  const size_t bytes = segment_size(size, small);
  void* ptr = nullptr;
  Status st = device_.allocate(&ptr, bytes);
  size_t released = 0;
  if (st.code() == Code::OUT_OF_MEMORY) {
    released = release_cached_locked();
    if (released > 0) st = device_.allocate(&ptr, bytes);
  }
  if (st.code() == Code::OUT_OF_MEMORY) return out_of_memory(request, bytes, released);
  QS_RETURN_IF_ERROR(st);  // ENGINE_FAILED, CUDA_ERROR: not a matter of size, pass it on
  Block* block = new Block();
  block->ptr = ptr;
  block->size = bytes;
  block->small = small;
  stats_.device_allocations++;
  stats_.segments++;
  stats_.reserved_bytes += (int64_t)bytes;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  *out = block;
  return Status::Ok();
}

// Cuts `block` down to `size` when the rest is worth keeping; the rest goes back to the cache.
CachingAllocator::Block* CachingAllocator::split(Block* block, size_t size) {
  const size_t rest = block->size - size;
  const bool worth_it = block->small ? rest >= kMinBlock : rest > kSmallRequest;
  if (!worth_it) return block;
  Block* tail = new Block();
  tail->ptr = static_cast<char*>(block->ptr) + size;
  tail->size = rest;
  tail->small = block->small;
  tail->prev = block;
  tail->next = block->next;
  if (tail->next) tail->next->prev = tail;
  block->next = tail;
  block->size = size;
  pool(tail->small).insert(tail);
  return block;
}

void CachingAllocator::free(void* ptr) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = in_use_.find(ptr);
  if (it == in_use_.end()) return;  // not ours: ignoring beats corrupting the lists
  Block* block = it->second;
  in_use_.erase(it);
  block->in_use = false;
  stats_.allocated_bytes -= (int64_t)block->size;
  block = merge(block, block->prev);
  block = merge(block, block->next);
  pool(block->small).insert(block);
}

// Joins a free `block` with a free neighbour (either side); returns the joined block.
CachingAllocator::Block* CachingAllocator::merge(Block* block, Block* neighbour) {
  if (!neighbour || neighbour->in_use) return block;
  pool(neighbour->small).erase(neighbour);
  Block* first = neighbour == block->prev ? neighbour : block;
  Block* second = first == block ? neighbour : block;
  first->size += second->size;
  first->next = second->next;
  if (first->next) first->next->prev = first;
  delete second;
  return first;
}

size_t CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  return release_cached_locked();
}

size_t CachingAllocator::release_cached_locked() {
  size_t released = 0;
  for (FreeList* list : {&small_free_, &large_free_}) {
    for (auto it = list->begin(); it != list->end();) {
      Block* b = *it;
      if (b->prev || b->next) { ++it; continue; }  // part of a segment still in use
      device_.release(b->ptr);
      released += b->size;
      stats_.reserved_bytes -= (int64_t)b->size;
      stats_.segments--;
      it = list->erase(it);
      delete b;
    }
  }
  return released;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

static std::string human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) { bytes /= 1024; u++; }
  char buf[32];
  snprintf(buf, sizeof(buf), u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

Status CachingAllocator::out_of_memory(size_t request, size_t segment, size_t released) const {
  std::string device = "free memory unknown";
  size_t free_b = 0, total_b = 0;
  if (device_.info && device_.info(&free_b, &total_b)) {
    device = human((double)free_b) + " free of " + human((double)total_b);
  }
  return QS_ERROR(OUT_OF_MEMORY,
                  "out of device memory: asked for %zu bytes (%s, a %s device allocation) while tensors use "
                  "%lld bytes (%s); the cache gave back %s and still holds %s; the device has %s. Lower the "
                  "batch size (use gradient accumulation), the sequence length or nAhead / nPasses, or "
                  "dispose() tensors you no longer need",
                  request, human((double)request).c_str(), human((double)segment).c_str(),
                  (long long)stats_.allocated_bytes, human((double)stats_.allocated_bytes).c_str(),
                  human((double)released).c_str(), human((double)stats_.cached_bytes()).c_str(), device.c_str());
}

}  // namespace qs
