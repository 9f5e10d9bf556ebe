/*
 * gemm.cpp: cache-blocked SGEMM / DGEMM on the CPU, row-major, BLAS semantics (see gemm.h).
 *
 *   C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C
 *
 * The algorithm is the Goto / BLIS one. Five loops around a register-blocked micro-kernel:
 *
 *   for jc in N by NC:                      B panel  op(B)[pc:pc+KC, jc:jc+NC]  -> lives in L3
 *     for pc in K by KC:
 *       pack B panel into NR-column micro-panels  (Bp: [NC/NR][KC][NR])
 *       for ic in M by MC:                  A block  op(A)[ic:ic+MC, pc:pc+KC]  -> lives in L2
 *         pack A block into MR-row micro-panels   (Ap: [MC/MR][KC][MR])
 *         for jr in NC by NR:               B micro-panel KC x NR  -> L1 (L2 at avx512's deep KC)
 *           for ir in MC by MR:             A micro-panel streams from L2
 *             micro-kernel: C[ir:ir+MR, jr:jr+NR] = alpha * Ap·Bp + beta' * C
 *
 * beta' is the caller's beta for the first KC block and 1 for the others, so C is read only
 * when the caller asked for it (beta = 0 never reads C, and NaN garbage there cannot leak in).
 * Packing does all the transposes (trans_a / trans_b), so a micro-kernel sees one layout:
 * per k step, MR consecutive values of A's column and NR consecutive values of B's row.
 * Edges (M % MR, N % NR) are packed with zero padding; the micro-kernel then writes the full
 * tile into a small temporary and only the valid part is copied to C. The transposing packs
 * (A not transposed, B transposed: each micro-panel gathers a column of the source) use 16x16
 * (AVX-512) or 8x8 (AVX2) register transposes; the others are row copies.
 *
 * Micro-kernels (float), chosen at run time by CPUID (isa.h) since the binary targets baseline
 * x86-64:
 *   avx512   MR=14, NR=32: 28 zmm accumulators, 2 zmm loads of B and 14 broadcast loads of A
 *            per k step, i.e. 28 FMAs per 16 loads. Zen 4/5 and Intel with AVX-512. Measured
 *            in isolation on Zen 5 it runs at ~225 GFLOP/s, the core's FMA peak.
 *   avx2     MR=6,  NR=16: 12 ymm accumulators, the classic Haswell shape.
 *   generic  MR=6,  NR=8:  plain C++ the compiler vectorises (SSE2 on baseline x86-64, NEON).
 * double always uses a generic MR=6 x NR=4 kernel: it serves gradient checks on small sizes,
 * where exactness of the blocking logic matters and speed does not.
 *
 * Blocking (maxima; the driver evens them out over the problem so that no block is a sliver):
 *   avx512   KC=1024, MC=112, NC=1024. The textbook choice keeps the KC x NR B micro-panel in
 *            L1 (KC ~ 256), but on Zen 5 the kernel runs at peak even with B streaming from L2
 *            (measured: same 225 GFLOP/s with a 3 MiB B working set), so the deciding costs are
 *            the C read-modify-write per KC block and per-call overhead. Deep KC won ~10%
 *            (187 -> 205-213 GFLOP/s single core; K = 768 becomes one pass over C). The A block
 *            112 x 1024 x 4 B = 448 KiB sits in a 1 MiB L2, the B panel (4 MiB) in L3.
 *   avx2, generic  KC=256, MC=144, NC=3072: classic sizes for the smaller L1/L2 of older cores
 *            (A block 144 KiB within a 256 KiB L2, B micro-panel 16 KiB in L1).
 *
 * Threading: OpenMP only. C is cut into a tm x tn grid of tiles (multiples of MR / NR), one
 * per thread, and each thread runs the serial blocked algorithm on its tile with its own
 * thread-local packing buffers. No barriers; the price is that B is packed tm times and A tn
 * times, which the grid choice keeps small (it is O(K·(M+N)) against O(M·N·K) work).
 */
#include "cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/isa.h"
#include "cpu/parallel.h"

