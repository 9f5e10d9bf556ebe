// test_thought_attention.cpp: Quiet-STaR's masked parallel thought attention
// (cpu/thought_attention.h) against a dense masked reference, float64 finite-difference
// gradient checks, and its contracts (spec §9.3).
//
// The reference is literal: per row r it lays the keys out as the reference code's KV cache
// does, [base block | chain step 1 | ... | chain step Sk], each block T wide, materialises the
// spec §2.5 predicate for query (r, s, i) and key (s', j)
//     (s' = 0 and j <= i and i - j < W and valid(b, j))  or  (1 <= s' <= s and j = i and valid(b, i))
// as a 0 / -inf mask, and runs plain softmax attention in double (the base block of row r is
// its document's K/V, so base-key gradients are summed over the document's P rows there).
//
//   - forward (out, lse) and backward (dq, dk_base, dv_base, dk_chain, dv_chain), f64 and f32,
//     over a sweep: P = 1, 2, 3; GQA 4:4, 4:2, 4:1; T = 1, 7, 33 (and 130: many query blocks);
//     S = 1; packed (sFirst 1, Sq = Sk = S) and windows of query steps (Sq = 1 at several s with
//     Sk > s: chain steps > s must be ignored); sliding window W < T; validity: all valid,
//     right padding (invalid i included), left padding, random, a document with no valid key;
//   - incremental-mode rows equal the corresponding packed-mode rows, even with garbage in the
//     chain steps after s;
//   - finite differences in f64 (gradcheck.h) for every input;
//   - every SIMD path; bit-identical results with 1, 2 and 3 threads; "+=" gradients; null
//     gradient pointers; queries that see nothing; the ops' argument validation.
// lse is float by contract even for T = double, so the double backward recomputes P with a
// relative error of ~1e-7·|lse|: f64 gradient comparisons use rtol 1e-5 (a wrong term is O(1)).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cpu/thought_attention.h"
#include "gradcheck.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar/engine.h"
#include "quietstar/ops.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;

// ---------------------------------------------------------------------------------------------
// Problems

enum Validity { kAllValid, kRightPad, kLeftPad, kRandomValid, kDeadDoc, kNumValidity };
static const char* validity_name(int v) {
  static const char* names[] = {"all-valid", "right-pad", "left-pad", "random-valid", "dead-doc"};
  return names[v];
}

struct Problem {
  cpu::ThoughtAttentionShape s{};
  std::vector<uint8_t> valid;  // (B, T), empty = null (all valid)
  VecD q, kb, vb, kc, vc;      // (R,Sq,T,H,d), (B,T,Hkv,d) x2, (R,Sk,T,Hkv,d) x2
  double scale = 0;
  std::string desc;
  int R() const { return s.B * s.P; }
  size_t nq() const { return (size_t)R() * s.Sq * s.T * s.H * s.d; }
  size_t nkb() const { return (size_t)s.B * s.T * s.Hkv * s.d; }
  size_t nkc() const { return (size_t)R() * s.Sk * s.T * s.Hkv * s.d; }
  size_t nl() const { return (size_t)R() * s.Sq * s.T * s.H; }
  const uint8_t* valid_ptr() const { return valid.empty() ? nullptr : valid.data(); }
  bool is_valid(int b, int j) const { return valid.empty() || valid[(size_t)b * s.T + j]; }
};

static Problem make_problem(int B, int P, int T, int Sq, int s_first, int Sk, int H, int Hkv, int d, int window,
                            int validity, Rng& rng) {
  Problem p;
  p.s = cpu::ThoughtAttentionShape{B, P, T, Sq, s_first, Sk, H, Hkv, d, window};
  if (validity != kAllValid) p.valid.assign((size_t)B * T, 1);
  for (int b = 0; b < B && validity != kAllValid; b++)
    for (int j = 0; j < T; j++) {
      uint8_t& v = p.valid[(size_t)b * T + j];
      switch (validity) {
        case kRightPad: v = j < T - (2 * b + 1) % (T + 1); break;  // document b: T - (2b+1) tokens, then pad
        case kLeftPad: v = j >= (3 * b + 1) % T; break;
        case kRandomValid: v = rng.uniform() < 0.75; break;
        case kDeadDoc: v = b == 0 ? 0 : j < T - b; break;  // document 0 has no valid key at all
      }
    }
  p.q = f32_exact(random_vector<double>(rng, p.nq()));
  p.kb = f32_exact(random_vector<double>(rng, p.nkb()));
  p.vb = f32_exact(random_vector<double>(rng, p.nkb()));
  p.kc = f32_exact(random_vector<double>(rng, p.nkc()));
  p.vc = f32_exact(random_vector<double>(rng, p.nkc()));
  p.scale = 1.0 / std::sqrt((double)d);
  char buf[200];
  snprintf(buf, sizeof buf, "B=%d P=%d T=%d Sq=%d sFirst=%d Sk=%d H=%d Hkv=%d d=%d W=%d %s", B, P, T, Sq, s_first, Sk,
           H, Hkv, d, window, validity_name(validity));
  p.desc = buf;
  return p;
}

