// attention_gemm.cpp: attention on blocks of queries with gemm (see attention_gemm.h).
//
// For one (batch row b, query head h, block of nq <= 128 queries starting at i0):
//   span   = the keys [jlo, jhi] that may be visible from some query of the block (judged from
//            the block's position range, as the flash kernel skips its tiles: safe for any
//            positions); keys outside it are invisible to every query of the block
//   S      = Q_blk · K_spanᵀ                                  (nq, span)    gemm
//   row i: s = scale·S + (0 or -inf by visibility), m = max s, P = e^(s - m), l = Σ P
//   O_blk  = P · V_span, then row i scaled by 1 / l_i          (nq, d)       gemm
//   lse_i  = m_i + log l_i  (-inf, and O_i = 0, for a query that sees no key)
// Backward, per (b, kv head), over its query heads and their blocks in order:
//   S = Q_blk · K_spanᵀ again;  P = e^(scale·S masked - lse)
//   dP = dO_blk · V_spanᵀ;  D_i = <dO_i, O_i>;  dS = scale · P ∘ (dP - D)
//   dV_span += Pᵀ · dO_blk;  dQ_blk += dS · K_span;  dK_span += dSᵀ · Q_blk   (three gemms)
// The row passes (mask, softmax, dS) run on SIMD vectors (vec_math.h) compiled for SSE2,
// AVX2+FMA and AVX-512 and chosen per call by active_isa(), like attention.cpp. Score rows have
// a stride rounded up to 16 elements so that the row passes always work on whole vectors: the
// lanes past the span are masked like invisible keys (their gemm output is never read).
#include "cpu/attention_gemm.h"

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

constexpr int kQB = 128;  // queries per block
constexpr int kPad = 16;  // score rows and key arrays are padded to a multiple of this

inline int round_up(int n) { return (n + kPad - 1) / kPad * kPad; }

template <typename T>
struct Args {
  T *out, *dq, *dk, *dv;
  float* lse;
  const float* lse_in;
  const T *q, *k, *v, *o, *dout;
  const int32_t *q_pos, *k_pos;
  const uint8_t* k_valid;
  int B, Tq, Tk, H, Hkv, d, window, G, nqb;
  T scale;
};

// The integer lane type of Simd<T, *> (int32 for float, int64 for double).
template <typename T> using IntOf = typename vec::Simd<T, 16>::IT;

// Per-task key tables: kp[j] = position of key jlo + j; kadd[j] = 0 (valid) or -inf. Entries
// past the span (up to the padded length) are invisible.
template <typename T>
void key_tables(const Args<T>& a, int b, int jlo, int span, IntOf<T>* kp, T* kadd) {
  const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk + jlo;
  const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk + jlo : nullptr;
  const int padded = round_up(span);
  for (int j = 0; j < padded; j++) {
    bool in = j < span;
    kp[j] = in ? (IntOf<T>)kpos[j] : std::numeric_limits<IntOf<T>>::max();
    kadd[j] = in && (!kval || kval[j]) ? T(0) : -std::numeric_limits<T>::infinity();
  }
}

// The keys [jlo, jhi] that may be visible from a block with query positions in [qmin, qmax];
// false when there is none.
template <typename T>
bool key_span(const Args<T>& a, int b, int32_t qmin, int32_t qmax, int* jlo, int* jhi) {
  const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk;
  const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk : nullptr;
  *jlo = -1, *jhi = -1;
  for (int j = 0; j < a.Tk; j++) {
    if (kval && !kval[j]) continue;
    if (kpos[j] > qmax) continue;
    if (a.window > 0 && (int64_t)qmin - (int64_t)kpos[j] >= (int64_t)a.window) continue;
    if (*jlo < 0) *jlo = j;
    *jhi = j;
  }
  return *jlo >= 0;
}

// ---------------------------------------------------------------------------------------------
// Row passes on VB-byte vectors

