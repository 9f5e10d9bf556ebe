/*
 * attention_xent_bench.cpp: throughput of the flash-style CPU attention and of the fused
 * LM head + cross-entropy, each against the plain "materialise everything" path measured in
 * the same run on the same inputs.
 *
 * Attention (float, causal, positions 0..T-1, Hkv = H), at B=4 T=256 and B=1 T=1024, H=12,
 * d=64:
 *   ours      attention_forward / attention_backward (online softmax over 64-key tiles)
 *   baseline  per (b, h): S = Q Kᵀ with gemm into a (T, T) buffer, causal mask, softmax,
 *             O = P V with gemm; backward from the stored P (B, H, T, T): dP = dO Vᵀ,
 *             dS = P (dP - D), dQ = dS K, dK = dSᵀ Q, dV = Pᵀ dO, all gemms
 *   GFLOP/s counts useful causal FLOPs: forward 2·2·B·H·d·T²/2 (QKᵀ and PV over the lower
 *   triangle), forward+backward 3x that (backward: dP, dV, dQ, dK). Recomputation in our
 *   backward and the baseline's masked upper triangle are not counted.
 *
 * LM head + xent (float), N=1024 C=768 V=50257 chunk=4096 (GPT-2 small's head):
 *   ours      lmhead_xent_forward / lmhead_xent_backward
 *   baseline  logits (N, V) = h Wᵀ with one gemm, a plain per-row logsumexp (std::exp) and
 *             loss; backward turns the stored logits into dlogits in place and runs the two
 *             gemms dh = dZ W, dW += dZᵀ h
 *   tokens/s = N / seconds; GFLOP/s counts 2NCV for the forward, 4NCV for the backward
 *   (our backward also recomputes the logits, another 2NCV, not counted).
 *
 * Timing: one warm-up, then best-of-reps wall time (best-of: the machine is shared). Each line
 *   {"name": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}
 * ratio = value / baseline (higher is better: GFLOP/s and tokens/s; the ms and MiB lines carry
 * no baseline). The outputs of the two paths are compared too; a mismatch is reported on
 * stderr and makes the exit status nonzero.
 *
 * Usage: bench_attention_xent_bench [--quick]   (--quick: fewer reps, N = 256 for the head)
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/attention.h"
#include "cpu/gemm.h"
#include "cpu/lmhead_xent.h"
#include "cpu/parallel.h"

namespace cpu = qs::cpu;
using qs_bench::best_time;
using qs_bench::emit;
using qs_bench::now_s;

namespace {

// ---------------------------------------------------------------------------------------------
// helpers

struct Lcg {  // inputs only need to be varied, not good
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 2862933555777941757ull + 3037000493ull) {}
  float next() {  // roughly N(0, 1): sum of 4 uniforms, centred and scaled
    float acc = 0;
    for (int i = 0; i < 4; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      acc += (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return (acc - 2.0f) * 1.7320508f;
  }
  void fill(std::vector<float>& v, float scale = 1.f) {
    for (auto& x : v) x = next() * scale;
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); i++) m = std::max(m, (double)std::fabs(a[i] - b[i]));
  return m;
}

double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, (double)std::fabs(x));
  return m;
}

bool g_mismatch = false;

void check(const char* what, double diff, double ref_scale, double rtol) {
  bool ok = diff <= rtol * std::max(ref_scale, 1e-30);
  fprintf(stderr, "check %-44s max_abs_diff=%.3e (scale %.3e) %s\n", what, diff, ref_scale, ok ? "OK" : "MISMATCH");
  if (!ok) g_mismatch = true;
}

// ---------------------------------------------------------------------------------------------
// Naive dense attention (the baseline): materialises P (B, H, T, T).

struct DenseAttention {
  int B, T, H, d;
  float scale;
  std::vector<float> P;   // (B, H, T, T) probabilities, kept for the backward
  std::vector<float> dP;  // (T, T) scratch for one head

  void forward(float* out, const float* q, const float* k, const float* v) {
    const int ld = H * d;
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++) {
        float* S = P.data() + ((size_t)b * H + h) * T * T;
        const float* qb = q + (size_t)b * T * ld + h * d;
        const float* kb = k + (size_t)b * T * ld + h * d;
        const float* vb = v + (size_t)b * T * ld + h * d;
        cpu::gemm<float>(false, true, T, T, d, scale, qb, ld, kb, ld, 0.f, S, T);  // S = scale Q Kᵀ
#pragma omp parallel for schedule(static)
        for (int i = 0; i < T; i++) {  // causal softmax of row i
          float* row = S + (size_t)i * T;
          float m = -std::numeric_limits<float>::infinity();
          for (int j = 0; j <= i; j++) m = std::max(m, row[j]);
          float sum = 0;
          for (int j = 0; j <= i; j++) sum += (row[j] = std::exp(row[j] - m));
          const float inv = 1.f / sum;
          for (int j = 0; j <= i; j++) row[j] *= inv;
          for (int j = i + 1; j < T; j++) row[j] = 0.f;
        }
        cpu::gemm<float>(false, false, T, d, T, 1.f, S, T, vb, ld, 0.f, out + (size_t)b * T * ld + h * d, ld);
      }
  }

  void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                const float* v) {
    const int ld = H * d;
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++) {
        const float* Pb = P.data() + ((size_t)b * H + h) * T * T;
        const size_t off = (size_t)b * T * ld + h * d;
        float* dS = dP.data();
        cpu::gemm<float>(false, true, T, T, d, 1.f, dout + off, ld, v + off, ld, 0.f, dS, T);  // dP = dO Vᵀ
#pragma omp parallel for schedule(static)
        for (int i = 0; i < T; i++) {  // dS = P (dP - Σ_j P dP)
          const float* p = Pb + (size_t)i * T;
          float* g = dS + (size_t)i * T;
          float D = 0;
          for (int j = 0; j < T; j++) D += p[j] * g[j];
          for (int j = 0; j < T; j++) g[j] = p[j] * (g[j] - D);
        }
        cpu::gemm<float>(false, false, T, d, T, scale, dS, T, k + off, ld, 1.f, dq + off, ld);   // dQ += dS K
        cpu::gemm<float>(true, false, T, d, T, scale, dS, T, q + off, ld, 1.f, dk + off, ld);    // dK += dSᵀ Q
        cpu::gemm<float>(true, false, T, d, T, 1.f, Pb, T, dout + off, ld, 1.f, dv + off, ld);   // dV += Pᵀ dO
      }
  }
};

void bench_attention(int B, int T, int H, int d, int reps) {
  const int nthreads = cpu::get_num_threads();
  const size_t n = (size_t)B * T * H * d;
  Lcg rng(1234 + T);
  std::vector<float> q(n), k(n), v(n), dout(n);
  rng.fill(q);
  rng.fill(k);
  rng.fill(v);
  rng.fill(dout);
  std::vector<int32_t> pos((size_t)B * T);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) pos[(size_t)b * T + t] = t;
  cpu::AttentionShape s{B, T, T, H, H, d, 0};
  const float scale = 1.f / std::sqrt((float)d);

  std::vector<float> out(n), lse((size_t)B * H * T), dq(n), dk(n), dv(n);
  DenseAttention dense{B, T, H, d, scale, std::vector<float>((size_t)B * H * T * T), std::vector<float>((size_t)T * T)};
  std::vector<float> out_ref(n), dq_ref(n), dk_ref(n), dv_ref(n);

  auto flash_fwd = [&] {
    cpu::attention_forward<float>(out.data(), lse.data(), q.data(), k.data(), v.data(), pos.data(), pos.data(),
                                  nullptr, s, scale);
  };
  auto flash_fwd_bwd = [&] {
    flash_fwd();
    std::fill(dq.begin(), dq.end(), 0.f);
    std::fill(dk.begin(), dk.end(), 0.f);
    std::fill(dv.begin(), dv.end(), 0.f);
    cpu::attention_backward<float>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                   out.data(), lse.data(), pos.data(), pos.data(), nullptr, s, scale);
  };
  auto dense_fwd = [&] { dense.forward(out_ref.data(), q.data(), k.data(), v.data()); };
  auto dense_fwd_bwd = [&] {
    dense_fwd();
    std::fill(dq_ref.begin(), dq_ref.end(), 0.f);
    std::fill(dk_ref.begin(), dk_ref.end(), 0.f);
    std::fill(dv_ref.begin(), dv_ref.end(), 0.f);
    dense.backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), q.data(), k.data(), v.data());
  };

  const double fwd_flops = 2.0 * 2.0 * B * H * d * (double)T * T / 2.0;
  char cfg[128];
  snprintf(cfg, sizeof cfg, "B=%d T=%d H=%d d=%d threads=%d", B, T, H, d, nthreads);

  double t_flash = best_time(reps, flash_fwd);
  double t_dense = best_time(reps, dense_fwd);
  emit(std::string("attention_fwd_f32 ") + cfg, fwd_flops / t_flash * 1e-9, "GFLOP/s", fwd_flops / t_dense * 1e-9);
  double t_flash2 = best_time(reps, flash_fwd_bwd);
  double t_dense2 = best_time(reps, dense_fwd_bwd);
  emit(std::string("attention_fwd_bwd_f32 ") + cfg, 3 * fwd_flops / t_flash2 * 1e-9, "GFLOP/s",
       3 * fwd_flops / t_dense2 * 1e-9);
  emit(std::string("attention_fwd_ms ") + cfg, t_flash * 1e3, "ms");
  emit(std::string("attention_fwd_bwd_ms ") + cfg, t_flash2 * 1e3, "ms");

  std::string c(cfg);
  check(("attention out " + c).c_str(), max_abs_diff(out, out_ref), max_abs(out_ref), 1e-4);
  check(("attention dq " + c).c_str(), max_abs_diff(dq, dq_ref), max_abs(dq_ref), 1e-3);
  check(("attention dk " + c).c_str(), max_abs_diff(dk, dk_ref), max_abs(dk_ref), 1e-3);
  check(("attention dv " + c).c_str(), max_abs_diff(dv, dv_ref), max_abs(dv_ref), 1e-3);
}

// ---------------------------------------------------------------------------------------------
// LM head + xent

void bench_lmhead(int N, int C, int V, int chunk, int reps) {
  const int nthreads = cpu::get_num_threads();
  Lcg rng(99);
  std::vector<float> h((size_t)N * C), W((size_t)V * C), dloss(N, 1.f / N);
  rng.fill(h, 1.f);
  rng.fill(W, 1.f / std::sqrt((float)C));
  std::vector<int32_t> targets(N);
  for (int n = 0; n < N; n++) targets[n] = (int32_t)((n * 7919ull + 13) % V);

  std::vector<float> loss(N), lse(N), dh((size_t)N * C), dW((size_t)V * C);
  auto fused_fwd = [&] {
    cpu::lmhead_xent_forward<float>(loss.data(), lse.data(), h.data(), W.data(), targets.data(), N, C, V, -100,
                                    chunk);
  };
  auto fused_bwd = [&] {
    cpu::lmhead_xent_backward<float>(dh.data(), dW.data(), dloss.data(), h.data(), W.data(), targets.data(),
                                     lse.data(), N, C, V, -100, chunk);
  };

  // The plain path: (N, V) logits.
  std::vector<float> Z((size_t)N * V), Zsaved;
  std::vector<float> loss_ref(N), lse_ref(N), dh_ref((size_t)N * C), dW_ref((size_t)V * C);
  auto plain_fwd = [&] {
    cpu::gemm<float>(false, true, N, V, C, 1.f, h.data(), C, W.data(), C, 0.f, Z.data(), V);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
      const float* z = Z.data() + (size_t)n * V;
      float m = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < V; j++) m = std::max(m, z[j]);
      float s = 0;
      for (int j = 0; j < V; j++) s += std::exp(z[j] - m);
      lse_ref[n] = m + std::log(s);
      loss_ref[n] = lse_ref[n] - z[targets[n]];
    }
  };
  auto plain_bwd = [&] {  // consumes Z
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
      float* z = Z.data() + (size_t)n * V;
      for (int j = 0; j < V; j++) z[j] = std::exp(z[j] - lse_ref[n]) * dloss[n];
      z[targets[n]] -= dloss[n];
    }
    cpu::gemm<float>(false, false, N, C, V, 1.f, Z.data(), V, W.data(), C, 1.f, dh_ref.data(), C);
    cpu::gemm<float>(true, false, V, C, N, 1.f, Z.data(), V, h.data(), C, 1.f, dW_ref.data(), C);
  };

  const double fwd_flops = 2.0 * N * C * (double)V, bwd_flops = 2 * fwd_flops;
  char cfg[128];
  snprintf(cfg, sizeof cfg, "N=%d C=%d V=%d chunk=%d threads=%d", N, C, V, chunk, nthreads);

  // These calls take ~1 s each at full size: no warm-up beyond touching the buffers once.
  fused_fwd();
  double t_ff = best_time(reps, fused_fwd, false);
  plain_fwd();
  Zsaved = Z;
  double t_pf = best_time(reps, plain_fwd, false);
  double t_fb = best_time(reps, [&] {
    std::fill(dh.begin(), dh.end(), 0.f);
    std::fill(dW.begin(), dW.end(), 0.f);
    fused_bwd();
  }, false);
  double t_pb = 1e30;
  for (int r = 0; r < reps; r++) {  // the plain backward destroys Z: restore it, untimed
    std::memcpy(Z.data(), Zsaved.data(), Z.size() * sizeof(float));
    std::fill(dh_ref.begin(), dh_ref.end(), 0.f);
    std::fill(dW_ref.begin(), dW_ref.end(), 0.f);
    double t0 = now_s();
    plain_bwd();
    t_pb = std::min(t_pb, now_s() - t0);
  }
  emit(std::string("lmhead_xent_fwd_f32 ") + cfg, N / t_ff, "tokens/s", N / t_pf);
  emit(std::string("lmhead_xent_fwd_f32_gflops ") + cfg, fwd_flops / t_ff * 1e-9, "GFLOP/s", fwd_flops / t_pf * 1e-9);
  emit(std::string("lmhead_xent_bwd_f32 ") + cfg, N / t_fb, "tokens/s", N / t_pb);
  emit(std::string("lmhead_xent_bwd_f32_gflops ") + cfg, bwd_flops / t_fb * 1e-9, "GFLOP/s", bwd_flops / t_pb * 1e-9);
  emit(std::string("lmhead_xent_fwd_bwd_f32 ") + cfg, N / (t_ff + t_fb), "tokens/s", N / (t_pf + t_pb));
  // Memory: our (rows, chunk) logits block against the plain path's (N, V) logits.
  emit(std::string("lmhead_xent_logits_scratch_MiB ") + cfg,
       (double)std::min(256, N) * std::min(chunk, V) * sizeof(float) / (1 << 20), "MiB");
  emit(std::string("lmhead_plain_logits_MiB ") + cfg, (double)N * V * sizeof(float) / (1 << 20), "MiB");

  std::string c(cfg);
  check(("lmhead loss " + c).c_str(), max_abs_diff(loss, loss_ref), max_abs(loss_ref), 1e-5);
  check(("lmhead dh " + c).c_str(), max_abs_diff(dh, dh_ref), max_abs(dh_ref), 1e-3);
  check(("lmhead dW " + c).c_str(), max_abs_diff(dW, dW_ref), max_abs(dW_ref), 1e-3);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  fprintf(stderr, "gemm kernel: %s, threads: %d\n", cpu::gemm_kernel_name(), cpu::get_num_threads());
  const int reps = quick ? 2 : 5;
  bench_attention(4, 256, 12, 64, reps);
  bench_attention(1, 1024, 12, 64, reps);
  bench_lmhead(quick ? 256 : 1024, 768, 50257, 4096, quick ? 1 : 2);
  return g_mismatch ? 1 : 0;
}
