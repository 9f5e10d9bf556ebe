// quietstar_backend.h: where the Quiet-STaR step's own kernels run: the calls of model_backend.h
// (the transformer's) plus the step's thought attention, thought sampler, mixing head, row moves
// and raw embedding lookups, each going to native/cpu on a CPU engine and to its native/cuda twin
// on a CUDA engine. The step (quietstar_sample.cpp, quietstar_train.cpp) is written once on top.
//
// Pointers are engine memory: host on a CPU engine, device on a CUDA engine (token ids,
// positions, row indices and validity included; StagedArrays puts host vectors there).
// Device scratch, where a CUDA kernel needs it, is the caller's (sizes below; 0 on the CPU).
#pragma once

#include <vector>

#include "core/model_backend.h"
#include "cpu/embedding.h"
#include "cpu/quietstar_heads.h"
#include "cpu/thought_attention.h"
#include "cpu/thought_sampling.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_attention.h"
#include "cuda/kernels_quietstar.h"
#include "cuda/kernels_sampling.h"
#endif

namespace qs {

// Host arrays as the engine's kernels read them: the vector's own memory on a CPU engine; on a
// CUDA engine an uploaded device copy, kept alive by this object (until clear() or its end).
class StagedArrays {
 public:
  StagedArrays(Engine& engine, const Exec& ex) : engine_(engine), ex_(ex) {}
  template <typename X>
  Status put(const X* host, size_t n, const X** out) {
    if (!ex_.cuda || n == 0) {
      *out = host;
      return Status::Ok();
    }
    keep_.emplace_back();
    QS_RETURN_IF_ERROR(engine_.empty(DType::U8, {(int64_t)(n * sizeof(X))}, &keep_.back()));
    QS_RETURN_IF_ERROR(be::upload(ex_, keep_.back().raw(), host, n * sizeof(X)));
    *out = keep_.back().data<X>();
    return Status::Ok();
  }
  template <typename X>
  Status put(const std::vector<X>& v, const X** out) { return put(v.data(), v.size(), out); }
  // Engine scratch of `bytes` (null when 0), alive as long as the arrays.
  Status scratch(size_t bytes, void** out) {
    *out = nullptr;
    if (bytes == 0) return Status::Ok();
    keep_.emplace_back();
    QS_RETURN_IF_ERROR(engine_.empty(DType::U8, {(int64_t)bytes}, &keep_.back()));
    *out = keep_.back().raw();
    return Status::Ok();
  }
  void clear() { keep_.clear(); }

 private:
  Engine& engine_;
  Exec ex_;
  std::vector<Tensor> keep_;
};

namespace be {

// The engine buffer src (n) as host memory: src itself on a CPU engine, else a downloaded copy
// in *copy (the download waits for the stream).
template <typename T>
Status host_view(const Exec& ex, const T* src, int64_t n, std::vector<T>* copy, const T** out) {
  if (!ex.cuda) {
    *out = src;
    return Status::Ok();
  }
  copy->resize((size_t)n);
  *out = copy->data();
  return download(ex, copy->data(), src, sizeof(T) * (size_t)n);
}

// ---- blocks, split around the attention (the step runs its own attention in between) --------
template <typename T>
Status block_out_backward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w,
                          const cpu::LayerWeights<T>& g, const cpu::LayerActs<T>& a, cpu::Scratch<T>& s, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_out_backward(c, w, g, a, s, N, ex.stream)); }
  cpu::block_out_backward(c, w, g, a, s, N);
  return Status::Ok();
}
template <typename T>
Status attention_backward_call(const Exec& ex, const ModelConfig& c, const cpu::LayerActs<T>& a, cpu::Scratch<T>& s,
                               const cpu::AttnPattern& p, void* scratch) {
  if (ex.cuda) { QS_BE_CUDA(cuda::attention_backward_call(c, a, s, p, scratch, ex.stream)); }
  cpu::attention_backward_call(c, a, s, p);
  return Status::Ok();
}
template <typename T>
Status block_qkv_backward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w,
                          const cpu::LayerWeights<T>& g, const cpu::LayerActs<T>& a, const T* x, const int32_t* pos,
                          cpu::Scratch<T>& s, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_qkv_backward(c, w, g, a, x, pos, s, N, ex.stream)); }
  cpu::block_qkv_backward(c, w, g, a, x, pos, s, N);
  return Status::Ok();
}

