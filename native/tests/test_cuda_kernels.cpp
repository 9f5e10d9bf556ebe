// test_cuda_kernels.cpp: the f32 CUDA twins of the elementwise / normalisation / optimizer
// kernels (embedding.cu, layernorm.cu, rmsnorm.cu, rope.cu, activations.cu, adamw.cu) and of the
// dense products and conversions (gemm.cu, linear.cu, convert.cu) against their CPU twins.
//
// Each case runs the same op, with the same random inputs, on a CPU engine and on a CUDA engine
// and compares every output (forward results, saved statistics, and the gradients a backward op
// accumulates into: they start non-zero so that "+=" is checked too). Shapes include one row,
// odd channel counts (not a multiple of the 32-lane warp or the 256-thread block) and a size
// over one block. The max abs / rel error is printed per output. Tolerances are f32's: the
// twins use the same formulas but another summation order (warp trees vs SIMD lanes) and
// CUDA's expf / sincos. Embedding backward must match exactly: the device sums each table
// row in the CPU's order (see embedding.cu); so must convert, bit for bit. Skipped, with the probe's reason, without a GPU.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/convert.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#include "quietstar/ops.h"

using namespace qs;
using namespace qs_test;

namespace {

constexpr double kRtol = 1e-4, kAtol = 1e-5;  // f32, different summation order

struct Input {
  DType dtype;
  Shape shape;
  std::vector<float> f;    // F32 data
  std::vector<int32_t> i;  // I32 data
  std::vector<uint8_t> raw = {};  // data of any other dtype, as bytes
};

using qs_test::make_engine;

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Input floats(Rng& rng, Shape shape, double scale = 1.0) {
  return {DType::F32, shape, random_vector<float>(rng, numel(shape), scale), {}};
}

Input ints(Rng& rng, Shape shape, int hi) {
  Input in{DType::I32, shape, {}, std::vector<int32_t>(numel(shape))};
  for (auto& x : in.i) x = rng.below(hi);
  return in;
}

// Runs op on engine e with the inputs; returns every output downloaded as float.
// 2-byte outputs (bf16, f16) come back as their bit patterns, to be compared exactly.
Status run(Engine& e, const char* op, const std::map<std::string, Input>& inputs,
           const std::map<std::string, double>& numbers, std::map<std::string, std::vector<double>>* got,
           const std::map<std::string, std::string>& strings = {}) {
  return e.run_sync([&]() -> Status {
    OpArgs args;
    args.numbers = numbers;
    args.strings = strings;
    for (auto& [name, in] : inputs) {
      Tensor& t = args.tensors[name];
      QS_RETURN_IF_ERROR(e.empty(in.dtype, in.shape, &t));
      const void* src = in.dtype == DType::F32 ? (const void*)in.f.data()
                        : in.dtype == DType::I32 ? (const void*)in.i.data()
                                                 : (const void*)in.raw.data();
      QS_RETURN_IF_ERROR(e.upload(src, numel(in.shape) * dtype_size(in.dtype), t));
    }
    OpOutputs out;
    QS_RETURN_IF_ERROR(run_op(e, op, args, &out));
    for (auto& [name, t] : out) {
      if (!t.defined()) continue;
      int64_t n = t.numel();
      std::vector<double>& v = (*got)[name];
      v.resize(n);
      if (t.dtype() == DType::F64) {
        QS_RETURN_IF_ERROR(e.download(t, v.data(), n * 8));
      } else if (dtype_size(t.dtype()) == 2) {
        std::vector<uint16_t> h(n);
        QS_RETURN_IF_ERROR(e.download(t, h.data(), n * 2));
        for (int64_t k = 0; k < n; k++) v[k] = h[k];
      } else {
        std::vector<float> f(n);
        QS_RETURN_IF_ERROR(e.download(t, f.data(), n * 4));
        for (int64_t k = 0; k < n; k++) v[k] = f[k];
      }
    }
    return Status::Ok();
  });
}

// The op on both engines; every output of the CPU run must be matched by the CUDA run.
void compare(Engine& cpu, Engine& gpu, const char* op, const std::string& shape,
             const std::map<std::string, Input>& inputs, const std::map<std::string, double>& numbers = {},
             double rtol = kRtol, double atol = kAtol, const std::map<std::string, std::string>& strings = {}) {
  std::map<std::string, std::vector<double>> want, got;
  Status st = run(cpu, op, inputs, numbers, &want, strings);
  QS_EXPECT(st.ok(), "%s cpu: %s", op, st.to_string().c_str());
  st = run(gpu, op, inputs, numbers, &got, strings);
  QS_EXPECT(st.ok(), "%s cuda: %s", op, st.to_string().c_str());
  if (!st.ok()) return;
  for (auto& [name, w] : want) {
    auto it = got.find(name);
    QS_EXPECT(it != got.end() && it->second.size() == w.size(), "%s: output '%s' missing or resized", op,
              name.c_str());
    if (it == got.end() || it->second.size() != w.size()) continue;
    std::string label = std::string(op) + " " + shape + " " + name;
    check_close(label.c_str(), it->second.data(), w.data(), w.size(), rtol, atol);
  }
}

struct Engines {
  std::unique_ptr<Engine> cpu, gpu;
};

// Both engines, or nothing after QS_SKIP / a failure.
bool make_engines(Engines* es) {
  es->cpu = make_engine("cpu");
  es->gpu = make_engine("cuda");
  QS_EXPECT(es->cpu && es->gpu, "engines");
  return es->cpu && es->gpu;
}

#define QS_REQUIRE_GPU()                                                                      \
  if (!cuda::probe().usable) QS_SKIP("no usable CUDA device: " + cuda::probe().unavailable_reason); \
  Engines es;                                                                                 \
  if (!make_engines(&es)) return

struct RowShape {
  int64_t N, C;
};
const RowShape kRowShapes[] = {{1, 1}, {1, 33}, {7, 31}, {5, 257}, {64, 768}, {3, 1029}};

std::string str(const RowShape& s) { return "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C); }

}  // namespace

QS_TEST(cuda_embedding_matches_cpu) {
  QS_REQUIRE_GPU();
  for (auto s : kRowShapes) {
    Rng rng(s.N * 131 + s.C);
    int V = 11;  // few rows: ids repeat, so the backward's scatter sums several rows into one
    Input ids = ints(rng, {s.N}, V), table = floats(rng, {V, s.C});
    compare(*es.cpu, *es.gpu, "embedding_forward", str(s), {{"ids", ids}, {"table", table}}, {}, 0, 0);
    compare(*es.cpu, *es.gpu, "embedding_backward", str(s),
            {{"dout", floats(rng, {s.N, s.C})}, {"ids", ids}, {"dtable", floats(rng, {V, s.C})}}, {}, 0, 0);
    Input pos = ints(rng, {s.N}, 9), wpe = floats(rng, {9, s.C});
    compare(*es.cpu, *es.gpu, "position_embedding_forward", str(s),
            {{"inp", floats(rng, {s.N, s.C})}, {"pos", pos}, {"wpe", wpe}}, {}, 0, 0);
    compare(*es.cpu, *es.gpu, "position_embedding_backward", str(s),
            {{"dout", floats(rng, {s.N, s.C})}, {"pos", pos}, {"dwpe", floats(rng, {9, s.C})}}, {}, 0, 0);
  }
}

QS_TEST(cuda_layernorm_matches_cpu) {
  QS_REQUIRE_GPU();
  for (auto s : kRowShapes) {
    Rng rng(s.N * 7 + s.C);
    // an offset of 3 checks the two-pass variance
    Input inp = floats(rng, {s.N, s.C}), w = floats(rng, {s.C}), b = floats(rng, {s.C});
    for (auto& x : inp.f) x += 3.0f;
    compare(*es.cpu, *es.gpu, "layernorm_forward", str(s), {{"inp", inp}, {"weight", w}, {"bias", b}});
    // mean / rstd from the CPU forward feed both backwards, so only the backward differs
    std::map<std::string, std::vector<double>> fwd;
    Status st = run(*es.cpu, "layernorm_forward", {{"inp", inp}, {"weight", w}, {"bias", b}}, {}, &fwd);
    QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
    Input mean{DType::F32, {s.N}, std::vector<float>(fwd["mean"].begin(), fwd["mean"].end()), {}};
    Input rstd{DType::F32, {s.N}, std::vector<float>(fwd["rstd"].begin(), fwd["rstd"].end()), {}};
    compare(*es.cpu, *es.gpu, "layernorm_backward", str(s),
            {{"dout", floats(rng, {s.N, s.C})}, {"inp", inp}, {"weight", w}, {"mean", mean}, {"rstd", rstd},
             {"dinp", floats(rng, {s.N, s.C})}, {"dweight", floats(rng, {s.C})}, {"dbias", floats(rng, {s.C})}});
  }
}

QS_TEST(cuda_rmsnorm_matches_cpu) {
  QS_REQUIRE_GPU();
  for (auto s : kRowShapes) {
    Rng rng(s.N * 11 + s.C);
    Input inp = floats(rng, {s.N, s.C}), w = floats(rng, {s.C});
    compare(*es.cpu, *es.gpu, "rmsnorm_forward", str(s), {{"inp", inp}, {"weight", w}});
    std::map<std::string, std::vector<double>> fwd;
    Status st = run(*es.cpu, "rmsnorm_forward", {{"inp", inp}, {"weight", w}}, {}, &fwd);
    QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
    Input rstd{DType::F32, {s.N}, std::vector<float>(fwd["rstd"].begin(), fwd["rstd"].end()), {}};
    compare(*es.cpu, *es.gpu, "rmsnorm_backward", str(s),
            {{"dout", floats(rng, {s.N, s.C})}, {"inp", inp}, {"weight", w}, {"rstd", rstd},
             {"dinp", floats(rng, {s.N, s.C})}, {"dweight", floats(rng, {s.C})}});
  }
}

QS_TEST(cuda_rope_matches_cpu) {
  QS_REQUIRE_GPU();
  struct { int64_t N, H, d; int max_pos; } shapes[] = {{1, 1, 2, 4}, {3, 5, 6, 100}, {17, 12, 64, 4096}, {5, 3, 130, 100000}};
  for (auto s : shapes) {
    Rng rng(s.N * 3 + s.d);
    std::string shape = "N=" + std::to_string(s.N) + " H=" + std::to_string(s.H) + " d=" + std::to_string(s.d);
    Input pos = ints(rng, {s.N}, s.max_pos);
    compare(*es.cpu, *es.gpu, "rope_forward", shape, {{"inp", floats(rng, {s.N, s.H, s.d})}, {"pos", pos}});
    compare(*es.cpu, *es.gpu, "rope_backward", shape,
            {{"dout", floats(rng, {s.N, s.H, s.d})}, {"pos", pos}, {"dinp", floats(rng, {s.N, s.H, s.d})}});
  }
}

QS_TEST(cuda_activations_match_cpu) {
  QS_REQUIRE_GPU();
  for (auto s : kRowShapes) {
    Rng rng(s.N * 5 + s.C);
    Shape sh = {s.N, s.C};
    Input x = floats(rng, sh, 3.0);  // wide enough to reach both saturated ends
    for (const char* f : {"gelu", "silu", "relu"}) {
      compare(*es.cpu, *es.gpu, (std::string(f) + "_forward").c_str(), str(s), {{"inp", x}});
      compare(*es.cpu, *es.gpu, (std::string(f) + "_backward").c_str(), str(s),
              {{"inp", x}, {"dout", floats(rng, sh)}, {"dinp", floats(rng, sh)}});
    }
    Input gate = floats(rng, sh, 3.0), up = floats(rng, sh);
    compare(*es.cpu, *es.gpu, "swiglu_forward", str(s), {{"gate", gate}, {"up", up}});
    compare(*es.cpu, *es.gpu, "swiglu_backward", str(s),
            {{"gate", gate}, {"up", up}, {"dout", floats(rng, sh)}, {"dgate", floats(rng, sh)}, {"dup", floats(rng, sh)}});
    compare(*es.cpu, *es.gpu, "residual_forward", str(s), {{"a", floats(rng, sh)}, {"b", floats(rng, sh)}}, {}, 0, 0);
    compare(*es.cpu, *es.gpu, "residual_backward", str(s),
            {{"dout", floats(rng, sh)}, {"da", floats(rng, sh)}, {"db", floats(rng, sh)}}, {}, 0, 0);
  }
}

QS_TEST(cuda_optimizer_matches_cpu) {
  QS_REQUIRE_GPU();
  for (int64_t n : {1, 33, 1029, 100003}) {
    Rng rng(n * 13 + 1);
    std::string shape = "n=" + std::to_string(n);
    Input v = floats(rng, {n});
    for (auto& x : v.f) x = x * x;  // a second moment is never negative
    for (double step : {1.0, 7.0}) {
      compare(*es.cpu, *es.gpu, "adamw_update", shape,
              {{"params", floats(rng, {n})}, {"grads", floats(rng, {n})}, {"m", floats(rng, {n}, 0.1)}, {"v", v}},
              {{"lr", 1e-3}, {"step", step}, {"weightDecay", 0.01}});
    }
    compare(*es.cpu, *es.gpu, "global_norm", shape, {{"x", floats(rng, {n})}}, {}, 1e-6, 0);
    // maxNorm below the norm (the gradients are scaled) and above it (left alone)
    for (double max_norm : {0.5, 1e6}) {
      compare(*es.cpu, *es.gpu, "clip_grad_norm", shape, {{"grads", floats(rng, {n})}}, {{"maxNorm", max_norm}});
    }
  }
}

// f32 sums of up to 257 products of O(1) terms in another order: absolute error ~ K·eps
constexpr double kGemmRtol = 1e-4, kGemmAtol = 2e-4;
const int kGemmSizes[] = {1, 17, 65, 130, 257};  // 1, odd, just over one 64-tile, two tiles + 2, four + 1

QS_TEST(cuda_gemm_matches_cpu) {
  QS_REQUIRE_GPU();
  for (int s : kGemmSizes) {
    // square, and a mixed shape whose M, N, K all differ (transposes must use the right stride)
    int next = s == 257 ? 1 : s * 2 + 1;
    struct { int M, N, K; } shapes[] = {{s, s, s}, {s, next, 65}, {17, s, next}};
    for (auto sh : shapes) {
      std::string shape = "M=" + std::to_string(sh.M) + " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K);
      Rng rng(sh.M * 1009 + sh.N * 31 + sh.K);
      for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
          Input a = floats(rng, ta ? Shape{sh.K, sh.M} : Shape{sh.M, sh.K});
          Input b = floats(rng, tb ? Shape{sh.N, sh.K} : Shape{sh.K, sh.N});
          std::string label = shape + " tA=" + std::to_string(ta) + " tB=" + std::to_string(tb);
          std::map<std::string, double> flags = {{"transA", ta}, {"transB", tb}};
          // a new c
          compare(*es.cpu, *es.gpu, "gemm", label, {{"a", a}, {"b", b}}, flags, kGemmRtol, kGemmAtol);
          // c updated in place: alpha, beta
          auto ab = flags;
          ab["alpha"] = 0.5, ab["beta"] = 1.5;
          compare(*es.cpu, *es.gpu, "gemm", label + " alpha=0.5 beta=1.5",
                  {{"a", a}, {"b", b}, {"c", floats(rng, {sh.M, sh.N})}}, ab, kGemmRtol, kGemmAtol);
          // beta = 0 overwrites c: its NaNs must not reach the result
          Input c_nan = floats(rng, {sh.M, sh.N});
          for (auto& x : c_nan.f) x = std::nanf("");
          auto a2 = flags;
          a2["alpha"] = -2.0, a2["beta"] = 0.0;
          compare(*es.cpu, *es.gpu, "gemm", label + " alpha=-2 beta=0 c=NaN", {{"a", a}, {"b", b}, {"c", c_nan}}, a2,
                  kGemmRtol, kGemmAtol);
        }
      }
    }
  }
}

