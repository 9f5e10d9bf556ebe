/*
 * thought_sampling.cpp: fused LM head + Gumbel-max thought sampling on the CPU (see
 * thought_sampling.h; spec §2.7 and §2.9 item 7).
 *
 * Rows of h are taken in blocks of up to kRowBlock = 256 and the vocabulary in chunks of
 * `chunk` columns (chunk <= 0 means 4096; chunk > V means V). For each (row block, chunk):
 *
 *   Z = h_blk · W_chunkᵀ                       (rows, chunk)  one gemm (parallel by itself), or
 *                                              matmul_small for <= kSmallRows rows (decoding)
 *   per row (rows in parallel, each row's chunks in order):
 *     suppressed ids -> -inf                   never drawn, in no normaliser
 *     m' = max(m, max Z) (first index kept: the greedy answer)
 *     l1 = l1 e^(m - m') + Σ e^(Z - m'),  lt = lt e^((m - m')/tau) + Σ e^((Z - m')/tau)
 *     Gumbel-max over the chunk (below)
 *   at the end: lse = m + log l1,  logp = (z[token] - m)/tau - log lt
 *
 * so scratch is one (rows, chunk) block of logits and a few numbers per row; the [N, V] logits
 * never exist.
 *
 * Matching sample_tokens exactly. sample_tokens (sampling.cpp) scores token v, in double, as
 *   s(v) = ((double)x[v] - xmax) / temperature + gumbel(v)
 * with xmax the row's maximum, and takes the first maximum of s. The shift by xmax changes the
 * rounding of s, so comparing scores computed under a smaller running max could, in a
 * near-tie, disagree with it. So each row keeps every candidate whose score is within kTol of
 * the best seen, with its logit and noise; when the running max grows the candidates are
 * rescored under the new max, and the final pick is made among scores computed exactly as
 * sample_tokens computes them, ties to the lower id. kTol = 1e-11 is far above the rounding
 * of the scores that can matter: a token that can win has (x - xmax)/temperature >= -26.1
 * (the argmax scores >= min gumbel = -3.13, and gumbel <= 22.87), so |score terms| < 50 and
 * each score's rounding is < 50·2^-52 ≈ 1.1e-14; pruning compares two scores under one shift
 * and the final choice two under another, four roundings in all. Candidate lists almost
 * always hold one token (more only for near-equal scores, e.g. tied logits).
 *
 * The noise costs two logs per token, several times the gemm's work for small D. It is only
 * computed for tokens that can come within kTol of the best score so far: with
 * d = (x - m)/temperature, a candidate has g = -log(E) >= best - d where E = -log(u) >= 1 - u,
 * so 1 - u <= e^(d - best). The weights w = e^(d) come out of the vectorised softmax pass (one
 * more exp per token, on SIMD vectors), 1 - u is exact in double, and the test is one multiply
 * and compare; a token whose w·e^(-best) is below every draw's 1 - u is skipped before its
 * Philox bits are even formed. A flat row of V tokens then takes the logs of O(log V)
 * record-setting tokens only (but still forms every token's Philox bits, ~10 ns per 4
 * tokens), a peaked row hardly any of either. (Slacks: see kWeightSlack.)
 *
 * Determinism: each row's reductions run in a fixed order (chunks in order, lanes in ISA
 * order); the gemm is deterministic for fixed sizes; so results do not depend on the thread
 * count. The draw is a pure function of the logits and (seed, rows[n], step, positions[n]).
 *
 * exp: float rows use vec_math.h's Cephes exp on SIMD vectors (as lmhead_xent.cpp), double
 * rows std::exp; the Gumbel-max itself is always in double, as in sample_tokens.
 */
#include "cpu/thought_sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/isa.h"
#include "cpu/matmul_small.h"
#include "cpu/sampling.h"
#include "cpu/vec_math.h"
#include "quietstar/rng.h"

