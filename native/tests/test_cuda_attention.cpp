// test_cuda_attention.cpp: the CUDA attention and thought-attention kernels (native/cuda/
// attention.cu, thought_attention.cu, attention_tile.cuh) against their CPU twins.
//
// Each case runs the same op with the same random inputs on a CPU engine and on a CUDA engine
// and compares every output: out and lse forward; the gradients backward (they start non-zero,
// so "+=" is checked; the backward of both engines takes the CPU forward's out and lse, so it is
// compared on its own). Shapes: T not a multiple of the 64 / 32 tiles, T = 1, GQA ratios 1, 2,
// 4, key validity with zeros and left padding (whose queries see no key: out 0, lse -inf),
// sliding windows, decoding (Tq = 1 and 4 against a long cache with invalid slots, the decode
// kernel), a chunk of queries against a longer cache, head dims 16, 32, 64, 80, 128 and odd ones
// (40, 100: zero-padded to the compiled widths); thought attention packed (sFirst 1, Sq = Sk = S)
// and incremental (Sq 1), P = 1 and P > 1, windows, invalid positions; few and many dK/dV
// blocks (the split of the dK/dV kernel over query tiles, and no split). Also: NaN in invalid
// cache slots never reaches a result on the GPU, the backward twice gives bit-identical
// results (no atomics), and d > 128 is refused with INVALID_ARGUMENT.
//
// Tolerances (f32 against f32, different summation orders and expf): outputs are convex
// combinations of O(1) values over <= ~400 keys, so the order alone moves them by a few
// hundred ulps at worst: rtol 1e-4, atol 1e-4 (forward). Gradients sum up to a few thousand
// products (dK/dV of thought attention add over every row, step and head of a document):
// rtol 1e-3, atol 2e-4. lse = -inf must match exactly (compared through a sentinel).
// Skipped, with the probe's reason, without a GPU.
#include <cmath>
#include <cstring>
#include <map>
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

constexpr double kFwdRtol = 1e-4, kFwdAtol = 1e-4;
constexpr double kBwdRtol = 1e-3, kBwdAtol = 2e-4;

struct Input {
  DType dtype;
  Shape shape;
  std::vector<float> f;      // F32
  std::vector<int32_t> i;    // I32
  std::vector<uint8_t> u;    // U8
};

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Input floats(Rng& rng, Shape shape) { return {DType::F32, shape, random_vector<float>(rng, numel(shape)), {}, {}}; }
Input ints(Shape shape, std::vector<int32_t> v) { return {DType::I32, shape, {}, std::move(v), {}}; }
Input bytes(Shape shape, std::vector<uint8_t> v) { return {DType::U8, shape, {}, {}, std::move(v)}; }

using Outputs = std::map<std::string, std::vector<float>>;
using Inputs = std::map<std::string, Input>;

// Runs op on engine e; every output downloaded as float.
Status run(Engine& e, const char* op, const Inputs& inputs, const std::map<std::string, double>& numbers,
           Outputs* got) {
  return e.run_sync([&]() -> Status {
    OpArgs args;
    args.numbers = numbers;
    for (auto& [name, in] : inputs) {
      Tensor& t = args.tensors[name];
      QS_RETURN_IF_ERROR(e.empty(in.dtype, in.shape, &t));
      const void* src = in.dtype == DType::F32 ? (const void*)in.f.data()
                        : in.dtype == DType::I32 ? (const void*)in.i.data()
                                                 : (const void*)in.u.data();
      if (t.nbytes() > 0) QS_RETURN_IF_ERROR(e.upload(src, t.nbytes(), t));
    }
    OpOutputs out;
    QS_RETURN_IF_ERROR(run_op(e, op, args, &out));
    for (auto& [name, t] : out) {
      if (!t.defined() || t.dtype() != DType::F32) continue;
      std::vector<float>& v = (*got)[name];
      v.resize(t.numel());
      if (!v.empty()) QS_RETURN_IF_ERROR(e.download(t, v.data(), v.size() * sizeof(float)));
    }
    return Status::Ok();
  });
}

