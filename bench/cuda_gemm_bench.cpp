/*
 * cuda_gemm_bench.cpp: throughput of the CUDA GEMM backends (native/cuda/gemm.cu) side by side:
 * our WMMA tensor-core kernel against cuBLAS for bf16, for f32 inputs with bf16 compute (the
 * mixed precision of the f32 model, "f32_bf16": our kernel rounding f32 tiles to bf16 on their way
 * into shared memory, cuBLAS with CUBLAS_COMPUTE_32F_FAST_16BF), plus our f32 SIMT kernel and our
 * TF32 kernel against cuBLAS's f32 / TF32.
 *
 * Shapes: square 2048 / 4096 / 8192 (not for f32 / TF32) and the linear layers of the models at 16384 tokens
 * (M = 16384; K x N = 768 x 2304 and 768 x 3072, 3072 x 768 for GPT-2 small, 896 x 4864 for
 * Qwen2.5-0.5B's MLP). C = A (M, K) · B (K, N), row-major, no transposes, beta = 0.
 * Each timing: one warm-up call, then best-of-3 of `iters` back-to-back calls with a stream
 * synchronisation (host clock: the calls are >= ~0.1 ms). TFLOP/s = 2 M N K / seconds.
 * One JSON object per line (bench_util.h), e.g.
 *   {"name": "cuda_gemm bf16 tensor_core M=4096 N=4096 K=4096", "value": 310.2, "unit": "TFLOP/s",
 *    "baseline": 702.5, "ratio": 0.442, "pct_peak": 31.4, "max_rel_diff": 0.0039}
 * value = ours, baseline = cuBLAS (when it loaded), ratio = ours / cuBLAS, pct_peak = percent of
 * the H100/H200 SXM dense peak (bf16 and f32_bf16 989, TF32 494, f32 67 TFLOP/s), max_rel_diff =
 * max |ours - cuBLAS| / max |cuBLAS| over C (a wrong kernel fails the run: exit status 1). cuBLAS rows carry
 * their own pct_peak. The first line names the GPU and the cuBLAS library.
 * Without a GPU (or in a build without CUDA): one line saying it skipped and why, exit 0.
 *
 * Usage: bench_cuda_gemm_bench [--quick]     (--quick: 2048 square and one model shape)
 */
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"

#if defined(QUIETSTAR_HAVE_CUDA)
#include "cpu/convert.h"
#include "cuda/kernels_nn.h"
#include "quietstar/cuda_backend.h"
#endif

#if defined(QUIETSTAR_HAVE_CUDA)

namespace {

using namespace qs;

constexpr double kPeakBf16 = 989, kPeakTf32 = 494, kPeakF32 = 67;  // TFLOP/s, H100/H200 SXM, dense

struct Shape {
  int M, N, K;
};

// A device buffer of n elements of dtype, filled with a fixed pseudo-random N(0,1)-ish pattern.
struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  ~Buffer() { cuda::device_free(p); }
};

Status make_buffer(DType dtype, int64_t n, uint64_t seed, Buffer* b) {
  std::vector<float> f((size_t)n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : f) {  // sum of 4 uniforms, centred: roughly normal, variance 1/3
    float u = 0;
    for (int i = 0; i < 4; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      u += (float)((s >> 40) * (1.0 / 16777216.0));
    }
    x = u - 2.f;
  }
  b->bytes = (size_t)n * dtype_size(dtype);
  QS_RETURN_IF_ERROR(cuda::device_malloc(&b->p, b->bytes));
  if (dtype == DType::F32) return cuda::memcpy_h2d(b->p, f.data(), b->bytes, nullptr);
  std::vector<uint16_t> h((size_t)n);
  if (dtype == DType::BF16) cpu::f32_to_bf16(h.data(), f.data(), n);
  else cpu::f32_to_f16(h.data(), f.data(), n);
  return cuda::memcpy_h2d(b->p, h.data(), b->bytes, nullptr);
}

Status download_floats(DType dtype, const Buffer& b, std::vector<float>* out) {
  const int64_t n = (int64_t)(b.bytes / dtype_size(dtype));
  out->resize((size_t)n);
  if (dtype == DType::F32) return cuda::memcpy_d2h(out->data(), b.p, b.bytes, nullptr);
  std::vector<uint16_t> h((size_t)n);
  QS_RETURN_IF_ERROR(cuda::memcpy_d2h(h.data(), b.p, b.bytes, nullptr));
  if (dtype == DType::BF16) cpu::bf16_to_f32(out->data(), h.data(), n);
  else cpu::f16_to_f32(out->data(), h.data(), n);
  return Status::Ok();
}

