// sampling.cu: CUDA twin of native/cpu/sampling.cpp (sample_tokens) for f32 logits.
//
// One block per row of logits (B, V), two passes over the row, as the CPU does it:
//   1. reject NaN / +inf, skip suppressed ids, the max and its first index (the greedy token);
//   2. temperature > 0: Gumbel-max, score(v) = ((double)x[v] - xmax) / temperature + gumbel(v),
//      computed in double exactly as sample_row() computes it, with the noise of the same
//      Philox stream (quietstar/rng.h), first id on ties.
// So given the same logits the tokens are the CPU's, bit for bit but for the last ulp of the
// device's double log() against glibc's (a near-tie at ~1e-15, far below any logit noise).
//
// top-k / top-p (sample_tokens_filtered): the kept set is a prefix of the row in the CPU's
// "better" order (larger z, then lower id). The rows' (z, id) pairs are sorted by a stable
// segmented radix sort on z (CUB: ids start ascending, so ties stay ascending), then one block
// per row takes the top_k prefix, the nucleus (block scan of exp(z) in sorted order, the first
// rank whose mass before it reaches top_p·total), and the Gumbel-max over the kept tokens with
// the CPU's noise (stream.gumbel(id)). The tokens are the CPU's except where a mass sum, added
// in another order, lands within rounding of the nucleus boundary.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>

#include "cpu/sampling.h"
#include "cuda/launch.cuh"
#include "cuda/kernels_sampling.h"
#include "cuda/sampling.cuh"
#include "quietstar/rng.h"

namespace qs::cuda {

constexpr int kSampleThreads = 256;

// ---------------------------------------------------------------------------------------------
// kernels

// Pass 1 of every sampler, by the whole block: rejects NaN / +inf (suppressed or not, as the
// CPU), and finds the first max over the allowed ids. False, with the row's failure code in
// *code (thread 0), when the row cannot be sampled (a non-finite logit, or every id suppressed
// or -inf); the block returns together.
__device__ bool row_max(const float* x, int V, const SuppressSet& sup, Pick* picks, Pick* mx_out, int32_t* code) {
  bool bad = false;
  Pick mx = no_pick();
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float xv = x[v];
    bad |= !(xv < CUDART_INF_F);
    if (sup.contains(v)) continue;
    const Pick p{(double)xv, v};
    if (better(p, mx)) mx = p;
  }
  bad = __syncthreads_or(bad);
  mx = block_pick(mx, picks);
  if (bad || mx.score == -CUDART_INF) {
    if (threadIdx.x == 0) *code = bad ? cpu::kSampleNonFinite : cpu::kSampleNoToken;
    return false;
  }
  *mx_out = mx;
  return true;
}

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
  Pick mx;
  if (!row_max(x, V, sup, picks, &mx, &out[b])) return;
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

// top-k / top-p, step 1 (one block per row b of this chunk): z (V) = (x - xmax) / temperature in
// double (-inf for suppressed and -inf ids, so they sort last), ids (V) = 0..V-1. A row that
// cannot be sampled gets its code in out[row0 + b] and skip[b] = 1.
__global__ void filter_prepare_kernel(int32_t* out, int32_t* skip, double* z, int32_t* ids, const float* logits,
                                      int row0, int V, double temperature, const int32_t* suppress, int n_suppress) {
  __shared__ int32_t sup_scratch[kMaxSuppress], sup_sorted[kMaxSuppress];
  __shared__ Pick picks[32];
  const int b = blockIdx.x;
  const float* x = logits + (int64_t)(row0 + b) * V;  // (V)
  const SuppressSet sup = SuppressSet::load(suppress, n_suppress, sup_scratch, sup_sorted);
  Pick mx;
  const bool ok = row_max(x, V, sup, picks, &mx, &out[row0 + b]);
  if (threadIdx.x == 0) skip[b] = ok ? 0 : 1;
  double* zr = z + (int64_t)b * V;
  int32_t* ir = ids + (int64_t)b * V;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const double xv = (double)x[v];
    zr[v] = !ok || xv == -CUDART_INF || sup.contains(v) ? -CUDART_INF : (xv - mx.score) / temperature;
    ir[v] = v;
  }
}