// -inf (a query that sees no key) as a finite sentinel, so equal -infs compare equal and a
// finite value against -inf fails.
std::vector<double> comparable(const std::vector<float>& v) {
  std::vector<double> d(v.size());
  for (size_t k = 0; k < v.size(); k++) d[k] = std::isinf(v[k]) && v[k] < 0 ? -1e30 : (double)v[k];
  return d;
}

void compare_outputs(const std::string& label, const Outputs& got, const Outputs& want, double rtol, double atol) {
  for (auto& [name, w] : want) {
    auto it = got.find(name);
    QS_EXPECT(it != got.end() && it->second.size() == w.size(), "%s: output '%s' missing or resized", label.c_str(),
              name.c_str());
    if (it == got.end() || it->second.size() != w.size()) continue;
    std::vector<double> g = comparable(it->second), ww = comparable(w);
    check_close((label + " " + name).c_str(), g.data(), ww.data(), ww.size(), rtol, atol);
  }
}

struct Engines {
  std::unique_ptr<Engine> cpu, gpu;
};

#define QS_REQUIRE_GPU()                                                                              \
  if (!cuda::probe().usable) QS_SKIP("no usable CUDA device: " + cuda::probe().unavailable_reason); \
  Engines es;                                                                                         \
  es.cpu = make_engine("cpu");                                                                        \
  es.gpu = make_engine("cuda");                                                                       \
  QS_EXPECT(es.cpu && es.gpu, "engines");                                                             \
  if (!es.cpu || !es.gpu) return

// Forward on both engines (compared), then backward on both from the CPU forward's out / lse
// (compared), then the GPU backward again (bit-identical). fwd_op / bwd_op name the op pair;
// grads maps each gradient argument to the shape of its tensor.
void check_pair(Engines& es, const std::string& label, const char* fwd_op, const char* bwd_op, Inputs inputs,
                const std::map<std::string, double>& numbers, const std::map<std::string, Shape>& grads, Rng& rng,
                const Shape& out_shape) {
  Outputs want, got;
  Status st = run(*es.cpu, fwd_op, inputs, numbers, &want);
  QS_EXPECT(st.ok(), "%s cpu forward: %s", label.c_str(), st.to_string().c_str());
  st = run(*es.gpu, fwd_op, inputs, numbers, &got);
  QS_EXPECT(st.ok(), "%s cuda forward: %s", label.c_str(), st.to_string().c_str());
  if (!st.ok()) return;
  compare_outputs(label + " fwd", got, want, kFwdRtol, kFwdAtol);

  Inputs bwd = inputs;
  bwd["dout"] = floats(rng, out_shape);
  bwd["out"] = Input{DType::F32, out_shape, want["out"], {}, {}};
  Shape lse_shape = out_shape;
  lse_shape.pop_back();
  if (std::string(fwd_op) == "attention_forward") lse_shape = {out_shape[0], out_shape[2], out_shape[1]};
  bwd["lse"] = Input{DType::F32, lse_shape, want["lse"], {}, {}};
  for (auto& [name, shape] : grads) bwd[name] = floats(rng, shape);
  Outputs want_b, got_b, again_b;
  st = run(*es.cpu, bwd_op, bwd, numbers, &want_b);
  QS_EXPECT(st.ok(), "%s cpu backward: %s", label.c_str(), st.to_string().c_str());
  st = run(*es.gpu, bwd_op, bwd, numbers, &got_b);
  QS_EXPECT(st.ok(), "%s cuda backward: %s", label.c_str(), st.to_string().c_str());
  if (!st.ok()) return;
  compare_outputs(label + " bwd", got_b, want_b, kBwdRtol, kBwdAtol);
  st = run(*es.gpu, bwd_op, bwd, numbers, &again_b);
  QS_EXPECT(st.ok(), "%s cuda backward (again): %s", label.c_str(), st.to_string().c_str());
  for (auto& [name, v] : got_b) {
    const std::vector<float>& a = again_b[name];
    const bool same = a.size() == v.size() && (v.empty() || std::memcmp(a.data(), v.data(), v.size() * 4) == 0);
    QS_EXPECT(same, "%s: backward output '%s' differs between two identical runs (not deterministic)",
              label.c_str(), name.c_str());
  }
}