namespace qs::cpu {
namespace {

constexpr int kRowBlock = 256;       // rows per block: big enough for efficient gemms
constexpr int kDefaultChunk = 4096;  // vocabulary columns per chunk when chunk <= 0
constexpr int64_t kParallelMin = 8192;  // logits of a (block, chunk) below which rows stay serial
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTol = 1e-11;       // candidate slack between scores (see the top comment)
// The noise filter (see the top comment). kSkipSlack: slack in the exponent of the exact
// test, >> kTol + rounding. The float weights' test e^(d - best) <= w·e^(-best)·(1 + slack)
// holds with kWeightSlack = 1e-3 >> float exp's 1e-7 and the rounding of (x - m)/t (2e-7·|d|,
// |d| < 87), as long as a candidate's weight is not flushed to 0 (float exp is 0 below -87):
// a candidate has d >= best - 22.9, so best > kWeightFloor = -60 keeps d > -83.
constexpr double kSkipSlack = 1e-9;
constexpr double kWeightSlack = 1e-3;
constexpr double kWeightFloor = -60;
constexpr double kMinOneMinusU = 0.5 / 4294967296.0;  // the smallest 1 - u of a 32-bit draw

using vec::Simd;

// ---------------------------------------------------------------------------------------------
// The chunk's maximum into *mx (-inf when every entry is -inf); false when it holds a NaN
// or +inf (the row cannot be sampled).
template <typename T, int VB>
QS_INLINE bool chunk_max(const T* x, int n, T* mx) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  constexpr int L = S::L;
  const T inf = std::numeric_limits<T>::infinity();
  const V vinf = S::splat(inf);
  V vm = S::splat(-inf);
  VI ok = S::splati(-1);
  int j = 0;
  for (; j + L <= n; j += L) {
    V a = S::load(x + j);
    ok &= a < vinf;  // false for NaN and +inf
    vm = a > vm ? a : vm;
  }
  if (j < n) {
    V a = S::load_part(x + j, n - j, -inf);
    ok &= a < vinf;
    vm = a > vm ? a : vm;
  }
  T m = -inf;
  bool good = true;
  for (int i = 0; i < L; i++) {
    good &= ok[i] != 0;
    m = vm[i] > m ? vm[i] : m;
  }
  *mx = m;
  return good;
}

// Softmax sums of one chunk, Σ e^(x - m) and Σ e^((x - m)·inv_tau), -inf entries giving 0;
// with w non-null also the sampling weights w[j] = e^((x[j] - m)·inv_t) (the noise filter).
template <typename T, int VB>
QS_INLINE void chunk_sums(const T* x, int n, T m, T inv_tau, T inv_t, T* w, double* s1, double* st) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  const V mv = S::splat(m), iv = S::splat(inv_tau), tv = S::splat(inv_t);
  V a1 = V{}, at = V{};
  for (int j = 0; j < n; j += L) {
    // k < L only for the last vector, whose padding (-inf) adds e^-inf = 0 to both sums.
    const int k = n - j < L ? n - j : L;
    V d = (k == L ? S::load(x + j) : S::load_part(x + j, k, ninf)) - mv;
    V e1 = d, et = d * iv;
    S::exp_inplace(e1);
    S::exp_inplace(et);
    a1 += e1;
    at += et;
    if (w) {
      V ew = d * tv;
      S::exp_inplace(ew);
      if (k == L) S::store(w + j, ew);
      else S::store_part(w + j, k, ew);
    }
  }
  double r1 = 0, rt = 0;
  for (int i = 0; i < L; i++) {
    r1 += (double)a1[i];
    rt += (double)at[i];
  }
  *s1 = r1;
  *st = rt;
}

template <typename T>
struct RowFns {
  bool (*max)(const T*, int, T*);
  void (*sums)(const T*, int, T, T, T, T*, double*, double*);
};

