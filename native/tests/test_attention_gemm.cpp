// test_attention_gemm.cpp: the gemm-blocked attention (cpu/attention_gemm.h) against the flash
// kernel (cpu/attention.h, itself checked against a dense reference and finite differences in
// test_attention.cpp): out, lse, dq, dk, dv for float and double over
//   - causal training shapes (Tq = Tk in {1, 7, 64, 130, 300}: one and several 128-query blocks),
//   - GQA (H/Hkv 4/4, 4/2, 6/3, 4/1), head dims 8, 16, 64 and 5,
//   - sliding windows, left padding, random non-monotonic positions with random validity, a
//     batch row with no valid key, and Tq != Tk (decoding against a cache);
// the decoding kernel (attention_decode_forward, Tq <= 4) likewise; its gradients accumulate (+=); results are bit-identical with 1, 2 and 3 threads; every SIMD
// path the machine runs agrees.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cpu/attention.h"
#include "cpu/attention_gemm.h"
#include "harness.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;

struct Problem {
  cpu::AttentionShape s;
  std::vector<int32_t> qpos, kpos;
  std::vector<uint8_t> kvalid;  // empty = all valid
  VecD q, k, v, dout;
  std::string desc;
};

// variant: 0 causal, 1 window, 2 left padding, 3 random positions + validity, 4 dead row
static Problem make_problem(Rng& rng, int B, int Tq, int Tk, int H, int Hkv, int d, int variant) {
  Problem p;
  p.s = {B, Tq, Tk, H, Hkv, d, variant == 1 ? 5 : 0};
  p.qpos.resize((size_t)B * Tq);
  p.kpos.resize((size_t)B * Tk);
  for (int b = 0; b < B; b++) {
    for (int j = 0; j < Tk; j++) p.kpos[(size_t)b * Tk + j] = j;
    for (int i = 0; i < Tq; i++) p.qpos[(size_t)b * Tq + i] = Tk - Tq + i;
  }
  if (variant == 2 || variant == 3 || variant == 4) {
    p.kvalid.assign((size_t)B * Tk, 1);
    for (int b = 0; b < B; b++) {
      int pad = variant == 2 ? (b * 3) % std::max(Tk, 1) : 0;
      for (int j = 0; j < pad; j++) p.kvalid[(size_t)b * Tk + j] = 0;
      if (variant == 3)
        for (int j = 0; j < Tk; j++) {
          p.kvalid[(size_t)b * Tk + j] = rng.below(5) != 0;
          p.kpos[(size_t)b * Tk + j] = rng.below(Tk + 3);
        }
      if (variant == 3)
        for (int i = 0; i < Tq; i++) p.qpos[(size_t)b * Tq + i] = rng.below(Tk + 3);
      if (variant == 4 && b == B - 1)
        for (int j = 0; j < Tk; j++) p.kvalid[(size_t)b * Tk + j] = 0;
    }
  }
  p.q = f32_exact(random_vector<double>(rng, (size_t)B * Tq * H * d));
  p.k = f32_exact(random_vector<double>(rng, (size_t)B * Tk * Hkv * d));
  p.v = f32_exact(random_vector<double>(rng, (size_t)B * Tk * Hkv * d));
  p.dout = f32_exact(random_vector<double>(rng, (size_t)B * Tq * H * d));
  char buf[160];
  snprintf(buf, sizeof buf, "B=%d Tq=%d Tk=%d H=%d Hkv=%d d=%d variant=%d", B, Tq, Tk, H, Hkv, d, variant);
  p.desc = buf;
  return p;
}

template <typename T>
struct Result {
  std::vector<T> out, dq, dk, dv;
  std::vector<float> lse;
};

