// test_sampling.cpp: the counter-based RNG (quietstar/rng.h) and next-token sampling
// (cpu/sampling.h, op sample_tokens).
//
//   - Philox4x32-10 against Random123's known-answer vectors; uniforms strictly inside (0, 1);
//   - greedy: argmax, first index on ties, suppressed ids and -inf skipped, f32 and f64;
//   - distributions: frequencies of many draws (one stream per row) against softmax(x / T),
//     plain, top-k and top-p, by a chi-square statistic with a loose bound and a per-token
//     5-sigma bound; supports: top-k / nucleus members only, and every member drawn, with a
//     nucleus large enough to need the growing-prefix selection;
//   - determinism: same call twice, 1/2/3 threads, a row alone vs inside a batch (rows ids),
//     f32 vs f64 of the same values; different steps/seeds/positions give different draws;
//   - the op's validation errors (names the argument or the row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "cpu/sampling.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar/engine.h"
#include "quietstar/ops.h"
#include "quietstar/rng.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;
namespace rng = qs::rng;

// ---------------------------------------------------------------------------------------------
// helpers

// `n` rows of the same logits sampled in one call, each row its own stream (rows 0..n-1).
static VecI sample_rows(const VecD& logits, int n, const cpu::SampleParams& p, const VecI& suppress = {}) {
  int V = (int)logits.size();
  VecD all((size_t)n * V);
  for (int b = 0; b < n; b++) std::copy(logits.begin(), logits.end(), all.begin() + (size_t)b * V);
  VecI out(n);
  int failed = cpu::sample_tokens<double>(out.data(), all.data(), n, V, p, nullptr, nullptr,
                                          suppress.empty() ? nullptr : suppress.data(), (int)suppress.size());
  QS_EXPECT(failed == 0, "%d rows failed", failed);
  return out;
}

// Reference probabilities: softmax(x / T) restricted to `keep` (renormalised).
static VecD softmax_over(const VecD& x, double T, const std::set<int>& keep) {
  VecD p(x.size(), 0.0);
  double m = -INFINITY;
  for (int v : keep) m = std::max(m, x[v] / T);
  double s = 0;
  for (int v : keep) s += (p[v] = std::exp(x[v] / T - m));
  for (double& q : p) q /= s;
  return p;
}

// Reference top-k and nucleus by a full sort (value desc, id asc).
static std::vector<int> ranked(const VecD& x) {
  std::vector<int> idx(x.size());
  for (size_t i = 0; i < idx.size(); i++) idx[i] = (int)i;
  std::sort(idx.begin(), idx.end(), [&](int a, int b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  return idx;
}
static std::set<int> ref_kept(const VecD& x, double T, int top_k, double top_p) {
  std::vector<int> r = ranked(x);
  if (top_k > 0 && top_k < (int)r.size()) r.resize(top_k);
  std::set<int> all(r.begin(), r.end());
  if (top_p >= 1) return all;
  VecD p = softmax_over(x, T, all);
  std::set<int> keep;
  double before = 0;
  for (int v : r) {
    if (before >= top_p) break;
    keep.insert(v);
    before += p[v];
  }
  return keep;
}

static cpu::SampleParams params(double T, int top_k = 0, double top_p = 1.0, uint64_t seed = 1234, uint32_t step = 0) {
  cpu::SampleParams p;
  p.temperature = T;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.step = step;
  return p;
}

// ---------------------------------------------------------------------------------------------
// RNG

QS_TEST(philox_matches_random123_known_answers) {
  struct Kat { uint32_t ctr[4], key[2], want[4]; };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    rng::U32x4 c{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}};
    rng::U32x4 r = rng::philox4x32_10(c, k.key[0], k.key[1]);
    QS_EXPECT(std::memcmp(r.v, k.want, sizeof k.want) == 0, "philox(%08x..., key %08x %08x) = %08x %08x %08x %08x", k.ctr[0],
              k.key[0], k.key[1], r.v[0], r.v[1], r.v[2], r.v[3]);
  }
  QS_EXPECT(rng::uniform_open01(0) > 0 && rng::uniform_open01(0xffffffffu) < 1, "uniform not inside (0, 1)");
  QS_EXPECT(std::isfinite(rng::gumbel(rng::uniform_open01(0))) && std::isfinite(rng::gumbel(rng::uniform_open01(0xffffffffu))),
            "gumbel not finite at the extremes");
  // The stream's layout: counter {token/4, position, step, row}, key = seed halves.
  rng::SampleStream s(0x0000000500000007ull, 3, 2, 1);
  rng::U32x4 want = rng::philox4x32_10(rng::U32x4{{2, 1, 2, 3}}, 7, 5);
  QS_EXPECT(s.bits(9) == want.v[1], "stream bits(9) does not follow the documented counter layout");
}

