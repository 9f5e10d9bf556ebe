// attention_tile.cuh: the flash-style f32 tile kernels shared by attention.cu (plain causal
// attention, cpu/attention.h) and thought_attention.cu (Quiet-STaR's chain queries,
// cpu/thought_attention.h).
//
// Why one set of kernels serves both: a chain query (row r, step s, position i, head h) sees the
// base keys j of its document with valid[b, j], j <= i and i - j < window, which is exactly plain
// attention with query position i, key position j and key validity valid[b, :]. What differs is
// which query rows a block takes (RowInfo below) and, for thought attention, an epilogue over
// the at most S private chain keys of each row. The kernels' MODE says which: kPlain
// (attention), kThought, or kMasked, a dense reference whose visibility is a materialised
// (B, Tq, Tk) mask (the reference implementation's method, for the benchmark; no tile skipped).
//
// Rows of a block (BQ of them, a "query tile"):
//   attention, masked:  block (b, h, tile): queries i = tile·BQ + r of head h
//   thought:            block (b, kv head hk, tile): gathered rows n = tile·BQ + r of
//             the document's queries in the CPU's order n = ((i·P + p)·Sq + sq)·G + g, so a
//             block reads its span of base K/V once for every row, step and head of the group
//             (cpu/thought_attention.cpp, "Gathering").
// Keys come in tiles of BK through shared memory. Tiles no (query, key) pair of which can be
// visible (from the rows' min/max position and the tile's valid keys' min/max position) are
// skipped, so causal attention does about half the work of dense. Invalid keys are loaded as
// zero rows: garbage (even NaN) in unused cache slots never reaches a result.
//
// Kernels (256 threads as a 16 x 16 grid; thread (ty, tx) owns tile rows ty·RM + r and columns
// tx + 16·c, so the 16 threads of a row group are one half-warp and row reductions are 4
// xor-shuffles):
//   fwd_kernel   online softmax over key tiles: S = Q Kᵀ, m' = max(m, rowmax S),
//                P = e^(S - m'), l = l e^(m - m') + Σ P, O = O e^(m - m') + P V; then (thought)
//                the chain keys folded into the same (m, l, O); out = O / l, lse = m + log l.
//   dq_kernel    per query tile over key tiles: P = e^(scale S - lse), dP = dO Vᵀ,
//                dS = P (dP - D), dQ += dS K (then the chain keys); dq += scale dQ.
//   dkdv_kernel  per (b, kv head, key tile) over every query tile of every head of the GQA
//                group (thought: every gathered tile of the document: all rows p, steps, heads)
//                in a fixed order: dV += Pᵀ dO, dK += dSᵀ Q; it is the only writer of its rows.
//   d_kernel     D = rowsum(dout ∘ out), one warp per row, into the caller's scratch.
// No float atomics anywhere: every sum has a fixed order, results are bit-reproducible.
//
// Head dimension: the kernels are compiled for padded widths DP in {16, 32, 64, 80, 128}; a
// call with d <= DP zero-pads (zero columns add nothing). Tile sizes keep shared memory under
// 99 KiB (sm_86/89's opt-in limit; sm_80/90 allow more), see TileConfig.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>

#include <cuda_runtime.h>
#include <math_constants.h>

#include "cuda/common.cuh"

