/*
Next-token sampling (see sampling.h for the contract, quietstar/rng.h for the noise).

Per row, in double precision:
  1. one pass over the logits: reject NaN / +inf, treat suppressed ids as -inf, find the max
     (the greedy answer, first index on ties);
  2. z[v] = (x[v] - max) / temperature, so z <= 0 with the max at 0: no overflow for any
     temperature, and softmax(z) = softmax(x / temperature);
  3. the kept set: all finite tokens, or the top_k of them by one nth_element, then the nucleus
     by growing sorted prefixes (sampling.h);
  4. Gumbel-max over the kept set.
Without top-k/top-p the kept set is every finite token and step 4 walks the vocabulary in
blocks of four, one Philox call per block; no index list is built.

Rows are independent and run in parallel; each thread owns its scratch.
*/
#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "quietstar/rng.h"

namespace qs::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Scratch {
  std::vector<double> z;      // (V) scaled logits of the row
  std::vector<int32_t> kept;  // candidate token ids
};

// The order of "better" tokens: larger z first, then the lower id (a strict total order, so the
// selections below are deterministic).
struct Better {
  const double* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// Shrinks kept[0..n) to the nucleus of mass top_p (sampling.h); returns its size.
int nucleus(int32_t* kept, int n, const double* z, double top_p) {
  Better better{z};
  double total = 0;
  for (int i = 0; i < n; i++) total += std::exp(z[kept[i]]);
  const double target = top_p * total;
  for (int m = std::min(n, 64);; m = std::min(n, m * 4)) {
    if (m < n) std::nth_element(kept, kept + m, kept + n, better);
    std::sort(kept, kept + m, better);
    double before = 0;  // mass of the tokens ranked above kept[i]
    for (int i = 0; i < m; i++) {
      if (before >= target) return i;  // i >= 1: before is 0 at i = 0 and target > 0
      before += std::exp(z[kept[i]]);
    }
    if (m == n) return n;
  }
}

template <typename T>
int32_t sample_row(const T* x, int V, const SampleParams& p, const uint8_t* banned,
                   const rng::SampleStream& stream, Scratch& s) {
  // 1. validity, suppression, argmax
  double xmax = -kInf;
  int32_t argmax = -1;
  for (int v = 0; v < V; v++) {
    double xv = (double)x[v];
    if (std::isnan(xv) || xv == kInf) return kSampleNonFinite;
    if (banned && banned[v]) continue;
    if (xv > xmax) {
      xmax = xv;
      argmax = v;
    }
  }
  if (argmax < 0) return kSampleNoToken;
  if (p.temperature == 0) return argmax;

  // 2. shifted, scaled logits
  s.z.resize(V);
  double* z = s.z.data();
  for (int v = 0; v < V; v++) {
    z[v] = (banned && banned[v]) ? -kInf : ((double)x[v] - xmax) / p.temperature;
  }

  // 3. the kept set
  bool filter = p.top_k > 0 || p.top_p < 1.0;
  int n = 0;
  if (filter) {
    s.kept.resize(V);
    int32_t* kept = s.kept.data();
    for (int v = 0; v < V; v++) {
      if (z[v] > -kInf) kept[n++] = v;
    }
    if (p.top_k > 0 && p.top_k < n) {
      std::nth_element(kept, kept + p.top_k, kept + n, Better{z});
      n = p.top_k;
    }
    if (p.top_p < 1.0) n = nucleus(kept, n, z, p.top_p);
  }

  // 4. Gumbel-max (ties to the lower id)
  double best = -kInf;
  int32_t best_id = -1;
  auto offer = [&](int32_t v, double score) {
    if (score > best || (score == best && v < best_id)) {
      best = score;
      best_id = v;
    }
  };
  if (filter) {
    for (int i = 0; i < n; i++) {
      int32_t v = s.kept[i];
      offer(v, z[v] + stream.gumbel((uint32_t)v));
    }
  } else {
    for (int b0 = 0; b0 < V; b0 += 4) {
      rng::U32x4 r = stream.block((uint32_t)(b0 >> 2));
      for (int j = 0; j < 4 && b0 + j < V; j++) {
        int v = b0 + j;
        if (z[v] == -kInf) continue;
        offer(v, z[v] + rng::gumbel(rng::uniform_open01(r.v[j])));
      }
    }
  }
  return best_id;  // >= 0: the argmax token has z = 0 and finite noise
}

}  // namespace

template <typename T>
int sample_tokens(int32_t* out, const T* logits, int B, int V, const SampleParams& params,
                  const int32_t* rows, const int32_t* positions, const int32_t* suppress,
                  int n_suppress) {
  std::vector<uint8_t> banned;
  if (n_suppress > 0) {
    banned.assign(V, 0);
    for (int i = 0; i < n_suppress; i++) banned[suppress[i]] = 1;
  }
  const uint8_t* ban = banned.empty() ? nullptr : banned.data();
  int failed = 0;
#pragma omp parallel reduction(+ : failed) if (B > 1)
  {
    Scratch scratch;
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++) {
      rng::SampleStream stream(params.seed, rows ? (uint32_t)rows[b] : (uint32_t)b, params.step,
                               positions ? (uint32_t)positions[b] : 0u);
      out[b] = sample_row(logits + (int64_t)b * V, V, params, ban, stream, scratch);
      if (out[b] < 0) failed++;
    }
  }
  return failed;
}

template int sample_tokens<float>(int32_t*, const float*, int, int, const SampleParams&, const int32_t*,
                                  const int32_t*, const int32_t*, int);
template int sample_tokens<double>(int32_t*, const double*, int, int, const SampleParams&, const int32_t*,
                                   const int32_t*, const int32_t*, int);

}  // namespace qs::cpu
