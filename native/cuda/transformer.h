// transformer.h: the decoder-only transformer's passes on the GPU, the CUDA twin of
// cpu/transformer.h (same blocks, same structs, same weight layouts), f32 only.
//
// Everything here works on device pointers: the weights and gradients are views of the flat
// device buffers (cpu::bind_weights works on any pointer), the activations are carved by
// model_run.cpp out of one device allocation, and token ids / positions / validity are device
// arrays too (AttnPattern's pointers included). Every function enqueues on `stream` (the
// engine's cudaStream_t), never synchronises and returns a Status.
//
// Same split as the CPU (see cpu/transformer.h for the roles and the conventions):
//   block_qkv_forward   x ─norm1─> ln1 ─> q, k, v  (+ RoPE on q, k for Llama, in place)
//   attention_forward   q, k, v ─> att, lse              (kernels_attention.h)
//   block_out_forward   res2 = x + att·Wo + bo;  out = res2 + MLP(norm2(res2))
// and the backward mirrors, which ADD parameter gradients into the grads views. The residual
// gradient lives in Scratch::dres, updated in place as on the CPU. The attention backward needs
// device scratch of attention_scratch_bytes(c, p) bytes (the caller carves it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/transformer.h"
#include "quietstar/status.h"

namespace qs::cuda {

using Weights = cpu::ModelWeights<float>;
using Layer = cpu::LayerWeights<float>;
using Acts = cpu::LayerActs<float>;
using Grads = cpu::Scratch<float>;

// ---- embeddings --------------------------------------------------------------------------
// out (N, D) = wte[ids] (+ wpe[pos] for GPT-2); ids, pos (N) device int32
Status embed_forward(const ModelConfig& c, const Weights& w, float* out, const int32_t* ids, const int32_t* pos, int N,
                     void* stream);
// g.wte (+ g.wpe) += scatter of dout (N, D)
Status embed_backward(const ModelConfig& c, const Weights& g, const float* dout, const int32_t* ids, const int32_t* pos,
                      int N, void* stream);

// ---- one block ---------------------------------------------------------------------------
// x (N, D) the block input; pos (N) device token positions (RoPE; unused by GPT-2).
Status block_qkv_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, const int32_t* pos, int N,
                         void* stream);
// att, lse from q (B, Tq, H, hd) and k, v (B, Tk, Hkv, hd) (a.k / a.v, or a KV cache).
Status attention_forward_call(const ModelConfig& c, Acts& a, const float* k, const float* v, const cpu::AttnPattern& p,
                              void* stream);
Status block_out_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, int N, void* stream);
// The three above with the layer's own k, v.
Status block_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, const int32_t* pos,
                     const cpu::AttnPattern& p, void* stream);

// Device bytes the attention backward of pattern p needs as scratch.
size_t attention_scratch_bytes(const ModelConfig& c, const cpu::AttnPattern& p);

// s.dres: d/d(out) on entry, d/d(res2) on exit; writes s.datt. Grads += into g.
Status block_out_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, Grads& s, int N,
                          void* stream);
// s.datt -> s.dq, s.dk, s.dv (overwritten); scratch: attention_scratch_bytes(c, p) device bytes
Status attention_backward_call(const ModelConfig& c, const Acts& a, Grads& s, const cpu::AttnPattern& p, void* scratch,
                               void* stream);
// s.dq, s.dk, s.dv -> s.dres += d/dx. Clobbers s.dq, s.dk (RoPE, inverted in place).
Status block_qkv_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, const float* x,
                          const int32_t* pos, Grads& s, int N, void* stream);
Status block_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, const float* x,
                      const int32_t* pos, Grads& s, const cpu::AttnPattern& p, void* scratch, void* stream);

// ---- final norm and head -----------------------------------------------------------------
// hf (N, D) = norm_f(x); mean unused (may be null) for RMSNorm.
Status final_norm_forward(const ModelConfig& c, const Weights& w, float* hf, float* mean, float* rstd, const float* x,
                          int N, void* stream);
// dx (N, D) += d/dx from dhf; grads += into g.
Status final_norm_backward(const ModelConfig& c, const Weights& w, const Weights& g, float* dx, const float* dhf,
                           const float* x, const float* mean, const float* rstd, int N, void* stream);
// logits (N, V) = hf · headᵀ
Status head_logits(const ModelConfig& c, const Weights& w, float* logits, const float* hf, int N, void* stream);

// ---- device memory helpers of the model's passes -------------------------------------------
// dst[r * dst_pitch + (0, width)) = src[r * src_pitch + (0, width)) for r < rows (bytes; device)
Status copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 void* stream);

}  // namespace qs::cuda