// s (n, a multiple of the lane count) in place: s = e^(s - m); returns Σ s (lane-wise partial
// sums, then added in lane order).
template <typename T, int VB>
QS_INLINE T exp_sum(T* s, int n, T m) {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  const V mv = S::splat(m);
  V vs = V{};
  for (int j = 0; j < n; j += S::L) {
    V p = S::load(s + j) - mv;
    S::exp_inplace(p);
    S::store(s + j, p);
    vs += p;
  }
  T l = 0;
  for (int i = 0; i < S::L; i++) l += vs[i];
  return l;
}

template <typename T, int VB>
struct RowOps {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  typedef typename S::VU VU;
  typedef typename S::IT IT;
  static constexpr int L = S::L;

  static QS_INLINE V masked(const T* s, const IT* kp, const T* kadd, IT qp, int window, T scale, int j) {
    VI kv = S::loadi(kp + j);
    VI vis = kv <= S::splati(qp);
    if (window > 0) vis &= ((VU)S::splati(qp) - (VU)kv) < (VU)S::splati((IT)window);
    return vis ? S::load(s + j) * scale + S::load(kadd + j) : S::splat(-std::numeric_limits<T>::infinity());
  }

  // s (n, padded to L) in place: P = e^(masked - m); returns m and l = Σ P (l = 0: nothing visible)
  static QS_INLINE void softmax(T* s, int n, const IT* kp, const T* kadd, IT qp, int window, T scale, T* m_out, T* l_out) {
    const T ninf = -std::numeric_limits<T>::infinity();
    V vm = S::splat(ninf);
    for (int j = 0; j < n; j += L) {
      V x = masked(s, kp, kadd, qp, window, scale, j);
      S::store(s + j, x);
      vm = x > vm ? x : vm;
    }
    T m = ninf;
    for (int i = 0; i < L; i++) m = vm[i] > m ? vm[i] : m;
    *m_out = m;
    if (m == ninf) {
      std::memset(s, 0, sizeof(T) * (size_t)n);
      *l_out = 0;
      return;
    }
    *l_out = exp_sum<T, VB>(s, n, m);
  }

  // s -> P = e^(masked - lse), dp -> dS = scale · P (dp - D)
  static QS_INLINE void grad(T* s, T* dp, int n, const IT* kp, const T* kadd, IT qp, int window, T scale, T lse, T D) {
    if (std::isinf(lse)) {  // a query that saw nothing: no gradient
      std::memset(s, 0, sizeof(T) * (size_t)n);
      std::memset(dp, 0, sizeof(T) * (size_t)n);
      return;
    }
    const V lv = S::splat(lse), Dv = S::splat(D);
    for (int j = 0; j < n; j += L) {
      V p = masked(s, kp, kadd, qp, window, scale, j) - lv;
      S::exp_inplace(p);
      S::store(s + j, p);
      S::store(dp + j, p * (S::load(dp + j) - Dv) * scale);
    }
  }
};

template <typename T>
struct Fns {
  void (*softmax)(T*, int, const IntOf<T>*, const T*, IntOf<T>, int, T, T*, T*);
  void (*grad)(T*, T*, int, const IntOf<T>*, const T*, IntOf<T>, int, T, T, T);
};

template <typename T>
void softmax_generic(T* s, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T* m, T* l) {
  RowOps<T, 16>::softmax(s, n, kp, ka, qp, w, sc, m, l);
}
template <typename T>
void grad_generic(T* s, T* dp, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T lse, T D) {
  RowOps<T, 16>::grad(s, dp, n, kp, ka, qp, w, sc, lse, D);
}
#if QS_X86
template <typename T>
QS_TARGET_AVX2 void softmax_avx2(T* s, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T* m, T* l) {
  RowOps<T, 32>::softmax(s, n, kp, ka, qp, w, sc, m, l);
}
template <typename T>
QS_TARGET_AVX2 void grad_avx2(T* s, T* dp, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T lse, T D) {
  RowOps<T, 32>::grad(s, dp, n, kp, ka, qp, w, sc, lse, D);
}
template <typename T>
QS_TARGET_AVX512 void softmax_avx512(T* s, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T* m, T* l) {
  RowOps<T, 64>::softmax(s, n, kp, ka, qp, w, sc, m, l);
}
template <typename T>
QS_TARGET_AVX512 void grad_avx512(T* s, T* dp, int n, const IntOf<T>* kp, const T* ka, IntOf<T> qp, int w, T sc, T lse,
                                  T D) {
  RowOps<T, 64>::grad(s, dp, n, kp, ka, qp, w, sc, lse, D);
}
#endif

