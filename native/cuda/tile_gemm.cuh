// tile_gemm.cuh: one block's (kRows, kCols) tile of a float gemm, for the fused kernels that
// consume logits tile by tile (thought_sampling.cu, lmhead_xent.cu) and never store [N, V].
//
//   acc (per thread) = A[r0 : r0 + kRows, :] · B[:, c0 : c0 + kCols]      A (M, K), B (K, Nc)
//
// A and B are addressed through element strides, so one routine covers the three products of
// the LM head: Z = h·Wᵀ, dh += G·W and dW += Gᵀ·h. Rows >= M, columns >= Nc and depth >= K read
// as 0. K is walked in kDepth steps through shared memory, in a fixed order: the result does
// not depend on the launch, only on the shapes.
//
// Thread layout (kThreads = 256, a 16 x 16 grid): thread (tr, tc) = (tid / 16, tid % 16) owns
// rows tr + 16·i (i < kRows / 16) and columns tc + 16·j (j < kCols / 16) of the tile.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace qs::cuda {

constexpr int kTileThreads = 256;

// A strided matrix: element (i, k) at p[i·si + k·sk], of size (n, depth).
struct StridedMat {
  const float* p;
  int64_t si, sk;
  int n, depth;
};

// s (kN, kDepth + 1) = m[i0 : i0 + kN, k0 : k0 + kDepth], zero-padded. Consecutive threads take
// consecutive addresses of m (the unit-stride index varies fastest) so the loads coalesce.
// (+1 column: no bank conflicts on the column reads.)
template <int kN, int kDepth>
__device__ __forceinline__ void load_tile(float (*s)[kDepth + 1], const StridedMat& m, int i0, int k0) {
  const bool k_fast = m.sk == 1;
  for (int e = threadIdx.x; e < kN * kDepth; e += kTileThreads) {
    const int i = k_fast ? e / kDepth : e % kN, k = k_fast ? e % kDepth : e / kN;
    const int gi = i0 + i, gk = k0 + k;
    s[i][k] = gi < m.n && gk < m.depth ? m.p[gi * m.si + gk * m.sk] : 0.f;
  }
}

// acc[i][j] += tile element (tr + 16 i, tc + 16 j) of a·bᵀ, where a (rows) and b (columns) are
// both given with the depth as their second index. as, bs: shared scratch.
template <int kRows, int kCols, int kDepth>
__device__ void tile_gemm(float (&acc)[kRows / 16][kCols / 16], float (*as)[kDepth + 1], float (*bs)[kDepth + 1],
                          const StridedMat& a, const StridedMat& b, int r0, int c0) {
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int k0 = 0; k0 < a.depth; k0 += kDepth) {
    load_tile<kRows, kDepth>(as, a, r0, k0);
    load_tile<kCols, kDepth>(bs, b, c0, k0);
    __syncthreads();
    for (int k = 0; k < kDepth; k++) {
      for (int i = 0; i < kRows / 16; i++) {
        const float x = as[tr + 16 * i][k];
        for (int j = 0; j < kCols / 16; j++) acc[i][j] += x * bs[tc + 16 * j][k];
      }
    }
    __syncthreads();  // as, bs are rewritten by the next step
  }
}

// zs (kRows, kCols + 1) = the logits tile h[n0 :] · W[v0 :]ᵀ    h (N, D), W (V, D)
template <int kRows, int kCols, int kDepth>
__device__ void logits_tile(float (*zs)[kCols + 1], float (*hs)[kDepth + 1], float (*ws)[kDepth + 1], const float* h,
                            const float* W, int N, int D, int V, int n0, int v0) {
  float acc[kRows / 16][kCols / 16] = {};
  tile_gemm<kRows, kCols, kDepth>(acc, hs, ws, StridedMat{h, D, 1, N, D}, StridedMat{W, D, 1, V, D}, n0, v0);
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int i = 0; i < kRows / 16; i++)
    for (int j = 0; j < kCols / 16; j++) zs[tr + 16 * i][tc + 16 * j] = acc[i][j];
  __syncthreads();
}

// How many blocks to split the vocabulary into when row_tiles blocks of rows walk `tiles`
// vocabulary tiles: enough blocks for ~4 per SM (small N, e.g. decode, would otherwise leave
// most SMs idle), never more splits than tiles.
inline int vocab_splits(int row_tiles, int tiles) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    sms = 132;
  }
  int splits = (4 * sms + row_tiles - 1) / row_tiles;
  return splits < 1 ? 1 : splits > tiles ? tiles : splits;
}

}  // namespace qs::cuda