namespace qs::cuda::attn {

constexpr int kThreads = 256;  // 16 x 16

// What decides visibility (the kernels' MODE):
constexpr int kPlain = 0;    // attention: positions, key validity, window (cpu/attention.h)
constexpr int kThought = 1;  // thought attention: gathered chain rows + chain epilogue
constexpr int kMasked = 2;   // dense reference: mask[b, i, j] (and key validity), no tile skipped

// Everything a kernel may read or write; unused pointers are null.
struct Params {
  // query side
  const float* q;       // attention (B, Tq, H, d); thought (R, Sq, T, H, d)
  float* out;           // like q
  float* lse;           // attention (B, H, Tq); thought (R, Sq, T, H)
  const float* o;       // backward: the forward's out, like q
  const float* dout;    // backward: like q
  const float* lse_in;  // backward: like lse
  float* D;             // backward scratch: rowsum(dout ∘ out), indexed like lse
  float* dq;            // like q (+=), or null
  // key side
  const float* k;       // (B, Tk, Hkv, d)
  const float* v;       // (B, Tk, Hkv, d)
  float* dk;            // like k (+=), or null
  float* dv;            // like v (+=), or null
  const int32_t* q_pos;    // attention (B, Tq); null for thought (the position is i)
  const int32_t* k_pos;    // attention (B, Tk); null for thought (the position is j)
  const uint8_t* k_valid;  // (B, Tk) or null (all valid); thought: valid (B, T)
  const uint8_t* mask;     // kMasked: (B, Tq, Tk), 1 = visible
  int B, Tq, Tk, H, Hkv, G, d, window;  // thought: Tq = Tk = T
  float scale;
  // thought attention only
  int P, Sq, s_first, Sk, M;  // M = P·Sq·G gathered rows per position
  const float* kc;            // (R, Sk, T, Hkv, d)
  const float* vc;            // (R, Sk, T, Hkv, d)
  float* dkc;                 // like kc (+=), or null
  float* dvc;                 // like vc (+=), or null
  // query tiles per (b, h) (attention) or per (b, hk) (thought)
  int nqt;
  // dK/dV split over query tiles (kv_splits > 1): partials (kv_splits, B, Tk, Hkv, d) each,
  // summed in split order by kv_reduce_kernel
  int kv_splits;
  float* dk_part;
  float* dv_part;
};

// One row of a query tile.
struct RowInfo {
  int64_t q;   // element offset of its vector in q / out / dout / dq; -1: padding row
  int64_t l;   // index into lse / D
  int64_t kc;  // thought: offset of chain key (r, step 1, i, hk); step s' at kc + (s'-1)·T·Hkv·d
  int pos;     // position (q_pos, or i)
  int nc;      // thought: chain keys it sees (its step s when valid[b, i], else 0); 0 for padding
};

// Key j at position kp is visible from a query at qp: kp <= qp and, with a window,
// qp - kp < window (unsigned difference: exact whenever kp <= qp, never overflows).
__device__ __forceinline__ bool visible(int qp, int kp, int window) {
  return kp <= qp && (window <= 0 || (uint32_t)qp - (uint32_t)kp < (uint32_t)window);
}

// Can a key with position in [kmin, kmax] be visible from a query in [qmin, qmax]?
__device__ __forceinline__ bool ranges_may_see(int qmin, int qmax, int kmin, int kmax, int window) {
  if (kmin > qmax) return false;
  if (window > 0 && (int64_t)qmin - (int64_t)kmax >= (int64_t)window) return false;
  return true;
}

// Reductions over the 16 lanes of a half-warp (a row group); every lane of the warp must call.
__device__ __forceinline__ float sum16(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float max16(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Warp 0 only: out[0] = min, out[1] = max of val(i) over i < n with ok(i); out[2] = whether any.
template <typename Ok, typename Val>
__device__ __forceinline__ void warp0_range(int n, Ok ok, Val val, int* out) {
  if (threadIdx.x >= 32) return;
  int mn = INT_MAX, mx = INT_MIN, any = 0;
  for (int i = threadIdx.x; i < n; i += 32) {
    if (ok(i)) {
      const int v = val(i);
      mn = min(mn, v), mx = max(mx, v), any = 1;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    any |= __shfl_xor_sync(0xffffffffu, any, o);
  }
  if (threadIdx.x == 0) out[0] = mn, out[1] = mx, out[2] = any;
}

// dst (N, DP) with row stride ld = src + off(r) columns 0..d-1, zero where off(r) < 0 or
// column >= d. Consecutive threads take consecutive columns of a row: the loads coalesce.
template <int N, int DP, typename Off>
__device__ __forceinline__ void load_tile(float* dst, int ld, const float* src, int d, Off off) {
  for (int e = threadIdx.x; e < N * DP; e += kThreads) {
    const int r = e / DP, c = e % DP;
    const int64_t o = off(r);
    dst[r * ld + c] = o >= 0 && c < d ? src[o + c] : 0.f;
  }
}

// acc[r][c] += Σ_{k<K} A[(ty·RM + r)·lda + k] · B[(tx + 16c)·ldb + k]     (A Bᵀ, both row-major)
// Reads 4 consecutive k as one float4 (K, lda, ldb multiples of 4, rows 16-byte aligned): the
// shared-memory instruction count, this product's limit, drops 4x. Strides of DP + 4 floats
// put the 8 rows of each quarter-warp's float4 reads on distinct banks (DP + 4 = 4 or 20 mod 32).
template <int RM, int CM, int K>
__device__ __forceinline__ void prod_nt(float (&acc)[RM][CM], const float* A, int lda, const float* B, int ldb,
                                        int ty, int tx) {
  static_assert(K % 4 == 0, "depth must be a multiple of 4");
#pragma unroll 2
  for (int k = 0; k < K; k += 4) {
    float4 a[RM], b[CM];
#pragma unroll
    for (int r = 0; r < RM; r++) a[r] = *reinterpret_cast<const float4*>(A + (ty * RM + r) * lda + k);
#pragma unroll
    for (int c = 0; c < CM; c++) b[c] = *reinterpret_cast<const float4*>(B + (tx + 16 * c) * ldb + k);
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CM; c++) {
        float x = fmaf(a[r].x, b[c].x, acc[r][c]);
        x = fmaf(a[r].y, b[c].y, x);
        x = fmaf(a[r].z, b[c].z, x);
        acc[r][c] = fmaf(a[r].w, b[c].w, x);
      }
  }
}

// acc[r][c] += Σ_{j<K} A[(ty·RM + r)·lda + j] · B[j·ldb + tx + 16c]     (A B)
template <int RM, int NC, int K>
__device__ __forceinline__ void prod_nn(float (&acc)[RM][NC], const float* A, int lda, const float* B, int ldb,
                                        int ty, int tx) {
#pragma unroll 4
  for (int j = 0; j < K; j++) {
    float a[RM], b[NC];
#pragma unroll
    for (int r = 0; r < RM; r++) a[r] = A[(ty * RM + r) * lda + j];
#pragma unroll
    for (int c = 0; c < NC; c++) b[c] = B[j * ldb + tx + 16 * c];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < NC; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

// Fills rows[0..BQ) for query tile `tile` of (b, head): head is the query head h (attention) or
// the kv head hk (thought). Padding rows get q = -1, nc = 0.
template <bool THOUGHT>
__device__ __forceinline__ void setup_rows(const Params& p, int b, int head, int tile, int BQ, RowInfo* rows) {
  for (int r = threadIdx.x; r < BQ; r += kThreads) {
    RowInfo w;
    w.q = -1, w.l = 0, w.kc = 0, w.pos = 0, w.nc = 0;
    if (!THOUGHT) {
      const int i = tile * BQ + r;
      if (i < p.Tq) {
        w.q = (((int64_t)b * p.Tq + i) * p.H + head) * p.d;
        w.l = ((int64_t)b * p.H + head) * p.Tq + i;
        w.pos = p.q_pos ? p.q_pos[(int64_t)b * p.Tq + i] : i;  // kMasked: the row index i
      }
    } else {
      const int64_t gn = (int64_t)tile * BQ + r;
      if (gn < (int64_t)p.Tq * p.M) {
        const int i = (int)(gn / p.M);
        int rem = (int)(gn % p.M);
        const int g = rem % p.G;
        rem /= p.G;
        const int sq = rem % p.Sq, pp = rem / p.Sq;
        const int64_t rr = (int64_t)b * p.P + pp, h = (int64_t)head * p.G + g;
        const int64_t qrow = (rr * p.Sq + sq) * p.Tq + i;  // (r, sq, i)
        w.l = qrow * p.H + h;
        w.q = w.l * p.d;
        w.pos = i;
        w.kc = ((rr * p.Sk) * p.Tq + i) * (int64_t)p.Hkv * p.d + (int64_t)head * p.d;
        const bool vi = !p.k_valid || p.k_valid[(int64_t)b * p.Tq + i];
        w.nc = vi ? p.s_first + sq : 0;
      }
    }
    rows[r] = w;
  }
}

// Key tile j0 .. j0 + BK - 1 of batch row b: kpos (position, 0 when unusable), kok (1 for a valid
// key that exists).
__device__ __forceinline__ void setup_keys(const Params& p, int b, int j0, int BK, int* kpos, int* kok) {
  for (int j = threadIdx.x; j < BK; j += kThreads) {
    const int gj = j0 + j;
    const bool ok = gj < p.Tk && (!p.k_valid || p.k_valid[(int64_t)b * p.Tk + gj]);
    kok[j] = ok;
    kpos[j] = ok ? (p.k_pos ? p.k_pos[(int64_t)b * p.Tk + gj] : gj) : 0;
  }
}

// Tile shapes per padded head width, chosen so each kernel's shared memory stays <= ~83 KiB.
template <int DP>
struct TileConfig {
  static constexpr int kFwdQ = 64, kFwdK = DP > 64 ? 32 : 64;
  static constexpr int kDqQ = DP > 64 ? 32 : 64, kDqK = DP > 64 ? 32 : 64;
  static constexpr int kKvK = DP > 64 ? 32 : 64, kKvQ = 32;
  static constexpr int kLd = DP + 4;  // multiple of 4: float4 rows (prod_nt)
  static constexpr size_t fwd_smem() { return sizeof(float) * ((kFwdQ + 2 * kFwdK) * kLd + kFwdQ * (kFwdK + 1)); }
  static constexpr size_t dq_smem() { return sizeof(float) * (2 * (kDqQ + kDqK) * kLd + kDqQ * (kDqK + 1)); }
  static constexpr size_t kv_smem() { return sizeof(float) * (2 * (kKvK + kKvQ) * kLd + 2 * kKvK * (kKvQ + 1)); }
};

// ---------------------------------------------------------------------------------------------
// Forward. Grid (heads·B, query tiles): blockIdx.x = b·heads + head, blockIdx.y counts tiles from
// the last, so the heaviest (latest) causal tiles start first.

template <int DP, int BQ, int BK, int MODE>
__global__ void __launch_bounds__(kThreads) fwd_kernel(Params p) {
  constexpr bool THOUGHT = MODE == kThought, MASKED = MODE == kMasked;
  constexpr int RM = BQ / 16, CM = BK / 16, NC = DP / 16, LD = DP + 4, LP = BK + 1;
  extern __shared__ __align__(16) float smem[];
  float* Qs = smem;          // (BQ, LD)
  float* Ks = Qs + BQ * LD;  // (BK, LD)
  float* Vs = Ks + BK * LD;  // (BK, LD)
  float* Ps = Vs + BK * LD;  // (BQ, LP)  probabilities of the tile
  __shared__ RowInfo rows[BQ];
  __shared__ int kpos[BK], kok[BK];
  __shared__ int qrange[3], krange[3];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int heads = THOUGHT ? p.Hkv : p.H;
  const int b = blockIdx.x / heads, head = blockIdx.x % heads;
  const int hk = THOUGHT ? head : head / p.G;
  const int tile = p.nqt - 1 - blockIdx.y;
  const int d = p.d;
  const float ninf = -CUDART_INF_F;

  setup_rows<THOUGHT>(p, b, head, tile, BQ, rows);
  __syncthreads();
  warp0_range(BQ, [&](int r) { return rows[r].q >= 0; }, [&](int r) { return rows[r].pos; }, qrange);
  load_tile<BQ, DP>(Qs, LD, p.q, d, [&](int r) { return rows[r].q; });

  float m[RM], l[RM], o[RM][NC];
#pragma unroll
  for (int r = 0; r < RM; r++) {
    m[r] = ninf, l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) o[r][c] = 0.f;
  }
  const int64_t kstride = (int64_t)p.Hkv * d;
  const float* kb = p.k + (int64_t)b * p.Tk * kstride + (int64_t)hk * d;
  const float* vb = p.v + (int64_t)b * p.Tk * kstride + (int64_t)hk * d;
  const int nkt = (p.Tk + BK - 1) / BK;
  for (int kt = 0; kt < nkt; kt++) {
    const int j0 = kt * BK;
    setup_keys(p, b, j0, BK, kpos, kok);
    __syncthreads();
    warp0_range(BK, [&](int j) { return kok[j] != 0; }, [&](int j) { return kpos[j]; }, krange);
    __syncthreads();
    if (!qrange[2] || !krange[2]) continue;
    if (!MASKED && !ranges_may_see(qrange[0], qrange[1], krange[0], krange[1], p.window)) continue;
    load_tile<BK, DP>(Ks, LD, kb, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });
    load_tile<BK, DP>(Vs, LD, vb, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });
    __syncthreads();

    float s[RM][CM];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CM; c++) s[r][c] = 0.f;
    prod_nt<RM, CM, DP>(s, Qs, LD, Ks, LD, ty, tx);

#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int row = ty * RM + r;
      const RowInfo& w = rows[row];
      float mt = ninf;
#pragma unroll
      for (int c = 0; c < CM; c++) {
        const int col = tx + 16 * c;
        const bool vis = w.q >= 0 && kok[col] &&
                         (MASKED ? p.mask[((int64_t)b * p.Tq + w.pos) * p.Tk + j0 + col] != 0
                                 : visible(w.pos, kpos[col], p.window));
        s[r][c] = vis ? s[r][c] * p.scale : ninf;
        mt = fmaxf(mt, s[r][c]);
      }
      mt = max16(mt);
      const float mnew = fmaxf(m[r], mt);
      // Rows that have seen nothing yet keep m = -inf; subtract 0 for them (no -inf - -inf).
      const float msafe = mnew == ninf ? 0.f : mnew;
      const float corr = expf(m[r] - msafe);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < CM; c++) {
        const float pv = expf(s[r][c] - msafe);
        Ps[row * LP + tx + 16 * c] = pv;
        sum += pv;
      }
      sum = sum16(sum);
      l[r] = l[r] * corr + sum;
      m[r] = mnew;
#pragma unroll
      for (int c = 0; c < NC; c++) o[r][c] *= corr;
    }
    __syncthreads();
    prod_nn<RM, NC, BK>(o, Ps, LP, Vs, LD, ty, tx);
    __syncthreads();  // Ks, Vs, Ps, kpos are rewritten by the next tile
  }

  if (THOUGHT) {
    // Chain epilogue: row (r, s, i) also sees chain keys (r, s', i), s' <= s (when valid[b, i]).
    // Every lane runs the same trip count (the shuffles need the whole warp); inactive rows
    // contribute nothing.
    const int smax = p.s_first + p.Sq - 1;
    const int64_t cstep = (int64_t)p.Tq * p.Hkv * d;
#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int row = ty * RM + r;
      const RowInfo& w = rows[row];
      for (int t = 0; t < smax; t++) {
        const bool act = t < w.nc;
        float part = 0.f;
        if (act) {
#pragma unroll
          for (int c = 0; c < NC; c++) {
            const int col = tx + 16 * c;
            if (col < d) part = fmaf(Qs[row * LD + col], p.kc[w.kc + t * cstep + col], part);
          }
        }
        part = sum16(part);
        if (act) {
          const float sc = part * p.scale;
          const float mnew = fmaxf(m[r], sc);
          const float corr = expf(m[r] - mnew), pv = expf(sc - mnew);
          l[r] = l[r] * corr + pv;
          m[r] = mnew;
#pragma unroll
          for (int c = 0; c < NC; c++) {
            const int col = tx + 16 * c;
            const float vv = col < d ? p.vc[w.kc + t * cstep + col] : 0.f;
            o[r][c] = fmaf(pv, vv, o[r][c] * corr);
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; r++) {
    const RowInfo& w = rows[ty * RM + r];
    if (w.q < 0) continue;
    const bool seen = l[r] > 0.f;
    const float inv = seen ? 1.f / l[r] : 0.f;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int col = tx + 16 * c;
      if (col < d) p.out[w.q + col] = seen ? o[r][c] * inv : 0.f;
    }
    if (tx == 0) p.lse[w.l] = seen ? m[r] + logf(l[r]) : ninf;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: D = rowsum(dout ∘ out), one warp per lse-indexed row. Attention's lse is (B, H, Tq)
// while dout is (B, Tq, H, d); thought attention's rows are in the same order in both.

template <bool THOUGHT>
__global__ void d_kernel(Params p, int64_t nrows) {
  const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= nrows) return;  // whole warps leave together
  int64_t off;
  if (THOUGHT) {
    off = row * p.d;
  } else {
    const int64_t i = row % p.Tq, h = (row / p.Tq) % p.H, b = row / p.Tq / p.H;
    off = ((b * p.Tq + i) * p.H + h) * p.d;
  }
  float acc = 0.f;
  for (int c = lane; c < p.d; c += 32) acc = fmaf(p.dout[off + c], p.o[off + c], acc);
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) p.D[row] = acc;
}

// The row's lse for recomputing P: +inf for a row that saw nothing (so e^(x - lse) = 0).
__device__ __forceinline__ float lse_for_p(float lse) { return lse == -CUDART_INF_F ? CUDART_INF_F : lse; }

// dQ. Grid as the forward's.
template <int DP, int BQ, int BK, int MODE>
__global__ void __launch_bounds__(kThreads) dq_kernel(Params p) {
  constexpr bool THOUGHT = MODE == kThought, MASKED = MODE == kMasked;
  constexpr int RM = BQ / 16, CM = BK / 16, NC = DP / 16, LD = DP + 4, LP = BK + 1;
  extern __shared__ __align__(16) float smem[];
  float* Qs = smem;            // (BQ, LD)
  float* dOs = Qs + BQ * LD;   // (BQ, LD)
  float* Ks = dOs + BQ * LD;   // (BK, LD)
  float* Vs = Ks + BK * LD;    // (BK, LD)
  float* dSs = Vs + BK * LD;   // (BQ, LP)
  __shared__ RowInfo rows[BQ];
  __shared__ float lse_s[BQ], D_s[BQ];
  __shared__ int kpos[BK], kok[BK];
  __shared__ int qrange[3], krange[3];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int heads = THOUGHT ? p.Hkv : p.H;
  const int b = blockIdx.x / heads, head = blockIdx.x % heads;
  const int hk = THOUGHT ? head : head / p.G;
  const int tile = p.nqt - 1 - blockIdx.y;
  const int d = p.d;

  setup_rows<THOUGHT>(p, b, head, tile, BQ, rows);
  __syncthreads();
  for (int r = tid; r < BQ; r += kThreads) {
    lse_s[r] = rows[r].q >= 0 ? lse_for_p(p.lse_in[rows[r].l]) : CUDART_INF_F;
    D_s[r] = rows[r].q >= 0 ? p.D[rows[r].l] : 0.f;
  }
  warp0_range(BQ, [&](int r) { return rows[r].q >= 0; }, [&](int r) { return rows[r].pos; }, qrange);
  load_tile<BQ, DP>(Qs, LD, p.q, d, [&](int r) { return rows[r].q; });
  load_tile<BQ, DP>(dOs, LD, p.dout, d, [&](int r) { return rows[r].q; });

  float acc[RM][NC];
#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int c = 0; c < NC; c++) acc[r][c] = 0.f;
  const int64_t kstride = (int64_t)p.Hkv * d;
  const float* kb = p.k + (int64_t)b * p.Tk * kstride + (int64_t)hk * d;
  const float* vb = p.v + (int64_t)b * p.Tk * kstride + (int64_t)hk * d;
  const int nkt = (p.Tk + BK - 1) / BK;
  for (int kt = 0; kt < nkt; kt++) {
    const int j0 = kt * BK;
    setup_keys(p, b, j0, BK, kpos, kok);
    __syncthreads();
    warp0_range(BK, [&](int j) { return kok[j] != 0; }, [&](int j) { return kpos[j]; }, krange);
    __syncthreads();
    if (!qrange[2] || !krange[2]) continue;
    if (!MASKED && !ranges_may_see(qrange[0], qrange[1], krange[0], krange[1], p.window)) continue;
    load_tile<BK, DP>(Ks, LD, kb, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });
    load_tile<BK, DP>(Vs, LD, vb, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });
    __syncthreads();

    float s[RM][CM], dp[RM][CM];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CM; c++) s[r][c] = 0.f, dp[r][c] = 0.f;
    prod_nt<RM, CM, DP>(s, Qs, LD, Ks, LD, ty, tx);
    prod_nt<RM, CM, DP>(dp, dOs, LD, Vs, LD, ty, tx);