// offsets (B + 1) = 0, V, 2V, ...: the segments of the sort
__global__ void segment_offsets_kernel(int* offsets, int B, int V) {
  QS_GRID_STRIDE(b, (int64_t)B + 1) offsets[b] = (int)(b * V);
}

// top-k / top-p, step 3 (one block per row): zs, ids (V) are the row sorted by (z desc, id asc).
__global__ void filter_pick_kernel(int32_t* out, const int32_t* skip, const double* zs, const int32_t* ids, int row0,
                                   int V, int top_k, double top_p, uint64_t seed, uint32_t step, const int32_t* rows,
                                   const int32_t* positions) {
  using Reduce = cub::BlockReduce<double, kSampleThreads>;
  using Scan = cub::BlockScan<double, kSampleThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ Pick picks[32];
  __shared__ double shared_total;
  __shared__ int shared_kept;
  const int b = blockIdx.x, row = row0 + b;
  if (skip[b]) return;
  const double* z = zs + (int64_t)b * V;
  const int32_t* id = ids + (int64_t)b * V;

  // n finite tokens: a prefix, since -inf sorts last; the top_k prefix of them
  int count = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) count += z[i] > -CUDART_INF;
  const double n = Reduce(tmp.reduce).Sum((double)count);  // exact: counts are far below 2^53
  if (threadIdx.x == 0) shared_total = n;
  __syncthreads();
  int m = (int)shared_total;  // >= 1: the max token has z = 0
  if (top_k > 0 && top_k < m) m = top_k;

  // the nucleus: the first rank i whose mass before it reaches top_p · total (kept = i)
  if (top_p < 1.0) {
    double part = 0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) part += exp(z[i]);
    __syncthreads();
    const double total = Reduce(tmp.reduce).Sum(part);
    if (threadIdx.x == 0) shared_total = total, shared_kept = m;
    __syncthreads();
    const double target = top_p * shared_total;
    double carry = 0;  // mass of the ranks before this chunk
    for (int c0 = 0; c0 < m; c0 += blockDim.x) {
      const int i = c0 + threadIdx.x;
      const double mass = i < m ? exp(z[i]) : 0.0;
      double before, chunk_total;
      __syncthreads();
      Scan(tmp.scan).ExclusiveSum(mass, before, chunk_total);
      before += carry;
      // rank 0 is always kept (target > 0 = the mass before it)
      if (i < m && i > 0 && before >= target) atomicMin(&shared_kept, i);
      __syncthreads();
      if (shared_kept < m) break;  // block-uniform: every thread reads the same value
      carry += chunk_total;
    }
    m = shared_kept;
  }

  // Gumbel-max over the kept prefix (ties to the lower id)
  const rng::SampleStream stream(seed, rows ? (uint32_t)rows[row] : (uint32_t)row, step,
                                 positions ? (uint32_t)positions[row] : 0u);
  Pick best = no_pick();
  for (int i = threadIdx.x; i < m; i += blockDim.x) {
    const Pick p{z[i] + stream.gumbel((uint32_t)id[i]), id[i]};
    if (better(p, best)) best = p;
  }
  best = block_pick(best, picks);
  if (threadIdx.x == 0) out[row] = best.id;
}

// ---------------------------------------------------------------------------------------------
// launchers

