/*
Rotary position embedding, Hugging Face "rotate_half" convention (see rope.h).

Memory layout: x is (N,H,d) row-major: N tokens, H heads, head dim d (even), half = d/2.
Within a head, dimension i pairs with i + half (not with i+1 as in the interleaved GPT-J/Meta
layout), both rotated by angle a = pos[n] * theta^(-2i/d):
  out[i]        = x[i] * cos(a) - x[i + half] * sin(a)
  out[i + half] = x[i + half] * cos(a) + x[i] * sin(a)
The backward applies the transpose, i.e. the rotation by -a, and adds into dinp.

Positions are an explicit int32 per token (thought tokens do not sit at their row index), so
the cos/sin table is built per token rather than shared across rows. Angles are formed in
double: pos * inv_freq reaches ~1e5 rad for long contexts, where a float angle would be off
by ~1e-2 rad. cos/sin are evaluated once per (token, frequency) and reused by all H heads.

float: the angles are still formed in double and rounded once, but cos/sin come from a vector
double sincos (sincos_small below: Cody-Waite reduction by pi/2 in three parts, fdlibm's
kernel polynomials), accurate to ~1 ulp of double, so the float table matches rounding
std::cos / std::sin except in rare round-half cases (1 float ulp). libm's scalar calls were
most of the kernel's time (d/2 pairs per token for only H*d elements). The reduction is exact
for |angle| < 2^20 pi/2; a token whose largest angle passes kMaxAngle uses std::cos/std::sin.
The table and the rotation run on SIMD vectors compiled for SSE2 / AVX2+FMA / AVX-512 and
picked per call by active_isa() (isa.h). double (gradient checks) stays scalar on libm.

Frequencies are processed in chunks of kFreqChunk so the tables live on the stack for any d
(one chunk for d <= 256). out may alias inp: each pair (i, i + half) is read completely before
either element is written, and no other iteration touches it.
*/
#include "cpu/rope.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace qs::cpu {

static constexpr int kFreqChunk = 128;            // frequencies per pass (stack tables)
static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

