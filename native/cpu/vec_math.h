// vec_math.h: the SIMD vocabulary of the CPU kernels, and their fast exp.
//
// Simd<T, VB> describes VB-byte vectors of T (VB = 16: SSE2 / NEON, 32: AVX2, 64: AVX-512)
// written with GCC vector extensions, so one kernel body serves every width: a kernel is a
// template on VB, and each instance is compiled under the matching target attribute (isa.h).
// attention.cpp, lmhead_xent.cpp, activations.cpp, layernorm.cpp, rmsnorm.cpp, rope.cpp and
// adamw.cpp are written on it.
//
// Two float exp functions live here, and they are different on purpose:
//
//   Simd<float, VB>::exp_inplace   Cephes expf, for the softmax kernels. Exactly 0 below -87:
//       masked scores are -inf, and their probabilities must be exact zeros.
//   Simd<float, VB>::exp_sat       e^x for the pointwise activations (activations.cpp). It
//       saturates instead of flushing to 0 (1 / (1 + e^x) does not notice either way) and
//       keeps the degree-7 Taylor polynomial of the scalar exp_f32 it replaced, so the
//       activations' float results did not move beyond FMA contraction.
//
// They use different polynomials (Cephes' degree-6 minimax fit against a degree-7 Taylor
// polynomial), so their results differ in the last bit or two; folding one into the other
// would change the numbers of the kernels that use it. double always goes through std::exp:
// the double instances serve gradient checks, where exactness matters and speed does not.
//
// Everything is written as explicit vector code, so nothing depends on auto-vectorisation
// (under GCC's default -ftrapping-math a scalar `x < lo ? lo : x` on floats is not turned
// into a select, and such a loop silently stays scalar).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Vector-typed values passed between always-inlined helpers trip GCC's ABI note; they never
// cross a real call boundary.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define QS_INLINE inline __attribute__((always_inline))