// ---------------------------------------------------------------------------------------------
// greedy

QS_TEST(greedy_is_first_argmax_and_skips_suppressed) {
  VecD x = {0.5, 3.0, -1.0, 3.0, 2.0, -INFINITY};
  VecI out = sample_rows(x, 1, params(0));
  QS_EXPECT(out[0] == 1, "argmax with a tie: got %d, want 1", out[0]);
  out = sample_rows(x, 1, params(0), {1});
  QS_EXPECT(out[0] == 3, "suppress 1: got %d, want 3", out[0]);
  out = sample_rows(x, 1, params(0), {1, 3});
  QS_EXPECT(out[0] == 4, "suppress 1,3: got %d, want 4", out[0]);
  // greedy ignores top-k/top-p (the argmax is always kept) and the seed
  out = sample_rows(x, 1, params(0, 1, 0.1, 99, 7));
  QS_EXPECT(out[0] == 1, "greedy with filters: got %d", out[0]);
  // f32 and a larger random row
  Rng r(5);
  VecD big = random_vector<double>(r, 5000, 3.0);
  big[4321] = 100;
  VecF bigf = to_f32(big);
  int32_t id = -7;
  cpu::sample_tokens<float>(&id, bigf.data(), 1, 5000, params(0), nullptr, nullptr, nullptr, 0);
  QS_EXPECT(id == 4321, "f32 greedy: got %d", id);
}

// ---------------------------------------------------------------------------------------------
// distributions

QS_TEST(sampling_frequencies_follow_softmax) {
  VecD x = {1.0, 0.2, -0.5, 2.0, 0.0, -3.0, 1.5, -INFINITY};
  const int n = 40000;
  for (double T : {1.0, 0.7, 2.5}) {
    std::set<int> all = {0, 1, 2, 3, 4, 5, 6};
    char label[64];
    snprintf(label, sizeof label, "plain T=%.1f", T);
    check_frequencies(label, sample_rows(x, n, params(T)), softmax_over(x, T, all));
  }
  // top-k 3 at T 0.8: {3, 6, 0} renormalised
  check_frequencies("top-k 3 T=0.8", sample_rows(x, n, params(0.8, 3)), softmax_over(x, 0.8, ref_kept(x, 0.8, 3, 1)));
  // top-p 0.8 at T 1.2
  std::set<int> nuc = ref_kept(x, 1.2, 0, 0.8);
  fprintf(stdout, "    nucleus p=0.8 T=1.2 has %zu tokens\n", nuc.size());
  QS_EXPECT(nuc.size() >= 3 && nuc.size() < 7, "test nucleus size %zu not informative", nuc.size());
  check_frequencies("top-p 0.8 T=1.2", sample_rows(x, n, params(1.2, 0, 0.8)), softmax_over(x, 1.2, nuc));
  // top-k then top-p
  std::set<int> both = ref_kept(x, 1.0, 4, 0.7);
  check_frequencies("top-k 4 + top-p 0.7", sample_rows(x, n, params(1.0, 4, 0.7)), softmax_over(x, 1.0, both));
  // suppression renormalises over the rest
  std::set<int> rest = {0, 1, 2, 4, 5, 6};
  check_frequencies("suppress {3}", sample_rows(x, n, params(1.0), {3}), softmax_over(x, 1.0, rest));
  // a different step is another independent sample
  cpu::SampleParams p = params(1.0);
  p.step = 17;
  check_frequencies("plain T=1 step 17", sample_rows(x, n, p), softmax_over(x, 1.0, {0, 1, 2, 3, 4, 5, 6}));
}