#if QS_X86
// GCC 12's AVX-512 headers seed some intrinsics with a self-initialised `__Y = __Y`, which
// -Wall reports as (maybe-)uninitialized wherever they inline. Not our code: silence it there.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace qs::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Blocking parameters and small helpers

// Per family (see the header comment for the reasoning and measurements):
//   KC: depth of one packed block; MC: rows of the packed A block (L2); NC: columns of the
//   packed B panel (L3). The driver evens them out over the actual problem size.
struct Blocking {
  int kc, mc, nc;
};
constexpr Blocking BLOCK_AVX512 = {1024, 112, 1024};
constexpr Blocking BLOCK_SMALL_L2 = {256, 144, 3072};  // avx2 / generic: fits a 256 KiB L2
constexpr int MAX_MR = 16;  // largest micro-tile any kernel uses (for the edge temporary)
constexpr int MAX_NR = 32;

// Below this many multiply-adds (~5 us on one Zen core) a parallel region costs about what it
// saves: waking the pool and splitting already-small tiles. Measured break-even is ~0.5-1 M.
constexpr double SERIAL_WORK = 1 << 20;
// Each thread should get at least this much work (multiply-adds) before we add another.
constexpr double MIN_WORK_PER_THREAD = 1 << 19;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int round_up(int a, int b) { return ceil_div(a, b) * b; }

// Split `total` into blocks of at most `max_blk`, evened out and rounded up to `unit`:
// K = 600 with max 256 gives 3 x 200 rather than 256 + 256 + 88; K = 300 gives 152 + 148.
inline int even_block(int total, int max_blk, int unit) {
  int nblk = ceil_div(total, max_blk);
  return std::min(round_up(ceil_div(total, nblk), unit), round_up(max_blk, unit));
}

// Thread-local, 64-byte aligned, grow-only scratch. Freed when the thread exits (OpenMP
// workers live as long as the pool), so repeated calls allocate nothing.
struct Scratch {
  void* ptr = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(ptr); }
  void* get(size_t bytes) {
    if (bytes <= cap) return ptr;
    size_t want = (bytes + 4095) & ~size_t(4095);  // aligned_alloc wants a multiple of 64
    void* fresh = std::aligned_alloc(64, want);
    if (!fresh) return nullptr;
    std::free(ptr);
    ptr = fresh;
    cap = want;
    return ptr;
  }
};
thread_local Scratch tl_pack_a;
thread_local Scratch tl_pack_b;

template <typename T>
using MicroFn = void (*)(int kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta);
template <typename T>
using PackFn = void (*)(bool trans, int rows, int kc, const T* src, int64_t ld, T* out);

// One kernel family: its tile shape, cache blocking, micro-kernel and packing routines.
template <typename T>
struct Kernel {
  int mr, nr;
  Blocking blk;
  MicroFn<T> micro;
  PackFn<T> pack_a;  // (trans_a, mc, kc, &op(A)[ic][pc], lda, Ap)
  PackFn<T> pack_b;  // (trans_b, nc, kc, &op(B)[pc][jc], ldb, Bp)
};

// ---------------------------------------------------------------------------------------------
// Packing (portable). Used by every kernel family; the x86 families override the transposing
// cases with vector versions below.

// Ap[panel][p][i] = op(A)[panel*MR + i][p] for mc rows, kc columns; rows past mc are zero.
// op(A)[i][p] is A[i*lda + p] (trans = false) or A[p*lda + i] (trans = true).
template <typename T, int MR>
void pack_a_generic(bool trans, int mc, int kc, const T* A, int64_t lda, T* out) {
  for (int ir = 0; ir < mc; ir += MR) {
    const int m = std::min(MR, mc - ir);
    if (!trans) {
      for (int i = 0; i < m; i++) {
        const T* src = A + (int64_t)(ir + i) * lda;
        for (int p = 0; p < kc; p++) out[(size_t)p * MR + i] = src[p];
      }
      for (int i = m; i < MR; i++)
        for (int p = 0; p < kc; p++) out[(size_t)p * MR + i] = T(0);
    } else {
      for (int p = 0; p < kc; p++) {
        const T* src = A + (int64_t)p * lda + ir;
        T* dst = out + (size_t)p * MR;
        for (int i = 0; i < m; i++) dst[i] = src[i];
        for (int i = m; i < MR; i++) dst[i] = T(0);
      }
    }
    out += (size_t)MR * kc;
  }
}