template <typename T> bool max_generic(const T* x, int n, T* m) { return chunk_max<T, 16>(x, n, m); }
template <typename T> void sums_generic(const T* x, int n, T m, T it, T iw, T* w, double* a, double* b) { chunk_sums<T, 16>(x, n, m, it, iw, w, a, b); }
#if QS_X86
template <typename T> QS_TARGET_AVX2 bool max_avx2(const T* x, int n, T* m) { return chunk_max<T, 32>(x, n, m); }
template <typename T> QS_TARGET_AVX2 void sums_avx2(const T* x, int n, T m, T it, T iw, T* w, double* a, double* b) { chunk_sums<T, 32>(x, n, m, it, iw, w, a, b); }
template <typename T> QS_TARGET_AVX512 bool max_avx512(const T* x, int n, T* m) { return chunk_max<T, 64>(x, n, m); }
template <typename T> QS_TARGET_AVX512 void sums_avx512(const T* x, int n, T m, T it, T iw, T* w, double* a, double* b) { chunk_sums<T, 64>(x, n, m, it, iw, w, a, b); }
#endif

template <typename T>
RowFns<T> pick_row_fns() {
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: return {max_avx512<T>, sums_avx512<T>};
    case kIsaAvx2: return {max_avx2<T>, sums_avx2<T>};
    default: break;
  }
#endif
  return {max_generic<T>, sums_generic<T>};
}

// ---------------------------------------------------------------------------------------------
// Per-row state across the chunks

struct Candidate {
  int32_t id;
  double x;  // logit
  double g;  // Gumbel noise
  double s;  // score under the row's current max: (x - m) / temperature + g
};

struct RowState {
  double m;                      // running max of the allowed logits (-inf: none yet)
  double l1, lt;                 // Σ e^(z - m), Σ e^((z - m)/tau) over the allowed logits
  int32_t first_max;             // first id with z == m (the greedy token)
  bool bad;                      // a NaN or +inf logit was seen
  double best;                   // the best candidate score under m
  std::vector<Candidate> cands;  // scores within kTol of best, under m

  void reset() {
    m = -kInf;
    l1 = lt = 0;
    first_max = -1;
    bad = false;
    best = -kInf;
    cands.clear();
  }
  void prune() {
    const double floor = best - kTol;
    cands.erase(std::remove_if(cands.begin(), cands.end(), [floor](const Candidate& c) { return c.s < floor; }),
                cands.end());
  }
  void offer(int32_t id, double x, double g, double s) {
    if (s < best - kTol) return;
    cands.push_back({id, x, g, s});
    if (s > best) {
      best = s;
      prune();
    }
  }
  // The running max grew: scores move to the new shift, computed exactly as sample_tokens does.
  void rescore(double temperature) {
    best = -kInf;
    for (Candidate& c : cands) {
      c.s = (c.x - m) / temperature + c.g;
      best = std::max(best, c.s);
    }
    prune();
  }
};

struct Settings {
  double temperature;  // 0 = greedy
  double tau;          // policy temperature
  uint64_t seed;
  uint32_t step;
};

