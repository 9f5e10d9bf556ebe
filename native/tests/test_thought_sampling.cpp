// test_thought_sampling.cpp: the fused LM head + Gumbel-max thought sampler
// (cpu/thought_sampling.h, op thought_sample; Quiet-STaR spec §2.7, §2.9 item 7, §9.2, §9.11).
//
//   - tokens equal sample_tokens (cpu/sampling.h) run on the materialised logits with the same
//     rows, positions, step, seed, suppress list and temperature (1, 0.7, 2.5, greedy), for
//     many rows (two row blocks), chunks smaller and larger than V, V not a multiple of the
//     chunk, peaked and flat rows, f32 and f64. The inputs are small dyadic numbers, so every
//     logit is exact whatever the summation order: "the same logits" holds bit for bit (and
//     exact ties occur, testing the tie rules);
//   - logp = log_softmax(z / tau)[token] and lse = logsumexp(z), both over the unsuppressed
//     ids, against a dense float64 reference;
//   - suppressed ids (the thought markers) are never drawn even with the largest logits, and
//     are in no normaliser (spec §9.11);
//   - frequencies over many rows and over many seeds follow softmax(z / T) (chi-square);
//   - Gumbel-max invariance (spec §9.2): the reference's hard Gumbel-softmax at any tau,
//     argmax((z + g) / tau) with the markers at -1e10, is our temperature-1 draw;
//   - determinism: 1/2/3 threads bit-identical, a row alone equals the same row in a batch,
//     f32 equals f64 on the same (exact) logits;
//   - the op: outputs, and its validation errors (naming the argument or the row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"
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
// problems

// h (N, D), W (V, D) and the exact logits z (N, V) = h · Wᵀ, with the stream keys.
struct Problem {
  int N, D, V;
  VecD h, W, z;
  VecI rows, positions, suppress;
};

// Dyadic inputs: h in multiples of `hstep` in [-1, 1]·hscale, W in multiples of 1/16 in
// [-1, 1]; with D <= 64 every product and partial sum is exact in float, so z is the same in
// any summation order (the kernel's chunked gemm, the test's loop, f32 or f64).
static Problem make_problem(Rng& r, int N, int D, int V, double hscale = 1.0, VecI suppress = {}) {
  Problem p{N, D, V, VecD((size_t)N * D), VecD((size_t)V * D), VecD((size_t)N * V), VecI(N), VecI(N), suppress};
  for (double& x : p.h) x = hscale * (r.below(17) - 8) / 8.0;
  for (double& x : p.W) x = (r.below(33) - 16) / 16.0;
  for (int n = 0; n < N; n++) {
    p.rows[n] = r.below(1 << 20);
    p.positions[n] = r.below(4096);
    for (int v = 0; v < V; v++) {
      double s = 0;
      for (int d = 0; d < D; d++) s += p.h[(size_t)n * D + d] * p.W[(size_t)v * D + d];
      p.z[(size_t)n * V + v] = s;
    }
  }
  return p;
}

static cpu::ThoughtSampleParams tparams(double T, double tau = 3.0, uint64_t seed = 77, uint32_t step = 5, int chunk = 0) {
  cpu::ThoughtSampleParams p;
  p.temperature = T;
  p.policy_temperature = tau;
  p.seed = seed;
  p.step = step;
  p.chunk = chunk;
  return p;
}

struct Result {
  VecI tokens;
  VecF logp, lse;
};

template <typename T>
static Result run_fused(const Problem& p, const cpu::ThoughtSampleParams& tp) {
  std::vector<T> h(p.h.begin(), p.h.end()), W(p.W.begin(), p.W.end());
  Result res{VecI(p.N, -99), VecF(p.N), VecF(p.N)};
  cpu::thought_sample<T>(res.tokens.data(), res.logp.data(), res.lse.data(), h.data(), W.data(), p.N, p.D, p.V,
                         p.rows.data(), p.positions.data(), p.suppress.empty() ? nullptr : p.suppress.data(),
                         (int)p.suppress.size(), tp);
  return res;
}

