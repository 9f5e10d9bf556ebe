// test_caching_allocator.cpp: the device caching allocator on the CPU, over a fake device
// (malloc with a byte capacity that counts its calls): reuse, rounding, splitting and merging,
// the stats, out-of-memory with and without a cache to give back, and two threads at once.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/caching_allocator.h"
#include "harness.h"

using namespace qs;

static constexpr size_t MiB = 1 << 20;

// A device with `capacity` bytes; mallocs for real so overlapping blocks would corrupt data.
struct FakeDevice {
  size_t capacity, used = 0;
  int allocations = 0, releases = 0;
  std::mutex mutex;  // the allocator already serialises calls; this guards the test's reads
  std::vector<std::pair<void*, size_t>> live;

  explicit FakeDevice(size_t cap) : capacity(cap) {}

  DeviceMemoryCallbacks callbacks() {
    DeviceMemoryCallbacks cb;
    cb.allocate = [this](void** ptr, size_t bytes) -> Status {
      std::lock_guard<std::mutex> lock(mutex);
      if (used + bytes > capacity) return QS_ERROR(OUT_OF_MEMORY, "fake device full (%zu bytes asked)", bytes);
      *ptr = std::malloc(bytes);
      used += bytes;
      allocations++;
      live.push_back({*ptr, bytes});
      return Status::Ok();
    };
    cb.release = [this](void* ptr) {
      std::lock_guard<std::mutex> lock(mutex);
      for (size_t i = 0; i < live.size(); i++) {
        if (live[i].first != ptr) continue;
        used -= live[i].second;
        live.erase(live.begin() + i);
        std::free(ptr);
        releases++;
        return;
      }
      qs_test::fail(__FILE__, __LINE__, "release of a pointer the device never gave out");
    };
    cb.info = [this](size_t* free_b, size_t* total_b) {
      *free_b = capacity - used;
      *total_b = capacity;
      return true;
    };
    return cb;
  }
};

static void* must_allocate(CachingAllocator& a, size_t bytes) {
  void* p = nullptr;
  Status st = a.allocate(bytes, &p);
  QS_EXPECT(st.ok() && p, "allocate(%zu): %s", bytes, st.to_string().c_str());
  return p;
}

QS_TEST(sizes_round_to_512_bytes) {
  QS_EXPECT(CachingAllocator::round_size(0) == 512, "0 -> %zu", CachingAllocator::round_size(0));
  QS_EXPECT(CachingAllocator::round_size(1) == 512, "1");
  QS_EXPECT(CachingAllocator::round_size(512) == 512, "512");
  QS_EXPECT(CachingAllocator::round_size(513) == 1024, "513");
  QS_EXPECT(CachingAllocator::round_size(3 * MiB + 1) == 3 * MiB + 512, "3 MiB + 1");
}

QS_TEST(freed_blocks_are_reused_without_a_device_allocation) {
  FakeDevice dev(64 * MiB);
  CachingAllocator a(dev.callbacks());
  void* big = must_allocate(a, 5 * MiB);
  void* small = must_allocate(a, 1000);
  QS_EXPECT(dev.allocations == 2, "one segment per pool: %d", dev.allocations);
  a.free(big);
  a.free(small);
  QS_EXPECT(must_allocate(a, 5 * MiB) == big, "large block not reused");
  QS_EXPECT(must_allocate(a, 1000) == small, "small block not reused");
  AllocatorStats s = a.stats();
  QS_EXPECT(dev.allocations == 2 && s.device_allocations == 2, "device allocations %d", dev.allocations);
  QS_EXPECT(s.cache_hits == 2, "cache hits %lld", (long long)s.cache_hits);
}

QS_TEST(small_requests_share_one_segment_and_merge_back) {
  FakeDevice dev(64 * MiB);
  CachingAllocator a(dev.callbacks());
  std::vector<char*> p;
  for (int i = 0; i < 8; i++) p.push_back(static_cast<char*>(must_allocate(a, 100 * 1024)));
  QS_EXPECT(dev.allocations == 1, "8 x 100 KiB took %d segments", dev.allocations);
  for (int i = 1; i < 8; i++) QS_EXPECT(p[i] - p[i - 1] == 100 * 1024, "block %d not adjacent", i);
  for (int i = 0; i < 8; i++) std::memset(p[i], i, 100 * 1024);  // overlap would show under ASan
  for (int i = 7; i >= 0; i -= 2) a.free(p[i]);  // every other block, then the rest
  for (int i = 6; i >= 0; i -= 2) a.free(p[i]);
  // Merged back into one 2 MiB block: a 1 MiB request fits at the segment start.
  QS_EXPECT(must_allocate(a, 1 * MiB) == p[0], "freed neighbours did not merge");
  QS_EXPECT(dev.allocations == 1, "merge failed, new segment taken");
}

