// gemm.cu: the GEMM dispatcher of the CUDA backend, the CUDA twin of native/cpu/gemm.cpp.
//
//   C[b][M,N] = alpha * op(A[b]) · op(B[b]) + bias[N] + beta * C[b]     (beta = 0 overwrites C)
//
// gemm_ex() takes f32, bf16 or f16 inputs (f32 accumulation; C f32 or the input type) and
// picks one of three backends (kernels_nn.h documents the choice):
//   cublas       cuBLAS through blas_dyn.cpp (dlopen()ed; cublasGemmEx / ...StridedBatchedEx)
//   tensor_core  our WMMA kernel (gemm_tc.cuh): bf16 / f16, and f32 with TF32 or bf16 math
//   simt         our f32 kernel below: exact f32 FMAs, the reference path
// so correctness never depends on cuBLAS. The f32 launchers gemm / gemm_batched / gemm_bias
// (the op layer and linear.cu) are gemm_ex with f32 everywhere and the default options, so
// their math (Exact, Tf32 or Bf16: f32 inputs rounded to bf16 for the multiply, the mixed
// precision of the f32 model) is the calling thread's (set_thread_gemm_math, the engine's
// precision) or else the process default (QUIETSTAR_MATMUL / QUIETSTAR_TF32).
//
// The SIMT kernel: one 256-thread block computes a 64x64 tile of C with tile_gemm.cuh's
// routine: 16 x 16 threads, 4x4 outputs each, K walked in steps of 16 through shared memory.
// Transposes are strides of StridedMat (no copy). Both own kernels fix their summation order
// by the shapes alone, so their results are the same from run to run.
#include <cstdlib>
#include <cstring>

#include "cuda/blas_dyn.h"
#include "cuda/common.cuh"
#include "cuda/gemm_epilogue.cuh"
#include "cuda/gemm_tc.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"
#include "cuda/tile_gemm.cuh"
#include "quietstar/cuda_backend.h"

