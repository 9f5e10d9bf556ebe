// lmhead_xent.cu: CUDA twin of native/cpu/lmhead_xent.cpp for f32 (see cpu/lmhead_xent.h for
// the contract): LM head fused with softmax cross-entropy, the [N, V] logits never stored.
//
//   z[n, v] = h[n,:] · W[v,:]     loss[n] = lse[n] - z[n, target[n]]     h (N, D), W (V, D)
//
// Forward, two kernels (the layout of thought_sampling.cu, without the sampling):
//   xent_partial: grid (row tiles of kRows, vocabulary splits). A block walks its split in
//     tiles of kCols ids; per tile Z (kRows, kCols) = h_tile · W_tileᵀ (tile_gemm.cuh), then
//     per row (one warp owns a row): m' = max(m, max Z), l = l e^(m - m') + Σ e^(Z - m'), and
//     the target's logit when the tile holds it. Writes (m, l, z_target) to scratch (splits, N).
//   xent_merge: one thread per row combines its splits: lse = m + log l, loss = lse - z_target.
// Backward, per vocabulary chunk of `chunk` ids (scratch G (N, chunk), so O(N·chunk) memory):
//   xent_grad:  G = (e^(Z - lse) - onehot(target)) · dloss     Z recomputed tile by tile
//   gemm_acc:   dh (N, D)          += G · W_chunk              (N, chunk)·(chunk, D)
//   gemm_acc:   dW_chunk (chunk, D) += Gᵀ · h                  (chunk, N)·(N, D)
// Every output element of gemm_acc is owned by one thread that sums its depth in a fixed
// order, and the chunks run in order on the stream: dh and dW are deterministic (no atomics).
//
// As on the CPU, ignored rows (target == ignore_index) get loss = 0, lse = 0 and no gradient.
// The op layer checks targets on the host path only; here a target outside [0, V) that is not
// ignore_index is never read out of bounds: its logit counts as 0 and it gets no one-hot term.
// Logits are float dot products summed in another order than the CPU gemm (~1e-6 relative).
#include <cmath>
#include <math_constants.h>

#include "cuda/common.cuh"
#include "cuda/tile_gemm.cuh"

