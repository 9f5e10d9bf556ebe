// test_lmhead_xent.cpp: the fused LM head + softmax cross-entropy (cpu/lmhead_xent.h).
//
//   - forward losses and lse against a dense log-softmax in double (the whole (N, V) logits
//     matrix), float and double, over (N, C, V, chunk) with V not a multiple of chunk,
//     chunk > V, chunk = 1, chunk <= 0 (default), N = 1, ignore_index rows (scattered, so row
//     blocks are gathered, and runs of them), more rows than one 256-row block, all rows
//     ignored; ignored rows must give loss = 0 and lse = 0;
//   - backward: central differences in double of L = Σ_n dloss[n]·loss[n] (random dloss) for
//     dh and dW; float backward against double backward; dh or dW null;
//   - every SIMD path the machine runs (QS_CPU_SIMD) against the reference;
//   - bit-identical results with 1, 2 and 3 OpenMP threads; backward adds (+=) into dh, dW.
// lse is float by contract, so the double backward's softmax carries ~1e-7·|lse| relative
// error: gradient checks use rtol 1e-5 / atol 1e-7 instead of gradcheck's defaults.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/lmhead_xent.h"
#include "gradcheck.h"
#include "harness.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;

// ---------------------------------------------------------------------------------------------
// Problems

enum Ignore { kNone, kScattered, kRuns, kAll };

struct Problem {
  int N, C, V, chunk, ignore_index;
  VecD h, W;    // (N, C), (V, C), float-representable
  VecI targets; // (N)
  std::string desc;
};

static Problem make_problem(int N, int C, int V, int chunk, int ignore, Rng& rng, int ignore_index = -100) {
  Problem p{N, C, V, chunk, ignore_index, {}, {}, {}, {}};
  // Logit scale ~ 2 so the softmax is neither flat nor one-hot.
  p.h = f32_exact(random_vector<double>(rng, (size_t)N * C, 2.0 / std::sqrt((double)C)));
  p.W = f32_exact(random_vector<double>(rng, (size_t)V * C, 1.0));
  p.targets.resize(N);
  for (int n = 0; n < N; n++) {
    p.targets[n] = rng.below(V);
    bool ig = ignore == kAll || (ignore == kScattered && rng.uniform() < 0.3) ||
              (ignore == kRuns && (n / 5) % 3 == 1);
    if (ig) p.targets[n] = ignore_index;
  }
  if (N > 1 && ignore != kAll) p.targets[N - 1] = V - 1;  // the last vocabulary column
  static const char* names[] = {"none", "scattered", "runs", "all"};
  char buf[128];
  snprintf(buf, sizeof buf, "N=%d C=%d V=%d chunk=%d ignore=%s", N, C, V, chunk, names[ignore]);
  p.desc = buf;
  return p;
}

// Dense reference in double: the full (N, V) logits, log-softmax, loss; ignored rows 0, 0.
static void reference(const Problem& p, const VecD& h, const VecD& W, VecD& loss, VecD& lse) {
  loss.assign(p.N, 0.0);
  lse.assign(p.N, 0.0);
  VecD z(p.V);
  for (int n = 0; n < p.N; n++) {
    if (p.targets[n] == p.ignore_index) continue;
    double m = -INFINITY;
    for (int v = 0; v < p.V; v++) {
      double acc = 0;
      for (int c = 0; c < p.C; c++) acc += h[(size_t)n * p.C + c] * W[(size_t)v * p.C + c];
      z[v] = acc;
      m = std::max(m, acc);
    }
    double s = 0;
    for (int v = 0; v < p.V; v++) s += std::exp(z[v] - m);
    lse[n] = m + std::log(s);
    loss[n] = lse[n] - z[p.targets[n]];
  }
}

template <typename T>
struct Result {
  std::vector<T> loss, dh, dW;
  VecF lse;
};

template <typename T>
static Result<T> run_forward(const Problem& p) {
  Result<T> r;
  std::vector<T> h(p.h.begin(), p.h.end()), W(p.W.begin(), p.W.end());
  r.loss.assign(p.N, T(7));  // garbage: must be overwritten, ignored rows included
  r.lse.assign(p.N, 7.f);
  cpu::lmhead_xent_forward<T>(r.loss.data(), r.lse.data(), h.data(), W.data(), p.targets.data(), p.N, p.C, p.V,
                              p.ignore_index, p.chunk);
  return r;
}

