// model_backend.h: where the Model's passes run: one set of calls that go to cpu/transformer.h
// on a CPU engine and to cuda/transformer.h on a CUDA engine, so model_run.cpp writes each pass
// once. Every function returns a Status (the CPU kernels cannot fail: always OK there).
//
// The CUDA kernels are f32 only: a double call on a CUDA engine returns INVALID_ARGUMENT (the
// passes refuse f64 on CUDA up front, so this is a backstop). In a build without the CUDA
// backend a CUDA engine cannot exist; the CUDA branches are not compiled there.
//
// Memory helpers: buffers are host memory on a CPU engine and device memory on a CUDA engine
// (both carved out of engine tensors); uploads/downloads take host memory on the other side and
// wait for the copy (cuda_backend.h), so host vectors may be freed right after.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/lmhead_xent.h"
#include "cpu/transformer.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#include "cuda/transformer.h"
#endif

namespace qs {

// The device a pass runs on: a CPU engine (cuda = false) or a CUDA engine and its stream.
struct Exec {
  bool cuda = false;
  void* stream = nullptr;
};
inline Exec exec_of(const Engine& e) { return Exec{e.device() == Device::CUDA, e.stream()}; }

namespace be {

inline Status f64_on_cuda() {
  return QS_ERROR(INVALID_ARGUMENT, "the model's CUDA path takes f32 parameters (got f64)");
}

// Inside `if (ex.cuda) { ... }` of a function templated on T: returns the CUDA call's status
// (float), or the f64 refusal; without the CUDA backend, UNAVAILABLE.
#ifdef QUIETSTAR_HAVE_CUDA
#define QS_BE_CUDA(call)                          \
  if constexpr (std::is_same_v<T, float>) {       \
    return call;                                  \
  } else {                                        \
    return ::qs::be::f64_on_cuda();               \
  }
#else
#define QS_BE_CUDA(call) return QS_ERROR(UNAVAILABLE, "this build has no CUDA backend")
#endif

// ---- memory ---------------------------------------------------------------------------------
// dst[0, bytes) = 0
inline Status zero(const Exec& ex, void* dst, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (ex.cuda) return cuda::memset_zero(dst, bytes, ex.stream);
  std::memset(dst, 0, bytes);
  return Status::Ok();
}
// engine buffer dst = host src
inline Status upload(const Exec& ex, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (ex.cuda) return cuda::memcpy_h2d(dst, src, bytes, ex.stream);
  std::memcpy(dst, src, bytes);
  return Status::Ok();
}
// host dst = engine buffer src
inline Status download(const Exec& ex, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::Ok();
  if (ex.cuda) return cuda::memcpy_d2h(dst, src, bytes, ex.stream);
  std::memcpy(dst, src, bytes);
  return Status::Ok();
}
// rows strided copy within engine memory: dst[r·dst_pitch + [0, width)) = src[r·src_pitch + ...]
inline Status copy_rows(const Exec& ex, void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                        size_t rows) {
#ifdef QUIETSTAR_HAVE_CUDA
  if (ex.cuda) return cuda::copy_rows(dst, dst_pitch, src, src_pitch, width, rows, ex.stream);
#endif
  for (size_t r = 0; r < rows; r++)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
  return Status::Ok();
}

// ---- embeddings -----------------------------------------------------------------------------
template <typename T>
Status embed_forward(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, T* out, const int32_t* ids,
                     const int32_t* pos, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::embed_forward(c, w, out, ids, pos, N, ex.stream)); }
  cpu::embed_forward(c, w, out, ids, pos, N);
  return Status::Ok();
}
template <typename T>
Status embed_backward(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& g, const T* dout,
                      const int32_t* ids, const int32_t* pos, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::embed_backward(c, g, dout, ids, pos, N, ex.stream)); }
  cpu::embed_backward(c, g, dout, ids, pos, N);
  return Status::Ok();
}

