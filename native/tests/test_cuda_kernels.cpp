// test_cuda_kernels.cpp: the f32 CUDA twins of the elementwise / normalisation kernels
// (native/cuda/{embedding,layernorm,rmsnorm,rope,activations}.cu) against their CPU twins.
//
// Each case runs the same op, with the same random inputs, on a CPU engine and on a CUDA engine
// and compares every output (forward results, saved statistics, and the gradients a backward op
// accumulates into: they start non-zero so that "+=" is checked too). Shapes include one row,
// odd channel counts (not a multiple of the 32-lane warp or the 256-thread block) and a size
// over one block. The max abs / rel error is printed per output. Tolerances are f32's: the
// twins use the same formulas but another summation order (warp trees vs SIMD lanes) and
// CUDA's expf / sincos. Embedding backward must match exactly: the device sums each table
// row in the CPU's order (see embedding.cu). Skipped, with the probe's reason, without a GPU.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

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
Status run(Engine& e, const char* op, const std::map<std::string, Input>& inputs,
           const std::map<std::string, double>& numbers, std::map<std::string, std::vector<double>>* got) {
  return e.run_sync([&]() -> Status {
    OpArgs args;
    args.numbers = numbers;
    for (auto& [name, in] : inputs) {
      Tensor& t = args.tensors[name];
      QS_RETURN_IF_ERROR(e.empty(in.dtype, in.shape, &t));
      const void* src = in.dtype == DType::F32 ? (const void*)in.f.data() : (const void*)in.i.data();
      QS_RETURN_IF_ERROR(e.upload(src, numel(in.shape) * 4, t));
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
             double rtol = kRtol, double atol = kAtol) {
  std::map<std::string, std::vector<double>> want, got;
  Status st = run(cpu, op, inputs, numbers, &want);
  QS_EXPECT(st.ok(), "%s cpu: %s", op, st.to_string().c_str());
  st = run(gpu, op, inputs, numbers, &got);
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

QS_TEST_MAIN()