// sample_tokens on the materialised logits, same keys.
template <typename T>
static VecI run_dense(const Problem& p, const cpu::ThoughtSampleParams& tp) {
  std::vector<T> z(p.z.begin(), p.z.end());
  cpu::SampleParams sp;
  sp.temperature = tp.temperature;
  sp.seed = tp.seed;
  sp.step = tp.step;
  VecI out(p.N, -99);
  cpu::sample_tokens<T>(out.data(), z.data(), p.N, p.V, sp, p.rows.data(), p.positions.data(),
                        p.suppress.empty() ? nullptr : p.suppress.data(), (int)p.suppress.size());
  return out;
}

// Dense float64 reference over the unsuppressed ids: logsumexp(z[n] / tau) for every row.
static VecD ref_lse(const Problem& p, double tau) {
  std::vector<char> sup(p.V, 0);
  for (int v : p.suppress) sup[v] = 1;
  VecD out(p.N);
  for (int n = 0; n < p.N; n++) {
    const double* z = p.z.data() + (size_t)n * p.V;
    double m = -INFINITY;
    for (int v = 0; v < p.V; v++)
      if (!sup[v]) m = std::max(m, z[v] / tau);
    long double s = 0;
    for (int v = 0; v < p.V; v++)
      if (!sup[v]) s += expl((long double)(z[v] / tau - m));
    out[n] = m + (double)logl(s);
  }
  return out;
}

// Checks tokens against sample_tokens and logp / lse against the dense reference (lse1 and
// lse_tau: ref_lse at 1 and at the policy temperature).
template <typename T>
static void check_against_dense(const char* label, const Problem& p, const cpu::ThoughtSampleParams& tp,
                                const VecD& lse1, const VecD& lse_tau) {
  Result got = run_fused<T>(p, tp);
  VecI want = run_dense<T>(p, tp);
  int diff = 0, first = -1;
  for (int n = 0; n < p.N; n++)
    if (got.tokens[n] != want[n]) {
      if (first < 0) first = n;
      diff++;
    }
  QS_EXPECT(diff == 0, "%s: %d of %d tokens differ from sample_tokens; first row %d: %d vs %d", label, diff, p.N, first,
            first < 0 ? 0 : got.tokens[first], first < 0 ? 0 : want[first]);
  VecD logp_ref(p.N);
  for (int n = 0; n < p.N; n++) {
    int t = want[n] >= 0 ? want[n] : 0;
    logp_ref[n] = p.z[(size_t)n * p.V + t] / tp.policy_temperature - lse_tau[n];
  }
  // f64 is limited by the float outputs (~6e-8 relative); f32 by the float exp and sums.
  const double tol = sizeof(T) == 8 ? 2e-7 : 2e-6;
  char l1[160], l2[160];
  snprintf(l1, sizeof l1, "%s logp", label);
  snprintf(l2, sizeof l2, "%s lse", label);
  check_close(l1, got.logp.data(), logp_ref.data(), p.N, tol, tol);
  check_close(l2, got.lse.data(), lse1.data(), p.N, tol, tol);
}
template <typename T>
static void check_against_dense(const char* label, const Problem& p, const cpu::ThoughtSampleParams& tp) {
  check_against_dense<T>(label, p, tp, ref_lse(p, 1.0), ref_lse(p, tp.policy_temperature));
}

// ---------------------------------------------------------------------------------------------
// equality with sample_tokens; logp and lse

