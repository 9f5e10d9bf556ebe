// engine.cpp: device choice, the compute thread and its FIFO queue (see engine.h).
#include "quietstar/engine.h"

#include <cstdlib>
#include <cstring>
#include <future>

#include "core/caching_allocator.h"
#include "cpu/parallel.h"
#include "quietstar/cuda_backend.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#endif

namespace qs {

static Status choose_device(const EngineOptions& options, Device* device) {
  std::string requested = options.device;
  // QUIETSTAR_DEVICE decides only where the caller left the choice to us ("auto").
  const char* env = std::getenv("QUIETSTAR_DEVICE");
  if (requested == "auto" && env && *env) requested = env;
  if (requested == "cpu") { *device = Device::CPU; return Status::Ok(); }
  if (requested != "cuda" && requested != "auto") {
    return QS_ERROR(INVALID_ARGUMENT, "device must be 'auto', 'cpu' or 'cuda' (got '%s'%s)", requested.c_str(),
                    env && requested == env ? " from QUIETSTAR_DEVICE" : "");
  }
  const cuda::RuntimeInfo& info = cuda::probe();
  if (info.usable) { *device = Device::CUDA; return Status::Ok(); }
  if (requested == "cuda") {
    return QS_ERROR(UNAVAILABLE, "device 'cuda' was requested but cannot be used: %s",
                    info.unavailable_reason.c_str());
  }
  *device = Device::CPU;
  return Status::Ok();
}

// One cache per engine, not per device: an engine runs everything on its one stream, so a
// block freed by one job and reused by the next is ordered by the stream alone. A cache shared
// by two engines (two streams) would need events to know when a freed block is idle.
static std::shared_ptr<CachingAllocator> make_device_cache() {
  DeviceMemoryCallbacks device;
  device.allocate = cuda::device_malloc;
  device.release = cuda::device_free;
  device.info = [](size_t* free_b, size_t* total_b) { return cuda::mem_get_info(free_b, total_b).ok(); };
  return std::make_shared<CachingAllocator>(std::move(device));
}

// The matrix-product precision: CPU engines compute in f32 / f64 whatever is asked; on CUDA
// "auto" is QUIETSTAR_MATMUL (f32 | tf32 | bf16) when set, else bf16.
static Status choose_precision(const EngineOptions& options, Device device, std::string* out) {
  std::string p = options.precision;
  QS_CHECK_ARG(p == "auto" || p == "f32" || p == "tf32" || p == "bf16",
               "precision must be 'auto', 'f32', 'tf32' or 'bf16' (got '%s')", p.c_str());
  if (device != Device::CUDA) {
    *out = "f32";
    return Status::Ok();
  }
  if (p == "auto") {
    const char* env = std::getenv("QUIETSTAR_MATMUL");
    p = env && *env ? env : "bf16";
    QS_CHECK_ARG(p == "f32" || p == "tf32" || p == "bf16", "QUIETSTAR_MATMUL must be f32, tf32 or bf16 (got '%s')",
                 p.c_str());
  }
  *out = p;
  return Status::Ok();
}

Status Engine::create(const EngineOptions& options, std::unique_ptr<Engine>* out) {
  QS_CHECK_ARG(options.threads >= 0, "threads must be >= 0 (got %d)", options.threads);
  std::unique_ptr<Engine> e(new Engine());
  QS_RETURN_IF_ERROR(choose_device(options, &e->device_));
  e->threads_ = options.threads > 0 ? options.threads : cpu::hardware_threads();
  e->cuda_device_ = options.cuda_device;
  QS_RETURN_IF_ERROR(choose_precision(options, e->device_, &e->precision_));
  e->thread_ = std::thread([raw = e.get()] { raw->thread_main(); });
  // Initialise the device context on the compute thread itself (CUDA's current device is per
  // host thread) and report its failure from create().
  Status init = e->run_sync([raw = e.get()]() -> Status {
    cpu::set_num_threads(raw->threads_);
    if (raw->device_ == Device::CUDA) {
      QS_RETURN_IF_ERROR(cuda::set_device(raw->cuda_device_));
      QS_RETURN_IF_ERROR(cuda::stream_create(&raw->stream_));
#ifdef QUIETSTAR_HAVE_CUDA
      // every GEMM this thread runs takes the engine's precision (kernels_nn.h)
      cuda::set_thread_gemm_math(raw->precision_ == "bf16"   ? cuda::GemmMath::Bf16
                                 : raw->precision_ == "tf32" ? cuda::GemmMath::Tf32
                                                             : cuda::GemmMath::Exact);
#endif
      raw->stats_->device_cache = make_device_cache();
    }
    return Status::Ok();
  });
  if (!init.ok()) return init;  // ~Engine joins the thread
  *out = std::move(e);
  return Status::Ok();
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::thread_main() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping and drained
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    try {
      job();  // jobs report their own errors; this only guards against a stray exception
    } catch (...) {
    }
  }
  if (stream_) {
    cuda::stream_destroy(stream_);
    stream_ = nullptr;
  }
}