// ---------------------------------------------------------------------------------------------
// Plain attention

struct AttnCase {
  int B, Tq, Tk, H, Hkv, d, window;
  int pad;         // left padding of batch row 1 (its first `pad` keys invalid, positions shifted)
  int holes;       // one key in `holes` invalid (0: none), at random
  bool explicit_pos;
};

std::string str(const AttnCase& c) {
  char buf[160];
  snprintf(buf, sizeof buf, "B=%d Tq=%d Tk=%d H=%d Hkv=%d d=%d window=%d pad=%d holes=%d", c.B, c.Tq, c.Tk, c.H, c.Hkv,
           c.d, c.window, c.pad, c.holes);
  return buf;
}

// Inputs of one attention case; nan_in_invalid puts NaN into the K/V rows of invalid keys.
Inputs attention_inputs(const AttnCase& c, Rng& rng, bool nan_in_invalid = false) {
  Inputs in;
  in["q"] = floats(rng, {c.B, c.Tq, c.H, c.d});
  in["k"] = floats(rng, {c.B, c.Tk, c.Hkv, c.d});
  in["v"] = floats(rng, {c.B, c.Tk, c.Hkv, c.d});
  if (c.explicit_pos || c.pad || c.holes) {
    std::vector<int32_t> qp((size_t)c.B * c.Tq), kp((size_t)c.B * c.Tk);
    std::vector<uint8_t> kv((size_t)c.B * c.Tk, 1);
    for (int b = 0; b < c.B; b++) {
      const int pad = b == 1 ? c.pad : 0;
      // keys at j - pad (pad keys invalid, at negative positions); queries the last Tq of them
      for (int j = 0; j < c.Tk; j++) {
        kp[(size_t)b * c.Tk + j] = j - pad;
        if (j < pad || (c.holes && rng.below(c.holes) == 0)) kv[(size_t)b * c.Tk + j] = 0;
      }
      for (int i = 0; i < c.Tq; i++) qp[(size_t)b * c.Tq + i] = c.Tk - c.Tq + i - pad;
    }
    in["qPos"] = ints({c.B, c.Tq}, qp);
    in["kPos"] = ints({c.B, c.Tk}, kp);
    in["kValid"] = bytes({c.B, c.Tk}, kv);
    if (nan_in_invalid) {
      for (int b = 0; b < c.B; b++)
        for (int j = 0; j < c.Tk; j++) {
          if (kv[(size_t)b * c.Tk + j]) continue;
          for (const char* name : {"k", "v"})
            for (int e = 0; e < c.Hkv * c.d; e++) in[name].f[((size_t)b * c.Tk + j) * c.Hkv * c.d + e] = NAN;
        }
    }
  }
  return in;
}

void check_attention(Engines& es, const AttnCase& c, uint64_t seed) {
  Rng rng(seed);
  Inputs in = attention_inputs(c, rng);
  std::map<std::string, double> numbers = {{"window", (double)c.window}};
  check_pair(es, "attention " + str(c), "attention_forward", "attention_backward", in, numbers,
             {{"dq", {c.B, c.Tq, c.H, c.d}}, {"dk", {c.B, c.Tk, c.Hkv, c.d}}, {"dv", {c.B, c.Tk, c.Hkv, c.d}}}, rng,
             {c.B, c.Tq, c.H, c.d});
}

}  // namespace