QS_TEST(tokens_match_sample_tokens_logp_lse_match_dense) {
  Rng r(2024);
  struct Shape { int N, D, V; double hscale; };
  // 300 rows: two row blocks (256 + 44). hscale 4: peaked rows (most noise skipped).
  const Shape shapes[] = {{300, 16, 50, 1.0}, {37, 24, 1000, 1.0}, {300, 8, 203, 4.0}, {5, 64, 3001, 0.25}};
  for (const Shape& s : shapes) {
    Problem p = make_problem(r, s.N, s.D, s.V, s.hscale, {s.V - 2, s.V - 1, s.V / 3});
    printf("  N=%d D=%d V=%d hscale=%.2f\n", s.N, s.D, s.V, s.hscale);
    const VecD lse1 = ref_lse(p, 1.0), lse3 = ref_lse(p, 3.0);
    // small chunks (7: many per row; 97 on the large vocabularies, fewer gemm calls), one
    // smaller than V, the default, exactly V, and more than V
    for (int chunk : {s.V <= 300 ? 7 : 97, 64, 0, s.V, s.V + 5}) {
      for (double T : {1.0, 0.7, 2.5, 0.0}) {
        for (double tau : {3.0, 1.0}) {
          if (tau == 1.0 && T != 1.0) continue;
          char label[96];
          snprintf(label, sizeof label, "V=%d chunk=%d T=%.1f tau=%.0f", s.V, chunk, T, tau);
          cpu::ThoughtSampleParams tp = tparams(T, tau, 1000 + chunk, 3, chunk);
          const VecD& lse_tau = tau == 1.0 ? lse1 : lse3;
          check_against_dense<double>((std::string("f64 ") + label).c_str(), p, tp, lse1, lse_tau);
          check_against_dense<float>((std::string("f32 ") + label).c_str(), p, tp, lse1, lse_tau);
        }
      }
    }
  }
}

QS_TEST(tokens_match_sample_tokens_on_general_logits) {
  // Non-dyadic inputs in f64: the logits the test materialises (one gemm over the whole
  // vocabulary) are those the kernel forms chunk by chunk, up to summation order.
  Rng r(31);
  const int N = 64, D = 40, V = 777;
  VecD h = random_vector<double>(r, (size_t)N * D, 0.5), W = random_vector<double>(r, (size_t)V * D, 0.5);
  VecD z((size_t)N * V);
  cpu::gemm<double>(false, true, N, V, D, 1.0, h.data(), D, W.data(), D, 0.0, z.data(), V);
  VecI rows(N), pos(N), sup = {3, 700};
  for (int n = 0; n < N; n++) { rows[n] = n * 7 + 1; pos[n] = n % 13; }
  for (double T : {1.0, 0.5, 0.0}) {
    for (int chunk : {50, 0}) {
      VecI got(N), want(N);
      cpu::ThoughtSampleParams tp = tparams(T, 3.0, 5, 9, chunk);
      cpu::thought_sample<double>(got.data(), nullptr, nullptr, h.data(), W.data(), N, D, V, rows.data(), pos.data(),
                                  sup.data(), 2, tp);
      cpu::SampleParams sp;
      sp.temperature = T;
      sp.seed = 5;
      sp.step = 9;
      cpu::sample_tokens<double>(want.data(), z.data(), N, V, sp, rows.data(), pos.data(), sup.data(), 2);
      QS_EXPECT(got == want, "general logits T=%.1f chunk=%d: tokens differ from sample_tokens", T, chunk);
    }
  }
}

// The token that thought_sample (h = 1, the head's one column = `w3`, 3 chunks of one token)
// and sample_tokens (logits `w3`) draw from one row with the same seed.
static void pick_both(const VecD& w3, uint64_t seed, int32_t* got, int32_t* want) {
  double one = 1.0;
  int32_t row = 0, p0 = 0;
  *got = *want = -9;
  cpu::thought_sample<double>(got, nullptr, nullptr, &one, w3.data(), 1, 1, 3, &row, &p0, nullptr, 0,
                              tparams(1.0, 3.0, seed, 0, 1));
  cpu::SampleParams sp;
  sp.seed = seed;
  cpu::sample_tokens<double>(want, w3.data(), 1, 3, sp, &row, &p0, nullptr, 0);
}

