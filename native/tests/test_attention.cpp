// test_attention.cpp: the flash-style CPU attention (cpu/attention.h) against a naive dense
// reference, float64 finite-difference gradient checks of its backward, and its contracts.
//
//   - forward (out, lse) for float and double against a dense reference in double that builds
//     the whole masked (Tq, Tk) score matrix with -inf, softmaxes it and multiplies by V; over
//     B = 1..3, Tq = Tk in {1, 7, 33, 65, 130} (1, 2 and 3 key tiles, ragged edges),
//     H/Hkv in {4/4, 4/2, 4/1, 6/3}, d in {8, 16, 64, 5}, cycling through mask variants:
//     plain causal, left padding, sliding window, offset positions, random non-monotonic
//     positions with random validity, and a batch row whose keys are all invalid;
//   - Tq != Tk: decoding (Tq = 1, Tk = 20, q_pos = 19) and chunked prefill against a cache;
//   - backward: central differences in double of L = <out, w> for dq, dk, dv (GQA, padding,
//     window, odd sizes, several key tiles); float backward against double backward;
//   - every SIMD path the machine can run (QS_CPU_SIMD=generic/avx2/default) against the
//     reference, forward and backward;
//   - bit-identical results with 1, 2 and 3 OpenMP threads; backward adds (+=) into dq, dk, dv;
//     queries that see nothing give zeros, lse = -inf and zero, NaN-free gradients.
// lse is float by contract even for T = double, so the double backward recomputes P with
// a relative error of ~1e-7·|lse|: gradient checks use rtol 1e-5, atol 1e-7 instead of
// gradcheck's 1e-6, 1e-8 (a wrong term still shows up as an O(1) error).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/attention.h"
#include "gradcheck.h"
#include "harness.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;

// ---------------------------------------------------------------------------------------------
// Problems: shape, positions, validity and random q, k, v (float-representable, so the float
// and double kernels see identical inputs).

struct Problem {
  cpu::AttentionShape s;
  std::vector<int32_t> qpos;   // (B, Tq)
  std::vector<int32_t> kpos;   // (B, Tk)
  std::vector<uint8_t> kvalid; // (B, Tk), empty = null (all valid)
  VecD q, k, v;                // (B,Tq,H,d), (B,Tk,Hkv,d), (B,Tk,Hkv,d)
  double scale;
  std::string desc;
  const uint8_t* valid_ptr() const { return kvalid.empty() ? nullptr : kvalid.data(); }
  size_t nq() const { return (size_t)s.B * s.Tq * s.H * s.d; }
  size_t nk() const { return (size_t)s.B * s.Tk * s.Hkv * s.d; }
  size_t nl() const { return (size_t)s.B * s.H * s.Tq; }
};

enum Variant { kCausal, kLeftPad, kWindow, kOffset, kRandom, kDeadRow, kNumVariants };
static const char* variant_name(int v) {
  static const char* names[] = {"causal", "leftpad", "window", "offset", "random", "deadrow"};
  return names[v];
}

static void fill_qkv(Problem& p, Rng& rng) {
  p.q = f32_exact(random_vector<double>(rng, p.nq()));
  p.k = f32_exact(random_vector<double>(rng, p.nk()));
  p.v = f32_exact(random_vector<double>(rng, p.nk()));
  p.scale = 1.0 / std::sqrt((double)p.s.d);
}

