// test_cuda_sampling.cpp: the CUDA sampling kernels against their CPU twins (native/cuda/
// sampling.cu ~ cpu/sampling.cpp, native/cuda/thought_sampling.cu ~ cpu/thought_sampling.cpp),
// through the ops on a CUDA engine. Skipped, with the probe's reason, without a usable GPU.
//
//   - sample_tokens: the same f32 logits give the same tokens (temperature 0, 1, 0.5, suppress
//     lists, V = 1, V not a multiple of the block, many rows). The only allowed difference is a
//     near-tie: the CPU's two best scores within kSameLogitsTie (the device's double log() may
//     differ from glibc's in the last ulp); such rows are counted and printed;
//   - thought_sample: h, W random normal, so the device's logits differ from the CPU gemm's in
//     the last bits (another summation order); tokens must be equal except where the CPU's two
//     best scores (from float64 logits) are within kTie; logp and lse within 1e-4 on rows with
//     the same token. Shapes: N = 1, V not a multiple of the 64-id tile, D not a multiple of
//     the 32-deep step, a vocabulary split across many blocks; temperature 0 and 1, policy
//     temperature 3, with and without a suppress list (markers never drawn). Dyadic inputs
//     (exact logits in any order) must give identical tokens;
//   - sample_tokens with top-k / top-p (the sorted path): k = 1, k beyond V, the nucleus alone and
//     with k, integer logits (ties at the top-k boundary and in the nucleus order, broken by the
//     lower id on both sides): tokens must be equal (no near-tie allowance);
//   - errors: a NaN row and a fully suppressed row are reported by row, as on the CPU, on both
//     paths.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"
#include "cuda_test_util.h"
#include "harness.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#include "quietstar/ops.h"
#include "quietstar/rng.h"

using namespace qs_test;
namespace cpu = qs::cpu;
namespace rng = qs::rng;

constexpr double kSameLogitsTie = 1e-12;  // score gap of a near-tie when the logits are equal
constexpr double kTie = 1e-4;             // ... when the device computes its own logits (f32 dots)

// ---------------------------------------------------------------------------------------------
// helpers

// The noise keys of n rows: rows in [0, row_ids), positions in [0, max_position).
struct Keys {
  std::vector<int32_t> rows, positions;
};

static Keys random_keys(Rng& r, int n, int row_ids, int max_position) {
  Keys k{std::vector<int32_t>(n), std::vector<int32_t>(n)};
  for (int i = 0; i < n; i++) {
    k.rows[i] = r.below(row_ids);
    k.positions[i] = r.below(max_position);
  }
  return k;
}

// The optional tensors of both ops on the device: rows, positions (when `k` has them) and
// suppress (when not empty).
static qs::Status key_args(qs::Engine& e, const Keys& k, const std::vector<int32_t>& suppress, qs::OpArgs* a) {
  const int64_t n = (int64_t)k.rows.size(), s = (int64_t)suppress.size();
  if (n > 0) {
    QS_RETURN_IF_ERROR(device_tensor(e, qs::DType::I32, {n}, k.rows, &a->tensors["rows"]));
    QS_RETURN_IF_ERROR(device_tensor(e, qs::DType::I32, {n}, k.positions, &a->tensors["positions"]));
  }
  if (s > 0) QS_RETURN_IF_ERROR(device_tensor(e, qs::DType::I32, {s}, suppress, &a->tensors["suppress"]));
  return qs::Status::Ok();
}

// The gap between the best and second-best score of the allowed ids (inf with one id):
// scores s(v) = (z[v] - max)/temperature + gumbel(v), or z[v] when temperature is 0.
static double best_gap(const std::vector<double>& z, const std::vector<bool>& banned, double temperature,
                       const rng::SampleStream& stream) {
  double zmax = -INFINITY;
  for (size_t v = 0; v < z.size(); v++)
    if (!banned[v]) zmax = std::max(zmax, z[v]);
  double s1 = -INFINITY, s2 = -INFINITY;
  for (size_t v = 0; v < z.size(); v++) {
    if (banned[v] || z[v] == -INFINITY) continue;
    const double s = temperature == 0 ? z[v] : (z[v] - zmax) / temperature + stream.gumbel((uint32_t)v);
    if (s > s1) { s2 = s1; s1 = s; }
    else if (s > s2) s2 = s;
  }
  return s1 - s2;
}