template <typename T>
static Result<T> run_decode(const Problem& p) {
  const auto& s = p.s;
  std::vector<T> q(p.q.begin(), p.q.end()), k(p.k.begin(), p.k.end()), v(p.v.begin(), p.v.end());
  Result<T> r;
  r.out.assign(q.size(), T(7));
  r.lse.assign((size_t)s.B * s.H * s.Tq, 7.f);
  const uint8_t* kv = p.kvalid.empty() ? nullptr : p.kvalid.data();
  cpu::attention_decode_forward<T>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), p.qpos.data(), p.kpos.data(),
                                   kv, s, (T)(1.0 / std::sqrt((double)s.d)));
  return r;
}

template <typename T>
static Result<T> run(const Problem& p, bool gemm_path, double prefill = 0) {
  const auto& s = p.s;
  std::vector<T> q(p.q.begin(), p.q.end()), k(p.k.begin(), p.k.end()), v(p.v.begin(), p.v.end()),
      dout(p.dout.begin(), p.dout.end());
  Result<T> r;
  r.out.assign(q.size(), T(7));  // garbage the forward must overwrite
  r.lse.assign((size_t)s.B * s.H * s.Tq, 7.f);
  r.dq.assign(q.size(), (T)prefill);
  r.dk.assign(k.size(), (T)prefill);
  r.dv.assign(v.size(), (T)prefill);
  const uint8_t* kv = p.kvalid.empty() ? nullptr : p.kvalid.data();
  const T scale = (T)(1.0 / std::sqrt((double)s.d));
  if (gemm_path) {
    cpu::attention_gemm_forward<T>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), p.qpos.data(), p.kpos.data(),
                                   kv, s, scale);
    cpu::attention_gemm_backward<T>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                    r.out.data(), r.lse.data(), p.qpos.data(), p.kpos.data(), kv, s, scale);
  } else {
    cpu::attention_forward<T>(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), p.qpos.data(), p.kpos.data(), kv,
                              s, scale);
    cpu::attention_backward<T>(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(),
                               r.out.data(), r.lse.data(), p.qpos.data(), p.kpos.data(), kv, s, scale);
  }
  return r;
}

template <typename T>
static VecD lse_d(const Result<T>& r) {
  VecD v(r.lse.size());
  for (size_t i = 0; i < v.size(); i++) v[i] = std::isinf(r.lse[i]) ? -1e30 : r.lse[i];
  return v;
}

template <typename T>
static bool compare(const Problem& p, double tol) {
  Result<T> a = run<T>(p, true), b = run<T>(p, false);
  bool ok = true;
  auto cmp = [&](const char* what, const std::vector<T>& x, const std::vector<T>& y) {
    VecD yd(y.begin(), y.end());
    double scale = std::max(max_abs_of(yd), 1.0);
    ok &= quiet_close(p.desc + " " + what, x.data(), yd.data(), yd.size(), tol, tol * scale);
  };
  cmp("out", a.out, b.out);
  cmp("dq", a.dq, b.dq);
  cmp("dk", a.dk, b.dk);
  cmp("dv", a.dv, b.dv);
  VecD la = lse_d(a), lb = lse_d(b);
  ok &= quiet_close(p.desc + " lse", la.data(), lb.data(), lb.size(), 1e-6, 1e-6);
  return ok;
}

QS_TEST(gemm_attention_matches_flash) {
  Rng rng(1);
  const int heads[4][2] = {{4, 4}, {4, 2}, {6, 3}, {4, 1}};
  const int dims[4] = {8, 16, 64, 5};
  int n = 0, bad = 0;
  for (int T : {1, 7, 64, 130, 300})
    for (int variant = 0; variant < 5; variant++) {
      const int hi = (T + variant) % 4, di = (T / 7 + variant) % 4;
      Problem p = make_problem(rng, 2, T, T, heads[hi][0], heads[hi][1], dims[di], variant);
      bool ok = compare<double>(p, 1e-9) & compare<float>(p, 2e-5);
      n++, bad += !ok;
    }
  // Tq != Tk: decoding one query and a chunk of 9 against a cache of 150 keys
  for (int variant : {0, 1, 2, 3}) {
    Problem p1 = make_problem(rng, 3, 1, 150, 4, 2, 16, variant);
    Problem p9 = make_problem(rng, 2, 9, 150, 4, 2, 16, variant);
    bool ok = compare<double>(p1, 1e-9) & compare<double>(p9, 1e-9) & compare<float>(p9, 2e-5);
    n += 2, bad += !ok;
  }
  fprintf(stdout, "    %d problems, %d disagree\n", n, bad);
  QS_EXPECT(bad == 0, "%d of %d problems disagree with the flash kernel", bad, n);
}

