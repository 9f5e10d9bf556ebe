// reduce.h: the deterministic reductions of the normalisation kernels (layernorm.cpp,
// rmsnorm.cpp), whose results must not depend on the thread count.
//
//   lane_sum             a sum over one row's C columns, in double, with kLanes independent
//                        accumulators so that it vectorises; the order depends on C alone.
//   rows_with_param_grads  the backward's row loop, with parameter gradients such as dweight
//                        and dbias ((C) sums over all N rows) reduced in a fixed order.
//   VecRowSum            the float SIMD paths' row sums: float vectors added 4 at a time,
//                        widened into double vector accumulators (layernorm.cpp, rmsnorm.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "cpu/vec_math.h"

namespace qs::cpu {

namespace reduce_detail {
constexpr int kLanes = 8;             // independent accumulators per row reduction
constexpr int kMinRowsPerBlock = 16;  // parameter-gradient row blocks ...
constexpr int kMaxRowBlocks = 64;     // ... at most this many (bounds the scratch)
}  // namespace reduce_detail

// sum over c in [0, C) of f(c), in double, in an order fixed by C alone.
template <typename F>
inline double lane_sum(int C, F f) {
  constexpr int kLanes = reduce_detail::kLanes;
  double acc[kLanes] = {};
  int c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int k = 0; k < kLanes; k++) acc[k] += f(c + k);
  double s = 0;
  for (; c < C; c++) s += f(c);
  for (int k = 0; k < kLanes; k++) s += acc[k];
  return s;
}

// A row sum for the float kernels compiled per vector width VB (isa.h dispatch): the caller
// forms 4 float vectors of terms at a time and hands them to add4, which adds them as
// (t0 + t1) + (t2 + t3) in float (each lane's partial holds 4 terms, so it carries at most
// ~2 float roundings of those 4 terms) and widens that into two double accumulators; add1
// takes a single vector (rows whose length is not a multiple of 4 vectors), total() adds the
// accumulators' lanes as a tree onto the scalar tail. Widening once per 4L columns instead
// of per column is what lets these sums keep up with memory (GCC 12 also splits every 8-lane
// float->double conversion in two). The order depends on C and VB only, never on threads.
template <int VB>
struct VecRowSum {
  typedef vec::Simd<float, VB> S;
  typedef vec::Simd<double, VB> D;
  typedef typename S::V VF;
  typedef typename D::V VD;
  VD lo{}, hi{};
  QS_INLINE void add1(const VF& t) {
    VD a, b;
    D::widen2(t, a, b);
    lo += a;
    hi += b;
  }
  QS_INLINE void add4(const VF& t0, const VF& t1, const VF& t2, const VF& t3) { add1((t0 + t1) + (t2 + t3)); }
  QS_INLINE double total(double tail) const {
    constexpr int LD = D::L;
    double t[LD];
    VD v = lo + hi;
    std::memcpy(t, &v, sizeof v);
    for (int w = LD / 2; w >= 1; w /= 2)
      for (int i = 0; i < w; i++) t[i] += t[i + w];
    return tail + t[0];
  }
};

// Calls row(n, part) once for every row n in [0, N) and adds P parameter gradients, each a
// (C) sum over the rows, into grads[0..P) (a null entry is not written; all null: part is
// null and only the rows run).
//
// Deterministic for any thread count: rows are cut into blocks whose boundaries depend only on
// N; each block runs its rows in order, and row() adds its terms into the block's own zeroed
// double partials part[p * C + c]; the partials are then added in block order, column by
// column, and rounded to T once. Blocks run in parallel when `par`.
//
// If the (blocks, P, C) scratch cannot be allocated, serial_row(n) is called for every row in
// order first, to add the row's terms straight into grads (still deterministic, only rounded
// differently), and then row(n, nullptr) runs as usual for the rest of the row's work.
template <int P, typename T, typename RowFn, typename SerialRowFn>
void rows_with_param_grads(int N, int C, bool par, T* const (&grads)[P], RowFn row,
                           SerialRowFn serial_row) {
  using namespace reduce_detail;
  bool params = false;
  for (int p = 0; p < P; p++) params |= grads[p] != nullptr;
  int nb = (N + kMinRowsPerBlock - 1) / kMinRowsPerBlock;
  if (nb > kMaxRowBlocks) nb = kMaxRowBlocks;
  int rows_per_block = nb > 0 ? (N + nb - 1) / nb : 0;
  double* partial = nullptr;  // (nb, P, C) per-block partial sums
  if (params && nb > 0) partial = new (std::nothrow) double[(size_t)nb * P * C];

  if (params && !partial) {
    for (int n = 0; n < N; n++) serial_row(n);
    params = false;
  }

#pragma omp parallel for schedule(static) if (par)
  for (int blk = 0; blk < nb; blk++) {
    int n0 = blk * rows_per_block;
    int n1 = n0 + rows_per_block < N ? n0 + rows_per_block : N;
    double* part = params ? partial + (size_t)blk * P * C : nullptr;
    if (params)
      for (int c = 0; c < P * C; c++) part[c] = 0;
    for (int n = n0; n < n1; n++) row(n, part);
  }

  if (params) {
    // combine the block partials in block order, column by column; a chunk of columns at a
    // time, so that the inner loop runs along contiguous columns (and vectorises)
    constexpr int kCols = 128;
    const int nchunks = (C + kCols - 1) / kCols;
#pragma omp parallel for if (par && C >= 256)
    for (int ch = 0; ch < nchunks; ch++) {
      const int c0 = ch * kCols, nc = C - c0 < kCols ? C - c0 : kCols;
      double s[P][kCols] = {};
      for (int blk = 0; blk < nb; blk++)
        for (int p = 0; p < P; p++) {
          const double* src = partial + ((size_t)blk * P + p) * C + c0;
          for (int c = 0; c < nc; c++) s[p][c] += src[c];
        }
      for (int p = 0; p < P; p++)
        if (grads[p])
          for (int c = 0; c < nc; c++) grads[p][c0 + c] += (T)s[p][c];
    }
  }
  delete[] partial;
}

// Norm parameter-gradient partials for one row, in double (LayerNorm and RMSNorm share it):
//   pw (C) += dy * ((x - mean) * rstd),  pb (C) += dy  (pb may be null)
// `norm` is rounded in float exactly as the forward computed it; RMSNorm passes mean = 0,
// for which x - 0.0f == x bit for bit.
template <int VB>
QS_INLINE void accumulate_norm_partials(double* pw, double* pb, const float* dy, const float* x, float mean,
                                        float rstd, int C) {
  typedef vec::Simd<float, VB> S;
  typedef vec::Simd<double, VB> D;
  typedef typename D::V VD;
  constexpr int L = S::L, LD = D::L;
  int c = 0;
  for (; c + L <= C; c += L) {
    VD dy0, dy1, n0, n1;
    D::widen2(S::load(dy + c), dy0, dy1);
    D::widen2((S::load(x + c) - mean) * rstd, n0, n1);
    D::store(pw + c, D::load(pw + c) + dy0 * n0);
    D::store(pw + c + LD, D::load(pw + c + LD) + dy1 * n1);
    if (pb) {
      D::store(pb + c, D::load(pb + c) + dy0);
      D::store(pb + c + LD, D::load(pb + c + LD) + dy1);
    }
  }
  for (; c < C; c++) {
    pw[c] += (double)dy[c] * (double)((x[c] - mean) * rstd);
    if (pb) pb[c] += (double)dy[c];
  }
}

}  // namespace qs::cpu