namespace {

constexpr size_t kFilterChunkBytes = (size_t)64 << 20;  // sort scratch per chunk of rows, at most

size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

// Rows sorted per launch of the filtered path: as many as fit kFilterChunkBytes (at least one).
int filter_chunk_rows(int B, int V) {
  const size_t per_row = (size_t)V * 2 * (sizeof(double) + sizeof(int32_t));
  const size_t rows = std::max<size_t>(1, kFilterChunkBytes / std::max<size_t>(per_row, 1));
  return (int)std::min<size_t>(rows, (size_t)std::max(B, 1));
}

// The device scratch of one chunk of `rows` rows: skip flags, z and ids (in and out of the
// sort), the segment offsets and CUB's temporary storage, each 256-byte aligned.
struct FilterScratch {
  int32_t* skip;
  double *z_in, *z_out;
  int32_t *id_in, *id_out;
  int* offsets;
  void* cub_temp;
  size_t cub_bytes, total;
};

FilterScratch carve_filter_scratch(void* base, int rows, int V) {
  FilterScratch f{};
  const size_t n = (size_t)rows * V;
  size_t cub_bytes = 0;
  cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, cub_bytes, (const double*)nullptr, (double*)nullptr,
                                                     (const int32_t*)nullptr, (int32_t*)nullptr, (int)n, rows,
                                                     (const int*)nullptr, (const int*)nullptr);
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* at = p ? p + off : nullptr;
    off += align256(bytes);
    return at;
  };
  f.skip = (int32_t*)take(sizeof(int32_t) * rows);
  f.z_in = (double*)take(sizeof(double) * n);
  f.z_out = (double*)take(sizeof(double) * n);
  f.id_in = (int32_t*)take(sizeof(int32_t) * n);
  f.id_out = (int32_t*)take(sizeof(int32_t) * n);
  f.offsets = (int*)take(sizeof(int) * (rows + 1));
  f.cub_temp = take(cub_bytes);
  f.cub_bytes = cub_bytes;
  f.total = off;
  return f;
}

bool filtered(const cpu::SampleParams& p) { return p.temperature > 0 && (p.top_k > 0 || p.top_p < 1.0); }

}  // namespace

size_t sample_tokens_scratch_bytes(int B, int V, const cpu::SampleParams& p) {
  if (!filtered(p) || B <= 0 || V <= 0) return 0;
  return carve_filter_scratch(nullptr, filter_chunk_rows(B, V), V).total;
}

// out (B) i32 on the device; logits (B, V) f32; rows, positions (B) or null; suppress (n_suppress);
// scratch: sample_tokens_scratch_bytes(B, V, p) device bytes (none without top-k / top-p).
Status sample_tokens_f32(int32_t* out, const float* logits, int B, int V, const cpu::SampleParams& p,
                         const int32_t* rows, const int32_t* positions, const int32_t* suppress, int n_suppress,
                         void* scratch, void* stream) {
  if (n_suppress > kMaxSuppress) {
    return QS_ERROR(UNIMPLEMENTED, "sample_tokens: the CUDA kernel takes at most %d suppressed ids (got %d)",
                    kMaxSuppress, n_suppress);
  }
  if (B == 0) return Status::Ok();
  cudaStream_t st = (cudaStream_t)stream;
  if (!filtered(p)) {
    sample_tokens_kernel<<<B, kSampleThreads, 0, st>>>(out, logits, V, p.temperature, p.seed, p.step, rows, positions,
                                                       suppress, n_suppress);
    QS_CUDA_CHECK_LAUNCH(stream);
    return Status::Ok();
  }
  QS_CHECK_ARG(scratch != nullptr, "sample_tokens: the top-k / top-p kernel needs its device scratch");
  const int chunk = filter_chunk_rows(B, V);
  for (int row0 = 0; row0 < B; row0 += chunk) {
    const int rc = std::min(chunk, B - row0);
    // laid out for a full chunk (what the scratch was sized for), whatever rc: CUB's temporary
    // size is then the full chunk's, never more than the caller allocated
    FilterScratch f = carve_filter_scratch(scratch, chunk, V);
    filter_prepare_kernel<<<rc, kSampleThreads, 0, st>>>(out, f.skip, f.z_in, f.id_in, logits, row0, V, p.temperature,
                                                         suppress, n_suppress);
    QS_CUDA_CHECK_LAUNCH(stream);
    segment_offsets_kernel<<<grid_for((int64_t)rc + 1), kBlock, 0, st>>>(f.offsets, rc, V);
    QS_CUDA_CHECK_LAUNCH(stream);
    QS_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        f.cub_temp, f.cub_bytes, f.z_in, f.z_out, f.id_in, f.id_out, rc * V, rc, f.offsets, f.offsets + 1, 0,
        (int)(sizeof(double) * 8), st));
    filter_pick_kernel<<<rc, kSampleThreads, 0, st>>>(out, f.skip, f.z_out, f.id_out, row0, V, p.top_k, p.top_p,
                                                      p.seed, p.step, rows, positions);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  return Status::Ok();
}

}  // namespace qs::cuda
