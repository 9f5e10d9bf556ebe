/*
 * cuda_attention_bench.cpp: throughput of the CUDA attention kernels (native/cuda/attention.cu,
 * thought_attention.cu): Quiet-STaR's thought attention against the reference's dense-mask
 * method, plain causal attention against FlashAttention-2's published figures, and decoding.
 *
 * Lines (JSON, bench_util.h; the first names the GPU):
 *   cuda_thought_attention fwd_bwd ...   TFLOP/s of thought_attention_forward + _backward
 *       (packed mode: every step at once), counted on useful FLOPs only: each visible score
 *       entry (base keys j <= i plus s chain keys for a query at step s) costs 4·d FLOPs forward
 *       (Q·K and P·V) and 2.5x that backward (FlashAttention-2's convention). baseline = the
 *       same useful FLOPs over the time of the reference's method: ONE attention of the S·T chain
 *       queries over the T + S·T keys [base | chain] with a materialised (S·T) x (T + S·T) mask
 *       (attention_forward_masked / _backward_masked: our tile kernels reading the mask, no tile
 *       skipped: every score computed, as a masked SDPA does); ratio = how many times faster.
 *       The outputs of both are compared (a mismatch exits 1).
 *   cuda_thought_attention fwd ...       the same, forward only.
 *   cuda_dense_mask_attention fwd_bwd ...  the dense-mask run's own TFLOP/s on all the entries
 *       it computes (how busy the GPU was, for context).
 *   cuda_attention causal fwd_bwd hd=128 T=...  plain causal attention (attention_forward +
 *       attention_backward), FlashAttention-2's benchmark setting: batch·T = 16k tokens, 16 heads
 *       of 128, FLOPs 4·B·H·T²·d/2 forward and 2.5x backward. baseline: FlashAttention-2's
 *       published H100 SXM causal hd128 fwd+bwd figures, given for the ends of the range only
 *       (163 TFLOP/s at T = 512, 328 at T = 16k; bf16 tensor cores, where these kernels are
 *       f32 SIMT, whose H100 peak is ~67 TFLOP/s): reference values, not a same-machine run.
 *   cuda_attention causal fwd hd=128 T=...     forward only.
 *   cuda_attention decode ...  one new token per sequence against a KV cache (the decode kernel):
 *       microseconds per call and the K/V bytes read per second.
 * Timing: one warm-up call, then best-of-reps of one call + stream synchronisation (host clock;
 * every timed call is >= ~0.1 ms except decode, which times 20 back-to-back calls).
 * Without a GPU (or in a build without CUDA): one line saying it skipped and why, exit 0.
 *
 * Usage: bench_cuda_attention_bench [--quick] [--reps=N]   (default 5 reps, --quick 2 and
 *        fewer, smaller shapes)
 */
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"

#if defined(QUIETSTAR_HAVE_CUDA)
#include "cuda/kernels_attention.h"
#include "quietstar/cuda_backend.h"
#endif

#if defined(QUIETSTAR_HAVE_CUDA)

namespace {

using namespace qs;
namespace cpu = qs::cpu;
using qs_bench::emit;

// A device buffer.
struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  ~Buffer() { cuda::device_free(p); }
  float* f() const { return (float*)p; }
};

Status alloc(size_t bytes, Buffer* b) {
  b->bytes = bytes;
  QS_RETURN_IF_ERROR(cuda::device_malloc(&b->p, std::max<size_t>(bytes, 4)));
  return cuda::memset_zero(b->p, std::max<size_t>(bytes, 4), nullptr);
}

// n floats of a fixed pseudo-random pattern (sum of 4 uniforms, centred, scaled to variance 1).
Status random_floats(int64_t n, uint64_t seed, Buffer* b) {
  std::vector<float> f((size_t)n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : f) {
    float u = 0;
    for (int i = 0; i < 4; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      u += (float)((s >> 40) * (1.0 / 16777216.0));
    }
    x = (u - 2.f) * 1.7320508f;
  }
  QS_RETURN_IF_ERROR(alloc(f.size() * 4, b));
  return cuda::memcpy_h2d(b->p, f.data(), b->bytes, nullptr);
}

template <typename T>
Status upload(const std::vector<T>& v, Buffer* b) {
  QS_RETURN_IF_ERROR(alloc(v.size() * sizeof(T), b));
  return v.empty() ? Status::Ok() : cuda::memcpy_h2d(b->p, v.data(), b->bytes, nullptr);
}