QS_TEST(ties_go_to_the_lower_id_across_chunks) {
  // D = 1, h = 1: the logits are W itself. Maxima 3.0 at ids 2 and 9 (different chunks of 4).
  VecD W = {0.5, -1.0, 3.0, 1.0, 2.0, 0.0, -2.0, 1.5, 2.5, 3.0, 0.25};
  const int V = (int)W.size();
  VecD h = {1.0, 1.0};
  VecI rows = {0, 1}, pos = {0, 0};
  for (int chunk : {4, 3, 0}) {
    int32_t tok[2];
    float logp[2], lse[2];
    cpu::thought_sample<double>(tok, logp, lse, h.data(), W.data(), 2, 1, V, rows.data(), pos.data(), nullptr, 0,
                                tparams(0.0, 1.0, 0, 0, chunk));
    QS_EXPECT(tok[0] == 2 && tok[1] == 2, "chunk %d: greedy gave %d %d, want 2", chunk, tok[0], tok[1]);
    int32_t sup = 2;
    cpu::thought_sample<double>(tok, logp, lse, h.data(), W.data(), 2, 1, V, rows.data(), pos.data(), &sup, 1,
                                tparams(0.0, 1.0, 0, 0, chunk));
    QS_EXPECT(tok[0] == 9, "chunk %d: greedy with 2 suppressed gave %d, want 9", chunk, tok[0]);
  }
  // An exact tie of Gumbel scores goes to the lower id too (as in sample_tokens): logits
  // x0 = 0, x1 = g0 - g1 for a stream where the two scores come out bit-equal; ids 0 and 1 sit
  // in different chunks (chunk 1); a third token far below is never drawn.
  int ties = 0;
  for (uint64_t seed = 0; seed < 200 && ties < 5; seed++) {
    rng::SampleStream st(seed, 0, 0, 0);
    const double g0 = st.gumbel(0), g1 = st.gumbel(1);
    VecD w3 = {0.0, g0 - g1, std::min(0.0, g0 - g1) - 30};
    const double m = std::max(w3[0], w3[1]);
    if ((w3[0] - m) + g0 != (w3[1] - m) + g1) continue;
    ties++;
    int32_t got, want;
    pick_both(w3, seed, &got, &want);
    QS_EXPECT(got == 0 && want == 0, "exact Gumbel tie (seed %llu): got %d, sample_tokens %d, want 0",
              (unsigned long long)seed, got, want);
  }
  QS_EXPECT(ties >= 3, "found only %d exact ties to test", ties);
  // V = 1: the only token, logp 0 and lse = its logit
  double w1 = 0.75;
  int32_t tok;
  float logp, lse;
  int32_t row = 0, p0 = 0;
  cpu::thought_sample<double>(&tok, &logp, &lse, &w1, &w1, 1, 1, 1, &row, &p0, nullptr, 0, tparams(1.0));
  QS_EXPECT(tok == 0 && std::fabs(logp) < 1e-7 && std::fabs(lse - 0.5625) < 1e-7, "V=1: token %d logp %g lse %g", tok,
            logp, lse);
  // N = 0 writes nothing
  cpu::thought_sample<double>(nullptr, nullptr, nullptr, nullptr, &w1, 0, 1, 1, nullptr, nullptr, nullptr, 0, tparams(1.0));
}

QS_TEST(near_ties_under_a_growing_running_max_match_sample_tokens) {
  // The kernel compares scores under the running max m of the chunks seen so far, sample_tokens
  // under the row's final max; rounding differs between the two. Tokens a = 0 and b = 1 (one
  // per chunk) get scores within a few ulps of each other, c = 2 raises the max last: the
  // pick must still be sample_tokens'. Cases where the a-vs-b comparison flips between the
  // two shifts are counted, to show the test reaches them.
  int flips = 0, cases = 0, wrong = 0;
  Rng r(12);
  for (uint64_t seed = 0; seed < 3000; seed++) {
    rng::SampleStream st(seed, 0, 0, 0);
    const double ga = st.gumbel(0), gb = st.gumbel(1), gc = st.gumbel(2);
    const double xa = r.uniform(-1, 1) * 0.37;
    for (int k = -2; k <= 2; k++) {
      double xb = xa + (ga - gb);
      for (int i = 0; i < std::abs(k); i++) xb = std::nextafter(xb, k > 0 ? INFINITY : -INFINITY);
      const double m1 = std::max(xa, xb);
      const double room = std::min(xa, xb) + std::min(ga, gb) - gc - m1;  // c must not win
      if (room <= 0.01) continue;
      const double xc = m1 + r.uniform(0.001, 1.0) * room;
      auto score = [](double x, double m, double g) { return (x - m) / 1.0 + g; };
      const bool a1 = score(xa, m1, ga) >= score(xb, m1, gb), af = score(xa, xc, ga) >= score(xb, xc, gb);
      flips += a1 != af;
      cases++;
      VecD w3 = {xa, xb, xc};
      int32_t got, want;
      pick_both(w3, seed, &got, &want);
      wrong += got != want;
    }
  }
  printf("    %d near-tie cases, %d flip between the running and the final max, %d differ\n", cases, flips, wrong);
  QS_EXPECT(flips > 0, "no case exercised a comparison that depends on the shift");
  QS_EXPECT(wrong == 0, "%d of %d near-tie draws differ from sample_tokens", wrong, cases);
}

