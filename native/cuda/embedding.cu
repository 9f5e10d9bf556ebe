// embedding.cu: CUDA twins of native/cpu/embedding.cpp (f32).
//
// Forward: one thread per output element, out (N,C) = table[ids[n]] (+ inp for positions).
// Backward is a scatter-add dtable[ids[n]] += dout[n], and an id may repeat. Float atomics would
// make the sum's order (and so its bits) change from run to run; instead each thread OWNS one
// channel c of every table row and walks the N rows in order, so no two threads ever write the
// same address and the sum is accumulated in the CPU twin's order (n = 0, 1, ...): same bits
// as the CPU, every run. The price is only C-way parallelism with an N-long loop; fine for
// the embedding's share of a step (llm.c sorts ids into buckets for more, at much more code).
// Ids are clamped into [0, V): the op layer checks them only on the host path.
#include "cuda/common.cuh"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"

namespace qs::cuda {

__device__ inline int clamp_id(int32_t id, int V) { return id < 0 ? 0 : (id >= V ? V - 1 : id); }

// ---------------------------------------------------------------------------------------------
// kernels

// out (N,C) = (inp ? inp : 0) + table[ids[n]], table (V,C); out may alias inp
__global__ void embedding_forward_kernel1(float* out, const float* inp, const int32_t* ids, const float* table, int N,
                                          int C, int V) {
  QS_GRID_STRIDE(i, (int64_t)N * C) {
    int64_t n = i / C, c = i % C;
    float e = table[(int64_t)clamp_id(ids[n], V) * C + c];
    out[i] = inp ? inp[i] + e : e;
  }
}

// dtable (V,C) += scatter of dout (N,C) by ids: thread c owns column c of every row (see top)
__global__ void embedding_backward_kernel1(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int n = 0; n < N; n++) dtable[(int64_t)clamp_id(ids[n], V) * C + c] += dout[(int64_t)n * C + c];
}

// ---------------------------------------------------------------------------------------------
// launchers

static Status gather(float* out, const float* inp, const int32_t* ids, const float* table, int N, int C, int V,
                     void* stream) {
  int64_t n = (int64_t)N * C;
  if (n == 0) return Status::Ok();
  embedding_forward_kernel1<<<grid_for(n), kBlock, 0, (cudaStream_t)stream>>>(out, inp, ids, table, N, C, V);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

static Status scatter_add(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V, void* stream) {
  if (N == 0 || C == 0) return Status::Ok();
  embedding_backward_kernel1<<<(C + kBlock - 1) / kBlock, kBlock, 0, (cudaStream_t)stream>>>(dtable, dout, ids, N, C, V);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C, int V, void* stream) {
  return gather(out, nullptr, ids, table, N, C, V, stream);
}

Status embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C, int V, void* stream) {
  return scatter_add(dtable, dout, ids, N, C, V, stream);
}

Status position_embedding_forward(float* out, const float* inp, const int32_t* pos, const float* wpe, int N, int C,
                                  int P, void* stream) {
  return gather(out, inp, pos, wpe, N, C, P, stream);
}

Status position_embedding_backward(float* dwpe, const float* dout, const int32_t* pos, int N, int C, int P,
                                   void* stream) {
  return scatter_add(dwpe, dout, pos, N, C, P, stream);
}

}  // namespace qs::cuda