template <typename T>
Fns<T> pick_fns() {
#if QS_X86
  switch (active_isa()) {
    case kIsaAvx512: return {softmax_avx512<T>, grad_avx512<T>};
    case kIsaAvx2: return {softmax_avx2<T>, grad_avx2<T>};
    default: break;
  }
#endif
  return {softmax_generic<T>, grad_generic<T>};
}

// ---------------------------------------------------------------------------------------------
// Per-thread scratch: S and dP (kQB, padded Tk) plus the key tables.

template <typename T>
struct Work {
  T *S, *dP, *kadd;
  IntOf<T>* kp;
};

template <typename T>
struct ScratchSet {
  std::vector<T> buf;
  size_t stride;
  int ldmax;
  explicit ScratchSet(int nthreads, int Tk) {
    ldmax = round_up(Tk);
    stride = (size_t)2 * kQB * ldmax + 2 * (size_t)ldmax + 64;  // IntOf<T> has T's size
    buf.resize(stride * nthreads + 16);
  }
  Work<T> get(int t) {
    uintptr_t p = (uintptr_t)(buf.data() + stride * t);
    T* base = (T*)((p + 63) & ~(uintptr_t)63);
    Work<T> w;
    w.S = base;
    w.dP = w.S + (size_t)kQB * ldmax;
    w.kadd = w.dP + (size_t)kQB * ldmax;
    w.kp = reinterpret_cast<IntOf<T>*>(w.kadd + ldmax);
    return w;
  }
};

template <typename T>
void query_range(const Args<T>& a, int b, int i0, int nq, int32_t* qmin, int32_t* qmax) {
  const int32_t* qp = a.q_pos + (int64_t)b * a.Tq + i0;
  *qmin = std::numeric_limits<int32_t>::max();
  *qmax = std::numeric_limits<int32_t>::min();
  for (int i = 0; i < nq; i++) *qmin = std::min(*qmin, qp[i]), *qmax = std::max(*qmax, qp[i]);
}

// Forward task (b, h, query block).
template <typename T>
void fwd_task(const Args<T>& a, const Fns<T>& fns, int task, Work<T>& w) {
  const int qb = task % a.nqb, h = (task / a.nqb) % a.H, b = task / a.nqb / a.H, hk = h / a.G;
  const int i0 = qb * kQB, nq = std::min(kQB, a.Tq - i0), d = a.d;
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  T* O = a.out + ((int64_t)b * a.Tq + i0) * ldq + (int64_t)h * d;
  float* lse = a.lse + ((int64_t)b * a.H + h) * a.Tq + i0;
  int32_t qmin, qmax;
  query_range(a, b, i0, nq, &qmin, &qmax);
  int jlo, jhi;
  if (!key_span(a, b, qmin, qmax, &jlo, &jhi)) {
    for (int i = 0; i < nq; i++) {
      std::fill(O + i * ldq, O + i * ldq + d, T(0));
      lse[i] = -std::numeric_limits<float>::infinity();
    }
    return;
  }
  const int span = jhi - jlo + 1, ld = round_up(span);
  key_tables(a, b, jlo, span, w.kp, w.kadd);
  const T* Q = a.q + ((int64_t)b * a.Tq + i0) * ldq + (int64_t)h * d;
  const T* K = a.k + ((int64_t)b * a.Tk + jlo) * ldk + (int64_t)hk * d;
  const T* V = a.v + ((int64_t)b * a.Tk + jlo) * ldk + (int64_t)hk * d;
  gemm<T>(false, true, nq, span, d, T(1), Q, (int)ldq, K, (int)ldk, T(0), w.S, ld);
  const int32_t* qpos = a.q_pos + (int64_t)b * a.Tq + i0;
  T m[kQB], l[kQB];
  for (int i = 0; i < nq; i++)
    fns.softmax(w.S + (int64_t)i * ld, span, w.kp, w.kadd, (IntOf<T>)qpos[i], a.window, a.scale, m + i, l + i);
  gemm<T>(false, false, nq, d, span, T(1), w.S, ld, V, (int)ldk, T(0), O, (int)ldq);
  for (int i = 0; i < nq; i++) {
    T* o = O + i * ldq;
    if (l[i] > 0) {
      const T inv = T(1) / l[i];
      for (int p = 0; p < d; p++) o[p] *= inv;
      lse[i] = (float)(m[i] + std::log(l[i]));
    } else {
      std::fill(o, o + d, T(0));
      lse[i] = -std::numeric_limits<float>::infinity();
    }
  }
}

