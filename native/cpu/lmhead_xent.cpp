/*
 * lmhead_xent.cpp: LM head fused with softmax cross-entropy on the CPU (see lmhead_xent.h).
 *
 *   logits[n, v] = h[n,:] · W[v,:]        loss[n] = lse[n] - logits[n, target[n]]
 *
 * The (N, V) logits never exist. Rows that are not ignored are taken in blocks of up to
 * kRowBlock = 256 and the vocabulary in chunks of `chunk` columns (chunk <= 0 means 4096;
 * chunk > V means V), and for each (row block, chunk):
 *
 *   forward:   Z = h_blk · W_chunkᵀ                       (rows, chunk)  one gemm
 *              per row: m' = max(m, max Z); l = l e^(m - m') + Σ e^(Z - m'); m = m'
 *              the target's logit is read from the chunk that holds it
 *              at the end: lse = m + log l, loss = lse - logit[target]
 *   backward:  Z = h_blk · W_chunkᵀ again                 (rows, chunk)  one gemm
 *              dZ = (e^(Z - lse) - onehot(target)) · dloss[n]   in place
 *              dh_blk += dZ · W_chunk                     (rows, C)      one gemm
 *              dW_chunk += dZᵀ · h_blk                    (chunk, C)     one gemm
 *
 * so scratch is one (rows, chunk) block plus, only when the block's rows are not contiguous
 * in h, a gathered (rows, C) copy of h and a (rows, C) dh accumulator.
 *
 * Ignored rows (target == ignore_index) are dropped before the blocks are formed: they cost
 * nothing, get loss = 0 and lse = 0 (not their log-sum-exp), and receive no gradient.
 *
 * Determinism: the blocks and chunks are visited in a fixed order that depends only on the
 * targets and sizes; gemm is deterministic for fixed sizes; the per-row softmax work is
 * parallel over rows, each row's reductions in a fixed order. So results are bit-identical
 * for any thread count. Every gemm parallelises over the shared OpenMP pool by itself.
 *
 * exp: float uses vec_math.h's Cephes-style polynomial on SIMD vectors (≈1e-7 relative, 0
 * below -87), double uses std::exp. As in attention.cpp the vector code is written with GCC
 * vector extensions and compiled for SSE2 (baseline), AVX2+FMA and AVX-512, chosen by CPUID
 * at run time (isa.h; QS_CPU_SIMD=generic|avx2 caps the choice, for tests). lse is float by
 * contract, so the double backward's probabilities carry a relative error of ~1e-7·|lse|.
 */
#include "cpu/lmhead_xent.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/vec_math.h"