void Engine::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

Status Engine::run_sync(const std::function<Status()>& job) {
  if (std::this_thread::get_id() == thread_.get_id()) return job();  // already on it
  std::promise<Status> done;
  auto result = done.get_future();
  submit([&] {
    // Kernels allocate scratch with std::vector: a failed allocation must become a Status,
    // never an exception escaping the compute thread (std::terminate would kill Node).
    try {
      done.set_value(job());
    } catch (const std::bad_alloc&) {
      done.set_value(QS_ERROR(OUT_OF_MEMORY, "host allocation failed (std::bad_alloc)"));
    } catch (const std::exception& e) {
      done.set_value(QS_ERROR(INTERNAL, "unexpected C++ exception: %s", e.what()));
    }
  });
  return result.get();
}

bool Engine::failed() const { return device_ == Device::CUDA && cuda::context_lost(); }

Status Engine::check_alive() const {
  if (failed()) {
    return QS_ERROR(ENGINE_FAILED,
                    "the CUDA context was lost after an earlier error; this engine cannot continue, restart the process");
  }
  return Status::Ok();
}

Status Engine::empty(DType dtype, const Shape& shape, Tensor* out) { return empty_on(device_, dtype, shape, out); }

Status Engine::empty_on(Device device, DType dtype, const Shape& shape, Tensor* out) {
  for (size_t i = 0; i < shape.size(); i++) {
    QS_CHECK_ARG(shape[i] >= 0, "shape %s has a negative dimension at index %zu", shape_string(shape).c_str(), i);
  }
  // A lost context must say "restart", not fail later in a memset on a cached block.
  if (device == Device::CUDA) QS_RETURN_IF_ERROR(check_alive());
  std::shared_ptr<Storage> storage;
  QS_RETURN_IF_ERROR(Storage::allocate(device, (size_t)shape_numel(shape) * dtype_size(dtype), stats_, &storage));
  *out = Tensor(std::move(storage), 0, dtype, shape);
  return Status::Ok();
}

Status Engine::upload(const void* src, size_t bytes, const Tensor& dst) {
  QS_CHECK_ARG(bytes == dst.nbytes(), "upload of %zu bytes into %s (%zu bytes)", bytes, dst.describe().c_str(), dst.nbytes());
  if (dst.device() == Device::CPU) {
    std::memcpy(dst.raw(), src, bytes);
    return Status::Ok();
  }
  return cuda::memcpy_h2d(dst.raw(), src, bytes, stream_);
}

Status Engine::download(const Tensor& src, void* dst, size_t bytes) {
  QS_CHECK_ARG(bytes == src.nbytes(), "download of %s (%zu bytes) into %zu bytes", src.describe().c_str(), src.nbytes(), bytes);
  if (src.device() == Device::CPU) {
    std::memcpy(dst, src.raw(), bytes);
    return Status::Ok();
  }
  return cuda::memcpy_d2h(dst, src.raw(), bytes, stream_);
}

Status Engine::synchronize() {
  if (device_ == Device::CUDA) return cuda::stream_synchronize(stream_);
  return Status::Ok();
}

MemorySnapshot Engine::memory() const {
  MemorySnapshot m;
  m.host_bytes = stats_->host_bytes.load();
  m.device_bytes = stats_->device_bytes.load();
  m.host_peak = stats_->host_peak.load();
  m.device_peak = stats_->device_peak.load();
  m.host_storages = stats_->host_storages.load();
  m.device_storages = stats_->device_storages.load();
  if (const auto& cache = stats_->device_cache) {
    AllocatorStats c = cache->stats();
    m.device_reserved = c.reserved_bytes;
    m.device_reserved_peak = c.peak_reserved_bytes;
    m.device_cached = c.cached_bytes();
    m.device_allocations = c.device_allocations;
    m.device_cache_hits = c.cache_hits;
  }
  if (device_ == Device::CUDA) {
    size_t free_b = 0, total_b = 0;
    if (cuda::mem_get_info(&free_b, &total_b).ok()) {
      m.device_free = (int64_t)free_b;
      m.device_total = (int64_t)total_b;
    }
  }
  return m;
}

size_t Engine::release_cached_memory() {
  return stats_->device_cache ? stats_->device_cache->release_cached() : 0;
}

}  // namespace qs