QS_TEST(cuda_gemm_batched_matches_cpu) {
  QS_REQUIRE_GPU();
  struct { int Bt, M, N, K; } shapes[] = {{1, 1, 1, 1}, {3, 17, 65, 130}, {2, 130, 17, 257}, {5, 65, 257, 17}};
  for (auto sh : shapes) {
    Rng rng(sh.Bt * 7 + sh.M * 3 + sh.N + sh.K);
    std::string shape = "Bt=" + std::to_string(sh.Bt) + " M=" + std::to_string(sh.M) + " N=" + std::to_string(sh.N) +
                        " K=" + std::to_string(sh.K);
    for (int ta = 0; ta < 2; ta++) {
      for (int tb = 0; tb < 2; tb++) {
        Input a = floats(rng, ta ? Shape{sh.Bt, sh.K, sh.M} : Shape{sh.Bt, sh.M, sh.K});
        Input b = floats(rng, tb ? Shape{sh.Bt, sh.N, sh.K} : Shape{sh.Bt, sh.K, sh.N});
        std::string label = shape + " tA=" + std::to_string(ta) + " tB=" + std::to_string(tb);
        compare(*es.cpu, *es.gpu, "gemm_batched", label, {{"a", a}, {"b", b}}, {{"transA", ta}, {"transB", tb}},
                kGemmRtol, kGemmAtol);
        compare(*es.cpu, *es.gpu, "gemm_batched", label + " alpha=0.5 beta=1.5",
                {{"a", a}, {"b", b}, {"c", floats(rng, {sh.Bt, sh.M, sh.N})}},
                {{"transA", ta}, {"transB", tb}, {"alpha", 0.5}, {"beta", 1.5}}, kGemmRtol, kGemmAtol);
      }
    }
  }
}