// Bp[panel][p][j] = op(B)[p][panel*NR + j] for kc rows, nc columns; columns past nc are zero.
// op(B)[p][j] is B[p*ldb + j] (trans = false) or B[j*ldb + p] (trans = true).
template <typename T, int NR>
void pack_b_generic(bool trans, int nc, int kc, const T* B, int64_t ldb, T* out) {
  for (int jr = 0; jr < nc; jr += NR) {
    const int n = std::min(NR, nc - jr);
    if (!trans) {
      for (int p = 0; p < kc; p++) {
        const T* src = B + (int64_t)p * ldb + jr;
        T* dst = out + (size_t)p * NR;
        for (int j = 0; j < n; j++) dst[j] = src[j];
        for (int j = n; j < NR; j++) dst[j] = T(0);
      }
    } else {
      for (int j = 0; j < n; j++) {
        const T* src = B + (int64_t)(jr + j) * ldb;
        for (int p = 0; p < kc; p++) out[(size_t)p * NR + j] = src[p];
      }
      for (int j = n; j < NR; j++)
        for (int p = 0; p < kc; p++) out[(size_t)p * NR + j] = T(0);
    }
    out += (size_t)NR * kc;
  }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels. Contract: a = Ap micro-panel [kc][MR], b = Bp micro-panel [kc][NR] (64-byte
// aligned), c = MR x NR tile with row stride ldc. Writes c = alpha * a·b + beta * c, and does
// not read c when beta == 0.

// Portable kernel: fixed-size loops the compiler unrolls and vectorises over j.
template <typename T, int MR, int NR>
void micro_generic(int kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                   int64_t ldc, T alpha, T beta) {
  T acc[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) acc[i][j] = T(0);
  for (int p = 0; p < kc; p++) {
    for (int i = 0; i < MR; i++) {
      const T ai = a[i];
      for (int j = 0; j < NR; j++) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += NR;
  }
  for (int i = 0; i < MR; i++) {
    T* ci = c + (int64_t)i * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < NR; j++) ci[j] = alpha * acc[i][j];
    } else {
      for (int j = 0; j < NR; j++) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
  }
}

#if QS_X86

// AVX-512: MR rows x 32 columns (two zmm per row). Per k step: two aligned loads of B, then for
// each row one broadcast of A folded into the FMA as a {1to16} memory operand. The k loop is
// unrolled so the loop overhead disappears under the 2 * MR FMAs of each step.
template <int MR>
QS_TARGET_AVX512 void micro_avx512(int kc, const float* __restrict a, const float* __restrict b,
                                   float* __restrict c, int64_t ldc, float alpha, float beta) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++) {
    acc0[i] = _mm512_setzero_ps();
    acc1[i] = _mm512_setzero_ps();
  }
  // Pull the C tile toward L1 while the k loop runs; it is touched only at the end.
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++) {
    _mm_prefetch((const char*)(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char*)(c + i * ldc + 16), _MM_HINT_T0);
  }
#pragma GCC unroll 4
  for (int p = 0; p < kc; p++) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 32;
  }
  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      _mm512_storeu_ps(c + i * ldc, _mm512_mul_ps(acc0[i], va));
      _mm512_storeu_ps(c + i * ldc + 16, _mm512_mul_ps(acc1[i], va));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
      float* ci = c + i * ldc;
      _mm512_storeu_ps(ci, _mm512_fmadd_ps(acc0[i], va, _mm512_mul_ps(_mm512_loadu_ps(ci), vb)));
      _mm512_storeu_ps(ci + 16,
                       _mm512_fmadd_ps(acc1[i], va, _mm512_mul_ps(_mm512_loadu_ps(ci + 16), vb)));
    }
  }
}