// Compares device tokens with the CPU's: a mismatch passes only as a near-tie (gap < tie),
// counted in *near_ties; the others fail. `gap(b)` gives row b's best-score gap.
template <typename Gap>
static void compare_tokens(const char* label, const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                           double tie, Gap gap, int* near_ties) {
  int bad = 0;
  for (size_t b = 0; b < want.size(); b++) {
    if (got[b] == want[b]) continue;
    const double g = gap((int)b);
    if (g < tie) {
      (*near_ties)++;
      fprintf(stdout, "    %s: row %zu near-tie (gap %.3g < %.0e): cuda %d, cpu %d\n", label, b, g, tie, got[b], want[b]);
    } else if (bad++ < 5) {
      QS_EXPECT(false, "%s: row %zu token cuda %d, cpu %d (best-score gap %.3g)", label, b, got[b], want[b], g);
    }
  }
  QS_EXPECT(bad == 0, "%s: %d rows differ beyond a near-tie", label, bad);
}

// ---------------------------------------------------------------------------------------------
// sample_tokens

struct SampleCase {
  int B, V;
  double temperature;
  std::vector<int32_t> suppress;
  int top_k = 0;
  double top_p = 1.0;
  bool integer_logits = false;  // logits in {0, 1, 2, 3}: ties everywhere (top-k boundary, nucleus order)
};

QS_TEST(cuda_sample_tokens_matches_cpu_twin) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  const std::vector<SampleCase> cases = {
      {1, 1, 1.0, {}},       {3, 7, 0.0, {2}},        {8, 1000, 1.0, {}},      {8, 1000, 0.0, {5, 999}},
      {33, 4099, 0.5, {0}},  {5, 50257, 1.0, {50255, 50256}}, {64, 2053, 2.5, {1, 2, 3, 1, 2052}},
      // top-k / top-p (the sorted path): k beyond V, k = 1, nucleus alone, both, ties at the boundaries
      {8, 1000, 1.0, {}, 50},       {8, 1000, 1.0, {}, 5000},        {8, 1000, 0.7, {3}, 1},
      {16, 4099, 1.0, {}, 0, 0.9},  {16, 4099, 0.8, {0, 1}, 40, 0.5}, {5, 50257, 1.0, {50256}, 0, 0.95},
      {12, 777, 1.0, {}, 20, 1.0, true}, {12, 777, 1.0, {}, 0, 0.3, true}, {12, 777, 0.0, {}, 20, 0.3},
  };
  int near_ties = 0;
  for (const SampleCase& c : cases) {
    Rng r(c.B * 1009 + c.V);
    std::vector<float> logits = random_vector<float>(r, (size_t)c.B * c.V, 3.0);
    if (c.integer_logits)
      for (float& x : logits) x = (float)r.below(4);
    const Keys k = random_keys(r, c.B, 1000, 4096);
    cpu::SampleParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.seed = 0x1234567890ull + c.V;
    p.step = 7;
    std::vector<int32_t> want(c.B), got;
    cpu::sample_tokens<float>(want.data(), logits.data(), c.B, c.V, p, k.rows.data(), k.positions.data(),
                              c.suppress.empty() ? nullptr : c.suppress.data(), (int)c.suppress.size());
    qs::Status st = e->run_sync([&]() -> qs::Status {
      qs::OpArgs a;
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {c.B, c.V}, logits, &a.tensors["logits"]));
      QS_RETURN_IF_ERROR(key_args(*e, k, c.suppress, &a));
      a.numbers["temperature"] = p.temperature;
      if (c.top_k > 0) a.numbers["topK"] = c.top_k;
      if (c.top_p < 1) a.numbers["topP"] = c.top_p;
      a.numbers["seed"] = (double)p.seed;
      a.numbers["step"] = p.step;
      qs::OpOutputs out;
      QS_RETURN_IF_ERROR(qs::run_op(*e, "sample_tokens", a, &out));
      return fetch(*e, out["ids"], &got);
    });
    char label[96];
    snprintf(label, sizeof label, "sample_tokens B=%d V=%d T=%g S=%zu k=%d p=%g%s", c.B, c.V, c.temperature,
             c.suppress.size(), c.top_k, c.top_p, c.integer_logits ? " ties" : "");
    QS_EXPECT(st.ok(), "%s: %s", label, st.to_string().c_str());
    if (!st.ok()) continue;
    std::vector<bool> banned(c.V, false);
    for (int32_t s : c.suppress) banned[s] = true;
    // The kept set of top-k / top-p depends on no near-tie of scores: tokens must be equal.
    const double tie = c.top_k > 0 || c.top_p < 1 ? 0.0 : kSameLogitsTie;
    compare_tokens(label, got, want, tie, [&](int b) {
      std::vector<double> z(logits.begin() + (size_t)b * c.V, logits.begin() + (size_t)(b + 1) * c.V);
      return best_gap(z, banned, c.temperature, rng::SampleStream(p.seed, k.rows[b], p.step, k.positions[b]));
    }, &near_ties);
    for (int b = 0; b < c.B; b++) QS_EXPECT(!banned[got[b]], "%s: row %d drew suppressed id %d", label, b, got[b]);
    fprintf(stdout, "    %-44s tokens equal on %d rows\n", label, c.B);
  }
  fprintf(stdout, "    sample_tokens near-ties (gap < %.0e): %d\n", kSameLogitsTie, near_ties);
}