// Backward task (b, kv head): its query heads and their blocks, in order.
template <typename T>
void bwd_task(const Args<T>& a, const Fns<T>& fns, int task, Work<T>& w) {
  const int hk = task % a.Hkv, b = task / a.Hkv, d = a.d;
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  for (int h = hk * a.G; h < (hk + 1) * a.G; h++)
    for (int qb = 0; qb < a.nqb; qb++) {
      const int i0 = qb * kQB, nq = std::min(kQB, a.Tq - i0);
      int32_t qmin, qmax;
      query_range(a, b, i0, nq, &qmin, &qmax);
      int jlo, jhi;
      if (!key_span(a, b, qmin, qmax, &jlo, &jhi)) continue;
      const int span = jhi - jlo + 1, ld = round_up(span);
      key_tables(a, b, jlo, span, w.kp, w.kadd);
      const int64_t qoff = ((int64_t)b * a.Tq + i0) * ldq + (int64_t)h * d;
      const int64_t koff = ((int64_t)b * a.Tk + jlo) * ldk + (int64_t)hk * d;
      const T *Q = a.q + qoff, *dO = a.dout + qoff, *O = a.o + qoff, *K = a.k + koff, *V = a.v + koff;
      const float* lse = a.lse_in + ((int64_t)b * a.H + h) * a.Tq + i0;
      const int32_t* qpos = a.q_pos + (int64_t)b * a.Tq + i0;
      gemm<T>(false, true, nq, span, d, T(1), Q, (int)ldq, K, (int)ldk, T(0), w.S, ld);     // S
      gemm<T>(false, true, nq, span, d, T(1), dO, (int)ldq, V, (int)ldk, T(0), w.dP, ld);   // dP
      for (int i = 0; i < nq; i++) {
        T D = 0;
        for (int p = 0; p < d; p++) D += dO[i * ldq + p] * O[i * ldq + p];
        fns.grad(w.S + (int64_t)i * ld, w.dP + (int64_t)i * ld, span, w.kp, w.kadd, (IntOf<T>)qpos[i], a.window,
                 a.scale, (T)lse[i], D);
      }
      gemm<T>(true, false, span, d, nq, T(1), w.S, ld, dO, (int)ldq, T(1), a.dv + koff, (int)ldk);   // dV += Pᵀ dO
      gemm<T>(false, false, nq, d, span, T(1), w.dP, ld, K, (int)ldk, T(1), a.dq + qoff, (int)ldq);  // dQ += dS K
      gemm<T>(true, false, span, d, nq, T(1), w.dP, ld, Q, (int)ldq, T(1), a.dk + koff, (int)ldk);  // dK += dSᵀ Q
    }
}