QS_TEST(cuda_linear_matches_cpu) {
  QS_REQUIRE_GPU();
  struct { int64_t M, K, N; } shapes[] = {{1, 1, 1}, {17, 65, 130}, {130, 257, 17}, {3, 768, 65}};
  for (auto sh : shapes) {
    for (const char* layout : {"out_in", "in_out"}) {
      Rng rng(sh.M * 17 + sh.K * 5 + sh.N);
      std::string shape = "M=" + std::to_string(sh.M) + " K=" + std::to_string(sh.K) + " N=" + std::to_string(sh.N) +
                          " " + layout;
      Shape wshape = std::string(layout) == "out_in" ? Shape{sh.N, sh.K} : Shape{sh.K, sh.N};
      Input inp = floats(rng, {sh.M, sh.K}), w = floats(rng, wshape), bias = floats(rng, {sh.N});
      Input dout = floats(rng, {sh.M, sh.N});
      std::map<std::string, std::string> strs = {{"layout", layout}};
      compare(*es.cpu, *es.gpu, "linear_forward", shape + " bias", {{"inp", inp}, {"weight", w}, {"bias", bias}}, {},
              kGemmRtol, kGemmAtol, strs);
      compare(*es.cpu, *es.gpu, "linear_forward", shape, {{"inp", inp}, {"weight", w}}, {}, kGemmRtol, kGemmAtol, strs);
      // gradients start non-zero (+= is checked); then without dbias (skipped, no bias layer)
      std::map<std::string, Input> bwd = {{"dout", dout}, {"inp", inp}, {"weight", w},
                                          {"dinp", floats(rng, {sh.M, sh.K})}, {"dweight", floats(rng, wshape)}};
      compare(*es.cpu, *es.gpu, "linear_backward", shape, bwd, {}, kGemmRtol, kGemmAtol, strs);
      bwd["dbias"] = floats(rng, {sh.N});
      compare(*es.cpu, *es.gpu, "linear_backward", shape + " dbias", bwd, {}, kGemmRtol, kGemmAtol, strs);
    }
  }
}