// Best-of-reps seconds of fn() + a stream synchronisation; < 0 when fn failed.
template <typename F>
double time_call(int reps, F&& fn, const char* what) {
  Status st;
  auto call = [&] {
    if (st.ok()) st = fn();
    if (st.ok()) st = cuda::stream_synchronize(nullptr);
  };
  const double t = qs_bench::best_time(reps, call);
  return qs_bench::report_ok("cuda_attention_bench", st, what) ? t : -1;
}

// max |x - y| / max(1, max |y|) over two device buffers of n floats.
double max_diff(const Buffer& x, const Buffer& y, int64_t n) {
  std::vector<float> a((size_t)n), b((size_t)n);
  if (!cuda::memcpy_d2h(a.data(), x.p, n * 4, nullptr).ok() || !cuda::memcpy_d2h(b.data(), y.p, n * 4, nullptr).ok())
    return INFINITY;
  double diff = 0, scale = 1;
  for (int64_t i = 0; i < n; i++) {
    const double d = std::fabs((double)a[i] - (double)b[i]);
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::fabs((double)b[i]));
  }
  return diff / scale;
}

bool g_failed = false;

// ---------------------------------------------------------------------------------------------
// Thought attention against one dense masked attention over [base | chain] keys.

bool bench_thought(int B, int P, int T, int S, int H, int Hkv, int d, int reps) {
  const int R = B * P;
  const float scale = 1.f / std::sqrt((float)d);
  const int64_t nq = (int64_t)R * S * T * H * d, nkb = (int64_t)B * T * Hkv * d, nkc = (int64_t)R * S * T * Hkv * d;
  Buffer q, kb, vb, kc, vc, dout, out, lse, dq, dkb, dvb, dkc, dvc, scratch;
  Status st = random_floats(nq, 1, &q);
  if (st.ok()) st = random_floats(nkb, 2, &kb);
  if (st.ok()) st = random_floats(nkb, 3, &vb);
  if (st.ok()) st = random_floats(nkc, 4, &kc);
  if (st.ok()) st = random_floats(nkc, 5, &vc);
  if (st.ok()) st = random_floats(nq, 6, &dout);
  if (st.ok()) st = alloc(nq * 4, &out);
  if (st.ok()) st = alloc((int64_t)R * S * T * H * 4, &lse);
  if (st.ok()) st = alloc(nq * 4, &dq);
  if (st.ok()) st = alloc(nkb * 4, &dkb);
  if (st.ok()) st = alloc(nkb * 4, &dvb);
  if (st.ok()) st = alloc(nkc * 4, &dkc);
  if (st.ok()) st = alloc(nkc * 4, &dvc);
  const cpu::ThoughtAttentionShape ts{B, P, T, S, 1, S, H, Hkv, d, 0};
  if (st.ok()) st = alloc(cuda::thought_attention_backward_scratch_bytes(ts), &scratch);

  // The dense problem: batch R, queries (S·T) (the same q buffer: (R, S, T, H, d) is (R, S·T, H, d)),
  // keys [base of the row's document | the row's S·T chain keys].
  const int Tq = S * T, Tk = T + S * T;
  const int64_t nkd = (int64_t)R * Tk * Hkv * d;
  Buffer kd, vd, outd, lsed, dqd, dkd, dvd, scratchd, mask;
  if (st.ok()) st = alloc(nkd * 4, &kd);
  if (st.ok()) st = alloc(nkd * 4, &vd);
  const int64_t base_row = (int64_t)T * Hkv * d, chain_row = (int64_t)S * T * Hkv * d;
  for (int r = 0; r < R && st.ok(); r++) {
    const int b = r / P;
    st = cuda::memcpy_d2d(kd.f() + r * (base_row + chain_row), kb.f() + b * base_row, base_row * 4, nullptr);
    if (st.ok()) st = cuda::memcpy_d2d(vd.f() + r * (base_row + chain_row), vb.f() + b * base_row, base_row * 4, nullptr);
    if (st.ok())
      st = cuda::memcpy_d2d(kd.f() + r * (base_row + chain_row) + base_row, kc.f() + r * chain_row, chain_row * 4, nullptr);
    if (st.ok())
      st = cuda::memcpy_d2d(vd.f() + r * (base_row + chain_row) + base_row, vc.f() + r * chain_row, chain_row * 4, nullptr);
  }
  // The reference's mask, materialised: query (s, i) sees base j <= i and chain (s', i), s' <= s.
  std::vector<uint8_t> m((size_t)R * Tq * Tk, 0);
  for (int r = 0; r < R; r++)
    for (int s = 0; s < S; s++)
      for (int i = 0; i < T; i++) {
        uint8_t* row = m.data() + ((size_t)r * Tq + (size_t)s * T + i) * Tk;
        for (int j = 0; j <= i; j++) row[j] = 1;
        for (int s2 = 0; s2 <= s; s2++) row[T + (size_t)s2 * T + i] = 1;
      }
  if (st.ok()) st = upload(m, &mask);
  const cpu::AttentionShape ds{R, Tq, Tk, H, Hkv, d, 0};
  if (st.ok()) st = alloc(nq * 4, &outd);
  if (st.ok()) st = alloc((int64_t)R * H * Tq * 4, &lsed);
  if (st.ok()) st = alloc(nq * 4, &dqd);
  if (st.ok()) st = alloc(nkd * 4, &dkd);
  if (st.ok()) st = alloc(nkd * 4, &dvd);
  if (st.ok()) st = alloc(cuda::attention_backward_scratch_bytes(ds), &scratchd);
  if (!qs_bench::report_ok("cuda_attention_bench", st, "thought buffers")) return false;

  auto fwd = [&] {
    return cuda::thought_attention_forward(out.f(), lse.f(), q.f(), kb.f(), vb.f(), kc.f(), vc.f(), nullptr, ts, scale,
                                           nullptr);
  };
  auto bwd = [&] {
    return cuda::thought_attention_backward(dq.f(), dkb.f(), dvb.f(), dkc.f(), dvc.f(), dout.f(), q.f(), kb.f(),
                                            vb.f(), kc.f(), vc.f(), out.f(), lse.f(), nullptr, ts, scale, scratch.p,
                                            nullptr);
  };
  auto dfwd = [&] {
    return cuda::attention_forward_masked(outd.f(), lsed.f(), q.f(), kd.f(), vd.f(), (const uint8_t*)mask.p, nullptr,
                                          ds, scale, nullptr);
  };
  auto dbwd = [&] {
    return cuda::attention_backward_masked(dqd.f(), dkd.f(), dvd.f(), dout.f(), q.f(), kd.f(), vd.f(), outd.f(),
                                           lsed.f(), (const uint8_t*)mask.p, nullptr, ds, scale, scratchd.p, nullptr);
  };

  // Check first (one fresh backward each, gradients from zero): out and dq must agree.
  st = fwd();
  if (st.ok()) st = bwd();
  if (st.ok()) st = dfwd();
  if (st.ok()) st = dbwd();
  if (st.ok()) st = cuda::stream_synchronize(nullptr);
  if (!qs_bench::report_ok("cuda_attention_bench", st, "thought check run")) return false;
  const double diff_out = max_diff(out, outd, nq), diff_dq = max_diff(dq, dqd, nq);
  const bool ok = diff_out <= 1e-4 && diff_dq <= 1e-3;
  char cfg[160];
  snprintf(cfg, sizeof cfg, "B=%d P=%d T=%d S=%d H=%d Hkv=%d d=%d", B, P, T, S, H, Hkv, d);
  fprintf(stderr, "check thought == dense mask %s: out %.3e, dq %.3e (relative to max(1, max|ref|)) %s\n", cfg,
          diff_out, diff_dq, ok ? "OK" : "MISMATCH");
  if (!ok) g_failed = true;

  const double t_fwd = time_call(reps, fwd, "thought forward");
  const double t_fb = time_call(reps, [&] { Status s = fwd(); return s.ok() ? bwd() : s; }, "thought fwd+bwd");
  const double t_dfwd = time_call(reps, dfwd, "dense forward");
  const double t_dfb = time_call(reps, [&] { Status s = dfwd(); return s.ok() ? dbwd() : s; }, "dense fwd+bwd");
  if (t_fwd < 0 || t_fb < 0 || t_dfwd < 0 || t_dfb < 0) return false;

  // Useful entries: a query at step s, position i sees i + 1 base keys and s chain keys.
  const double visible = (double)R * H * ((double)S * T * (T + 1) / 2 + (double)T * S * (S + 1) / 2);
  const double useful_fwd = 4.0 * d * visible, useful_fb = 3.5 * useful_fwd;
  const double dense_fb = 3.5 * 4.0 * d * (double)R * H * Tq * Tk;
  const std::string c(cfg);
  emit("cuda_thought_attention fwd_bwd useful " + c, useful_fb / t_fb / 1e12, "TFLOP/s", useful_fb / t_dfb / 1e12);
  emit("cuda_thought_attention fwd useful " + c, useful_fwd / t_fwd / 1e12, "TFLOP/s", useful_fwd / t_dfwd / 1e12);
  emit("cuda_thought_attention fwd_bwd_ms " + c, t_fb * 1e3, "ms", t_dfb * 1e3);
  emit("cuda_dense_mask_attention fwd_bwd all_entries " + c, dense_fb / t_dfb / 1e12, "TFLOP/s");
  return true;
}