// ---------------------------------------------------------------------------------------------
// marker suppression (spec §9.11)

QS_TEST(suppressed_markers_never_drawn_even_when_largest) {
  Rng r(9);
  const int N = 500, D = 8, V = 40;
  Problem p = make_problem(r, N, D, V);
  // h >= 0 everywhere and the two marker rows (ids V-2, V-1) all 1: their logits are the
  // largest of every row by far (Σ h vs ≤ Σ |h| / ... ); make that certain with h > 0.
  for (double& x : p.h) x = (1 + r.below(8)) / 8.0;
  for (int d = 0; d < D; d++) p.W[(size_t)(V - 2) * D + d] = p.W[(size_t)(V - 1) * D + d] = 4.0;
  for (int n = 0; n < N; n++)
    for (int v = 0; v < V; v++) {
      double s = 0;
      for (int d = 0; d < D; d++) s += p.h[(size_t)n * D + d] * p.W[(size_t)v * D + d];
      p.z[(size_t)n * V + v] = s;
    }
  // without suppression the markers win nearly always: the test can see a leak
  Result open = run_fused<double>(p, tparams(1.0));
  int marker = 0;
  for (int t : open.tokens) marker += t >= V - 2;
  QS_EXPECT(marker > N * 9 / 10, "the markers should dominate unsuppressed (%d of %d)", marker, N);
  p.suppress = {V - 1, V - 2};
  for (double T : {1.0, 0.0, 3.0}) {
    for (int chunk : {0, 13}) {
      Result got = run_fused<float>(p, tparams(T, 3.0, 4, 1, chunk));
      int leaks = 0;
      for (int t : got.tokens) leaks += t >= V - 2 || t < 0;
      QS_EXPECT(leaks == 0, "T=%.0f chunk=%d: %d tokens are markers (or failures)", T, chunk, leaks);
      check_against_dense<float>(T == 0 ? "suppressed markers greedy" : "suppressed markers", p,
                                 tparams(T, 3.0, 4, 1, chunk));
    }
  }
  // the normaliser excludes the markers: lse far below the marker logits
  Result got = run_fused<double>(p, tparams(1.0));
  double zmark = p.z[(size_t)0 * V + V - 1];
  QS_EXPECT(got.lse[0] < zmark - 1, "lse %g includes the markers (marker logit %g)", got.lse[0], zmark);
}

// ---------------------------------------------------------------------------------------------
// distributions