template <typename T>
Args<T> make_args(const T* q, const T* k, const T* v, const int32_t* q_pos, const int32_t* k_pos, const uint8_t* k_valid,
                  const AttentionShape& s, T scale) {
  Args<T> a{};
  a.q = q, a.k = k, a.v = v, a.q_pos = q_pos, a.k_pos = k_pos, a.k_valid = k_valid;
  a.B = s.B, a.Tq = s.Tq, a.Tk = s.Tk, a.H = s.H, a.Hkv = s.Hkv, a.d = s.d, a.window = s.window;
  a.G = s.H / s.Hkv;
  a.nqb = (s.Tq + kQB - 1) / kQB;
  a.scale = scale;
  return a;
}

// Runs task(a, fns, t, w) for t in [0, ntasks) over the thread pool, each thread with its own
// scratch. Dynamic scheduling: blocks differ in span (later query blocks see more keys).
template <typename T>
void run_tasks(const Args<T>& a, int ntasks, void (*task)(const Args<T>&, const Fns<T>&, int, Work<T>&)) {
  const Fns<T> fns = pick_fns<T>();
  const int nthreads = get_num_threads();
  ScratchSet<T> scratch(nthreads, a.Tk);
#pragma omp parallel num_threads(nthreads)
  {
    Work<T> w = scratch.get(thread_id());
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; t++) task(a, fns, t, w);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding: one (b, h) task, its Tq queries one by one. sc: (Tk padded) scores scratch.

template <typename T, int VB>
QS_INLINE void decode_task(const Args<T>& a, int task, T* sc) {
  typedef vec::Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int h = task % a.H, b = task / a.H, hk = h / a.G, d = a.d;
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk;
  const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk : nullptr;
  const T* K = a.k + (int64_t)b * a.Tk * ldk + (int64_t)hk * d;
  const T* Vv = a.v + (int64_t)b * a.Tk * ldk + (int64_t)hk * d;
  for (int i = 0; i < a.Tq; i++) {
    const T* q = a.q + ((int64_t)b * a.Tq + i) * ldq + (int64_t)h * d;
    T* o = a.out + ((int64_t)b * a.Tq + i) * ldq + (int64_t)h * d;
    float* lse = a.lse + ((int64_t)b * a.H + h) * a.Tq + i;
    const int32_t qp = a.q_pos[(int64_t)b * a.Tq + i];
    // scores of the visible keys (-inf for the others); their max
    T m = ninf;
    int jlo = a.Tk, jhi = -1;
    for (int j = 0; j < a.Tk; j++) {
      const bool vis = (!kval || kval[j]) && kpos[j] <= qp &&
                       (a.window <= 0 || (int64_t)qp - (int64_t)kpos[j] < (int64_t)a.window);
      if (!vis) {
        sc[j] = ninf;
        continue;
      }
      const T* kj = K + (int64_t)j * ldk;
      V acc = V{};
      int p = 0;
      for (; p + L <= d; p += L) acc += S::load(q + p) * S::load(kj + p);
      T dot = 0;
      for (int t = 0; t < L; t++) dot += acc[t];
      for (; p < d; p++) dot += q[p] * kj[p];
      sc[j] = dot * a.scale;
      m = sc[j] > m ? sc[j] : m;
      jlo = std::min(jlo, j), jhi = j;
    }
    if (jhi < 0) {  // nothing visible
      std::fill(o, o + d, T(0));
      *lse = -std::numeric_limits<float>::infinity();
      continue;
    }
    // probabilities over [jlo, jhi] (whole vectors: the scratch is padded with -inf)
    const int n = round_up(jhi - jlo + 1);
    T* sp = sc + jlo;
    for (int j = jhi - jlo + 1; j < n; j++) sp[j] = ninf;
    const T l = exp_sum<T, VB>(sp, n, m);
    // out = Σ_j p_j v_j / l
    std::fill(o, o + d, T(0));
    for (int j = 0; j <= jhi - jlo; j++) {
      const T pj = sp[j];
      if (pj == T(0)) continue;
      const T* vj = Vv + (int64_t)(jlo + j) * ldk;
      int p = 0;
      for (; p + L <= d; p += L) S::store(o + p, S::load(o + p) + pj * S::load(vj + p));
      for (; p < d; p++) o[p] += pj * vj[p];
    }
    const T inv = T(1) / l;
    for (int p = 0; p < d; p++) o[p] *= inv;
    *lse = (float)(m + std::log(l));
  }
}

template <typename T> using DecodeFn = void (*)(const Args<T>&, int, T*);
template <typename T> void decode_generic(const Args<T>& a, int t, T* sc) { decode_task<T, 16>(a, t, sc); }
#if QS_X86
template <typename T> QS_TARGET_AVX2 void decode_avx2(const Args<T>& a, int t, T* sc) { decode_task<T, 32>(a, t, sc); }
template <typename T> QS_TARGET_AVX512 void decode_avx512(const Args<T>& a, int t, T* sc) { decode_task<T, 64>(a, t, sc); }
#endif

template <typename T>
DecodeFn<T> pick_decode() {
#if QS_X86
  switch (active_isa()) {
    case kIsaAvx512: return decode_avx512<T>;
    case kIsaAvx2: return decode_avx2<T>;
    default: break;
  }
#endif
  return decode_generic<T>;
}

}  // namespace