// ---------------------------------------------------------------------------------------------
// Plain causal attention, FlashAttention-2's setting.

bool bench_causal(int T, int reps) {
  const int d = 128, H = 16, B = std::max(1, 16384 / T);
  const float scale = 1.f / std::sqrt((float)d);
  const int64_t n = (int64_t)B * T * H * d;
  const cpu::AttentionShape s{B, T, T, H, H, d, 0};
  std::vector<int32_t> pos((size_t)B * T);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) pos[(size_t)b * T + t] = t;
  Buffer q, k, v, dout, out, lse, dq, dk, dv, scratch, p;
  Status st = random_floats(n, 11, &q);
  if (st.ok()) st = random_floats(n, 12, &k);
  if (st.ok()) st = random_floats(n, 13, &v);
  if (st.ok()) st = random_floats(n, 14, &dout);
  if (st.ok()) st = alloc(n * 4, &out);
  if (st.ok()) st = alloc((int64_t)B * H * T * 4, &lse);
  if (st.ok()) st = alloc(n * 4, &dq);
  if (st.ok()) st = alloc(n * 4, &dk);
  if (st.ok()) st = alloc(n * 4, &dv);
  if (st.ok()) st = alloc(cuda::attention_backward_scratch_bytes(s), &scratch);
  if (st.ok()) st = upload(pos, &p);
  if (!qs_bench::report_ok("cuda_attention_bench", st, "causal buffers")) return false;
  const int32_t* pp = (const int32_t*)p.p;
  auto fwd = [&] { return cuda::attention_forward(out.f(), lse.f(), q.f(), k.f(), v.f(), pp, pp, nullptr, s, scale, nullptr); };
  auto bwd = [&] {
    return cuda::attention_backward(dq.f(), dk.f(), dv.f(), dout.f(), q.f(), k.f(), v.f(), out.f(), lse.f(), pp, pp,
                                    nullptr, s, scale, scratch.p, nullptr);
  };
  const double t_fwd = time_call(reps, fwd, "causal forward");
  const double t_fb = time_call(reps, [&] { Status x = fwd(); return x.ok() ? bwd() : x; }, "causal fwd+bwd");
  if (t_fwd < 0 || t_fb < 0) return false;
  const double flops_fwd = 4.0 * B * H * (double)T * T * d / 2, flops_fb = 3.5 * flops_fwd;
  // FlashAttention-2 (Dao 2023), H100 SXM5, causal, head dim 128, fwd+bwd: the ends of the range.
  const double fa2 = T == 512 ? 163 : T == 16384 ? 328 : -1;
  char cfg[96];
  snprintf(cfg, sizeof cfg, "hd=128 H=16 B=%d T=%d", B, T);
  emit(std::string("cuda_attention causal fwd_bwd ") + cfg, flops_fb / t_fb / 1e12, "TFLOP/s", fa2);
  emit(std::string("cuda_attention causal fwd ") + cfg, flops_fwd / t_fwd / 1e12, "TFLOP/s");
  return true;
}