// Self-attention (Tq = Tk = T) under one of the mask variants.
static Problem make_self(int B, int T, int H, int Hkv, int d, int variant, Rng& rng) {
  Problem p;
  p.s = cpu::AttentionShape{B, T, T, H, Hkv, d, 0};
  p.qpos.resize((size_t)B * T);
  p.kpos.resize((size_t)B * T);
  for (int b = 0; b < B; b++)
    for (int j = 0; j < T; j++) p.qpos[b * T + j] = p.kpos[b * T + j] = j;
  switch (variant) {
    case kCausal: break;
    case kLeftPad:  // row b has pad = (3b + 1) % T invalid keys at the start; positions from 0
      p.kvalid.assign((size_t)B * T, 1);
      for (int b = 0; b < B; b++) {
        int pad = (3 * b + 1) % T;
        for (int j = 0; j < T; j++) {
          p.kvalid[b * T + j] = j >= pad;
          p.qpos[b * T + j] = p.kpos[b * T + j] = std::max(0, j - pad);
        }
      }
      break;
    case kWindow: p.s.window = 1 + T % 7 + 3; break;
    case kOffset:  // q_pos = k_pos = 1000 + j, plus a window and a padded row
      p.s.window = 17;
      p.kvalid.assign((size_t)B * T, 1);
      for (int b = 0; b < B; b++)
        for (int j = 0; j < T; j++) {
          p.qpos[b * T + j] = p.kpos[b * T + j] = 1000 + j + 5 * b;
          if (b == B - 1 && j < T / 3) p.kvalid[b * T + j] = 0;
        }
      break;
    case kRandom:  // arbitrary positions (not monotonic), random validity, a window
      p.s.window = (T + 1) / 2 + 1;
      p.kvalid.assign((size_t)B * T, 1);
      for (size_t i = 0; i < p.qpos.size(); i++) {
        p.qpos[i] = rng.below(2 * T + 1) - T / 2;
        p.kpos[i] = rng.below(2 * T + 1) - T / 2;
        p.kvalid[i] = rng.uniform() < 0.8;
      }
      break;
    case kDeadRow:  // batch row 0 has no valid key at all: all its queries see nothing
      p.kvalid.assign((size_t)B * T, 1);
      for (int j = 0; j < T; j++) p.kvalid[j] = 0;
      break;
  }
  char buf[160];
  snprintf(buf, sizeof buf, "B=%d T=%d H=%d Hkv=%d d=%d %s window=%d", B, T, H, Hkv, d,
           variant_name(variant), p.s.window);
  p.desc = buf;
  fill_qkv(p, rng);
  return p;
}

