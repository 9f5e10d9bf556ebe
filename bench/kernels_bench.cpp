/*
kernels_bench.cpp: achieved memory bandwidth of the memory-bound CPU kernels, each against a
parallel copy over a buffer of the same footprint measured in the same run.

These kernels do a few flops per element, so the figure of merit is GB/s: the bytes the kernel
must read plus the bytes it must write per call (counted from its signature, e.g. AdamW reads
params, grads, m, v and writes params, m, v: 28 bytes per float parameter), divided by the best
time over several calls. The baseline copies footprint/2 bytes into another footprint/2 bytes
(the same amount of live memory, which matters near the last-level cache size) and counts
read + write bytes the same way. Kernel and copy calls alternate, so each starts with the
other's data in cache (as in training, where other ops run in between) and both see the same
machine load. ratio = kernel GB/s / copy GB/s; near 1 means the kernel streams memory as fast
as a copy does (above 1 is possible: a copy writes half its bytes, and writes cost more).

Output: one JSON object per line on stdout,
  {"name": "...", "value": GB/s, "unit": "GB/s", "baseline": copy GB/s, "ratio": value/baseline}
Usage: bench_kernels_bench [--quick]   (--quick: smaller sizes and fewer repetitions)
Threads: the OpenMP default (OMP_NUM_THREADS), reported on stderr.
*/
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/activations.h"
#include "cpu/adamw.h"
#include "cpu/layernorm.h"
#include "cpu/parallel.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"

namespace cpu = qs::cpu;
using qs_bench::now_s;

// Fills x with a smooth pattern in parallel (also first-touches the pages in parallel).
static void fill(std::vector<float>& x, float scale, float offset) {
  int64_t n = (int64_t)x.size();
  float* p = x.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) p[i] = offset + scale * std::sin(0.001f * (float)(i % 100003));
}

// A copy over footprint/2 -> footprint/2 bytes, the baseline for kernels of that footprint.
struct CopyBuffers {
  std::vector<float> src, dst;
  explicit CopyBuffers(int64_t footprint)
      : src(footprint / 2 / (int64_t)sizeof(float)), dst(footprint / 2 / (int64_t)sizeof(float)) {
    fill(src, 1.0f, 0.0f);
    fill(dst, 0.0f, 0.0f);
  }
  int64_t bytes() const { return 2 * (int64_t)src.size() * (int64_t)sizeof(float); }  // read + write
  void copy() {
    const int64_t n = (int64_t)src.size(), block = 1 << 16;  // 256 KB memcpy pieces over the threads
    int64_t nblocks = (n + block - 1) / block;
    float* d = dst.data();
    const float* s = src.data();
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
      int64_t i0 = b * block, len = std::min(block, n - i0);
      std::memcpy(d + i0, s + i0, sizeof(float) * (size_t)len);
    }
  }
};

struct Bench {
  int min_reps;
  double min_seconds;
  std::map<int64_t, std::unique_ptr<CopyBuffers>> copies;  // by footprint

  // bytes: read + written per call; footprint: distinct bytes the kernel touches.
  // Kernel and copy calls alternate, so both see the same machine state (other processes on
  // a shared machine make single timings noisy); each keeps its best time.
  template <typename F>
  void run(const std::string& name, int64_t bytes, int64_t footprint, F fn) {
    auto& cb = copies[footprint];
    if (!cb) cb.reset(new CopyBuffers(footprint));
    fn();
    cb->copy();
    double best_k = 1e30, best_c = 1e30, start = now_s();
    for (int rep = 0; rep < 1000 && (rep < min_reps || now_s() - start < min_seconds); rep++) {
      double t0 = now_s();
      cb->copy();
      double t1 = now_s();
      fn();
      double t2 = now_s();
      best_c = std::min(best_c, t1 - t0);
      best_k = std::min(best_k, t2 - t1);
    }
    double gbs = (double)bytes / best_k / 1e9;
    double base = (double)cb->bytes() / best_c / 1e9;
    qs_bench::emit(name, gbs, "GB/s", base, "%.3f");
  }
};

