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

Frequencies are processed in chunks of kFreqChunk so the tables live on the stack for any d
(one chunk for d <= 256). out may alias inp: each pair (i, i + half) is read completely before
either element is written, and no other iteration touches it.
*/
#include "cpu/rope.h"

#include <cmath>

namespace qs::cpu {

static constexpr int kFreqChunk = 128;            // frequencies per pass (stack tables)
static constexpr int64_t kParallelMin = 1 << 14;  // elements; below this stay single-threaded

// kBackward = false: out = R(a) x (overwrite).  kBackward = true: out += R(-a) x.
template <bool kBackward, typename T>
static void rope_apply(T* out, const T* inp, const int32_t* pos, int N, int H, int d,
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

template <typename T>
void rope_forward(T* out, const T* inp, const int32_t* pos, int N, int H, int d, double theta) {
  // out (N,H,d), inp (N,H,d) (may be the same buffer), pos (N)
  rope_apply<false>(out, inp, pos, N, H, d, theta);
}

template <typename T>
void rope_backward(T* dinp, const T* dout, const int32_t* pos, int N, int H, int d, double theta) {
  // dinp (N,H,d) +=, dout (N,H,d), pos (N)
  rope_apply<true>(dinp, dout, pos, N, H, d, theta);
}

template void rope_forward<float>(float*, const float*, const int32_t*, int, int, int, double);
template void rope_forward<double>(double*, const double*, const int32_t*, int, int, int, double);
template void rope_backward<float>(float*, const float*, const int32_t*, int, int, int, double);
template void rope_backward<double>(double*, const double*, const int32_t*, int, int, int, double);

}  // namespace qs::cpu