QS_TEST(large_blocks_split_only_when_the_rest_is_worth_keeping) {
  FakeDevice dev(64 * MiB);
  CachingAllocator a(dev.callbacks());
  void* p = must_allocate(a, 10 * MiB);
  a.free(p);
  // 3 MiB from a cached 10 MiB block: split, the 7 MiB rest serves the next request.
  char* q = static_cast<char*>(must_allocate(a, 3 * MiB));
  char* r = static_cast<char*>(must_allocate(a, 6 * MiB));
  QS_EXPECT(q == p && r == q + 3 * MiB, "split blocks not carved from the cached one");
  QS_EXPECT(dev.allocations == 1, "device allocations %d", dev.allocations);
  // The 7 MiB rest was not split again for 6 MiB: a 1 MiB remainder is not worth keeping, so
  // a large request gets at most 1 MiB more than it asked.
  QS_EXPECT(a.stats().allocated_bytes == (int64_t)(10 * MiB), "allocated %lld", (long long)a.stats().allocated_bytes);
  // Nothing cached is left: 1.5 MiB takes a new 2 MiB segment.
  must_allocate(a, MiB + MiB / 2);
  QS_EXPECT(dev.allocations == 2, "device allocations %d", dev.allocations);
  QS_EXPECT(a.stats().reserved_bytes == (int64_t)(12 * MiB), "reserved %lld", (long long)a.stats().reserved_bytes);
}

QS_TEST(stats_track_allocated_reserved_and_peak) {
  FakeDevice dev(64 * MiB);
  CachingAllocator a(dev.callbacks());
  void* x = must_allocate(a, 3 * MiB);  // a 4 MiB segment, not split: the 1 MiB rest is too small
  void* y = must_allocate(a, 700);      // 1024 bytes of a 2 MiB small segment
  AllocatorStats s = a.stats();
  QS_EXPECT(s.allocated_bytes == (int64_t)(4 * MiB + 1024), "allocated %lld", (long long)s.allocated_bytes);
  QS_EXPECT(s.reserved_bytes == (int64_t)(6 * MiB), "reserved %lld", (long long)s.reserved_bytes);
  QS_EXPECT(s.segments == 2, "segments %lld", (long long)s.segments);
  a.free(x);
  s = a.stats();
  QS_EXPECT(s.allocated_bytes == 1024, "allocated after free %lld", (long long)s.allocated_bytes);
  QS_EXPECT(s.reserved_bytes == (int64_t)(6 * MiB), "free must keep the memory reserved");
  QS_EXPECT(s.peak_allocated_bytes == (int64_t)(4 * MiB + 1024), "peak %lld", (long long)s.peak_allocated_bytes);
  QS_EXPECT(s.cached_bytes() == (int64_t)(6 * MiB - 1024), "cached %lld", (long long)s.cached_bytes());
  a.reset_peak();
  QS_EXPECT(a.stats().peak_allocated_bytes == 1024, "reset_peak");
  QS_EXPECT(a.release_cached() == 4 * MiB, "release_cached gives back the free large segment only");
  s = a.stats();
  QS_EXPECT(s.reserved_bytes == (int64_t)(2 * MiB) && s.segments == 1, "reserved %lld", (long long)s.reserved_bytes);
  QS_EXPECT(dev.used == 2 * MiB && dev.releases == 1, "device holds %zu", dev.used);
  a.free(y);
  a.free(y);        // twice: ignored
  a.free(&dev);     // never allocated: ignored
  QS_EXPECT(a.stats().allocated_bytes == 0, "allocated %lld", (long long)a.stats().allocated_bytes);
  QS_EXPECT(a.release_cached() == 2 * MiB && dev.used == 0, "device still holds %zu", dev.used);
}

QS_TEST(out_of_memory_releases_the_cache_and_retries) {
  FakeDevice dev(10 * MiB);
  CachingAllocator a(dev.callbacks());
  a.free(must_allocate(a, 6 * MiB));  // 6 MiB cached
  // 8 MiB does not fit next to the cached 6 MiB; giving the cache back makes room.
  void* p = must_allocate(a, 8 * MiB);
  AllocatorStats s = a.stats();
  QS_EXPECT(p && dev.releases == 1 && s.reserved_bytes == (int64_t)(8 * MiB), "reserved %lld, releases %d",
            (long long)s.reserved_bytes, dev.releases);
}

