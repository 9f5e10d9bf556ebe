// quietstar_heads.cu: CUDA twin of native/cpu/quietstar_heads.cpp (f32): the mixing head, the
// row moves (gathers / scatters) of the Quiet-STaR step (cpu/quietstar_heads.h). The rewards
// (a few f64 sums per position) are computed on the host from the downloaded losses, whichever
// the engine: their CPU routine serves both backends, so they have no device kernel.
//
// The products go through gemm.cu (the same calls, with the same transposes and row strides, as
// the CPU twin); the per-row work is one warp per row (the dot product with w3 and with
// h_chain - h_base summed by a fixed-order warp tree). Bias gradients and the row moves sum in
// the CPU's order.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/kernels_quietstar.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

namespace {

constexpr int kRowsPerBlock = kBlock / 32;  // one warp per row

// Per row r: wraw = a2[r]·w3, w = sigmoid(wraw) or wraw, hm[r] = (1-u)·hb[r] + u·hc[r] with
// u = 1 - w (weights_base) or w.
__global__ void mix_rows_forward(float* wraw, float* wout, float* hm, const float* a2, const float* w3, const float* hb,
                                 const float* hc, int n, int D, bool weights_base, bool sigmoid) {
  const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= n) return;
  const float* x = a2 + (int64_t)r * D;
  float s = 0.f;
  for (int j = lane; j < D; j += 32) s += x[j] * w3[j];
  s = warp_sum(s);
  const float wt = sigmoid ? 1.f / (1.f + expf(-s)) : s;
  if (lane == 0) wraw[r] = s, wout[r] = wt;
  const float u = weights_base ? 1.f - wt : wt, ub = 1.f - u;
  const float* b = hb + (int64_t)r * D;
  const float* c = hc + (int64_t)r * D;
  float* o = hm + (int64_t)r * D;
  for (int j = lane; j < D; j += 32) o[j] = ub * b[j] + u * c[j];
}

// Per row r: dhb = (1-u)·dhm, dhc = u·dhm, du = <dhm, hc - hb>, dwraw = ±du (·w(1-w) through
// the sigmoid), t1 = dwraw·w3, dw = dwraw.
__global__ void mix_rows_backward(float* dhb, float* dhc, float* t1, float* dw, const float* dhm, const float* wv,
                                  const float* w3, const float* hb, const float* hc, int n, int D, bool weights_base,
                                  bool sigmoid) {
  const int r = blockIdx.x * kRowsPerBlock + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= n) return;
  const float wt = wv[r];
  const float u = weights_base ? 1.f - wt : wt, ub = 1.f - u;
  const int64_t o = (int64_t)r * D;
  float du = 0.f;
  for (int j = lane; j < D; j += 32) {
    const float d = dhm[o + j];
    du += d * (hc[o + j] - hb[o + j]);
    dhb[o + j] = ub * d;
    dhc[o + j] = u * d;
  }
  du = warp_sum(du);
  float dwr = weights_base ? -du : du;
  if (sigmoid) dwr *= wt * (1.f - wt);
  for (int j = lane; j < D; j += 32) t1[o + j] = dwr * w3[j];
  if (lane == 0) dw[r] = dwr;
}

// db (D) += Σ_rows dy (n, D), each column summed in row order (the CPU's colsum order).
__global__ void colsum_kernel(float* db, const float* dy, int n, int D) {
  QS_GRID_STRIDE(c, D) {
    float s = 0.f;
    for (int r = 0; r < n; r++) s += dy[(int64_t)r * D + c];
    db[c] += s;
  }
}

// dst (n, D) = f · src[rows[k]]
__global__ void gather_rows_kernel(float* dst, const float* src, const int64_t* rows, int64_t n, int D, float f) {
  QS_GRID_STRIDE(e, n * D) dst[e] = f * src[rows[e / D] * D + e % D];
}

// dst[rows[k]] = f · vec
__global__ void fill_rows_kernel(float* dst, const float* vec, const int64_t* rows, int64_t n, int D, float f) {
  QS_GRID_STRIDE(e, n * D) dst[rows[e / D] * D + e % D] = f * vec[e % D];
}

// out (D) += f · Σ_k src[rows[k]]: one thread per column, k in order (the CPU's order)
__global__ void sum_rows_kernel(float* out, const float* src, const int64_t* rows, int64_t n, int D, float f) {
  QS_GRID_STRIDE(j, D) {
    float s = 0.f;
    for (int64_t k = 0; k < n; k++) s += src[rows[k] * D + j];
    out[j] += f * s;
  }
}

// dst[dest[j]] += f · Σ_q src[from[q]] over q in [start[j], start[j+1]): one thread per
// (destination, column), its sources in list order (the CPU's order)
__global__ void scatter_add_rows_kernel(float* dst, const float* src, const int64_t* dest, const int64_t* start,
                                        const int64_t* from, int64_t m, int D, float f) {
  QS_GRID_STRIDE(e, m * D) {
    const int64_t j = e / D;
    const int c = (int)(e % D);
    float s = 0.f;
    for (int64_t q = start[j]; q < start[j + 1]; q++) s += src[from[q] * D + c];
    dst[dest[j] * D + c] += f * s;
  }
}

int row_blocks(int n) { return (n + kRowsPerBlock - 1) / kRowsPerBlock; }

}  // namespace