// ---- raw embedding lookups (ids in [0, V), positions in [0, P)) -----------------------------
template <typename T>
Status embedding_forward(const Exec& ex, T* out, const int32_t* ids, const T* table, int N, int D, int V) {
  if (ex.cuda) { QS_BE_CUDA(cuda::embedding_forward(out, ids, table, N, D, V, ex.stream)); }
  cpu::embedding_forward<T>(out, ids, table, N, D);
  return Status::Ok();
}
template <typename T>
Status embedding_backward(const Exec& ex, T* dtable, const T* dout, const int32_t* ids, int N, int D, int V) {
  if (ex.cuda) { QS_BE_CUDA(cuda::embedding_backward(dtable, dout, ids, N, D, V, ex.stream)); }
  cpu::embedding_backward<T>(dtable, dout, ids, N, D);
  return Status::Ok();
}
template <typename T>
Status position_embedding_forward(const Exec& ex, T* out, const int32_t* pos, const T* wpe, int N, int D, int P) {
  if (ex.cuda) { QS_BE_CUDA(cuda::position_embedding_forward(out, out, pos, wpe, N, D, P, ex.stream)); }
  cpu::position_embedding_forward<T>(out, pos, wpe, N, D);
  return Status::Ok();
}
template <typename T>
Status position_embedding_backward(const Exec& ex, T* dwpe, const T* dout, const int32_t* pos, int N, int D, int P) {
  if (ex.cuda) { QS_BE_CUDA(cuda::position_embedding_backward(dwpe, dout, pos, N, D, P, ex.stream)); }
  cpu::position_embedding_backward<T>(dwpe, dout, pos, N, D);
  return Status::Ok();
}

// ---- thought attention (cpu/thought_attention.h) ---------------------------------------------
template <typename T>
Status thought_attention_forward(const Exec& ex, T* out, float* lse, const T* q, const T* kb, const T* vb, const T* kc,
                                 const T* vc, const uint8_t* valid, const cpu::ThoughtAttentionShape& s, T scale) {
  if (ex.cuda) { QS_BE_CUDA(cuda::thought_attention_forward(out, lse, q, kb, vb, kc, vc, valid, s, scale, ex.stream)); }
  cpu::ProfScope ps(cpu::kProfAttention);
  cpu::thought_attention_forward<T>(out, lse, q, kb, vb, kc, vc, valid, s, scale);
  return Status::Ok();
}
inline size_t thought_attention_scratch_bytes(const Exec& ex, const cpu::ThoughtAttentionShape& s) {
#ifdef QUIETSTAR_HAVE_CUDA
  if (ex.cuda) return cuda::thought_attention_backward_scratch_bytes(s);
#endif
  (void)ex, (void)s;
  return 0;
}
template <typename T>
Status thought_attention_backward(const Exec& ex, T* dq, T* dkb, T* dvb, T* dkc, T* dvc, const T* dout, const T* q,
                                  const T* kb, const T* vb, const T* kc, const T* vc, const T* out, const float* lse,
                                  const uint8_t* valid, const cpu::ThoughtAttentionShape& s, T scale, void* scratch) {
  if (ex.cuda) {
    QS_BE_CUDA(cuda::thought_attention_backward(dq, dkb, dvb, dkc, dvc, dout, q, kb, vb, kc, vc, out, lse, valid, s,
                                                scale, scratch, ex.stream));
  }
  cpu::ProfScope ps(cpu::kProfAttention);
  cpu::thought_attention_backward<T>(dq, dkb, dvb, dkc, dvc, dout, q, kb, vb, kc, vc, out, lse, valid, s, scale);
  return Status::Ok();
}

// ---- the fused thought sampler (cpu/thought_sampling.h); suppress is engine memory ----------
inline size_t thought_sample_scratch_bytes(const Exec& ex, int N, int V) {
#ifdef QUIETSTAR_HAVE_CUDA
  if (ex.cuda) return cuda::thought_sample_scratch_bytes(N, V);
#endif
  (void)ex, (void)N, (void)V;
  return 0;
}
template <typename T>
Status thought_sample(const Exec& ex, int32_t* tokens, const T* h, const T* W, int N, int D, int V, const int32_t* rows,
                      const int32_t* positions, const int32_t* suppress, int n_suppress,
                      const cpu::ThoughtSampleParams& p, void* scratch) {
  if (ex.cuda) {
    QS_BE_CUDA(cuda::thought_sample_f32(tokens, nullptr, nullptr, h, W, N, D, V, rows, positions, suppress, n_suppress,
                                        p, scratch, ex.stream));
  }
  cpu::ProfScope ps(cpu::kProfHead);
  cpu::thought_sample<T>(tokens, nullptr, nullptr, h, W, N, D, V, rows, positions, suppress, n_suppress, p);
  return Status::Ok();
}

