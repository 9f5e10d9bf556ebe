// test_kernels_grad.cpp: float64 finite-difference gradient checks and forward references for
// the CPU kernels: linear, embedding / position embedding, LayerNorm, RMSNorm, RoPE, GELU,
// SiLU, ReLU, SwiGLU, residual, and the optimizer helpers (AdamW, sum_squares, scale_inplace).
//
// For every op:
//   - the double instantiation's backward is checked against central differences of the
//     double forward (gradcheck.h), with loss L = <out, w> for a fixed random w (evaluated as
//     <out - out0, w>, see centered_loss), on odd sizes (1, 7, 13) as well as round ones (64);
//   - backward is run twice, from zeroed and from randomly prefilled gradient buffers, and the
//     second must equal prefill + the first: backward ADDS into its outputs;
//   - the forward is compared with an independent textbook formula (long double), and the
//     float instantiation with the double one on identical (float-representable) inputs.
// Determinism: parameter-gradient reductions (embedding scatter-add, norm weights) and
// sum_squares must be bit-identical with 1 and 2 OpenMP threads.
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "cpu/activations.h"
#include "cpu/adamw.h"
#include "cpu/embedding.h"
#include "cpu/layernorm.h"
#include "cpu/linear.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#include "gradcheck.h"
#include "harness.h"
#include "test_util.h"

using namespace qs_test;
namespace cpu = qs::cpu;

// ---------------------------------------------------------------------------------------------
// helpers (the shared ones are in test_util.h)

static double* ptr_or_null(VecD& v) { return v.empty() ? nullptr : v.data(); }

// Float results against double ones computed on the same inputs: relative 1e-5, with an
// absolute floor of rtol times the tensor's largest element, or times `scale` where the result
// is a difference of larger terms (elements near zero have no meaningful relative error).
static bool check_f32_vs_f64(const char* label, const VecF& got, const VecD& want, double rtol = 1e-5,
                             double scale = 0) {
  double atol = rtol * std::max(std::max(max_abs_of(want), scale), 1e-30);
  return check_close(label, got.data(), want.data(), want.size(), rtol, atol);
}

// Backward adds: the result from a prefilled buffer, minus the prefill, is the result from zeros.
static void check_increment(const char* label, const VecD& from_zero, const VecD& prefill,
                            const VecD& from_prefill) {
  VecD inc(from_zero.size());
  for (size_t i = 0; i < inc.size(); i++) inc[i] = from_prefill[i] - prefill[i];
  check_close(label, inc.data(), from_zero.data(), inc.size(), 1e-9, 1e-12);
}

// Loss for the gradient checks: <out, w> minus its value at the unperturbed inputs, summed
// term by term as sum_i (out_i - out0_i) w_i. It has the gradient of <out, w>, but the plain
// sum is ~sqrt(n) in size and rounds at ~1e-16 sqrt(n) |L|, which divided by 2h swamps the
// finite difference for large tensors; here outputs a perturbation does not reach contribute
// exact zeros.
template <typename Fwd>
static std::function<double()> centered_loss(Fwd forward, VecD& out, const VecD& w) {
  forward();
  VecD out0 = out;
  return [forward, &out, &w, out0]() {
    forward();
    double s = 0;
    for (size_t i = 0; i < out.size(); i++) s += (out[i] - out0[i]) * w[i];
    return s;
  };
}

// printf into one of a few rotating static buffers: labels for the checks.
static const char* fmt(const char* f, ...) {
  static char buf[8][160];
  static int slot = 0;
  char* b = buf[slot++ % 8];
  va_list args;
  va_start(args, f);
  vsnprintf(b, 160, f, args);
  va_end(args);
  return b;
}

// ---------------------------------------------------------------------------------------------
// linear

static void linear_case(Rng& rng, int M, int K, int N, cpu::WeightLayout layout, bool with_bias) {
  const char* lay = layout == cpu::WeightLayout::OutIn ? "OutIn" : "InOut";
  printf("  linear M=%d K=%d N=%d %s bias=%d\n", M, K, N, lay, (int)with_bias);
  VecD x = random_vector<double>(rng, (size_t)M * K);
  VecD W = random_vector<double>(rng, (size_t)N * K, 0.5);
  VecD b = with_bias ? random_vector<double>(rng, N) : VecD();
  VecD wout = random_vector<double>(rng, (size_t)M * N);
  VecD out((size_t)M * N);
  auto forward = [&]() { cpu::linear_forward<double>(out.data(), x.data(), W.data(), ptr_or_null(b), M, K, N, layout); };
  auto loss = centered_loss(forward, out, wout);

  // forward against the definition
  forward();
  VecD ref((size_t)M * N);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      long double acc = with_bias ? b[n] : 0;
      for (int k = 0; k < K; k++) {
        double wv = layout == cpu::WeightLayout::OutIn ? W[(size_t)n * K + k] : W[(size_t)k * N + n];
        acc += (long double)x[(size_t)m * K + k] * wv;
      }
      ref[(size_t)m * N + n] = (double)acc;
    }
  check_close(fmt("linear fwd f64 vs formula %s", lay), out.data(), ref.data(), ref.size(), 1e-12, 1e-12);

  // gradients from zeros and from a random prefill
  VecD dx((size_t)M * K, 0), dW(W.size(), 0), db(with_bias ? N : 0, 0);
  cpu::linear_backward<double>(dx.data(), dW.data(), ptr_or_null(db), wout.data(), x.data(), W.data(), M, K, N, layout);
  VecD px = random_vector<double>(rng, dx.size()), pW = random_vector<double>(rng, dW.size()),
       pb = random_vector<double>(rng, db.size());
  VecD dx2 = px, dW2 = pW, db2 = pb;
  cpu::linear_backward<double>(dx2.data(), dW2.data(), ptr_or_null(db2), wout.data(), x.data(), W.data(), M, K, N, layout);
  check_increment("linear dinp +=", dx, px, dx2);
  check_increment("linear dweight +=", dW, pW, dW2);
  if (with_bias) check_increment("linear dbias +=", db, pb, db2);

  // null gradients are skipped, the others unchanged
  VecD dx3((size_t)M * K, 0);
  cpu::linear_backward<double>(dx3.data(), nullptr, nullptr, wout.data(), x.data(), W.data(), M, K, N, layout);
  QS_EXPECT(bit_equal(dx3, dx), "linear dinp differs when dweight/dbias are null");

  check_gradient(fmt("linear %s %dx%dx%d inp", lay, M, K, N), x, dx, loss, rng);
  check_gradient(fmt("linear %s %dx%dx%d weight", lay, M, K, N), W, dW, loss, rng);
  if (with_bias) check_gradient(fmt("linear %s %dx%dx%d bias", lay, M, K, N), b, db, loss, rng);

  // float against double
  VecD xe = f32_exact(x), We = f32_exact(W), be = f32_exact(b), we = f32_exact(wout);
  VecF xf = to_f32(xe), Wf = to_f32(We), bf = to_f32(be), wf = to_f32(we);
  VecF outf((size_t)M * N);
  VecD outd((size_t)M * N);
  cpu::linear_forward<float>(outf.data(), xf.data(), Wf.data(), with_bias ? bf.data() : nullptr, M, K, N, layout);
  cpu::linear_forward<double>(outd.data(), xe.data(), We.data(), ptr_or_null(be), M, K, N, layout);
  check_f32_vs_f64("linear fwd f32 vs f64", outf, outd);
  VecF dxf(dx.size(), 0), dWf(dW.size(), 0), dbf(db.size(), 0);
  VecD dxd(dx.size(), 0), dWd(dW.size(), 0), dbd(db.size(), 0);
  cpu::linear_backward<float>(dxf.data(), dWf.data(), with_bias ? dbf.data() : nullptr, wf.data(), xf.data(), Wf.data(), M, K, N, layout);
  cpu::linear_backward<double>(dxd.data(), dWd.data(), ptr_or_null(dbd), we.data(), xe.data(), We.data(), M, K, N, layout);
  check_f32_vs_f64("linear dinp f32 vs f64", dxf, dxd);
  check_f32_vs_f64("linear dweight f32 vs f64", dWf, dWd);
  if (with_bias) check_f32_vs_f64("linear dbias f32 vs f64", dbf, dbd);
}