QS_TEST(frequencies_follow_softmax_over_rows_and_seeds) {
  // D = 1, h = 1: the logits are W. Ids 7 and 8 are markers with the largest logits.
  VecD W = {1.0, 0.25, -0.5, 2.0, 0.0, -3.0, 1.5, 4.0, 4.0};
  const int V = (int)W.size();
  VecI sup = {7, 8};
  auto softmax = [&](double T) {
    VecD p(V, 0.0);
    double s = 0;
    for (int v = 0; v < 7; v++) s += (p[v] = std::exp(W[v] / T));
    for (double& q : p) q /= s;
    return p;
  };
  const int n = 40000;
  VecD h(n, 1.0);
  VecI rows(n), pos(n, 11);
  for (int i = 0; i < n; i++) rows[i] = i;
  for (double T : {1.0, 0.7, 2.5}) {
    VecI tok(n);
    cpu::thought_sample<double>(tok.data(), nullptr, nullptr, h.data(), W.data(), n, 1, V, rows.data(), pos.data(),
                                sup.data(), 2, tparams(T, 3.0, 123, 2, 4));
    char label[64];
    snprintf(label, sizeof label, "over rows T=%.1f", T);
    check_frequencies(label, tok, softmax(T));
  }
  // one row, many seeds
  VecI tok(n);
  for (int s = 0; s < n; s++) {
    int32_t row = 3, p0 = 0;
    double one = 1.0;
    cpu::thought_sample<double>(&tok[s], nullptr, nullptr, &one, W.data(), 1, 1, V, &row, &p0, sup.data(), 2,
                                tparams(1.0, 3.0, (uint64_t)s * 2654435761ull, 0, 0));
  }
  check_frequencies("over seeds T=1", tok, softmax(1.0));
}

// ---------------------------------------------------------------------------------------------
// the reference's Gumbel-softmax (spec §2.7, §9.2)

QS_TEST(reference_hard_gumbel_softmax_at_any_tau_is_our_temperature_1_draw) {
  // F.gumbel_softmax(logits, tau, hard=True) is the one-hot of argmax((logits + g) / tau), with
  // the markers' logits at -1e10. Dividing by tau > 0 keeps the argmax, so for every tau it is
  // argmax(z + g) over the unsuppressed ids: the temperature-1 draw.
  Rng r(4);
  const int N = 400, D = 16, V = 300;
  Problem p = make_problem(r, N, D, V, 1.0, {V - 2, V - 1});
  const cpu::ThoughtSampleParams tp = tparams(1.0, 3.0, 99, 7, 64);
  Result ours = run_fused<double>(p, tp);
  for (double tau : {1e-3, 0.5, 1.0, 3.0, 100.0}) {
    int diff = 0;
    for (int n = 0; n < N; n++) {
      rng::SampleStream s(tp.seed, (uint32_t)p.rows[n], tp.step, (uint32_t)p.positions[n]);
      double best = -INFINITY;
      int arg = -1;
      for (int v = 0; v < V; v++) {
        double logit = v >= V - 2 ? -1e10 : p.z[(size_t)n * V + v];
        double y = (logit + s.gumbel((uint32_t)v)) / tau;
        if (y > best) { best = y; arg = v; }
      }
      diff += arg != ours.tokens[n];
    }
    printf("    tau=%g: %d of %d rows differ from our temperature-1 draw\n", tau, diff, N);
    QS_EXPECT(diff == 0, "reference hard gumbel-softmax at tau=%g differs in %d rows", tau, diff);
  }
  // A sampling temperature is a real choice in our sampler: T = 0.3 changes many draws.
  Result cold = run_fused<double>(p, tparams(0.3, 3.0, 99, 7, 64));
  int changed = 0;
  for (int n = 0; n < N; n++) changed += cold.tokens[n] != ours.tokens[n];
  QS_EXPECT(changed > N / 10, "temperature 0.3 changed only %d of %d draws", changed, N);
}

// ---------------------------------------------------------------------------------------------
// determinism

