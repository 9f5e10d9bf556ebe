/*
 * attention.cpp: causal multi-head attention on the CPU, flash-style (see attention.h for the
 * contract: layouts, GQA, positions, validity, window).
 *
 * Forward (per batch row b, query head h and block of 64 queries; one OpenMP task each):
 *
 *   Qt = the block's queries, transposed                              (d, 64)
 *   m = -inf, l = 0, Ot = 0                                           (64), (64), (d, 64)
 *   for each tile of 64 keys that some query of the block may see:
 *     St[j][i] = scale * k_j · q_i, or -inf where key j is invisible   (64 keys, 64 queries)
 *     m' = max(m, max_j St[., i]);  St = exp(St - m');  l = l e^(m - m') + sum_j St
 *     Ot = Ot e^(m - m') + Vᵀ · St
 *   out_i = Ot[:, i] / l_i,   lse_i = m_i + log l_i
 *
 * so memory is O(d·64 + 64·64) per thread whatever Tq and Tk are: no Tq x Tk matrix exists.
 * A query that sees no key at all keeps l = 0 and gets out = 0, lse = -inf.
 *
 * Backward (FlashAttention-2): with D_i = <dout_i, out_i> (precomputed, (B, H, Tq)),
 *   P_ij = exp(s_ij - lse_i)    dP_ij = dout_i · v_j    dS_ij = P_ij (dP_ij - D_i)
 *   dQ_i += scale Σ_j dS_ij k_j    dK_j += scale Σ_i dS_ij q_i    dV_j += Σ_i P_ij dout_i
 * in two passes so that every gradient element has exactly one writer and a fixed summation
 * order (deterministic for any thread count, no atomics):
 *   pass 1, a task per (b, h, 64-query block): key tiles in order, accumulates dQ;
 *   pass 2, a task per (b, kv head, 64-key block): the group's query heads in order, and for
 *           each its 64-query tiles in order, accumulates dK and dV.
 * P is recomputed in both passes (4 tile products in pass 2, 3 in pass 1, 2 in the forward).
 *
 * Tiles are skipped when no (query, key) pair in them can be visible, judged from the tile's
 * min/max query position and min/max valid key position, which is safe for any positions
 * (not only monotonic ones): causal attention does about half the work of dense.
 *
 * Inner loops. Every product here has the form
 *   C[r][0:64] (+)= Σ_k A[r·sr + k·sk] · B[k][0:64]
 * where B and C are 64-wide scratch rows and A is any strided view (q, k, v, dout straight
 * from their (B, T, heads, d) layout, so K and V are never copied in the forward). Choosing
 * the 64-wide dimension to be queries in the forward / pass 1 and keys in pass 2 makes the
 * softmax vectorise along the same rows. The kernel (mm below) keeps an RB-row x CG-vector
 * block of C in registers, written with GCC vector extensions so it is the same code for
 * SSE2 (128-bit), AVX2+FMA (256-bit) and AVX-512 (512-bit vectors). The binary
 * targets baseline x86-64; the AVX2 / AVX-512 copies are compiled with target attributes and
 * picked by CPUID at run time (isa.h: the environment variable QS_CPU_SIMD=generic|avx2 caps
 * the choice, read per call, so tests can check every path). float accumulates in float,
 * double in double; exp is vec_math.h's Cephes-style polynomial for float (≈1e-7 relative,
 * exactly 0 below -87) and std::exp for double.
 *
 * Memory: one scratch allocation per call before the parallel region, (4·d·64 + 2·64·64 +
 * 4·64) elements per thread (≈ 100 KiB for float, d = 64), plus D, B·H·Tq elements, in the
 * backward. lse is float by contract even for T = double, so the double backward's
 * recomputed P carries a relative error of ~1e-7·|lse| (tests allow for it).
 */
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace qs::cpu {
namespace {

constexpr int kTile = 64;  // queries per block = keys per tile = width of every scratch row

// ---------------------------------------------------------------------------------------------
// SIMD: the shared traits (vec_math.h: V, VI, VU, IT, loads, exp) plus the causal mask.
// Positions are widened to IT so that masks line up with V.

template <typename T, int VB>
struct Simd : vec::Simd<T, VB> {
  typedef typename vec::Simd<T, VB>::VI VI;
  typedef typename vec::Simd<T, VB>::VU VU;
  typedef typename vec::Simd<T, VB>::IT IT;
  // Lanes of -1 where a key at position kp is visible from a query at position qp:
  // kp <= qp and, with a window, qp - kp < window. The difference is taken in unsigned
  // arithmetic, exact whenever kp <= qp, so extreme positions cannot overflow.
  static QS_INLINE VI visible(const VI& qp, const VI& kp, int window) {
    VI vis = kp <= qp;
    if (window > 0) vis &= ((VU)qp - (VU)kp) < (VU)vec::Simd<T, VB>::splati((IT)window);
    return vis;
  }
};

// Register block of mm: RB rows x CG vectors of C stay in registers while B streams through.
// SSE2 (16 xmm, no FMA): 2 x 4. AVX2 (16 ymm): 6 x 2, the classic 6x16 gemm shape, 12
// accumulators + 2 loads + 1 broadcast. AVX-512 (32 zmm): 6 x 4, 24 accumulators. Measured on
// a Zen 4 class core these beat the neighbouring shapes (AVX2 6x2 by ~15% over 2x4).
template <int VB> constexpr int mm_rows() { return VB == 32 ? 6 : VB == 64 ? 6 : 2; }
template <typename T, int VB> constexpr int mm_cols() {
  constexpr int cg = VB == 32 ? 2 : 4;
  return (int)(kTile * sizeof(T) / VB) < cg ? (int)(kTile * sizeof(T) / VB) : cg;
}

// ---------------------------------------------------------------------------------------------
// The one tile product:  C[r][0:64] (+)= Σ_{k<K} A[r·sr + k·sk] · B[k][0:64],  r < R.
// C and B are scratch rows of kTile elements; A is any strided view. Summation over k is in
// order, so results depend only on the shapes, never on threads.

template <typename T, int VB, int RB>
QS_INLINE void mm_block(T* C, const T* A, int64_t sr, int64_t sk, const T* B, int K, bool accumulate,
                        int c0) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  constexpr int CG = mm_cols<T, VB>();
  V acc[RB][CG];
  for (int r = 0; r < RB; r++)
    for (int c = 0; c < CG; c++) acc[r][c] = accumulate ? S::load(C + r * kTile + c0 + c * L) : V{};
  for (int k = 0; k < K; k++) {
    V b[CG];
    for (int c = 0; c < CG; c++) b[c] = S::load(B + (int64_t)k * kTile + c0 + c * L);
    for (int r = 0; r < RB; r++) {
      T a = A[r * sr + k * sk];
      for (int c = 0; c < CG; c++) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < RB; r++)
    for (int c = 0; c < CG; c++) S::store(C + r * kTile + c0 + c * L, acc[r][c]);
}

// Rows left over after the RB-row blocks (n < RB): one block of exactly n rows.
template <typename T, int VB, int N>
QS_INLINE void mm_tail(int n, T* C, const T* A, int64_t sr, int64_t sk, const T* B, int K,
                       bool accumulate, int c0) {
  if constexpr (N > 0) {
    if (n == N) {
      mm_block<T, VB, N>(C, A, sr, sk, B, K, accumulate, c0);
      return;
    }
    mm_tail<T, VB, N - 1>(n, C, A, sr, sk, B, K, accumulate, c0);
  }
}

template <typename T, int VB>
QS_INLINE void mm(T* C, int R, const T* A, int64_t sr, int64_t sk, const T* B, int K, bool accumulate) {
  constexpr int L = Simd<T, VB>::L;
  constexpr int CG = mm_cols<T, VB>();
  constexpr int RB = mm_rows<VB>();
  for (int c0 = 0; c0 < kTile; c0 += CG * L) {
    int r = 0;
    for (; r + RB <= R; r += RB)
      mm_block<T, VB, RB>(C + r * kTile, A + r * sr, sr, sk, B, K, accumulate, c0);
    mm_tail<T, VB, RB - 1>(R - r, C + r * kTile, A + r * sr, sr, sk, B, K, accumulate, c0);
  }
}

// ---------------------------------------------------------------------------------------------
// Arguments shared by the tasks, and the tile-skipping test.

template <typename T>
struct Args {
  // forward
  T* out;       // (B, Tq, H, d)
  float* lse;   // (B, H, Tq)
  // backward
  T* dq;        // (B, Tq, H, d)
  T* dk;        // (B, Tk, Hkv, d)
  T* dv;        // (B, Tk, Hkv, d)
  const T* dout;       // (B, Tq, H, d)
  const T* D;          // (B, H, Tq)  <dout_i, out_i>
  const float* lse_in; // (B, H, Tq)
  // inputs
  const T* q;          // (B, Tq, H, d)
  const T* k;          // (B, Tk, Hkv, d)
  const T* v;          // (B, Tk, Hkv, d)
  const int32_t* q_pos;    // (B, Tq)
  const int32_t* k_pos;    // (B, Tk)
  const uint8_t* k_valid;  // (B, Tk) or null
  int B, Tq, Tk, H, Hkv, d, window;
  int G;          // query heads per kv head
  int nqb, nkb;   // 64-blocks of queries and keys
  T scale;
};

// Position range of a run of n queries.
inline void query_range(const int32_t* qpos, int n, int32_t& qmin, int32_t& qmax) {
  qmin = std::numeric_limits<int32_t>::max();
  qmax = std::numeric_limits<int32_t>::min();
  for (int i = 0; i < n; i++) {
    qmin = std::min(qmin, qpos[i]);
    qmax = std::max(qmax, qpos[i]);
  }
}

// Position range of the valid keys among n; false when none is valid.
inline bool key_range(const int32_t* kpos, const uint8_t* kvalid, int n, int32_t& kmin, int32_t& kmax) {
  kmin = std::numeric_limits<int32_t>::max();
  kmax = std::numeric_limits<int32_t>::min();
  bool any = false;
  for (int j = 0; j < n; j++) {
    if (kvalid && !kvalid[j]) continue;
    any = true;
    kmin = std::min(kmin, kpos[j]);
    kmax = std::max(kmax, kpos[j]);
  }
  return any;
}

// Can any key in [kmin, kmax] be visible from any query in [qmin, qmax]? A visible pair needs
// kp <= qp <= qmax, and qp - kp < window with qp - kp >= qmin - kmax.
inline bool ranges_may_see(int32_t qmin, int32_t qmax, int32_t kmin, int32_t kmax, int window) {
  if (kmin > qmax) return false;
  if (window > 0 && (int64_t)qmin - (int64_t)kmax >= (int64_t)window) return false;
  return true;
}

// Per-thread scratch, in elements of T (the same layout serves all three tasks).
inline size_t scratch_elems(int d) { return (size_t)4 * d * kTile + (size_t)2 * kTile * kTile + 4 * kTile; }

// ---------------------------------------------------------------------------------------------
// Forward task: (b, h, 64-query block).

template <typename T, int VB>
QS_INLINE void fwd_task(const Args<T>& a, int task, T* ws) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  typedef typename S::IT IT;
  constexpr int L = S::L;
  constexpr int NV = kTile / L;
  const int d = a.d;
  const int qb = task % a.nqb, h = (task / a.nqb) % a.H, b = task / a.nqb / a.H;
  const int hk = h / a.G;
  const int i0 = qb * kTile, nq = std::min(kTile, a.Tq - i0);
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  const T scale = a.scale;
  const T ninf = -std::numeric_limits<T>::infinity();

  T* Qt = ws;                    // (d, 64)   queries of the block, transposed, 0 in padded columns
  T* Ot = Qt + d * kTile;        // (d, 64)   unnormalised output, transposed
  T* St = Ot + d * kTile;        // (64, 64)  [key j][query i]: scaled scores, then exp(s - m)
  T* m = St + kTile * kTile;     // (64)      running max of the visible scaled scores
  T* l = m + kTile;              // (64)      running Σ exp(s - m)
  alignas(64) IT qp[kTile];      // (64)      query positions, widened; padded columns see nothing

  const int32_t* qpos = a.q_pos + (int64_t)b * a.Tq + i0;
  int32_t qmin, qmax;
  query_range(qpos, nq, qmin, qmax);
  for (int i = 0; i < kTile; i++) qp[i] = i < nq ? (IT)qpos[i] : std::numeric_limits<IT>::min();
  std::memset(Qt, 0, sizeof(T) * d * kTile);
  for (int i = 0; i < nq; i++) {
    const T* src = a.q + ((int64_t)b * a.Tq + i0 + i) * ldq + (int64_t)h * d;
    for (int p = 0; p < d; p++) Qt[p * kTile + i] = src[p];
  }
  std::memset(Ot, 0, sizeof(T) * d * kTile);
  for (int i = 0; i < kTile; i++) {
    m[i] = ninf;
    l[i] = 0;
  }

  for (int kt = 0; kt < a.nkb; kt++) {
    const int j0 = kt * kTile, nk = std::min(kTile, a.Tk - j0);
    const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk + j0;
    const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk + j0 : nullptr;
    int32_t kmin, kmax;
    if (!key_range(kpos, kval, nk, kmin, kmax) || !ranges_may_see(qmin, qmax, kmin, kmax, a.window))
      continue;
    const T* kb = a.k + ((int64_t)b * a.Tk + j0) * ldk + (int64_t)hk * d;  // key j at kb + j·ldk
    const T* vb = a.v + ((int64_t)b * a.Tk + j0) * ldk + (int64_t)hk * d;

    // St[j][i] = k_j · q_i
    mm<T, VB>(St, nk, kb, ldk, 1, Qt, d, false);

    // Mask and scale; the tile's max per query.
    V mt[NV];
    for (int c = 0; c < NV; c++) mt[c] = S::splat(ninf);
    for (int j = 0; j < nk; j++) {
      T* row = St + j * kTile;
      if (kval && !kval[j]) {
        for (int i = 0; i < kTile; i++) row[i] = ninf;
        continue;
      }
      const VI kpv = S::splati((IT)kpos[j]);
      for (int c = 0; c < NV; c++) {
        V s = S::load(row + c * L);
        VI vis = S::visible(S::loadi(qp + c * L), kpv, a.window);
        s = vis ? s * scale : S::splat(ninf);
        S::store(row + c * L, s);
        mt[c] = s > mt[c] ? s : mt[c];
      }
    }

    // New running max. Queries that have seen nothing yet keep m = -inf; subtract 0 for them
    // instead, so no -inf - -inf appears (their probabilities are exp(-inf) = 0).
    V msafe[NV], corr[NV], sum[NV];
    for (int c = 0; c < NV; c++) {
      V mold = S::load(m + c * L);
      V mnew = mt[c] > mold ? mt[c] : mold;
      S::store(m + c * L, mnew);
      msafe[c] = mnew == S::splat(ninf) ? V{} : mnew;
      corr[c] = mold - msafe[c];
      S::exp_inplace(corr[c]);
      sum[c] = V{};
    }
    // Probabilities, in place, and their sums.
    for (int j = 0; j < nk; j++) {
      T* row = St + j * kTile;
      for (int c = 0; c < NV; c++) {
        V p = S::load(row + c * L) - msafe[c];
        S::exp_inplace(p);
        S::store(row + c * L, p);
        sum[c] += p;
      }
    }
    for (int c = 0; c < NV; c++) S::store(l + c * L, S::load(l + c * L) * corr[c] + sum[c]);
    for (int p = 0; p < d; p++)
      for (int c = 0; c < NV; c++) S::store(Ot + p * kTile + c * L, S::load(Ot + p * kTile + c * L) * corr[c]);

    // Ot[p][i] += Σ_j v_j[p] · P[j][i]
    mm<T, VB>(Ot, d, vb, 1, ldk, St, nk, true);
  }

  for (int i = 0; i < nq; i++) {
    T* o = a.out + ((int64_t)b * a.Tq + i0 + i) * ldq + (int64_t)h * d;
    float* ls = a.lse + ((int64_t)b * a.H + h) * a.Tq + i0 + i;
    if (l[i] > 0) {
      const T inv = T(1) / l[i];
      for (int p = 0; p < d; p++) o[p] = Ot[p * kTile + i] * inv;
      *ls = (float)(m[i] + std::log(l[i]));
    } else {  // no visible key
      for (int p = 0; p < d; p++) o[p] = 0;
      *ls = -std::numeric_limits<float>::infinity();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward pass 1 (dQ) task: (b, h, 64-query block). Mirrors the forward's orientation.

template <typename T, int VB>
QS_INLINE void bwd_q_task(const Args<T>& a, int task, T* ws) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  typedef typename S::IT IT;
  constexpr int L = S::L;
  constexpr int NV = kTile / L;
  const int d = a.d;
  const int qb = task % a.nqb, h = (task / a.nqb) % a.H, b = task / a.nqb / a.H;
  const int hk = h / a.G;
  const int i0 = qb * kTile, nq = std::min(kTile, a.Tq - i0);
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  const T scale = a.scale;

  T* Qt = ws;                    // (d, 64)   queries, transposed, 0-padded
  T* dOt = Qt + d * kTile;       // (d, 64)   dout, transposed, 0-padded
  T* dQt = dOt + d * kTile;      // (d, 64)   Σ_j dS_ij k_j, transposed
  T* St = dQt + d * kTile;       // (64, 64)  [key][query]: scores, then dS
  T* dPt = St + kTile * kTile;   // (64, 64)  [key][query]: v_j · dout_i
  T* lse = dPt + kTile * kTile;  // (64)      lse, +inf where the query sees nothing (P = 0)
  T* Dq = lse + kTile;           // (64)      D_i
  alignas(64) IT qp[kTile];      // (64)      query positions

  const int32_t* qpos = a.q_pos + (int64_t)b * a.Tq + i0;
  int32_t qmin, qmax;
  query_range(qpos, nq, qmin, qmax);
  std::memset(Qt, 0, sizeof(T) * 3 * d * kTile);  // Qt, dOt, dQt
  for (int i = 0; i < kTile; i++) {
    qp[i] = i < nq ? (IT)qpos[i] : std::numeric_limits<IT>::min();
    const int64_t row = ((int64_t)b * a.H + h) * a.Tq + i0 + i;
    float ls = i < nq ? a.lse_in[row] : -std::numeric_limits<float>::infinity();
    lse[i] = std::isinf(ls) && ls < 0 ? std::numeric_limits<T>::infinity() : (T)ls;
    Dq[i] = i < nq ? a.D[row] : T(0);
  }
  for (int i = 0; i < nq; i++) {
    const int64_t off = ((int64_t)b * a.Tq + i0 + i) * ldq + (int64_t)h * d;
    for (int p = 0; p < d; p++) {
      Qt[p * kTile + i] = a.q[off + p];
      dOt[p * kTile + i] = a.dout[off + p];
    }
  }

  bool any = false;
  for (int kt = 0; kt < a.nkb; kt++) {
    const int j0 = kt * kTile, nk = std::min(kTile, a.Tk - j0);
    const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk + j0;
    const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk + j0 : nullptr;
    int32_t kmin, kmax;
    if (!key_range(kpos, kval, nk, kmin, kmax) || !ranges_may_see(qmin, qmax, kmin, kmax, a.window))
      continue;
    any = true;
    const T* kb = a.k + ((int64_t)b * a.Tk + j0) * ldk + (int64_t)hk * d;
    const T* vb = a.v + ((int64_t)b * a.Tk + j0) * ldk + (int64_t)hk * d;

    mm<T, VB>(St, nk, kb, ldk, 1, Qt, d, false);   // St[j][i] = k_j · q_i
    mm<T, VB>(dPt, nk, vb, ldk, 1, dOt, d, false); // dPt[j][i] = v_j · dout_i

    // dS = P (dP - D), P = exp(scale s - lse) on visible pairs, 0 elsewhere.
    for (int j = 0; j < nk; j++) {
      T* row = St + j * kTile;
      if (kval && !kval[j]) {
        std::memset(row, 0, sizeof(T) * kTile);
        continue;
      }
      const T* dprow = dPt + j * kTile;
      const VI kpv = S::splati((IT)kpos[j]);
      for (int c = 0; c < NV; c++) {
        V p = S::load(row + c * L) * scale - S::load(lse + c * L);
        S::exp_inplace(p);
        VI vis = S::visible(S::loadi(qp + c * L), kpv, a.window);
        p = vis ? p : V{};
        S::store(row + c * L, p * (S::load(dprow + c * L) - S::load(Dq + c * L)));
      }
    }
    // dQt[p][i] += Σ_j k_j[p] · dS[j][i]
    mm<T, VB>(dQt, d, kb, 1, ldk, St, nk, true);
  }
  if (!any) return;

  for (int i = 0; i < nq; i++) {
    T* g = a.dq + ((int64_t)b * a.Tq + i0 + i) * ldq + (int64_t)h * d;
    for (int p = 0; p < d; p++) g[p] += scale * dQt[p * kTile + i];
  }
}

// ---------------------------------------------------------------------------------------------
// Backward pass 2 (dK, dV) task: (b, kv head, 64-key block). Orientation flipped: the 64-wide
// scratch dimension is keys, so K and V are transposed once per task and q, dout are read in
// place for every query tile of every query head in the group.

template <typename T, int VB>
QS_INLINE void bwd_kv_task(const Args<T>& a, int task, T* ws) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  typedef typename S::VI VI;
  typedef typename S::IT IT;
  constexpr int L = S::L;
  constexpr int NV = kTile / L;
  const int d = a.d;
  const int kb_ = task % a.nkb, hk = (task / a.nkb) % a.Hkv, b = task / a.nkb / a.Hkv;
  const int j0 = kb_ * kTile, nk = std::min(kTile, a.Tk - j0);
  const int64_t ldq = (int64_t)a.H * d, ldk = (int64_t)a.Hkv * d;
  const T scale = a.scale;

  T* Kt = ws;                    // (d, 64)   keys of the block, transposed, 0-padded
  T* Vt = Kt + d * kTile;        // (d, 64)   values, transposed, 0-padded
  T* dKt = Vt + d * kTile;       // (d, 64)   Σ_i dS_ij q_i, transposed
  T* dVt = dKt + d * kTile;      // (d, 64)   Σ_i P_ij dout_i, transposed
  T* Sq = dVt + d * kTile;       // (64, 64)  [query][key]: scores, then P
  T* dP = Sq + kTile * kTile;    // (64, 64)  [query][key]: dout_i · v_j, then dS
  alignas(64) IT kp[kTile];      // (64)      key positions
  alignas(64) IT kv[kTile];      // (64)      -1 for a valid key, 0 for invalid or padding

  const int32_t* kpos = a.k_pos + (int64_t)b * a.Tk + j0;
  const uint8_t* kval = a.k_valid ? a.k_valid + (int64_t)b * a.Tk + j0 : nullptr;
  int32_t kmin, kmax;
  if (!key_range(kpos, kval, nk, kmin, kmax)) return;  // no valid key: no gradient
  for (int j = 0; j < kTile; j++) {
    kp[j] = j < nk ? (IT)kpos[j] : 0;
    kv[j] = j < nk && (!kval || kval[j]) ? IT(-1) : IT(0);
  }
  std::memset(Kt, 0, sizeof(T) * 4 * d * kTile);  // Kt, Vt, dKt, dVt
  for (int j = 0; j < nk; j++) {
    const int64_t off = ((int64_t)b * a.Tk + j0 + j) * ldk + (int64_t)hk * d;
    for (int p = 0; p < d; p++) {
      Kt[p * kTile + j] = a.k[off + p];
      Vt[p * kTile + j] = a.v[off + p];
    }
  }

  bool any = false;
  for (int g = 0; g < a.G; g++) {
    const int h = hk * a.G + g;
    for (int qt = 0; qt < a.nqb; qt++) {
      const int i0 = qt * kTile, nq = std::min(kTile, a.Tq - i0);
      const int32_t* qpos = a.q_pos + (int64_t)b * a.Tq + i0;
      int32_t qmin, qmax;
      query_range(qpos, nq, qmin, qmax);
      if (!ranges_may_see(qmin, qmax, kmin, kmax, a.window)) continue;
      any = true;
      const T* qb = a.q + ((int64_t)b * a.Tq + i0) * ldq + (int64_t)h * d;     // q_i at qb + i·ldq
      const T* ob = a.dout + ((int64_t)b * a.Tq + i0) * ldq + (int64_t)h * d;  // dout_i
      const int64_t row0 = ((int64_t)b * a.H + h) * a.Tq + i0;                // into lse, D

      mm<T, VB>(Sq, nq, qb, ldq, 1, Kt, d, false);  // Sq[i][j] = q_i · k_j
      mm<T, VB>(dP, nq, ob, ldq, 1, Vt, d, false);  // dP[i][j] = dout_i · v_j

      for (int i = 0; i < nq; i++) {
        T* srow = Sq + i * kTile;
        T* drow = dP + i * kTile;
        const float ls = a.lse_in[row0 + i];
        if (std::isinf(ls) && ls < 0) {  // the query sees nothing: P = dS = 0
          std::memset(srow, 0, sizeof(T) * kTile);
          std::memset(drow, 0, sizeof(T) * kTile);
          continue;
        }
        const T lse = (T)ls, Di = a.D[row0 + i];
        const VI qpv = S::splati((IT)qpos[i]);
        for (int c = 0; c < NV; c++) {
          V p = S::load(srow + c * L) * scale - lse;
          S::exp_inplace(p);
          VI vis = S::visible(qpv, S::loadi(kp + c * L), a.window) & S::loadi(kv + c * L);
          p = vis ? p : V{};
          S::store(srow + c * L, p);
          S::store(drow + c * L, p * (S::load(drow + c * L) - Di));
        }
      }
      // dVt[p][j] += Σ_i dout_i[p] · P[i][j];   dKt[p][j] += Σ_i q_i[p] · dS[i][j]
      mm<T, VB>(dVt, d, ob, 1, ldq, Sq, nq, true);
      mm<T, VB>(dKt, d, qb, 1, ldq, dP, nq, true);
    }
  }
  if (!any) return;

  for (int j = 0; j < nk; j++) {
    const int64_t off = ((int64_t)b * a.Tk + j0 + j) * ldk + (int64_t)hk * d;
    for (int p = 0; p < d; p++) {
      a.dk[off + p] += scale * dKt[p * kTile + j];
      a.dv[off + p] += dVt[p * kTile + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ISA dispatch. Each task gets a default-target instance (SSE2 on x86-64, NEON elsewhere) and,
// on x86, AVX2+FMA and AVX-512 instances; the parallel loops call them through a pointer, so
// the OpenMP regions themselves stay in plain code.

template <typename T>
using TaskFn = void (*)(const Args<T>&, int, T*);

template <typename T>
struct TaskSet {
  TaskFn<T> fwd, bwd_q, bwd_kv;
};

template <typename T> void fwd_generic(const Args<T>& a, int t, T* w) { fwd_task<T, 16>(a, t, w); }
template <typename T> void bwd_q_generic(const Args<T>& a, int t, T* w) { bwd_q_task<T, 16>(a, t, w); }
template <typename T> void bwd_kv_generic(const Args<T>& a, int t, T* w) { bwd_kv_task<T, 16>(a, t, w); }
#if QS_X86
template <typename T> QS_TARGET_AVX2 void fwd_avx2(const Args<T>& a, int t, T* w) { fwd_task<T, 32>(a, t, w); }
template <typename T> QS_TARGET_AVX2 void bwd_q_avx2(const Args<T>& a, int t, T* w) { bwd_q_task<T, 32>(a, t, w); }
template <typename T> QS_TARGET_AVX2 void bwd_kv_avx2(const Args<T>& a, int t, T* w) { bwd_kv_task<T, 32>(a, t, w); }
template <typename T> QS_TARGET_AVX512 void fwd_avx512(const Args<T>& a, int t, T* w) { fwd_task<T, 64>(a, t, w); }
template <typename T> QS_TARGET_AVX512 void bwd_q_avx512(const Args<T>& a, int t, T* w) { bwd_q_task<T, 64>(a, t, w); }
template <typename T> QS_TARGET_AVX512 void bwd_kv_avx512(const Args<T>& a, int t, T* w) { bwd_kv_task<T, 64>(a, t, w); }
#endif

template <typename T>
TaskSet<T> pick_tasks() {
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: return {fwd_avx512<T>, bwd_q_avx512<T>, bwd_kv_avx512<T>};
    case kIsaAvx2: return {fwd_avx2<T>, bwd_q_avx2<T>, bwd_kv_avx2<T>};
    default: break;
  }
#endif
  return {fwd_generic<T>, bwd_q_generic<T>, bwd_kv_generic<T>};
}

// Per-thread scratch: one allocation before the parallel region (so an allocation failure is
// an exception in the caller's thread, not inside OpenMP), each thread's slice 64-byte aligned.
template <typename T>
struct Scratch {
  std::vector<T> buf;
  size_t stride;
  Scratch(int nthreads, size_t elems) {
    const size_t align = 64 / sizeof(T);
    stride = (elems + align - 1) / align * align;
    buf.resize(stride * nthreads + align);
  }
  T* for_thread(int t) {
    uintptr_t p = (uintptr_t)(buf.data() + stride * t);
    return (T*)((p + 63) & ~(uintptr_t)63);
  }
};

template <typename T>
Args<T> make_args(const T* q, const T* k, const T* v, const int32_t* q_pos, const int32_t* k_pos,
                  const uint8_t* k_valid, const AttentionShape& s, T scale) {
  Args<T> a{};
  a.q = q;
  a.k = k;
  a.v = v;
  a.q_pos = q_pos;
  a.k_pos = k_pos;
  a.k_valid = k_valid;
  a.B = s.B;
  a.Tq = s.Tq;
  a.Tk = s.Tk;
  a.H = s.H;
  a.Hkv = s.Hkv;
  a.d = s.d;
  a.window = s.window;
  a.G = s.H / s.Hkv;
  a.nqb = (s.Tq + kTile - 1) / kTile;
  a.nkb = (s.Tk + kTile - 1) / kTile;
  a.scale = scale;
  return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <typename T>
void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v, const int32_t* q_pos,
                       const int32_t* k_pos, const uint8_t* k_valid, const AttentionShape& s, T scale) {
  if (attention_forward_trivial(out, lse, s)) return;
  Args<T> a = make_args(q, k, v, q_pos, k_pos, k_valid, s, scale);
  a.out = out;
  a.lse = lse;
  const TaskFn<T> fn = pick_tasks<T>().fwd;
  const int ntasks = s.B * s.H * a.nqb;
  const int nthreads = get_num_threads();
  Scratch<T> scratch(nthreads, scratch_elems(s.d));
#pragma omp parallel num_threads(nthreads)
  {
    T* ws = scratch.for_thread(thread_id());
    // Later query blocks see more keys: dynamic scheduling evens the causal triangle out.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; t++) fn(a, t, ws);
  }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const float* lse, const int32_t* q_pos, const int32_t* k_pos,
                        const uint8_t* k_valid, const AttentionShape& s, T scale) {
  if (s.B <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0) return;
  Args<T> a = make_args(q, k, v, q_pos, k_pos, k_valid, s, scale);
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.dout = dout;
  a.lse_in = lse;
  const TaskSet<T> fns = pick_tasks<T>();
  const int64_t nrows = (int64_t)s.B * s.H * s.Tq;
  std::vector<T> D((size_t)nrows);  // (B, H, Tq)
  a.D = D.data();
  const int nthreads = get_num_threads();
  Scratch<T> scratch(nthreads, scratch_elems(s.d));
  const int nq_tasks = s.B * s.H * a.nqb;
  const int nkv_tasks = s.B * s.Hkv * a.nkb;
  T* Dp = D.data();
#pragma omp parallel num_threads(nthreads)
  {
    T* ws = scratch.for_thread(thread_id());
    // D_i = <dout_i, out_i>, one writer per element.
#pragma omp for schedule(static)
    for (int64_t r = 0; r < nrows; r++) {
      const int64_t i = r % s.Tq, h = (r / s.Tq) % s.H, b = r / s.Tq / s.H;
      const int64_t off = ((b * s.Tq + i) * s.H + h) * s.d;
      T acc = 0;
      for (int p = 0; p < s.d; p++) acc += dout[off + p] * out[off + p];
      Dp[r] = acc;
    }
    // (implicit barrier: D is complete)
#pragma omp for schedule(dynamic, 1) nowait
    for (int t = 0; t < nq_tasks; t++) fns.bwd_q(a, t, ws);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nkv_tasks; t++) fns.bwd_kv(a, t, ws);
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       const int32_t*, const int32_t*, const uint8_t*,
                                       const AttentionShape&, float);
template void attention_forward<double>(double*, float*, const double*, const double*, const double*,
                                        const int32_t*, const int32_t*, const uint8_t*,
                                        const AttentionShape&, double);
template void attention_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, const float*,
                                        const int32_t*, const int32_t*, const uint8_t*,
                                        const AttentionShape&, float);
template void attention_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, const float*,
                                         const int32_t*, const int32_t*, const uint8_t*,
                                         const AttentionShape&, double);

}  // namespace qs::cpu
