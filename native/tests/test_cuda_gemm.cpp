// test_cuda_gemm.cpp: the CUDA GEMM dispatcher (native/cuda/gemm.cu, gemm_ex) against the CPU
// gemm in double, on every backend it can run here: our own kernels forced (the f32 SIMT kernel
// for exact f32, the WMMA tensor-core kernel for TF32 / bf16 / f16 and for f32 with bf16 math)
// and cuBLAS when it loads.
//
// Inputs are random N(0, 1), rounded to the input dtype on the host first, so the double
// reference sees exactly the values the GPU multiplies. Shapes: M / N / K = 1, sizes that are
// not multiples of any tile (67 x 129 x 33), whole tiles, a large K (1029), all four transposes,
// strided batches, odd leading dimensions and batch strides (no 16-byte chunk is aligned: the
// guarded element-by-element path), aligned rows whose length is no multiple of a chunk,
// alpha != 1, beta != 0, beta = 0 over a C full of NaN (must not leak), and a bias. Elements of
// C outside the M x N product (the ldc padding and the gaps between batches) must stay untouched.
// f32 with bf16 math (the mixed precision of the f32 model) is checked twice per run: against
// the exact product with the bf16 error model, and tightly against the product of the inputs
// rounded to bf16 on the host (only the accumulation order may differ). A last case checks the
// per-thread default math (set_thread_gemm_math) and that another thread keeps its own.
// Skipped, with the probe's reason, without a GPU; the argument checks (host-only) run
// everywhere the CUDA backend is built.
#include "harness.h"

#if defined(QUIETSTAR_HAVE_CUDA)
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "cpu/convert.h"
#include "cpu/gemm.h"
#include "cuda/kernels_nn.h"
#include "quietstar/cuda_backend.h"

using namespace qs;
using namespace qs_test;

namespace {

// Host values of a dtype, kept both as floats (exactly representable in the dtype) and as the
// bytes to upload.
struct HostArray {
  DType dtype;
  std::vector<float> f;
  std::vector<uint8_t> bytes;
};

// v rounded to `dtype` (in place) and its bytes.
HostArray host_array(DType dtype, std::vector<float> v) {
  HostArray h{dtype, std::move(v), {}};
  h.bytes.resize(h.f.size() * dtype_size(dtype));
  if (dtype == DType::F32) {
    std::memcpy(h.bytes.data(), h.f.data(), h.bytes.size());
  } else {
    uint16_t* bits = (uint16_t*)h.bytes.data();
    if (dtype == DType::BF16) {
      cpu::f32_to_bf16(bits, h.f.data(), (int64_t)h.f.size());
      cpu::bf16_to_f32(h.f.data(), bits, (int64_t)h.f.size());
    } else {
      cpu::f32_to_f16(bits, h.f.data(), (int64_t)h.f.size());
      cpu::f16_to_f32(h.f.data(), bits, (int64_t)h.f.size());
    }
  }
  return h;
}

std::vector<float> to_floats(DType dtype, const std::vector<uint8_t>& bytes) {
  std::vector<float> f(bytes.size() / dtype_size(dtype));
  if (dtype == DType::F32) std::memcpy(f.data(), bytes.data(), bytes.size());
  else if (dtype == DType::BF16) cpu::bf16_to_f32(f.data(), (const uint16_t*)bytes.data(), (int64_t)f.size());
  else cpu::f16_to_f32(f.data(), (const uint16_t*)bytes.data(), (int64_t)f.size());
  return f;
}

// A device allocation freed at scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  ~DeviceBuffer() { cuda::device_free(p); }
};

Status upload(const HostArray& h, DeviceBuffer* d) {
  QS_RETURN_IF_ERROR(cuda::device_malloc(&d->p, h.bytes.size() ? h.bytes.size() : 16));
  return cuda::memcpy_h2d(d->p, h.bytes.data(), h.bytes.size(), nullptr);
}