// 16 x 16 transpose of r[0..15] in place (r[i] lane j -> r[j] lane i): 32-bit, 64-bit and
// 128-bit interleaves, then a 256-bit one; 64 shuffles per 256 elements.
QS_TARGET_AVX512 inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    for (int h = 0; h < 2; h++) {
      const __m512d a = _mm512_castps_pd(t[4 * i + h]), b = _mm512_castps_pd(t[4 * i + 2 + h]);
      r[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  }
  // Now r[4i + q] holds, in each 128-bit lane L, elements (row 4i..4i+3, column 4L + q).
#pragma GCC unroll 2
  for (int i = 0; i < 2; i++) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
      t[8 * i + q] = _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0x88);      // lanes 0,2 | 0,2
      t[8 * i + 4 + q] = _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0xDD);  // lanes 1,3 | 1,3
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    r[q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88);
    r[8 + q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0xDD);
    r[4 + q] = _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0x88);
    r[12 + q] = _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0xDD);
  }
}

// Ap for the avx512 kernel (MR <= 16 rows per micro-panel, same layout as pack_a_generic).
// Non-transposed A is the common case (activations) and needs a transpose: 16 k-columns of the
// MR rows at a time go through transpose16x16, and each k step stores its MR lanes.
// Transposed A is a copy of MR contiguous values per k step, done with masked loads so that
// the zero padding of an edge panel comes for free.
template <int MR>
QS_TARGET_AVX512 void pack_a_avx512(bool trans, int mc, int kc, const float* A, int64_t lda,
                                    float* out) {
  static_assert(MR <= 16, "one zmm per packed k step");
  const __mmask16 full = (__mmask16)((1u << MR) - 1);
  for (int ir = 0; ir < mc; ir += MR) {
    const int m = std::min(MR, mc - ir);
    if (trans) {
      const __mmask16 valid = (__mmask16)((1u << m) - 1);
      const float* src = A + ir;
      for (int p = 0; p < kc; p++)
        _mm512_mask_storeu_ps(out + (size_t)p * MR, full,
                              _mm512_maskz_loadu_ps(valid, src + (int64_t)p * lda));
    } else if (m < MR) {
      pack_a_generic<float, MR>(false, m, kc, A + (int64_t)ir * lda, lda, out);
    } else {
      const float* src = A + (int64_t)ir * lda;
      int p = 0;
      for (; p + 16 <= kc; p += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
          r[i] = i < MR ? _mm512_loadu_ps(src + i * lda + p) : _mm512_setzero_ps();
        // MR strided row streams are more than the hardware prefetcher follows well: fetch
        // the cache lines four column stripes ahead ourselves.
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) _mm_prefetch((const char*)(src + i * lda + p + 64), _MM_HINT_T0);
        transpose16x16(r);
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++) _mm512_mask_storeu_ps(out + (size_t)(p + q) * MR, full, r[q]);
      }
      for (; p < kc; p++)
        for (int i = 0; i < MR; i++) out[(size_t)p * MR + i] = src[i * lda + p];
    }
    out += (size_t)MR * kc;
  }
}

// Bp for the avx512 kernel (NR = 32). Non-transposed B: two (masked at the edge) row copies
// per k step. Transposed B (torch-layout weights, [N,K]): two 16 x 16 transposes per 16 k.
QS_TARGET_AVX512 void pack_b_avx512(bool trans, int nc, int kc, const float* B, int64_t ldb,
                                    float* out) {
  constexpr int NR = 32;
  for (int jr = 0; jr < nc; jr += NR) {
    const int n = std::min(NR, nc - jr);
    if (!trans) {
      const __mmask16 lo = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
      const __mmask16 hi = (__mmask16)(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
      const float* src = B + jr;
      for (int p = 0; p < kc; p++) {
        const float* row = src + (int64_t)p * ldb;
        _mm512_store_ps(out + (size_t)p * NR, _mm512_maskz_loadu_ps(lo, row));
        _mm512_store_ps(out + (size_t)p * NR + 16, _mm512_maskz_loadu_ps(hi, row + 16));
      }
    } else {
      const float* src = B + (int64_t)jr * ldb;
      int p = 0;
      for (; p + 16 <= kc; p += 16) {
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
          __m512 r[16];
#pragma GCC unroll 16
          for (int j = 0; j < 16; j++) {
            const int jj = half * 16 + j;
            r[j] = jj < n ? _mm512_loadu_ps(src + jj * ldb + p) : _mm512_setzero_ps();
          }
          transpose16x16(r);
#pragma GCC unroll 16
          for (int q = 0; q < 16; q++) _mm512_store_ps(out + (size_t)(p + q) * NR + half * 16, r[q]);
        }
      }
      for (; p < kc; p++)
        for (int j = 0; j < NR; j++) out[(size_t)p * NR + j] = j < n ? src[j * ldb + p] : 0.0f;
    }
    out += (size_t)NR * kc;
  }
}

