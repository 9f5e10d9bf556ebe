// gemm_tc.cuh: our own tensor-core GEMM (WMMA, sm_80+), used when cuBLAS is absent or disabled,
// so that bf16 / f16 products (and f32 with TF32 or bf16 math) never depend on cuBLAS.
//
//   C[b][M,N] = alpha op(A) op(B) + bias + beta C      inputs bf16 | f16 | f32 (as TF32, or
//                                                     rounded to bf16), f32 accumulation,
//                                                     C of any gemm dtype
//
// One 256-thread block (8 warps) computes a 128 x 128 tile of C. The warps form a 2 x 4 grid,
// each owning 64 x 32 of the tile: 4 x 2 WMMA accumulators of 16 x 16. K is walked in steps of
// 64 bytes of T (32 bf16/f16 elements, 16 f32), double-buffered in shared memory: while the
// warps multiply stage s, the copy of the next K step into stage s^1 is in flight (cp.async,
// 16 bytes per thread per chunk, no register staging).
//
// Transposes are compile-time: each operand tile is stored in shared memory exactly as it lies
// in global memory (rows of the stored matrix), and the WMMA fragment layout says how to read
// it: A (M,K) row-major is a row_major matrix_a; A stored (K,M) is a col_major matrix_a; the
// same for B. So the copy is always a plain 2-D block copy, with no transposition.
//
// Mixed precision (f32 in memory, bf16 compute: GemmMath::Bf16): Src = float, T = bf16. The
// tiles are fetched from global memory into registers (16-byte float4 loads, 16 f32 per operand
// per thread) before the multiply of the current stage, and converted to bf16 (round to nearest
// even) while being stored into the other stage after it (cp.async copies bytes and cannot
// convert). From shared memory on it is the bf16 kernel; the K step is 32 elements as for bf16.
//
// Edges: any M, N, K and leading dimension. A 16-byte chunk is copied with cp.async only when it
// lies wholly inside the matrix and the launch found the operand 16-byte aligned (base pointer,
// leading dimension and batch stride; `vec_a` / `vec_b`); every other chunk is loaded element by
// element with bounds checks, zero-filling outside the matrix (zeros add nothing to the dot
// products). The epilogue goes through a per-warp shared scratch so that each element of C is
// written (with bounds checks) by exactly one thread. Summation order depends only on the shape:
// the results are the same from run to run.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "cuda/gemm_epilogue.cuh"