template <typename T>
static Result<T> run_both(const Problem& p, const VecD& dloss, bool want_dh = true, bool want_dW = true) {
  Result<T> r = run_forward<T>(p);
  std::vector<T> h(p.h.begin(), p.h.end()), W(p.W.begin(), p.W.end()), dl(dloss.begin(), dloss.end());
  r.dh.assign((size_t)p.N * p.C, T(0));
  r.dW.assign((size_t)p.V * p.C, T(0));
  cpu::lmhead_xent_backward<T>(want_dh ? r.dh.data() : nullptr, want_dW ? r.dW.data() : nullptr, dl.data(),
                               h.data(), W.data(), p.targets.data(), r.lse.data(), p.N, p.C, p.V, p.ignore_index,
                               p.chunk);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward against the dense reference

static std::vector<Problem> forward_problems(Rng& rng) {
  std::vector<Problem> ps;
  ps.push_back(make_problem(1, 8, 10, 4, kNone, rng));        // N = 1
  ps.push_back(make_problem(7, 16, 33, 8, kNone, rng));       // V % chunk != 0
  ps.push_back(make_problem(13, 5, 20, 64, kScattered, rng)); // chunk > V
  ps.push_back(make_problem(9, 6, 11, 1, kRuns, rng));        // chunk = 1
  ps.push_back(make_problem(5, 3, 7, 0, kNone, rng));         // default chunk
  ps.push_back(make_problem(6, 4, 9, 3, kAll, rng));          // every row ignored
  ps.push_back(make_problem(300, 12, 50, 16, kScattered, rng)); // 2 row blocks, gathered
  ps.push_back(make_problem(600, 9, 70, 32, kRuns, rng));       // 3 row blocks, mixed
  ps.push_back(make_problem(520, 32, 301, 64, kNone, rng));     // contiguous blocks, ragged chunk
  ps.push_back(make_problem(17, 64, 1000, 128, kScattered, rng, -1));  // ignore_index = -1
  return ps;
}

template <typename T>
static void forward_vs_reference(const char* tname, double loss_rtol, double loss_atol, double lse_tol) {
  Rng rng(42);
  std::vector<Problem> ps = forward_problems(rng);
  VecD gl, wl, gs, ws;
  int ignored = 0;
  bool ignored_zero = true;
  for (const Problem& p : ps) {
    VecD ref_loss, ref_lse;
    reference(p, p.h, p.W, ref_loss, ref_lse);
    Result<T> r = run_forward<T>(p);
    quiet_close(std::string(tname) + " loss " + p.desc, r.loss.data(), ref_loss.data(), p.N, loss_rtol, loss_atol);
    quiet_close(std::string(tname) + " lse " + p.desc, r.lse.data(), ref_lse.data(), p.N, lse_tol, lse_tol);
    for (int n = 0; n < p.N; n++)
      if (p.targets[n] == p.ignore_index) {
        ignored++;
        ignored_zero &= r.loss[n] == T(0) && r.lse[n] == 0.f;
      }
    gl.insert(gl.end(), r.loss.begin(), r.loss.end());
    wl.insert(wl.end(), ref_loss.begin(), ref_loss.end());
    gs.insert(gs.end(), r.lse.begin(), r.lse.end());
    ws.insert(ws.end(), ref_lse.begin(), ref_lse.end());
  }
  printf("    %zu problems, %zu rows, %d ignored (loss = lse = 0: %s)\n", ps.size(), wl.size(), ignored,
         ignored_zero ? "yes" : "NO");
  QS_EXPECT(ignored_zero, "ignored rows must get loss = 0 and lse = 0");
  std::string a = std::string(tname) + " loss vs dense (all problems)";
  std::string b = std::string(tname) + " lse vs dense (all problems)";
  check_close(a.c_str(), gl.data(), wl.data(), wl.size(), loss_rtol, loss_atol);
  check_close(b.c_str(), gs.data(), ws.data(), ws.size(), lse_tol, lse_tol);
}

// double loss: lse goes through float only on its way out; the loss itself stays double.
QS_TEST(forward_double_vs_dense) { forward_vs_reference<double>("f64", 1e-12, 1e-12, 1e-6); }
QS_TEST(forward_float_vs_dense) { forward_vs_reference<float>("f32", 1e-5, 1e-5, 1e-5); }

// ---------------------------------------------------------------------------------------------
// Backward: float64 finite differences of L = Σ_n dloss[n]·loss[n]

static void gradcheck_problem(Problem p, uint64_t seed) {
  Rng rng(seed);
  VecD dloss = random_vector<double>(rng, p.N);
  Result<double> r = run_both<double>(p, dloss);
  auto loss = [&]() {
    Result<double> f = run_forward<double>(p);
    return dot(f.loss, dloss);
  };
  printf("    %s\n", p.desc.c_str());
  const double rtol = 1e-5, atol = 1e-7;  // lse is float: see the file comment
  check_gradient("dh", p.h, r.dh, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dW", p.W, r.dW, loss, rng, 40, 1e-6, rtol, atol);
}

QS_TEST(gradcheck_small) {
  Rng rng(1);
  gradcheck_problem(make_problem(7, 5, 13, 4, kScattered, rng), 11);  // ragged chunks
  gradcheck_problem(make_problem(1, 6, 9, 1, kNone, rng), 12);        // N = 1, chunk = 1
  gradcheck_problem(make_problem(4, 3, 6, 50, kNone, rng), 13);       // chunk > V
}

QS_TEST(gradcheck_multi_block_gathered) {
  Rng rng(2);
  gradcheck_problem(make_problem(300, 4, 11, 4, kRuns, rng), 14);  // 2 blocks, gathered + contiguous runs
}

// ---------------------------------------------------------------------------------------------
// float backward against double backward; null outputs

QS_TEST(backward_float_vs_double) {
  Rng rng(3);
  std::vector<Problem> ps;
  ps.push_back(make_problem(300, 48, 500, 64, kScattered, rng));
  ps.push_back(make_problem(64, 32, 1000, 0, kNone, rng));
  ps.push_back(make_problem(9, 16, 37, 5, kRuns, rng));
  VecD gf[2], gd[2];
  const char* names[2] = {"dh", "dW"};
  for (const Problem& p : ps) {
    VecD dloss = f32_exact(random_vector<double>(rng, p.N));
    Result<float> f = run_both<float>(p, dloss);
    Result<double> d = run_both<double>(p, dloss);
    const VecF* fs[2] = {&f.dh, &f.dW};
    const VecD* ds[2] = {&d.dh, &d.dW};
    for (int t = 0; t < 2; t++) {
      quiet_close(std::string(names[t]) + " " + p.desc, fs[t]->data(), ds[t]->data(), ds[t]->size(), 1e-4,
                  1e-4 * max_abs_of(*ds[t]));
      gf[t].insert(gf[t].end(), fs[t]->begin(), fs[t]->end());
      gd[t].insert(gd[t].end(), ds[t]->begin(), ds[t]->end());
    }
  }
  check_close("f32 vs f64 dh", gf[0].data(), gd[0].data(), gd[0].size(), 1e-4, 1e-4 * max_abs_of(gd[0]));
  check_close("f32 vs f64 dW", gf[1].data(), gd[1].data(), gd[1].size(), 1e-4, 1e-4 * max_abs_of(gd[1]));
}

QS_TEST(backward_null_outputs) {
  Rng rng(4);
  Problem p = make_problem(300, 8, 40, 16, kScattered, rng);
  VecD dloss = random_vector<double>(rng, p.N);
  Result<double> both = run_both<double>(p, dloss);
  Result<double> only_dh = run_both<double>(p, dloss, true, false);
  Result<double> only_dW = run_both<double>(p, dloss, false, true);
  QS_EXPECT(bit_equal(both.dh, only_dh.dh), "dh alone must equal dh computed with dW");
  QS_EXPECT(bit_equal(both.dW, only_dW.dW), "dW alone must equal dW computed with dh");
  QS_EXPECT(max_abs_of(only_dh.dW) == 0 && max_abs_of(only_dW.dh) == 0, "null outputs are not written");
  printf("    dh only / dW only match the combined call: %d %d\n", (int)bit_equal(both.dh, only_dh.dh),
         (int)bit_equal(both.dW, only_dW.dW));
}

// ---------------------------------------------------------------------------------------------
// SIMD paths, determinism, accumulation

QS_TEST(simd_paths) {
  const char* paths[] = {"generic", "avx2", ""};
  Rng rng(5);
  Problem p = make_problem(300, 24, 203, 40, kScattered, rng);
  VecD ref_loss, ref_lse;
  reference(p, p.h, p.W, ref_loss, ref_lse);
  VecD dloss = f32_exact(random_vector<double>(rng, p.N));
  Result<double> d = run_both<double>(p, dloss);
  for (const char* isa : paths) {
    ScopedSimd scoped(isa);
    printf("    QS_CPU_SIMD=%s\n", *isa ? isa : "(best)");
    Result<float> f = run_both<float>(p, dloss);
    Result<double> d2 = run_both<double>(p, dloss);
    check_close("  f32 loss vs dense", f.loss.data(), ref_loss.data(), p.N, 1e-5, 1e-5);
    check_close("  f64 loss vs dense", d2.loss.data(), ref_loss.data(), p.N, 1e-12, 1e-12);
    check_close("  f32 dh vs f64", f.dh.data(), d.dh.data(), d.dh.size(), 1e-4, 1e-4 * max_abs_of(d.dh));
    check_close("  f32 dW vs f64", f.dW.data(), d.dW.data(), d.dW.size(), 1e-4, 1e-4 * max_abs_of(d.dW));
  }
}

QS_TEST(deterministic_1_2_3_threads) {
  Rng rng(6);
  std::vector<Problem> ps;
  ps.push_back(make_problem(600, 64, 1500, 256, kRuns, rng));
  ps.push_back(make_problem(77, 96, 999, 0, kNone, rng));
  for (const Problem& p : ps) {
    VecD dloss = random_vector<double>(rng, p.N);
    auto same = [](const Result<float>& x, const Result<float>& y) {
      return bit_equal(x.loss, y.loss) && bit_equal(x.lse, y.lse) && bit_equal(x.dh, y.dh) && bit_equal(x.dW, y.dW);
    };
    bool eq = same_for_1_2_3_threads([&] { return run_both<float>(p, dloss); }, same);
    printf("    %-50s 1 vs 2 vs 3 threads: %s\n", p.desc.c_str(), eq ? "bit-identical" : "DIFFERENT");
    QS_EXPECT(eq, "%s: results differ between 1, 2 and 3 threads", p.desc.c_str());
  }
}

QS_TEST(backward_accumulates) {
  Rng rng(7);
  Problem p = make_problem(300, 8, 40, 16, kScattered, rng);
  VecD dloss = random_vector<double>(rng, p.N);
  Result<double> r = run_both<double>(p, dloss);
  VecD dh = random_vector<double>(rng, r.dh.size()), dW = random_vector<double>(rng, r.dW.size());
  VecD dh0 = dh, dW0 = dW;
  cpu::lmhead_xent_backward<double>(dh.data(), dW.data(), dloss.data(), p.h.data(), p.W.data(), p.targets.data(),
                                    r.lse.data(), p.N, p.C, p.V, p.ignore_index, p.chunk);
  for (size_t i = 0; i < dh.size(); i++) dh[i] -= dh0[i];
  for (size_t i = 0; i < dW.size(); i++) dW[i] -= dW0[i];
  check_close("dh(prefilled) - prefill == dh", dh.data(), r.dh.data(), dh.size(), 1e-9, 1e-12);
  check_close("dW(prefilled) - prefill == dW", dW.data(), r.dW.data(), dW.size(), 1e-9, 1e-12);
  // ignored rows get no gradient at all
  bool zero = true;
  for (int n = 0; n < p.N; n++)
    if (p.targets[n] == p.ignore_index)
      for (int c = 0; c < p.C; c++) zero &= r.dh[(size_t)n * p.C + c] == 0.0;
  QS_EXPECT(zero, "ignored rows must get dh = 0");
}

QS_TEST_MAIN()