// One chunk of one row: z (nc) holds the logits of ids v0 .. v0 + nc - 1 (overwritten at the
// suppressed ids); sup [sup_begin, sup_end) the sorted suppressed ids inside the chunk;
// w (nc) scratch for the sampling weights.
template <typename T>
void row_chunk(RowState& st, T* z, T* w, int nc, int v0, const int32_t* sup_begin, const int32_t* sup_end,
               const Settings& cfg, const rng::SampleStream& stream, const RowFns<T>& fns) {
  if (st.bad) return;
  const T tinf = std::numeric_limits<T>::infinity();
  // 1. suppression (a NaN there still fails the row, as in sample_tokens)
  for (const int32_t* p = sup_begin; p < sup_end; p++) {
    T& x = z[*p - v0];
    if (!(x < tinf)) {
      st.bad = true;
      return;
    }
    x = -tinf;
  }
  // 2. validity and the chunk's maximum
  T cmax_t;
  if (!fns.max(z, nc, &cmax_t)) {
    st.bad = true;
    return;
  }
  const double cmax = (double)cmax_t;
  if (cmax == -kInf) return;  // every id of the chunk suppressed or -inf
  // 3. a larger running max: rescale the sums, rescore the candidates
  if (cmax > st.m) {
    if (st.m > -kInf) {
      st.l1 *= std::exp(st.m - cmax);
      st.lt *= std::exp((st.m - cmax) / cfg.tau);
    }
    int j = 0;
    while (z[j] != cmax_t) j++;  // the first maximum (greedy's answer)
    st.m = cmax;
    st.first_max = v0 + j;
    if (cfg.temperature > 0) st.rescore(cfg.temperature);
  }
  // 4. softmax sums at temperature 1 and tau (and the sampling weights)
  const bool sampling = cfg.temperature > 0;
  double s1, s2;
  fns.sums(z, nc, (T)st.m, (T)(1.0 / cfg.tau), sampling ? (T)(1.0 / cfg.temperature) : T(1), sampling ? w : nullptr, &s1,
       &s2);
  st.l1 += s1;
  st.lt += s2;
  if (!sampling) return;
  // 5. Gumbel-max, computing the noise only of tokens that can come within kTol of the best
  // score (see the top comment): a candidate has 1 - u <= e^(d - best) <= w·thr.
  const double t = cfg.temperature;
  double thr = 0;  // e^(-best)·(1 + kWeightSlack) while best > kWeightFloor; else 0: exact test
  auto set_thr = [&] { thr = st.best > kWeightFloor ? std::exp(-st.best) * (1 + kWeightSlack) : 0; };
  set_thr();
  uint32_t cached = UINT32_MAX;
  rng::U32x4 bits{};
  // w below wmin: w·thr is below every draw's 1 - u, not even the bits are needed
  // (kMinOneMinusU / thr rounded down into T; 0 under the exact test)
  T wmin = thr > 0 ? (T)(kMinOneMinusU / thr * (1 - 1e-6)) : T(0);
  for (int j = 0; j < nc; j++) {
    if (w[j] < wmin) continue;
    const double x = (double)z[j];
    if (x == -kInf) continue;
    const double wt = thr > 0 ? (double)w[j] * thr : kInf;
    const uint32_t v = (uint32_t)(v0 + j);
    if ((v >> 2) != cached) {
      cached = v >> 2;
      bits = stream.block(cached);
    }
    const uint32_t b = bits.v[v & 3];
    const double one_minus_u = (4294967296.0 - (double)b - 0.5) * (1.0 / 4294967296.0);  // exact
    if (one_minus_u > wt) continue;
    const double d = (x - st.m) / t;  // as sample_tokens computes it
    if (thr == 0 && one_minus_u > std::exp(d - st.best + kSkipSlack)) continue;  // the exact test
    const double g = rng::gumbel(rng::uniform_open01(b));
    const double before = st.best;
    st.offer((int32_t)v, x, g, d + g);
    if (st.best != before) {
      set_thr();
      wmin = thr > 0 ? (T)(kMinOneMinusU / thr * (1 - 1e-6)) : T(0);
    }
  }
}

// The row's results from its final state.
void row_finish(const RowState& st, const Settings& cfg, int32_t* token, float* logp, float* lse) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (st.bad || st.m == -kInf) {
    *token = st.bad ? kSampleNonFinite : kSampleNoToken;
    if (logp) *logp = nan;
    if (lse) *lse = nan;
    return;
  }
  int32_t id = st.first_max;
  double x = st.m;
  if (cfg.temperature > 0) {
    // the first maximum of the candidates' final scores (all computed under the final max)
    const Candidate* pick = nullptr;
    for (const Candidate& c : st.cands) {
      if (!pick || c.s > pick->s || (c.s == pick->s && c.id < pick->id)) pick = &c;
    }
    id = pick->id;  // never null: a row's first finite token is offered (best = -inf) and kept
    x = pick->x;
  }
  *token = id;
  if (lse) *lse = (float)(st.m + std::log(st.l1));
  if (logp) *logp = (float)((x - st.m) / cfg.tau - std::log(st.lt));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry point