// A usable GPU (device 0 made current), or the reason there is none.
bool have_gpu(std::string* why) {
  const cuda::RuntimeInfo& info = cuda::probe();
  if (!info.usable) {
    *why = "no usable CUDA device: " + info.unavailable_reason;
    return false;
  }
  Status st = cuda::set_device(0);
  if (!st.ok()) *why = st.to_string();
  return st.ok();
}

bool have_cublas() {
  static const bool found = [] {
    const cuda::BlasInfo& b = cuda::load_blas({});
    printf("    cuBLAS: %s\n", b.found ? b.path.c_str() : b.reason.c_str());
    return b.found;
  }();
  return found;
}

struct Shape {
  int M, N, K;
};

struct Problem {
  bool ta, tb;
  int batch;
  Shape s;
  float alpha, beta;
  bool bias;
  int pad;  // added to every leading dimension (and batch stride): 1 makes every row misaligned
};

// One dtype configuration of gemm_ex.
struct Config {
  const char* name;
  DType in, out;
  cuda::GemmMath math;
  // Error model, each term justified in tolerance():
  double u_in;   // relative rounding of the inputs by the GPU (0: it multiplies them exactly)
  double u_acc;  // relative rounding of one accumulation step
};

// Unit roundoffs: f32 2^-24, TF32 (10 stored mantissa bits) 2^-11, bf16 2^-8, f16 2^-11.
const double kU32 = std::ldexp(1.0, -24), kUTf32 = std::ldexp(1.0, -11), kUBf16 = std::ldexp(1.0, -8),
             kUF16 = std::ldexp(1.0, -11);
// Tensor-core (and cuBLAS tensor-op) accumulation is f32, but its internal adds align and
// truncate operands rather than round each step as IEEE f32: we allow 4 bits less than f32.
const double kUTensorAcc = std::ldexp(1.0, -20);

const Config kConfigs[] = {
    {"f32", DType::F32, DType::F32, cuda::GemmMath::Exact, 0, kU32},
    {"f32_tf32", DType::F32, DType::F32, cuda::GemmMath::Tf32, kUTf32, kUTensorAcc},
    {"f32_bf16", DType::F32, DType::F32, cuda::GemmMath::Bf16, kUBf16, kUTensorAcc},
    {"bf16->f32", DType::BF16, DType::F32, cuda::GemmMath::Default, 0, kUTensorAcc},
    {"bf16->bf16", DType::BF16, DType::BF16, cuda::GemmMath::Default, 0, kUTensorAcc},
    {"f16->f32", DType::F16, DType::F32, cuda::GemmMath::Default, 0, kUTensorAcc},
    {"f16->f16", DType::F16, DType::F16, cuda::GemmMath::Default, 0, kUTensorAcc},
};

double out_unit_roundoff(DType t) { return t == DType::BF16 ? kUBf16 : t == DType::F16 ? kUF16 : kU32; }

// With inputs ~ N(0, 1), one element of C has standard deviation
//   sigma = sqrt(|alpha|² K + beta² + bias²)     (bias, C also N(0, 1)).
// Errors, as multiples of sigma:
//  * input rounding (TF32, bf16 math): each product a·b is off by up to 2 u_in relative; K independent such
//    errors add up to ~ 2 u_in sqrt(K) |alpha|, i.e. ~ 2 u_in sigma. We allow 6 u_in sigma
//    (a 3-sigma tail on top of the factor 2, over ~10^5 elements).
//  * accumulation: each of the K adds rounds the partial sum (~ sqrt(k) sigma/sqrt(K)) by u_acc;
//    as a random walk that is ~ u_acc sqrt(K) sigma / sqrt(2); we allow 8 u_acc sqrt(K) sigma.
//    (cuBLAS may also split K: same bound.)
//  * the f32 epilogue (alpha·acc, + bias, + beta·C): three roundings, 4 u_f32 sigma.
//  * output rounding (bf16 / f16 C): half an ulp of the result, u_out |want| -> rtol.
//  * cuBLAS with a bias: gemm.cu first writes bias + beta C into C (cuBLAS's GEMM has no bias
//    epilogue), so with a bf16 / f16 C that sum is rounded to C's dtype once more: up to u_out
//    |bias + beta C|, whose largest value over ~10^5 elements we bound by 6 sqrt(1 + beta²).
// bf16 / f16 inputs have u_in = 0: they are rounded on the host already, and the product of two
// of them is exact in f32. So is the tight check of bf16 math against inputs rounded on the host.
void tolerance(const Config& c, const Problem& p, cuda::GemmBackend backend, double* rtol, double* atol) {
  const double sigma = std::sqrt((double)p.alpha * p.alpha * p.s.K + (double)p.beta * p.beta + (p.bias ? 1.0 : 0.0));
  const double u_out = out_unit_roundoff(c.out);
  *atol = sigma * (6 * c.u_in + 8 * c.u_acc * std::sqrt((double)p.s.K) + 4 * kU32) * (1 + u_out);
  if (backend == cuda::GemmBackend::Cublas && p.bias && c.out != DType::F32)
    *atol += u_out * 6 * std::sqrt(1.0 + (double)p.beta * p.beta);
  *rtol = 1.01 * u_out;
}