// kBackward = false: out = R(a) x (overwrite).  kBackward = true: out += R(-a) x.
template <bool kBackward, typename T>
static void rope_apply_scalar(T* out, const T* inp, const int32_t* pos, int N, int H, int d,
                       double theta) {
  int half = d / 2;
  bool par = (int64_t)N * H * d > kParallelMin;
  for (int i0 = 0; i0 < half; i0 += kFreqChunk) {
    int nf = half - i0 < kFreqChunk ? half - i0 : kFreqChunk;
    double inv_freq[kFreqChunk];
    for (int j = 0; j < nf; j++) inv_freq[j] = std::pow(theta, -(2.0 * (i0 + j)) / d);

#pragma omp parallel for if (par)
    for (int n = 0; n < N; n++) {
      T cs[kFreqChunk], sn[kFreqChunk];
      double p = (double)pos[n];
      for (int j = 0; j < nf; j++) {
        double a = p * inv_freq[j];
        cs[j] = (T)std::cos(a);
        sn[j] = (T)std::sin(a);
      }
      for (int h = 0; h < H; h++) {
        int64_t base = ((int64_t)n * H + h) * d + i0;
        const T* x1 = inp + base;  // first half, frequencies i0 .. i0+nf
        const T* x2 = x1 + half;   // partner elements i + half
        T* o1 = out + base;
        T* o2 = o1 + half;
        for (int j = 0; j < nf; j++) {
          T a = x1[j], b = x2[j];  // both read before either write: safe in place
          if (kBackward) {
            o1[j] += a * cs[j] + b * sn[j];
            o2[j] += b * cs[j] - a * sn[j];
          } else {
            o1[j] = a * cs[j] - b * sn[j];
            o2[j] = b * cs[j] + a * sn[j];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// float: vector sincos, vector rotation, ISA dispatch

namespace {

constexpr double kMaxAngle = 1.0e6;  // < 2^20 pi/2: q * pio2_1 below stays exact

// sin and cos of the D::L angles a (|a| <= kMaxAngle), ~1 ulp of double.
// a = q pi/2 + r, q = round(a 2/pi), r = a - q pi/2 with pi/2 in three parts of 33 bits each
// (fdlibm's pio2_1..3), so q * part is exact for |q| < 2^20 and r is accurate to ~1e-16
// absolute; then fdlibm's __kernel_sin / __kernel_cos polynomials on |r| <= pi/4, and the
// quadrant q mod 4 swaps and negates them.
template <typename D>
QS_INLINE void sincos_small(const typename D::V& a, typename D::V& s_out, typename D::V& c_out) {
  typedef typename D::V V;
  typedef typename D::VI VI;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  V t = a * 6.36619772367581382433e-01 + magic;
  VI qi = (VI)t;  // the integer q sits in the low mantissa bits (q mod 4 is all we need)
  V q = t - magic;
  V r = ((a - q * 1.57079632673412561417e+00) - q * 6.07710050630396597660e-11) -
        q * 2.02226624871116645580e-21;
  V z = r * r;
  V sp = z * (8.33333333332248946124e-03 +
              z * (-1.98412698298579493134e-04 +
                   z * (2.75573137070700676789e-06 +
                        z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10))));
  V sn = r + r * z * (-1.66666666666666324348e-01 + sp);
  V cp = z * (4.16666666666666019037e-02 +
              z * (-1.38888888888741095749e-03 +
                   z * (2.48015872894767294178e-05 +
                        z * (-2.75573143513906633035e-07 +
                             z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
  V hz = 0.5 * z;
  V w = 1.0 - hz;
  V cs = w + (((1.0 - w) - hz) + z * cp);  // 1 - z/2 + z^2 poly, the 1 - z/2 kept exact
  // quadrant: 0 (s, c), 1 (c, -s), 2 (-s, -c), 3 (-c, s)
  VI swap = (qi & 1) != 0;
  V s1 = swap ? cs : sn, c1 = swap ? sn : cs;
  s_out = (qi & 2) != 0 ? -s1 : s1;
  c_out = ((qi + 1) & 2) != 0 ? -c1 : c1;
}

struct RopeArgs {
  float* out;         // (N,H,d)
  const float* inp;   // (N,H,d), may be out
  const int32_t* pos; // (N)
  const double* inv_freq;  // (kFreqChunk) this chunk's frequencies, zero-padded
  double inv_max;     // the largest of them
  int H, d, i0, nf;
};

template <int VB, bool kBackward>
QS_INLINE void rope_tokens(const RopeArgs& a, int n0, int n1) {
  typedef vec::Simd<float, VB> S;
  typedef vec::Simd<double, VB> D;
  typedef typename S::V VF;
  constexpr int L = S::L, LD = D::L;
  const int half = a.d / 2;
  for (int n = n0; n < n1; n++) {
    float cs[kFreqChunk], sn[kFreqChunk];  // this token's table, shared by its H heads
    const double p = (double)a.pos[n];
    if (std::fabs(p) * a.inv_max <= kMaxAngle) {
      for (int j = 0; j < a.nf; j += LD) {  // whole vectors: the tables are padded to kFreqChunk
        typename D::V sv, cv;
        sincos_small<D>(p * D::load(a.inv_freq + j), sv, cv);
        auto cf = D::narrow(cv), sf = D::narrow(sv);
        std::memcpy(cs + j, &cf, sizeof cf);
        std::memcpy(sn + j, &sf, sizeof sf);
      }
    } else {
      for (int j = 0; j < a.nf; j++) {
        double ang = p * a.inv_freq[j];
        cs[j] = (float)std::cos(ang);
        sn[j] = (float)std::sin(ang);
      }
    }
    for (int h = 0; h < a.H; h++) {
      const int64_t base = ((int64_t)n * a.H + h) * a.d + a.i0;
      const float* x1 = a.inp + base;  // first half, frequencies i0 .. i0+nf
      const float* x2 = x1 + half;     // partner elements i + half
      float* o1 = a.out + base;
      float* o2 = o1 + half;
      int j = 0;
      for (; j + L <= a.nf; j += L) {
        VF u = S::load(x1 + j), v = S::load(x2 + j);  // both read before either write
        VF c = S::load(cs + j), s = S::load(sn + j);
        if (kBackward) {
          S::store(o1 + j, S::load(o1 + j) + (u * c + v * s));
          S::store(o2 + j, S::load(o2 + j) + (v * c - u * s));
        } else {
          S::store(o1 + j, u * c - v * s);
          S::store(o2 + j, v * c + u * s);
        }
      }
      for (; j < a.nf; j++) {
        float u = x1[j], v = x2[j];
        if (kBackward) {
          o1[j] += u * cs[j] + v * sn[j];
          o2[j] += v * cs[j] - u * sn[j];
        } else {
          o1[j] = u * cs[j] - v * sn[j];
          o2[j] = v * cs[j] + u * sn[j];
        }
      }
    }
  }
}

template <bool kBackward>
void rope_generic(const RopeArgs& a, int n0, int n1) { rope_tokens<16, kBackward>(a, n0, n1); }
#if QS_X86
template <bool kBackward>
QS_TARGET_AVX2 void rope_avx2(const RopeArgs& a, int n0, int n1) { rope_tokens<32, kBackward>(a, n0, n1); }
template <bool kBackward>
QS_TARGET_AVX512 void rope_avx512(const RopeArgs& a, int n0, int n1) { rope_tokens<64, kBackward>(a, n0, n1); }
#endif

constexpr int kTokenBlock = 8;  // tokens per parallel work item

template <bool kBackward>
void rope_apply_f32(float* out, const float* inp, const int32_t* pos, int N, int H, int d, double theta) {
  void (*fn)(const RopeArgs&, int, int) = rope_generic<kBackward>;
#if QS_X86
  switch (active_isa()) {  // QS_CPU_SIMD caps it (isa.h)
    case kIsaAvx512: fn = rope_avx512<kBackward>; break;
    case kIsaAvx2: fn = rope_avx2<kBackward>; break;
    default: break;
  }
#endif
  int half = d / 2;
  bool par = (int64_t)N * H * d > kParallelMin;
  for (int i0 = 0; i0 < half; i0 += kFreqChunk) {
    int nf = half - i0 < kFreqChunk ? half - i0 : kFreqChunk;
    double inv_freq[kFreqChunk] = {};
    double inv_max = 0;
    for (int j = 0; j < nf; j++) {
      inv_freq[j] = std::pow(theta, -(2.0 * (i0 + j)) / d);
      inv_max = std::fabs(inv_freq[j]) > inv_max ? std::fabs(inv_freq[j]) : inv_max;
    }
    const RopeArgs a{out, inp, pos, inv_freq, inv_max, H, d, i0, nf};
    const int nblocks = (N + kTokenBlock - 1) / kTokenBlock;
#pragma omp parallel for schedule(static) if (par)
    for (int blk = 0; blk < nblocks; blk++)
      fn(a, blk * kTokenBlock, blk * kTokenBlock + kTokenBlock < N ? blk * kTokenBlock + kTokenBlock : N);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points

template <typename T>
void rope_forward(T* out, const T* inp, const int32_t* pos, int N, int H, int d, double theta) {
  // out (N,H,d), inp (N,H,d) (may be the same buffer), pos (N)
  if constexpr (std::is_same_v<T, float>) rope_apply_f32<false>(out, inp, pos, N, H, d, theta);
  else rope_apply_scalar<false>(out, inp, pos, N, H, d, theta);
}

template <typename T>
void rope_backward(T* dinp, const T* dout, const int32_t* pos, int N, int H, int d, double theta) {
  // dinp (N,H,d) +=, dout (N,H,d), pos (N)
  if constexpr (std::is_same_v<T, float>) rope_apply_f32<true>(dinp, dout, pos, N, H, d, theta);
  else rope_apply_scalar<true>(dinp, dout, pos, N, H, d, theta);
}

template void rope_forward<float>(float*, const float*, const int32_t*, int, int, int, double);
template void rope_forward<double>(double*, const double*, const int32_t*, int, int, int, double);
template void rope_backward<float>(float*, const float*, const int32_t*, int, int, int, double);
template void rope_backward<double>(double*, const double*, const int32_t*, int, int, int, double);

}  // namespace qs::cpu