// AVX2 + FMA: 6 rows x 16 columns (two ymm per row), 12 accumulators + 2 B + 1 broadcast.
QS_TARGET_AVX2 void micro_avx2(int kc, const float* __restrict a, const float* __restrict b,
                               float* __restrict c, int64_t ldc, float alpha, float beta) {
  constexpr int MR = 6;
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    acc0[i] = _mm256_setzero_ps();
    acc1[i] = _mm256_setzero_ps();
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) _mm_prefetch((const char*)(c + i * ldc), _MM_HINT_T0);
#pragma GCC unroll 4
  for (int p = 0; p < kc; p++) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 16;
  }
  const __m256 va = _mm256_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      _mm256_storeu_ps(c + i * ldc, _mm256_mul_ps(acc0[i], va));
      _mm256_storeu_ps(c + i * ldc + 8, _mm256_mul_ps(acc1[i], va));
    }
  } else {
    const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      float* ci = c + i * ldc;
      _mm256_storeu_ps(ci, _mm256_fmadd_ps(acc0[i], va, _mm256_mul_ps(_mm256_loadu_ps(ci), vb)));
      _mm256_storeu_ps(ci + 8,
                       _mm256_fmadd_ps(acc1[i], va, _mm256_mul_ps(_mm256_loadu_ps(ci + 8), vb)));
    }
  }
}

// 8 x 8 transpose of r[0..7] in place: 32-bit and 64-bit interleaves within 128-bit lanes,
// then a swap of 128-bit halves.
QS_TARGET_AVX2 inline void transpose8x8(__m256 r[8]) {
  __m256 t[8], s[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; h++) {  // rows 4h..4h+3; s[4h + q] holds columns q and q + 4
    s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    r[q] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x20);
    r[q + 4] = _mm256_permute2f128_ps(s[q], s[4 + q], 0x31);
  }
}

// Ap for the avx2 kernel (MR = 6), non-transposed A: 8 k-columns of the 6 rows at a time through
// transpose8x8 (rows 6, 7 zero). Each k step stores 8 floats at its 6-float slot; the 2 extra
// land in the next k step's slot, which is written afterwards, so the block loop stops short
// of the panel's last k and leaves it to the scalar tail (no write past the panel).
QS_TARGET_AVX2 void pack_a_avx2(bool trans, int mc, int kc, const float* A, int64_t lda, float* out) {
  constexpr int MR = 6;
  if (trans) {
    pack_a_generic<float, MR>(trans, mc, kc, A, lda, out);
    return;
  }
  for (int ir = 0; ir < mc; ir += MR) {
    const int m = std::min(MR, mc - ir);
    if (m < MR) {
      pack_a_generic<float, MR>(false, m, kc, A + (int64_t)ir * lda, lda, out);
    } else {
      const float* src = A + (int64_t)ir * lda;
      int p = 0;
      for (; p + 8 < kc; p += 8) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) r[i] = i < MR ? _mm256_loadu_ps(src + i * lda + p) : _mm256_setzero_ps();
        transpose8x8(r);
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(out + (size_t)(p + q) * MR, r[q]);
      }
      for (; p < kc; p++)
        for (int i = 0; i < MR; i++) out[(size_t)p * MR + i] = src[i * lda + p];
    }
    out += (size_t)MR * kc;
  }
}