// ---- blocks ---------------------------------------------------------------------------------
template <typename T>
Status block_qkv_forward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w, cpu::LayerActs<T>& a,
                         const T* x, const int32_t* pos, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_qkv_forward(c, w, a, x, pos, N, ex.stream)); }
  cpu::block_qkv_forward(c, w, a, x, pos, N);
  return Status::Ok();
}
template <typename T>
Status attention_forward_call(const Exec& ex, const ModelConfig& c, cpu::LayerActs<T>& a, const T* k, const T* v,
                              const cpu::AttnPattern& p) {
  if (ex.cuda) { QS_BE_CUDA(cuda::attention_forward_call(c, a, k, v, p, ex.stream)); }
  cpu::attention_forward_call(c, a, k, v, p);
  return Status::Ok();
}
template <typename T>
Status block_out_forward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w, cpu::LayerActs<T>& a,
                         const T* x, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_out_forward(c, w, a, x, N, ex.stream)); }
  cpu::block_out_forward(c, w, a, x, N);
  return Status::Ok();
}
template <typename T>
Status block_forward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w, cpu::LayerActs<T>& a,
                     const T* x, const int32_t* pos, const cpu::AttnPattern& p) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_forward(c, w, a, x, pos, p, ex.stream)); }
  cpu::block_forward(c, w, a, x, pos, p);
  return Status::Ok();
}
// scratch: attention_scratch_bytes() device bytes on CUDA (unused on the CPU)
template <typename T>
Status block_backward(const Exec& ex, const ModelConfig& c, const cpu::LayerWeights<T>& w,
                      const cpu::LayerWeights<T>& g, const cpu::LayerActs<T>& a, const T* x, const int32_t* pos,
                      cpu::Scratch<T>& s, const cpu::AttnPattern& p, void* scratch) {
  if (ex.cuda) { QS_BE_CUDA(cuda::block_backward(c, w, g, a, x, pos, s, p, scratch, ex.stream)); }
  cpu::block_backward(c, w, g, a, x, pos, s, p);
  return Status::Ok();
}

// ---- final norm, head, LM head + cross-entropy ------------------------------------------------
template <typename T>
Status final_norm_forward(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, T* hf, T* mean, T* rstd,
                          const T* x, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::final_norm_forward(c, w, hf, mean, rstd, x, N, ex.stream)); }
  cpu::final_norm_forward(c, w, hf, mean, rstd, x, N);
  return Status::Ok();
}
template <typename T>
Status final_norm_backward(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w,
                           const cpu::ModelWeights<T>& g, T* dx, const T* dhf, const T* x, const T* mean, const T* rstd,
                           int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::final_norm_backward(c, w, g, dx, dhf, x, mean, rstd, N, ex.stream)); }
  cpu::final_norm_backward(c, w, g, dx, dhf, x, mean, rstd, N);
  return Status::Ok();
}
template <typename T>
Status head_logits(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, T* logits, const T* hf, int N) {
  if (ex.cuda) { QS_BE_CUDA(cuda::head_logits(c, w, logits, hf, N, ex.stream)); }
  cpu::head_logits(c, w, logits, hf, N);
  return Status::Ok();
}

// losses (N), lse (N) of h (N, D) against head W (V, D) and targets (N) (ignore_index rows: 0).
// scratch: xent_scratch_bytes(ex, N, V) device bytes on CUDA.
template <typename T>
Status lmhead_xent_forward(const Exec& ex, T* losses, float* lse, const T* h, const T* W, const int32_t* targets, int N,
                           int D, int V, int ignore_index, void* scratch) {
  if (ex.cuda) { QS_BE_CUDA(cuda::lmhead_xent_forward_f32(losses, lse, h, W, targets, N, D, V, ignore_index, scratch, ex.stream)); }
  cpu::ProfScope ps(cpu::kProfHead);
  cpu::lmhead_xent_forward<T>(losses, lse, h, W, targets, N, D, V, ignore_index, 0);
  return Status::Ok();
}
// dh (N, D) +=, dW (V, D) += from dlosses (N) and the forward's lse.
template <typename T>
Status lmhead_xent_backward(const Exec& ex, T* dh, T* dW, const T* dlosses, const T* h, const T* W,
                            const int32_t* targets, const float* lse, int N, int D, int V, int ignore_index,
                            void* scratch) {
  if (ex.cuda) {
    QS_BE_CUDA(cuda::lmhead_xent_backward_f32(dh, dW, dlosses, h, W, targets, lse, N, D, V, ignore_index, 0, scratch,
                                              ex.stream));
  }
  cpu::ProfScope ps(cpu::kProfHead);
  cpu::lmhead_xent_backward<T>(dh, dW, dlosses, h, W, targets, lse, N, D, V, ignore_index, 0);
  return Status::Ok();
}

// ---- device scratch sizes (0 on a CPU engine) -----------------------------------------------
// The LM head's forward and backward (chunk 0 = the default) for N rows.
inline size_t xent_scratch_bytes(const Exec& ex, int N, int V) {
#ifdef QUIETSTAR_HAVE_CUDA
  if (ex.cuda) {
    const size_t f = cuda::lmhead_xent_forward_scratch_bytes(N, V), b = cuda::lmhead_xent_backward_scratch_bytes(N, V, 0);
    return f > b ? f : b;
  }
#endif
  return 0;
}
// The attention backward of pattern p.
inline size_t attention_scratch_bytes(const Exec& ex, const ModelConfig& c, const cpu::AttnPattern& p) {
#ifdef QUIETSTAR_HAVE_CUDA
  if (ex.cuda) return cuda::attention_scratch_bytes(c, p);
#endif
  return 0;
}

}  // namespace be
}  // namespace qs