// Packed mode: every step at once.
static Problem make_packed(int B, int P, int T, int S, int H, int Hkv, int d, int window, int validity, Rng& rng) {
  return make_problem(B, P, T, S, 1, S, H, Hkv, d, window, validity, rng);
}

// ---------------------------------------------------------------------------------------------
// Dense reference (double): the literal mask of spec §2.5 over [base | chain 1 | ... | chain Sk].

struct Dense {
  VecD out, lse, dq, dkb, dvb, dkc, dvc;
};

static Dense dense(const Problem& p, const VecD& q, const VecD& kb, const VecD& vb, const VecD& kc, const VecD& vc,
                   const VecD* dout) {
  const auto& s = p.s;
  const int T = s.T, d = s.d, G = s.H / s.Hkv, nkeys = (1 + s.Sk) * T;
  Dense r;
  r.out.assign(p.nq(), 0.0);
  r.lse.assign(p.nl(), 0.0);
  if (dout) {
    r.dq.assign(p.nq(), 0.0);
    r.dkb.assign(p.nkb(), 0.0);
    r.dvb.assign(p.nkb(), 0.0);
    r.dkc.assign(p.nkc(), 0.0);
    r.dvc.assign(p.nkc(), 0.0);
  }
  std::vector<double> sc(nkeys), pr(nkeys);
  for (int row = 0; row < p.R(); row++) {
    const int b = row / s.P;
    for (int sq = 0; sq < s.Sq; sq++) {
      const int step = s.s_first + sq;
      for (int i = 0; i < T; i++)
        for (int h = 0; h < s.H; h++) {
          const int hk = h / G;
          // key (block, j): offset of its vector in kb/vb (block 0) or kc/vc (block >= 1)
          auto key_off = [&](int blk, int j) -> size_t {
            if (blk == 0) return (((size_t)b * T + j) * s.Hkv + hk) * d;
            return ((((size_t)row * s.Sk + blk - 1) * T + j) * s.Hkv + hk) * d;
          };
          auto allowed = [&](int blk, int j) {
            if (blk == 0) return j <= i && (s.window <= 0 || i - j < s.window) && p.is_valid(b, j);
            return blk <= step && j == i && p.is_valid(b, i);
          };
          const size_t qo = ((((size_t)row * s.Sq + sq) * T + i) * s.H + h) * d;
          double m = -INFINITY;
          for (int k = 0; k < nkeys; k++) {
            const int blk = k / T, j = k % T;
            if (!allowed(blk, j)) {
              sc[k] = -INFINITY;
              continue;
            }
            const double* kv = (blk == 0 ? kb.data() : kc.data()) + key_off(blk, j);
            double acc = 0;
            for (int c = 0; c < d; c++) acc += q[qo + c] * kv[c];
            sc[k] = acc * p.scale;
            m = std::max(m, sc[k]);
          }
          double& ls = r.lse[(((size_t)row * s.Sq + sq) * T + i) * s.H + h];
          if (m == -INFINITY) {
            ls = -INFINITY;
            continue;
          }
          double sum = 0;
          for (int k = 0; k < nkeys; k++) sum += (pr[k] = std::exp(sc[k] - m));
          for (int k = 0; k < nkeys; k++) pr[k] /= sum;
          ls = m + std::log(sum);
          for (int k = 0; k < nkeys; k++) {
            if (pr[k] == 0) continue;
            const int blk = k / T, j = k % T;
            const double* vv = (blk == 0 ? vb.data() : vc.data()) + key_off(blk, j);
            for (int c = 0; c < d; c++) r.out[qo + c] += pr[k] * vv[c];
          }
          if (!dout) continue;
          // dP_k = dout·v_k, D = Σ P dP, dS = P (dP - D)
          const double* g = dout->data() + qo;
          double D = 0;
          for (int c = 0; c < d; c++) D += g[c] * r.out[qo + c];
          for (int k = 0; k < nkeys; k++) {
            if (pr[k] == 0) continue;
            const int blk = k / T, j = k % T;
            const size_t ko = key_off(blk, j);
            const double* kv = (blk == 0 ? kb.data() : kc.data()) + ko;
            const double* vv = (blk == 0 ? vb.data() : vc.data()) + ko;
            double dp = 0;
            for (int c = 0; c < d; c++) dp += g[c] * vv[c];
            const double ds = pr[k] * (dp - D);
            double* dk = (blk == 0 ? r.dkb.data() : r.dkc.data()) + ko;
            double* dv = (blk == 0 ? r.dvb.data() : r.dvc.data()) + ko;
            for (int c = 0; c < d; c++) {
              r.dq[qo + c] += p.scale * ds * kv[c];
              dk[c] += p.scale * ds * q[qo + c];
              dv[c] += pr[k] * g[c];
            }
          }
        }
    }
  }
  return r;
}

static Dense dense(const Problem& p, const VecD* dout = nullptr) { return dense(p, p.q, p.kb, p.vb, p.kc, p.vc, dout); }

// ---------------------------------------------------------------------------------------------
// Running the kernel