std::vector<float> normal_floats(Rng& rng, size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = (float)rng.normal();
  return v;
}

// Runs problem p in config c on `backend`, compares with the double reference; returns the
// backend that ran ("" when the call failed).
std::string run_case(const Config& c, const Problem& p, cuda::GemmBackend backend, uint64_t seed) {
  const int M = p.s.M, N = p.s.N, K = p.s.K;
  const int rows_a = p.ta ? K : M, cols_a = p.ta ? M : K, rows_b = p.tb ? N : K, cols_b = p.tb ? K : N;
  const int lda = cols_a + p.pad, ldb = cols_b + p.pad, ldc = N + p.pad;
  const int64_t stride_a = (int64_t)rows_a * lda + p.pad, stride_b = (int64_t)rows_b * ldb + p.pad,
                stride_c = (int64_t)M * ldc + p.pad;
  Rng rng(seed);
  HostArray a = host_array(c.in, normal_floats(rng, (size_t)(stride_a * p.batch)));
  HostArray b = host_array(c.in, normal_floats(rng, (size_t)(stride_b * p.batch)));
  HostArray bias = host_array(c.out, normal_floats(rng, (size_t)N));
  std::vector<float> c0f = normal_floats(rng, (size_t)(stride_c * p.batch));
  // beta = 0 must overwrite C without reading it: fill the product's elements with NaN.
  if (p.beta == 0.f) {
    for (int bt = 0; bt < p.batch; bt++)
      for (int r = 0; r < M; r++)
        for (int col = 0; col < N; col++) c0f[(size_t)(bt * stride_c + (int64_t)r * ldc + col)] = NAN;
  }
  HostArray c0 = host_array(c.out, c0f);

  DeviceBuffer da, db, dc, dbias;
  Status st = upload(a, &da);
  if (st.ok()) st = upload(b, &db);
  if (st.ok()) st = upload(c0, &dc);
  if (st.ok()) st = upload(bias, &dbias);
  cuda::GemmOptions o;
  o.backend = backend;
  o.math = c.math;
  o.bias = p.bias ? dbias.p : nullptr;
  o.bias_dtype = c.out;
  if (st.ok())
    st = cuda::gemm_ex(p.ta, p.tb, M, N, K, p.alpha, da.p, c.in, lda, db.p, c.in, ldb, p.beta, dc.p, c.out, ldc,
                       cuda::GemmBatch{p.batch, stride_a, stride_b, stride_c}, o, nullptr);
  const std::string ran = cuda::gemm_backend_name();
  std::vector<uint8_t> got_bytes(c0.bytes.size());
  if (st.ok()) st = cuda::memcpy_d2h(got_bytes.data(), dc.p, got_bytes.size(), nullptr);
  if (!st.ok()) {
    QS_EXPECT(false, "%s: %s", c.name, st.to_string().c_str());
    return "";
  }
  std::vector<float> got = to_floats(c.out, got_bytes);

  // Reference: want = alpha op(A) op(B) + bias + beta C0, in double, per batch, from the
  // operands' values av / bv; got_mn (when not null) gathers the same elements of the GPU's C.
  auto reference = [&](const std::vector<float>& av, const std::vector<float>& bv, std::vector<float>* got_mn) {
    std::vector<double> ad(av.begin(), av.end()), bd(bv.begin(), bv.end()), prod((size_t)M * N);
    std::vector<float> want_mn;
    for (int bt = 0; bt < p.batch; bt++) {
      cpu::gemm<double>(p.ta, p.tb, M, N, K, 1.0, ad.data() + bt * stride_a, lda, bd.data() + bt * stride_b, ldb, 0.0,
                        prod.data(), N);
      for (int r = 0; r < M; r++) {
        for (int col = 0; col < N; col++) {
          const size_t i = (size_t)(bt * stride_c + (int64_t)r * ldc + col);
          double w = (double)p.alpha * prod[(size_t)r * N + col];
          if (p.bias) w += bias.f[(size_t)col];
          if (p.beta != 0.f) w += (double)p.beta * c0.f[i];
          want_mn.push_back((float)w);
          if (got_mn) got_mn->push_back(got[i]);
        }
      }
    }
    return want_mn;
  };
  std::vector<float> got_mn;
  const std::vector<float> want_mn = reference(a.f, b.f, &got_mn);
  bool outside_untouched = true;
  // Everything outside the products (ldc padding, gaps between batches) keeps its bytes.
  for (int bt = 0; bt < p.batch; bt++) {
    for (int64_t i = 0; i < stride_c; i++) {
      const int64_t r = i / ldc, col = i % ldc;
      if (r < M && col < N) continue;
      const size_t e = (size_t)(bt * stride_c + i), sz = dtype_size(c.out);
      if (std::memcmp(&got_bytes[e * sz], &c0.bytes[e * sz], sz) != 0) outside_untouched = false;
    }
  }
  double rtol, atol;
  tolerance(c, p, backend, &rtol, &atol);
  char label[200];
  snprintf(label, sizeof label, "%-10s %-11s %c%c b%d %dx%dx%d a%g b%g%s pad%d", c.name, ran.c_str(), p.ta ? 'T' : 'N',
           p.tb ? 'T' : 'N', p.batch, M, N, K, p.alpha, p.beta, p.bias ? " bias" : "", p.pad);
  check_close(label, got_mn.data(), want_mn.data(), got_mn.size(), rtol, atol);
  QS_EXPECT(outside_untouched, "%s: wrote outside the M x N products", label);
  if (c.math == cuda::GemmMath::Bf16) {
    // The same product of the inputs rounded to bf16 (RNE) on the host: the GPU multiplies
    // exactly these values (their products are exact in f32), so only the f32 accumulation
    // differs: the bf16 -> f32 tolerance (u_in = 0). cuBLAS's FAST_16BF only *allows* the
    // inputs to be down-converted "to bfloat16 or TF32" (cublas_api.h), per its choice of kernel,
    // and either is closer to the exact product than to this one, so for cuBLAS the distance is
    // printed, not enforced: the error model above is its check.
    const std::vector<float> want_rounded =
        reference(host_array(DType::BF16, a.f).f, host_array(DType::BF16, b.f).f, nullptr);
    const Config tight{c.name, c.in, c.out, c.math, 0, kUTensorAcc};
    tolerance(tight, p, backend, &rtol, &atol);
    std::string tight_label = std::string(label) + " vs bf16-rounded inputs";
    if (backend == cuda::GemmBackend::Cublas) {
      double max_abs = 0;
      for (size_t i = 0; i < got_mn.size(); i++) max_abs = std::fmax(max_abs, std::fabs((double)got_mn[i] - want_rounded[i]));
      printf("    %-40s max_abs=%.3e (tight tolerance %.1e: %s; informational for cuBLAS)\n", tight_label.c_str(), max_abs,
             atol, max_abs <= atol ? "within" : "outside");
    } else {
      check_close(tight_label.c_str(), got_mn.data(), want_rounded.data(), got_mn.size(), rtol, atol);
    }
  }
  return ran;
}