namespace qs::cuda {

constexpr int kGemmTile = 64, kGemmDepth = 16;
constexpr int kMaxGridY = 65535;

// ---------------------------------------------------------------------------------------------
// Kernels

// f32 inputs. grid (ceil(N/64), ceil(M/64), min(batch, 65535)); blockIdx.z strides over the batch.
__global__ void __launch_bounds__(kTileThreads) gemm_simt_kernel(GemmParams g) {
  __shared__ float as[kGemmTile][kGemmDepth + 1], bs[kGemmTile][kGemmDepth + 1];
  const int r0 = blockIdx.y * kGemmTile, c0 = blockIdx.x * kGemmTile;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  for (int64_t b = blockIdx.z; b < g.batch; b += gridDim.z) {
    const float* A = (const float*)((const char*)g.A + b * g.stride_a_bytes);
    const float* B = (const float*)((const char*)g.B + b * g.stride_b_bytes);
    void* C = (char*)g.C + b * g.stride_c_bytes;
    // rows of op(A): A[M,K] (i·lda + k) or A[K,M]ᵀ (k·lda + i)
    StridedMat a{A, g.trans_a ? 1 : g.lda, g.trans_a ? g.lda : 1, g.M, g.K};
    // columns of op(B), depth second: B[K,N] (k·ldb + j) or B[N,K]ᵀ (j·ldb + k)
    StridedMat bt{B, g.trans_b ? g.ldb : 1, g.trans_b ? 1 : g.ldb, g.N, g.K};
    float acc[kGemmTile / 16][kGemmTile / 16] = {};
    tile_gemm<kGemmTile, kGemmTile, kGemmDepth>(acc, as, bs, a, bt, r0, c0);  // ends with __syncthreads
    for (int i = 0; i < kGemmTile / 16; i++) {
      const int r = r0 + tr + 16 * i;
      if (r >= g.M) continue;
      for (int j = 0; j < kGemmTile / 16; j++) {
        const int c = c0 + tc + 16 * j;
        if (c < g.N) gemm_write(g, C, r, c, acc[i][j]);
      }
    }
  }
}

// For the cuBLAS path with a bias (cuBLAS's GEMM has no bias epilogue):
// C[b][r, c] = bias[c] + beta C[b][r, c] (beta = 0: C not read); cuBLAS then adds alpha op(A) op(B)
// with beta = 1. With a bf16 / f16 C this rounds bias + beta C to C's dtype once more than our
// kernels do (cuBLASLt's bias epilogue would avoid it; the linear layers are f32 today).
__global__ void gemm_bias_prefill_kernel1(GemmParams g) {
  const int64_t per_batch = (int64_t)g.M * g.N;
  QS_GRID_STRIDE(e, per_batch * g.batch) {
    const int64_t b = e / per_batch, rc = e % per_batch;
    const int r = (int)(rc / g.N), c = (int)(rc % g.N);
    void* C = (char*)g.C + b * g.stride_c_bytes;
    const int64_t i = (int64_t)r * g.ldc + c;
    float v = gemm_load(g.bias, g.bias_dtype, c);
    if (g.beta != 0.f) v += g.beta * gemm_load(C, g.c_dtype, i);
    gemm_store(C, g.c_dtype, i, v);
  }
}

// ---------------------------------------------------------------------------------------------
// Backend choice

static thread_local const char* t_last_backend = "none";
const char* gemm_backend_name() { return t_last_backend; }

// cuBLAS is loaded on the first GEMM that could use it (unless the addon's backendInfo() loaded
// it first, with its extra folders); load_blas() itself honours QUIETSTAR_CUBLAS=0.
static bool cublas_available() {
  static const bool found = load_blas({}).found && blas_table().loaded;
  return found;
}

// The process default math: QUIETSTAR_MATMUL=f32 | tf32 | bf16, else QUIETSTAR_TF32=1
// (the older switch) -> Tf32, else Exact. Read once; an unknown QUIETSTAR_MATMUL is ignored here
// (the engine rejects it when it resolves its precision option).
static GemmMath env_gemm_math() {
  static const GemmMath math = [] {
    if (const char* m = std::getenv("QUIETSTAR_MATMUL"); m && *m) {
      if (std::strcmp(m, "f32") == 0) return GemmMath::Exact;
      if (std::strcmp(m, "tf32") == 0) return GemmMath::Tf32;
      if (std::strcmp(m, "bf16") == 0) return GemmMath::Bf16;
    }
    const char* t = std::getenv("QUIETSTAR_TF32");
    return t && std::strcmp(t, "1") == 0 ? GemmMath::Tf32 : GemmMath::Exact;
  }();
  return math;
}

// Default on this thread: unset (Default) until set_thread_gemm_math() gives one.
static thread_local GemmMath t_math = GemmMath::Default;
void set_thread_gemm_math(GemmMath math) { t_math = math; }
GemmMath thread_gemm_math() { return t_math != GemmMath::Default ? t_math : env_gemm_math(); }

const char* gemm_default_backend() { return cublas_available() ? "cublas" : "own"; }

// Tensor cores through WMMA bf16 / f16 / tf32 need sm_80 (Ampere) or newer.
static Status device_has_tensor_cores(bool* yes) {
  int device = 0, major = 0;
  QS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  QS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  *yes = major >= 8;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Launchers

static bool aligned16(const void* p, int64_t ld_elems, int64_t stride_bytes, size_t elem, int batch) {
  return ((uintptr_t)p % 16 == 0) && ((ld_elems * (int64_t)elem) % 16 == 0) && (batch == 1 || stride_bytes % 16 == 0);
}

// T: the tensor-core input type; Src: A and B in memory (T, or float rounded to T = bf16).
template <typename T, typename Src = T>
static Status launch_tc(const GemmParams& g, void* stream) {
  dim3 grid((g.N + kTcBN - 1) / kTcBN, (g.M + kTcBM - 1) / kTcBM, g.batch < 65535 ? g.batch : 65535);
  QS_CHECK_ARG(grid.y <= (unsigned)kMaxGridY, "gemm: M = %d is too large for the tensor-core kernel", g.M);
  cudaStream_t s = (cudaStream_t)stream;
  if (!g.trans_a && !g.trans_b) gemm_tc_kernel<T, false, false, Src><<<grid, kTcThreads, 0, s>>>(g);
  else if (!g.trans_a && g.trans_b) gemm_tc_kernel<T, false, true, Src><<<grid, kTcThreads, 0, s>>>(g);
  else if (g.trans_a && !g.trans_b) gemm_tc_kernel<T, true, false, Src><<<grid, kTcThreads, 0, s>>>(g);
  else gemm_tc_kernel<T, true, true, Src><<<grid, kTcThreads, 0, s>>>(g);
  QS_CUDA_CHECK_LAUNCH(stream);
  t_last_backend = "tensor_core";
  return Status::Ok();
}

static Status launch_simt(const GemmParams& g, void* stream) {
  dim3 grid((g.N + kGemmTile - 1) / kGemmTile, (g.M + kGemmTile - 1) / kGemmTile, g.batch < 65535 ? g.batch : 65535);
  QS_CHECK_ARG(grid.y <= (unsigned)kMaxGridY, "gemm: M = %d is too large for the SIMT kernel", g.M);
  gemm_simt_kernel<<<grid, kTileThreads, 0, (cudaStream_t)stream>>>(g);
  QS_CUDA_CHECK_LAUNCH(stream);
  t_last_backend = "simt";
  return Status::Ok();
}

static bool gemm_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

Status gemm_ex(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, DType a_dtype, int lda,
               const void* B, DType b_dtype, int ldb, float beta, void* C, DType c_dtype, int ldc,
               const GemmBatch& batch, const GemmOptions& options, void* stream) {
  QS_CHECK_ARG(M >= 0 && N >= 0 && K >= 0 && batch.count >= 0, "gemm: negative size (M %d, N %d, K %d, batch %d)", M,
               N, K, batch.count);
  QS_CHECK_ARG(a_dtype == b_dtype && gemm_dtype(a_dtype), "gemm: A and B must share one of f32, bf16, f16 (got %s, %s)",
               dtype_name(a_dtype), dtype_name(b_dtype));
  QS_CHECK_ARG(c_dtype == DType::F32 || c_dtype == a_dtype, "gemm: C must be f32 or the input dtype %s (got %s)",
               dtype_name(a_dtype), dtype_name(c_dtype));
  QS_CHECK_ARG(!options.bias || gemm_dtype(options.bias_dtype), "gemm: bias dtype %s", dtype_name(options.bias_dtype));
  // Leading dimensions cover a stored row (cuBLAS checks this too; our kernels rely on it).
  QS_CHECK_ARG(M == 0 || K == 0 || lda >= (trans_a ? M : K), "gemm: lda %d < %d", lda, trans_a ? M : K);
  QS_CHECK_ARG(N == 0 || K == 0 || ldb >= (trans_b ? K : N), "gemm: ldb %d < %d", ldb, trans_b ? K : N);
  QS_CHECK_ARG(M == 0 || N == 0 || ldc >= N, "gemm: ldc %d < N %d", ldc, N);
  if (batch.count == 0 || M == 0 || N == 0) return Status::Ok();

  const bool f32_in = a_dtype == DType::F32;
  // f32 inputs: Exact, Tf32 or Bf16 (Default resolved on this thread); other inputs ignore it.
  const GemmMath math = !f32_in ? GemmMath::Exact : options.math == GemmMath::Default ? thread_gemm_math() : options.math;
  const size_t ab_size = dtype_size(a_dtype), c_size = dtype_size(c_dtype);
  GemmParams g{trans_a, trans_b, batch.count, M, N, K, alpha, beta,
               A, lda, batch.stride_a * (int64_t)ab_size,
               B, ldb, batch.stride_b * (int64_t)ab_size,
               C, ldc, batch.stride_c * (int64_t)c_size,
               c_dtype, options.bias, options.bias_dtype, false, false};

  // cuBLAS: on request, or by default when loaded. K = 0 stays with our kernels (cuBLAS rejects
  // the leading dimension 0 such products come with; the result is just beta C + bias).
  bool use_cublas = false;
  if (options.backend == GemmBackend::Cublas) {
    if (!cublas_available()) return QS_ERROR(UNAVAILABLE, "gemm: cuBLAS asked for but not loaded: %s", blas_info().reason.c_str());
    use_cublas = K > 0;
  } else if (options.backend == GemmBackend::Auto) {
    use_cublas = K > 0 && cublas_available();
  }
  if (use_cublas) {
    float blas_beta = beta;
    if (options.bias) {  // C = bias + beta C first, then C += alpha op(A) op(B)
      const int64_t n = (int64_t)M * N * batch.count;
      gemm_bias_prefill_kernel1<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(g);
      QS_CUDA_CHECK_LAUNCH(stream);
      blas_beta = 1.f;
    }
    BlasGemm bg{trans_a, trans_b, batch.count, M, N, K, alpha, blas_beta, A, lda, batch.stride_a, B, ldb,
                batch.stride_b, C, ldc, batch.stride_c, a_dtype, c_dtype, math};
    QS_RETURN_IF_ERROR(blas_gemm(bg, stream));
    t_last_backend = "cublas";
    return Status::Ok();
  }

  bool tensor_cores = false;
  if (!f32_in || math != GemmMath::Exact) QS_RETURN_IF_ERROR(device_has_tensor_cores(&tensor_cores));
  if (f32_in && !tensor_cores) return launch_simt(g, stream);  // exact f32 (also TF32 / bf16 asked for before sm_80)
  if (!tensor_cores)
    return QS_ERROR(UNIMPLEMENTED, "gemm: %s inputs need tensor cores (sm_80+) or cuBLAS", dtype_name(a_dtype));
  g.vec_a = aligned16(A, lda, g.stride_a_bytes, ab_size, batch.count);
  g.vec_b = aligned16(B, ldb, g.stride_b_bytes, ab_size, batch.count);
  switch (a_dtype) {
    case DType::BF16: return launch_tc<__nv_bfloat16>(g, stream);
    case DType::F16: return launch_tc<__half>(g, stream);
    default:  // f32: TF32 fragments, or f32 tiles rounded to bf16 on their way into shared memory
      return math == GemmMath::Bf16 ? launch_tc<__nv_bfloat16, float>(g, stream) : launch_tc<float>(g, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// f32 launchers (the cpu/gemm.h signatures)

Status gemm_bias(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc, const float* bias, void* stream) {
  GemmOptions o;
  o.bias = bias;
  return gemm_ex(trans_a, trans_b, M, N, K, alpha, A, DType::F32, lda, B, DType::F32, ldb, beta, C, DType::F32, ldc,
                 GemmBatch{}, o, stream);
}

Status gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc, void* stream) {
  return gemm_bias(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, nullptr, stream);
}

Status gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, float alpha, const float* A, int lda,
                    int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc,
                    int64_t stride_c, void* stream) {
  return gemm_ex(trans_a, trans_b, M, N, K, alpha, A, DType::F32, lda, B, DType::F32, ldb, beta, C, DType::F32, ldc,
                 GemmBatch{batch, stride_a, stride_b, stride_c}, GemmOptions{}, stream);
}

}  // namespace qs::cuda