#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int row = ty * RM + r;
      const RowInfo& w = rows[row];
#pragma unroll
      for (int c = 0; c < CM; c++) {
        const int col = tx + 16 * c;
        const bool vis = w.q >= 0 && kok[col] &&
                         (MASKED ? p.mask[((int64_t)b * p.Tq + w.pos) * p.Tk + j0 + col] != 0
                                 : visible(w.pos, kpos[col], p.window));
        const float pr = vis ? expf(s[r][c] * p.scale - lse_s[row]) : 0.f;
        dSs[row * LP + col] = pr * (dp[r][c] - D_s[row]);
      }
    }
    __syncthreads();
    prod_nn<RM, NC, BK>(acc, dSs, LP, Ks, LD, ty, tx);
    __syncthreads();
  }

  if (THOUGHT) {  // chain keys: dS_s' = P_s' (dout · v_chain - D), dQ += dS_s' k_chain
    const int smax = p.s_first + p.Sq - 1;
    const int64_t cstep = (int64_t)p.Tq * p.Hkv * d;
#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int row = ty * RM + r;
      const RowInfo& w = rows[row];
      for (int t = 0; t < smax; t++) {
        const bool act = t < w.nc;
        float ps = 0.f, pd = 0.f, kv[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
          const int col = tx + 16 * c;
          kv[c] = act && col < d ? p.kc[w.kc + t * cstep + col] : 0.f;
          const float vv = act && col < d ? p.vc[w.kc + t * cstep + col] : 0.f;
          ps = fmaf(Qs[row * LD + col], kv[c], ps);
          pd = fmaf(dOs[row * LD + col], vv, pd);
        }
        ps = sum16(ps);
        pd = sum16(pd);
        if (act) {
          const float pr = expf(ps * p.scale - lse_s[row]);
          const float ds = pr * (pd - D_s[row]);
#pragma unroll
          for (int c = 0; c < NC; c++) acc[r][c] = fmaf(ds, kv[c], acc[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; r++) {
    const RowInfo& w = rows[ty * RM + r];
    if (w.q < 0) continue;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int col = tx + 16 * c;
      if (col < d) p.dq[w.q + col] += p.scale * acc[r][c];
    }
  }
}

// dK, dV. Grid (b·Hkv, key tiles, splits): blockIdx.x = b·Hkv + hk. Rows of the tile products
// are keys. With kv_splits > 1 (too few (b, hk, key tile) blocks to fill the GPU), split z takes
// a contiguous range of the query tiles and writes its partial sums (zeros included) to
// dk_part / dv_part instead of adding into dk / dv.
template <int DP, int BQ, int BK, int MODE>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(Params p) {
  constexpr bool THOUGHT = MODE == kThought, MASKED = MODE == kMasked;
  constexpr int RM = BK / 16, CM = BQ / 16, NC = DP / 16, LD = DP + 4, LQ = BQ + 1;
  extern __shared__ __align__(16) float smem[];
  float* Ks = smem;           // (BK, LD)
  float* Vs = Ks + BK * LD;   // (BK, LD)
  float* Qs = Vs + BK * LD;   // (BQ, LD)
  float* dOs = Qs + BQ * LD;  // (BQ, LD)
  float* Ps = dOs + BQ * LD;  // (BK, LQ)  [key][query]
  float* dSs = Ps + BK * LQ;  // (BK, LQ)
  __shared__ RowInfo rows[BQ];
  __shared__ float lse_s[BQ], D_s[BQ];
  __shared__ int kpos[BK], kok[BK];
  __shared__ int qrange[3], krange[3];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int b = blockIdx.x / p.Hkv, hk = blockIdx.x % p.Hkv;
  const int j0 = blockIdx.y * BK;
  const int d = p.d;

  setup_keys(p, b, j0, BK, kpos, kok);
  __syncthreads();
  warp0_range(BK, [&](int j) { return kok[j] != 0; }, [&](int j) { return kpos[j]; }, krange);
  __syncthreads();
  const bool split = p.kv_splits > 1;
  if (!krange[2] && !split) return;  // no valid key in the tile: no gradient (the whole block leaves)
  const int64_t kstride = (int64_t)p.Hkv * d;
  const int64_t kvoff = (int64_t)b * p.Tk * kstride + (int64_t)hk * d;
  load_tile<BK, DP>(Ks, LD, p.k + kvoff, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });
  load_tile<BK, DP>(Vs, LD, p.v + kvoff, d, [&](int j) { return kok[j] ? (int64_t)(j0 + j) * kstride : (int64_t)-1; });

  float dk[RM][NC], dv[RM][NC];
#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int c = 0; c < NC; c++) dk[r][c] = 0.f, dv[r][c] = 0.f;

  // Query tiles in a fixed order: attention, head g of the group then its tiles; thought, the
  // document's gathered tiles (every row p, step and head of the group, by position).
  const int ntiles = THOUGHT ? p.nqt : p.G * p.nqt;
  const int qt_begin = (int)((int64_t)blockIdx.z * ntiles / p.kv_splits);
  const int qt_end = krange[2] ? (int)(((int64_t)blockIdx.z + 1) * ntiles / p.kv_splits) : qt_begin;
  bool any = false;
  for (int qt = qt_begin; qt < qt_end; qt++) {
    if (THOUGHT) setup_rows<true>(p, b, hk, qt, BQ, rows);
    else setup_rows<false>(p, b, hk * p.G + qt / p.nqt, qt % p.nqt, BQ, rows);
    __syncthreads();
    for (int r = tid; r < BQ; r += kThreads) {
      lse_s[r] = rows[r].q >= 0 ? lse_for_p(p.lse_in[rows[r].l]) : CUDART_INF_F;
      D_s[r] = rows[r].q >= 0 ? p.D[rows[r].l] : 0.f;
    }
    warp0_range(BQ, [&](int r) { return rows[r].q >= 0; }, [&](int r) { return rows[r].pos; }, qrange);
    __syncthreads();
    if (!qrange[2]) continue;
    if (!MASKED && !ranges_may_see(qrange[0], qrange[1], krange[0], krange[1], p.window)) continue;
    any = true;
    load_tile<BQ, DP>(Qs, LD, p.q, d, [&](int r) { return rows[r].q; });
    load_tile<BQ, DP>(dOs, LD, p.dout, d, [&](int r) { return rows[r].q; });
    __syncthreads();

    float st[RM][CM], dpt[RM][CM];  // [key][query]
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CM; c++) st[r][c] = 0.f, dpt[r][c] = 0.f;
    prod_nt<RM, CM, DP>(st, Ks, LD, Qs, LD, ty, tx);
    prod_nt<RM, CM, DP>(dpt, Vs, LD, dOs, LD, ty, tx);
#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int key = ty * RM + r;
#pragma unroll
      for (int c = 0; c < CM; c++) {
        const int qi = tx + 16 * c;
        const RowInfo& w = rows[qi];
        const bool vis = w.q >= 0 && kok[key] &&
                         (MASKED ? p.mask[((int64_t)b * p.Tq + w.pos) * p.Tk + j0 + key] != 0
                                 : visible(w.pos, kpos[key], p.window));
        const float pr = vis ? expf(st[r][c] * p.scale - lse_s[qi]) : 0.f;
        Ps[key * LQ + qi] = pr;
        dSs[key * LQ + qi] = pr * (dpt[r][c] - D_s[qi]);
      }
    }
    __syncthreads();
    prod_nn<RM, NC, BQ>(dv, Ps, LQ, dOs, LD, ty, tx);
    prod_nn<RM, NC, BQ>(dk, dSs, LQ, Qs, LD, ty, tx);
    __syncthreads();  // rows, Qs, dOs, Ps, dSs are rewritten by the next tile
  }
  if (!any && !split) return;

  const int64_t part = (int64_t)blockIdx.z * p.B * p.Tk * kstride;  // this split's partials
