/*
 * thought_attention.cpp: Quiet-STaR's masked parallel attention on the CPU (contract in
 * thought_attention.h; the mask it implements is spec §2.5, the kernel design spec §8).
 *
 * Gathering. For one document b and one kv head hk, every chain query (row p of the document,
 * query step, query head g of the group, position i) sees the same base keys as the others at
 * the same position i: the causal, valid, windowed prefix of the shared base K/V. So the
 * queries of (b, hk) are gathered in the order
 *     n = ((i · P + p) · Sq + sq) · G + g          M = P · Sq · G queries per position
 * and the base part becomes one causal attention with M queries per key position: a block of
 * QB consecutive gathered queries (32..128, about 16 positions: 128 rows = 17 positions for
 * S = 8) reads its span of base K/V once for all steps, rows and heads of the group (spec §8:
 * "group queries with the same i across steps"), and the causal triangle wastes at most
 * those few positions' worth of columns.
 *
 * Forward, a task per (b, hk, block of QB gathered queries):
 *   span   = the base keys [jlo, jhi] some query of the block may see (valid, j <= imax,
 *            j > imin - window); keys outside it are invisible to every query of the block
 *   S      = Q_blk · K_spanᵀ                                        (nq, span)   gemm
 *   row:     base scores scale·S masked to [max(jlo, i - W + 1), min(i, jhi)] and valid keys;
 *            chain scores c_s' = scale · q · k_chain(r, s', i), s' = 1..s, when valid(b, i)
 *            (the "diagonal epilogue": s dot products gathered at the fixed column i);
 *            m = max over both, P = e^(score - m), l = Σ P over both
 *   O_blk  = P_base · V_span                                        (nq, d)      gemm
 *   out    = (O_blk + Σ_s' P_s' v_chain(r, s', i)) / l,  lse = m + log l
 *            (-inf and out = 0 for a query that sees nothing)
 * Scratch per thread: S (QB, span) (and dP in the backward), a few (QB, d) blocks and (S, d)
 * copies of one group's chain vectors — O(T + d + S), no mask, no (S·T)².
 *
 * Backward, a task per (b, hk), its query blocks in order (so the sums into the shared base
 * dK/dV — over every row p, step and head of the group — have a fixed order whatever the
 * thread count, and no other task writes them):
 *   S = Q_blk K_spanᵀ, dP = dO_blk V_spanᵀ (gemms); P = e^(scale·S masked - lse);
 *   D = <dO, O>; dS = scale · P (dP - D); chain: P_s', dS_s' likewise from the s' dot products
 *   dV_span += Pᵀ dO_blk,  dK_span += dSᵀ Q_blk                     (gemms, beta 1)
 *   dQ_blk  = dS K_span + Σ_s' dS_s' k_chain(s'),  added into dq
 *   dk_chain(r, s', i) += Σ dS_s' q,  dv_chain(r, s', i) += Σ P_s' dO  over the key's queries,
 *            which are all in this task (at most S · G of them, consecutive in the gathered
 *            order): summed in scratch per group, then added once
 * Five products per block (a flash backward recomputes and runs seven). Parallel over B · Hkv
 * tasks, as attention_gemm's backward (so with fewer documents × kv heads than threads some
 * threads idle there); the forward has B · Hkv · blocks tasks.
 *
 * Deterministic: every sum's order depends on the shapes only (gemm.h never splits K across
 * threads). Row passes are SIMD (vec_math.h) for SSE2 / AVX2+FMA / AVX-512, picked per call by
 * active_isa() like attention.cpp; float accumulates in float, double in double. lse is float
 * by contract even for T = double (the double backward's P carries ~1e-7·|lse| relative error).
 */