Status mixing_forward(const cpu::MixingActs<float>& a, const float* hb, const float* hc,
                      const cpu::MixingWeights<float>& w, int n, int D, bool weights_base, bool sigmoid, void* stream) {
  if (n <= 0) return Status::Ok();
  cudaStream_t st = (cudaStream_t)stream;
  // z1 = hb · W1[:, :D]ᵀ + hc · W1[:, D:]ᵀ + b1   (W1 (D, 2D): row stride 2D)
  QS_RETURN_IF_ERROR(gemm(false, true, n, D, D, 1.f, hb, D, w.w1, 2 * D, 0.f, a.z1, D, stream));
  QS_RETURN_IF_ERROR(gemm_bias(false, true, n, D, D, 1.f, hc, D, w.w1 + D, 2 * D, 1.f, a.z1, D, w.b1, stream));
  QS_RETURN_IF_ERROR(relu_forward(a.a1, a.z1, (int64_t)n * D, stream));
  QS_RETURN_IF_ERROR(gemm_bias(false, true, n, D, D, 1.f, a.a1, D, w.w2, D, 0.f, a.z2, D, w.b2, stream));
  QS_RETURN_IF_ERROR(relu_forward(a.a2, a.z2, (int64_t)n * D, stream));
  mix_rows_forward<<<row_blocks(n), kBlock, 0, st>>>(a.wraw, a.w, a.hm, a.a2, w.w3, hb, hc, n, D, weights_base, sigmoid);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status mixing_backward(float* dhb, float* dhc, const cpu::MixingGrads<float>& g, float* dhm, float* t1, float* dw,
                       const cpu::MixingActs<float>& a, const float* hb, const float* hc,
                       const cpu::MixingWeights<float>& w, int n, int D, bool weights_base, bool sigmoid, void* stream) {
  if (n <= 0) return Status::Ok();
  cudaStream_t st = (cudaStream_t)stream;
  const size_t bytes = sizeof(float) * (size_t)n * D;
  mix_rows_backward<<<row_blocks(n), kBlock, 0, st>>>(dhb, dhc, t1, dw, dhm, a.w, w.w3, hb, hc, n, D, weights_base,
                                                      sigmoid);
  QS_CUDA_CHECK_LAUNCH(stream);
  // w3 (1, D) += dwrawᵀ · a2
  if (g.w3) QS_RETURN_IF_ERROR(gemm(true, false, 1, D, n, 1.f, dw, 1, a.a2, D, 1.f, g.w3, D, stream));
  // dz2 = relu'(z2) · da2 (into dhm, free now; relu_backward adds)
  QS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dhm, 0, bytes, st));
  QS_RETURN_IF_ERROR(relu_backward(dhm, a.z2, t1, (int64_t)n * D, stream));
  if (g.w2) QS_RETURN_IF_ERROR(gemm(true, false, D, D, n, 1.f, dhm, D, a.a1, D, 1.f, g.w2, D, stream));
  if (g.b2) {
    colsum_kernel<<<grid_for(D), kBlock, 0, st>>>(g.b2, dhm, n, D);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  // da1 = dz2 · W2 (into t1), dz1 = relu'(z1) · da1 (into dhm)
  QS_RETURN_IF_ERROR(gemm(false, false, n, D, D, 1.f, dhm, D, w.w2, D, 0.f, t1, D, stream));
  QS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dhm, 0, bytes, st));
  QS_RETURN_IF_ERROR(relu_backward(dhm, a.z1, t1, (int64_t)n * D, stream));
  if (g.w1) {
    QS_RETURN_IF_ERROR(gemm(true, false, D, D, n, 1.f, dhm, D, hb, D, 1.f, g.w1, 2 * D, stream));
    QS_RETURN_IF_ERROR(gemm(true, false, D, D, n, 1.f, dhm, D, hc, D, 1.f, g.w1 + D, 2 * D, stream));
  }
  if (g.b1) {
    colsum_kernel<<<grid_for(D), kBlock, 0, st>>>(g.b1, dhm, n, D);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  QS_RETURN_IF_ERROR(gemm(false, false, n, D, D, 1.f, dhm, D, w.w1, 2 * D, 1.f, dhb, D, stream));
  return gemm(false, false, n, D, D, 1.f, dhm, D, w.w1 + D, 2 * D, 1.f, dhc, D, stream);
}

Status gather_rows(float* dst, const float* src, const int64_t* rows, int64_t n, int D, float f, void* stream) {
  if (n <= 0 || D <= 0) return Status::Ok();
  gather_rows_kernel<<<grid_for(n * D), kBlock, 0, (cudaStream_t)stream>>>(dst, src, rows, n, D, f);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status fill_rows(float* dst, const float* vec, const int64_t* rows, int64_t n, int D, float f, void* stream) {
  if (n <= 0 || D <= 0) return Status::Ok();
  fill_rows_kernel<<<grid_for(n * D), kBlock, 0, (cudaStream_t)stream>>>(dst, vec, rows, n, D, f);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status sum_rows(float* out, const float* src, const int64_t* rows, int64_t n, int D, float f, void* stream) {
  if (D <= 0) return Status::Ok();
  sum_rows_kernel<<<grid_for(D), kBlock, 0, (cudaStream_t)stream>>>(out, src, rows, n, D, f);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status scatter_add_rows(float* dst, const float* src, const int64_t* dest, const int64_t* start, const int64_t* from,
                        int64_t m, int D, float f, void* stream) {
  if (m <= 0 || D <= 0) return Status::Ok();
  scatter_add_rows_kernel<<<grid_for(m * D), kBlock, 0, (cudaStream_t)stream>>>(dst, src, dest, start, from, m, D, f);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
