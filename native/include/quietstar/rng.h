// rng.h: counter-based random numbers, the same on every thread, backend and batch layout.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// Random123 and cuRAND generator): a keyed bijection of a 128-bit counter, so the n-th random
// number of a stream is computed directly, with no state carried between draws. Sampling uses
// it so that a row's draws depend only on (seed, row, step, position, token) — never on which
// other rows share the batch, on the thread count, or on CPU vs CUDA.
//
// The sampling stream contract (sample_tokens now, the fused thought sampler of Quiet-STaR
// later; both must keep it so that sequential and parallel sampling draw identical noise):
//
//   key     = { seed & 0xffffffff, seed >> 32 }          (seed: 0 <= seed < 2^53 from JS)
//   counter = { token / 4, position, step, row }
//   u(token) = uniform_open01(philox4x32_10(counter, key)[token % 4])
//   gumbel(token) = -log(-log(u(token)))
//
// and a token is drawn by Gumbel-max: argmax over the allowed tokens of logit/temperature +
// gumbel(token) (first index on exact ties). Header-only, no libc beyond <cmath>, and every
// function is __host__ __device__ under nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define QS_RNG_FN __host__ __device__ __forceinline__
#else
#define QS_RNG_FN inline
#endif

namespace qs::rng {

struct U32x4 {
  uint32_t v[4];
};

QS_RNG_FN void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

// One Philox4x32 round: two 32x32->64 multiplies, xors with the round key.
QS_RNG_FN U32x4 philox_round(U32x4 c, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(0xD2511F53u, c.v[0], &hi0, &lo0);
  mulhilo32(0xCD9E8D57u, c.v[2], &hi1, &lo1);
  return U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
}

// Philox4x32 with 10 rounds; the key is bumped by the Weyl constants before rounds 2..10.
// Known answers (Random123 kat_vectors) are checked in native/tests/test_sampling.cpp.
QS_RNG_FN U32x4 philox4x32_10(U32x4 counter, uint32_t k0, uint32_t k1) {
  U32x4 c = counter;
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    c = philox_round(c, k0, k1);
  }
  return c;
}

// A 32-bit draw as a double strictly inside (0, 1): (x + 0.5) / 2^32, exact in double.
QS_RNG_FN double uniform_open01(uint32_t x) { return ((double)x + 0.5) * (1.0 / 4294967296.0); }

// Standard Gumbel from a uniform in (0, 1): finite for every 32-bit draw (|g| < 23).
QS_RNG_FN double gumbel(double u) { return -log(-log(u)); }

// The sampling stream of one (seed, row, step, position): uniforms and Gumbel noise by token.
struct SampleStream {
  uint32_t k0, k1, position, step, row;

  QS_RNG_FN SampleStream(uint64_t seed, uint32_t row_, uint32_t step_, uint32_t position_)
      : k0((uint32_t)seed), k1((uint32_t)(seed >> 32)), position(position_), step(step_), row(row_) {}

  // The four draws of tokens 4*block .. 4*block+3.
  QS_RNG_FN U32x4 block(uint32_t block_index) const {
    return philox4x32_10(U32x4{{block_index, position, step, row}}, k0, k1);
  }
  QS_RNG_FN uint32_t bits(uint32_t token) const { return block(token >> 2).v[token & 3]; }
  QS_RNG_FN double uniform(uint32_t token) const { return uniform_open01(bits(token)); }
  QS_RNG_FN double gumbel(uint32_t token) const { return qs::rng::gumbel(uniform(token)); }
};

}  // namespace qs::rng