// Bp for the avx2 kernel (NR = 16), transposed B: two 8 x 8 transposes per 8 k.
QS_TARGET_AVX2 void pack_b_avx2(bool trans, int nc, int kc, const float* B, int64_t ldb, float* out) {
  constexpr int NR = 16;
  if (!trans) {
    pack_b_generic<float, NR>(trans, nc, kc, B, ldb, out);
    return;
  }
  for (int jr = 0; jr < nc; jr += NR) {
    const int n = std::min(NR, nc - jr);
    const float* src = B + (int64_t)jr * ldb;
    int p = 0;
    for (; p + 8 <= kc; p += 8) {
#pragma GCC unroll 2
      for (int half = 0; half < 2; half++) {
        __m256 r[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
          const int jj = half * 8 + j;
          r[j] = jj < n ? _mm256_loadu_ps(src + jj * ldb + p) : _mm256_setzero_ps();
        }
        transpose8x8(r);
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) _mm256_store_ps(out + (size_t)(p + q) * NR + half * 8, r[q]);
      }
    }
    for (; p < kc; p++)
      for (int j = 0; j < NR; j++) out[(size_t)p * NR + j] = j < n ? src[j * ldb + p] : 0.0f;
    out += (size_t)NR * kc;
  }
}

#endif  // QS_X86

// ---------------------------------------------------------------------------------------------
// Kernel families and run-time selection

constexpr int AVX512_MR = 14;

template <typename T>
Kernel<T> generic_kernel();
template <>
Kernel<float> generic_kernel<float>() {
  return {6, 8, BLOCK_SMALL_L2, micro_generic<float, 6, 8>, pack_a_generic<float, 6>,
          pack_b_generic<float, 8>};
}
template <>
Kernel<double> generic_kernel<double>() {
  return {6, 4, BLOCK_SMALL_L2, micro_generic<double, 6, 4>, pack_a_generic<double, 6>,
          pack_b_generic<double, 4>};
}

// The families are the ISA levels of isa.h, under the same names. gemm follows the CPUID
// level (best_isa), not QS_CPU_SIMD: its own override is gemm_force_kernel (gemm.h).
std::atomic<int> g_forced_kernel{-1};  // an Isa; -1: CPUID choice

Isa active_kernel() {
  int forced = g_forced_kernel.load(std::memory_order_relaxed);
  return forced >= 0 ? (Isa)forced : best_isa();
}

template <typename T>
Kernel<T> select_kernel() {
  return generic_kernel<T>();
}
template <>
Kernel<float> select_kernel<float>() {
#if QS_X86
  switch (active_kernel()) {
    case kIsaAvx512:
      return {AVX512_MR, 32, BLOCK_AVX512, micro_avx512<AVX512_MR>, pack_a_avx512<AVX512_MR>,
              pack_b_avx512};
    case kIsaAvx2:
      return {6, 16, BLOCK_SMALL_L2, micro_avx2, pack_a_avx2, pack_b_avx2};
    default:
      break;
  }
#endif
  return generic_kernel<float>();
}

// ---------------------------------------------------------------------------------------------
// Drivers

// C = beta * C over an M x N block (K == 0 or alpha == 0: the product contributes nothing).
template <typename T>
void scale_c(int M, int N, T beta, T* C, int64_t ldc) {
  for (int i = 0; i < M; i++) {
    T* ci = C + (int64_t)i * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < N; j++) ci[j] = T(0);
    } else if (beta != T(1)) {
      for (int j = 0; j < N; j++) ci[j] *= beta;
    }
  }
}

// Last resort when a packing buffer cannot be allocated: unblocked, but correct.
template <typename T>
void gemm_unpacked(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int64_t lda,
                   const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) {
      T acc = 0;
      for (int p = 0; p < K; p++) {
        T a = ta ? A[(int64_t)p * lda + i] : A[(int64_t)i * lda + p];
        T b = tb ? B[(int64_t)j * ldb + p] : B[(int64_t)p * ldb + j];
        acc += a * b;
      }
      T* c = C + (int64_t)i * ldc + j;
      *c = beta == T(0) ? alpha * acc : alpha * acc + beta * *c;
    }
  }
}