int main(int argc, char** argv) {
  bool quick = false;
  if (!qs_bench::parse_args(argc, argv, "[--quick]", &quick)) return 2;
  Bench b{quick ? 3 : 8, quick ? 0.1 : 0.4, {}};
  fprintf(stderr, "kernels_bench: %d OpenMP threads, %s\n", cpu::get_num_threads(), quick ? "quick" : "full");
  const int64_t F4 = sizeof(float);

  // ---- AdamW over a flat parameter buffer: reads p, g, m, v; writes p, m, v
  {
    int64_t n = quick ? (int64_t)4 << 20 : (int64_t)32 << 20;
    std::vector<float> p(n), g(n), m(n), v(n);
    fill(p, 0.5f, 0.0f);
    fill(g, 0.01f, 0.0f);
    fill(m, 0.0f, 0.0f);
    fill(v, 0.0f, 0.0f);
    int64_t t = 1;
    b.run("adamw_update_f32_n" + std::to_string(n), 7 * n * F4, 4 * n * F4, [&]() {
      cpu::adamw_update<float>(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, t++);
    });
    double sink = 0;
    b.run("sum_squares_f32_n" + std::to_string(n), n * F4, n * F4, [&]() { sink += cpu::sum_squares<float>(g.data(), n); });
    b.run("scale_inplace_f32_n" + std::to_string(n), 2 * n * F4, n * F4, [&]() { cpu::scale_inplace<float>(g.data(), n, 1.0f); });
    if (sink == 42.0) fprintf(stderr, " ");  // keep the reductions observable
  }

  // ---- Norms on (N, C) activations, GPT-2 small width
  {
    int N = quick ? 1024 : 4096, C = 768;
    int64_t nc = (int64_t)N * C;
    std::string shape = "_N" + std::to_string(N) + "_C" + std::to_string(C);
    std::vector<float> x(nc), out(nc), dout(nc), dx(nc), w(C), bias(C), mean(N), rstd(N), dw(C), db(C);
    fill(x, 1.0f, 0.3f);
    fill(dout, 0.1f, 0.0f);
    fill(dx, 0.0f, 0.0f);
    fill(w, 0.2f, 1.0f);
    fill(bias, 0.1f, 0.0f);
    fill(dw, 0.0f, 0.0f);
    fill(db, 0.0f, 0.0f);
    // forward: read inp, write out (+ per-row stats and the (C) parameters, counted too)
    int64_t fwd_bytes = 2 * nc * F4 + 2 * (int64_t)N * F4 + 2 * (int64_t)C * F4;
    // backward: read dout, inp, dinp; write dinp (+ stats, weight, dweight/dbias read+write)
    int64_t bwd_bytes = 4 * nc * F4 + 2 * (int64_t)N * F4 + 5 * (int64_t)C * F4;
    b.run("layernorm_forward_f32" + shape, fwd_bytes, 2 * nc * F4, [&]() {
      cpu::layernorm_forward<float>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), N, C, 1e-5f);
    });
    b.run("layernorm_backward_f32" + shape, bwd_bytes, 3 * nc * F4, [&]() {
      cpu::layernorm_backward<float>(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    });
    fill(dx, 0.0f, 0.0f);
    b.run("rmsnorm_forward_f32" + shape, fwd_bytes - (int64_t)N * F4, 2 * nc * F4, [&]() {
      cpu::rmsnorm_forward<float>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
    });
    b.run("rmsnorm_backward_f32" + shape, bwd_bytes - (int64_t)N * F4 - 2 * (int64_t)C * F4, 3 * nc * F4, [&]() {
      cpu::rmsnorm_backward<float>(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
    });
    // residual stream add, same (N, C): read a, b; write out
    b.run("residual_forward_f32_n" + std::to_string(nc), 3 * nc * F4, 3 * nc * F4, [&]() {
      cpu::residual_forward<float>(out.data(), x.data(), dout.data(), nc);
    });
    // RoPE on q of (N, H, d) = (N, 12, 64): read + write, in place
    std::vector<int32_t> pos(N);
    for (int i = 0; i < N; i++) pos[i] = i % 1024;
    b.run("rope_forward_inplace_f32" + shape + "_d64", 2 * nc * F4, nc * F4, [&]() {
      cpu::rope_forward<float>(x.data(), x.data(), pos.data(), N, C / 64, 64, 10000.0);
    });
  }

  // ---- MLP activations on the (N, 4C) hidden layer
  {
    int64_t n = quick ? (int64_t)1024 * 3072 : (int64_t)4096 * 3072;
    std::string sz = "_n" + std::to_string(n);
    std::vector<float> x(n), out(n), dout(n), dx(n), up(n);
    fill(x, 3.0f, 0.0f);
    fill(dout, 0.1f, 0.0f);
    fill(dx, 0.0f, 0.0f);
    fill(up, 1.0f, 0.0f);
    b.run("gelu_forward_f32" + sz, 2 * n * F4, 2 * n * F4, [&]() { cpu::gelu_forward<float>(out.data(), x.data(), n); });
    b.run("gelu_backward_f32" + sz, 4 * n * F4, 3 * n * F4, [&]() { cpu::gelu_backward<float>(dx.data(), x.data(), dout.data(), n); });
    b.run("swiglu_forward_f32" + sz, 3 * n * F4, 3 * n * F4, [&]() { cpu::swiglu_forward<float>(out.data(), x.data(), up.data(), n); });
  }
  return 0;
}