QS_TEST(cuda_sample_tokens_reports_bad_rows) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  auto run = [&](std::vector<float> logits, int B, int V, std::vector<int32_t> suppress, double top_k) {
    return e->run_sync([&]() -> qs::Status {
      qs::OpArgs a;
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {B, V}, logits, &a.tensors["logits"]));
      QS_RETURN_IF_ERROR(key_args(*e, Keys{}, suppress, &a));
      if (top_k > 0) a.numbers["topK"] = top_k;
      qs::OpOutputs out;
      return qs::run_op(*e, "sample_tokens", a, &out);
    });
  };
  qs::Status st = run({0, 1, 2, 3, NAN, 0}, 2, 3, {}, 0);
  QS_EXPECT(st.message().find("row 1 holds a NaN") != std::string::npos, "NaN row: %s", st.to_string().c_str());
  st = run({0, 1, 2, 3, 4, 5}, 2, 3, {0, 1, 2}, 0);
  QS_EXPECT(st.message().find("row 0 has no token to draw") != std::string::npos, "suppressed row: %s", st.to_string().c_str());
  st = run({0, 1, 2, 3, NAN, 0}, 2, 3, {}, 2);  // the top-k path reports the same way
  QS_EXPECT(st.message().find("row 1 holds a NaN") != std::string::npos, "NaN row, topK: %s", st.to_string().c_str());
  st = run({0, 1, 2, 3, 4, 5}, 2, 3, {0, 1, 2}, 2);
  QS_EXPECT(st.message().find("row 0 has no token to draw") != std::string::npos, "suppressed row, topK: %s",
            st.to_string().c_str());
}

// ---------------------------------------------------------------------------------------------
// thought_sample

struct ThoughtCase {
  int N, D, V;
  double temperature;
  std::vector<int32_t> suppress;
  bool dyadic;  // exact logits: tokens must match as for sample_tokens
};