QS_TEST(linear_grad) {
  Rng rng(101);
  const int sizes[][3] = {{1, 1, 1}, {1, 7, 13}, {7, 13, 5}, {4, 64, 13}, {13, 7, 64}};
  for (auto layout : {cpu::WeightLayout::OutIn, cpu::WeightLayout::InOut})
    for (bool bias : {true, false})
      for (auto& s : sizes) linear_case(rng, s[0], s[1], s[2], layout, bias);
}

// ---------------------------------------------------------------------------------------------
// embedding

QS_TEST(embedding_grad) {
  Rng rng(202);
  const int sizes[][3] = {{1, 1, 3}, {7, 13, 5}, {20, 64, 11}, {13, 7, 1}};  // N, C, V
  for (auto& s : sizes) {
    int N = s[0], C = s[1], V = s[2];
    printf("  embedding N=%d C=%d V=%d\n", N, C, V);
    VecI ids(N);
    for (auto& id : ids) id = rng.below(V);
    VecD table = random_vector<double>(rng, (size_t)V * C);
    VecD wout = random_vector<double>(rng, (size_t)N * C);
    VecD out((size_t)N * C);
    auto forward = [&]() { cpu::embedding_forward<double>(out.data(), ids.data(), table.data(), N, C); };
    auto loss = centered_loss(forward, out, wout);
    bool exact = true;
    for (int n = 0; n < N; n++)
      for (int c = 0; c < C; c++) exact &= out[(size_t)n * C + c] == table[(size_t)ids[n] * C + c];
    QS_EXPECT(exact, "embedding_forward is not an exact gather");
    VecF outf((size_t)N * C), tablef = to_f32(table);
    cpu::embedding_forward<float>(outf.data(), ids.data(), tablef.data(), N, C);
    check_f32_vs_f64("embedding fwd f32 vs f64", outf, f32_exact(out), 0);

    VecD dtable(table.size(), 0);
    cpu::embedding_backward<double>(dtable.data(), wout.data(), ids.data(), N, C);
    VecD pre = random_vector<double>(rng, table.size()), dtable2 = pre;
    cpu::embedding_backward<double>(dtable2.data(), wout.data(), ids.data(), N, C);
    check_increment("embedding dtable +=", dtable, pre, dtable2);
    check_gradient(fmt("embedding N=%d C=%d table", N, C), table, dtable, loss, rng);

    // learned positions: out = base + wpe[pos], added in place
    int maxT = V + 2;
    VecI pos(N);
    for (auto& p : pos) p = rng.below(maxT);
    VecD wpe = random_vector<double>(rng, (size_t)maxT * C);
    VecD base = random_vector<double>(rng, (size_t)N * C);
    auto pforward = [&]() {
      out = base;
      cpu::position_embedding_forward<double>(out.data(), pos.data(), wpe.data(), N, C);
    };
    auto ploss = centered_loss(pforward, out, wout);
    VecD pref((size_t)N * C);
    for (int n = 0; n < N; n++)
      for (int c = 0; c < C; c++) pref[(size_t)n * C + c] = base[(size_t)n * C + c] + wpe[(size_t)pos[n] * C + c];
    check_close("position fwd vs base + wpe[pos]", out.data(), pref.data(), pref.size(), 0, 0);
    VecD dwpe(wpe.size(), 0);
    cpu::position_embedding_backward<double>(dwpe.data(), wout.data(), pos.data(), N, C);
    VecD prew = random_vector<double>(rng, wpe.size()), dwpe2 = prew;
    cpu::position_embedding_backward<double>(dwpe2.data(), wout.data(), pos.data(), N, C);
    check_increment("position dwpe +=", dwpe, prew, dwpe2);
    check_gradient(fmt("position N=%d C=%d wpe", N, C), wpe, dwpe, ploss, rng);
  }
}

