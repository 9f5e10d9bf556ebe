// reduce.h: the deterministic reductions of the normalisation kernels (layernorm.cpp,
// rmsnorm.cpp), whose results must not depend on the thread count.
//
//   lane_sum             a sum over one row's C columns, in double, with kLanes independent
//                        accumulators so that it vectorises; the order depends on C alone.
//   rows_with_param_grads  the backward's row loop, with parameter gradients such as dweight
//                        and dbias ((C) sums over all N rows) reduced in a fixed order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

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
    // combine the block partials in block order, column by column
#pragma omp parallel for if (par && C >= 256)
    for (int c = 0; c < C; c++) {
      double s[P] = {};
      for (int blk = 0; blk < nb; blk++)
        for (int p = 0; p < P; p++) s[p] += partial[((size_t)blk * P + p) * C + c];
      for (int p = 0; p < P; p++)
        if (grads[p]) grads[p][c] += (T)s[p];
    }
  }
  delete[] partial;
}

}  // namespace qs::cpu