// Seconds per call of C = A B on `backend` (best of 3 batches of `iters` calls); < 0 on failure.
double time_gemm(const Shape& s, DType in, DType out, cuda::GemmMath math, cuda::GemmBackend backend, const Buffer& a,
                 const Buffer& b, Buffer& c, int iters, std::string* ran) {
  cuda::GemmOptions o;
  o.backend = backend;
  o.math = math;
  Status st;
  auto call = [&] {
    for (int i = 0; i < iters && st.ok(); i++)
      st = cuda::gemm_ex(false, false, s.M, s.N, s.K, 1.f, a.p, in, s.K, b.p, in, s.N, 0.f, c.p, out, s.N,
                         cuda::GemmBatch{}, o, nullptr);
    if (st.ok()) st = cuda::stream_synchronize(nullptr);
  };
  const double t = qs_bench::best_time(3, call);
  *ran = cuda::gemm_backend_name();
  if (!qs_bench::report_ok("cuda_gemm_bench", st, "gemm_ex")) return -1;
  return t / iters;
}

// max |x - y| / max |y|
double max_rel_diff(const std::vector<float>& x, const std::vector<float>& y) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); i++) {
    const double d = std::fabs((double)x[i] - (double)y[i]);
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::fabs((double)y[i]));
  }
  return diff / (scale > 0 ? scale : 1);
}

void row(const std::string& name, double tflops, double baseline, double pct_peak, double rel_diff) {
  printf("{\"name\": \"%s\", \"value\": %.4g, \"unit\": \"TFLOP/s\"", name.c_str(), tflops);
  if (baseline > 0) printf(", \"baseline\": %.4g, \"ratio\": %.3f", baseline, tflops / baseline);
  printf(", \"pct_peak\": %.1f", pct_peak);
  if (rel_diff >= 0) printf(", \"max_rel_diff\": %.3g", rel_diff);
  printf("}\n");
  fflush(stdout);
}

struct Kind {
  const char* name;  // "bf16", "tf32", "f32"
  DType in, out;
  cuda::GemmMath math;
  double peak;
  double max_diff;   // allowed max_rel_diff against cuBLAS
};

// bf16 C: a few bf16 ulps of the largest element; f32_bf16: both round the inputs to bf16, the
// same values (unless cuBLAS picks a TF32 or f32 kernel: then the bf16 rounding, ~1e-3 of max |C|);
// TF32: inputs rounded to 10 bits; f32: exact-ish.
const Kind kKinds[] = {
    {"bf16", DType::BF16, DType::BF16, cuda::GemmMath::Default, kPeakBf16, 2e-2},
    {"f32_bf16", DType::F32, DType::F32, cuda::GemmMath::Bf16, kPeakBf16, 2e-2},
    {"tf32", DType::F32, DType::F32, cuda::GemmMath::Tf32, kPeakTf32, 1e-2},
    {"f32", DType::F32, DType::F32, cuda::GemmMath::Exact, kPeakF32, 1e-4},
};