template <typename T>
struct Result {
  std::vector<T> out, dq, dkb, dvb, dkc, dvc;
  std::vector<float> lse;
};

template <typename T>
static std::vector<T> conv(const VecD& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
static Result<T> run_forward(const Problem& p) {
  Result<T> r;
  auto q = conv<T>(p.q), kb = conv<T>(p.kb), vb = conv<T>(p.vb), kc = conv<T>(p.kc), vc = conv<T>(p.vc);
  r.out.assign(p.nq(), T(7));  // garbage: the forward must overwrite it
  r.lse.assign(p.nl(), 7.f);
  cpu::thought_attention_forward<T>(r.out.data(), r.lse.data(), q.data(), kb.data(), vb.data(), kc.data(), vc.data(),
                                    p.valid_ptr(), p.s, (T)p.scale);
  return r;
}

// Forward, then backward of L = <out, w> (dout = w) into zeroed gradients.
template <typename T>
static Result<T> run_both(const Problem& p, const VecD& w) {
  Result<T> r = run_forward<T>(p);
  auto q = conv<T>(p.q), kb = conv<T>(p.kb), vb = conv<T>(p.vb), kc = conv<T>(p.kc), vc = conv<T>(p.vc);
  auto dout = conv<T>(w);
  r.dq.assign(p.nq(), T(0));
  r.dkb.assign(p.nkb(), T(0));
  r.dvb.assign(p.nkb(), T(0));
  r.dkc.assign(p.nkc(), T(0));
  r.dvc.assign(p.nkc(), T(0));
  cpu::thought_attention_backward<T>(r.dq.data(), r.dkb.data(), r.dvb.data(), r.dkc.data(), r.dvc.data(), dout.data(),
                                     q.data(), kb.data(), vb.data(), kc.data(), vc.data(), r.out.data(),
                                     r.lse.data(), p.valid_ptr(), p.s, (T)p.scale);
  return r;
}

// ---------------------------------------------------------------------------------------------
// The sweep

static std::vector<Problem> sweep_problems(Rng& rng) {
  std::vector<Problem> ps;
  const int Ts[] = {1, 7, 33};
  const int HH[][2] = {{4, 4}, {4, 2}, {4, 1}};
  const int Ps[] = {1, 2, 3};
  int n = 0;
  for (int T : Ts)
    for (auto& hh : HH)
      for (int P : Ps) {
        const int S = 1 + n % 4;                       // S = 1..4
        const int B = 1 + (n / 2) % 2;                 // 1 or 2 documents
        const int d = n % 3 == 0 ? 5 : n % 3 == 1 ? 8 : 16;
        const int window = n % 4 == 3 && T > 2 ? T / 2 : 0;
        ps.push_back(make_packed(B, P, T, S, hh[0], hh[1], d, window, n % kNumValidity, rng));
        n++;
      }
  // Windows of query steps: one step at s against a cache of Sk > s steps, and a middle range.
  ps.push_back(make_problem(2, 2, 7, 1, 1, 4, 4, 2, 8, 0, kRightPad, rng));
  ps.push_back(make_problem(2, 2, 7, 1, 3, 4, 4, 2, 8, 0, kRightPad, rng));
  ps.push_back(make_problem(1, 3, 33, 1, 2, 5, 4, 1, 5, 9, kRandomValid, rng));
  ps.push_back(make_problem(2, 1, 33, 2, 2, 6, 4, 4, 16, 0, kLeftPad, rng));
  // Many query blocks (T·P·Sq·G = 130·2·3·2 gathered queries per (document, kv head)), a window.
  ps.push_back(make_packed(2, 2, 130, 3, 4, 2, 8, 40, kRightPad, rng));
  ps.push_back(make_packed(1, 1, 130, 1, 4, 4, 64, 0, kAllValid, rng));
  return ps;
}

template <typename T>
static void forward_vs_dense(const char* tname, double out_rtol, double out_atol, double lse_tol) {
  Rng rng(42);
  std::vector<Problem> ps = sweep_problems(rng);
  VecD go, wo, gl, wl;
  int dead = 0, invalid_i = 0;
  for (const Problem& p : ps) {
    Dense ref = dense(p);
    Result<T> r = run_forward<T>(p);
    quiet_close(std::string(tname) + " out " + p.desc, r.out.data(), ref.out.data(), ref.out.size(), out_rtol,
                out_atol);
    VecD g = lse_comparable(r.lse), w = lse_comparable(ref.lse);
    quiet_close(std::string(tname) + " lse " + p.desc, g.data(), w.data(), w.size(), lse_tol, lse_tol);
    for (double x : ref.lse) dead += std::isinf(x);
    for (int b = 0; b < p.s.B; b++)
      for (int i = 0; i < p.s.T; i++) invalid_i += !p.is_valid(b, i);
    go.insert(go.end(), r.out.begin(), r.out.end());
    wo.insert(wo.end(), ref.out.begin(), ref.out.end());
    gl.insert(gl.end(), g.begin(), g.end());
    wl.insert(wl.end(), w.begin(), w.end());
  }
  printf("    %zu problems, %d invalid positions, %d queries with no visible key\n", ps.size(), invalid_i, dead);
  QS_EXPECT(dead > 0 && invalid_i > 0, "the sweep should include invalid positions and queries that see nothing");
  check_close((std::string(tname) + " out vs dense (all problems)").c_str(), go.data(), wo.data(), wo.size(), out_rtol,
              out_atol);
  check_close((std::string(tname) + " lse vs dense (all problems)").c_str(), gl.data(), wl.data(), wl.size(), lse_tol,
              lse_tol);
}

QS_TEST(forward_f64_vs_dense) { forward_vs_dense<double>("f64", 1e-11, 1e-12, 1e-6); }
QS_TEST(forward_f32_vs_dense) { forward_vs_dense<float>("f32", 1e-4, 2e-6, 2e-6); }

template <typename T>
static void backward_vs_dense(const char* tname, double rtol) {
  Rng rng(43);
  std::vector<Problem> ps = sweep_problems(rng);
  const char* names[5] = {"dq", "dk_base", "dv_base", "dk_chain", "dv_chain"};
  VecD got[5], want[5];
  for (const Problem& p : ps) {
    VecD w = f32_exact(random_vector<double>(rng, p.nq()));
    Dense ref = dense(p, &w);
    Result<T> r = run_both<T>(p, w);
    const std::vector<T>* gs[5] = {&r.dq, &r.dkb, &r.dvb, &r.dkc, &r.dvc};
    const VecD* ws[5] = {&ref.dq, &ref.dkb, &ref.dvb, &ref.dkc, &ref.dvc};
    for (int t = 0; t < 5; t++) {
      const double atol = rtol * std::max(max_abs_of(*ws[t]), 1e-30);
      quiet_close(std::string(tname) + " " + names[t] + " " + p.desc, gs[t]->data(), ws[t]->data(), ws[t]->size(),
                  rtol, atol);
      got[t].insert(got[t].end(), gs[t]->begin(), gs[t]->end());
      want[t].insert(want[t].end(), ws[t]->begin(), ws[t]->end());
    }
  }
  for (int t = 0; t < 5; t++) {
    std::string label = std::string(tname) + " " + names[t] + " vs dense (all problems)";
    check_close(label.c_str(), got[t].data(), want[t].data(), want[t].size(), rtol, rtol * max_abs_of(want[t]));
  }
}

QS_TEST(backward_f64_vs_dense) { backward_vs_dense<double>("f64", 1e-5); }
QS_TEST(backward_f32_vs_dense) { backward_vs_dense<float>("f32", 2e-4); }

// ---------------------------------------------------------------------------------------------
// Incremental mode (Sq = 1 at step s, chain cache of Sk > s steps) equals the packed rows.

QS_TEST(incremental_equals_packed) {
  Rng rng(44);
  const int S = 5;
  Problem packed = make_packed(2, 2, 33, S, 4, 2, 16, 0, kRightPad, rng);
  Problem packed_w = make_packed(1, 3, 70, S, 4, 1, 8, 20, kRandomValid, rng);
  for (const Problem* pp : {&packed, &packed_w}) {
    const Problem& p = *pp;
    Result<double> full = run_forward<double>(p);
    Result<float> full_f = run_forward<float>(p);
    const int R = p.R();
    const size_t per_step = (size_t)p.s.T * p.s.H * p.s.d, per_step_l = (size_t)p.s.T * p.s.H;
    for (int s : {1, 2, 4, S}) {
      Problem inc = p;
      inc.s.Sq = 1;
      inc.s.s_first = s;
      inc.q.clear();
      for (int r = 0; r < R; r++) {
        auto first = p.q.begin() + ((size_t)r * S + s - 1) * per_step;
        inc.q.insert(inc.q.end(), first, first + per_step);
      }
      // chain steps after s hold garbage in the cache: they must be ignored
      const size_t per_kstep = (size_t)p.s.T * p.s.Hkv * p.s.d;
      for (int r = 0; r < R; r++)
        for (int s2 = s + 1; s2 <= S; s2++)
          for (size_t e = 0; e < per_kstep; e++) {
            inc.kc[((size_t)r * S + s2 - 1) * per_kstep + e] = 1e3 * rng.normal();
            inc.vc[((size_t)r * S + s2 - 1) * per_kstep + e] = 1e3 * rng.normal();
          }
      Result<double> one = run_forward<double>(inc);
      Result<float> one_f = run_forward<float>(inc);
      VecD want_o, want_l, want_of;
      std::vector<float> want_lf;
      for (int r = 0; r < R; r++) {
        auto o = full.out.begin() + ((size_t)r * S + s - 1) * per_step;
        want_o.insert(want_o.end(), o, o + per_step);
        auto of = full_f.out.begin() + ((size_t)r * S + s - 1) * per_step;
        want_of.insert(want_of.end(), of, of + per_step);
        auto l = full.lse.begin() + ((size_t)r * S + s - 1) * per_step_l;
        want_l.insert(want_l.end(), l, l + per_step_l);
        auto lf = full_f.lse.begin() + ((size_t)r * S + s - 1) * per_step_l;
        want_lf.insert(want_lf.end(), lf, lf + per_step_l);
      }
      char label[160];
      snprintf(label, sizeof label, "step %d (%s) f64 out == packed", s, p.desc.c_str());
      check_close(label, one.out.data(), want_o.data(), want_o.size(), 1e-12, 1e-13);
      snprintf(label, sizeof label, "step %d f32 out == packed", s);
      check_close(label, one_f.out.data(), want_of.data(), want_of.size(), 1e-5, 1e-6);
      VecD gl = lse_comparable(one.lse), wl = lse_comparable(want_l);
      snprintf(label, sizeof label, "step %d f64 lse == packed", s);
      check_close(label, gl.data(), wl.data(), wl.size(), 1e-7, 1e-7);
      VecD glf = lse_comparable(one_f.lse), wlf = lse_comparable(want_lf);
      snprintf(label, sizeof label, "step %d f32 lse == packed", s);
      check_close(label, glf.data(), wlf.data(), wlf.size(), 1e-6, 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Finite differences in float64

static void gradcheck_problem(Problem p, uint64_t seed) {
  Rng rng(seed);
  VecD w = random_vector<double>(rng, p.nq());
  Result<double> r = run_both<double>(p, w);
  auto loss = [&]() {
    Result<double> f = run_forward<double>(p);
    return dot(f.out, w);
  };
  printf("    %s\n", p.desc.c_str());
  const double rtol = 1e-5, atol = 1e-7;  // lse is float (see the file comment)
  check_gradient("dq_chain", p.q, r.dq, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dk_base", p.kb, r.dkb, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dv_base", p.vb, r.dvb, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dk_chain", p.kc, r.dkc, loss, rng, 40, 1e-6, rtol, atol);
  check_gradient("dv_chain", p.vc, r.dvc, loss, rng, 40, 1e-6, rtol, atol);
}

QS_TEST(gradcheck_gqa_padding_window) {
  Rng rng(11);
  gradcheck_problem(make_packed(2, 2, 9, 3, 4, 2, 5, 4, kRightPad, rng), 101);
}

QS_TEST(gradcheck_p3_mqa_random_validity) {
  Rng rng(12);
  gradcheck_problem(make_packed(1, 3, 12, 4, 4, 1, 6, 0, kRandomValid, rng), 102);
}

QS_TEST(gradcheck_many_blocks_and_step_window) {
  Rng rng(13);
  gradcheck_problem(make_packed(1, 2, 40, 2, 2, 2, 4, 0, kLeftPad, rng), 103);  // 40·2·2 = 160 rows: 2 blocks
  gradcheck_problem(make_problem(2, 1, 8, 2, 2, 4, 4, 4, 3, 0, kDeadDoc, rng), 104);
}

// ---------------------------------------------------------------------------------------------
// SIMD paths, determinism, accumulation, null gradients, queries that see nothing

QS_TEST(simd_paths) {
  Rng rng(31);
  Problem p = make_packed(2, 2, 70, 3, 4, 2, 24, 30, kRandomValid, rng);
  VecD w = f32_exact(random_vector<double>(rng, p.nq()));
  Dense ref = dense(p, &w);
  for (const char* isa : {"generic", "avx2", ""}) {
    ScopedSimd scoped(isa);
    printf("    QS_CPU_SIMD=%s\n", *isa ? isa : "(best)");
    Result<float> f = run_both<float>(p, w);
    Result<double> d = run_both<double>(p, w);
    check_close("  f32 out vs dense", f.out.data(), ref.out.data(), ref.out.size(), 1e-4, 2e-6);
    check_close("  f64 out vs dense", d.out.data(), ref.out.data(), ref.out.size(), 1e-11, 1e-12);
    VecD gl = lse_comparable(f.lse), wl = lse_comparable(ref.lse);
    check_close("  f32 lse vs dense", gl.data(), wl.data(), wl.size(), 2e-6, 2e-6);
    check_close("  f32 dq vs dense", f.dq.data(), ref.dq.data(), ref.dq.size(), 2e-4, 2e-4 * max_abs_of(ref.dq));
    check_close("  f32 dk_base vs dense", f.dkb.data(), ref.dkb.data(), ref.dkb.size(), 2e-4,
                2e-4 * max_abs_of(ref.dkb));
    check_close("  f32 dv_chain vs dense", f.dvc.data(), ref.dvc.data(), ref.dvc.size(), 2e-4,
                2e-4 * max_abs_of(ref.dvc));
    check_close("  f64 dk_chain vs dense", d.dkc.data(), ref.dkc.data(), ref.dkc.size(), 1e-5,
                1e-5 * max_abs_of(ref.dkc));
  }
}

QS_TEST(deterministic_1_2_3_threads) {
  Rng rng(41);
  std::vector<Problem> ps;
  ps.push_back(make_packed(2, 2, 130, 4, 4, 2, 16, 0, kRightPad, rng));
  ps.push_back(make_packed(3, 1, 65, 3, 4, 1, 8, 20, kRandomValid, rng));
  ps.push_back(make_problem(2, 3, 50, 1, 3, 4, 4, 4, 8, 0, kLeftPad, rng));
  for (const Problem& p : ps) {
    VecD w = random_vector<double>(rng, p.nq());
    auto same = [](const Result<float>& x, const Result<float>& y) {
      return bit_equal(x.out, y.out) && bit_equal(x.lse, y.lse) && bit_equal(x.dq, y.dq) && bit_equal(x.dkb, y.dkb) &&
             bit_equal(x.dvb, y.dvb) && bit_equal(x.dkc, y.dkc) && bit_equal(x.dvc, y.dvc);
    };
    bool eq = same_for_1_2_3_threads([&] { return run_both<float>(p, w); }, same);
    printf("    %-76s 1 vs 2 vs 3 threads: %s\n", p.desc.c_str(), eq ? "bit-identical" : "DIFFERENT");
    QS_EXPECT(eq, "%s: results differ between 1, 2 and 3 threads", p.desc.c_str());
  }
}

QS_TEST(backward_accumulates) {
  Rng rng(51);
  Problem p = make_packed(2, 2, 20, 3, 4, 2, 8, 7, kRightPad, rng);
  VecD w = random_vector<double>(rng, p.nq());
  Result<double> r = run_both<double>(p, w);
  VecD g[5] = {random_vector<double>(rng, p.nq()), random_vector<double>(rng, p.nkb()),
               random_vector<double>(rng, p.nkb()), random_vector<double>(rng, p.nkc()),
               random_vector<double>(rng, p.nkc())};
  VecD g0[5] = {g[0], g[1], g[2], g[3], g[4]};
  cpu::thought_attention_backward<double>(g[0].data(), g[1].data(), g[2].data(), g[3].data(), g[4].data(), w.data(),
                                          p.q.data(), p.kb.data(), p.vb.data(), p.kc.data(), p.vc.data(),
                                          r.out.data(), r.lse.data(), p.valid_ptr(), p.s, p.scale);
  const VecD* want[5] = {&r.dq, &r.dkb, &r.dvb, &r.dkc, &r.dvc};
  const char* names[5] = {"dq", "dk_base", "dv_base", "dk_chain", "dv_chain"};
  for (int t = 0; t < 5; t++) {
    VecD inc(g[t].size());
    for (size_t i = 0; i < inc.size(); i++) inc[i] = g[t][i] - g0[t][i];
    std::string label = std::string(names[t]) + "(prefilled) - prefill == " + names[t];
    check_close(label.c_str(), inc.data(), want[t]->data(), inc.size(), 1e-9, 1e-12);
  }
}

QS_TEST(null_gradients_are_skipped) {
  Rng rng(52);
  Problem p = make_packed(2, 2, 33, 3, 4, 2, 8, 0, kRightPad, rng);
  VecD w = random_vector<double>(rng, p.nq());
  Result<double> all = run_both<double>(p, w);
  const VecD* want[5] = {&all.dq, &all.dkb, &all.dvb, &all.dkc, &all.dvc};
  const size_t sizes[5] = {p.nq(), p.nkb(), p.nkb(), p.nkc(), p.nkc()};
  const char* names[5] = {"dq", "dk_base", "dv_base", "dk_chain", "dv_chain"};
  for (int only = 0; only < 5; only++) {  // one gradient at a time, the others null
    VecD g(sizes[only], 0.0);
    double* ptrs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    ptrs[only] = g.data();
    cpu::thought_attention_backward<double>(ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], w.data(), p.q.data(),
                                            p.kb.data(), p.vb.data(), p.kc.data(), p.vc.data(), all.out.data(),
                                            all.lse.data(), p.valid_ptr(), p.s, p.scale);
    std::string label = std::string("only ") + names[only] + " == all-gradients run";
    check_close(label.c_str(), g.data(), want[only]->data(), g.size(), 1e-12, 1e-14);
  }
}

// A query that sees nothing (no valid base key in its causal window: a dead document, or the
// leading invalid positions of left padding) gets out = 0, lse = -inf and no gradient; an
// invalid position with valid keys before it still sees them (and no chain key).
QS_TEST(queries_that_see_nothing) {
  Rng rng(53);
  Problem p = make_packed(2, 2, 9, 3, 4, 2, 8, 0, kDeadDoc, rng);
  p.valid[1 * 9 + 0] = 0;  // document 1: position 0 invalid (sees nothing), 8 invalid (right pad)
  VecD w = random_vector<double>(rng, p.nq());
  Result<float> r = run_both<float>(p, w);
  Dense ref = dense(p, &w);
  const auto& s = p.s;
  bool ok = true, finite = true;
  int nothing = 0, pad_sees_prefix = 0;
  for (int row = 0; row < p.R(); row++)
    for (int sq = 0; sq < s.Sq; sq++)
      for (int i = 0; i < s.T; i++)
        for (int h = 0; h < s.H; h++) {
          const int b = row / s.P;
          const bool sees_nothing = b == 0 || i == 0;
          const size_t l = (((size_t)row * s.Sq + sq) * s.T + i) * s.H + h;
          const float ls = r.lse[l];
          if (sees_nothing != (std::isinf(ls) && ls < 0)) ok = false;
          if (sees_nothing != std::isinf(ref.lse[l])) ok = false;
          if (sees_nothing) {
            nothing++;
            for (int c = 0; c < s.d; c++) ok &= r.out[l * s.d + c] == 0.f && r.dq[l * s.d + c] == 0.f;
          } else if (!p.is_valid(b, i)) {
            pad_sees_prefix++;  // checked against the reference by the sweep; here: finite
            ok &= std::isfinite(ls);
          }
        }
  for (const auto* v : {&r.out, &r.dq, &r.dkb, &r.dvb, &r.dkc, &r.dvc})
    for (float x : *v) finite &= std::isfinite(x);
  for (size_t e = 0; e < (size_t)s.T * s.Hkv * s.d; e++) ok &= r.dkb[e] == 0.f && r.dvb[e] == 0.f;  // document 0
  printf("    %d queries see nothing, %d invalid-position queries see their prefix\n", nothing, pad_sees_prefix);
  QS_EXPECT(ok, "queries that see nothing need out = 0, lse = -inf (like the reference), no gradient");
  QS_EXPECT(finite, "no NaN / inf in out or any gradient");
  QS_EXPECT(pad_sees_prefix > 0, "the problem should have invalid positions after valid keys");
  check_close("out vs dense", r.out.data(), ref.out.data(), ref.out.size(), 1e-4, 2e-6);
}

// ---------------------------------------------------------------------------------------------
// The ops: results through run_op, argument validation naming argument and dimension

QS_TEST(ops_run_and_validate_arguments) {
  auto e = make_engine();
  if (!e) QS_SKIP("no engine");
  Rng rng(61);
  const int B = 2, P = 2, T = 7, S = 3, H = 4, Hkv = 2, d = 8, R = B * P;
  Problem p = make_packed(B, P, T, S, H, Hkv, d, 0, kRightPad, rng);
  VecD w = random_vector<double>(rng, p.nq());
  Dense ref = dense(p, &w);
  auto run = [&](const char* op, qs::OpArgs args, qs::OpOutputs* out) {
    return e->run_sync([&] { return qs::run_op(*e, op, args, out); });
  };
  qs::OpArgs a;
  a.tensors["qChain"] = host_tensor(*e, qs::DType::F64, {R, S, T, H, d}, p.q.data());
  a.tensors["kBase"] = host_tensor(*e, qs::DType::F64, {B, T, Hkv, d}, p.kb.data());
  a.tensors["vBase"] = host_tensor(*e, qs::DType::F64, {B, T, Hkv, d}, p.vb.data());
  a.tensors["kChain"] = host_tensor(*e, qs::DType::F64, {R, S, T, Hkv, d}, p.kc.data());
  a.tensors["vChain"] = host_tensor(*e, qs::DType::F64, {R, S, T, Hkv, d}, p.vc.data());
  a.tensors["valid"] = host_tensor(*e, qs::DType::U8, {B, T}, p.valid.data());
  qs::OpOutputs out;
  qs::Status st = run("thought_attention_forward", a, &out);
  QS_EXPECT(st.ok(), "forward: %s", st.to_string().c_str());
  if (!st.ok()) return;
  QS_EXPECT(out["lse"].shape() == qs::Shape({R, S, T, H}) && out["lse"].dtype() == qs::DType::F32, "lse shape/dtype");
  check_close("op out vs dense", out["out"].data<double>(), ref.out.data(), ref.out.size(), 1e-11, 1e-12);
  qs::OpArgs bw = a;
  bw.tensors["dout"] = host_tensor(*e, qs::DType::F64, {R, S, T, H, d}, w.data());
  bw.tensors["out"] = out["out"];
  bw.tensors["lse"] = out["lse"];
  VecD pre(p.nkb(), 1.0);  // dkBase passed in, prefilled with ones: accumulated into
  bw.tensors["dkBase"] = host_tensor(*e, qs::DType::F64, {B, T, Hkv, d}, pre.data());
  qs::OpOutputs grads;
  st = run("thought_attention_backward", bw, &grads);
  QS_EXPECT(st.ok(), "backward: %s", st.to_string().c_str());
  if (st.ok()) {
    VecD dkb(grads["dkBase"].data<double>(), grads["dkBase"].data<double>() + p.nkb());
    for (double& x : dkb) x -= 1.0;
    check_close("op dqChain vs dense", grads["dqChain"].data<double>(), ref.dq.data(), ref.dq.size(), 1e-5,
                1e-5 * max_abs_of(ref.dq));
    check_close("op dkBase (+=) vs dense", dkb.data(), ref.dkb.data(), ref.dkb.size(), 1e-5,
                1e-5 * max_abs_of(ref.dkb));
    check_close("op dvChain vs dense", grads["dvChain"].data<double>(), ref.dvc.data(), ref.dvc.size(), 1e-5,
                1e-5 * max_abs_of(ref.dvc));
  }

  auto expect_error = [&](const char* op, qs::OpArgs args, const char* needle) {
    qs::OpOutputs o;
    qs::Status s = run(op, args, &o);
    QS_EXPECT(!s.ok() && s.code() == qs::Code::INVALID_ARGUMENT, "accepted (wanted '%s')", needle);
    QS_EXPECT(s.message().find(needle) != std::string::npos, "message '%s' lacks '%s'", s.message().c_str(), needle);
  };
  const char* fwd = "thought_attention_forward";
  { qs::OpArgs c = a; c.tensors.erase("kChain"); expect_error(fwd, c, "missing tensor argument 'kChain'"); }
  { qs::OpArgs c = a; c.tensors["kBase"] = host_tensor(*e, qs::DType::F64, {3, T, Hkv, d}, nullptr);
    c.tensors["vBase"] = c.tensors["kBase"];
    c.tensors.erase("valid");
    expect_error(fwd, c, "'qChain' has R = 4 rows, not a multiple of the B = 3 documents of 'kBase'"); }
  { qs::OpArgs c = a; c.tensors["vBase"] = host_tensor(*e, qs::DType::F64, {B, T + 1, Hkv, d}, nullptr);
    expect_error(fwd, c, "'vBase' must have shape [B, T, Hkv, d], where T = 7 from an earlier argument"); }
  { qs::OpArgs c = a; c.tensors["vChain"] = host_tensor(*e, qs::DType::F64, {R, S + 1, T, Hkv, d}, nullptr);
    expect_error(fwd, c, "'vChain' must have shape [R, Sk, T, Hkv, d], where Sk = 3 from an earlier argument"); }
  { qs::OpArgs c = a; c.tensors["kBase"] = host_tensor(*e, qs::DType::F64, {B, T, 3, d}, nullptr);
    c.tensors["vBase"] = c.tensors["kBase"];
    c.tensors["kChain"] = host_tensor(*e, qs::DType::F64, {R, S, T, 3, d}, nullptr);
    c.tensors["vChain"] = c.tensors["kChain"];
    expect_error(fwd, c, "query heads H = 4 ('qChain' dimension 3) must be a multiple of key/value heads Hkv = 3"); }
  { qs::OpArgs c = a; c.tensors["kBase"] = host_tensor(*e, qs::DType::F32, {B, T, Hkv, d}, nullptr);
    expect_error(fwd, c, "'kBase' is f32 but the other float arguments are f64"); }
  { qs::OpArgs c = a; c.tensors["valid"] = host_tensor(*e, qs::DType::I32, {B, T}, nullptr);
    expect_error(fwd, c, "'valid' must be u8"); }
  { qs::OpArgs c = a; c.numbers["sFirst"] = 2;
    expect_error(fwd, c, "query steps sFirst = 2 .. 4 ('qChain' dimension 1: Sq = 3) read chain steps up to 4, "
                         "but 'kChain' holds Sk = 3"); }
  { qs::OpArgs c = a; c.numbers["sFirst"] = 0; expect_error(fwd, c, "'sFirst' must be an integer in [1,"); }
  { qs::OpArgs c = a; c.numbers["window"] = -1; expect_error(fwd, c, "'window' must be an integer in [0,"); }
  { qs::OpArgs c = a; c.numbers["scale"] = INFINITY; expect_error(fwd, c, "'scale' must be a finite number"); }
  const char* bwd = "thought_attention_backward";
  { qs::OpArgs c = bw; c.tensors.erase("lse"); expect_error(bwd, c, "missing tensor argument 'lse'"); }
  { qs::OpArgs c = bw; c.tensors["lse"] = host_tensor(*e, qs::DType::F32, {R, S, T, H + 1}, nullptr);
    expect_error(bwd, c, "'lse' must have shape [R, Sq, T, H]"); }
  { qs::OpArgs c = bw; c.tensors["dkChain"] = host_tensor(*e, qs::DType::F64, {R, S, T, Hkv, d + 1}, nullptr);
    expect_error(bwd, c, "'dkChain' must have shape [R, Sk, T, Hkv, d]"); }
  // incremental mode through the op: Sq = 1 at step 2 of a 3-step cache
  {
    qs::OpArgs c = a;
    c.numbers["sFirst"] = 2;
    const size_t per_step = (size_t)T * H * d;
    VecD q1;
    for (int r = 0; r < R; r++) q1.insert(q1.end(), p.q.begin() + ((size_t)r * S + 1) * per_step,
                                          p.q.begin() + ((size_t)r * S + 2) * per_step);
    c.tensors["qChain"] = host_tensor(*e, qs::DType::F64, {R, 1, T, H, d}, q1.data());
    qs::OpOutputs o;
    st = run(fwd, c, &o);
    QS_EXPECT(st.ok(), "incremental forward: %s", st.to_string().c_str());
    if (st.ok()) {
      VecD want;
      for (int r = 0; r < R; r++) want.insert(want.end(), ref.out.begin() + ((size_t)r * S + 1) * per_step,
                                              ref.out.begin() + ((size_t)r * S + 2) * per_step);
      check_close("op incremental step 2 out vs dense", o["out"].data<double>(), want.data(), want.size(), 1e-11,
                  1e-12);
    }
  }
}

QS_TEST_MAIN()