namespace qs::cuda {

constexpr int kTcBM = 128, kTcBN = 128;  // block tile of C
constexpr int kTcThreads = 256;          // 8 warps: 2 (rows) x 4 (columns), 64 x 32 each
constexpr int kTcRowBytes = 64;          // K step, in bytes of T
constexpr int kTcPadBytes = 16;          // row padding of the shared tiles (bank spread; keeps 16-B alignment)
constexpr int kTcSlotBytes = kTcBM * (kTcRowBytes + kTcPadBytes);  // one operand tile, 10240 bytes
constexpr int kTcSmemBytes = 2 * 2 * kTcSlotBytes;                 // 2 stages x (A, B): 40960 < 48 KiB static
constexpr int kTcScratchLd = 20;  // epilogue scratch: 16 x 16 f32 per warp, row stride 20 (multiple of 4)
static_assert(8 * 16 * kTcScratchLd * 4 <= kTcSmemBytes, "epilogue scratch fits in the pipeline's shared memory");

// The WMMA element type and K of one mma for each input type.
template <typename T> struct TcTraits;
template <> struct TcTraits<__nv_bfloat16> { using Frag = __nv_bfloat16; static constexpr int kWK = 16; };
template <> struct TcTraits<__half> { using Frag = __half; static constexpr int kWK = 16; };
template <> struct TcTraits<float> { using Frag = nvcuda::wmma::precision::tf32; static constexpr int kWK = 8; };

template <typename T> __device__ __forceinline__ T tc_zero();
template <> __device__ __forceinline__ __nv_bfloat16 tc_zero<__nv_bfloat16>() { return __float2bfloat16_rn(0.f); }
template <> __device__ __forceinline__ __half tc_zero<__half>() { return __float2half_rn(0.f); }
template <> __device__ __forceinline__ float tc_zero<float>() { return 0.f; }

// 16-byte global -> shared copy; asynchronous (cp.async.cg, bypassing L1) on sm_80+.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = (unsigned)__cvta_generic_to_shared(smem_dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *(uint4*)smem_dst = *(const uint4*)gmem_src;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most one committed group (the newest) is still in flight.
__device__ __forceinline__ void cp_async_wait_all_but_newest() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

// s[r * kLds + c] = g[(row0 + r) * ld + col0 + c] for r < kRows, c < kCols, zero outside the
// stored matrix (rows x cols). Chunks of 16 bytes, consecutive threads on consecutive chunks of a
// row (coalesced). col0 is a multiple of the chunk, so with `vec` every in-bounds chunk is aligned.
template <typename T, int kRows, int kCols, int kLds>
__device__ __forceinline__ void tc_load_tile(T* s, const T* g, int64_t ld, int rows, int cols, int row0, int col0,
                                             bool vec) {
  constexpr int kE = 16 / (int)sizeof(T), kChunksPerRow = kCols / kE, kChunks = kRows * kChunksPerRow;
  static_assert(kCols % kE == 0 && kChunks % kTcThreads == 0, "whole chunks, every thread the same count");
  for (int ch = threadIdx.x; ch < kChunks; ch += kTcThreads) {
    const int r = ch / kChunksPerRow, c = (ch % kChunksPerRow) * kE;
    const int gr = row0 + r, gc = col0 + c;
    T* dst = s + r * kLds + c;
    if (vec && gr < rows && gc + kE <= cols) {
      cp_async16(dst, g + (int64_t)gr * ld + gc);
    } else {
      for (int e = 0; e < kE; e++) dst[e] = (gr < rows && gc + e < cols) ? g[(int64_t)gr * ld + gc + e] : tc_zero<T>();
    }
  }
}

// One f32 operand tile (kRows x kCols of the stored matrix) on its way to a bf16 shared tile:
// fetch() loads this thread's chunks of 4 consecutive f32 into registers (one float4 when the
// chunk is inside the matrix and `vec`, else element by element, zero outside), stash() rounds
// them to bf16 (RNE) and stores them at s[r * kLds + c]. The chunk -> thread map is
// tc_load_tile's, with 4-element chunks; col0 is a multiple of 4, so with `vec` (f32 base, ld
// and batch stride 16-byte aligned) every in-bounds chunk is float4-aligned, and each 8-byte
// bf16 store is aligned (c and kLds are multiples of 4 elements).
template <int kRows, int kCols, int kLds>
struct TcF32Staging {
  static constexpr int kChunksPerRow = kCols / 4, kPerThread = kRows * kChunksPerRow / kTcThreads;
  static_assert(kCols % 4 == 0 && (kRows * kChunksPerRow) % kTcThreads == 0 && kLds % 4 == 0, "whole chunks");
  float4 v[kPerThread];

  __device__ __forceinline__ void fetch(const float* g, int64_t ld, int rows, int cols, int row0, int col0, bool vec) {
    #pragma unroll
    for (int i = 0; i < kPerThread; i++) {
      const int ch = threadIdx.x + i * kTcThreads;
      const int gr = row0 + ch / kChunksPerRow, gc = col0 + (ch % kChunksPerRow) * 4;
      const float* p = g + (int64_t)gr * ld + gc;
      if (vec && gr < rows && gc + 4 <= cols) {
        v[i] = *(const float4*)p;
      } else {
        const bool in = gr < rows;
        v[i] = make_float4(in && gc < cols ? p[0] : 0.f, in && gc + 1 < cols ? p[1] : 0.f,
                           in && gc + 2 < cols ? p[2] : 0.f, in && gc + 3 < cols ? p[3] : 0.f);
      }
    }
  }