// ---- mixing head and row moves (cpu/quietstar_heads.h) ---------------------------------------
template <typename T>
Status mixing_forward(const Exec& ex, const cpu::MixingActs<T>& a, const T* hb, const T* hc,
                      const cpu::MixingWeights<T>& w, int n, int D, bool weights_base, bool sigmoid) {
  if (ex.cuda) { QS_BE_CUDA(cuda::mixing_forward(a, hb, hc, w, n, D, weights_base, sigmoid, ex.stream)); }
  cpu::ProfScope ps(cpu::kProfMatmul);
  cpu::mixing_forward<T>(a, hb, hc, w, n, D, weights_base, sigmoid);
  return Status::Ok();
}
template <typename T>
Status mixing_backward(const Exec& ex, T* dhb, T* dhc, const cpu::MixingGrads<T>& g, T* dhm, T* t1, T* dw,
                       const cpu::MixingActs<T>& a, const T* hb, const T* hc, const cpu::MixingWeights<T>& w, int n,
                       int D, bool weights_base, bool sigmoid) {
  if (ex.cuda) {
    QS_BE_CUDA(cuda::mixing_backward(dhb, dhc, g, dhm, t1, dw, a, hb, hc, w, n, D, weights_base, sigmoid, ex.stream));
  }
  cpu::ProfScope ps(cpu::kProfMatmul);
  cpu::mixing_backward<T>(dhb, dhc, g, dhm, t1, dw, a, hb, hc, w, n, D, weights_base, sigmoid);
  return Status::Ok();
}
template <typename T>
Status gather_rows(const Exec& ex, T* dst, const T* src, const int64_t* rows, int64_t n, int D, T f) {
  if (ex.cuda) { QS_BE_CUDA(cuda::gather_rows(dst, src, rows, n, D, f, ex.stream)); }
  cpu::gather_rows<T>(dst, src, rows, n, D, f);
  return Status::Ok();
}
template <typename T>
Status fill_rows(const Exec& ex, T* dst, const T* vec, const int64_t* rows, int64_t n, int D, T f) {
  if (ex.cuda) { QS_BE_CUDA(cuda::fill_rows(dst, vec, rows, n, D, f, ex.stream)); }
  cpu::fill_rows<T>(dst, vec, rows, n, D, f);
  return Status::Ok();
}
template <typename T>
Status sum_rows(const Exec& ex, T* out, const T* src, const int64_t* rows, int64_t n, int D, T f) {
  if (ex.cuda) { QS_BE_CUDA(cuda::sum_rows(out, src, rows, n, D, f, ex.stream)); }
  cpu::sum_rows<T>(out, src, rows, n, D, f);
  return Status::Ok();
}
// dst[row_of[k]] += f · src[k] for k in [0, n), deterministic (the lists are built on the host
// and staged for the engine).
template <typename T>
Status scatter_add_rows(const Exec& ex, StagedArrays& staged, T* dst, const T* src, const std::vector<int64_t>& row_of,
                        int D, T f) {
  if (row_of.empty()) return Status::Ok();
  cpu::ScatterLists L;
  cpu::scatter_lists(row_of.data(), (int64_t)row_of.size(), &L);
  const int64_t *dest, *start, *from;
  QS_RETURN_IF_ERROR(staged.put(L.dest, &dest));
  QS_RETURN_IF_ERROR(staged.put(L.start, &start));
  QS_RETURN_IF_ERROR(staged.put(L.from, &from));
  const int64_t m = (int64_t)L.dest.size();
  if (ex.cuda) { QS_BE_CUDA(cuda::scatter_add_rows(dst, src, dest, start, from, m, D, f, ex.stream)); }
  cpu::scatter_add_rows<T>(dst, src, dest, start, from, m, D, f);
  return Status::Ok();
}

}  // namespace be
}  // namespace qs