// Everything here is in qs::cpu::vec, so that a kernel file can still name its own helpers
// freely (attention.cpp extends Simd with its visibility mask).
namespace qs::cpu::vec {

typedef float f32x2 __attribute__((vector_size(8)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x4 __attribute__((vector_size(16)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef double f64x2 __attribute__((vector_size(16)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef double f64x8 __attribute__((vector_size(64)));
typedef int64_t i64x2 __attribute__((vector_size(16)));
typedef int64_t i64x4 __attribute__((vector_size(32)));
typedef int64_t i64x8 __attribute__((vector_size(64)));
typedef uint64_t u64x2 __attribute__((vector_size(16)));
typedef uint64_t u64x4 __attribute__((vector_size(32)));
typedef uint64_t u64x8 __attribute__((vector_size(64)));

// ---------------------------------------------------------------------------------------------
// Simd<T, VB>: V holds VB bytes of T; VI the same number of signed lanes of T's width (compare
// masks, positions), VU unsigned ones; IT is VI's lane type. Loads and stores go through
// memcpy, so no pointer needs any alignment.

template <typename T_, typename V_, typename VI_, typename VU_, typename IT_>
struct SimdBase {
  typedef T_ T;
  typedef V_ V;
  typedef VI_ VI;
  typedef VU_ VU;
  typedef IT_ IT;
  static constexpr int L = sizeof(V) / sizeof(T);
  static QS_INLINE V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
  static QS_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static QS_INLINE VI loadi(const IT* p) { VI v; std::memcpy(&v, p, sizeof(VI)); return v; }
  static QS_INLINE V splat(T x) { return V{} + x; }
  static QS_INLINE VI splati(IT x) { return VI{} + x; }
  // The first n < L elements of p, the rest filled with `fill`.
  static QS_INLINE V load_part(const T* p, int n, T fill) {
    T tmp[L];
    for (int i = 0; i < L; i++) tmp[i] = i < n ? p[i] : fill;
    return load(tmp);
  }
  static QS_INLINE void store_part(T* p, int n, const V& v) {
    T tmp[L];
    store(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
  }
};

template <typename T, int VB> struct Simd;

// float exp: Cephes expf. n = round(x / ln 2) by the 1.5·2^23 trick, r = x - n ln 2 in two
// parts, a degree-6 polynomial for e^r, 2^n built in the exponent bits. ≈1e-7 relative;
// exactly 0 for x < -87 (masked scores are -inf), clamped at 88 (the softmax kernels only
// pass arguments <= 0).
template <typename V, typename VI, typename VU>
struct SimdF32 : SimdBase<float, V, VI, VU, int32_t> {
  static QS_INLINE void exp_inplace(V& x) {
    V xc = x < -87.0f ? V{} - 87.0f : x;
    xc = xc > 88.0f ? V{} + 88.0f : xc;
    V n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    V r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    V z = r * r;
    V y = ((((((V{} + 1.9875691500e-4f) * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
             4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
    VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
    y = y * (V)bits;
    x = x < -87.0f ? V{} : y;
  }

  // e^x for the pointwise activations: x = k ln2 + r with k = round(x / ln2), |r| <= ln2/2;
  // e^r by its Taylor polynomial to r^7 (truncation < 1e-8 relative, under float's half ulp);
  // 2^k written into the exponent bits. ~2 ulp over the clamp range [-87, 88], which keeps
  // 2^k a normal float; beyond it the result saturates near 1.6e-38 or 1.7e38 instead of
  // going to 0 or inf, which changes 1 / (1 + e^x) by less than 1e-37. A NaN x gives NaN.
  static QS_INLINE V exp_sat(const V& x_in) {  // (by reference: see -Wpsabi above)
    V x = x_in < -87.0f ? V{} - 87.0f : x_in;
    x = x > 88.0f ? V{} + 88.0f : x;
    const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    V k = (x * 1.44269504f + round_magic) - round_magic;  // nearest integer to x / ln2
    // ln2 split in two so that k * ln2_hi is exact (ln2_hi = 45426 / 2^16, |k| <= 127)
    V r = (x - k * 0.693145751953125f) - k * 1.42860682e-6f;
    V p = V{} + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    VI bits = (__builtin_convertvector(k, VI) + 127) << 23;  // 2^k
    return p * (V)bits;
  }
};

// VF: the float vector of as many lanes as V (half its bytes), for widening float data into
// double accumulators (the norms' row statistics, sum_squares) and narrowing back.
template <typename V, typename VI, typename VU, typename VF>
struct SimdF64 : SimdBase<double, V, VI, VU, int64_t> {
  static QS_INLINE void exp_inplace(V& x) {
    for (int i = 0; i < (int)(sizeof(V) / sizeof(double)); i++) x[i] = std::exp(x[i]);
  }
  // L floats at p, widened (exactly) to double.
  static QS_INLINE V load_f32(const float* p) {
    VF v;
    std::memcpy(&v, p, sizeof(VF));
    return __builtin_convertvector(v, V);
  }
  // The 2L floats of a full float vector vf (of Simd<float, VB>), widened in two halves.
  template <typename VF2>
  static QS_INLINE void widen2(const VF2& vf, V& lo, V& hi) {
    static_assert(sizeof(VF2) == 2 * sizeof(VF), "widen2 takes the float vector of the same width");
    VF h;
    std::memcpy(&h, &vf, sizeof h);
    lo = __builtin_convertvector(h, V);
    std::memcpy(&h, (const char*)&vf + sizeof h, sizeof h);
    hi = __builtin_convertvector(h, V);
  }
  static QS_INLINE VF narrow(const V& v) { return __builtin_convertvector(v, VF); }
};
template <> struct Simd<float, 16> : SimdF32<f32x4, i32x4, u32x4> {};
template <> struct Simd<float, 32> : SimdF32<f32x8, i32x8, u32x8> {};
template <> struct Simd<float, 64> : SimdF32<f32x16, i32x16, u32x16> {};
template <> struct Simd<double, 16> : SimdF64<f64x2, i64x2, u64x2, f32x2> {};
template <> struct Simd<double, 32> : SimdF64<f64x4, i64x4, u64x4, f32x4> {};
template <> struct Simd<double, 64> : SimdF64<f64x8, i64x8, u64x8, f32x8> {};

}  // namespace qs::cpu::vec