// Queries continue a cached prefix: Tq queries at positions Tk - Tq .. Tk - 1 against Tk keys.
static Problem make_cached(int B, int Tq, int Tk, int H, int Hkv, int d, int window, bool pad, Rng& rng) {
  Problem p;
  p.s = cpu::AttentionShape{B, Tq, Tk, H, Hkv, d, window};
  p.qpos.resize((size_t)B * Tq);
  p.kpos.resize((size_t)B * Tk);
  if (pad) p.kvalid.assign((size_t)B * Tk, 1);
  for (int b = 0; b < B; b++) {
    for (int j = 0; j < Tk; j++) p.kpos[b * Tk + j] = j;
    for (int i = 0; i < Tq; i++) p.qpos[b * Tq + i] = Tk - Tq + i;
    if (pad)
      for (int j = 0; j < 2 * b + 1 && j < Tk; j++) p.kvalid[b * Tk + j] = 0;
  }
  char buf[160];
  snprintf(buf, sizeof buf, "B=%d Tq=%d Tk=%d H=%d Hkv=%d d=%d cached window=%d pad=%d", B, Tq, Tk, H,
           Hkv, d, window, (int)pad);
  p.desc = buf;
  fill_qkv(p, rng);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Dense reference in double: the full masked (Tq, Tk) score matrix per (b, h).

static bool visible(const Problem& p, int b, int i, int j) {
  const auto& s = p.s;
  if (!p.kvalid.empty() && !p.kvalid[(size_t)b * s.Tk + j]) return false;
  int64_t qp = p.qpos[(size_t)b * s.Tq + i], kp = p.kpos[(size_t)b * s.Tk + j];
  if (kp > qp) return false;
  if (s.window > 0 && qp - kp >= s.window) return false;
  return true;
}

static void reference_forward(const Problem& p, const VecD& q, const VecD& k, const VecD& v, VecD& out,
                              VecD& lse) {
  const auto& s = p.s;
  out.assign(p.nq(), 0.0);
  lse.assign(p.nl(), 0.0);
  const int G = s.H / s.Hkv;
  std::vector<double> S((size_t)s.Tq * s.Tk);
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < s.H; h++) {
      const int hk = h / G;
      for (int i = 0; i < s.Tq; i++)
        for (int j = 0; j < s.Tk; j++) {
          double acc = 0;
          for (int c = 0; c < s.d; c++)
            acc += q[(((size_t)b * s.Tq + i) * s.H + h) * s.d + c] * k[(((size_t)b * s.Tk + j) * s.Hkv + hk) * s.d + c];
          S[(size_t)i * s.Tk + j] = visible(p, b, i, j) ? acc * p.scale : -INFINITY;
        }
      for (int i = 0; i < s.Tq; i++) {
        double* row = &S[(size_t)i * s.Tk];
        double m = -INFINITY;
        for (int j = 0; j < s.Tk; j++) m = std::max(m, row[j]);
        double* o = &out[(((size_t)b * s.Tq + i) * s.H + h) * s.d];
        double& ls = lse[((size_t)b * s.H + h) * s.Tq + i];
        if (m == -INFINITY) {
          ls = -INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < s.Tk; j++) sum += (row[j] = std::exp(row[j] - m));
        for (int j = 0; j < s.Tk; j++) {
          const double pj = row[j] / sum;
          for (int c = 0; c < s.d; c++) o[c] += pj * v[(((size_t)b * s.Tk + j) * s.Hkv + hk) * s.d + c];
        }
        ls = m + std::log(sum);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the kernels

template <typename T>
struct Result {
  std::vector<T> out, dq, dk, dv;
  std::vector<float> lse;
};

template <typename T>
static Result<T> run_forward(const Problem& p) {
  Result<T> r;
  std::vector<T> q(p.q.begin(), p.q.end()), k(p.k.begin(), p.k.end()), v(p.v.begin(), p.v.end());
  r.out.assign(p.nq(), T(7));  // garbage: the forward must overwrite it
  r.lse.assign(p.nl(), 7.f);
  cpu::attention_forward<T>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), p.qpos.data(),
                            p.kpos.data(), p.valid_ptr(), p.s, (T)p.scale);
  return r;
}

// Forward, then backward of L = <out, w> (dout = w), into zeroed gradients.
template <typename T>
static Result<T> run_both(const Problem& p, const VecD& w) {
  Result<T> r = run_forward<T>(p);
  std::vector<T> q(p.q.begin(), p.q.end()), k(p.k.begin(), p.k.end()), v(p.v.begin(), p.v.end());
  std::vector<T> dout(w.begin(), w.end());
  r.dq.assign(p.nq(), T(0));
  r.dk.assign(p.nk(), T(0));
  r.dv.assign(p.nk(), T(0));
  cpu::attention_backward<T>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(),
                             v.data(), r.out.data(), r.lse.data(), p.qpos.data(), p.kpos.data(),
                             p.valid_ptr(), p.s, (T)p.scale);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward against the dense reference

static std::vector<Problem> forward_problems(Rng& rng) {
  std::vector<Problem> ps;
  const int Ts[] = {1, 7, 33, 65, 130};
  const int HH[][2] = {{4, 4}, {4, 2}, {4, 1}, {6, 3}};
  const int ds[] = {8, 16, 64, 5};
  int n = 0;
  for (int T : Ts)
    for (auto& hh : HH)
      for (int d : ds) {
        // B and the mask variant cycle with the shape; the single largest shape is left out
        // to keep the dense reference cheap (T = 130, d = 64 is covered with H = 4).
        if (T == 130 && d == 64 && hh[0] == 6) continue;
        ps.push_back(make_self(1 + n % 3, T, hh[0], hh[1], d, n % kNumVariants, rng));
        n++;
      }
  ps.push_back(make_cached(2, 1, 20, 4, 2, 16, 0, false, rng));   // decode: q_pos = 19
  ps.push_back(make_cached(3, 1, 20, 4, 1, 8, 6, true, rng));     // decode, window, padding
  ps.push_back(make_cached(1, 7, 70, 6, 3, 5, 0, false, rng));    // chunked prefill, 2 key tiles
  ps.push_back(make_cached(2, 65, 130, 4, 2, 16, 40, true, rng)); // prefill against a cache
  return ps;
}

template <typename T>
static void forward_vs_reference(const char* tname, double out_rtol, double out_atol, double lse_tol) {
  Rng rng(42);
  std::vector<Problem> ps = forward_problems(rng);
  VecD all_got_out, all_want_out, all_got_lse, all_want_lse;
  int dead = 0;
  for (const Problem& p : ps) {
    VecD ref_out, ref_lse;
    reference_forward(p, p.q, p.k, p.v, ref_out, ref_lse);
    Result<T> r = run_forward<T>(p);
    quiet_close(std::string(tname) + " out " + p.desc, r.out.data(), ref_out.data(), ref_out.size(), out_rtol,
                out_atol);
    VecD gl = lse_comparable(r.lse), wl = lse_comparable(ref_lse);
    quiet_close(std::string(tname) + " lse " + p.desc, gl.data(), wl.data(), wl.size(), lse_tol, lse_tol);
    for (size_t i = 0; i < ref_lse.size(); i++) dead += std::isinf(ref_lse[i]);
    all_got_out.insert(all_got_out.end(), r.out.begin(), r.out.end());
    all_want_out.insert(all_want_out.end(), ref_out.begin(), ref_out.end());
    all_got_lse.insert(all_got_lse.end(), gl.begin(), gl.end());
    all_want_lse.insert(all_want_lse.end(), wl.begin(), wl.end());
  }
  printf("    %zu problems, %d queries with no visible key\n", ps.size(), dead);
  QS_EXPECT(dead > 0, "the problem set should include queries that see nothing");
  std::string lo = std::string(tname) + " out vs dense (all problems)";
  std::string ll = std::string(tname) + " lse vs dense (all problems)";
  check_close(lo.c_str(), all_got_out.data(), all_want_out.data(), all_want_out.size(), out_rtol, out_atol);
  check_close(ll.c_str(), all_got_lse.data(), all_want_lse.data(), all_want_lse.size(), lse_tol, lse_tol);
}

QS_TEST(forward_double_vs_dense) { forward_vs_reference<double>("f64", 1e-11, 1e-12, 1e-6); }
QS_TEST(forward_float_vs_dense) { forward_vs_reference<float>("f32", 1e-4, 2e-6, 1e-6); }

// A query with no visible key: out = 0 exactly and lse = -inf; backward gives it no gradient
// and produces no NaN anywhere.
QS_TEST(no_visible_key) {
  Rng rng(7);
  Problem p = make_self(2, 9, 4, 2, 8, kDeadRow, rng);
  p.kvalid[1 * 9 + 0] = 0;  // in row 1, query 0 (position 0) sees only key 0: now nothing
  VecD w = random_vector<double>(rng, p.nq());
  Result<float> r = run_both<float>(p, w);
  bool zeros = true, lse_ok = true, finite = true;
  const auto& s = p.s;
  auto dead = [&](int b, int i) { return b == 0 || (b == 1 && i == 0); };
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < s.H; h++)
      for (int i = 0; i < s.Tq; i++) {
        float ls = r.lse[((size_t)b * s.H + h) * s.Tq + i];
        if (dead(b, i) != (std::isinf(ls) && ls < 0)) lse_ok = false;
        for (int c = 0; c < s.d; c++) {
          size_t o = (((size_t)b * s.Tq + i) * s.H + h) * s.d + c;
          if (dead(b, i) && (r.out[o] != 0.f || r.dq[o] != 0.f)) zeros = false;
        }
      }
  for (float x : r.out) finite &= std::isfinite(x);
  for (float x : r.dq) finite &= std::isfinite(x);
  for (float x : r.dk) finite &= std::isfinite(x);
  for (float x : r.dv) finite &= std::isfinite(x);
  for (size_t i = 0; i < (size_t)s.Tk * s.Hkv * s.d; i++) zeros &= r.dk[i] == 0.f && r.dv[i] == 0.f;  // row 0
  QS_EXPECT(zeros, "dead queries (and row 0's keys) must have zero outputs and gradients");
  QS_EXPECT(lse_ok, "lse must be -inf exactly for the queries that see nothing");
  QS_EXPECT(finite, "no NaN / inf in out, dq, dk, dv");
  printf("    dead queries: zeros=%d lse=-inf:%d finite=%d\n", (int)zeros, (int)lse_ok, (int)finite);
}