QS_TEST(deterministic_across_threads_batches_and_float_types) {
  Rng r(77);
  const int N = 300, D = 32, V = 517;
  Problem p = make_problem(r, N, D, V, 1.0, {0, 516});
  for (double T : {1.0, 0.0}) {
    const cpu::ThoughtSampleParams tp = tparams(T, 3.0, 2024, 4, 100);
    auto same = [](const Result& a, const Result& b) {
      return bit_equal(a.tokens, b.tokens) && bit_equal(a.logp, b.logp) && bit_equal(a.lse, b.lse);
    };
    QS_EXPECT(same_for_1_2_3_threads([&] { return run_fused<float>(p, tp); }, same), "f32 T=%.0f: threads differ", T);
    QS_EXPECT(same_for_1_2_3_threads([&] { return run_fused<double>(p, tp); }, same), "f64 T=%.0f: threads differ", T);
    Result f = run_fused<float>(p, tp), d = run_fused<double>(p, tp);
    QS_EXPECT(bit_equal(f.tokens, d.tokens), "f32 and f64 tokens differ on exact logits (T=%.0f)", T);
    // each row alone (its own row id and position) equals the row in the batch
    bool alone_ok = true;
    for (int n = 0; n < N; n += 17) {
      Problem one{1, D, V, VecD(p.h.begin() + (size_t)n * D, p.h.begin() + (size_t)(n + 1) * D), p.W,
                  VecD(p.z.begin() + (size_t)n * V, p.z.begin() + (size_t)(n + 1) * V), {p.rows[n]}, {p.positions[n]},
                  p.suppress};
      Result a = run_fused<double>(one, tp);
      alone_ok &= a.tokens[0] == d.tokens[n] && a.logp[0] == d.logp[n] && a.lse[0] == d.lse[n];
    }
    QS_EXPECT(alone_ok, "a row sampled alone differs from the same row in the batch (T=%.0f)", T);
  }
  // different keys give different draws
  Result base = run_fused<double>(p, tparams(1.0, 3.0, 2024, 4, 100));
  Result seed = run_fused<double>(p, tparams(1.0, 3.0, 2025, 4, 100));
  Result step = run_fused<double>(p, tparams(1.0, 3.0, 2024, 5, 100));
  int ds = 0, dt = 0;
  for (int n = 0; n < N; n++) { ds += base.tokens[n] != seed.tokens[n]; dt += base.tokens[n] != step.tokens[n]; }
  QS_EXPECT(ds > N / 2 && dt > N / 2, "streams not independent enough (seed %d, step %d of %d)", ds, dt, N);
}

// ---------------------------------------------------------------------------------------------
// the op

