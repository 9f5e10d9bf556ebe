// sampling.cu: CUDA twin of native/cpu/sampling.cpp (sample_tokens) for f32 logits.
//
// One block per row of logits (B, V), two passes over the row, as the CPU does it:
//   1. reject NaN / +inf, skip suppressed ids, the max and its first index (the greedy token);
//   2. temperature > 0: Gumbel-max, score(v) = ((double)x[v] - xmax) / temperature + gumbel(v),
//      computed in double exactly as sample_row() computes it, with the noise of the same
//      Philox stream (quietstar/rng.h), first id on ties.
// So given the same logits the tokens are the CPU's, bit for bit but for the last ulp of the
// device's double log() against glibc's (a near-tie at ~1e-15, far below any logit noise).
// top-k / top-p need a selection over the row; they have no CUDA kernel yet (UNIMPLEMENTED).
#include "cpu/sampling.h"
#include "cuda/sampling.cuh"
#include "quietstar/rng.h"

namespace qs::cuda {

constexpr int kSampleThreads = 256;

// ---------------------------------------------------------------------------------------------
// kernels

// out (B) i32 = one token per row of logits (B, V); a row that cannot be sampled gets
// kSampleNoToken / kSampleNonFinite, as the CPU twin.
__global__ void sample_tokens_kernel(int32_t* out, const float* logits, int V, double temperature, uint64_t seed,
                                     uint32_t step, const int32_t* rows, const int32_t* positions,
                                     const int32_t* suppress, int n_suppress) {
  __shared__ int32_t sup_scratch[kMaxSuppress], sup_sorted[kMaxSuppress];
  __shared__ Pick picks[32];
  const int b = blockIdx.x;
  const float* x = logits + (int64_t)b * V;  // (V)
  const SuppressSet sup = SuppressSet::load(suppress, n_suppress, sup_scratch, sup_sorted);

  // 1. validity and the first max over the allowed ids
  bool bad = false;
  Pick mx = no_pick();
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float xv = x[v];
    bad |= !(xv < CUDART_INF_F);  // NaN or +inf, suppressed or not (as the CPU)
    if (sup.contains(v)) continue;
    const Pick p{(double)xv, v};
    if (better(p, mx)) mx = p;
  }
  bad = __syncthreads_or(bad);
  mx = block_pick(mx, picks);
  if (bad || mx.score == -CUDART_INF) {  // -inf max: every id suppressed or -inf
    if (threadIdx.x == 0) out[b] = bad ? cpu::kSampleNonFinite : cpu::kSampleNoToken;
    return;
  }
  if (temperature == 0) {
    if (threadIdx.x == 0) out[b] = mx.id;
    return;
  }

  // 2. Gumbel-max; each thread takes whole groups of 4 tokens, one Philox call per group
  const double xmax = mx.score;
  const rng::SampleStream stream(seed, rows ? (uint32_t)rows[b] : (uint32_t)b, step,
                                 positions ? (uint32_t)positions[b] : 0u);
  Pick best = no_pick();
  for (int q = threadIdx.x; q < (V + 3) / 4; q += blockDim.x) {
    const rng::U32x4 bits = stream.block((uint32_t)q);
    for (int j = 0; j < 4; j++) {
      const int v = 4 * q + j;
      if (v >= V) break;
      const double xv = (double)x[v];
      if (xv == -CUDART_INF || sup.contains(v)) continue;
      const Pick p{(xv - xmax) / temperature + rng::gumbel(rng::uniform_open01(bits.v[j])), v};
      if (better(p, best)) best = p;
    }
  }
  best = block_pick(best, picks);
  if (threadIdx.x == 0) out[b] = best.id;  // >= 0: the max token has a finite score
}

// ---------------------------------------------------------------------------------------------
// launchers

// out (B) i32 on the device; logits (B, V) f32; rows, positions (B) or null; suppress (n_suppress).
Status sample_tokens_f32(int32_t* out, const float* logits, int B, int V, const cpu::SampleParams& p,
                         const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                         void* stream) {
  if (p.top_k > 0 || p.top_p < 1.0) {
    return QS_ERROR(UNIMPLEMENTED,
                    "sample_tokens: topK / topP have no CUDA kernel yet (got topK %d, topP %g); sample with "
                    "temperature only, or on a 'cpu' engine",
                    p.top_k, p.top_p);
  }
  if (n_suppress > kMaxSuppress) {
    return QS_ERROR(UNIMPLEMENTED, "sample_tokens: the CUDA kernel takes at most %d suppressed ids (got %d)",
                    kMaxSuppress, n_suppress);
  }
  if (B == 0) return Status::Ok();
  sample_tokens_kernel<<<B, kSampleThreads, 0, (cudaStream_t)stream>>>(out, logits, V, p.temperature, p.seed, p.step,
                                                                         rows, positions, suppress, n_suppress);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