// ---------------------------------------------------------------------------------------------
// Backward: float64 finite differences of L = <out, w>

static void gradcheck_problem(Problem p, uint64_t seed) {
  Rng rng(seed);
  VecD w = random_vector<double>(rng, p.nq());
  Result<double> r = run_both<double>(p, w);
  auto loss = [&]() {
    Result<double> f = run_forward<double>(p);
    return dot(f.out, w);
  };
  printf("    %s\n", p.desc.c_str());
  // lse is stored as float (see the file comment): P carries a relative error of up to
  // ~1e-7·|lse|, which sums of P-weighted terms with cancelling signs (dv) see as ~1e-8 absolute.
  const double rtol = 1e-5, atol = 1e-7;
  check_gradient("dq", p.q, r.dq, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dk", p.k, r.dk, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dv", p.v, r.dv, loss, rng, 40, 1e-6, rtol, atol);
}

QS_TEST(gradcheck_small_gqa_padding_window) {
  Rng rng(11);
  Problem p = make_self(2, 9, 4, 2, 5, kLeftPad, rng);
  p.s.window = 4;
  gradcheck_problem(p, 101);
}

QS_TEST(gradcheck_multi_tile_random_positions) {
  Rng rng(12);
  gradcheck_problem(make_self(1, 70, 6, 3, 3, kRandom, rng), 102);  // 2 key tiles, mqa-ish groups
}

