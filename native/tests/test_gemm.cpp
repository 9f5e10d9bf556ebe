// test_gemm.cpp: qs::cpu::gemm / gemm_batched against a triple-loop reference in double.
//
// Every micro-kernel family this machine can run (forced with gemm_force_kernel), float and
// double, all four transpose combinations, odd sizes that leave edges in every blocking
// dimension (MR, NR, KC, MC, NC), padded leading dimensions, several alpha / beta, K = 0,
// alpha = 0, batched products and 1 vs 2 OpenMP threads.
//
// Error measure: for each element, |got - want| / (|alpha| * sum_p |a_ip||b_pj| + |beta c_ij|),
// i.e. relative to the magnitudes that were summed, so that cancellation cannot make a correct
// result look wrong. Float passes below 1e-4 (K <= ~3000 here; the worst case bound is about
// K * 6e-8), double below 1e-12. The padding of C past column N must never be written.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/parallel.h"
#include "harness.h"

using qs_test::Rng;

namespace {

constexpr float kSentinel = 12345.0f;  // fills C's padding (columns N..ldc-1): must survive

struct Problem {
  bool ta, tb;
  int M, N, K;
  int lda, ldb, ldc;
  std::vector<double> A, B, C0;  // values exactly representable in float
};

// op(A) is M x K, op(B) is K x N; storage is transposed when ta / tb, rows padded by `pad`.
Problem make_problem(Rng& rng, bool ta, bool tb, int M, int N, int K, int pad) {
  Problem p;
  p.ta = ta;
  p.tb = tb;
  p.M = M;
  p.N = N;
  p.K = K;
  p.lda = (ta ? M : K) + pad;
  p.ldb = (tb ? K : N) + pad;
  p.ldc = N + pad;
  const size_t a_rows = ta ? K : M, b_rows = tb ? N : K;
  p.A.resize(std::max<size_t>(1, a_rows * p.lda));
  p.B.resize(std::max<size_t>(1, b_rows * p.ldb));
  p.C0.resize(std::max<size_t>(1, (size_t)M * p.ldc));
  for (auto& x : p.A) x = (float)rng.uniform(-1, 1);
  for (auto& x : p.B) x = (float)rng.uniform(-1, 1);
  for (auto& x : p.C0) x = (float)rng.uniform(-1, 1);
  return p;
}

double a_at(const Problem& p, int i, int k) { return p.ta ? p.A[(size_t)k * p.lda + i] : p.A[(size_t)i * p.lda + k]; }
double b_at(const Problem& p, int k, int j) { return p.tb ? p.B[(size_t)j * p.ldb + k] : p.B[(size_t)k * p.ldb + j]; }

// The exact-ish product op(A)·op(B) and the sum of |terms| per element, both M x N.
struct Reference {
  std::vector<double> prod, mag;
};

Reference reference(const Problem& p) {
  Reference r;
  r.prod.assign((size_t)p.M * p.N, 0.0);
  r.mag.assign((size_t)p.M * p.N, 0.0);
  for (int i = 0; i < p.M; i++)
    for (int k = 0; k < p.K; k++) {
      const double a = a_at(p, i, k);
      for (int j = 0; j < p.N; j++) {
        const double t = a * b_at(p, k, j);
        r.prod[(size_t)i * p.N + j] += t;
        r.mag[(size_t)i * p.N + j] += std::fabs(t);
      }
    }
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Run gemm<T> on p and compare with alpha * prod + beta * C0. `nan_c` fills C with NaN first
// (only meaningful with beta == 0). Returns the worst normalised error (inf if a check failed).
template <typename T>
double run_and_check(const char* label, const Problem& p, const Reference& ref, double alpha,
                     double beta, bool nan_c, double tol) {
  std::vector<T> A = cast<T>(p.A), B = cast<T>(p.B), C = cast<T>(p.C0);
  for (int i = 0; i < p.M; i++)
    for (int j = 0; j < p.ldc; j++) {
      T& c = C[(size_t)i * p.ldc + j];
      if (j >= p.N) c = (T)kSentinel;
      else if (nan_c) c = std::numeric_limits<T>::quiet_NaN();
    }
  qs::cpu::gemm<T>(p.ta, p.tb, p.M, p.N, p.K, (T)alpha, A.data(), p.lda, B.data(), p.ldb, (T)beta,
                   C.data(), p.ldc);
  double worst = 0;
  int bad = 0, bad_i = 0, bad_j = 0;
  double bad_got = 0, bad_want = 0;
  for (int i = 0; i < p.M; i++) {
    for (int j = 0; j < p.ldc; j++) {
      const double got = (double)C[(size_t)i * p.ldc + j];
      double want, scale;
      if (j >= p.N) {
        want = kSentinel;
        scale = 1e-30;  // padding: bit-exact or fail
      } else {
        const double c0 = nan_c ? 0.0 : p.C0[(size_t)i * p.ldc + j];
        want = alpha * ref.prod[(size_t)i * p.N + j] + beta * c0;
        scale = std::fabs(alpha) * ref.mag[(size_t)i * p.N + j] + std::fabs(beta * c0) + 1e-30;
      }
      const double err = std::fabs(got - want) / scale;
      if (!(err <= tol)) {  // NaN fails too
        if (bad++ == 0) {
          bad_i = i;
          bad_j = j;
          bad_got = got;
          bad_want = want;
        }
        worst = std::numeric_limits<double>::infinity();
      } else {
        worst = std::max(worst, err);
      }
    }
  }
  if (bad) {
    QS_EXPECT(false,
              "%s: ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g beta=%g: %d bad, first "
              "C[%d][%d] got %.9g want %.9g",
              label, p.ta, p.tb, p.M, p.N, p.K, p.lda, p.ldb, p.ldc, alpha, beta, bad, bad_i, bad_j,
              bad_got, bad_want);
  }
  return worst;
}

struct Size {
  int M, N, K;
};

// Edges everywhere: tiles (MR 14/6, NR 32/16/8/4), KC (1024 avx512, 256 others), MC (112 / 144),
// NC (1024 / 3072), vectors of 1.
const Size kSizes[] = {
    {1, 1, 1},     {7, 13, 5},    {33, 65, 17},  {100, 1, 300}, {1, 257, 129}, {250, 130, 515},
    {14, 32, 16},  {15, 33, 257}, {64, 64, 64},  {29, 97, 600}, {3, 700, 40},  {400, 40, 20},
    {6, 16, 8},    {2, 3200, 9},  {345, 50, 3},  {17, 31, 1},    {23, 45, 2100},
};

const char* const kKernels[] = {"avx512", "avx2", "generic"};

struct AlphaBeta {
  double alpha, beta;
  bool nan_c;
};
const AlphaBeta kAlphaBeta[] = {{1.0, 0.0, true}, {0.5, 1.0, false}, {-1.5, 0.25, false}};

// All sizes x transposes x alpha/beta for type T with the currently forced kernel.
template <typename T>
void sweep(const char* kernel, double tol, int threads) {
  qs::cpu::set_num_threads(threads);
  Rng rng(42);
  for (int t = 0; t < 4; t++) {
    const bool ta = t & 1, tb = t & 2;
    double worst = 0;
    int cases = 0;
    for (size_t s = 0; s < sizeof(kSizes) / sizeof(kSizes[0]); s++) {
      for (int pad : {0, 5}) {
        const Size& sz = kSizes[s];
        Problem p = make_problem(rng, ta, tb, sz.M, sz.N, sz.K, pad);
        Reference ref = reference(p);
        for (const AlphaBeta& ab : kAlphaBeta) {
          worst = std::max(worst, run_and_check<T>(kernel, p, ref, ab.alpha, ab.beta, ab.nan_c, tol));
          cases++;
        }
      }
    }
    char label[96];
    snprintf(label, sizeof(label), "%s %s ta=%d tb=%d threads=%d", kernel,
             sizeof(T) == 4 ? "f32" : "f64", ta, tb, threads);
    printf("    %-40s cases=%-4d max_err/|terms|=%.3e  %s\n", label, cases, worst,
           worst <= tol ? "OK" : "NOT OK");
  }
  qs::cpu::set_num_threads(1);
}

// Restores CPUID dispatch and the thread count however a test case ends.
struct KernelGuard {
  int threads = qs::cpu::get_num_threads();
  ~KernelGuard() {
    qs::cpu::gemm_force_kernel("auto");
    qs::cpu::set_num_threads(threads);
  }
};

}  // namespace

QS_TEST(gemm_kernel_selection) {
  KernelGuard guard;
  const std::string detected = qs::cpu::gemm_kernel_name();
  printf("    detected kernel: %s\n", detected.c_str());
  QS_EXPECT(detected == "avx512" || detected == "avx2" || detected == "generic", "bad name %s",
            detected.c_str());
  QS_EXPECT(qs::cpu::gemm_force_kernel("generic"), "generic must always be available");
  QS_EXPECT(std::string(qs::cpu::gemm_kernel_name()) == "generic", "force generic: got %s",
            qs::cpu::gemm_kernel_name());
  QS_EXPECT(!qs::cpu::gemm_force_kernel("sse9"), "unknown kernel name accepted");
  QS_EXPECT(!qs::cpu::gemm_force_kernel(nullptr), "null kernel name accepted");
  QS_EXPECT(std::string(qs::cpu::gemm_kernel_name()) == "generic", "failed force changed kernel");
  QS_EXPECT(qs::cpu::gemm_force_kernel("auto"), "auto must be accepted");
  QS_EXPECT(detected == qs::cpu::gemm_kernel_name(), "auto did not restore %s", detected.c_str());
  // The detected kernel and everything below it can be forced.
  bool below = false;
  for (const char* k : kKernels) {
    if (detected == k) below = true;
    if (below) QS_EXPECT(qs::cpu::gemm_force_kernel(k), "cannot force %s below detected %s", k, detected.c_str());
  }
}

QS_TEST(gemm_f32_all_kernels) {
  KernelGuard guard;
  for (const char* k : kKernels) {
    if (!qs::cpu::gemm_force_kernel(k)) {
      printf("    %s: not supported on this CPU, skipped\n", k);
      continue;
    }
    sweep<float>(k, 1e-4, 1);
  }
}

QS_TEST(gemm_f64) {
  KernelGuard guard;
  sweep<double>("auto", 1e-12, 1);
}

QS_TEST(gemm_threads) {
  KernelGuard guard;
  const int hw = std::max(2, qs::cpu::hardware_threads());
  // Big enough to go parallel, with edges in both split directions; the last one has several
  // NC, KC and MC blocks per thread.
  const Size sizes[] = {{301, 203, 150}, {37, 1500, 100}, {1000, 20, 64}, {350, 3100, 270},
                        {130, 70, 2100}};
  Rng rng(7);
  for (const Size& sz : sizes) {
    for (int t = 0; t < 4; t++) {
      Problem p = make_problem(rng, t & 1, t & 2, sz.M, sz.N, sz.K, t);
      Reference ref = reference(p);
      for (const char* k : kKernels) {
        if (!qs::cpu::gemm_force_kernel(k)) continue;
        double worst = 0;
        for (int threads : {1, 2, hw}) {
          qs::cpu::set_num_threads(threads);
          worst = std::max(worst, run_and_check<float>(k, p, ref, 1.0, 0.0, true, 1e-4));
          worst = std::max(worst, run_and_check<float>(k, p, ref, 0.75, 1.0, false, 1e-4));
          worst = std::max(worst, run_and_check<double>(k, p, ref, -1.0, 0.5, false, 1e-12));
        }
        char label[96];
        snprintf(label, sizeof(label), "%s M=%d N=%d K=%d ta=%d tb=%d threads=1,2,%d", k, sz.M,
                 sz.N, sz.K, t & 1, (t >> 1) & 1, hw);
        printf("    %-56s max_err/|terms|=%.3e  %s\n", label, worst, worst <= 1e-4 ? "OK" : "NOT OK");
      }
    }
  }
}

QS_TEST(gemm_k0_alpha0_empty) {
  KernelGuard guard;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // K == 0: C = beta * C; beta == 0 must clear NaN garbage.
  for (int threads : {1, 2}) {
    qs::cpu::set_num_threads(threads);
    std::vector<float> C = {1, 2, nan, 4, 5, 6}, C2 = {1, 2, 3, 4, 5, 6};
    qs::cpu::gemm<float>(false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, C.data(), 3);
    for (float c : C) QS_EXPECT(c == 0.0f, "K=0 beta=0: got %g", c);
    qs::cpu::gemm<float>(false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.5f, C2.data(), 3);
    for (int i = 0; i < 6; i++) QS_EXPECT(C2[i] == 0.5f * (i + 1), "K=0 beta=0.5: C[%d]=%g", i, C2[i]);
    // alpha == 0: A and B are not used (BLAS convention), NaNs there do not reach C.
    std::vector<double> A(6, (double)nan), B(6, (double)nan), Cd = {1, 2, 3, 4, 5, 6};
    qs::cpu::gemm<double>(true, true, 2, 3, 2, 0.0, A.data(), 2, B.data(), 2, 2.0, Cd.data(), 3);
    for (int i = 0; i < 6; i++) QS_EXPECT(Cd[i] == 2.0 * (i + 1), "alpha=0: C[%d]=%g", i, Cd[i]);
    // M == 0 or N == 0: nothing is touched (null C is fine).
    qs::cpu::gemm<float>(false, false, 0, 3, 4, 1.0f, nullptr, 4, nullptr, 3, 0.0f, nullptr, 3);
    qs::cpu::gemm<float>(false, false, 3, 0, 4, 1.0f, nullptr, 4, nullptr, 1, 0.0f, nullptr, 1);
  }
  printf("    K=0, alpha=0, M=0, N=0 handled\n");
}

QS_TEST(gemm_batched) {
  KernelGuard guard;
  struct BCase {
    int batch, M, N, K;
    bool ta, tb;
  };
  // Small products (parallel over the batch) and a few bigger ones (parallel inside each).
  const BCase cases[] = {{5, 7, 9, 11, false, false}, {8, 64, 64, 32, false, true},
                         {6, 33, 17, 64, true, false}, {3, 200, 150, 120, true, true},
                         {1, 5, 5, 5, false, false},  {0, 5, 5, 5, false, false}};
  Rng rng(99);
  for (int threads : {1, 2}) {
    qs::cpu::set_num_threads(threads);
    for (const BCase& bc : cases) {
      std::vector<Problem> ps;
      std::vector<Reference> refs;
      for (int b = 0; b < bc.batch; b++) {
        ps.push_back(make_problem(rng, bc.ta, bc.tb, bc.M, bc.N, bc.K, 2));
        refs.push_back(reference(ps.back()));
      }
      const Problem shape = make_problem(rng, bc.ta, bc.tb, bc.M, bc.N, bc.K, 2);
      // Strides a little larger than one matrix, so matrices are not contiguous.
      const int64_t sa = shape.A.size() + 3, sb = shape.B.size() + 1, sc = shape.C0.size() + 7;
      for (int typ = 0; typ < 2; typ++) {
        const double alpha = 0.5, beta = typ ? 1.0 : 0.0;
        std::vector<double> A(std::max<int64_t>(1, sa * bc.batch)), B(std::max<int64_t>(1, sb * bc.batch)),
            C(std::max<int64_t>(1, sc * bc.batch), (double)kSentinel);
        for (int b = 0; b < bc.batch; b++) {
          std::copy(ps[b].A.begin(), ps[b].A.end(), A.begin() + b * sa);
          std::copy(ps[b].B.begin(), ps[b].B.end(), B.begin() + b * sb);
          std::copy(ps[b].C0.begin(), ps[b].C0.end(), C.begin() + b * sc);
        }
        double worst = 0;
        auto check = [&](auto tag) {
          using T = decltype(tag);
          std::vector<T> At = cast<T>(A), Bt = cast<T>(B), Ct = cast<T>(C);
          qs::cpu::gemm_batched<T>(bc.ta, bc.tb, bc.batch, bc.M, bc.N, bc.K, (T)alpha, At.data(),
                                   shape.lda, sa, Bt.data(), shape.ldb, sb, (T)beta, Ct.data(),
                                   shape.ldc, sc);
          const double tol = sizeof(T) == 4 ? 1e-4 : 1e-12;
          for (int b = 0; b < bc.batch; b++)
            for (int64_t e = 0; e < sc; e++) {
              const double got = Ct[b * sc + e];
              const int i = (int)(e / shape.ldc), j = (int)(e % shape.ldc);
              const double c0 = C[b * sc + e];
              double want = c0, scale = 1e-30;  // padding and gaps between matrices: untouched
              if (i < bc.M && j < bc.N) {
                want = alpha * refs[b].prod[(size_t)i * bc.N + j] + beta * c0;
                scale = alpha * refs[b].mag[(size_t)i * bc.N + j] + std::fabs(beta * c0) + 1e-30;
              }
              const double err = std::fabs(got - want) / scale;
              if (!(err <= tol)) {
                QS_EXPECT(false, "batched %s batch=%d M=%d N=%d K=%d b=%d elem %lld: got %.9g want %.9g",
                          sizeof(T) == 4 ? "f32" : "f64", bc.batch, bc.M, bc.N, bc.K, b, (long long)e, got, want);
                worst = 1e30;
                return;
              }
              worst = std::max(worst, err);
            }
        };
        check(0.0f);
        check(0.0);
        char label[96];
        snprintf(label, sizeof(label), "batch=%d M=%d N=%d K=%d ta=%d tb=%d beta=%g threads=%d",
                 bc.batch, bc.M, bc.N, bc.K, bc.ta, bc.tb, beta, threads);
        printf("    %-56s max_err/|terms|=%.3e  %s\n", label, worst, worst <= 1e-4 ? "OK" : "NOT OK");
      }
    }
  }
}

QS_TEST_MAIN()