  __device__ __forceinline__ void stash(__nv_bfloat16* s) const {
    #pragma unroll
    for (int i = 0; i < kPerThread; i++) {
      const int ch = threadIdx.x + i * kTcThreads;
      const int r = ch / kChunksPerRow, c = (ch % kChunksPerRow) * 4;
      union {
        __nv_bfloat162 pair[2];  // pair[0].x = the first argument, at the lowest address
        uint2 bits;
      } four;
      four.pair[0] = __floats2bfloat162_rn(v[i].x, v[i].y);
      four.pair[1] = __floats2bfloat162_rn(v[i].z, v[i].w);
      *(uint2*)(s + r * kLds + c) = four.bits;  // one 8-byte store
    }
  }
};

// grid (ceil(N / 128), ceil(M / 128), min(batch, 65535)); blockIdx.z strides over the batch.
// T: the type in shared memory and the WMMA fragments; Src: the type of A and B in global memory,
// T itself, or float with T = bf16 (the f32-in / bf16-compute variant).
template <typename T, bool kTransA, bool kTransB, typename Src = T>
__global__ void __launch_bounds__(kTcThreads) gemm_tc_kernel(GemmParams g) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using Frag = typename TcTraits<T>::Frag;
  constexpr int kWK = TcTraits<T>::kWK;
  constexpr int kBK = kTcRowBytes / (int)sizeof(T), kPad = kTcPadBytes / (int)sizeof(T);
  // Shared tiles, as stored in global memory: A (BM, BK) or, transposed, (BK, BM); B (BK, BN) or (BN, BK).
  constexpr int kLdA = kTransA ? kTcBM + kPad : kBK + kPad;
  constexpr int kLdB = kTransB ? kBK + kPad : kTcBN + kPad;
  static_assert((kTransA ? kBK * kLdA : kTcBM * kLdA) * (int)sizeof(T) <= kTcSlotBytes, "A tile fits its slot");
  static_assert((kTransB ? kTcBN * kLdB : kBK * kLdB) * (int)sizeof(T) <= kTcSlotBytes, "B tile fits its slot");
  using LayoutA = typename std::conditional<kTransA, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<kTransB, wmma::col_major, wmma::row_major>::type;
  constexpr bool kConvert = !std::is_same<Src, T>::value;
  static_assert(!kConvert || (std::is_same<Src, float>::value && std::is_same<T, __nv_bfloat16>::value),
                "the only converting variant is f32 in global memory, bf16 in shared memory");

  // 128-byte aligned: WMMA needs 32-byte aligned fragment pointers, cp.async 16-byte destinations.
  __shared__ __align__(128) unsigned char smem[kTcSmemBytes];
  auto a_tile = [&](int stage) { return (T*)(smem + (2 * stage) * kTcSlotBytes); };
  auto b_tile = [&](int stage) { return (T*)(smem + (2 * stage + 1) * kTcSlotBytes); };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4;  // this warp's 64 x 32 sub-tile
  const int m0 = blockIdx.y * kTcBM, n0 = blockIdx.x * kTcBN;
  const int k_steps = (g.K + kBK - 1) / kBK;