QS_TEST(gradcheck_causal_mqa_130) {
  Rng rng(13);
  gradcheck_problem(make_self(1, 130, 2, 1, 4, kCausal, rng), 103);  // 3 tiles, tile skipping
}

QS_TEST(gradcheck_decode_and_cache) {
  Rng rng(14);
  gradcheck_problem(make_cached(2, 1, 20, 4, 1, 7, 0, true, rng), 104);
  gradcheck_problem(make_cached(1, 9, 75, 4, 2, 6, 30, false, rng), 105);
}

QS_TEST(gradcheck_dead_row_window) {
  Rng rng(15);
  gradcheck_problem(make_self(2, 12, 3, 3, 4, kDeadRow, rng), 106);
}

// ---------------------------------------------------------------------------------------------
// float backward against double backward, on the same (float-representable) inputs

static std::vector<Problem> backward_problems(Rng& rng) {
  std::vector<Problem> ps;
  ps.push_back(make_self(2, 130, 4, 2, 16, kLeftPad, rng));
  ps.push_back(make_self(1, 65, 6, 3, 64, kWindow, rng));
  ps.push_back(make_self(3, 33, 4, 1, 5, kRandom, rng));
  ps.push_back(make_self(2, 100, 4, 4, 8, kOffset, rng));
  ps.push_back(make_self(2, 7, 4, 2, 8, kDeadRow, rng));
  ps.push_back(make_cached(2, 1, 20, 4, 2, 16, 0, true, rng));
  ps.push_back(make_cached(1, 20, 150, 4, 2, 16, 0, false, rng));
  return ps;
}

static void compare_f32_f64_backward(const char* prefix, double rtol) {
  Rng rng(21);
  std::vector<Problem> ps = backward_problems(rng);
  VecD gf[3], gd[3];
  const char* names[3] = {"dq", "dk", "dv"};
  for (const Problem& p : ps) {
    VecD w = f32_exact(random_vector<double>(rng, p.nq()));
    Result<float> f = run_both<float>(p, w);
    Result<double> d = run_both<double>(p, w);
    const std::vector<float>* fs[3] = {&f.dq, &f.dk, &f.dv};
    const VecD* ds[3] = {&d.dq, &d.dk, &d.dv};
    for (int t = 0; t < 3; t++) {
      // relative to the tensor's size: elements near zero have no meaningful relative error
      double atol = rtol * std::max(max_abs_of(*ds[t]), 1e-30);
      quiet_close(std::string(prefix) + " " + names[t] + " " + p.desc, fs[t]->data(), ds[t]->data(),
                  ds[t]->size(), rtol, atol);
      gf[t].insert(gf[t].end(), fs[t]->begin(), fs[t]->end());
      gd[t].insert(gd[t].end(), ds[t]->begin(), ds[t]->end());
    }
  }
  for (int t = 0; t < 3; t++) {
    std::string label = std::string(prefix) + " f32 vs f64 " + names[t];
    check_close(label.c_str(), gf[t].data(), gd[t].data(), gd[t].size(), rtol, rtol * max_abs_of(gd[t]));
  }
}

QS_TEST(backward_float_vs_double) { compare_f32_f64_backward("", 1e-4); }