QS_TEST(cuda_attention_full_sequences) {
  QS_REQUIRE_GPU();
  const AttnCase cases[] = {
      {2, 67, 67, 4, 4, 64, 0, 0, 0, false},     // T not a multiple of the tiles
      {1, 1, 1, 2, 1, 32, 0, 0, 0, false},       // T = 1
      {2, 130, 130, 4, 2, 80, 0, 0, 0, false},   // GQA 2, d = 80
      {1, 100, 100, 8, 2, 128, 0, 0, 0, false},  // GQA 4, d = 128
      {2, 75, 75, 2, 2, 16, 0, 9, 0, true},      // left padding (its queries see nothing), d = 16
      {2, 150, 150, 4, 2, 64, 17, 0, 5, true},   // sliding window, random invalid keys
      {2, 33, 33, 3, 3, 40, 0, 4, 3, true},      // odd d (zero-padded to 64), holes and padding
      {1, 70, 70, 2, 1, 100, 5, 0, 0, false},    // d = 100 (padded to 128), GQA 2, small window
      {2, 20, 200, 4, 4, 32, 0, 0, 4, true},     // a chunk of 20 queries against a longer cache
      {1, 9, 513, 2, 2, 128, 64, 0, 7, true},    // just above the decode kernel's Tq, window
      {4, 600, 600, 8, 8, 64, 0, 0, 3, true},    // >= 264 dK/dV blocks: no split over query tiles
  };
  uint64_t seed = 1;
  for (const AttnCase& c : cases) check_attention(es, c, seed++);
}

QS_TEST(cuda_attention_decoding) {
  QS_REQUIRE_GPU();
  // Tq <= 8: the decode kernel forward (its backward is the tile kernels').
  const AttnCase cases[] = {
      {2, 1, 300, 4, 4, 64, 0, 7, 5, true},     // one query, G = 1 (2-row blocks)
      {1, 1, 1000, 8, 2, 128, 0, 0, 9, true},   // G = 4, a long cache with holes
      {2, 4, 257, 4, 2, 80, 0, 3, 4, true},     // 4 queries, GQA 2 (8-row blocks)
      {1, 1, 700, 2, 2, 16, 100, 0, 3, true},   // sliding window over the cache
      {3, 2, 90, 6, 2, 33, 0, 50, 0, true},     // odd d (scalar loads), heavy padding
      {1, 8, 64, 8, 1, 128, 0, 0, 0, false},    // Tq = 8, G = 8: 64 rows in 8 blocks
      {2, 1, 40, 2, 2, 32, 0, 40, 0, true},     // row 1 all padding: sees nothing
  };
  uint64_t seed = 100;
  for (const AttnCase& c : cases) check_attention(es, c, seed++);
}

QS_TEST(cuda_attention_nan_in_invalid_slots) {
  QS_REQUIRE_GPU();
  // Unused cache slots may hold anything: the GPU with NaN there must equal the CPU without.
  const AttnCase cases[] = {{2, 1, 300, 4, 2, 64, 0, 7, 5, true}, {2, 70, 70, 4, 2, 64, 0, 5, 4, true}};
  for (const AttnCase& c : cases) {
    Rng rng(7), rng2(7);
    Inputs clean = attention_inputs(c, rng), dirty = attention_inputs(c, rng2, true);
    Outputs want, got;
    Status st = run(*es.cpu, "attention_forward", clean, {}, &want);
    QS_EXPECT(st.ok(), "cpu: %s", st.to_string().c_str());
    st = run(*es.gpu, "attention_forward", dirty, {}, &got);
    QS_EXPECT(st.ok(), "cuda: %s", st.to_string().c_str());
    if (st.ok()) compare_outputs("attention NaN slots " + str(c), got, want, kFwdRtol, kFwdAtol);
  }
}

QS_TEST(cuda_attention_refuses_large_head_dim) {
  QS_REQUIRE_GPU();
  Rng rng(3);
  AttnCase c{1, 16, 16, 1, 1, 160, 0, 0, 0, false};
  Outputs got;
  Status st = run(*es.gpu, "attention_forward", attention_inputs(c, rng), {}, &got);
  QS_EXPECT(!st.ok() && st.code() == Code::INVALID_ARGUMENT && st.to_string().find("d = 160") != std::string::npos,
            "d = 160 should be refused naming d, got: %s", st.to_string().c_str());
}

// ---------------------------------------------------------------------------------------------
// Thought attention