QS_TEST(cuda_thought_sample_matches_cpu_twin) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  const std::vector<ThoughtCase> cases = {
      {1, 64, 1000, 1.0, {}, false},        {1, 64, 1000, 0.0, {}, false},
      {37, 48, 517, 1.0, {3, 516}, false},  {37, 48, 517, 0.0, {3, 516}, false},
      {70, 100, 4099, 1.0, {4097}, false},  {3, 256, 32003, 1.0, {32001, 32002}, false},
      {300, 32, 2500, 1.0, {}, false},      {40, 64, 3001, 1.0, {7}, true},
      {40, 64, 3001, 0.0, {7}, true},
  };
  const double tau = 3.0;
  int near_ties = 0;
  double logp_err = 0, lse_err = 0;
  for (const ThoughtCase& c : cases) {
    Rng r(c.N * 31 + c.V);
    std::vector<float> h((size_t)c.N * c.D), W((size_t)c.V * c.D);
    for (float& x : h) x = c.dyadic ? (r.below(17) - 8) / 8.0f : (float)r.normal();
    for (float& x : W) x = c.dyadic ? (r.below(33) - 16) / 16.0f : (float)(r.normal() * 0.3);
    const Keys k = random_keys(r, c.N, 64, 1024);
    cpu::ThoughtSampleParams p;
    p.temperature = c.temperature;
    p.policy_temperature = tau;
    p.seed = 977 + c.V;
    p.step = 3;
    std::vector<int32_t> want(c.N), got;
    std::vector<float> want_logp(c.N), want_lse(c.N), got_logp, got_lse;
    cpu::thought_sample<float>(want.data(), want_logp.data(), want_lse.data(), h.data(), W.data(), c.N, c.D, c.V,
                               k.rows.data(), k.positions.data(), c.suppress.empty() ? nullptr : c.suppress.data(),
                               (int)c.suppress.size(), p);
    qs::Status st = e->run_sync([&]() -> qs::Status {
      qs::OpArgs a;
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {c.N, c.D}, h, &a.tensors["h"]));
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {c.V, c.D}, W, &a.tensors["weight"]));
      QS_RETURN_IF_ERROR(key_args(*e, k, c.suppress, &a));
      a.numbers["temperature"] = p.temperature;
      a.numbers["policyTemperature"] = tau;
      a.numbers["seed"] = (double)p.seed;
      a.numbers["step"] = p.step;
      qs::OpOutputs out;
      QS_RETURN_IF_ERROR(qs::run_op(*e, "thought_sample", a, &out));
      QS_RETURN_IF_ERROR(fetch(*e, out["tokens"], &got));
      QS_RETURN_IF_ERROR(fetch(*e, out["logp"], &got_logp));
      return fetch(*e, out["lse"], &got_lse);
    });
    char label[96];
    snprintf(label, sizeof label, "thought_sample N=%d D=%d V=%d T=%g S=%zu%s", c.N, c.D, c.V, c.temperature,
             c.suppress.size(), c.dyadic ? " exact" : "");
    QS_EXPECT(st.ok(), "%s: %s", label, st.to_string().c_str());
    if (!st.ok()) continue;
    std::vector<bool> banned(c.V, false);
    for (int32_t s : c.suppress) banned[s] = true;
    compare_tokens(label, got, want, c.dyadic ? kSameLogitsTie : kTie, [&](int n) {
      std::vector<double> z(c.V);  // float64 logits of row n
      for (int v = 0; v < c.V; v++) {
        double s = 0;
        for (int d = 0; d < c.D; d++) s += (double)h[(size_t)n * c.D + d] * W[(size_t)v * c.D + d];
        z[v] = s;
      }
      return best_gap(z, banned, c.temperature, rng::SampleStream(p.seed, k.rows[n], p.step, k.positions[n]));
    }, &near_ties);
    // logp and lse on the rows with the same token (a near-tie's logp is another token's)
    std::vector<float> gl, wl;
    for (int n = 0; n < c.N; n++) {
      QS_EXPECT(got[n] >= 0 && !banned[got[n]], "%s: row %d drew %d", label, n, got[n]);
      if (got[n] != want[n]) continue;
      gl.push_back(got_logp[n]);
      wl.push_back(want_logp[n]);
    }
    for (int n = 0; n < c.N; n++) {
      lse_err = std::max(lse_err, (double)std::fabs(got_lse[n] - want_lse[n]));
    }
    for (size_t i = 0; i < gl.size(); i++) logp_err = std::max(logp_err, (double)std::fabs(gl[i] - wl[i]));
    check_close((std::string(label) + " logp").c_str(), gl.data(), wl.data(), gl.size(), 1e-5, 1e-4);
    check_close((std::string(label) + " lse").c_str(), got_lse.data(), want_lse.data(), c.N, 1e-5, 1e-4);
  }
  fprintf(stdout, "    thought_sample near-ties (gap < %.0e): %d; max |logp err| %.3e, max |lse err| %.3e\n", kTie,
          near_ties, logp_err, lse_err);
}

QS_TEST(cuda_thought_sample_reports_rows) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  auto run = [&](std::vector<float> h, std::vector<int32_t> suppress) {
    return e->run_sync([&]() -> qs::Status {
      qs::OpArgs a;
      std::vector<float> W = {1, 0, 0, 1, 1, 1};  // (3, 2)
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {2, 2}, h, &a.tensors["h"]));
      QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {3, 2}, W, &a.tensors["weight"]));
      QS_RETURN_IF_ERROR(key_args(*e, Keys{}, suppress, &a));
      qs::OpOutputs out;
      return qs::run_op(*e, "thought_sample", a, &out);
    });
  };
  qs::Status st = run({1, 2, NAN, 0}, {});
  QS_EXPECT(st.message().find("row 1 (h[1]") != std::string::npos, "NaN row: %s", st.to_string().c_str());
  st = run({1, 2, 3, 4}, {0, 1, 2});
  QS_EXPECT(st.message().find("row 0 has no token to draw") != std::string::npos, "suppressed: %s", st.to_string().c_str());
}

QS_TEST_MAIN()
