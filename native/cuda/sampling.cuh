// sampling.cuh: device helpers shared by sampling.cu and thought_sampling.cu.
//
//   SuppressSet      the suppressed ids of an op, sorted in shared memory once per block so
//                    that each token's test is a binary search (the list is usually the two
//                    thought markers, but nothing bounds it but kMaxSuppress)
//   Pick, better()   the Gumbel-max / argmax order of the CPU twins: larger score, then the
//                    lower token id (a strict total order, so every reduction order agrees)
//   warp_pick, block_pick   that order reduced over a warp / a block
#pragma once

#include <cfloat>
#include <climits>
#include <cstdint>
#include <math_constants.h>

#include "cuda/common.cuh"

namespace qs::cuda {

// Suppress lists longer than this have no CUDA kernel (the launchers say so); they are copied
// to shared memory, 2 x 4 KiB.
constexpr int kMaxSuppress = 1024;

// ---------------------------------------------------------------------------------------------
// suppressed ids

struct SuppressSet {
  int32_t* ids;  // sorted, in shared memory
  int n;

  // Every thread of the block calls it. `scratch` and `out` hold kMaxSuppress ints each.
  // Rank sort: id i goes to the number of ids before it in (value, index) order, O(n^2 / threads)
  // for a list that is nearly always a handful of ids.
  __device__ static SuppressSet load(const int32_t* suppress, int n, int32_t* scratch, int32_t* out) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) scratch[i] = suppress[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const int32_t x = scratch[i];
      int rank = 0;
      for (int j = 0; j < n; j++) rank += scratch[j] < x || (scratch[j] == x && j < i);
      out[rank] = x;
    }
    __syncthreads();
    return SuppressSet{out, n};
  }

  // Out-of-range ids in the list (the device path does not check them) simply never match.
  __device__ bool contains(int32_t v) const {
    int lo = 0, hi = n;  // first index with ids[i] >= v
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (ids[mid] < v) lo = mid + 1;
      else hi = mid;
    }
    return lo < n && ids[lo] == v;
  }
};

// ---------------------------------------------------------------------------------------------
// argmax with ties to the lower id

struct Pick {
  double score;  // -inf: nothing picked
  int32_t id;    // INT_MAX when nothing is picked, so any real id wins a tie with it
};

__device__ __forceinline__ Pick no_pick() { return Pick{-CUDART_INF, INT_MAX}; }

__device__ __forceinline__ bool better(Pick a, Pick b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// The best Pick of the warp, in every lane.
__device__ __forceinline__ Pick warp_pick(Pick p) {
  for (int off = 16; off > 0; off >>= 1) {
    Pick o{__shfl_xor_sync(0xffffffffu, p.score, off), __shfl_xor_sync(0xffffffffu, p.id, off)};
    if (better(o, p)) p = o;
  }
  return p;
}

// The best Pick of the block, in every thread. `shared` holds one Pick per warp (<= 32).
// Ends with a barrier, so `shared` may be reused right after.
__device__ __forceinline__ Pick block_pick(Pick p, Pick* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
  p = warp_pick(p);
  if (lane == 0) shared[warp] = p;
  __syncthreads();
  p = lane < nwarp ? shared[lane] : no_pick();
  p = warp_pick(p);  // every warp reduces the same values: all threads end with the answer
  __syncthreads();
  return p;
}

}  // namespace qs::cuda
