// thought_sampling.cu: CUDA twin of native/cpu/thought_sampling.cpp for f32 (see
// cpu/thought_sampling.h for the contract): fused LM head + Gumbel-max, the [N, V] logits
// never materialised.
//
// Two kernels:
//   thought_sample_partial: grid (row tiles of kRows, vocabulary splits). A block walks its
//     split's vocabulary in tiles of kCols ids; per tile
//       Z (kRows, kCols) = h_tile · W_tileᵀ       tiled over D in kDepth steps, in shared memory
//       per row (one warp owns a row for the whole kernel):
//         NaN / +inf -> the row is bad; suppressed ids -> -inf (never drawn, in no normaliser)
//         m' = max(m, max Z)  (first id of the max kept: the greedy token)
//         l1 = l1 e^(m - m') + Σ e^(Z - m'),  lt = lt e^((m - m')/tau) + Σ e^((Z - m')/tau)
//         Gumbel-max: score = (z - m')/temperature + gumbel(v) in double, as the CPU scores it;
//                     the tile's best against the row's best rescored under m'
//     and writes the row's (m, l1, lt, greedy id, best candidate) to scratch (splits, N).
//   thought_sample_merge: one thread per row combines its splits in vocabulary order and
//     rescores each split's candidate under the final max:
//       lse = m + log l1,  logp = (z[token] - m)/tau - log lt.
// Splitting the vocabulary keeps the GPU busy when N is small (thinking decode: N = batch);
// one block per row tile would leave all but a few SMs idle while walking 50k+ ids.
//
// Same tokens as the CPU: the noise is the same Philox stream (seed, rows[n], step,
// positions[n], v) and scores and ties follow the CPU's rules, so the tokens differ only where
// the logits themselves do (a float dot product summed in another order: ~1e-6 relative),
// i.e. where the CPU's two best scores are that close. The CPU rescores near-ties under the
// final max exactly; here a split's candidate was chosen under the split's own max, which can
// only matter for scores within ~1e-14 of each other.
#include <cmath>

#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"
#include "cuda/kernels_sampling.h"
#include "cuda/sampling.cuh"
#include "cuda/tile_gemm.cuh"
#include "quietstar/rng.h"