namespace qs::cuda {
namespace {

constexpr int kRows = 32;   // rows of h per block
constexpr int kCols = 64;   // vocabulary ids per tile: each lane of a row's warp takes 2
constexpr int kDepth = 32;  // D per shared-memory step
constexpr int kThreads = kTileThreads;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGradElems = (int64_t)1 << 24;  // the backward's G scratch: at most 64 MiB
constexpr int kDefaultChunk = 4096;                   // as the CPU's

// A row's softmax statistics over one split of the vocabulary.
struct XentPartial {
  float m;   // max logit (-inf: none yet)
  float l;   // Σ e^(z - m)
  float zt;  // the target's logit, if this split holds it (else 0)
};

// part (splits, N): each block's rows over its split of the vocabulary.
__global__ void xent_partial_kernel(XentPartial* part, const float* h, const float* W, const int32_t* targets, int N,
                                    int D, int V, int tiles_per_split) {
  __shared__ float hs[kRows][kDepth + 1];
  __shared__ float ws[kCols][kDepth + 1];
  __shared__ float zs[kRows][kCols + 1];  // the tile's logits
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int n0 = blockIdx.x * kRows;
  const int tile_begin = blockIdx.y * tiles_per_split;
  const int tile_end = min(tile_begin + tiles_per_split, (V + kCols - 1) / kCols);
  // Row r's state lives in the registers of warp r % kWarps (every lane the same copy).
  XentPartial st[kRows / kWarps];
  for (int i = 0; i < kRows / kWarps; i++) st[i] = XentPartial{-CUDART_INF_F, 0.f, 0.f};

  for (int tile = tile_begin; tile < tile_end; tile++) {
    const int v0 = tile * kCols;
    logits_tile<kRows, kCols, kDepth>(zs, hs, ws, h, W, N, D, V, n0, v0);  // zs (kRows, kCols)
    for (int i = 0; i < kRows / kWarps; i++) {
      const int r = warp + kWarps * i, n = n0 + r;
      if (n >= N) break;
      // lane takes ids v0 + lane and v0 + lane + 32; ids >= V are padding (-inf)
      const float x0 = v0 + lane < V ? zs[r][lane] : -CUDART_INF_F;
      const float x1 = v0 + lane + 32 < V ? zs[r][lane + 32] : -CUDART_INF_F;
      float mx = fmaxf(x0, x1);
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m = fmaxf(st[i].m, mx);  // finite: the tile has at least one real id
      float s = expf(x0 - m) + expf(x1 - m);
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      st[i].l = (st[i].m == -CUDART_INF_F ? 0.f : st[i].l * expf(st[i].m - m)) + s;
      st[i].m = m;
      const int t = targets[n];
      if (t >= v0 && t < v0 + kCols && t < V) st[i].zt = zs[r][t - v0];
    }
    __syncthreads();  // zs is rewritten by the next tile
  }
  for (int i = 0; i < kRows / kWarps; i++) {
    const int n = n0 + warp + kWarps * i;
    if (n < N && lane == 0) part[(int64_t)blockIdx.y * N + n] = st[i];
  }
}

// losses, lse (N) from part (splits, N): the splits combined in vocabulary order.
__global__ void xent_merge_kernel(float* losses, float* lse, const XentPartial* part, const int32_t* targets, int N,
                                  int splits, int ignore_index) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  if (targets[n] == ignore_index) {
    losses[n] = lse[n] = 0.f;
    return;
  }
  float m = -CUDART_INF_F, zt = 0.f;
  for (int s = 0; s < splits; s++) m = fmaxf(m, part[(int64_t)s * N + n].m);
  float l = 0.f;
  for (int s = 0; s < splits; s++) {
    const XentPartial& p = part[(int64_t)s * N + n];
    if (p.m != -CUDART_INF_F) l += p.l * expf(p.m - m);
    zt += p.zt;  // only the split that holds the target wrote a nonzero logit
  }
  const float ls = m + logf(l);
  lse[n] = ls;
  losses[n] = ls - zt;
}

// G (N, nc) for the ids v0 .. v0 + nc - 1:  (e^(z - lse) - onehot(target)) · dloss, 0 on
// ignored rows. grid (row tiles, column tiles of the chunk).
__global__ void xent_grad_kernel(float* G, const float* dlosses, const float* h, const float* W, const int32_t* targets,
                                 const float* lse, int N, int D, int v0, int nc, int ignore_index) {
  __shared__ float hs[kRows][kDepth + 1];
  __shared__ float ws[kCols][kDepth + 1];
  __shared__ float zs[kRows][kCols + 1];
  const int n0 = blockIdx.x * kRows, c0 = blockIdx.y * kCols;
  // the chunk's end as the vocabulary size: ids past it read as padding
  logits_tile<kRows, kCols, kDepth>(zs, hs, ws, h, W, N, D, v0 + nc, n0, v0 + c0);
  for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
    const int r = e / kCols, c = e % kCols, n = n0 + r, col = c0 + c;
    if (n >= N || col >= nc) continue;
    const int t = targets[n];
    float g = 0.f;
    if (t != ignore_index) g = (expf(zs[r][c] - lse[n]) - (v0 + col == t ? 1.f : 0.f)) * dlosses[n];
    G[(int64_t)n * nc + col] = g;
  }
}

// C (M, Nc), rows ldc apart, += a · bᵀ      a (M, K), b (Nc, K) as StridedMats
// grid (row tiles, column tiles); each element of C belongs to one thread.
__global__ void gemm_acc_kernel(float* C, int64_t ldc, StridedMat a, StridedMat b) {
  __shared__ float as[kRows][kDepth + 1];
  __shared__ float bs[kCols][kDepth + 1];
  const int r0 = blockIdx.x * kRows, c0 = blockIdx.y * kCols;
  float acc[kRows / 16][kCols / 16] = {};
  tile_gemm<kRows, kCols, kDepth>(acc, as, bs, a, b, r0, c0);
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int i = 0; i < kRows / 16; i++) {
    for (int j = 0; j < kCols / 16; j++) {
      const int r = r0 + tr + 16 * i, c = c0 + tc + 16 * j;
      if (r < a.n && c < b.n) C[r * ldc + c] += acc[i][j];
    }
  }
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

int forward_splits(int N, int V) { return vocab_splits(ceil_div(N, kRows), ceil_div(V, kCols)); }

