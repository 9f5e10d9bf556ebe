/*
 * thought_attention_bench.cpp: Quiet-STaR's masked parallel thought attention
 * (cpu/thought_attention.h) against plain causal attention measured in the same run.
 *
 * Shapes (float): T = 256 positions, S = 8 chain steps, H = Hkv = 4 heads, d = 64, rows
 * R = B·P = 8, as P = 1 B = 8 and as P = 2 B = 4 (two thoughts per document sharing its base K/V).
 *   ours      thought_attention_forward + thought_attention_backward in packed mode (every
 *             step at once: Sq = Sk = S, sFirst = 1), all positions valid
 *   baseline  attention_forward + attention_backward (cpu/attention.h, the flash kernel) over
 *             the T base tokens of 8 rows, same H and d
 * The ratio is time(ours) / time(baseline). Each chain query sees its causal prefix of base
 * keys plus s <= S chain keys, so the useful work is about S = 8 base attentions plus a small
 * epilogue (spec §8: ideal ≈ 9x; a dense masked SDPA over [base | S chain blocks] does
 * ≈ S(S+1)/2 + S = 44 base attentions' worth).
 *
 * Lines (JSON, bench_util.h):
 *   thought_attention_fwd_bwd_ms   ours, ms; baseline = plain causal fwd+bwd ms; ratio
 *   thought_attention_fwd_ms       ours forward only against the plain forward
 *   thought_attention_scratch_bytes_{fwd,bwd}   the kernel's whole scratch for this thread
 *                                  count, its only extra memory: no mask, no (S·T)² buffer
 *   thought_attention_incremental_step_ms   incremental mode (Sq = 1, sFirst = s, Sk = S: one
 *                                  step of thought sampling), forward only, mean over s = 1..S;
 *                                  baseline = the plain causal forward
 * Timing: best-of-reps, ours and the baseline alternately (the machine is shared: both see the
 * same background load), the baseline re-measured beside every line. Incremental outputs are
 * checked against the packed rows (stderr; a mismatch makes the exit
 * status nonzero).
 *
 * Usage: bench_thought_attention_bench [--quick] [--reps=N]   (default 7 reps, --quick 2)
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/attention.h"
#include "cpu/parallel.h"
#include "cpu/thought_attention.h"

namespace cpu = qs::cpu;
using qs_bench::best_time;
using qs_bench::emit;

namespace {

struct Lcg {  // inputs only need to be varied, not good
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 2862933555777941757ull + 3037000493ull) {}
  float next() {  // roughly N(0, 1)
    float acc = 0;
    for (int i = 0; i < 4; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      acc += (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return (acc - 2.0f) * 1.7320508f;
  }
  void fill(std::vector<float>& v) {
    for (auto& x : v) x = next();
  }
};

bool g_mismatch = false;

// Best-of-reps seconds of a() and of b(), timed alternately after one warm-up call each: the
// machine is shared, and alternating lets both see the same background load.
template <typename A, typename B>
void best_times(int reps, A&& a, B&& b, double* ta, double* tb) {
  a(), b();
  *ta = *tb = 1e30;
  for (int r = 0; r < reps; r++) {
    *ta = std::min(*ta, best_time(1, a, false));
    *tb = std::min(*tb, best_time(1, b, false));
  }
}

// Plain causal attention over `B` rows of T tokens: the baseline.
struct Plain {
  int B, T, H, d;
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
  std::vector<int32_t> pos;
  Plain(int B_, int T_, int H_, int d_) : B(B_), T(T_), H(H_), d(d_) {
    const size_t n = (size_t)B * T * H * d;
    Lcg rng(7);
    for (auto* x : {&q, &k, &v, &dout, &out, &dq, &dk, &dv}) x->resize(n);
    rng.fill(q), rng.fill(k), rng.fill(v), rng.fill(dout);
    lse.resize((size_t)B * H * T);
    pos.resize((size_t)B * T);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) pos[(size_t)b * T + t] = t;
  }
  cpu::AttentionShape shape() const { return cpu::AttentionShape{B, T, T, H, H, d, 0}; }
  void fwd() {
    cpu::attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), pos.data(), pos.data(), nullptr,
                                  shape(), 1.f / std::sqrt((float)d));
  }
  void fwd_bwd() {
    fwd();
    for (auto* g : {&dq, &dk, &dv}) std::fill(g->begin(), g->end(), 0.f);
    cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                   out.data(), lse.data(), pos.data(), pos.data(), nullptr, shape(),
                                   1.f / std::sqrt((float)d));
  }
};

void bench_thought(int B, int P, int T, int S, int H, int d, int reps) {
  const int R = B * P, Hkv = H, nthreads = cpu::get_num_threads();
  Plain plain(R, T, H, d);
  const size_t nq = (size_t)R * S * T * H * d, nkb = (size_t)B * T * Hkv * d, nkc = (size_t)R * S * T * Hkv * d;
  Lcg rng(1234 + P);
  std::vector<float> q(nq), kb(nkb), vb(nkb), kc(nkc), vc(nkc), dout(nq);
  rng.fill(q), rng.fill(kb), rng.fill(vb), rng.fill(kc), rng.fill(vc), rng.fill(dout);
  std::vector<float> out(nq), lse((size_t)R * S * T * H), dq(nq), dkb(nkb), dvb(nkb), dkc(nkc), dvc(nkc);
  const cpu::ThoughtAttentionShape s{B, P, T, S, 1, S, H, Hkv, d, 0};
  const float scale = 1.f / std::sqrt((float)d);

  auto fwd = [&] {
    cpu::thought_attention_forward<float>(out.data(), lse.data(), q.data(), kb.data(), vb.data(), kc.data(),
                                          vc.data(), nullptr, s, scale);
  };
  auto fwd_bwd = [&] {
    fwd();
    for (auto* g : {&dq, &dkb, &dvb, &dkc, &dvc}) std::fill(g->begin(), g->end(), 0.f);
    cpu::thought_attention_backward<float>(dq.data(), dkb.data(), dvb.data(), dkc.data(), dvc.data(), dout.data(),
                                           q.data(), kb.data(), vb.data(), kc.data(), vc.data(), out.data(),
                                           lse.data(), nullptr, s, scale);
  };
  char cfg[160];
  snprintf(cfg, sizeof cfg, "B=%d P=%d T=%d S=%d H=%d Hkv=%d d=%d threads=%d", B, P, T, S, H, Hkv, d, nthreads);
  const std::string c(cfg);
  double t_fwd_bwd, base_fwd_bwd, t_fwd, base_fwd;
  best_times(reps, fwd_bwd, [&] { plain.fwd_bwd(); }, &t_fwd_bwd, &base_fwd_bwd);
  best_times(reps, fwd, [&] { plain.fwd(); }, &t_fwd, &base_fwd);
  emit("thought_attention_fwd_bwd_ms " + c, t_fwd_bwd * 1e3, "ms", base_fwd_bwd * 1e3);
  emit("thought_attention_fwd_ms " + c, t_fwd * 1e3, "ms", base_fwd * 1e3);
  emit("thought_attention_scratch_bytes_fwd " + c, (double)cpu::thought_attention_scratch_bytes(s, nthreads, false),
       "bytes", -1, "%.0f");
  emit("thought_attention_scratch_bytes_bwd " + c, (double)cpu::thought_attention_scratch_bytes(s, nthreads, true),
       "bytes", -1, "%.0f");

  // Incremental mode: step s alone against the cache of all S steps (steps > s are ignored).
  fwd();  // the packed rows to check against
  const size_t per_step = (size_t)T * H * d;
  std::vector<float> q1((size_t)R * per_step), o1((size_t)R * per_step), l1((size_t)R * T * H);
  double total = 0, total_base = 0, max_diff = 0, max_ref = 0;
  for (int st = 1; st <= S; st++) {
    for (int r = 0; r < R; r++)
      std::copy(q.begin() + ((size_t)r * S + st - 1) * per_step, q.begin() + ((size_t)r * S + st) * per_step,
                q1.begin() + (size_t)r * per_step);
    const cpu::ThoughtAttentionShape s1{B, P, T, 1, st, S, H, Hkv, d, 0};
    double t1, tb;
    best_times(reps, [&] {
      cpu::thought_attention_forward<float>(o1.data(), l1.data(), q1.data(), kb.data(), vb.data(), kc.data(),
                                            vc.data(), nullptr, s1, scale);
    }, [&] { plain.fwd(); }, &t1, &tb);
    total += t1, total_base += tb;
    for (int r = 0; r < R; r++)
      for (size_t e = 0; e < per_step; e++) {
        const float want = out[((size_t)r * S + st - 1) * per_step + e];
        max_diff = std::max(max_diff, (double)std::fabs(o1[(size_t)r * per_step + e] - want));
        max_ref = std::max(max_ref, (double)std::fabs(want));
      }
  }
  emit("thought_attention_incremental_step_ms " + c, total / S * 1e3, "ms", total_base / S * 1e3);
  const bool ok = max_diff <= 1e-5 * std::max(max_ref, 1e-30);
  fprintf(stderr, "check incremental == packed %s: max_abs_diff=%.3e (scale %.3e) %s\n", cfg, max_diff, max_ref,
          ok ? "OK" : "MISMATCH");
  if (!ok) g_mismatch = true;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int reps_arg = 0;
  auto other = [&](const char* a) { return std::sscanf(a, "--reps=%d", &reps_arg) == 1 && reps_arg > 0; };
  if (!qs_bench::parse_args(argc, argv, "[--quick] [--reps=N]", &quick, other)) return 2;
  fprintf(stderr, "threads: %d\n", cpu::get_num_threads());
  const int reps = reps_arg > 0 ? reps_arg : quick ? 2 : 7;
  bench_thought(8, 1, 256, 8, 4, 64, reps);
  bench_thought(4, 2, 256, 8, 4, 64, reps);
  return g_mismatch ? 1 : 0;
}