// The backend each forced run must report.
const char* expected_backend(const Config& c, cuda::GemmBackend backend) {
  if (backend == cuda::GemmBackend::Cublas) return "cublas";
  return c.in == DType::F32 && c.math == cuda::GemmMath::Exact ? "simt" : "tensor_core";
}

void run_everywhere(const std::vector<Problem>& problems) {
  std::vector<cuda::GemmBackend> backends = {cuda::GemmBackend::Own};
  if (have_cublas()) backends.push_back(cuda::GemmBackend::Cublas);
  else printf("    (cuBLAS not loaded: only our kernels run)\n");
  uint64_t seed = 1;
  for (const Config& c : kConfigs) {
    for (const Problem& p : problems) {
      for (cuda::GemmBackend be : backends) {
        const std::string ran = run_case(c, p, be, seed);
        if (!ran.empty() && p.s.K > 0)
          QS_EXPECT(ran == expected_backend(c, be), "%s: ran on %s, expected %s", c.name, ran.c_str(),
                    expected_backend(c, be));
      }
      seed++;
    }
  }
}

}  // namespace

QS_TEST(cuda_gemm_shapes) {
  std::string why;
  if (!have_gpu(&why)) QS_SKIP(why);
  const Shape shapes[] = {{1, 1, 1}, {1, 67, 33}, {67, 1, 33}, {67, 129, 33}, {128, 128, 64}, {130, 70, 1029}, {5, 300, 7}};
  std::vector<Problem> problems;
  for (const Shape& s : shapes) problems.push_back({false, false, 1, s, 1.f, 0.f, false, 0});
  run_everywhere(problems);
}