// Many rows hitting few ids, wide enough that the column-chunked parallel path runs.
QS_TEST(embedding_backward_repeated_ids_deterministic) {
  Rng rng(303);
  const int N = 700, C = 333, V = 5;
  VecI ids(N);
  for (int n = 0; n < N; n++) ids[n] = n % 3 == 0 ? 2 : rng.below(V);  // id 2 heavily repeated
  VecF dout = to_f32(random_vector<double>(rng, (size_t)N * C));
  VecF prefill = to_f32(random_vector<double>(rng, (size_t)V * C));

  // serial reference in ascending row order: the summation order the kernel promises
  VecF ref = prefill;
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) ref[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
  // exact reference in long double
  std::vector<long double> exact(prefill.begin(), prefill.end());
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) exact[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
  VecD exactd(exact.begin(), exact.end());

  for (int threads : {1, 2}) {
    ScopedThreads st(threads);
    VecF a = prefill, b = prefill;
    cpu::embedding_backward<float>(a.data(), dout.data(), ids.data(), N, C);
    cpu::embedding_backward<float>(b.data(), dout.data(), ids.data(), N, C);
    QS_EXPECT(bit_equal(a, b), "embedding_backward not repeatable with %d threads", threads);
    QS_EXPECT(bit_equal(a, ref), "embedding_backward (%d threads) differs from the serial row-order sum", threads);
    check_close(fmt("embedding dtable %d thr vs exact", threads), a.data(), exactd.data(), a.size(), 1e-4, 1e-4);
    VecF p = prefill;
    cpu::position_embedding_backward<float>(p.data(), dout.data(), ids.data(), N, C);
    QS_EXPECT(bit_equal(p, ref), "position_embedding_backward (%d threads) differs from the serial sum", threads);
  }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

// torch.nn.functional.layer_norm from its definition, in long double.
static void layernorm_ref(VecD& out, VecD& mean, VecD& rstd, const VecD& x, const VecD& w, const VecD& b,
                          int N, int C, double eps) {
  for (int n = 0; n < N; n++) {
    const double* xr = &x[(size_t)n * C];
    long double m = 0, v = 0;
    for (int c = 0; c < C; c++) m += xr[c];
    m /= C;
    for (int c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
    v /= C;
    long double s = 1.0L / sqrtl(v + eps);
    mean[n] = (double)m;
    rstd[n] = (double)s;
    for (int c = 0; c < C; c++)
      out[(size_t)n * C + c] = (double)((xr[c] - m) * s * w[c] + (b.empty() ? 0.0L : (long double)b[c]));
  }
}

static void layernorm_case(Rng& rng, int N, int C, bool with_bias) {
  printf("  layernorm N=%d C=%d bias=%d\n", N, C, (int)with_bias);
  const double eps = 1e-5;
  VecD x = random_vector<double>(rng, (size_t)N * C);
  for (auto& v : x) v += 2.0;  // an offset: the variance must not cancel
  VecD w = random_vector<double>(rng, C, 0.5);
  for (auto& v : w) v += 1.0;
  VecD b = with_bias ? random_vector<double>(rng, C) : VecD();
  VecD wout = random_vector<double>(rng, (size_t)N * C);
  VecD out((size_t)N * C), mean(N), rstd(N);
  auto forward = [&]() {
    cpu::layernorm_forward<double>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), ptr_or_null(b), N, C, eps);
  };
  auto loss = centered_loss(forward, out, wout);

  forward();
  VecD ro((size_t)N * C), rm(N), rs(N);
  layernorm_ref(ro, rm, rs, x, w, b, N, C, eps);
  check_close("layernorm fwd f64 vs torch formula", out.data(), ro.data(), ro.size(), 1e-12, 1e-12);
  check_close("layernorm mean f64", mean.data(), rm.data(), N, 1e-12, 1e-12);
  check_close("layernorm rstd f64", rstd.data(), rs.data(), N, 1e-12, 0);

  // dbias is skipped (null) when there is no bias
  VecD dx((size_t)N * C, 0), dw(C, 0), db(with_bias ? C : 0, 0);
  cpu::layernorm_backward<double>(dx.data(), dw.data(), ptr_or_null(db), wout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  VecD px = random_vector<double>(rng, dx.size()), pw = random_vector<double>(rng, C), pb = random_vector<double>(rng, db.size());
  VecD dx2 = px, dw2 = pw, db2 = pb;
  cpu::layernorm_backward<double>(dx2.data(), dw2.data(), ptr_or_null(db2), wout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  check_increment("layernorm dinp +=", dx, px, dx2);
  check_increment("layernorm dweight +=", dw, pw, dw2);
  if (with_bias) check_increment("layernorm dbias +=", db, pb, db2);
  VecD dx3((size_t)N * C, 0);
  cpu::layernorm_backward<double>(dx3.data(), nullptr, nullptr, wout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  QS_EXPECT(bit_equal(dx3, dx), "layernorm dinp differs when dweight/dbias are null");

  check_gradient(fmt("layernorm %dx%d inp", N, C), x, dx, loss, rng);
  check_gradient(fmt("layernorm %dx%d weight", N, C), w, dw, loss, rng);
  if (with_bias) check_gradient(fmt("layernorm %dx%d bias", N, C), b, db, loss, rng);

  // float: against the torch formula on the same inputs (~1e-6) and against the double kernel
  VecD xe = f32_exact(x), we = f32_exact(w), be = f32_exact(b), woe = f32_exact(wout);
  VecF xf = to_f32(xe), wf = to_f32(we), bf = to_f32(be), wof = to_f32(woe);
  VecF of((size_t)N * C), mf(N), sf(N);
  cpu::layernorm_forward<float>(of.data(), mf.data(), sf.data(), xf.data(), wf.data(), with_bias ? bf.data() : nullptr, N, C, 1e-5f);
  layernorm_ref(ro, rm, rs, xe, we, be, N, C, (double)1e-5f);
  check_close("layernorm fwd f32 vs torch formula", of.data(), ro.data(), ro.size(), 1e-6, 1e-6);
  check_close("layernorm rstd f32 vs torch formula", sf.data(), rs.data(), N, 1e-6, 0);
  VecD od((size_t)N * C), md(N), sd(N);
  cpu::layernorm_forward<double>(od.data(), md.data(), sd.data(), xe.data(), we.data(), ptr_or_null(be), N, C, (double)1e-5f);
  check_f32_vs_f64("layernorm fwd f32 vs f64", of, od);
  VecF dxf(dx.size(), 0), dwf(C, 0), dbf(C, 0);
  VecD dxd(dx.size(), 0), dwd(C, 0), dbd(C, 0);
  cpu::layernorm_backward<float>(dxf.data(), dwf.data(), dbf.data(), wof.data(), xf.data(), wf.data(), mf.data(), sf.data(), N, C);
  cpu::layernorm_backward<double>(dxd.data(), dwd.data(), dbd.data(), woe.data(), xe.data(), we.data(), md.data(), sd.data(), N, C);
  // dinp is a difference of terms of size |dout| |w| rstd, and nearly cancels for tiny C
  check_f32_vs_f64("layernorm dinp f32 vs f64", dxf, dxd, 1e-5, max_abs_of(woe) * max_abs_of(we) * max_abs_of(sd));
  check_f32_vs_f64("layernorm dweight f32 vs f64", dwf, dwd);
  check_f32_vs_f64("layernorm dbias f32 vs f64", dbf, dbd);
}

QS_TEST(layernorm_grad) {
  Rng rng(404);
  const int sizes[][2] = {{1, 7}, {7, 13}, {4, 64}, {1, 2}, {33, 13}, {3, 768}, {5, 100}};
  for (auto& s : sizes) layernorm_case(rng, s[0], s[1], true);
  layernorm_case(rng, 7, 13, false);
  layernorm_case(rng, 4, 64, false);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

static void rmsnorm_ref(VecD& out, VecD& rstd, const VecD& x, const VecD& w, int N, int C, double eps) {
  for (int n = 0; n < N; n++) {
    long double ss = 0;
    for (int c = 0; c < C; c++) ss += (long double)x[(size_t)n * C + c] * x[(size_t)n * C + c];
    long double s = 1.0L / sqrtl(ss / C + eps);
    rstd[n] = (double)s;
    for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (double)(x[(size_t)n * C + c] * s * w[c]);
  }
}

static void rmsnorm_case(Rng& rng, int N, int C) {
  printf("  rmsnorm N=%d C=%d\n", N, C);
  const double eps = 1e-6;
  VecD x = random_vector<double>(rng, (size_t)N * C);
  VecD w = random_vector<double>(rng, C, 0.5);
  for (auto& v : w) v += 1.0;
  VecD wout = random_vector<double>(rng, (size_t)N * C);
  VecD out((size_t)N * C), rstd(N);
  auto forward = [&]() { cpu::rmsnorm_forward<double>(out.data(), rstd.data(), x.data(), w.data(), N, C, eps); };
  auto loss = centered_loss(forward, out, wout);

  forward();
  VecD ro((size_t)N * C), rs(N);
  rmsnorm_ref(ro, rs, x, w, N, C, eps);
  check_close("rmsnorm fwd f64 vs formula", out.data(), ro.data(), ro.size(), 1e-12, 1e-12);
  check_close("rmsnorm rstd f64 vs formula", rstd.data(), rs.data(), N, 1e-12, 0);

  VecD dx((size_t)N * C, 0), dw(C, 0);
  cpu::rmsnorm_backward<double>(dx.data(), dw.data(), wout.data(), x.data(), w.data(), rstd.data(), N, C);
  VecD px = random_vector<double>(rng, dx.size()), pw = random_vector<double>(rng, C);
  VecD dx2 = px, dw2 = pw;
  cpu::rmsnorm_backward<double>(dx2.data(), dw2.data(), wout.data(), x.data(), w.data(), rstd.data(), N, C);
  check_increment("rmsnorm dinp +=", dx, px, dx2);
  check_increment("rmsnorm dweight +=", dw, pw, dw2);
  VecD dx3((size_t)N * C, 0);
  cpu::rmsnorm_backward<double>(dx3.data(), nullptr, wout.data(), x.data(), w.data(), rstd.data(), N, C);
  QS_EXPECT(bit_equal(dx3, dx), "rmsnorm dinp differs when dweight is null");

  check_gradient(fmt("rmsnorm %dx%d inp", N, C), x, dx, loss, rng);
  check_gradient(fmt("rmsnorm %dx%d weight", N, C), w, dw, loss, rng);

  VecD xe = f32_exact(x), we = f32_exact(w), woe = f32_exact(wout);
  VecF xf = to_f32(xe), wf = to_f32(we), wof = to_f32(woe);
  VecF of((size_t)N * C), sf(N);
  VecD od((size_t)N * C), sd(N);
  cpu::rmsnorm_forward<float>(of.data(), sf.data(), xf.data(), wf.data(), N, C, 1e-6f);
  cpu::rmsnorm_forward<double>(od.data(), sd.data(), xe.data(), we.data(), N, C, (double)1e-6f);
  check_f32_vs_f64("rmsnorm fwd f32 vs f64", of, od);
  VecF dxf(dx.size(), 0), dwf(C, 0);
  VecD dxd(dx.size(), 0), dwd(C, 0);
  cpu::rmsnorm_backward<float>(dxf.data(), dwf.data(), wof.data(), xf.data(), wf.data(), sf.data(), N, C);
  cpu::rmsnorm_backward<double>(dxd.data(), dwd.data(), woe.data(), xe.data(), we.data(), sd.data(), N, C);
  check_f32_vs_f64("rmsnorm dinp f32 vs f64", dxf, dxd, 1e-5, max_abs_of(woe) * max_abs_of(we) * max_abs_of(sd));
  check_f32_vs_f64("rmsnorm dweight f32 vs f64", dwf, dwd);
}

QS_TEST(rmsnorm_grad) {
  Rng rng(505);
  const int sizes[][2] = {{1, 1}, {1, 7}, {7, 13}, {4, 64}, {33, 13}, {3, 768}, {5, 100}};
  for (auto& s : sizes) rmsnorm_case(rng, s[0], s[1]);
}

// dweight (and dbias) are sums over rows: with enough rows for several row blocks and the
// parallel path, 1 and 2 threads must give the same bits.
QS_TEST(norm_param_grads_deterministic) {
  Rng rng(606);
  const int N = 1001, C = 96;
  VecF x = to_f32(random_vector<double>(rng, (size_t)N * C)), dout = to_f32(random_vector<double>(rng, (size_t)N * C));
  VecF w = to_f32(random_vector<double>(rng, C)), b = to_f32(random_vector<double>(rng, C));
  VecF out((size_t)N * C), mean(N), rstd(N);
  cpu::layernorm_forward<float>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  VecF dx[2], dw[2], db[2], rdx[2], rdw[2];
  for (int t = 0; t < 2; t++) {
    ScopedThreads st(t + 1);
    dx[t].assign((size_t)N * C, 0.25f);
    dw[t].assign(C, 0.5f);
    db[t].assign(C, -0.5f);
    cpu::layernorm_backward<float>(dx[t].data(), dw[t].data(), db[t].data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  }
  QS_EXPECT(bit_equal(dx[0], dx[1]), "layernorm dinp differs between 1 and 2 threads");
  QS_EXPECT(bit_equal(dw[0], dw[1]), "layernorm dweight differs between 1 and 2 threads");
  QS_EXPECT(bit_equal(db[0], db[1]), "layernorm dbias differs between 1 and 2 threads");
  cpu::rmsnorm_forward<float>(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
  for (int t = 0; t < 2; t++) {
    ScopedThreads st(t + 1);
    rdx[t].assign((size_t)N * C, 0.25f);
    rdw[t].assign(C, 0.5f);
    cpu::rmsnorm_backward<float>(rdx[t].data(), rdw[t].data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  }
  QS_EXPECT(bit_equal(rdx[0], rdx[1]), "rmsnorm dinp differs between 1 and 2 threads");
  QS_EXPECT(bit_equal(rdw[0], rdw[1]), "rmsnorm dweight differs between 1 and 2 threads");
  printf("    layernorm/rmsnorm N=%d C=%d: 1 and 2 threads bit-identical: %s\n", N, C,
         bit_equal(dw[0], dw[1]) && bit_equal(db[0], db[1]) && bit_equal(rdw[0], rdw[1]) ? "yes" : "NO");
}

// ---------------------------------------------------------------------------------------------
// RoPE

// Hugging Face's apply_rotary_pos_emb spelled out: emb = cat(freqs, freqs),
// q * cos(emb) + rotate_half(q) * sin(emb), rotate_half(q) = cat(-q[half:], q[:half]).
static VecD rope_ref(const VecD& x, const VecI& pos, int N, int H, int d, double theta) {
  int half = d / 2;
  VecD out(x.size());
  std::vector<long double> cosv(d), sinv(d), rot(d);
  for (int n = 0; n < N; n++) {
    for (int i = 0; i < half; i++) {
      long double inv_freq = 1.0L / powl((long double)theta, (long double)(2 * i) / d);
      long double a = (long double)pos[n] * inv_freq;
      cosv[i] = cosv[i + half] = cosl(a);
      sinv[i] = sinv[i + half] = sinl(a);
    }
    for (int h = 0; h < H; h++) {
      const double* q = &x[((size_t)n * H + h) * d];
      for (int i = 0; i < d; i++) rot[i] = i < half ? -(long double)q[i + half] : (long double)q[i - half];
      for (int i = 0; i < d; i++) out[((size_t)n * H + h) * d + i] = (double)(q[i] * cosv[i] + rot[i] * sinv[i]);
    }
  }
  return out;
}

static void rope_case(Rng& rng, int N, int H, int d, double theta, const VecI& pos) {
  printf("  rope N=%d H=%d d=%d theta=%g\n", N, H, d, theta);
  size_t n = (size_t)N * H * d;
  VecD x = random_vector<double>(rng, n);
  VecD wout = random_vector<double>(rng, n);
  VecD out(n);
  auto forward = [&]() { cpu::rope_forward<double>(out.data(), x.data(), pos.data(), N, H, d, theta); };
  auto loss = centered_loss(forward, out, wout);
  VecD ref = rope_ref(x, pos, N, H, d, theta);
  // angles up to ~1e5 rad: a 1-ulp difference in inv_freq moves them by ~1e-11
  check_close("rope fwd f64 vs rotate_half formula", out.data(), ref.data(), n, 1e-9, 1e-9);

  VecD inplace = x;
  cpu::rope_forward<double>(inplace.data(), inplace.data(), pos.data(), N, H, d, theta);
  QS_EXPECT(bit_equal(inplace, out), "rope_forward in place (out == inp) differs from out of place");

  VecD dx(n, 0);
  cpu::rope_backward<double>(dx.data(), wout.data(), pos.data(), N, H, d, theta);
  VecD pre = random_vector<double>(rng, n), dx2 = pre;
  cpu::rope_backward<double>(dx2.data(), wout.data(), pos.data(), N, H, d, theta);
  check_increment("rope dinp +=", dx, pre, dx2);
  check_gradient(fmt("rope N=%d H=%d d=%d th=%g inp", N, H, d, theta), x, dx, loss, rng);

  VecD xe = f32_exact(x), woe = f32_exact(wout);
  VecF xf = to_f32(xe), wof = to_f32(woe), of(n), dxf(n, 0);
  VecD od(n), dxd(n, 0);
  cpu::rope_forward<float>(of.data(), xf.data(), pos.data(), N, H, d, theta);
  cpu::rope_forward<double>(od.data(), xe.data(), pos.data(), N, H, d, theta);
  check_f32_vs_f64("rope fwd f32 vs f64", of, od);
  VecF off = xf;
  cpu::rope_forward<float>(off.data(), off.data(), pos.data(), N, H, d, theta);
  QS_EXPECT(bit_equal(off, of), "rope_forward<float> in place differs from out of place");
  cpu::rope_backward<float>(dxf.data(), wof.data(), pos.data(), N, H, d, theta);
  cpu::rope_backward<double>(dxd.data(), woe.data(), pos.data(), N, H, d, theta);
  check_f32_vs_f64("rope dinp f32 vs f64", dxf, dxd);
}

QS_TEST(rope_grad) {
  Rng rng(707);
  // arbitrary, non-monotonic, repeated positions (thought tokens sit at i + s)
  VecI pos7 = {5, 0, 17, 3, 3, 100000, 2};
  VecI pos1 = {4095};
  for (double theta : {10000.0, 1e6}) {
    rope_case(rng, 1, 1, 2, theta, pos1);
    rope_case(rng, 7, 1, 6, theta, pos7);
    rope_case(rng, 7, 3, 64, theta, pos7);
    rope_case(rng, 1, 3, 128, theta, pos1);
  }
  // d > 256 runs the frequency table in two chunks
  VecI pos3 = {1, 70000, 9};
  rope_case(rng, 3, 2, 300, 10000.0, pos3);
  // large enough for the parallel path
  VecI posb(64);
  for (auto& p : posb) p = rng.below(32768);
  rope_case(rng, 64, 4, 128, 500000.0, posb);
}

// ---------------------------------------------------------------------------------------------
// pointwise: GELU, SiLU, SwiGLU, residual

static long double gelu_ref(long double x) {
  const long double k = sqrtl(2.0L / 3.14159265358979323846264338327950288L);
  return 0.5L * x * (1.0L + tanhl(k * (x + 0.044715L * x * x * x)));
}
static long double silu_ref(long double x) { return x / (1.0L + expl(-x)); }

// One unary activation: forward vs formula, float vs double, gradient, accumulation.
template <typename Fwd, typename Bwd, typename Ref>
static void unary_case(const char* name, Rng& rng, int64_t n, Fwd fwd, Bwd bwd, Ref ref) {
  printf("  %s n=%lld\n", name, (long long)n);
  VecD x = random_vector<double>(rng, n, 3.0);
  if (n >= 7) { x[0] = 0; x[1] = -9; x[2] = 9; x[3] = -100; x[4] = 100; x[5] = -30; }  // zero and the tails
  VecD wout = random_vector<double>(rng, n);
  VecD out(n);
  auto loss = centered_loss([&]() { fwd(out.data(), x.data(), n); }, out, wout);
  VecD r(n);
  for (int64_t i = 0; i < n; i++) r[i] = (double)ref((long double)x[i]);
  check_close(fmt("%s fwd f64 vs formula", name), out.data(), r.data(), n, 1e-12, 1e-14);
  VecD ip = x;
  fwd(ip.data(), ip.data(), n);
  QS_EXPECT(bit_equal(ip, out), "%s forward in place differs", name);

  VecD dx(n, 0);
  bwd(dx.data(), x.data(), wout.data(), n);
  VecD pre = random_vector<double>(rng, n), dx2 = pre;
  bwd(dx2.data(), x.data(), wout.data(), n);
  check_increment(fmt("%s dinp +=", name), dx, pre, dx2);
  check_gradient(fmt("%s n=%lld inp", name, (long long)n), x, dx, loss, rng);

  VecD xe = f32_exact(x), woe = f32_exact(wout);
  VecF xf = to_f32(xe), wof = to_f32(woe), of(n), dxf(n, 0);
  VecD od(n), dxd(n, 0);
  fwd(of.data(), xf.data(), n);
  fwd(od.data(), xe.data(), n);
  check_f32_vs_f64(fmt("%s fwd f32 vs f64", name), of, od);
  bwd(dxf.data(), xf.data(), wof.data(), n);
  bwd(dxd.data(), xe.data(), woe.data(), n);
  check_f32_vs_f64(fmt("%s dinp f32 vs f64", name), dxf, dxd);
}

// generic lambdas dispatching to the float or double instantiation
#define QS_UNARY(op)                                                                         \
  [](auto* out, const auto* in, int64_t n) { cpu::op##_forward(out, in, n); },              \
      [](auto* dinp, const auto* in, const auto* dout, int64_t n) { cpu::op##_backward(dinp, in, dout, n); }

QS_TEST(gelu_silu_grad) {
  Rng rng(808);
  for (int64_t n : {1, 7, 64, 1000, 40001}) {
    unary_case("gelu", rng, n, QS_UNARY(gelu), gelu_ref);
    unary_case("silu", rng, n, QS_UNARY(silu), silu_ref);
  }
  // GPT-2's constants: values of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) from Python's math
  double xs[] = {-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0};
  double want[] = {-0.0036373920817729943, -0.15880800939172324, -0.15428599017485606, 0.0,
                   0.34571400982514394, 0.8411919906082768, 2.996362607918227};
  double got[7];
  cpu::gelu_forward<double>(got, xs, 7);
  check_close("gelu vs tabulated tanh-form values", got, want, 7, 1e-12, 1e-15);
}

// ReLU has a kink at 0, where central differences are meaningless: the gradient check runs
// on inputs kept away from it (|x| >= 0.01 >> h), and the kink (x = 0, -0, NaN) is checked
// exactly: gradient 0 at x <= 0 like torch, NaN forward propagates.
QS_TEST(relu_grad) {
  Rng rng(707);
  for (int64_t n : {1, 7, 64, 1000, 40001}) {
    printf("  relu n=%lld\n", (long long)n);
    VecD x = random_vector<double>(rng, n, 3.0);
    for (double& v : x) if (std::fabs(v) < 0.01) v = v < 0 ? -0.01 : 0.01;
    VecD wout = random_vector<double>(rng, n), out(n);
    auto loss = centered_loss([&]() { cpu::relu_forward<double>(out.data(), x.data(), n); }, out, wout);
    bool exact = true;
    for (int64_t i = 0; i < n; i++) exact &= out[i] == (x[i] > 0 ? x[i] : 0.0);
    QS_EXPECT(exact, "relu forward is not max(x, 0)");
    VecD ip = x;
    cpu::relu_forward<double>(ip.data(), ip.data(), n);
    QS_EXPECT(bit_equal(ip, out), "relu forward in place differs");
    VecD dx(n, 0);
    cpu::relu_backward<double>(dx.data(), x.data(), wout.data(), n);
    VecD pre = random_vector<double>(rng, n), dx2 = pre;
    cpu::relu_backward<double>(dx2.data(), x.data(), wout.data(), n);
    check_increment("relu dinp +=", dx, pre, dx2);
    check_gradient(fmt("relu n=%lld inp", (long long)n), x, dx, loss, rng);
    // float: exactly the double values (max and a select are exact)
    VecF xf = to_f32(x), wf = to_f32(wout), of(n), dxf(n, 0);
    VecD xe = to_f64(xf), we = to_f64(wf), od(n), dxd(n, 0);
    cpu::relu_forward<float>(of.data(), xf.data(), n);
    cpu::relu_forward<double>(od.data(), xe.data(), n);
    cpu::relu_backward<float>(dxf.data(), xf.data(), wf.data(), n);
    cpu::relu_backward<double>(dxd.data(), xe.data(), we.data(), n);
    QS_EXPECT(bit_equal(to_f64(of), od) && bit_equal(to_f64(dxf), dxd), "relu f32 differs from f64");
  }
  // the kink and special values, both float paths (a vector and its tail) and double
  const double xs[9] = {0.0, -0.0, 1e-30, -1e-30, 2.5, -2.5, INFINITY, -INFINITY, NAN};
  const double want_out[9] = {0.0, 0.0, 1e-30, 0.0, 2.5, 0.0, INFINITY, 0.0, NAN};
  const double want_grad[9] = {0.0, 0.0, 3.0, 0.0, 3.0, 0.0, 3.0, 0.0, 0.0};
  for (int n : {9, 40}) {  // 40: every value in the vector body too
    VecD xd(n), dout(n, 3.0), o(n), g(n, 0);
    for (int i = 0; i < n; i++) xd[i] = xs[i % 9];
    VecF xf = to_f32(xd), doutf = to_f32(dout), of(n), gf(n, 0);
    cpu::relu_forward<double>(o.data(), xd.data(), n);
    cpu::relu_backward<double>(g.data(), xd.data(), dout.data(), n);
    cpu::relu_forward<float>(of.data(), xf.data(), n);
    cpu::relu_backward<float>(gf.data(), xf.data(), doutf.data(), n);
    bool ok = true;
    for (int i = 0; i < n; i++) {
      double wo = want_out[i % 9], wof = (double)(float)wo;  // 1e-30 stays a (denormal-free) float
      auto same = [](double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
      ok &= same(o[i], wo) && same(of[i], wof) && g[i] == want_grad[i % 9] && gf[i] == (float)want_grad[i % 9];
    }
    QS_EXPECT(ok, "relu special values (n=%d): wrong output or gradient at 0, -0, +-inf or NaN", n);
  }
}

QS_TEST(swiglu_grad) {
  Rng rng(909);
  for (int64_t n : {1, 7, 64, 1000, 40001}) {
    printf("  swiglu n=%lld\n", (long long)n);
    VecD g = random_vector<double>(rng, n, 3.0), u = random_vector<double>(rng, n);
    VecD wout = random_vector<double>(rng, n), out(n);
    auto loss = centered_loss([&]() { cpu::swiglu_forward<double>(out.data(), g.data(), u.data(), n); }, out, wout);
    VecD r(n);
    for (int64_t i = 0; i < n; i++) r[i] = (double)(silu_ref(g[i]) * u[i]);
    check_close("swiglu fwd f64 vs formula", out.data(), r.data(), n, 1e-12, 1e-14);
    VecD dg(n, 0), du(n, 0);
    cpu::swiglu_backward<double>(dg.data(), du.data(), g.data(), u.data(), wout.data(), n);
    VecD pg = random_vector<double>(rng, n), pu = random_vector<double>(rng, n), dg2 = pg, du2 = pu;
    cpu::swiglu_backward<double>(dg2.data(), du2.data(), g.data(), u.data(), wout.data(), n);
    check_increment("swiglu dgate +=", dg, pg, dg2);
    check_increment("swiglu dup +=", du, pu, du2);
    VecD dg3(n, 0), du3(n, 0);
    cpu::swiglu_backward<double>(dg3.data(), nullptr, g.data(), u.data(), wout.data(), n);
    cpu::swiglu_backward<double>(nullptr, du3.data(), g.data(), u.data(), wout.data(), n);
    QS_EXPECT(bit_equal(dg3, dg) && bit_equal(du3, du), "swiglu gradients differ when the other is null");
    check_gradient(fmt("swiglu n=%lld gate", (long long)n), g, dg, loss, rng);
    check_gradient(fmt("swiglu n=%lld up", (long long)n), u, du, loss, rng);

    VecD ge = f32_exact(g), ue = f32_exact(u), woe = f32_exact(wout);
    VecF gf = to_f32(ge), uf = to_f32(ue), wof = to_f32(woe), of(n), dgf(n, 0), duf(n, 0);
    VecD od(n), dgd(n, 0), dud(n, 0);
    cpu::swiglu_forward<float>(of.data(), gf.data(), uf.data(), n);
    cpu::swiglu_forward<double>(od.data(), ge.data(), ue.data(), n);
    check_f32_vs_f64("swiglu fwd f32 vs f64", of, od);
    cpu::swiglu_backward<float>(dgf.data(), duf.data(), gf.data(), uf.data(), wof.data(), n);
    cpu::swiglu_backward<double>(dgd.data(), dud.data(), ge.data(), ue.data(), woe.data(), n);
    check_f32_vs_f64("swiglu dgate f32 vs f64", dgf, dgd);
    check_f32_vs_f64("swiglu dup f32 vs f64", duf, dud);
  }
}

QS_TEST(residual_grad) {
  Rng rng(1010);
  for (int64_t n : {1, 7, 64, 40001}) {
    printf("  residual n=%lld\n", (long long)n);
    VecD a = random_vector<double>(rng, n), b = random_vector<double>(rng, n);
    VecD wout = random_vector<double>(rng, n), out(n);
    auto loss = centered_loss([&]() { cpu::residual_forward<double>(out.data(), a.data(), b.data(), n); }, out, wout);
    bool exact = true;
    for (int64_t i = 0; i < n; i++) exact &= out[i] == a[i] + b[i];
    QS_EXPECT(exact, "residual_forward is not a + b");
    VecD ip = a;
    cpu::residual_forward<double>(ip.data(), ip.data(), b.data(), n);
    QS_EXPECT(bit_equal(ip, out), "residual forward in place differs");
    VecD da(n, 0), db(n, 0);
    cpu::residual_backward<double>(da.data(), db.data(), wout.data(), n);
    VecD pa = random_vector<double>(rng, n), pb = random_vector<double>(rng, n), da2 = pa, db2 = pb;
    cpu::residual_backward<double>(da2.data(), db2.data(), wout.data(), n);
    check_increment("residual da +=", da, pa, da2);
    check_increment("residual db +=", db, pb, db2);
    check_gradient(fmt("residual n=%lld a", (long long)n), a, da, loss, rng);
    check_gradient(fmt("residual n=%lld b", (long long)n), b, db, loss, rng);
    VecF af = to_f32(a), bf = to_f32(b), of(n);
    cpu::residual_forward<float>(of.data(), af.data(), bf.data(), n);
    bool fexact = true;
    for (int64_t i = 0; i < n; i++) fexact &= of[i] == af[i] + bf[i];
    QS_EXPECT(fexact, "residual_forward<float> is not a + b");
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW

// torch.optim.AdamW (foreach=False) one element at a time, in T, rounding where torch's float
// tensor ops round: scalars are Python floats (double) converted to T by each op.
template <typename T>
static void adamw_torch_ref(std::vector<T>& p, const std::vector<T>& g, std::vector<T>& m, std::vector<T>& v, float lr,
                            float beta1, float beta2, float eps, float wd, int64_t t) {
  double bc1 = 1.0 - std::pow((double)beta1, (double)t);
  double bc2 = 1.0 - std::pow((double)beta2, (double)t);
  double step_size = (double)lr / bc1;
  double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < p.size(); i++) {
    p[i] = p[i] * (T)(1.0 - (double)lr * (double)wd);          // param.mul_(1 - lr * wd)
    T w = (T)(1.0 - (double)beta1);                              // exp_avg.lerp_(grad, 1 - beta1)
    m[i] = std::fabs(w) < (T)0.5 ? m[i] + w * (g[i] - m[i]) : g[i] - (g[i] - m[i]) * ((T)1 - w);
    v[i] = v[i] * (T)beta2;                                      // exp_avg_sq.mul_(beta2)
    v[i] = v[i] + (T)(1.0 - (double)beta2) * g[i] * g[i];        //   .addcmul_(g, g, 1 - beta2)
    T denom = std::sqrt(v[i]) / (T)bc2_sqrt;                     // (exp_avg_sq.sqrt() / bc2_sqrt)
    denom = denom + (T)eps;                                      //   .add_(eps)
    p[i] = p[i] + (T)(-step_size) * m[i] / denom;                // param.addcdiv_(m, denom, -step)
  }
}

// The paper's AdamW in long double, written independently of torch's op order.
static void adamw_textbook(std::vector<long double>& p, const VecD& g, std::vector<long double>& m,
                           std::vector<long double>& v, long double lr, long double b1, long double b2,
                           long double eps, long double wd, int64_t t) {
  for (size_t i = 0; i < p.size(); i++) {
    p[i] -= lr * wd * p[i];
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * (long double)g[i] * g[i];
    long double mhat = m[i] / (1 - powl(b1, t)), vhat = v[i] / (1 - powl(b2, t));
    p[i] -= lr * mhat / (sqrtl(vhat) + eps);
  }
}

QS_TEST(adamw_update_vs_torch) {
  Rng rng(1111);
  struct Cfg { float lr, beta1, beta2, eps, wd; };
  const Cfg cfgs[] = {{1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f}, {3e-4f, 0.9f, 0.95f, 1e-8f, 0.0f},
                      {1e-2f, 0.3f, 0.99f, 1e-6f, 0.01f}};  // beta1 < 0.5: torch's other lerp branch
  for (const Cfg& c : cfgs)
    for (int64_t n : {1, 37, 100003}) {
      printf("  adamw n=%lld lr=%g beta1=%g beta2=%g eps=%g wd=%g\n", (long long)n, c.lr, c.beta1, c.beta2, c.eps, c.wd);
      VecD p0 = f32_exact(random_vector<double>(rng, n));
      VecD pd = p0, md(n, 0), vd(n, 0), pr = p0, mr(n, 0), vr(n, 0);
      VecF pf = to_f32(p0), mf(n, 0), vf(n, 0), prf = pf, mrf(n, 0), vrf(n, 0);
      std::vector<long double> pt(p0.begin(), p0.end()), mt(n, 0), vt(n, 0);
      for (int64_t t = 1; t <= 5; t++) {
        VecD g = f32_exact(random_vector<double>(rng, n));
        for (int64_t i = 0; i < n; i += 5) g[i] *= 1e-7;  // gradients where eps matters
        VecF gf = to_f32(g);
        cpu::adamw_update<double>(pd.data(), g.data(), md.data(), vd.data(), n, c.lr, c.beta1, c.beta2, c.eps, c.wd, t);
        cpu::adamw_update<float>(pf.data(), gf.data(), mf.data(), vf.data(), n, c.lr, c.beta1, c.beta2, c.eps, c.wd, t);
        adamw_torch_ref<double>(pr, g, mr, vr, c.lr, c.beta1, c.beta2, c.eps, c.wd, t);
        adamw_torch_ref<float>(prf, gf, mrf, vrf, c.lr, c.beta1, c.beta2, c.eps, c.wd, t);
        adamw_textbook(pt, g, mt, vt, c.lr, c.beta1, c.beta2, c.eps, c.wd, t);
      }
      check_close("adamw f64 params vs torch order", pd.data(), pr.data(), n, 1e-14, 1e-15);
      check_close("adamw f64 m vs torch order", md.data(), mr.data(), n, 1e-14, 1e-15);
      check_close("adamw f64 v vs torch order", vd.data(), vr.data(), n, 1e-14, 1e-20);
      VecD ptd(pt.begin(), pt.end()), mtd(mt.begin(), mt.end()), vtd(vt.begin(), vt.end());
      check_close("adamw f64 params vs textbook", pd.data(), ptd.data(), n, 1e-12, 1e-14);
      check_close("adamw f64 m vs textbook", md.data(), mtd.data(), n, 1e-12, 1e-14);
      check_close("adamw f64 v vs textbook", vd.data(), vtd.data(), n, 1e-12, 1e-20);
      check_close("adamw f32 params vs torch order f32", pf.data(), prf.data(), n, 1e-6, 1e-7);
      check_close("adamw f32 m vs torch order f32", mf.data(), mrf.data(), n, 1e-6, 1e-9);
      check_close("adamw f32 v vs torch order f32", vf.data(), vrf.data(), n, 1e-6, 1e-12);
      check_close("adamw f32 params vs textbook", pf.data(), ptd.data(), n, 1e-6, 1e-7);
    }
}

// ---------------------------------------------------------------------------------------------
// sum_squares, scale_inplace

template <typename T>
static void sum_squares_case(Rng& rng, int64_t n) {
  std::vector<T> x(n);
  for (auto& v : x) v = (T)(rng.normal() * 3.0);
  long double exact = 0;
  for (T v : x) exact += (long double)v * v;
  double r1, r2, r2b;
  {
    ScopedThreads st(1);
    r1 = cpu::sum_squares<T>(x.data(), n);
  }
  {
    ScopedThreads st(2);
    r2 = cpu::sum_squares<T>(x.data(), n);
    r2b = cpu::sum_squares<T>(x.data(), n);
  }
  double want = (double)exact;
  printf("    sum_squares<%s> n=%-8lld 1thr=%.17g 2thr=%.17g rel err %.2e\n", sizeof(T) == 4 ? "float" : "double",
         (long long)n, r1, r2, n ? std::fabs(r1 - want) / want : 0.0);
  QS_EXPECT(std::memcmp(&r1, &r2, sizeof r1) == 0 && std::memcmp(&r2, &r2b, sizeof r2) == 0,
            "sum_squares n=%lld not bit-identical across 1/2 threads: %.17g vs %.17g", (long long)n, r1, r2);
  QS_EXPECT(std::fabs(r1 - want) <= 1e-13 * want, "sum_squares n=%lld: %.17g, exact %.17g", (long long)n, r1, want);
  if (sizeof(T) == 4) {  // float: the same lane layout and exact squares on every SIMD path
    for (const char* isa : {"generic", "avx2"}) {
      ScopedSimd simd(isa);
      double r = cpu::sum_squares<T>(x.data(), n);
      QS_EXPECT(std::memcmp(&r, &r2, sizeof r) == 0, "sum_squares<float> n=%lld differs under QS_CPU_SIMD=%s: %.17g vs %.17g",
                (long long)n, isa, r, r2);
    }
  }
}

QS_TEST(sum_squares_deterministic) {
  Rng rng(1212);
  for (int64_t n : {0, 1, 7, 64, 16384, 16385, 100003, (1 << 20) + 3}) {
    sum_squares_case<float>(rng, n);
    sum_squares_case<double>(rng, n);
  }
}

QS_TEST(scale_inplace) {
  Rng rng(1313);
  for (int64_t n : {1, 7, 64, 100003}) {
    VecD x = random_vector<double>(rng, n), y = x;
    VecF xf = to_f32(x), yf = xf;
    cpu::scale_inplace<double>(y.data(), n, 0.37);
    cpu::scale_inplace<float>(yf.data(), n, 0.37f);
    bool ok = true;
    for (int64_t i = 0; i < n; i++) ok &= y[i] == x[i] * 0.37 && yf[i] == xf[i] * 0.37f;
    QS_EXPECT(ok, "scale_inplace n=%lld is not x * s", (long long)n);
    printf("    scale_inplace n=%-7lld exact: %s\n", (long long)n, ok ? "yes" : "NO");
  }
}

QS_TEST_MAIN()