// x (n) in `to` as bytes, converted on the host by the CPU routines (inputs of the convert cases).
Input as_dtype(const Input& x, DType to) {
  int64_t n = (int64_t)x.f.size();
  Input out{to, x.shape, {}, {}, std::vector<uint8_t>(n * dtype_size(to))};
  if (to == DType::F64) {
    for (int64_t k = 0; k < n; k++) ((double*)out.raw.data())[k] = (double)x.f[k] * (1 + 1e-9);  // not f32-exact
  } else if (to == DType::BF16) {
    cpu::f32_to_bf16((uint16_t*)out.raw.data(), x.f.data(), n);
  } else {
    cpu::f32_to_f16((uint16_t*)out.raw.data(), x.f.data(), n);
  }
  return out;
}

QS_TEST(cuda_convert_matches_cpu) {
  QS_REQUIRE_GPU();
  for (int64_t n : {1, 33, 1029, 100003}) {
    Rng rng(n * 19 + 3);
    Input x = floats(rng, {n}, 4.0);
    // the edges of f16: overflow to inf, subnormals, signed zero, a bf16 rounding tie
    const float edge[] = {1e5f, -7e4f, 3e-6f, -6e-8f, 0.0f, -0.0f, 1.00390625f};
    for (size_t k = 0; k < sizeof(edge) / sizeof(edge[0]) && k < (size_t)n; k++) x.f[k] = edge[k];
    std::string shape = "n=" + std::to_string(n);
    const std::pair<DType, const char*> kinds[] = {
        {DType::F32, "f32"}, {DType::F64, "f64"}, {DType::BF16, "bf16"}, {DType::F16, "f16"}};
    for (auto [from, from_name] : kinds) {
      Input src = from == DType::F32 ? x : as_dtype(x, from);
      for (auto [to, to_name] : kinds) {
        compare(*es.cpu, *es.gpu, "convert", shape + " " + from_name + "->" + to_name, {{"x", src}}, {}, 0, 0,
                {{"dtype", to_name}});
      }
    }
  }
}

QS_TEST_MAIN()