QS_TEST(cuda_gemm_transposes) {
  std::string why;
  if (!have_gpu(&why)) QS_SKIP(why);
  std::vector<Problem> problems;
  for (int t = 0; t < 4; t++) {
    const bool ta = t & 1, tb = t & 2;
    problems.push_back({ta, tb, 1, {67, 129, 33}, 1.f, 0.f, false, 0});   // aligned rows where the sizes allow
    problems.push_back({ta, tb, 1, {70, 45, 150}, 1.f, 0.f, false, 1});   // odd leading dimensions
    problems.push_back({ta, tb, 1, {256, 136, 96}, 1.f, 0.f, false, 8});  // whole tiles, 16-byte aligned
    // rows 16-byte aligned (ld 72 / 152) but 70 / 150 long: a chunk straddles the end of each row
    problems.push_back({ta, tb, 1, {70, 70, 150}, 1.f, 0.f, false, 2});
  }
  run_everywhere(problems);
}

QS_TEST(cuda_gemm_batched_alpha_beta_bias) {
  std::string why;
  if (!have_gpu(&why)) QS_SKIP(why);
  std::vector<Problem> problems = {
      {false, false, 3, {67, 129, 33}, 1.f, 0.f, false, 0},
      {true, false, 4, {33, 65, 130}, -0.5f, 1.5f, false, 1},
      {false, true, 2, {150, 40, 64}, 2.f, 0.f, true, 8},
      {true, true, 3, {17, 200, 19}, 1.f, 1.f, true, 1},
      {false, true, 1, {129, 257, 1029}, 0.5f, -1.f, true, 0},
      {false, false, 2, {31, 33, 0}, 1.f, 0.5f, true, 0},  // K = 0: C = bias + beta C
  };
  run_everywhere(problems);
}