  for (int64_t b = blockIdx.z; b < g.batch; b += gridDim.z) {
    const Src* A = (const Src*)((const char*)g.A + b * g.stride_a_bytes);
    const Src* B = (const Src*)((const char*)g.B + b * g.stride_b_bytes);
    void* C = (char*)g.C + b * g.stride_c_bytes;

    // K step `ks` on its way into `stage` (block-uniform arguments), in two halves:
    // fetch() starts it: cp.async copies straight into the stage, or (kConvert) f32 loads into
    // registers; stash() finishes it: nothing, or (kConvert) the bf16 stores into the stage.
    TcF32Staging<kTransA ? kBK : kTcBM, kTransA ? kTcBM : kBK, kLdA> a_regs;  // used only when kConvert
    TcF32Staging<kTransB ? kTcBN : kBK, kTransB ? kBK : kTcBN, kLdB> b_regs;
    auto fetch = [&](int stage, int ks) {
      const int k0 = ks * kBK;
      if constexpr (kConvert) {
        if (kTransA) a_regs.fetch((const float*)A, g.lda, g.K, g.M, k0, m0, g.vec_a);
        else a_regs.fetch((const float*)A, g.lda, g.M, g.K, m0, k0, g.vec_a);
        if (kTransB) b_regs.fetch((const float*)B, g.ldb, g.N, g.K, n0, k0, g.vec_b);
        else b_regs.fetch((const float*)B, g.ldb, g.K, g.N, k0, n0, g.vec_b);
      } else {
        if (kTransA) tc_load_tile<T, kBK, kTcBM, kLdA>(a_tile(stage), (const T*)A, g.lda, g.K, g.M, k0, m0, g.vec_a);
        else tc_load_tile<T, kTcBM, kBK, kLdA>(a_tile(stage), (const T*)A, g.lda, g.M, g.K, m0, k0, g.vec_a);
        if (kTransB) tc_load_tile<T, kTcBN, kBK, kLdB>(b_tile(stage), (const T*)B, g.ldb, g.N, g.K, n0, k0, g.vec_b);
        else tc_load_tile<T, kBK, kTcBN, kLdB>(b_tile(stage), (const T*)B, g.ldb, g.K, g.N, k0, n0, g.vec_b);
      }
    };
    auto stash = [&](int stage) {
      if constexpr (kConvert) {
        a_regs.stash((__nv_bfloat16*)a_tile(stage));
        b_regs.stash((__nv_bfloat16*)b_tile(stage));
      }
    };

    wmma::fragment<wmma::accumulator, 16, 16, kWK, float> acc[4][2];
    #pragma unroll
    for (int i = 0; i < 4; i++)
      #pragma unroll
      for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

    if (k_steps > 0) {
      fetch(0, 0);
      stash(0);
    }
    cp_async_commit();
    for (int ks = 0; ks < k_steps; ks++) {
      // Stage ks^1 was last read in step ks - 1, which ended with __syncthreads(): free to refill
      // (kConvert: its registers are loading during this step's multiply, stored after it).
      if (ks + 1 < k_steps) fetch((ks + 1) & 1, ks + 1);
      cp_async_commit();               // (possibly empty group: keeps the count uniform; kConvert: always empty)
      cp_async_wait_all_but_newest();  // this thread's copies of step ks have landed
      __syncthreads();                 // ... and everyone else's (plain stores of edge chunks too)
      const T* as = a_tile(ks & 1);
      const T* bs = b_tile(ks & 1);
      #pragma unroll
      for (int kk = 0; kk < kBK; kk += kWK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kWK, Frag, LayoutA> fa[4];
        wmma::fragment<wmma::matrix_b, 16, 16, kWK, Frag, LayoutB> fb[2];
        #pragma unroll
        for (int i = 0; i < 4; i++) {
          const int m = wm * 64 + i * 16;  // element (m, k) at m * ld + k, or k * ld + m when stored (K, M)
          wmma::load_matrix_sync(fa[i], as + (kTransA ? kk * kLdA + m : m * kLdA + kk), kLdA);
          if constexpr (sizeof(T) == 4)  // TF32: round the f32 values to nearest (not truncate)
            for (int t = 0; t < fa[i].num_elements; t++) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
        #pragma unroll
        for (int j = 0; j < 2; j++) {
          const int n = wn * 32 + j * 16;  // element (k, n) at k * ld + n, or n * ld + k when stored (N, K)
          wmma::load_matrix_sync(fb[j], bs + (kTransB ? n * kLdB + kk : kk * kLdB + n), kLdB);
          if constexpr (sizeof(T) == 4)
            for (int t = 0; t < fb[j].num_elements; t++) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
        #pragma unroll
        for (int i = 0; i < 4; i++)
          #pragma unroll
          for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      if (ks + 1 < k_steps) stash((ks + 1) & 1);  // the other stage: nobody reads it in this step
      __syncthreads();  // the stash is visible to step ks + 1; step ks + 1 refills this stage
    }

    // Epilogue: each accumulator goes through this warp's 16 x 16 scratch (the pipeline's shared
    // memory, free now: the loop ended with __syncthreads and no copy is outstanding).
    float* scratch = (float*)smem + warp * 16 * kTcScratchLd;
    #pragma unroll
    for (int i = 0; i < 4; i++) {
      #pragma unroll
      for (int j = 0; j < 2; j++) {
        wmma::store_matrix_sync(scratch, acc[i][j], kTcScratchLd, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int r = e / 16, c = e % 16;
          const int gr = m0 + wm * 64 + i * 16 + r, gc = n0 + wn * 32 + j * 16 + c;
          if (gr < g.M && gc < g.N) gemm_write(g, C, gr, gc, scratch[r * kTcScratchLd + c]);
        }
        __syncwarp();  // the scratch is rewritten by the next accumulator
      }
    }
    __syncthreads();  // the next batch's copies overwrite the scratch
  }
#endif
}

}  // namespace qs::cuda