template <typename T>
void attention_decode_forward(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* q_pos,
                              const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s, T scale) {
  if (attention_forward_trivial(out, lse, s)) return;
  Args<T> a = make_args(q, k, v, q_pos, k_pos, k_valid, s, scale);
  a.out = out, a.lse = lse;
  const DecodeFn<T> fn = pick_decode<T>();
  const int ntasks = s.B * s.H, nthreads = get_num_threads();
  const size_t stride = (size_t)round_up(s.Tk) + 2 * kPad;
  std::vector<T> scratch(stride * nthreads);
  const bool par = (int64_t)ntasks * s.Tq * s.Tk * s.d > (1 << 15);
#pragma omp parallel num_threads(nthreads) if (par)
  {
    T* sc = scratch.data() + stride * thread_id();
#pragma omp for schedule(static)
    for (int t = 0; t < ntasks; t++) fn(a, t, sc);
  }
}

template <typename T>
void attention_gemm_forward(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* q_pos,
                            const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s, T scale) {
  if (attention_forward_trivial(out, lse, s)) return;
  Args<T> a = make_args(q, k, v, q_pos, k_pos, k_valid, s, scale);
  a.out = out, a.lse = lse;
  run_tasks<T>(a, s.B * s.H * a.nqb, fwd_task<T>);
}

template <typename T>
void attention_gemm_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                             const float* lse, const int32_t* q_pos, const int32_t* k_pos, const uint8_t* k_valid,
                             const AttentionShape& s, T scale) {
  if (s.B <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0) return;
  Args<T> a = make_args(q, k, v, q_pos, k_pos, k_valid, s, scale);
  a.dq = dq, a.dk = dk, a.dv = dv, a.dout = dout, a.o = out, a.lse_in = lse;
  run_tasks<T>(a, s.B * s.Hkv, bwd_task<T>);
}

template void attention_decode_forward<float>(float*, float*, const float*, const float*, const float*, const int32_t*,
                                              const int32_t*, const uint8_t*, const AttentionShape&, float);
template void attention_decode_forward<double>(double*, float*, const double*, const double*, const double*,
                                               const int32_t*, const int32_t*, const uint8_t*, const AttentionShape&,
                                               double);
template void attention_gemm_forward<float>(float*, float*, const float*, const float*, const float*, const int32_t*,
                                            const int32_t*, const uint8_t*, const AttentionShape&, float);
template void attention_gemm_forward<double>(double*, float*, const double*, const double*, const double*,
                                             const int32_t*, const int32_t*, const uint8_t*, const AttentionShape&,
                                             double);
template void attention_gemm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                             const float*, const float*, const float*, const int32_t*, const int32_t*,
                                             const uint8_t*, const AttentionShape&, float);
template void attention_gemm_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                              const double*, const double*, const float*, const int32_t*,
                                              const int32_t*, const uint8_t*, const AttentionShape&, double);

}  // namespace qs::cpu