template <typename T>
void thought_sample(int32_t* tokens, float* logp, float* lse, const T* h, const T* W, int N, int D, int V,
                    const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                    const ThoughtSampleParams& params) {
  if (N <= 0) return;
  Settings cfg;
  cfg.temperature = params.temperature;
  cfg.tau = params.policy_temperature;
  cfg.seed = params.seed;
  cfg.step = params.step;
  if (V <= 0) {
    RowState empty;
    empty.reset();
    for (int n = 0; n < N; n++) row_finish(empty, cfg, tokens + n, logp ? logp + n : nullptr, lse ? lse + n : nullptr);
    return;
  }
  const int nchunk = std::min(params.chunk <= 0 ? kDefaultChunk : params.chunk, V);
  // sorted, unique suppressed ids: each chunk masks its own slice
  std::vector<int32_t> sup(suppress, suppress + std::max(n_suppress, 0));
  std::sort(sup.begin(), sup.end());
  sup.erase(std::unique(sup.begin(), sup.end()), sup.end());
  const RowFns<T> fns = pick_row_fns<T>();

  const int RB = std::min(kRowBlock, N);
  std::vector<T> Zbuf((size_t)RB * nchunk);  // (RB, chunk)  logits of one block and chunk
  std::vector<RowState> state(RB);           // (RB)         per-row running state
  T* Z = Zbuf.data();
  RowState* S = state.data();

  for (int start = 0; start < N; start += RB) {
    const int rb = std::min(RB, N - start);
    const T* hp = h + (int64_t)start * D;  // (rb, D)
    for (int r = 0; r < rb; r++) S[r].reset();
    for (int v0 = 0; v0 < V; v0 += nchunk) {
      const int nc = std::min(nchunk, V - v0);
      // Z (rb, nc) = h_blk (rb, D) · W[v0 : v0 + nc]ᵀ
      if (D > 0 && rb <= kSmallRows) {  // thinking decode: a few rows; gemm would pack W each call
        matmul_small<T>(Z, nc, hp, D, W + (int64_t)v0 * D, D, true, rb, D, nc, false);
      } else if (D > 0) {
        gemm<T>(false, true, rb, nc, D, T(1), hp, D, W + (int64_t)v0 * D, D, T(0), Z, nc);
      } else {
        std::fill(Z, Z + (int64_t)rb * nc, T(0));
      }
      const int32_t* sup_end = sup.data() + sup.size();
      const int32_t* sb = std::lower_bound((const int32_t*)sup.data(), sup_end, v0);
      const int32_t* se = std::lower_bound(sb, sup_end, v0 + nc);
      // rows in parallel when the block has enough work to pay for the region (~10 ns a logit)
#pragma omp parallel if (rb > 1 && (int64_t)rb * nc >= kParallelMin)
      {
        std::vector<T> wbuf(cfg.temperature > 0 ? nc : 0);  // (nc) sampling weights of one row
#pragma omp for schedule(static)
        for (int r = 0; r < rb; r++) {
          const int n = start + r;
          const rng::SampleStream stream(cfg.seed, rows ? (uint32_t)rows[n] : (uint32_t)n, cfg.step,
                                         positions ? (uint32_t)positions[n] : 0u);
          row_chunk<T>(S[r], Z + (int64_t)r * nc, wbuf.data(), nc, v0, sb, se, cfg, stream, fns);
        }
      }
    }
    for (int r = 0; r < rb; r++) {
      const int n = start + r;
      row_finish(S[r], cfg, tokens + n, logp ? logp + n : nullptr, lse ? lse + n : nullptr);
    }
  }
}

template void thought_sample<float>(int32_t*, float*, float*, const float*, const float*, int, int, int,
                                    const int32_t*, const int32_t*, const int32_t*, int, const ThoughtSampleParams&);
template void thought_sample<double>(int32_t*, float*, float*, const double*, const double*, int, int, int,
                                     const int32_t*, const int32_t*, const int32_t*, int, const ThoughtSampleParams&);

}  // namespace qs::cpu