#include "cpu/thought_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace qs::cpu {
namespace {

constexpr int kQB = 128;  // gathered queries per block, at most (see block_rows_for)
constexpr int kPad = 16;  // score rows are padded to a multiple of this (whole vectors)

inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

template <typename T>
struct Args {
  // forward outputs
  T* out;       // (R, Sq, T, H, d)
  float* lse;   // (R, Sq, T, H)
  // backward outputs (null = skip)
  T *dq, *dkb, *dvb, *dkc, *dvc;
  // inputs
  const T *q, *kb, *vb, *kc, *vc;  // q (R,Sq,T,H,d); k/v base (B,T,Hkv,d); k/v chain (R,Sk,T,Hkv,d)
  const T *o, *dout;               // backward: forward output, its gradient, like q
  const float* lse_in;             // backward: (R, Sq, T, H)
  const uint8_t* valid;            // (B, T) or null
  int B, P, Tn, Sq, s_first, Sk, H, Hkv, d, window;
  int G;        // query heads per kv head
  int M;        // gathered queries per position of one (document, kv head): P · Sq · G
  int QB;       // gathered queries per block
  int nqb;      // blocks of gathered queries per (document, kv head)
  int64_t ldq;  // H · d: between positions of q, out, dout
  int64_t ldk;  // Hkv · d: between positions of base and chain K/V
  T scale;
};

// Gathered queries per block for M queries per position: about 16 positions, so that the
// causal triangle's diagonal wastes little (128 rows at M = 1, incremental mode with P = G = 1,
// would span 128 positions and compute ~1.5x the visible scores at T = 256), but at least 32
// rows (each block packs its K/V span again for its gemms) and at most kQB.
inline int block_rows_for(int M) { return std::min(kQB, std::max(32, 16 * M)); }

// One gathered query of a block.
struct Row {
  int64_t q;    // element offset of its vector in q / out / dout / dq
  int64_t l;    // index into lse
  int64_t kc;   // element offset of chain key (r, step 1, i, hk); step s' at kc + (s'-1)·T·ldk
  int i;        // position
  int nc;       // chain keys it sees: its step s when valid(b, i), else 0
};

// Rows n0 .. n0 + nq - 1 of (b, hk), in the gathered order of the file comment.
template <typename T>
void block_rows(const Args<T>& a, int b, int hk, int64_t n0, int nq, Row* rows) {
  for (int n = 0; n < nq; n++) {
    const int64_t gn = n0 + n;
    const int i = (int)(gn / a.M);
    int rem = (int)(gn % a.M);
    const int g = rem % a.G;
    rem /= a.G;
    const int sq = rem % a.Sq, p = rem / a.Sq;
    const int64_t r = (int64_t)b * a.P + p, h = (int64_t)hk * a.G + g;
    const int64_t qrow = (r * a.Sq + sq) * a.Tn + i;  // (r, sq, i)
    Row& w = rows[n];
    w.q = qrow * a.ldq + h * a.d;
    w.l = qrow * a.H + h;
    w.kc = ((r * a.Sk) * a.Tn + i) * a.ldk + (int64_t)hk * a.d;
    w.i = i;
    const bool vi = !a.valid || a.valid[(int64_t)b * a.Tn + i];
    w.nc = vi ? a.s_first + sq : 0;
  }
}

// The base keys [jlo, jhi] of document b that a query at a position in [imin, imax] may see;
// false when there is none (then no query of the block sees anything: a visible chain key
// implies valid(b, i), and then base key i itself is visible).
template <typename T>
bool key_span(const Args<T>& a, int b, int imin, int imax, int* jlo, int* jhi) {
  const int lo = a.window > 0 ? std::max(0, imin - a.window + 1) : 0;
  const uint8_t* val = a.valid ? a.valid + (int64_t)b * a.Tn : nullptr;
  *jlo = -1, *jhi = -1;
  for (int j = lo; j <= imax; j++) {
    if (val && !val[j]) continue;
    if (*jlo < 0) *jlo = j;
    *jhi = j;
  }
  return *jlo >= 0;
}

// The chain vectors of one group (row r, position i, kv head hk): the queries of a group are
// consecutive in the gathered order, and each reads steps 1..s of the same few vectors. Those
// lie T·Hkv·d elements apart — 256 KiB for T = 256, Hkv·d = 256 floats, a power of two that
// maps every step of a group to the same cache sets, so re-reading them in place for each of
// the group's up to S·G queries conflicts in L1. The group's steps are copied once into
// contiguous scratch instead, on first use, and read from there. (Their first touch is a
// cache miss either way: the chain K/V are as large as the queries, and with them the
// forward streams ~6x the memory of the plain attention over the same rows.)
template <typename T>
struct ChainCache {
  T* buf;               // (Sk, d)
  int d = 0;
  int64_t key = -1;     // element offset of the group's step 1 in the source
  int n = 0;            // steps loaded
  const T* get(const T* src, int64_t off, int need, int64_t step) {
    if (off != key) key = off, n = 0;
    for (; n < need; n++) std::memcpy(buf + (size_t)n * d, src + off + n * step, sizeof(T) * d);
    return buf;
  }
};

// The gradients of one group's chain vectors, accumulated in contiguous scratch (zeroed per
// step on first use) and added into dk_chain / dv_chain when the group changes or at flush():
// each chain key gets its sum over the group's queries (in block order), then one +=.
template <typename T>
struct ChainGrads {
  T *dk, *dv;           // (Sk, d) each
  T *dst_k, *dst_v;     // dk_chain, dv_chain (either may be null)
  int d = 0;
  int64_t step = 0;
  int64_t key = -1;
  int n = 0;            // steps in use
  void flush() {
    for (int t = 0; t < n; t++) {
      const int64_t o = key + t * step;
      if (dst_k) for (int p = 0; p < d; p++) dst_k[o + p] += dk[(size_t)t * d + p];
      if (dst_v) for (int p = 0; p < d; p++) dst_v[o + p] += dv[(size_t)t * d + p];
    }
    key = -1, n = 0;
  }
  // Accumulators of `need` steps of the group at `off`.
  void use(int64_t off, int need) {
    if (off != key) flush(), key = off;
    for (; n < need; n++) {
      std::memset(dk + (size_t)n * d, 0, sizeof(T) * d);
      std::memset(dv + (size_t)n * d, 0, sizeof(T) * d);
    }
  }
};

// Per-thread scratch.
template <typename T>
struct Work {
  T* S;      // (kQB, ld)  scores, then P
  T* dP;     // (kQB, ld)  dO · V, then dS            (backward)
  T* Qg;     // (kQB, d)   gathered queries
  T* dOg;    // (kQB, d)   gathered dout              (backward)
  T* Og;     // (kQB, d)   P · V (forward), dS · K (backward)
  T* kadd;   // (ld)       0 for a valid key of the span, -inf for an invalid one or padding
  T* cp;     // (kQB, Sk)  chain: scores, then P
  T* cd;     // (kQB, Sk)  chain: dS                  (backward)
  T* ck;     // (Sk, d)    chain vectors of one group (ChainCache), then dK accumulators
  T* cv;     // (Sk, d)    chain values of one group, then dV accumulators (backward)
  T* ml;     // (2 kQB)    forward: row max and sum
  Row* rows; // (kQB)
};

// Lays one thread's scratch out from `base` (64-byte aligned; null: only count) and returns its
// size in elements of T. Every region starts on a 64-byte boundary. The forward has no dP, dOg,
// cd, cv.
template <typename T>
size_t work_layout(T* base, int Tn, int d, int Sk, bool backward, Work<T>* w) {
  const size_t ld = (size_t)round_up(std::max(Tn, 1), kPad);
  size_t used = 0;
  auto take = [&](size_t n) -> T* {
    T* p = base ? base + used : nullptr;
    used += (n * sizeof(T) + 63) / 64 * 64 / sizeof(T);
    return p;
  };
  Work<T> x;
  x.S = take(kQB * ld);
  x.dP = backward ? take(kQB * ld) : nullptr;
  x.Qg = take((size_t)kQB * d);
  x.dOg = backward ? take((size_t)kQB * d) : nullptr;
  x.Og = take((size_t)kQB * d);
  x.kadd = take(ld);
  x.cp = take((size_t)kQB * Sk);
  x.cd = backward ? take((size_t)kQB * Sk) : nullptr;
  x.ck = take((size_t)Sk * d);
  x.cv = backward ? take((size_t)Sk * d) : nullptr;
  x.ml = take(2 * kQB);
  x.rows = reinterpret_cast<Row*>(take((kQB * sizeof(Row) + sizeof(T) - 1) / sizeof(T)));
  if (w) *w = x;
  return used;
}

// One allocation before the parallel region (an allocation failure is an exception in the
// caller's thread, not inside OpenMP), each thread's slice 64-byte aligned.
template <typename T>
struct Scratch {
  std::vector<T> buf;
  size_t stride;
  int Tn, d, Sk;
  bool backward;
  Scratch(int nthreads, int Tn_, int d_, int Sk_, bool backward_) : Tn(Tn_), d(d_), Sk(Sk_), backward(backward_) {
    stride = work_layout<T>(nullptr, Tn, d, Sk, backward, nullptr);
    buf.resize(stride * nthreads + 64 / sizeof(T));
  }
  static size_t bytes(int nthreads, int Tn, int d, int Sk, bool backward) {
    return (work_layout<T>(nullptr, Tn, d, Sk, backward, nullptr) * nthreads + 64 / sizeof(T)) * sizeof(T);
  }
  Work<T> get(int t) {
    uintptr_t p = (uintptr_t)(buf.data() + stride * t);
    Work<T> w;
    work_layout<T>((T*)((p + 63) & ~(uintptr_t)63), Tn, d, Sk, backward, &w);
    return w;
  }
};

// ---------------------------------------------------------------------------------------------
// Vector helpers on VB-byte vectors (vec_math.h)

template <typename T, int VB>
struct Vec {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  typedef typename S::IT IT;
  static constexpr int L = S::L;