// The five-loop blocked algorithm on one thread. Requires M, N, K > 0.
template <typename T>
void gemm_serial(const Kernel<T>& kern, bool ta, bool tb, int M, int N, int K, T alpha,
                 const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const int MR = kern.mr, NR = kern.nr;
  const int kc_blk = even_block(K, kern.blk.kc, 8);
  const int mc_blk = even_block(M, std::max(kern.blk.mc / MR, 1) * MR, MR);
  const int nc_blk = even_block(N, kern.blk.nc, NR);

  // Ap: [mc_blk/MR][kc_blk][MR], Bp: [nc_blk/NR][kc_blk][NR]
  T* Ap = (T*)tl_pack_a.get(sizeof(T) * (size_t)mc_blk * kc_blk);
  T* Bp = (T*)tl_pack_b.get(sizeof(T) * (size_t)nc_blk * kc_blk);
  if (!Ap || !Bp) {
    gemm_unpacked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  alignas(64) T tmp[MAX_MR * MAX_NR];  // edge tile [MR][NR]

  for (int jc = 0; jc < N; jc += nc_blk) {
    const int nc = std::min(nc_blk, N - jc);
    for (int pc = 0; pc < K; pc += kc_blk) {
      const int kc = std::min(kc_blk, K - pc);
      const T beta_k = pc == 0 ? beta : T(1);  // later K blocks accumulate onto the first
      const T* Bsrc = tb ? B + (int64_t)jc * ldb + pc : B + (int64_t)pc * ldb + jc;
      kern.pack_b(tb, nc, kc, Bsrc, ldb, Bp);

      for (int ic = 0; ic < M; ic += mc_blk) {
        const int mc = std::min(mc_blk, M - ic);
        const T* Asrc = ta ? A + (int64_t)pc * lda + ic : A + (int64_t)ic * lda + pc;
        kern.pack_a(ta, mc, kc, Asrc, lda, Ap);

        for (int jr = 0; jr < nc; jr += NR) {
          const int n = std::min(NR, nc - jr);
          const T* bp = Bp + (size_t)jr * kc;  // micro-panel jr/NR: [kc][NR]
          for (int ir = 0; ir < mc; ir += MR) {
            const int m = std::min(MR, mc - ir);
            const T* ap = Ap + (size_t)ir * kc;  // micro-panel ir/MR: [kc][MR]
            T* c = C + (int64_t)(ic + ir) * ldc + jc + jr;
            if (m == MR && n == NR) {
              kern.micro(kc, ap, bp, c, ldc, alpha, beta_k);
            } else {
              kern.micro(kc, ap, bp, tmp, NR, T(1), T(0));
              for (int i = 0; i < m; i++) {
                T* ci = c + (int64_t)i * ldc;
                const T* ti = tmp + i * NR;
                if (beta_k == T(0)) {
                  for (int j = 0; j < n; j++) ci[j] = alpha * ti[j];
                } else {
                  for (int j = 0; j < n; j++) ci[j] = alpha * ti[j] + beta_k * ci[j];
                }
              }
            }
          }
        }
      }
    }
  }
}

// [begin, end) of part `idx` of `parts` when `total` is cut at multiples of `unit`.
inline void split_range(int total, int parts, int idx, int unit, int* begin, int* end) {
  const int64_t units = ceil_div(total, unit);
  *begin = (int)std::min<int64_t>(units * idx / parts * unit, total);
  *end = (int)std::min<int64_t>(units * (idx + 1) / parts * unit, total);
}

// Thread grid tm x tn (tm * tn == threads) minimising the slowest thread's cost: its padded
// tile of multiply-adds plus packing (A once per NC block, B once per tile), in units where a
// packed element costs about as much as 16 multiply-adds of the micro-kernel.
inline void choose_grid(int M, int N, int threads, int MR, int NR, int NC, int* tm_out,
                        int* tn_out) {
  double best = -1;
  for (int tm = threads; tm >= 1; tm--) {
    if (threads % tm) continue;
    const int tn = threads / tm;
    const double rows = (double)ceil_div(ceil_div(M, MR), tm) * MR;
    const double cols = (double)ceil_div(ceil_div(N, NR), tn) * NR;
    const double cost = rows * cols + 16.0 * (rows * ceil_div((int)cols, NC) + cols);
    if (best < 0 || cost < best) {
      best = cost;
      *tm_out = tm;
      *tn_out = tn;
    }
  }
}

template <typename T>
void gemm_impl(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int max_threads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Kernel<T> kern = select_kernel<T>();

  int threads = max_threads;
#ifdef _OPENMP
  if (omp_in_parallel()) threads = 1;  // called from inside a parallel region: stay serial
#endif
  const double work = (double)M * N * K;
  if (work < SERIAL_WORK) threads = 1;
  threads = (int)std::max(1.0, std::min<double>(threads, work / MIN_WORK_PER_THREAD));
  if (threads <= 1) {
    gemm_serial(kern, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }

#pragma omp parallel num_threads(threads)
  {
    int nt = 1, tid = 0;
#ifdef _OPENMP
    nt = omp_get_num_threads();  // may be fewer than asked for: size the grid on what we got
    tid = omp_get_thread_num();
#endif
    int tm = 1, tn = 1;
    choose_grid(M, N, nt, kern.mr, kern.nr, kern.blk.nc, &tm, &tn);
    int i0, i1, j0, j1;
    split_range(M, tm, tid % tm, kern.mr, &i0, &i1);
    split_range(N, tn, tid / tm, kern.nr, &j0, &j1);
    if (i1 > i0 && j1 > j0) {
      const T* Asub = ta ? A + i0 : A + (int64_t)i0 * lda;
      const T* Bsub = tb ? B + (int64_t)j0 * ldb : B + j0;
      gemm_serial(kern, ta, tb, i1 - i0, j1 - j0, K, alpha, Asub, lda, Bsub, ldb, beta,
                  C + (int64_t)i0 * ldc + j0, ldc);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API

template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc) {
  gemm_impl<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, get_num_threads());
}

template <typename T>
void gemm_batched(bool trans_a, bool trans_b, int batch, int M, int N, int K, T alpha,
                  const T* A, int lda, int64_t stride_a, const T* B, int ldb, int64_t stride_b,
                  T beta, T* C, int ldc, int64_t stride_c) {
  if (batch <= 0) return;
  int threads = get_num_threads();
#ifdef _OPENMP
  if (omp_in_parallel()) threads = 1;
#endif
  const double work = (double)M * N * K;
  // Many small products (attention heads): one product per thread, each serial. Few large
  // ones: one after the other, each using every thread.
  const bool over_batch = threads > 1 && batch >= threads && work * batch >= SERIAL_WORK &&
                          (batch % threads == 0 || batch >= 4 * threads || work < (1 << 21));
  if (over_batch) {
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int b = 0; b < batch; b++)
      gemm_impl<T>(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb,
                   beta, C + b * stride_c, ldc, 1);
  } else {
    for (int b = 0; b < batch; b++)
      gemm_impl<T>(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb,
                   beta, C + b * stride_c, ldc, threads);
  }
}

const char* gemm_kernel_name() { return isa_name(active_kernel()); }

bool gemm_force_kernel(const char* name) {
  if (!name) return false;
  if (std::strcmp(name, "auto") == 0) {
    g_forced_kernel.store(-1);
    return true;
  }
  Isa isa;
  if (!isa_from_name(name, &isa) || !isa_supported(isa)) return false;
  g_forced_kernel.store(isa);
  return true;
}

template void gemm<float>(bool, bool, int, int, int, float, const float*, int, const float*, int,
                          float, float*, int);
template void gemm<double>(bool, bool, int, int, int, double, const double*, int, const double*,
                           int, double, double*, int);
template void gemm_batched<float>(bool, bool, int, int, int, int, float, const float*, int, int64_t,
                                  const float*, int, int64_t, float, float*, int, int64_t);
template void gemm_batched<double>(bool, bool, int, int, int, int, double, const double*, int,
                                   int64_t, const double*, int, int64_t, double, double*, int,
                                   int64_t);

}  // namespace qs::cpu