QS_TEST(op_samples_and_validates_arguments) {
  auto e = make_engine();
  if (!e) QS_SKIP("no engine");
  Rng r(5);
  Problem p = make_problem(r, 6, 4, 11, 1.0, {9, 10});
  VecF hf(p.h.begin(), p.h.end()), Wf(p.W.begin(), p.W.end());
  auto run = [&](qs::OpArgs args, qs::OpOutputs* out) {
    return e->run_sync([&] { return qs::run_op(*e, "thought_sample", args, out); });
  };
  qs::OpArgs a;
  a.tensors["h"] = host_tensor(*e, qs::DType::F32, {6, 4}, hf.data());
  a.tensors["weight"] = host_tensor(*e, qs::DType::F32, {11, 4}, Wf.data());
  a.tensors["rows"] = host_tensor(*e, qs::DType::I32, {6}, p.rows.data());
  a.tensors["positions"] = host_tensor(*e, qs::DType::I32, {6}, p.positions.data());
  a.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {2}, p.suppress.data());
  a.numbers["temperature"] = 0.7;
  a.numbers["policyTemperature"] = 2;
  a.numbers["seed"] = 31;
  a.numbers["step"] = 6;
  a.numbers["chunk"] = 4;
  qs::OpOutputs out;
  qs::Status st = run(a, &out);
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
  if (st.ok()) {
    Result want = run_fused<float>(p, tparams(0.7, 2.0, 31, 6, 4));
    QS_EXPECT(out["tokens"].dtype() == qs::DType::I32 && out["tokens"].shape() == qs::Shape({6}), "tokens dtype/shape");
    QS_EXPECT(out["logp"].dtype() == qs::DType::F32 && out["lse"].dtype() == qs::DType::F32, "logp/lse dtype");
    QS_EXPECT(std::memcmp(out["tokens"].raw(), want.tokens.data(), 6 * 4) == 0 &&
                  std::memcmp(out["logp"].raw(), want.logp.data(), 6 * 4) == 0 &&
                  std::memcmp(out["lse"].raw(), want.lse.data(), 6 * 4) == 0,
              "op outputs differ from the kernel's");
  }
  // defaults: rows 0..N-1, positions 0, temperature 1, policyTemperature 3
  {
    qs::OpArgs b;
    b.tensors["h"] = a.tensors["h"];
    b.tensors["weight"] = a.tensors["weight"];
    st = run(b, &out);
    QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
    if (st.ok()) {
      VecI tok(6);
      VecF lp(6), ls(6);
      cpu::thought_sample<float>(tok.data(), lp.data(), ls.data(), hf.data(), Wf.data(), 6, 4, 11, nullptr, nullptr,
                                 nullptr, 0, cpu::ThoughtSampleParams());
      QS_EXPECT(std::memcmp(out["tokens"].raw(), tok.data(), 24) == 0 && std::memcmp(out["logp"].raw(), lp.data(), 24) == 0,
                "defaults differ from the kernel's");
    }
  }

  auto expect_error = [&](qs::OpArgs args, const char* needle) {
    qs::OpOutputs o;
    qs::Status s = run(args, &o);
    QS_EXPECT(!s.ok() && s.code() == qs::Code::INVALID_ARGUMENT, "accepted (wanted '%s')", needle);
    QS_EXPECT(s.message().find(needle) != std::string::npos, "message '%s' lacks '%s'", s.message().c_str(), needle);
  };
  { qs::OpArgs c = a; c.tensors.erase("h"); expect_error(c, "missing tensor argument 'h'"); }
  { qs::OpArgs c = a; c.numbers["temperature"] = -1; expect_error(c, "'temperature' must be a finite number >= 0"); }
  { qs::OpArgs c = a; c.numbers["temperature"] = INFINITY; expect_error(c, "'temperature' must be a finite number >= 0"); }
  { qs::OpArgs c = a; c.numbers["policyTemperature"] = 0; expect_error(c, "'policyTemperature' must be a finite number > 0"); }
  { qs::OpArgs c = a; c.numbers["seed"] = -3; expect_error(c, "'seed' must be an integer"); }
  { qs::OpArgs c = a; c.numbers["step"] = 0.5; expect_error(c, "'step' must be an integer"); }
  { qs::OpArgs c = a; c.numbers["chunk"] = -1; expect_error(c, "'chunk' must be an integer"); }
  {
    qs::OpArgs c = a;
    c.tensors["weight"] = host_tensor(*e, qs::DType::F32, {11, 5}, nullptr);
    expect_error(c, "'weight' must have shape [V, D]");
  }
  {
    qs::OpArgs c = a;
    c.tensors["weight"] = host_tensor(*e, qs::DType::F64, {11, 4}, nullptr);
    expect_error(c, "'weight' is f64 but the other float arguments are f32");
  }
  {
    qs::OpArgs c = a;
    c.tensors["h"] = host_tensor(*e, qs::DType::I32, {6, 4}, nullptr);
    expect_error(c, "'h' must be f32 or f64");
  }
  {
    int32_t bad[3] = {0, 1, 2};
    qs::OpArgs c = a;
    c.tensors["rows"] = host_tensor(*e, qs::DType::I32, {3}, bad);
    expect_error(c, "'rows' must have shape [N]");
  }
  {
    int32_t bad[6] = {0, 1, 2, -4, 0, 0};
    qs::OpArgs c = a;
    c.tensors["positions"] = host_tensor(*e, qs::DType::I32, {6}, bad);
    expect_error(c, "'positions'[3] = -4 is out of range");
  }
  {
    int32_t bad[2] = {0, 11};
    qs::OpArgs c = a;
    c.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {2}, bad);
    expect_error(c, "'suppress'[1] = 11 is out of range [0, 11)");
  }
  {
    VecI all(11);
    for (int v = 0; v < 11; v++) all[v] = v;
    qs::OpArgs c = a;
    c.tensors["suppress"] = host_tensor(*e, qs::DType::I32, {11}, all.data());
    expect_error(c, "row 0 has no token to draw");
  }
  {
    VecF hn = hf;
    hn[1 * 4 + 2] = NAN;
    qs::OpArgs c = a;
    c.tensors["h"] = host_tensor(*e, qs::DType::F32, {6, 4}, hn.data());
    expect_error(c, "row 1 (h[1] · weightᵀ) hold a NaN");
  }
}

QS_TEST_MAIN()