// Times `kind` at shape s on our kernels and cuBLAS; false when the results disagree.
bool bench_shape(const Kind& kind, const Shape& s, bool have_cublas, bool quick, bool* failed) {
  Buffer a, b, c_own, c_blas;
  Status st = make_buffer(kind.in, (int64_t)s.M * s.K, 1, &a);
  if (st.ok()) st = make_buffer(kind.in, (int64_t)s.K * s.N, 2, &b);
  if (st.ok()) st = make_buffer(kind.out, (int64_t)s.M * s.N, 3, &c_own);
  if (st.ok() && have_cublas) st = make_buffer(kind.out, (int64_t)s.M * s.N, 4, &c_blas);
  if (!qs_bench::report_ok("cuda_gemm_bench", st, "buffers")) return false;
  const double flops = 2.0 * s.M * s.N * s.K;
  // About 0.2 s of work per timed batch at a plausible speed for the kind (fewer with --quick).
  const double guess = kind.in == DType::BF16 || kind.math == cuda::GemmMath::Bf16 ? 300e12
                       : kind.math == cuda::GemmMath::Tf32                         ? 150e12
                                                                                   : 20e12;
  int iters = (int)std::ceil((quick ? 0.05 : 0.2) * guess / flops);
  iters = iters < 1 ? 1 : iters > 200 ? 200 : iters;

  std::string ran_own, ran_blas;
  const double t_own = time_gemm(s, kind.in, kind.out, kind.math, cuda::GemmBackend::Own, a, b, c_own, iters, &ran_own);
  if (t_own < 0) return false;
  double t_blas = -1, rel = -1;
  if (have_cublas) {
    t_blas = time_gemm(s, kind.in, kind.out, kind.math, cuda::GemmBackend::Cublas, a, b, c_blas, iters, &ran_blas);
    if (t_blas < 0) return false;
    std::vector<float> x, y;
    st = download_floats(kind.out, c_own, &x);
    if (st.ok()) st = download_floats(kind.out, c_blas, &y);
    if (!qs_bench::report_ok("cuda_gemm_bench", st, "download")) return false;
    rel = max_rel_diff(x, y);
    if (!(rel <= kind.max_diff)) {
      fprintf(stderr, "cuda_gemm_bench: %s M=%d N=%d K=%d: ours and cuBLAS differ by %.3g of max |C| (allowed %.1g)\n",
              kind.name, s.M, s.N, s.K, rel, kind.max_diff);
      *failed = true;
    }
  }
  char shape[96];
  snprintf(shape, sizeof shape, "M=%d N=%d K=%d", s.M, s.N, s.K);
  const double own_tflops = flops / t_own / 1e12;
  const double blas_tflops = t_blas > 0 ? flops / t_blas / 1e12 : -1;
  row(std::string("cuda_gemm ") + kind.name + " " + ran_own + " " + shape, own_tflops, blas_tflops,
      100 * own_tflops / kind.peak, rel);
  if (blas_tflops > 0)
    row(std::string("cuda_gemm ") + kind.name + " cublas " + shape, blas_tflops, -1, 100 * blas_tflops / kind.peak, -1);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  const cuda::RuntimeInfo& info = cuda::probe();
  if (!info.usable) {
    qs_bench::emit_skip("cuda_gemm", "no usable CUDA device: " + info.unavailable_reason);
    return 0;
  }
  if (!qs_bench::report_ok("cuda_gemm_bench", cuda::set_device(0), "set_device")) return 1;
  const cuda::BlasInfo& blas = cuda::load_blas({});
  const cuda::DeviceInfo& dev = info.devices[0];
  std::string blas_desc;
  for (char ch : blas.found ? blas.path : "not loaded: " + blas.reason) blas_desc += ch == '"' || ch == '\\' ? '\'' : ch;
  printf("{\"name\": \"cuda_gemm gpu: %s\", \"value\": %d, \"unit\": \"sm_cc\", \"cublas\": \"%s\"}\n", dev.name.c_str(),
         dev.cc_major * 10 + dev.cc_minor, blas_desc.c_str());
  fprintf(stderr, "cuda_gemm_bench: %s (sm_%d%d, %d SMs); cuBLAS: %s\n", dev.name.c_str(), dev.cc_major, dev.cc_minor,
          dev.multiprocessors, blas_desc.c_str());

  std::vector<Shape> square = {{2048, 2048, 2048}, {4096, 4096, 4096}, {8192, 8192, 8192}};
  std::vector<Shape> model = {{16384, 2304, 768}, {16384, 3072, 768}, {16384, 768, 3072}, {16384, 4864, 896}};
  if (quick) {
    square = {{2048, 2048, 2048}};
    model = {{16384, 2304, 768}};
  }
  bool failed = false;
  for (const Kind& kind : kKinds) {
    for (const auto* list : {&square, &model}) {
      for (const Shape& s : *list) {
        // f32 / TF32 at 8192³ (1.1 TFLOP per call, ~60 ms on the SIMT kernel) add time, not information.
        if ((kind.math == cuda::GemmMath::Exact || kind.math == cuda::GemmMath::Tf32) && s.M == 8192) continue;
        if (!bench_shape(kind, s, blas.found, quick, &failed)) return 1;
      }
    }
  }
  return failed ? 1 : 0;
}

#else

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  qs_bench::emit_skip("cuda_gemm", "built without CUDA");
  return 0;
}

#endif