namespace qs::cpu {
namespace {

constexpr int kRowBlock = 256;       // rows per block: big enough for efficient gemms
constexpr int kDefaultChunk = 4096;  // vocabulary columns per chunk when chunk <= 0

// VB-byte vectors of T, loads/stores and exp: vec_math.h, as in attention.cpp.
using vec::Simd;

// ---------------------------------------------------------------------------------------------
// Per-row work on one chunk of logits

// Online softmax statistics: folds the n logits x into the row's running (m, l).
template <typename T, int VB>
QS_INLINE void row_stats(const T* x, int n, T* m, T* l) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  // max, lane-wise then across lanes (order fixed by the ISA, not by threads)
  V vm = S::splat(ninf);
  int j = 0;
  for (; j + L <= n; j += L) {
    V a = S::load(x + j);
    vm = a > vm ? a : vm;
  }
  if (j < n) {
    V a = S::load_part(x + j, n - j, ninf);
    vm = a > vm ? a : vm;
  }
  T mx = ninf;
  for (int i = 0; i < L; i++) mx = vm[i] > mx ? vm[i] : mx;
  const T mnew = std::max(*m, mx);
  if (mnew == ninf) return;  // nothing finite yet (only with -inf logits)
  // Σ exp(x - m'), lane-wise partial sums added in lane order
  const V mv = S::splat(mnew);
  V vs = V{};
  for (j = 0; j + L <= n; j += L) {
    V p = S::load(x + j) - mv;
    S::exp_inplace(p);
    vs += p;
  }
  if (j < n) {
    V p = S::load_part(x + j, n - j, ninf) - mv;
    S::exp_inplace(p);
    vs += p;
  }
  T sum = 0;
  for (int i = 0; i < L; i++) sum += vs[i];
  const T corr = *m == ninf ? T(0) : (T)std::exp(*m - mnew);
  *l = *l * corr + sum;
  *m = mnew;
}

// dlogits in place: x = exp(x - lse) · g (the one-hot part is subtracted by the caller).
template <typename T, int VB>
QS_INLINE void row_grad(T* x, int n, T lse, T g) {
  typedef Simd<T, VB> S;
  typedef typename S::V V;
  constexpr int L = S::L;
  const V lv = S::splat(lse), gv = S::splat(g);
  int j = 0;
  for (; j + L <= n; j += L) {
    V p = S::load(x + j) - lv;
    S::exp_inplace(p);
    S::store(x + j, p * gv);
  }
  if (j < n) {
    V p = S::load_part(x + j, n - j, T(0)) - lv;
    S::exp_inplace(p);
    S::store_part(x + j, n - j, p * gv);
  }
}

template <typename T>
struct RowFns {
  void (*stats)(const T*, int, T*, T*);
  void (*grad)(T*, int, T, T);
};

template <typename T> void stats_generic(const T* x, int n, T* m, T* l) { row_stats<T, 16>(x, n, m, l); }
template <typename T> void grad_generic(T* x, int n, T lse, T g) { row_grad<T, 16>(x, n, lse, g); }
#if QS_X86
template <typename T> QS_TARGET_AVX2 void stats_avx2(const T* x, int n, T* m, T* l) { row_stats<T, 32>(x, n, m, l); }
template <typename T> QS_TARGET_AVX2 void grad_avx2(T* x, int n, T lse, T g) { row_grad<T, 32>(x, n, lse, g); }
template <typename T> QS_TARGET_AVX512 void stats_avx512(const T* x, int n, T* m, T* l) { row_stats<T, 64>(x, n, m, l); }
template <typename T> QS_TARGET_AVX512 void grad_avx512(T* x, int n, T lse, T g) { row_grad<T, 64>(x, n, lse, g); }
#endif

template <typename T>
RowFns<T> pick_row_fns() {
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: return {stats_avx512<T>, grad_avx512<T>};
    case kIsaAvx2: return {stats_avx2<T>, grad_avx2<T>};
    default: break;
  }
#endif
  return {stats_generic<T>, grad_generic<T>};
}

// ---------------------------------------------------------------------------------------------
// Row blocks

inline int effective_chunk(int chunk, int V) { return std::min(chunk <= 0 ? kDefaultChunk : chunk, V); }

// The rows that are not ignored, in order.
inline std::vector<int> active_rows(const int32_t* targets, int N, int ignore_index) {
  std::vector<int> rows;
  rows.reserve(N);
  for (int n = 0; n < N; n++)
    if (targets[n] != ignore_index) rows.push_back(n);
  return rows;
}

// h rows of a block: h itself when the rows are consecutive, else gathered into hb (rb, C).
template <typename T>
const T* block_rows(const T* h, const int* idx, int rb, int C, T* hb, bool& contiguous) {
  contiguous = idx[rb - 1] - idx[0] == rb - 1;  // idx is increasing
  if (contiguous) return h + (int64_t)idx[0] * C;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rb; r++) std::memcpy(hb + (int64_t)r * C, h + (int64_t)idx[r] * C, sizeof(T) * C);
  return hb;
}

// Z (rb, nc), rows ldz apart, = hp (rb, C) · W[v0 : v0 + nc]ᵀ
template <typename T>
void chunk_logits(T* Z, int ldz, const T* hp, const T* W, int rb, int nc, int C, int v0) {
  if (C <= 0) {
    for (int r = 0; r < rb; r++) std::fill(Z + (int64_t)r * ldz, Z + (int64_t)r * ldz + nc, T(0));
    return;
  }
  gemm<T>(false, true, rb, nc, C, T(1), hp, C, W + (int64_t)v0 * C, C, T(0), Z, ldz);
}

// dh[idx[r]] += src[r] for r < rb: a gathered block's dh back to its rows.
template <typename T>
void scatter_add_rows(T* dh, const int* idx, int rb, int C, const T* src) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rb; r++) {
    T* dst = dh + (int64_t)idx[r] * C;
    const T* s = src + (int64_t)r * C;
    for (int c = 0; c < C; c++) dst[c] += s[c];
  }
}

