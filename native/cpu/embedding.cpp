/*
Token embedding gather and GPT-2's learned position embedding (see embedding.h).

Memory layout: tables are row-major, one row of C values per id: table (V,C), wpe (maxT,C).
Activations are (N,C) with N = B*T flattened. Ids and positions are int32 and already
range-checked by the op layer; nothing here validates them.

Backward is a scatter-add: every row n of dout is added into row ids[n] of the table gradient.
Rows of dout that share an id collide, so a parallel loop over rows would need atomics, and
atomics (or per-thread partial tables) make the float summation order depend on scheduling.
Instead the parallel loop runs over fixed-width column chunks: each thread owns a set of
columns of the whole table and walks the rows n = 0..N-1 in order. Every table element is then
summed in ascending n, exactly as a serial loop would, for any thread count.
*/
#include "cpu/embedding.h"

#include <cstring>

namespace qs::cpu {

// Columns per parallel work item in the scatter-add. 64 floats = 256 bytes = 4 cache lines per
// row visit, wide enough to keep the inner loop vectorised and to avoid false sharing between
// threads writing neighbouring chunks of the same table row.
static constexpr int kColChunk = 64;

// Below this many elements a parallel region costs more than it saves.
static constexpr int64_t kParallelMin = 1 << 15;

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C) {
  // out (N,C), ids (N), table (V,C)
#pragma omp parallel for if ((int64_t)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    std::memcpy(out + (int64_t)n * C, table + (int64_t)ids[n] * C, sizeof(T) * (size_t)C);
  }
}

// dst (V,C) += scatter of src (N,C) by idx (N), deterministic (see the top of the file).
template <typename T>
static void scatter_add_rows(T* dst, const T* src, const int32_t* idx, int N, int C) {
  int nchunks = (C + kColChunk - 1) / kColChunk;
#pragma omp parallel for schedule(static) if ((int64_t)N * C > kParallelMin && nchunks > 1)
  for (int chunk = 0; chunk < nchunks; chunk++) {
    int c0 = chunk * kColChunk;
    int c1 = c0 + kColChunk < C ? c0 + kColChunk : C;
    for (int n = 0; n < N; n++) {  // ascending n: the summation order for every element
      T* d = dst + (int64_t)idx[n] * C;
      const T* s = src + (int64_t)n * C;
      for (int c = c0; c < c1; c++) d[c] += s[c];
    }
  }
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int N, int C) {
  // dtable (V,C) +=, dout (N,C), ids (N)
  scatter_add_rows(dtable, dout, ids, N, C);
}

template <typename T>
void position_embedding_forward(T* out, const int32_t* pos, const T* wpe, int N, int C) {
  // out (N,C) += wpe[pos[n]]: added into the token embeddings already in out
#pragma omp parallel for if ((int64_t)N * C > kParallelMin)
  for (int n = 0; n < N; n++) {
    T* o = out + (int64_t)n * C;
    const T* w = wpe + (int64_t)pos[n] * C;
    for (int c = 0; c < C; c++) o[c] += w[c];
  }
}

template <typename T>
void position_embedding_backward(T* dwpe, const T* dout, const int32_t* pos, int N, int C) {
  // dwpe (maxT,C) +=, dout (N,C), pos (N); positions repeat across the batch, hence scatter
  scatter_add_rows(dwpe, dout, pos, N, C);
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, int, int);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int);
template void embedding_backward<double>(double*, const double*, const int32_t*, int, int);
template void position_embedding_forward<float>(float*, const int32_t*, const float*, int, int);
template void position_embedding_forward<double>(double*, const int32_t*, const double*, int, int);
template void position_embedding_backward<float>(float*, const float*, const int32_t*, int, int);
template void position_embedding_backward<double>(double*, const double*, const int32_t*, int, int);

}  // namespace qs::cpu