namespace {

struct ThoughtCase {
  int B, P, T, Sq, s_first, Sk, H, Hkv, d, window;
  int holes;  // one position in `holes` invalid (0: none)
};

std::string str(const ThoughtCase& c) {
  char buf[200];
  snprintf(buf, sizeof buf, "B=%d P=%d T=%d Sq=%d sFirst=%d Sk=%d H=%d Hkv=%d d=%d window=%d holes=%d", c.B, c.P, c.T,
           c.Sq, c.s_first, c.Sk, c.H, c.Hkv, c.d, c.window, c.holes);
  return buf;
}

void check_thought(Engines& es, const ThoughtCase& c, uint64_t seed) {
  Rng rng(seed);
  const int R = c.B * c.P;
  Inputs in;
  in["qChain"] = floats(rng, {R, c.Sq, c.T, c.H, c.d});
  in["kBase"] = floats(rng, {c.B, c.T, c.Hkv, c.d});
  in["vBase"] = floats(rng, {c.B, c.T, c.Hkv, c.d});
  in["kChain"] = floats(rng, {R, c.Sk, c.T, c.Hkv, c.d});
  in["vChain"] = floats(rng, {R, c.Sk, c.T, c.Hkv, c.d});
  if (c.holes) {
    std::vector<uint8_t> valid((size_t)c.B * c.T, 1);
    for (auto& x : valid) x = rng.below(c.holes) != 0;
    valid[0] = 0;  // position 0 invalid: its queries see nothing (no base key before it, no chain key)
    in["valid"] = bytes({c.B, c.T}, valid);
  }
  std::map<std::string, double> numbers = {{"sFirst", (double)c.s_first}, {"window", (double)c.window}};
  check_pair(es, "thought " + str(c), "thought_attention_forward", "thought_attention_backward", in, numbers,
             {{"dqChain", {R, c.Sq, c.T, c.H, c.d}},
              {"dkBase", {c.B, c.T, c.Hkv, c.d}},
              {"dvBase", {c.B, c.T, c.Hkv, c.d}},
              {"dkChain", {R, c.Sk, c.T, c.Hkv, c.d}},
              {"dvChain", {R, c.Sk, c.T, c.Hkv, c.d}}},
             rng, {R, c.Sq, c.T, c.H, c.d});
}

}  // namespace

QS_TEST(cuda_thought_attention_packed) {
  QS_REQUIRE_GPU();
  const ThoughtCase cases[] = {
      {2, 1, 37, 4, 1, 4, 4, 2, 32, 0, 5},     // P = 1, GQA 2, invalid positions
      {2, 2, 70, 3, 1, 3, 2, 2, 64, 9, 0},     // P = 2, window
      {1, 3, 20, 2, 1, 2, 2, 1, 128, 0, 4},    // P = 3, GQA 2, d = 128
      {1, 1, 1, 3, 1, 3, 1, 1, 16, 0, 0},      // T = 1
      {2, 2, 45, 5, 1, 5, 4, 1, 80, 6, 3},     // GQA 4, d = 80, window and holes
      {1, 2, 33, 2, 1, 2, 2, 2, 24, 0, 0},     // odd d (padded to 32)
      {8, 1, 600, 2, 1, 2, 4, 4, 32, 0, 0},    // >= 264 base dK/dV blocks: no split
  };
  uint64_t seed = 200;
  for (const ThoughtCase& c : cases) check_thought(es, c, seed++);
}

QS_TEST(cuda_thought_attention_incremental) {
  QS_REQUIRE_GPU();
  const ThoughtCase cases[] = {
      {1, 2, 50, 1, 3, 4, 4, 1, 80, 0, 0},   // step 3 of 4, P = 2, GQA 4
      {2, 1, 65, 1, 1, 6, 2, 2, 64, 0, 4},   // step 1 (only chain key 1), holes
      {2, 2, 40, 1, 6, 6, 2, 1, 32, 7, 0},   // the last step, window
  };
  uint64_t seed = 300;
  for (const ThoughtCase& c : cases) check_thought(es, c, seed++);
}

QS_TEST_MAIN()