template <typename T>
static bool compare_decode(const Problem& p, double tol) {
  Result<T> a = run_decode<T>(p), b = run<T>(p, false);
  VecD o(b.out.begin(), b.out.end()), la = lse_d(a), lb = lse_d(b);
  bool ok = quiet_close(p.desc + " decode out", a.out.data(), o.data(), o.size(), tol, tol * std::max(max_abs_of(o), 1.0));
  ok &= quiet_close(p.desc + " decode lse", la.data(), lb.data(), lb.size(), 1e-6, 1e-6);
  return ok;
}

QS_TEST(decode_attention_matches_flash) {
  Rng rng(4);
  int n = 0, bad = 0;
  for (int Tq : {1, 2, 4})
    for (int Tk : {1, 5, 40, 150})
      for (int variant = 0; variant < 5; variant++) {
        if (Tq > Tk) continue;
        const int heads[3][2] = {{4, 4}, {4, 2}, {6, 1}};
        const int dims[3] = {64, 5, 16};
        Problem p = make_problem(rng, 3, Tq, Tk, heads[variant % 3][0], heads[variant % 3][1], dims[(Tk + variant) % 3], variant);
        bool ok = compare_decode<double>(p, 1e-10) & compare_decode<float>(p, 2e-6);
        n++, bad += !ok;
      }
  fprintf(stdout, "    %d problems, %d disagree\n", n, bad);
  QS_EXPECT(bad == 0, "%d of %d problems disagree with the flash kernel", bad, n);
}

QS_TEST(gemm_attention_gradients_accumulate) {
  Rng rng(2);
  Problem p = make_problem(rng, 2, 130, 130, 4, 2, 16, 2);
  Result<double> a = run<double>(p, true), b = run<double>(p, true, 0.5);
  VecD inc(a.dq.size());
  for (size_t i = 0; i < inc.size(); i++) inc[i] = b.dq[i] - 0.5;
  check_close("dq from 0.5 prefill - 0.5", inc.data(), a.dq.data(), inc.size(), 1e-12, 1e-12);
  inc.resize(a.dk.size());
  for (size_t i = 0; i < inc.size(); i++) inc[i] = b.dk[i] - 0.5;
  check_close("dk from 0.5 prefill - 0.5", inc.data(), a.dk.data(), inc.size(), 1e-12, 1e-12);
}

QS_TEST(gemm_attention_is_deterministic_and_simd_paths_agree) {
  Rng rng(3);
  Problem p = make_problem(rng, 3, 300, 300, 4, 2, 64, 1);
  auto same = [](const Result<float>& x, const Result<float>& y) {
    return bit_equal(x.out, y.out) && bit_equal(x.lse, y.lse) && bit_equal(x.dq, y.dq) && bit_equal(x.dk, y.dk) &&
           bit_equal(x.dv, y.dv);
  };
  QS_EXPECT(same_for_1_2_3_threads([&] { return run<float>(p, true); }, same), "results depend on the thread count");
  Result<float> best = run<float>(p, true);
  for (const char* isa : {"generic", "avx2"}) {
    ScopedSimd simd(isa);
    Result<float> r = run<float>(p, true);
    VecD want(best.dk.begin(), best.dk.end()), o(best.out.begin(), best.out.end());
    check_close((std::string("dk simd ") + isa).c_str(), r.dk.data(), want.data(), want.size(), 1e-4, 1e-4 * max_abs_of(want));
    check_close((std::string("out simd ") + isa).c_str(), r.out.data(), o.data(), o.size(), 1e-5, 1e-5);
  }
}

QS_TEST_MAIN()