QS_TEST(top_k_and_top_p_supports_on_a_large_vocabulary) {
  const int V = 3000;
  Rng r(11);
  // Flat-ish logits so that the nucleus is large (needs the prefix to grow past 64 and 256).
  VecD x = random_vector<double>(r, V, 0.3);
  x[17] = x[2999] = 2.0;  // a tie at the top: top-k 1 keeps the lower id
  const int n = 30000;
  {
    VecI d = sample_rows(x, 200, params(1.0, 1));
    bool all17 = std::all_of(d.begin(), d.end(), [](int v) { return v == 17; });
    QS_EXPECT(all17, "top-k 1 must always give the first maximum (17)");
    VecD flat(10, 0.25);
    VecI f = sample_rows(flat, 2000, params(1.0, 3));
    std::set<int> got(f.begin(), f.end());
    QS_EXPECT(got == std::set<int>({0, 1, 2}), "top-k 3 of equal logits must keep ids 0, 1, 2 (got %zu ids)", got.size());
  }
  for (int k : {10, 100}) {
    std::set<int> want = ref_kept(x, 1.0, k, 1.0);
    VecI d = sample_rows(x, n, params(1.0, k));
    std::set<int> got(d.begin(), d.end());
    QS_EXPECT(got == want, "top-k %d: support has %zu tokens, want %zu (and equal)", k, got.size(), want.size());
  }
  for (double tp : {0.05, 0.12, 0.25}) {
    std::set<int> want = ref_kept(x, 1.0, 0, tp);
    VecI d = sample_rows(x, n, params(1.0, 0, tp));
    std::set<int> got(d.begin(), d.end());
    fprintf(stdout, "    top-p %.2f: nucleus %zu tokens, drawn %zu distinct\n", tp, want.size(), got.size());
    QS_EXPECT(want.size() > 64, "test nucleus too small (%zu) to exercise growth", want.size());
    QS_EXPECT(got == want, "top-p %.2f: support has %zu tokens, want %zu (and equal)", tp, got.size(), want.size());
  }
}

// ---------------------------------------------------------------------------------------------
// determinism

QS_TEST(draws_are_pure_functions_of_seed_row_step_position) {
  const int B = 37, V = 1001;
  Rng r(3);
  VecD x = f32_exact(random_vector<double>(r, (size_t)B * V, 1.5));
  VecF xf = to_f32(x);
  for (auto p : {params(1.0), params(0.9, 50), params(1.3, 0, 0.9), params(0.6, 200, 0.95)}) {
    auto run = [&] {
      VecI out(B);
      cpu::sample_tokens<double>(out.data(), x.data(), B, V, p, nullptr, nullptr, nullptr, 0);
      return out;
    };
    VecI a = run();
    QS_EXPECT(bit_equal(a, run()), "two identical calls differ");
    QS_EXPECT(same_for_1_2_3_threads(run, [](const VecI& u, const VecI& w) { return bit_equal(u, w); }),
              "thread count changes the draws");
    VecI f(B);
    cpu::sample_tokens<float>(f.data(), xf.data(), B, V, p, nullptr, nullptr, nullptr, 0);
    QS_EXPECT(bit_equal(a, f), "f32 and f64 of the same values differ");
    // each row alone, with its row id, equals the batch
    bool alone_ok = true;
    for (int b = 0; b < B; b++) {
      int32_t id, row = b;
      cpu::sample_tokens<double>(&id, x.data() + (size_t)b * V, 1, V, p, &row, nullptr, nullptr, 0);
      alone_ok &= id == a[b];
    }
    QS_EXPECT(alone_ok, "a row sampled alone differs from the same row in the batch");
    // rows permuted with their ids permuted along
    VecD xr((size_t)B * V);
    VecI rows(B), perm(B);
    for (int b = 0; b < B; b++) {
      perm[b] = B - 1 - b;
      rows[b] = perm[b];
      std::copy(x.begin() + (size_t)perm[b] * V, x.begin() + (size_t)(perm[b] + 1) * V, xr.begin() + (size_t)b * V);
    }
    VecI pr(B);
    cpu::sample_tokens<double>(pr.data(), xr.data(), B, V, p, rows.data(), nullptr, nullptr, 0);
    bool perm_ok = true;
    for (int b = 0; b < B; b++) perm_ok &= pr[b] == a[perm[b]];
    QS_EXPECT(perm_ok, "reordering the batch (with row ids) changes the draws");
  }
  // different seeds, steps and positions give different draws (most rows change)
  auto differs = [&](cpu::SampleParams p, const int32_t* pos) {
    VecI base(B), other(B);
    cpu::sample_tokens<double>(base.data(), x.data(), B, V, params(1.0), nullptr, nullptr, nullptr, 0);
    cpu::sample_tokens<double>(other.data(), x.data(), B, V, p, nullptr, pos, nullptr, 0);
    int n = 0;
    for (int b = 0; b < B; b++) n += base[b] != other[b];
    return n;
  };
  VecI pos(B, 5);
  int ds = differs(params(1.0, 0, 1.0, 1235), nullptr), dt = differs(params(1.0, 0, 1.0, 1234, 1), nullptr),
      dp = differs(params(1.0), pos.data());
  fprintf(stdout, "    rows changed of %d: seed+1 %d, step+1 %d, position 5 %d\n", B, ds, dt, dp);
  QS_EXPECT(ds > B / 2 && dt > B / 2 && dp > B / 2, "streams not independent enough");
}