#pragma unroll
  for (int r = 0; r < RM; r++) {
    const int j = j0 + ty * RM + r;
    if (j >= p.Tk) continue;
    const int64_t off = kvoff + (int64_t)j * kstride;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const int col = tx + 16 * c;
      if (col >= d) continue;
      if (split) {
        p.dk_part[part + off + col] = p.scale * dk[r][c];
        p.dv_part[part + off + col] = dv[r][c];
      } else {
        if (p.dk) p.dk[off + col] += p.scale * dk[r][c];
        if (p.dv) p.dv[off + col] += dv[r][c];
      }
    }
  }
}

// dk += Σ_z dk_part[z], dv likewise, the splits summed in order (n = B·Tk·Hkv·d elements).
// static: this header is included by two .cu files, each gets its own copy
static __global__ void kv_reduce_kernel(Params p, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    float sk = 0.f, sv = 0.f;
    for (int z = 0; z < p.kv_splits; z++) sk += p.dk_part[z * n + e], sv += p.dv_part[z * n + e];
    if (p.dk) p.dk[e] += sk;
    if (p.dv) p.dv[e] += sv;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: the padded width for d, and the launches of the tile kernels for one width.

// Smallest compiled width >= d, or 0 when d is too large.
inline int padded_width(int d) {
  return d <= 16 ? 16 : d <= 32 ? 32 : d <= 64 ? 64 : d <= 80 ? 80 : d <= 128 ? 128 : 0;
}

// The dK/dV kernel's split over query tiles: enough (b, hk, key tile, split) blocks for two
// waves on a 132-SM H100, from the shape alone (so results depend on the shape only); 1 when
// the key tiles already fill the GPU. query_rows = query rows per (b, query head) (attention)
// or per (b, kv head) (thought), heads_per_block = the G query heads a block loops over
// (attention) or 1 (thought).
constexpr int kKvTargetBlocks = 264, kKvMaxSplits = 32;
inline int kv_splits(int B, int Hkv, int Tk, int d, int64_t query_rows, int heads_per_block) {
  const int dp = padded_width(d);
  if (dp == 0 || B <= 0 || Hkv <= 0 || Tk <= 0) return 1;
  const int bk = dp > 64 ? 32 : 64, bq = 32;  // TileConfig<dp>::kKvK, kKvQ
  const int64_t blocks = (int64_t)B * Hkv * ((Tk + bk - 1) / bk);
  const int64_t tiles = (int64_t)heads_per_block * ((query_rows + bq - 1) / bq);
  int64_t splits = (kKvTargetBlocks + blocks - 1) / blocks;
  splits = std::min<int64_t>(splits, std::min<int64_t>(tiles, kKvMaxSplits));
  return (int)std::max<int64_t>(splits, 1);
}

// Scratch of a backward call: D (nrows floats), then with splits > 1 the dK and dV partials,
// each (splits, B, Tk, Hkv, d), 256-byte aligned.
inline size_t backward_scratch_bytes(int64_t nrows, int splits, int64_t kv_elems) {
  size_t bytes = ((size_t)nrows * sizeof(float) + 255) / 256 * 256;
  if (splits > 1) bytes += 2 * (size_t)splits * kv_elems * sizeof(float);
  return bytes;
}

template <typename Kernel>
inline Status launch_tile(Kernel kernel, dim3 grid, size_t smem, const Params& p, cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return Status::Ok();
  if (grid.y > 65535) return QS_ERROR(INVALID_ARGUMENT, "attention: %u tiles exceed the grid limit 65535", grid.y);
  // More than 48 KiB of dynamic shared memory must be opted into, per kernel.
  QS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

template <int DP, int MODE>
Status run_forward(const Params& p, int blocks_x, cudaStream_t stream) {
  constexpr bool THOUGHT = MODE == kThought;
  typedef TileConfig<DP> C;
  Params q = p;
  q.nqt = (int)(((int64_t)(THOUGHT ? (int64_t)p.Tq * p.M : p.Tq) + C::kFwdQ - 1) / C::kFwdQ);
  return launch_tile(fwd_kernel<DP, C::kFwdQ, C::kFwdK, MODE>, dim3(blocks_x, q.nqt), C::fwd_smem(), q, stream);
}

// The three backward kernels (D first; dq and dk/dv only when asked for).
template <int DP, int MODE>
Status run_backward(const Params& p, int blocks_x, int64_t nrows, cudaStream_t stream) {
  constexpr bool THOUGHT = MODE == kThought;
  typedef TileConfig<DP> C;
  const int64_t rows_per_head = THOUGHT ? (int64_t)p.Tq * p.M : p.Tq;
  const unsigned d_blocks = (unsigned)((nrows * 32 + kThreads - 1) / kThreads);
  if (d_blocks > 0) {
    d_kernel<THOUGHT><<<d_blocks, kThreads, 0, stream>>>(p, nrows);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  if (p.dq) {
    Params q = p;
    q.nqt = (int)((rows_per_head + C::kDqQ - 1) / C::kDqQ);
    QS_RETURN_IF_ERROR(
        launch_tile(dq_kernel<DP, C::kDqQ, C::kDqK, MODE>, dim3(blocks_x, q.nqt), C::dq_smem(), q, stream));
  }
  if (p.dk || p.dv) {
    Params q = p;
    q.nqt = (int)((rows_per_head + C::kKvQ - 1) / C::kKvQ);
    const int nkt = (p.Tk + C::kKvK - 1) / C::kKvK;
    const int64_t kv_elems = (int64_t)p.B * p.Tk * p.Hkv * p.d;
    // the same split the scratch was sized for (backward_scratch_bytes)
    q.kv_splits = kv_splits(p.B, p.Hkv, p.Tk, p.d, rows_per_head, THOUGHT ? 1 : p.G);
    float* part = p.D + ((size_t)nrows * sizeof(float) + 255) / 256 * 256 / sizeof(float);
    q.dk_part = part, q.dv_part = part + (size_t)q.kv_splits * kv_elems;
    QS_RETURN_IF_ERROR(launch_tile(dkdv_kernel<DP, C::kKvQ, C::kKvK, MODE>, dim3(p.B * p.Hkv, nkt, q.kv_splits),
                                   C::kv_smem(), q, stream));
    if (q.kv_splits > 1) {
      const int64_t blocks = std::min<int64_t>((kv_elems + kThreads - 1) / kThreads, 65535 * 8);
      kv_reduce_kernel<<<(unsigned)blocks, kThreads, 0, stream>>>(q, kv_elems);
      QS_CUDA_CHECK_LAUNCH(stream);
    }
  }
  return Status::Ok();
}

// Evaluates `call` (an expression returning Status that names DP) for the padded width of d, or
// refuses d with INVALID_ARGUMENT.
#define QS_ATTN_FOR_WIDTH(d, what, call)                                                                   \
  switch (::qs::cuda::attn::padded_width(d)) {                                                           \
    case 16: { constexpr int DP = 16; return call; }                                                     \
    case 32: { constexpr int DP = 32; return call; }                                                     \
    case 64: { constexpr int DP = 64; return call; }                                                     \
    case 80: { constexpr int DP = 80; return call; }                                                     \
    case 128: { constexpr int DP = 128; return call; }                                                   \
    default:                                                                                             \
      return QS_ERROR(INVALID_ARGUMENT, "%s: head dimension d = %d is not supported by the CUDA kernels " \
                      "(d <= 128)", what, d);                                                            \
  }

}  // namespace qs::cuda::attn