// The per-thread default math: after set_thread_gemm_math(Bf16), a call with GemmMath::Default
// runs bf16 math on this thread (bit for bit the explicit Bf16 result: our kernels are
// deterministic), while a thread that set nothing keeps the process default; Default again
// returns this thread to it. Our kernels are forced so the math alone picks the kernel (cuBLAS
// may choose differently per shape). The inputs are f32 with full mantissas, so bf16 rounding
// shows: its error against the exact product must be several times TF32's (bf16 keeps 3
// mantissa bits fewer: ~8x; we ask for > 3x) and within the bf16 error model.
QS_TEST(cuda_gemm_thread_default_math) {
  std::string why;
  if (!have_gpu(&why)) QS_SKIP(why);
  if (cuda::probe().devices[0].cc_major < 8) QS_SKIP("no tensor cores (sm_80+): TF32 and bf16 math run as exact f32");
  const int M = 96, N = 80, K = 256;
  Rng rng(77);
  HostArray a = host_array(DType::F32, normal_floats(rng, (size_t)M * K));
  HostArray b = host_array(DType::F32, normal_floats(rng, (size_t)K * N));
  DeviceBuffer da, db;
  Status st = upload(a, &da);
  if (st.ok()) st = upload(b, &db);
  QS_EXPECT(st.ok(), "upload: %s", st.to_string().c_str());
  if (!st.ok()) return;

  // C (M, N) = A (M, K) B (K, N) with `math` on our kernels; `ran` = the backend that ran.
  auto run = [&](cuda::GemmMath math, std::vector<float>* out, std::string* ran) -> Status {
    DeviceBuffer dc;
    QS_RETURN_IF_ERROR(cuda::device_malloc(&dc.p, (size_t)M * N * sizeof(float)));
    cuda::GemmOptions o;
    o.backend = cuda::GemmBackend::Own;
    o.math = math;
    QS_RETURN_IF_ERROR(cuda::gemm_ex(false, false, M, N, K, 1.f, da.p, DType::F32, K, db.p, DType::F32, N, 0.f, dc.p,
                                     DType::F32, N, cuda::GemmBatch{}, o, nullptr));
    *ran = cuda::gemm_backend_name();
    out->resize((size_t)M * N);
    return cuda::memcpy_d2h(out->data(), dc.p, out->size() * sizeof(float), nullptr);
  };
  std::vector<double> ad(a.f.begin(), a.f.end()), bd(b.f.begin(), b.f.end()), exact((size_t)M * N);
  cpu::gemm<double>(false, false, M, N, K, 1.0, ad.data(), K, bd.data(), N, 0.0, exact.data(), N);
  auto max_err = [&](const std::vector<float>& x) {
    double e = 0;
    for (size_t i = 0; i < x.size(); i++) e = std::fmax(e, std::fabs((double)x[i] - exact[i]));
    return e;
  };

  const cuda::GemmMath process_default = cuda::thread_gemm_math();
  QS_EXPECT(process_default != cuda::GemmMath::Default, "thread_gemm_math() resolves Default");
  std::vector<float> c_exact, c_tf32, c_bf16, c_default_before;
  std::string ran;
  st = run(cuda::GemmMath::Exact, &c_exact, &ran);
  if (st.ok()) st = run(cuda::GemmMath::Tf32, &c_tf32, &ran);
  if (st.ok()) st = run(cuda::GemmMath::Bf16, &c_bf16, &ran);
  if (st.ok()) st = run(process_default, &c_default_before, &ran);
  QS_EXPECT(st.ok(), "gemm: %s", st.to_string().c_str());
  if (!st.ok()) return;
  const double e_exact = max_err(c_exact), e_tf32 = max_err(c_tf32), e_bf16 = max_err(c_bf16);
  printf("    max |C - exact|: exact math %.3e, tf32 %.3e, bf16 %.3e\n", e_exact, e_tf32, e_bf16);
  QS_EXPECT(e_bf16 > 3 * e_tf32 && e_tf32 > e_exact, "bf16 math must round more than TF32, TF32 more than f32");
  // the bf16 error model of test_cuda_gemm's tolerance(): 6 u_bf16 sigma + accumulation, sigma = sqrt(K)
  QS_EXPECT(e_bf16 <= std::sqrt((double)K) * (6 * kUBf16 + 8 * kUTensorAcc * std::sqrt((double)K)),
            "bf16 math error %.3e beyond the bf16 error model", e_bf16);

  // This thread: Default follows set_thread_gemm_math.
  cuda::set_thread_gemm_math(cuda::GemmMath::Bf16);
  QS_EXPECT(cuda::thread_gemm_math() == cuda::GemmMath::Bf16, "thread_gemm_math after set(Bf16)");
  std::vector<float> c_default;
  st = run(cuda::GemmMath::Default, &c_default, &ran);
  QS_EXPECT(st.ok() && ran == "tensor_core", "Default with thread math Bf16 ran on %s: %s", ran.c_str(),
            st.to_string().c_str());
  QS_EXPECT(c_default == c_bf16, "Default with thread math Bf16 differs from explicit Bf16 (max |C - exact| %.3e)",
            max_err(c_default));

  // Another thread, which set nothing, keeps the process default (checked here, after join).
  cuda::GemmMath other_math = cuda::GemmMath::Default;
  std::vector<float> c_other;
  std::string other_ran;
  Status other_st;
  std::thread other([&] {
    other_st = cuda::set_device(0);
    other_math = cuda::thread_gemm_math();
    if (other_st.ok()) other_st = run(cuda::GemmMath::Default, &c_other, &other_ran);
  });
  other.join();
  QS_EXPECT(other_st.ok(), "other thread: %s", other_st.to_string().c_str());
  QS_EXPECT(other_math == process_default, "other thread's math %d, process default %d", (int)other_math,
            (int)process_default);
  QS_EXPECT(c_other == c_default_before, "other thread's Default product is not the process default's (ran on %s)",
            other_ran.c_str());
  if (process_default != cuda::GemmMath::Bf16) QS_EXPECT(c_other != c_bf16, "other thread ran bf16 math");

  // Default again: back to the process default.
  cuda::set_thread_gemm_math(cuda::GemmMath::Default);
  QS_EXPECT(cuda::thread_gemm_math() == process_default, "thread_gemm_math after set(Default)");
  st = run(cuda::GemmMath::Default, &c_default, &ran);
  QS_EXPECT(st.ok() && c_default == c_default_before, "Default after reset: %s", st.to_string().c_str());
}