// ---------------------------------------------------------------------------------------------
// Decoding: one new query per sequence against a cache of Tk slots, the last 1/8 unused.

bool bench_decode(int B, int Tk, int H, int Hkv, int d, int reps) {
  const float scale = 1.f / std::sqrt((float)d);
  const cpu::AttentionShape s{B, 1, Tk, H, Hkv, d, 0};
  const int used = Tk - Tk / 8;
  std::vector<int32_t> qpos((size_t)B), kpos((size_t)B * Tk);
  std::vector<uint8_t> valid((size_t)B * Tk);
  for (int b = 0; b < B; b++) {
    qpos[b] = used - 1;
    for (int j = 0; j < Tk; j++) kpos[(size_t)b * Tk + j] = j, valid[(size_t)b * Tk + j] = j < used;
  }
  Buffer q, k, v, out, lse, qp, kp, kv;
  Status st = random_floats((int64_t)B * H * d, 21, &q);
  if (st.ok()) st = random_floats((int64_t)B * Tk * Hkv * d, 22, &k);
  if (st.ok()) st = random_floats((int64_t)B * Tk * Hkv * d, 23, &v);
  if (st.ok()) st = alloc((int64_t)B * H * d * 4, &out);
  if (st.ok()) st = alloc((int64_t)B * H * 4, &lse);
  if (st.ok()) st = upload(qpos, &qp);
  if (st.ok()) st = upload(kpos, &kp);
  if (st.ok()) st = upload(valid, &kv);
  if (!qs_bench::report_ok("cuda_attention_bench", st, "decode buffers")) return false;
  constexpr int kCalls = 20;
  const double t = time_call(reps, [&] {
    Status x;
    for (int i = 0; i < kCalls && x.ok(); i++)
      x = cuda::attention_forward(out.f(), lse.f(), q.f(), k.f(), v.f(), (const int32_t*)qp.p, (const int32_t*)kp.p,
                                  (const uint8_t*)kv.p, s, scale, nullptr);
    return x;
  }, "decode");
  if (t < 0) return false;
  const double per_call = t / kCalls, bytes = 2.0 * B * used * Hkv * d * 4;
  char cfg[128];
  snprintf(cfg, sizeof cfg, "B=%d Tk=%d used=%d H=%d Hkv=%d d=%d", B, Tk, used, H, Hkv, d);
  emit(std::string("cuda_attention decode_us ") + cfg, per_call * 1e6, "us");
  emit(std::string("cuda_attention decode_kv_read ") + cfg, bytes / per_call / 1e9, "GB/s");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int reps_arg = 0;
  auto other = [&](const char* a) { return std::sscanf(a, "--reps=%d", &reps_arg) == 1 && reps_arg > 0; };
  if (!qs_bench::parse_args(argc, argv, "[--quick] [--reps=N]", &quick, other)) return 2;
  const cuda::RuntimeInfo& info = cuda::probe();
  if (!info.usable) {
    qs_bench::emit_skip("cuda_attention", "no usable CUDA device: " + info.unavailable_reason);
    return 0;
  }
  if (!qs_bench::report_ok("cuda_attention_bench", cuda::set_device(0), "set_device")) return 1;
  const cuda::DeviceInfo& dev = info.devices[0];
  printf("{\"name\": \"cuda_attention gpu: %s\", \"value\": %d, \"unit\": \"sm_cc\"}\n", dev.name.c_str(),
         dev.cc_major * 10 + dev.cc_minor);
  fprintf(stderr, "cuda_attention_bench: %s (sm_%d%d, %d SMs); f32 SIMT kernels\n", dev.name.c_str(), dev.cc_major,
          dev.cc_minor, dev.multiprocessors);
  const int reps = reps_arg > 0 ? reps_arg : quick ? 2 : 5;

  bool ok = true;
  if (quick) {
    ok = ok && bench_thought(2, 2, 256, 4, 8, 8, 64, reps);
  } else {
    ok = ok && bench_thought(4, 2, 512, 8, 8, 8, 64, reps);
    ok = ok && bench_thought(8, 1, 256, 8, 16, 4, 128, reps);
  }
  const std::vector<int> lengths = quick ? std::vector<int>{512, 2048} : std::vector<int>{512, 1024, 2048, 4096, 8192, 16384};
  for (int T : lengths) ok = ok && bench_causal(T, reps);
  fprintf(stderr, "FlashAttention-2 on H100 SXM (bf16, causal, hd 128, fwd+bwd): 163 TFLOP/s at T = 512 .. 328 at "
                  "T = 16k (published; reference values, not measured here)\n");
  ok = ok && bench_decode(8, 4096, 32, 8, 128, reps);
  if (!quick) ok = ok && bench_decode(1, 32768, 32, 8, 128, reps);
  return !ok || g_failed ? 1 : 0;
}

#else

int main(int argc, char** argv) {
  bool quick = false;
  int reps_arg = 0;
  auto other = [&](const char* a) { return std::sscanf(a, "--reps=%d", &reps_arg) == 1 && reps_arg > 0; };
  if (!qs_bench::parse_args(argc, argv, "[--quick] [--reps=N]", &quick, other)) return 2;
  qs_bench::emit_skip("cuda_attention", "built without CUDA");
  return 0;
}

#endif