// ---------------------------------------------------------------------------------------------
// op validation

QS_TEST(op_samples_and_validates_arguments) {
  auto e = make_engine();
  if (!e) QS_SKIP("no engine");
  float x[6] = {0.1f, 2.0f, 0.3f, -1.0f, 5.0f, 4.0f};  // (2, 3)
  auto run = [&](qs::OpArgs args, qs::OpOutputs* out) {
    return e->run_sync([&] { return qs::run_op(*e, "sample_tokens", args, out); });
  };
  qs::OpArgs a;
  a.tensors["logits"] = host_tensor(*e, qs::DType::F32, {2, 3}, x);
  a.numbers["temperature"] = 0;
  qs::OpOutputs out;
  qs::Status st = run(a, &out);
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
  if (st.ok()) {
    const int32_t* ids = out["ids"].data<int32_t>();
    QS_EXPECT(out["ids"].dtype() == qs::DType::I32 && out["ids"].shape() == qs::Shape({2}), "ids dtype/shape");
    QS_EXPECT(ids[0] == 1 && ids[1] == 1, "greedy ids %d %d", ids[0], ids[1]);
  }
  int32_t sup[1] = {1};
  a.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {1}, sup);
  st = run(a, &out);
  QS_EXPECT(st.ok() && out["ids"].data<int32_t>()[0] == 2 && out["ids"].data<int32_t>()[1] == 2, "suppress 1");

  auto expect_error = [&](qs::OpArgs args, const char* needle) {
    qs::OpOutputs o;
    qs::Status s = run(args, &o);
    QS_EXPECT(!s.ok() && s.code() == qs::Code::INVALID_ARGUMENT, "accepted (wanted '%s')", needle);
    QS_EXPECT(s.message().find(needle) != std::string::npos, "message '%s' lacks '%s'", s.message().c_str(), needle);
  };
  qs::OpArgs b = a;
  b.tensors.erase("suppress");
  { qs::OpArgs c = b; c.numbers["temperature"] = -1; expect_error(c, "'temperature' must be a finite number >= 0"); }
  { qs::OpArgs c = b; c.numbers["topP"] = 0; expect_error(c, "'topP' must be in (0, 1]"); }
  { qs::OpArgs c = b; c.numbers["topK"] = 1.5; expect_error(c, "'topK' must be an integer"); }
  { qs::OpArgs c = b; c.numbers["seed"] = -3; expect_error(c, "'seed' must be an integer"); }
  { qs::OpArgs c = b; c.numbers["step"] = 0.5; expect_error(c, "'step' must be an integer"); }
  {
    int32_t bad[2] = {0, 3};
    qs::OpArgs c = b;
    c.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {2}, bad);
    expect_error(c, "'suppress'[1] = 3 is out of range [0, 3)");
  }
  {
    int32_t all[3] = {0, 1, 2};
    qs::OpArgs c = b;
    c.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {3}, all);
    expect_error(c, "row 0 has no token to draw");
  }
  {
    float y[6] = {0, 1, 2, 3, NAN, 5};
    qs::OpArgs c = b;
    c.tensors["logits"] = host_tensor(*e, qs::DType::F32, {2, 3}, y);
    expect_error(c, "row 1 holds a NaN");
  }
  {
    int32_t i[6] = {0};
    qs::OpArgs c = b;
    c.tensors["logits"] = host_tensor(*e, qs::DType::I32, {2, 3}, i);
    expect_error(c, "'logits' must be f32 or f64");
  }
  {
    int32_t rows[3] = {0, 1, 2};
    qs::OpArgs c = b;
    c.tensors["rows"] = host_tensor(*e, qs::DType::I32, {3}, rows);
    expect_error(c, "'rows' must have shape [B]");
  }
}

QS_TEST_MAIN()
