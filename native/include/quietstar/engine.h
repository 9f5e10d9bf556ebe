// engine.h: a compute engine = one device + one compute thread + memory accounting.
//
// Every heavy operation runs on the engine's own compute thread, in submission order (a FIFO
// queue), never on the JS thread. The compute thread owns the device context: it sets the CUDA
// device and the OpenMP thread count once, creates the stream, and is the only thread that
// runs kernels, so jobs never interleave and one OpenMP pool serves all CPU kernels.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "quietstar/tensor.h"

namespace qs {

struct EngineOptions {
  std::string device = "auto";  // auto | cpu | cuda  (QUIETSTAR_DEVICE overrides auto)
  int threads = 0;              // CPU threads for kernels; 0 = all cores
  int cuda_device = 0;
  // Matrix products on a CUDA engine: "auto" (= "bf16" unless QUIETSTAR_MATMUL says otherwise)
  // | "bf16" (inputs rounded to bf16 inside the GEMMs, f32 accumulation on tensor cores; weights,
  // AdamW state and activations stay f32) | "tf32" | "f32" (exact f32, the CPU twins' math). A
  // CPU engine always computes in the parameters' own f32 / f64.
  std::string precision = "auto";
};

struct MemorySnapshot {
  int64_t host_bytes = 0, device_bytes = 0;  // held by tensors (their own sizes)
  int64_t host_peak = 0, device_peak = 0;
  int64_t host_storages = 0, device_storages = 0;
  int64_t device_free = -1, device_total = -1;  // cudaMemGetInfo; -1 without CUDA
  // The device cache (CUDA engines; 0 elsewhere): bytes held from the device (tensors' rounded
  // blocks + cached), its peak, the cached part, device allocations made and requests the cache served.
  int64_t device_reserved = 0, device_reserved_peak = 0, device_cached = 0;
  int64_t device_allocations = 0, device_cache_hits = 0;
};

class Engine {
 public:
  static Status create(const EngineOptions& options, std::unique_ptr<Engine>* out);
  ~Engine();  // drains the queue and joins the compute thread

  Device device() const { return device_; }
  int threads() const { return threads_; }
  // The matrix-product precision this engine's kernels use: "f32", "tf32" or "bf16".
  const std::string& precision() const { return precision_; }
  void* stream() const { return stream_; }  // cudaStream_t on CUDA, null on CPU
  const std::shared_ptr<MemoryStats>& stats() const { return stats_; }
  MemorySnapshot memory() const;
  // Gives the device memory cached for reuse back to the device (any thread); returns its bytes.
  size_t release_cached_memory();

  // Allocates a zero-filled tensor on this engine's device. Call on the compute thread for CUDA.
  Status empty(DType dtype, const Shape& shape, Tensor* out);
  Status empty_on(Device device, DType dtype, const Shape& shape, Tensor* out);
  // Copies between host memory and a tensor on this engine (compute thread).
  Status upload(const void* src, size_t bytes, const Tensor& dst);
  Status download(const Tensor& src, void* dst, size_t bytes);
  Status synchronize();

  // Enqueues `job` on the compute thread. Jobs run one at a time in submission order.
  void submit(std::function<void()> job);
  // Runs `job` on the compute thread and waits (for C++ callers and tests).
  Status run_sync(const std::function<Status()>& job);

  // Sticky CUDA failure: every later call must refuse with ENGINE_FAILED.
  bool failed() const;
  Status check_alive() const;

 private:
  Engine() = default;
  void thread_main();

  Device device_ = Device::CPU;
  int threads_ = 1;
  int cuda_device_ = 0;
  std::string precision_ = "f32";
  void* stream_ = nullptr;
  std::shared_ptr<MemoryStats> stats_ = std::make_shared<MemoryStats>();

  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  Status init_status_;
};

}  // namespace qs