  static QS_INLINE T hsum(const V& v) {
    T s = 0;
    for (int t = 0; t < L; t++) s += v[t];
    return s;
  }
  static QS_INLINE T hmax(const V& v) {
    T m = v[0];
    for (int t = 1; t < L; t++) m = v[t] > m ? v[t] : m;
    return m;
  }
  static QS_INLINE T dot(const T* x, const T* y, int d) {
    V acc0 = V{}, acc1 = V{};
    int p = 0;
    for (; p + 2 * L <= d; p += 2 * L) {
      acc0 += S::load(x + p) * S::load(y + p);
      acc1 += S::load(x + p + L) * S::load(y + p + L);
    }
    for (; p + L <= d; p += L) acc0 += S::load(x + p) * S::load(y + p);
    T s = hsum(acc0 + acc1);
    for (; p < d; p++) s += x[p] * y[p];
    return s;
  }
  // y += alpha x
  static QS_INLINE void axpy(T* y, T alpha, const T* x, int d) {
    const V av = S::splat(alpha);
    int p = 0;
    for (; p + L <= d; p += L) S::store(y + p, S::load(y + p) + av * S::load(x + p));
    for (; p < d; p++) y[p] += alpha * x[p];
  }
  // Lanes c .. c+L-1 of a score row: scale·s + kadd where lo <= column <= hi, else -inf; *vis
  // gets the lanes in [lo, hi]. Lanes outside are selected away, never computed on, so stale
  // scratch past the span cannot leak in.
  static QS_INLINE V masked(const T* s, const T* kadd, int c, IT lo, IT hi, T scale, VI* vis) {
    alignas(64) IT idx[L];
    for (int t = 0; t < L; t++) idx[t] = (IT)(c + t);
    const VI cv = S::loadi(idx);
    *vis = (cv >= S::splati(lo)) & (cv <= S::splati(hi));
    return *vis ? S::load(s + c) * scale + S::load(kadd + c) : S::splat(-std::numeric_limits<T>::infinity());
  }
};

// The columns a row must compute, whole vectors: [c0, c1) covering [lo, hi] (c1 = c0 = 0 when
// the row sees no base key), within the padded row of ld.
template <int L>
QS_INLINE void row_cols(int lo, int hi, int* c0, int* c1) {
  if (hi < lo) {
    *c0 = *c1 = 0;
    return;
  }
  *c0 = lo / L * L;
  *c1 = round_up(hi + 1, L);
}

// ---------------------------------------------------------------------------------------------
// Forward task: (b, hk, block of gathered queries).

template <typename T, int VB>
QS_INLINE void fwd_task(const Args<T>& a, int task, Work<T>& w) {
  typedef Vec<T, VB> X;
  typedef typename X::V V;
  typedef typename X::VI VI;
  typedef typename X::IT IT;
  constexpr int L = X::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int qb = task % a.nqb, hk = (task / a.nqb) % a.Hkv, b = task / a.nqb / a.Hkv;
  const int d = a.d;
  const int64_t n0 = (int64_t)qb * a.QB;
  const int nq = (int)std::min<int64_t>(a.QB, (int64_t)a.Tn * a.M - n0);
  Row* rows = w.rows;
  block_rows(a, b, hk, n0, nq, rows);
  const int imin = rows[0].i, imax = rows[nq - 1].i;
  int jlo, jhi;
  if (!key_span(a, b, imin, imax, &jlo, &jhi)) {  // nothing visible to any query of the block
    for (int n = 0; n < nq; n++) {
      std::fill(a.out + rows[n].q, a.out + rows[n].q + d, T(0));
      a.lse[rows[n].l] = -std::numeric_limits<float>::infinity();
    }
    return;
  }
  const int span = jhi - jlo + 1, ld = round_up(span, kPad);
  const uint8_t* val = a.valid ? a.valid + (int64_t)b * a.Tn + jlo : nullptr;
  for (int j = 0; j < ld; j++) w.kadd[j] = j < span && (!val || val[j]) ? T(0) : ninf;
  for (int n = 0; n < nq; n++) std::memcpy(w.Qg + (size_t)n * d, a.q + rows[n].q, sizeof(T) * d);
  const T* K = a.kb + ((int64_t)b * a.Tn + jlo) * a.ldk + (int64_t)hk * d;
  const T* Vb = a.vb + ((int64_t)b * a.Tn + jlo) * a.ldk + (int64_t)hk * d;
  const int64_t step = (int64_t)a.Tn * a.ldk;  // between chain steps

  gemm<T>(false, true, nq, span, d, T(1), w.Qg, d, K, (int)a.ldk, T(0), w.S, ld);  // S = Q Kᵀ

  T* mrow = w.ml;
  T* lrow = w.ml + kQB;
  ChainCache<T> kcache{w.ck, d};
  for (int n = 0; n < nq; n++) {
    const Row& rw = rows[n];
    T* srow = w.S + (size_t)n * ld;
    T* cs = w.cp + (size_t)n * a.Sk;
    const int hi = std::min(rw.i, jhi) - jlo;
    const int lo = (a.window > 0 ? std::max(jlo, rw.i - a.window + 1) : jlo) - jlo;
    int c0, c1;
    row_cols<L>(lo, hi, &c0, &c1);
    V vm = X::S::splat(ninf);
    for (int c = c0; c < c1; c += L) {
      VI vis;
      V x = X::masked(srow, w.kadd, c, (IT)lo, (IT)hi, a.scale, &vis);
      X::S::store(srow + c, x);
      vm = x > vm ? x : vm;
    }
    T m = X::hmax(vm);
    const T* qv = w.Qg + (size_t)n * d;
    const T* kcg = rw.nc ? kcache.get(a.kc, rw.kc, rw.nc, step) : nullptr;
    for (int t = 0; t < rw.nc; t++) {
      cs[t] = a.scale * X::dot(qv, kcg + (size_t)t * d, d);
      m = cs[t] > m ? cs[t] : m;
    }
    std::memset(srow, 0, sizeof(T) * c0);
    std::memset(srow + c1, 0, sizeof(T) * (ld - c1));
    mrow[n] = m;
    if (m == ninf) {  // sees nothing (the masked lanes are -inf: zero them)
      std::memset(srow + c0, 0, sizeof(T) * (c1 - c0));
      lrow[n] = 0;
      continue;
    }
    const V mv = X::S::splat(m);
    V vs = V{};
    for (int c = c0; c < c1; c += L) {
      V p = X::S::load(srow + c) - mv;
      X::S::exp_inplace(p);
      X::S::store(srow + c, p);
      vs += p;
    }
    T l = X::hsum(vs);
    for (int t = 0; t < rw.nc; t++) {
      cs[t] = std::exp(cs[t] - m);
      l += cs[t];
    }
    lrow[n] = l;
  }

  gemm<T>(false, false, nq, d, span, T(1), w.S, ld, Vb, (int)a.ldk, T(0), w.Og, d);  // O = P V

  ChainCache<T> vcache{w.ck, d};  // reuses the key copies' scratch

  for (int n = 0; n < nq; n++) {
    const Row& rw = rows[n];
    T* o = a.out + rw.q;
    float* ls = a.lse + rw.l;
    const T l = lrow[n];
    if (!(l > 0)) {
      std::fill(o, o + d, T(0));
      *ls = -std::numeric_limits<float>::infinity();
      continue;
    }
    T* og = w.Og + (size_t)n * d;
    const T* cs = w.cp + (size_t)n * a.Sk;
    const T* vcg = rw.nc ? vcache.get(a.vc, rw.kc, rw.nc, step) : nullptr;
    for (int t = 0; t < rw.nc; t++) X::axpy(og, cs[t], vcg + (size_t)t * d, d);
    const T inv = T(1) / l;
    for (int p = 0; p < d; p++) o[p] = og[p] * inv;
    *ls = (float)(mrow[n] + std::log(l));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward task: (b, hk), its blocks of gathered queries in order.

template <typename T, int VB>
QS_INLINE void bwd_task(const Args<T>& a, int task, Work<T>& w) {
  typedef Vec<T, VB> X;
  typedef typename X::V V;
  typedef typename X::VI VI;
  typedef typename X::IT IT;
  constexpr int L = X::L;
  const int hk = task % a.Hkv, b = task / a.Hkv;
  const int d = a.d;
  const int64_t step = (int64_t)a.Tn * a.ldk;
  const bool chain_grads = a.dq || a.dkc || a.dvc;
  for (int qb = 0; qb < a.nqb; qb++) {
    const int64_t n0 = (int64_t)qb * a.QB;
    const int nq = (int)std::min<int64_t>(a.QB, (int64_t)a.Tn * a.M - n0);
    Row* rows = w.rows;
    block_rows(a, b, hk, n0, nq, rows);
    int jlo, jhi;
    if (!key_span(a, b, rows[0].i, rows[nq - 1].i, &jlo, &jhi)) continue;  // nothing seen: no gradient
    const int span = jhi - jlo + 1, ld = round_up(span, kPad);
    const uint8_t* val = a.valid ? a.valid + (int64_t)b * a.Tn + jlo : nullptr;
    for (int j = 0; j < ld; j++) w.kadd[j] = j < span && (!val || val[j]) ? T(0) : -std::numeric_limits<T>::infinity();
    for (int n = 0; n < nq; n++) {
      std::memcpy(w.Qg + (size_t)n * d, a.q + rows[n].q, sizeof(T) * d);
      std::memcpy(w.dOg + (size_t)n * d, a.dout + rows[n].q, sizeof(T) * d);
    }
    const int64_t koff = ((int64_t)b * a.Tn + jlo) * a.ldk + (int64_t)hk * d;
    const T* K = a.kb + koff;
    const T* Vb = a.vb + koff;

    gemm<T>(false, true, nq, span, d, T(1), w.Qg, d, K, (int)a.ldk, T(0), w.S, ld);    // S = Q Kᵀ
    gemm<T>(false, true, nq, span, d, T(1), w.dOg, d, Vb, (int)a.ldk, T(0), w.dP, ld); // dP = dO Vᵀ

    ChainCache<T> kcache{w.ck, d}, vcache{w.cv, d};

    for (int n = 0; n < nq; n++) {
      const Row& rw = rows[n];
      T* srow = w.S + (size_t)n * ld;
      T* drow = w.dP + (size_t)n * ld;
      T* pc = w.cp + (size_t)n * a.Sk;
      T* dc = w.cd + (size_t)n * a.Sk;
      const float lsf = a.lse_in[rw.l];
      if (std::isinf(lsf) && lsf < 0) {  // the query sees nothing: P = dS = 0
        std::memset(srow, 0, sizeof(T) * ld);
        std::memset(drow, 0, sizeof(T) * ld);
        for (int t = 0; t < rw.nc; t++) pc[t] = dc[t] = 0;
        continue;
      }
      const T lse = (T)lsf;
      const T* dov = w.dOg + (size_t)n * d;
      const T D = X::dot(dov, a.o + rw.q, d);
      const int hi = std::min(rw.i, jhi) - jlo;
      const int lo = (a.window > 0 ? std::max(jlo, rw.i - a.window + 1) : jlo) - jlo;
      int c0, c1;
      row_cols<L>(lo, hi, &c0, &c1);
      const V lv = X::S::splat(lse), Dv = X::S::splat(D), sv = X::S::splat(a.scale);
      for (int c = c0; c < c1; c += L) {
        VI vis;
        V p = X::masked(srow, w.kadd, c, (IT)lo, (IT)hi, a.scale, &vis) - lv;
        X::S::exp_inplace(p);
        X::S::store(srow + c, p);
        X::S::store(drow + c, vis ? p * (X::S::load(drow + c) - Dv) * sv : V{});
      }
      std::memset(srow, 0, sizeof(T) * c0);
      std::memset(srow + c1, 0, sizeof(T) * (ld - c1));
      std::memset(drow, 0, sizeof(T) * c0);
      std::memset(drow + c1, 0, sizeof(T) * (ld - c1));
      if (!chain_grads || !rw.nc) continue;
      const T* qv = w.Qg + (size_t)n * d;
      const T* kcg = kcache.get(a.kc, rw.kc, rw.nc, step);
      const T* vcg = vcache.get(a.vc, rw.kc, rw.nc, step);
      for (int t = 0; t < rw.nc; t++) {
        const T p = std::exp(a.scale * X::dot(qv, kcg + (size_t)t * d, d) - lse);
        pc[t] = p;
        dc[t] = a.scale * p * (X::dot(dov, vcg + (size_t)t * d, d) - D);
      }
    }

    // Base K/V gradients: this task is their only writer.
    // dV += Pᵀ dO, dK += dSᵀ Q
    if (a.dvb) gemm<T>(true, false, span, d, nq, T(1), w.S, ld, w.dOg, d, T(1), a.dvb + koff, (int)a.ldk);
    if (a.dkb) gemm<T>(true, false, span, d, nq, T(1), w.dP, ld, w.Qg, d, T(1), a.dkb + koff, (int)a.ldk);
    if (a.dq) {
      gemm<T>(false, false, nq, d, span, T(1), w.dP, ld, K, (int)a.ldk, T(0), w.Og, d);  // dQ = dS K
      for (int n = 0; n < nq; n++) {
        const Row& rw = rows[n];
        T* g = w.Og + (size_t)n * d;
        const T* dc = w.cd + (size_t)n * a.Sk;
        if (rw.nc) {
          const T* kcg = kcache.get(a.kc, rw.kc, rw.nc, step);
          for (int t = 0; t < rw.nc; t++) X::axpy(g, dc[t], kcg + (size_t)t * d, d);
        }
        T* dst = a.dq + rw.q;
        int p = 0;
        for (; p + L <= d; p += L) X::S::store(dst + p, X::S::load(dst + p) + X::S::load(g + p));
        for (; p < d; p++) dst[p] += g[p];
      }
    }
    // Chain K/V gradients: chain key (r, s', i, hk) is seen only by queries of this task.
    if (a.dkc || a.dvc) {
      ChainGrads<T> acc{w.ck, w.cv, a.dkc, a.dvc, d, step};  // the copies are no longer needed
      for (int n = 0; n < nq; n++) {
        const Row& rw = rows[n];
        if (!rw.nc) continue;
        const T* pc = w.cp + (size_t)n * a.Sk;
        const T* dc = w.cd + (size_t)n * a.Sk;
        const T* qv = w.Qg + (size_t)n * d;
        const T* dov = w.dOg + (size_t)n * d;
        acc.use(rw.kc, rw.nc);
        for (int t = 0; t < rw.nc; t++) {
          X::axpy(acc.dk + (size_t)t * d, dc[t], qv, d);
          X::axpy(acc.dv + (size_t)t * d, pc[t], dov, d);
        }
      }
      acc.flush();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ISA dispatch: a default-target instance of each task and, on x86, AVX2+FMA and AVX-512 ones.

template <typename T>
using TaskFn = void (*)(const Args<T>&, int, Work<T>&);

template <typename T>
struct TaskSet {
  TaskFn<T> fwd, bwd;
};

template <typename T> void fwd_generic(const Args<T>& a, int t, Work<T>& w) { fwd_task<T, 16>(a, t, w); }
template <typename T> void bwd_generic(const Args<T>& a, int t, Work<T>& w) { bwd_task<T, 16>(a, t, w); }
#if QS_X86
template <typename T> QS_TARGET_AVX2 void fwd_avx2(const Args<T>& a, int t, Work<T>& w) { fwd_task<T, 32>(a, t, w); }
template <typename T> QS_TARGET_AVX2 void bwd_avx2(const Args<T>& a, int t, Work<T>& w) { bwd_task<T, 32>(a, t, w); }
template <typename T>
QS_TARGET_AVX512 void fwd_avx512(const Args<T>& a, int t, Work<T>& w) { fwd_task<T, 64>(a, t, w); }
template <typename T>
QS_TARGET_AVX512 void bwd_avx512(const Args<T>& a, int t, Work<T>& w) { bwd_task<T, 64>(a, t, w); }
#endif

template <typename T>
TaskSet<T> pick_tasks() {
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: return {fwd_avx512<T>, bwd_avx512<T>};
    case kIsaAvx2: return {fwd_avx2<T>, bwd_avx2<T>};
    default: break;
  }
#endif
  return {fwd_generic<T>, bwd_generic<T>};
}

template <typename T>
Args<T> make_args(const T* q, const T* kb, const T* vb, const T* kc, const T* vc, const uint8_t* valid,
                  const ThoughtAttentionShape& s, T scale) {
  Args<T> a{};
  a.q = q, a.kb = kb, a.vb = vb, a.kc = kc, a.vc = vc, a.valid = valid;
  a.B = s.B, a.P = s.P, a.Tn = s.T, a.Sq = s.Sq, a.s_first = s.s_first, a.Sk = s.Sk;
  a.H = s.H, a.Hkv = s.Hkv, a.d = s.d, a.window = s.window;
  a.G = s.H / s.Hkv;
  a.M = s.P * s.Sq * a.G;
  a.QB = block_rows_for(a.M);
  a.nqb = (int)(((int64_t)s.T * a.M + a.QB - 1) / a.QB);
  a.ldq = (int64_t)s.H * s.d;
  a.ldk = (int64_t)s.Hkv * s.d;
  a.scale = scale;
  return a;
}

bool empty_shape(const ThoughtAttentionShape& s) {
  return s.B <= 0 || s.P <= 0 || s.T <= 0 || s.Sq <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0;
}

}  // namespace

size_t thought_attention_scratch_bytes(const ThoughtAttentionShape& s, int threads, bool backward, bool f64) {
  if (empty_shape(s)) return 0;
  threads = std::max(threads, 1);
  const int Sk = std::max(s.Sk, 1);
  return f64 ? Scratch<double>::bytes(threads, s.T, s.d, Sk, backward)
             : Scratch<float>::bytes(threads, s.T, s.d, Sk, backward);
}

template <typename T>
void thought_attention_forward(T* out, float* lse, const T* q_chain, const T* k_base, const T* v_base,
                               const T* k_chain, const T* v_chain, const uint8_t* valid,
                               const ThoughtAttentionShape& s, T scale) {
  if (empty_shape(s)) return;
  Args<T> a = make_args(q_chain, k_base, v_base, k_chain, v_chain, valid, s, scale);
  a.out = out, a.lse = lse;
  const TaskFn<T> fn = pick_tasks<T>().fwd;
  const int nthreads = get_num_threads();
  const int ntasks = s.B * s.Hkv * a.nqb;
  Scratch<T> scratch(nthreads, s.T, s.d, std::max(s.Sk, 1), false);
#pragma omp parallel num_threads(nthreads)
  {
    Work<T> w = scratch.get(thread_id());
    // Later blocks see more keys: dynamic scheduling evens the causal triangle out.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; t++) fn(a, t, w);
  }
}

template <typename T>
void thought_attention_backward(T* dq_chain, T* dk_base, T* dv_base, T* dk_chain, T* dv_chain, const T* dout,
                                const T* q_chain, const T* k_base, const T* v_base, const T* k_chain,
                                const T* v_chain, const T* out, const float* lse, const uint8_t* valid,
                                const ThoughtAttentionShape& s, T scale) {
  if (empty_shape(s)) return;
  if (!dq_chain && !dk_base && !dv_base && !dk_chain && !dv_chain) return;
  Args<T> a = make_args(q_chain, k_base, v_base, k_chain, v_chain, valid, s, scale);
  a.dq = dq_chain, a.dkb = dk_base, a.dvb = dv_base, a.dkc = dk_chain, a.dvc = dv_chain;
  a.dout = dout, a.o = out, a.lse_in = lse;
  const TaskFn<T> fn = pick_tasks<T>().bwd;
  const int nthreads = get_num_threads();
  const int ntasks = s.B * s.Hkv;
  Scratch<T> scratch(nthreads, s.T, s.d, std::max(s.Sk, 1), true);
#pragma omp parallel num_threads(nthreads)
  {
    Work<T> w = scratch.get(thread_id());
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; t++) fn(a, t, w);
  }
}

template void thought_attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                               const float*, const float*, const uint8_t*,
                                               const ThoughtAttentionShape&, float);
template void thought_attention_forward<double>(double*, float*, const double*, const double*, const double*,
                                                const double*, const double*, const uint8_t*,
                                                const ThoughtAttentionShape&, double);
template void thought_attention_backward<float>(float*, float*, float*, float*, float*, const float*, const float*,
                                                const float*, const float*, const float*, const float*, const float*,
                                                const float*, const uint8_t*, const ThoughtAttentionShape&, float);
template void thought_attention_backward<double>(double*, double*, double*, double*, double*, const double*,
                                                 const double*, const double*, const double*, const double*,
                                                 const double*, const double*, const float*, const uint8_t*,
                                                 const ThoughtAttentionShape&, double);

}  // namespace qs::cpu