// Both forwards: per block of rows, each chunk's logits into Z, folded into the rows' running
// (m, l) and target logit; then lse and loss. Z is a (rows, chunk) scratch, or with G the
// block's rows of G (rows, V), turned at the end into the unit gradient softmax - onehot.
template <typename T>
void forward_blocks(T* losses, float* lse, T* G, const T* h, const T* W, const int32_t* targets, int N, int C, int V,
                    int ignore_index, int chunk) {
  if (N <= 0) return;
  for (int n = 0; n < N; n++) {  // ignored rows (and every row if V = 0)
    losses[n] = 0;
    lse[n] = 0;
  }
  if (V <= 0) return;
  const int nchunk = effective_chunk(chunk, V);
  const std::vector<int> rows = active_rows(targets, N, ignore_index);
  const int nrows = (int)rows.size();
  if (nrows == 0) return;
  const RowFns<T> fns = pick_row_fns<T>();
  const int RB = std::min(kRowBlock, nrows);
  std::vector<T> Zbuf(G ? 0 : (size_t)RB * nchunk);  // (RB, chunk)  logits of one block and chunk, without G
  std::vector<T> hbuf;                               // (RB, C)      gathered h rows, when needed
  std::vector<T> m(RB), l(RB), zt(RB);               // (RB)         running max, sum, target logit
  T* mp = m.data();
  T* lp = l.data();
  T* zp = zt.data();

  for (int start = 0; start < nrows; start += RB) {
    const int rb = std::min(RB, nrows - start);
    const int* idx = rows.data() + start;
    bool contiguous;
    if (idx[rb - 1] - idx[0] != rb - 1 && hbuf.empty()) hbuf.resize((size_t)RB * C);
    const T* hp = block_rows(h, idx, rb, C, hbuf.data(), contiguous);
    for (int r = 0; r < rb; r++) {
      mp[r] = -std::numeric_limits<T>::infinity();
      lp[r] = 0;
      zp[r] = 0;
    }
    for (int v0 = 0; v0 < V; v0 += nchunk) {
      const int nc = std::min(nchunk, V - v0), ldz = G ? V : nc;
      T* Z = G ? G + (int64_t)start * V + v0 : Zbuf.data();
      chunk_logits(Z, ldz, hp, W, rb, nc, C, v0);  // (rb, nc)
#pragma omp parallel for schedule(static)
      for (int r = 0; r < rb; r++) {
        const T* z = Z + (int64_t)r * ldz;
        fns.stats(z, nc, mp + r, lp + r);
        const int t = targets[idx[r]];
        if (t >= v0 && t < v0 + nc) zp[r] = z[t - v0];
      }
    }
    // Serial without G: a few flops per row are not worth a parallel region.
#pragma omp parallel for schedule(static) if (G)
    for (int r = 0; r < rb; r++) {
      const T ls = mp[r] + std::log(lp[r]);
      lse[idx[r]] = (float)ls;
      losses[idx[r]] = ls - zp[r];
      if (!G) continue;
      // G = softmax - onehot, the softmax from the float lse exactly as the recomputing backward forms it
      T* z = G + (int64_t)(start + r) * V;
      fns.grad(z, V, (T)lse[idx[r]], T(1));
      z[targets[idx[r]]] -= T(1);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <typename T>
void lmhead_xent_forward(T* losses, float* lse, const T* h, const T* W, const int32_t* targets, int N,
                         int C, int V, int ignore_index, int chunk) {
  forward_blocks<T>(losses, lse, nullptr, h, W, targets, N, C, V, ignore_index, chunk);
}

template <typename T>
void lmhead_xent_backward(T* dh, T* dW, const T* dlosses, const T* h, const T* W, const int32_t* targets,
                          const float* lse, int N, int C, int V, int ignore_index, int chunk) {
  if (N <= 0 || V <= 0 || C <= 0 || (!dh && !dW)) return;
  const int nchunk = effective_chunk(chunk, V);
  const std::vector<int> rows = active_rows(targets, N, ignore_index);
  const int nrows = (int)rows.size();
  if (nrows == 0) return;
  const RowFns<T> fns = pick_row_fns<T>();
  const int RB = std::min(kRowBlock, nrows);
  std::vector<T> Zbuf((size_t)RB * nchunk);  // (RB, chunk)  logits, then dlogits, of a block
  std::vector<T> hbuf, dhbuf;                // (RB, C)      gathered h rows / their dh, if needed
  T* Z = Zbuf.data();

  for (int start = 0; start < nrows; start += RB) {
    const int rb = std::min(RB, nrows - start);
    const int* idx = rows.data() + start;
    bool contiguous;
    if (idx[rb - 1] - idx[0] != rb - 1 && hbuf.empty()) {
      hbuf.resize((size_t)RB * C);
      if (dh) dhbuf.resize((size_t)RB * C);
    }
    const T* hp = block_rows(h, idx, rb, C, hbuf.data(), contiguous);
    // Contiguous rows accumulate straight into dh; gathered ones into dhbuf, scattered below.
    T* dhp = dh ? (contiguous ? dh + (int64_t)idx[0] * C : dhbuf.data()) : nullptr;

    for (int v0 = 0; v0 < V; v0 += nchunk) {
      const int nc = std::min(nchunk, V - v0);
      chunk_logits(Z, nc, hp, W, rb, nc, C, v0);  // (rb, nc)
#pragma omp parallel for schedule(static)
      for (int r = 0; r < rb; r++) {
        T* z = Z + (int64_t)r * nc;
        const int n = idx[r];
        const T g = dlosses[n];
        fns.grad(z, nc, (T)lse[n], g);
        const int t = targets[n];
        if (t >= v0 && t < v0 + nc) z[t - v0] -= g;
      }
      // dh_blk (rb, C) (+)= dZ (rb, nc) · W_chunk (nc, C); a gathered block starts from 0
      if (dhp) {
        const T beta = contiguous || v0 > 0 ? T(1) : T(0);
        gemm<T>(false, false, rb, C, nc, T(1), Z, nc, W + (int64_t)v0 * C, C, beta, dhp, C);
      }
      // dW_chunk (nc, C) += dZᵀ (nc, rb) · h_blk (rb, C)
      if (dW) gemm<T>(true, false, nc, C, rb, T(1), Z, nc, hp, C, T(1), dW + (int64_t)v0 * C, C);
    }
    if (dh && !contiguous) scatter_add_rows(dh, idx, rb, C, dhbuf.data());
  }
}

// ---------------------------------------------------------------------------------------------
// Training variant: keep the unit gradient instead of recomputing the logits (see the header)

template <typename T>
void lmhead_xent_forward_keep(T* losses, float* lse, T* G, const T* h, const T* W, const int32_t* targets, int N, int C,
                              int V, int ignore_index, int chunk) {
  forward_blocks<T>(losses, lse, G, h, W, targets, N, C, V, ignore_index, chunk);
}

template <typename T>
void lmhead_xent_backward_kept(T* dh, T* dW, T g, const T* G, const T* h, const T* W, const int32_t* targets, int N,
                               int C, int V, int ignore_index) {
  if (N <= 0 || V <= 0 || C <= 0 || (!dh && !dW)) return;
  const std::vector<int> rows = active_rows(targets, N, ignore_index);
  const int nrows = (int)rows.size();
  if (nrows == 0) return;
  // The counted rows of h (gathered when they are not consecutive); their dh likewise.
  std::vector<T> hbuf, dhbuf;
  bool contiguous = rows[nrows - 1] - rows[0] == nrows - 1;
  if (!contiguous) hbuf.resize((size_t)nrows * C);
  const T* hp = block_rows(h, rows.data(), nrows, C, hbuf.data(), contiguous);
  if (dh) {
    // dh (+)= g · G (nrows, V) · W (V, C): one gemm over the whole vocabulary
    T* dhp = contiguous ? dh + (int64_t)rows[0] * C : (dhbuf.resize((size_t)nrows * C), dhbuf.data());
    gemm<T>(false, false, nrows, C, V, g, G, V, W, C, contiguous ? T(1) : T(0), dhp, C);
    if (!contiguous) scatter_add_rows(dh, rows.data(), nrows, C, dhp);
  }
  // dW (V, C) += g · Gᵀ (V, nrows) · h (nrows, C): every row at once, so dW is read and written once
  if (dW) gemm<T>(true, false, V, C, nrows, g, G, V, hp, C, T(1), dW, C);
}

template void lmhead_xent_forward_keep<float>(float*, float*, float*, const float*, const float*, const int32_t*, int,
                                              int, int, int, int);
template void lmhead_xent_forward_keep<double>(double*, float*, double*, const double*, const double*, const int32_t*,
                                               int, int, int, int, int);
template void lmhead_xent_backward_kept<float>(float*, float*, float, const float*, const float*, const float*,
                                               const int32_t*, int, int, int, int);
template void lmhead_xent_backward_kept<double>(double*, double*, double, const double*, const double*, const double*,
                                                const int32_t*, int, int, int, int);

template void lmhead_xent_forward<float>(float*, float*, const float*, const float*, const int32_t*, int, int,
                                         int, int, int);
template void lmhead_xent_forward<double>(double*, float*, const double*, const double*, const int32_t*, int,
                                          int, int, int, int);
template void lmhead_xent_backward<float>(float*, float*, const float*, const float*, const float*,
                                          const int32_t*, const float*, int, int, int, int, int);
template void lmhead_xent_backward<double>(double*, double*, const double*, const double*, const double*,
                                           const int32_t*, const float*, int, int, int, int, int);

}  // namespace qs::cpu