// The backward's chunk: the op's (0 = default), at most V, and small enough that G fits
// kMaxGradElems (a whole number of tiles, at least one).
int backward_chunk(int N, int V, int chunk) {
  int c = chunk <= 0 ? kDefaultChunk : chunk;
  const int64_t fit = kMaxGradElems / (N > 0 ? N : 1);
  if (c > fit) c = (int)fit / kCols * kCols;
  if (c < kCols) c = kCols;
  return c < V ? c : V;
}

// C (M, Nc) += a · bᵀ on the stream.
Status gemm_acc(float* C, int64_t ldc, const StridedMat& a, const StridedMat& b, cudaStream_t s) {
  if (a.n <= 0 || b.n <= 0) return Status::Ok();
  gemm_acc_kernel<<<dim3(ceil_div(a.n, kRows), ceil_div(b.n, kCols)), kThreads, 0, s>>>(C, ldc, a, b);
  QS_CUDA_CHECK_LAUNCH(s);
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// launchers

size_t lmhead_xent_forward_scratch_bytes(int N, int V) {
  return N <= 0 || V <= 0 ? 0 : (size_t)forward_splits(N, V) * N * sizeof(XentPartial);
}

size_t lmhead_xent_backward_scratch_bytes(int N, int V, int chunk) {
  return N <= 0 || V <= 0 ? 0 : (size_t)N * backward_chunk(N, V, chunk) * sizeof(float);
}

// losses, lse (N) f32 on the device; h (N, D), W (V, D) f32; targets (N) i32; scratch of
// lmhead_xent_forward_scratch_bytes(N, V) bytes. chunk: the CPU's, not needed here (the tiles
// are the chunks).
Status lmhead_xent_forward_f32(float* losses, float* lse, const float* h, const float* W, const int32_t* targets, int N,
                               int D, int V, int ignore_index, void* scratch, void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
  if (N <= 0) return Status::Ok();
  if (V <= 0) {  // no logits: every row 0, as on the CPU
    QS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(losses, 0, sizeof(float) * N, s));
    QS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(lse, 0, sizeof(float) * N, s));
    return Status::Ok();
  }
  const int splits = forward_splits(N, V), tiles = ceil_div(V, kCols);
  XentPartial* part = (XentPartial*)scratch;
  xent_partial_kernel<<<dim3(ceil_div(N, kRows), splits), kThreads, 0, s>>>(part, h, W, targets, N, D, V,
                                                                              ceil_div(tiles, splits));
  QS_CUDA_CHECK_LAUNCH(stream);
  xent_merge_kernel<<<ceil_div(N, 128), 128, 0, s>>>(losses, lse, part, targets, N, splits, ignore_index);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

// dh (N, D), dW (V, D) += (both nullable); dlosses, lse (N); scratch of
// lmhead_xent_backward_scratch_bytes(N, V, chunk) bytes.
Status lmhead_xent_backward_f32(float* dh, float* dW, const float* dlosses, const float* h, const float* W,
                                const int32_t* targets, const float* lse, int N, int D, int V, int ignore_index,
                                int chunk, void* scratch, void* stream) {
  if (N <= 0 || V <= 0 || D <= 0 || (!dh && !dW)) return Status::Ok();
  cudaStream_t s = (cudaStream_t)stream;
  float* G = (float*)scratch;
  const int nchunk = backward_chunk(N, V, chunk);
  for (int v0 = 0; v0 < V; v0 += nchunk) {
    const int nc = min(nchunk, V - v0);
    xent_grad_kernel<<<dim3(ceil_div(N, kRows), ceil_div(nc, kCols)), kThreads, 0, s>>>(G, dlosses, h, W, targets, lse,
                                                                                         N, D, v0, nc, ignore_index);
    QS_CUDA_CHECK_LAUNCH(stream);
    const float* Wc = W + (int64_t)v0 * D;
    // dh (N, D) += G (N, nc) · W_chunk (nc, D): a = G, b = W_chunkᵀ (D, nc)
    if (dh) QS_RETURN_IF_ERROR(gemm_acc(dh, D, StridedMat{G, nc, 1, N, nc}, StridedMat{Wc, 1, D, D, nc}, s));
    // dW_chunk (nc, D) += Gᵀ (nc, N) · h (N, D): a = Gᵀ, b = hᵀ (D, N)
    if (dW)
      QS_RETURN_IF_ERROR(gemm_acc(dW + (int64_t)v0 * D, D, StridedMat{G, 1, nc, nc, N}, StridedMat{h, 1, D, D, N}, s));
  }
  return Status::Ok();
}

}  // namespace qs::cuda
