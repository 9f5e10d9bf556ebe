// gemm.cu: CUDA twin of native/cpu/gemm.cpp (f32), our own tiled kernel (no cuBLAS).
//
//   C[M,N] = alpha * op(A) · op(B) + beta * C     (+ bias[N] per column, for linear.cu)
//
// One 256-thread block computes a 64x64 tile of C with tile_gemm.cuh's routine: 16 x 16
// threads, 4x4 outputs each, K walked in steps of 16 through shared memory. The summation
// order is fixed by the shapes alone, so results are bit-identical from run to run. Transposes
// are expressed as strides of StridedMat (no copy). beta = 0 overwrites C without reading it
// (NaNs in C are not propagated), as the CPU contract says.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/tile_gemm.cuh"

namespace qs::cuda {

constexpr int kGemmTile = 64, kGemmDepth = 16;

struct GemmArgs {
  bool trans_a, trans_b;
  int batch, M, N, K;
  float alpha, beta;
  const float* A; int lda; int64_t stride_a;
  const float* B; int ldb; int64_t stride_b;
  float* C; int ldc; int64_t stride_c;
  const float* bias;  // (N) or null
};

// grid (ceil(N/64), ceil(M/64), min(batch, 65535)); blockIdx.z strides over the batch.
__global__ void __launch_bounds__(kTileThreads) gemm_kernel1(GemmArgs g) {
  __shared__ float as[kGemmTile][kGemmDepth + 1], bs[kGemmTile][kGemmDepth + 1];
  const int r0 = blockIdx.y * kGemmTile, c0 = blockIdx.x * kGemmTile;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int64_t b = blockIdx.z; b < g.batch; b += gridDim.z) {
    // rows of op(A): A[M,K] (i·lda + k) or A[K,M]ᵀ (k·lda + i)
    StridedMat a{g.A + b * g.stride_a, g.trans_a ? 1 : g.lda, g.trans_a ? g.lda : 1, g.M, g.K};
    // columns of op(B), depth second: B[K,N] (k·ldb + j) or B[N,K]ᵀ (j·ldb + k)
    StridedMat bt{g.B + b * g.stride_b, g.trans_b ? g.ldb : 1, g.trans_b ? 1 : g.ldb, g.N, g.K};
    float acc[kGemmTile / 16][kGemmTile / 16] = {};
    tile_gemm<kGemmTile, kGemmTile, kGemmDepth>(acc, as, bs, a, bt, r0, c0);
    float* C = g.C + b * g.stride_c;
    for (int i = 0; i < kGemmTile / 16; i++) {
      const int r = r0 + tr + 16 * i;
      if (r >= g.M) continue;
      for (int j = 0; j < kGemmTile / 16; j++) {
        const int c = c0 + tc + 16 * j;
        if (c >= g.N) continue;
        float v = g.alpha * acc[i][j];
        if (g.bias) v += g.bias[c];
        float& out = C[(int64_t)r * g.ldc + c];
        out = g.beta == 0.f ? v : v + g.beta * out;
      }
    }
  }
}

static Status launch_gemm(const GemmArgs& g, void* stream) {
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return Status::Ok();
  dim3 grid((g.N + kGemmTile - 1) / kGemmTile, (g.M + kGemmTile - 1) / kGemmTile, g.batch < 65535 ? g.batch : 65535);
  gemm_kernel1<<<grid, kTileThreads, 0, (cudaStream_t)stream>>>(g);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status gemm_bias(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc, const float* bias, void* stream) {
  return launch_gemm({trans_a, trans_b, 1, M, N, K, alpha, beta, A, lda, 0, B, ldb, 0, C, ldc, 0, bias}, stream);
}

Status gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc, void* stream) {
  return gemm_bias(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, stream);
}

Status gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, float alpha, const float* A, int lda,
                    int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc,
                    int64_t stride_c, void* stream) {
  return launch_gemm({trans_a, trans_b, batch, M, N, K, alpha, beta, A, lda, stride_a, B, ldb, stride_b, C, ldc,
                      stride_c, nullptr},
                     stream);
}

}  // namespace qs::cuda