namespace qs::cuda {

constexpr int kRows = 32;     // rows of h per block
constexpr int kCols = 64;     // vocabulary ids per tile (a multiple of 4: a Philox group stays in one lane pair)
constexpr int kDepth = 32;    // D per shared-memory step
constexpr int kThreads = kTileThreads; // 8 warps; warp w owns rows w, w + 8, ... of the block
constexpr int kWarps = kThreads / 32;

// A row's running state over part of the vocabulary.
struct RowPartial {
  double m;        // max of the allowed logits (-inf: none yet)
  double l1, lt;   // Σ e^(z - m), Σ e^((z - m)/tau)
  double best_g;   // the best candidate's noise
  float best_x;    // ... its logit
  int32_t best_id; // ... its id (-1: none)
  int32_t first_max;  // first id with z == m
  int32_t bad;     // a NaN or +inf logit was seen
};

__device__ __forceinline__ RowPartial empty_partial() {
  return RowPartial{-CUDART_INF, 0, 0, 0, 0, -1, -1, 0};
}

// ---------------------------------------------------------------------------------------------
// kernels

// One tile of one row, run by the warp that owns the row: z (kCols) the tile's logits of ids
// v0 .. v0 + kCols - 1, of which those >= V are padding. Each lane takes ids 2·lane, 2·lane + 1
// (one Philox group).
__device__ void row_tile(RowPartial& st, const float* z, int v0, int V, const SuppressSet& sup, double temperature,
                         double tau, const rng::SampleStream& stream) {
  const int lane = threadIdx.x & 31;
  float x[2];
  bool bad = false;
  Pick mx = no_pick();
  for (int j = 0; j < 2; j++) {
    const int c = 2 * lane + j, v = v0 + c;
    x[j] = -CUDART_INF_F;
    if (v >= V) continue;
    const float xv = z[c];
    bad |= !(xv < CUDART_INF_F);
    if (!sup.contains(v)) x[j] = xv;
    const Pick p{(double)x[j], v};
    if (better(p, mx)) mx = p;
  }
  if (__any_sync(0xffffffffu, bad)) st.bad = 1;
  if (st.bad) return;
  mx = warp_pick(mx);
  if (mx.score == -CUDART_INF) return;  // every id of the tile suppressed or -inf
  // a larger max: rescale the sums (the candidate is rescored below)
  if (mx.score > st.m) {
    if (st.m > -CUDART_INF) {
      st.l1 *= exp(st.m - mx.score);
      st.lt *= exp((st.m - mx.score) / tau);
    }
    st.m = mx.score;
    st.first_max = mx.id;
  }
  // softmax sums at temperature 1 and tau, in float per tile (as the CPU's float chunks)
  const float m = (float)st.m, inv_tau = (float)(1.0 / tau);
  float s1 = 0, st_ = 0;
  for (int j = 0; j < 2; j++) {
    s1 += expf(x[j] - m);  // e^-inf = 0 for padding and suppressed ids
    st_ += expf((x[j] - m) * inv_tau);
  }
  for (int off = 16; off > 0; off >>= 1) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, off);
    st_ += __shfl_xor_sync(0xffffffffu, st_, off);
  }
  st.l1 += s1;
  st.lt += st_;
  if (temperature == 0) return;
  // Gumbel-max over the tile, scored as sample_tokens scores (in double, relative to the max)
  const int v = v0 + 2 * lane;
  const rng::U32x4 bits = stream.block((uint32_t)v >> 2);
  Pick best = no_pick();
  double g[2] = {0, 0};
  for (int j = 0; j < 2; j++) {
    if (x[j] == -CUDART_INF_F) continue;
    g[j] = rng::gumbel(rng::uniform_open01(bits.v[(v + j) & 3]));
    const Pick p{((double)x[j] - st.m) / temperature + g[j], v + j};
    if (better(p, best)) best = p;
  }
  best = warp_pick(best);
  if (best.id == INT_MAX) return;  // not reached: the tile's max has a finite score
  // the winner's logit and noise, from the lane that holds it, to every lane
  const int c = best.id - v0;
  const float bx = __shfl_sync(0xffffffffu, (c & 1) ? x[1] : x[0], c >> 1);
  const double bg = __shfl_sync(0xffffffffu, (c & 1) ? g[1] : g[0], c >> 1);
  const Pick cur{st.best_id < 0 ? -CUDART_INF : ((double)st.best_x - st.m) / temperature + st.best_g, st.best_id};
  if (st.best_id < 0 || better(best, cur)) {
    st.best_id = best.id;
    st.best_x = bx;
    st.best_g = bg;
  }
}

// part (splits, N): each block's rows over its split of the vocabulary.
// h (N, D), W (V, D); rows, positions (N) or null; suppress (n_suppress).
__global__ void thought_sample_partial_kernel(RowPartial* part, const float* h, const float* W, int N, int D, int V,
                                              int tiles_per_split, const int32_t* rows, const int32_t* positions,
                                              const int32_t* suppress, int n_suppress, double temperature, double tau,
                                              uint64_t seed, uint32_t step) {
  __shared__ float hs[kRows][kDepth + 1];   // +1: no bank conflicts on the column reads
  __shared__ float ws[kCols][kDepth + 1];
  __shared__ float zs[kRows][kCols + 1];    // the tile's logits
  __shared__ RowPartial state[kRows];
  __shared__ int32_t sup_scratch[kMaxSuppress], sup_sorted[kMaxSuppress];
  const SuppressSet sup = SuppressSet::load(suppress, n_suppress, sup_scratch, sup_sorted);

  const int tid = threadIdx.x, warp = tid / 32;
  const int n0 = blockIdx.x * kRows;
  const int tile_begin = blockIdx.y * tiles_per_split;
  const int tile_end = min(tile_begin + tiles_per_split, (V + kCols - 1) / kCols);
  for (int r = tid; r < kRows; r += kThreads) state[r] = empty_partial();
  __syncthreads();

  for (int tile = tile_begin; tile < tile_end; tile++) {
    const int v0 = tile * kCols;
    logits_tile<kRows, kCols, kDepth>(zs, hs, ws, h, W, N, D, V, n0, v0);  // zs (kRows, kCols)
    for (int r = warp; r < kRows; r += kWarps) {
      const int n = n0 + r;
      if (n >= N) break;
      const rng::SampleStream stream(seed, rows ? (uint32_t)rows[n] : (uint32_t)n, step,
                                     positions ? (uint32_t)positions[n] : 0u);
      RowPartial st = state[r];  // every lane holds the same copy and makes the same updates
      row_tile(st, zs[r], v0, V, sup, temperature, tau, stream);
      __syncwarp();
      if ((tid & 31) == 0) state[r] = st;
    }
    __syncthreads();  // zs is rewritten by the next tile
  }
  for (int r = tid; r < kRows; r += kThreads) {
    if (n0 + r < N) part[(int64_t)blockIdx.y * N + n0 + r] = state[r];
  }
}