QS_TEST(out_of_memory_says_what_was_asked_and_what_is_in_use) {
  FakeDevice dev(10 * MiB);
  CachingAllocator a(dev.callbacks());
  must_allocate(a, 6 * MiB);
  void* p = nullptr;
  Status st = a.allocate(5 * MiB + 3, &p);
  QS_EXPECT(st.code() == Code::OUT_OF_MEMORY, "got %s", st.to_string().c_str());
  QS_EXPECT(p == nullptr, "pointer set on failure");
  const std::string& m = st.message();
  fprintf(stdout, "    %s\n", m.c_str());
  QS_EXPECT(m.find("asked for 5242883 bytes") != std::string::npos, "asked bytes missing: %s", m.c_str());
  QS_EXPECT(m.find("tensors use 6291456 bytes") != std::string::npos, "in-use bytes missing: %s", m.c_str());
  QS_EXPECT(m.find("4.00 MiB free of 10.00 MiB") != std::string::npos, "device figures missing: %s", m.c_str());
  QS_EXPECT(m.find("batch size") != std::string::npos, "no advice: %s", m.c_str());
  QS_EXPECT(a.stats().allocated_bytes == (int64_t)(6 * MiB), "a failure changed the stats");
  st = a.allocate(SIZE_MAX - 10, &p);  // would wrap when rounded
  QS_EXPECT(st.code() == Code::OUT_OF_MEMORY && dev.allocations == 1, "absurd size: %s", st.to_string().c_str());
}

QS_TEST(device_errors_other_than_oom_pass_through) {
  // A lost CUDA context must surface as ENGINE_FAILED, not be retried or dressed up as OOM.
  FakeDevice dev(10 * MiB);
  DeviceMemoryCallbacks cb = dev.callbacks();
  int calls = 0;
  cb.allocate = [&](void**, size_t) {
    calls++;
    return QS_ERROR(ENGINE_FAILED, "context lost; restart the process");
  };
  CachingAllocator a(cb);
  void* p = nullptr;
  Status st = a.allocate(100, &p);
  QS_EXPECT(st.code() == Code::ENGINE_FAILED && calls == 1, "got %s after %d calls", st.to_string().c_str(), calls);
  QS_EXPECT(st.message().find("restart the process") != std::string::npos, "%s", st.message().c_str());
}

QS_TEST(two_threads_allocate_and_free_concurrently) {
  FakeDevice dev(256 * MiB);
  CachingAllocator a(dev.callbacks());
  auto worker = [&a](uint64_t seed) {
    qs_test::Rng rng(seed);
    std::vector<void*> held;
    for (int i = 0; i < 4000; i++) {
      if (held.size() < 16 && rng.below(3) != 0) {
        size_t bytes = rng.below(4) == 0 ? (size_t)rng.below(4 * MiB) : (size_t)rng.below(64 * 1024);
        void* p = nullptr;
        if (a.allocate(bytes, &p).ok()) {
          std::memset(p, (int)seed, bytes < 64 ? bytes : 64);
          held.push_back(p);
        }
      } else if (!held.empty()) {
        size_t k = (size_t)rng.below((int)held.size());
        a.free(held[k]);
        held.erase(held.begin() + k);
      }
    }
    for (void* p : held) a.free(p);
  };
  std::thread t1(worker, 1), t2(worker, 2);
  t1.join();
  t2.join();
  AllocatorStats s = a.stats();
  QS_EXPECT(s.allocated_bytes == 0, "allocated %lld after every free", (long long)s.allocated_bytes);
  QS_EXPECT(s.reserved_bytes == (int64_t)dev.used, "reserved %lld but the device holds %zu",
            (long long)s.reserved_bytes, dev.used);
  QS_EXPECT(s.cache_hits > 0, "no cache hits in 8000 operations");
  a.release_cached();
  QS_EXPECT(dev.used == 0 && a.stats().segments == 0, "segments left after release_cached: %lld",
            (long long)a.stats().segments);
}

QS_TEST(destructor_gives_every_segment_back) {
  FakeDevice dev(64 * MiB);
  {
    CachingAllocator a(dev.callbacks());
    must_allocate(a, 100);
    void* p = must_allocate(a, 3 * MiB);
    must_allocate(a, 200);
    a.free(p);
  }
  QS_EXPECT(dev.used == 0 && dev.live.empty(), "device still holds %zu bytes", dev.used);
}

QS_TEST_MAIN()