// Each SIMD path this machine runs, forward against the dense reference and backward against
// the double backward (the default path's numbers are the ones above).
QS_TEST(simd_paths) {
  const char* paths[] = {"generic", "avx2", ""};
  for (const char* isa : paths) {
    ScopedSimd scoped(isa);
    printf("    QS_CPU_SIMD=%s\n", *isa ? isa : "(best)");
    Rng rng(31);
    Problem p = make_self(2, 130, 4, 2, 16, kRandom, rng);
    VecD ref_out, ref_lse;
    reference_forward(p, p.q, p.k, p.v, ref_out, ref_lse);
    Result<float> f = run_forward<float>(p);
    Result<double> d = run_forward<double>(p);
    check_close("  f32 out vs dense", f.out.data(), ref_out.data(), ref_out.size(), 1e-4, 2e-6);
    check_close("  f64 out vs dense", d.out.data(), ref_out.data(), ref_out.size(), 1e-11, 1e-12);
    VecD gl = lse_comparable(f.lse), wl = lse_comparable(ref_lse);
    check_close("  f32 lse vs dense", gl.data(), wl.data(), wl.size(), 1e-6, 1e-6);
  }
  // backward: every path's float gradients against the best path's double gradients
  Rng rng(32);
  Problem p = make_self(2, 100, 4, 2, 24, kLeftPad, rng);
  p.s.window = 50;
  VecD w = f32_exact(random_vector<double>(rng, p.nq()));
  Result<double> d = run_both<double>(p, w);
  for (const char* isa : paths) {
    ScopedSimd scoped(isa);
    printf("    QS_CPU_SIMD=%s backward\n", *isa ? isa : "(best)");
    Result<float> f = run_both<float>(p, w);
    Result<double> d2 = run_both<double>(p, w);
    check_close("  f32 dq vs f64", f.dq.data(), d.dq.data(), d.dq.size(), 1e-4, 1e-4 * max_abs_of(d.dq));
    check_close("  f32 dk vs f64", f.dk.data(), d.dk.data(), d.dk.size(), 1e-4, 1e-4 * max_abs_of(d.dk));
    check_close("  f32 dv vs f64", f.dv.data(), d.dv.data(), d.dv.size(), 1e-4, 1e-4 * max_abs_of(d.dv));
    check_close("  f64 dk vs f64 (best path)", d2.dk.data(), d.dk.data(), d.dk.size(), 1e-11, 1e-13);
  }
}

// ---------------------------------------------------------------------------------------------
// Determinism and accumulation

QS_TEST(deterministic_1_2_3_threads) {
  Rng rng(41);
  std::vector<Problem> ps;
  ps.push_back(make_self(2, 130, 4, 2, 16, kLeftPad, rng));
  ps.push_back(make_self(1, 200, 6, 3, 8, kRandom, rng));
  for (const Problem& p : ps) {
    VecD w = random_vector<double>(rng, p.nq());
    auto same = [](const Result<float>& x, const Result<float>& y) {
      return bit_equal(x.out, y.out) && bit_equal(x.lse, y.lse) && bit_equal(x.dq, y.dq) && bit_equal(x.dk, y.dk) &&
             bit_equal(x.dv, y.dv);
    };
    bool eq = same_for_1_2_3_threads([&] { return run_both<float>(p, w); }, same);
    printf("    %-60s 1 vs 2 vs 3 threads: %s\n", p.desc.c_str(), eq ? "bit-identical" : "DIFFERENT");
    QS_EXPECT(eq, "%s: results differ between 1, 2 and 3 threads", p.desc.c_str());
  }
}

QS_TEST(backward_accumulates) {
  Rng rng(51);
  Problem p = make_self(2, 70, 4, 2, 8, kWindow, rng);
  VecD w = random_vector<double>(rng, p.nq());
  Result<double> r = run_both<double>(p, w);
  VecD dq = random_vector<double>(rng, p.nq()), dk = random_vector<double>(rng, p.nk()),
       dv = random_vector<double>(rng, p.nk());
  VecD dq0 = dq, dk0 = dk, dv0 = dv;
  cpu::attention_backward<double>(dq.data(), dk.data(), dv.data(), w.data(), p.q.data(), p.k.data(), p.v.data(),
                                  r.out.data(), r.lse.data(), p.qpos.data(), p.kpos.data(), p.valid_ptr(), p.s,
                                  p.scale);
  VecD iq(dq.size()), ik(dk.size()), iv(dv.size());
  for (size_t i = 0; i < dq.size(); i++) iq[i] = dq[i] - dq0[i];
  for (size_t i = 0; i < dk.size(); i++) ik[i] = dk[i] - dk0[i];
  for (size_t i = 0; i < dv.size(); i++) iv[i] = dv[i] - dv0[i];
  check_close("dq(prefilled) - prefill == dq", iq.data(), r.dq.data(), iq.size(), 1e-9, 1e-12);
  check_close("dk(prefilled) - prefill == dk", ik.data(), r.dk.data(), ik.size(), 1e-9, 1e-12);
  check_close("dv(prefilled) - prefill == dv", iv.data(), r.dv.data(), iv.size(), 1e-9, 1e-12);
}

QS_TEST_MAIN()