// Host-side checks of gemm_ex: they return before any CUDA call, so they run without a GPU.
QS_TEST(cuda_gemm_ex_validates_arguments) {
  float dummy[4] = {};
  cuda::GemmBatch one;
  cuda::GemmOptions o;
  auto call = [&](DType a, DType b, DType c, int M, int N, int K, int lda, int ldb, int ldc) {
    return cuda::gemm_ex(false, false, M, N, K, 1.f, dummy, a, lda, dummy, b, ldb, 0.f, dummy, c, ldc, one, o, nullptr);
  };
  Status s1 = call(DType::F32, DType::BF16, DType::F32, 2, 2, 2, 2, 2, 2);
  QS_EXPECT(s1.code() == Code::INVALID_ARGUMENT, "mixed input dtypes: %s", s1.to_string().c_str());
  Status s2 = call(DType::F32, DType::F32, DType::BF16, 2, 2, 2, 2, 2, 2);
  QS_EXPECT(s2.code() == Code::INVALID_ARGUMENT, "f32 inputs into bf16 C: %s", s2.to_string().c_str());
  Status s3 = call(DType::I32, DType::I32, DType::I32, 2, 2, 2, 2, 2, 2);
  QS_EXPECT(s3.code() == Code::INVALID_ARGUMENT, "i32 inputs: %s", s3.to_string().c_str());
  Status s4 = call(DType::BF16, DType::BF16, DType::F32, 2, 3, 4, 3, 3, 3);
  QS_EXPECT(s4.code() == Code::INVALID_ARGUMENT, "lda < K: %s", s4.to_string().c_str());
  Status s5 = call(DType::BF16, DType::BF16, DType::F32, -1, 3, 4, 4, 3, 3);
  QS_EXPECT(s5.code() == Code::INVALID_ARGUMENT, "negative M: %s", s5.to_string().c_str());
  Status s6 = call(DType::F16, DType::F16, DType::F16, 0, 3, 4, 4, 3, 3);
  QS_EXPECT(s6.ok(), "M = 0 is an empty product: %s", s6.to_string().c_str());
  printf("    rejected: %s\n", s1.to_string().c_str());
}

#else
QS_TEST(cuda_gemm) { QS_SKIP("built without CUDA"); }
#endif

QS_TEST_MAIN()