// tokens, logp, lse (N) from part (splits, N).
__global__ void thought_sample_merge_kernel(int32_t* tokens, float* logp, float* lse, const RowPartial* part, int N,
                                            int splits, double temperature, double tau) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  bool bad = false;
  double m = -CUDART_INF;
  int32_t first_max = -1;
  for (int s = 0; s < splits; s++) {
    const RowPartial& p = part[(int64_t)s * N + n];
    bad |= p.bad != 0;
    if (p.m > m) {  // strict: the earlier split (lower ids) keeps a tie
      m = p.m;
      first_max = p.first_max;
    }
  }
  if (bad || m == -CUDART_INF) {
    tokens[n] = bad ? cpu::kSampleNonFinite : cpu::kSampleNoToken;
    logp[n] = lse[n] = CUDART_NAN_F;
    return;
  }
  double l1 = 0, lt = 0, x = m;
  Pick best = no_pick();
  for (int s = 0; s < splits; s++) {
    const RowPartial& p = part[(int64_t)s * N + n];
    if (p.m == -CUDART_INF) continue;
    l1 += p.l1 * exp(p.m - m);
    lt += p.lt * exp((p.m - m) / tau);
    if (temperature > 0 && p.best_id >= 0) {
      const Pick c{((double)p.best_x - m) / temperature + p.best_g, p.best_id};
      if (better(c, best)) {
        best = c;
        x = p.best_x;
      }
    }
  }
  tokens[n] = temperature > 0 ? best.id : first_max;
  lse[n] = (float)(m + log(l1));
  logp[n] = (float)((x - m) / tau - log(lt));
}

// ---------------------------------------------------------------------------------------------
// launchers

// The vocabulary splits for N rows (tile_gemm.cuh).
static int thought_sample_splits(int N, int V) { return vocab_splits((N + kRows - 1) / kRows, (V + kCols - 1) / kCols); }

// Device scratch the launcher needs for N rows and V ids.
size_t thought_sample_scratch_bytes(int N, int V) {
  return N <= 0 || V <= 0 ? 0 : (size_t)thought_sample_splits(N, V) * N * sizeof(RowPartial);
}

// tokens (N) i32, logp (N), lse (N) f32 on the device; h (N, D), W (V, D) f32; rows, positions
// (N) or null; suppress (n_suppress); scratch of thought_sample_scratch_bytes(N, V) bytes.
Status thought_sample_f32(int32_t* tokens, float* logp, float* lse, const float* h, const float* W, int N, int D,
                          int V, const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                          const cpu::ThoughtSampleParams& p, void* scratch, void* stream) {
  if (n_suppress > kMaxSuppress) {
    return QS_ERROR(UNIMPLEMENTED, "thought_sample: the CUDA kernel takes at most %d suppressed ids (got %d)",
                    kMaxSuppress, n_suppress);
  }
  if (N <= 0 || V <= 0) return Status::Ok();
  const int splits = thought_sample_splits(N, V);
  const int tiles = (V + kCols - 1) / kCols, tiles_per_split = (tiles + splits - 1) / splits;
  RowPartial* part = (RowPartial*)scratch;
  cudaStream_t s = (cudaStream_t)stream;
  const dim3 grid((N + kRows - 1) / kRows, splits);
  thought_sample_partial_kernel<<<grid, kThreads, 0, s>>>(part, h, W, N, D, V, tiles_per_split, rows, positions,
                                                          suppress, n_suppress, p.temperature, p.policy_temperature,
                                                          p.seed, p.step);
  QS_CUDA_CHECK_LAUNCH(stream);
  thought_sample_merge_kernel<<<(N + 127) / 128, 128, 0, s>>>(tokens, logp, lse, part, N, splits, p.temperature,
                                                              p.policy_temperature);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

}  // namespace qs::cuda
