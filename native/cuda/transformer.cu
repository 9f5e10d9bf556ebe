// transformer.cu: the transformer's per-layer passes on the GPU (see transformer.h), the CUDA
// twin of cpu/transformer.cpp, built from the launchers of kernels_nn.h / kernels_attention.h.
//
// As on the CPU, linear layers call gemm directly rather than linear_forward/backward: outputs
// are written with a row stride (GPT-2's c_attn column blocks q | k | v of the [D, 3D] Conv1D),
// a residual is accumulated straight into the output (beta = 1 with gemm_bias's bias epilogue:
// res2 = x + att·Wo + bo is one device copy and one gemm), and activation gradients are
// overwritten (beta = 0) so nothing needs zeroing. Two small kernels live here: the column sums
// of a strided gradient (bias gradients) and RoPE's inverse rotation in place (the CPU rotates
// by the negated positions; rope.cu's backward accumulates, which cannot run in place).
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/kernels_attention.h"
#include "cuda/kernels_nn.h"
#include "cuda/launch.cuh"
#include "cuda/transformer.h"

namespace qs::cuda {

namespace {

inline bool is_gpt2(const ModelConfig& c) { return c.family == ModelFamily::GPT2; }
inline float* at(float* p, int64_t offset) { return p ? p + offset : nullptr; }

// db (N) += column sums of dy (M, N) [row stride ldy]: one thread per column walks the rows in
// order (deterministic; neighbouring threads read neighbouring columns, so loads coalesce).
__global__ void bias_grad_kernel(float* db, const float* dy, int ldy, int M, int N) {
  QS_GRID_STRIDE(n, N) {
    float s = 0.f;
    for (int m = 0; m < M; m++) s += dy[(int64_t)m * ldy + n];
    db[n] += s;
  }
}

// x (N, H, d) = R(-a) x in place, a = pos[n] · theta^(-2i/d): rotate_half's inverse rotation,
// angles formed in double as in rope.cu. One thread per pair (i, i + half), read before written.
__global__ void rope_inverse_kernel(float* x, const int32_t* pos, int N, int H, int d, double theta) {
  const int half = d / 2;
  QS_GRID_STRIDE(k, (int64_t)N * H * half) {
    const int i = (int)(k % half);
    const int64_t row = k / half;  // n * H + h
    const int n = (int)(row / H);
    const double a = (double)pos[n] * pow(theta, -(2.0 * i) / d);
    const float cs = (float)cos(a), sn = (float)sin(a);
    const int64_t lo = row * d + i, hi = lo + half;
    const float x0 = x[lo], x1 = x[hi];
    x[lo] = x0 * cs + x1 * sn;
    x[hi] = x1 * cs - x0 * sn;
  }
}

// x (N, H, d) = R(-a) x in place
Status rope_inverse(float* x, const int32_t* pos, int N, int H, int d, double theta, void* stream) {
  const int64_t pairs = (int64_t)N * H * (d / 2);
  if (pairs == 0) return Status::Ok();
  rope_inverse_kernel<<<grid_for(pairs), kBlock, 0, (cudaStream_t)stream>>>(x, pos, N, H, d, theta);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status zero(float* p, int64_t n, void* stream) {
  if (n <= 0) return Status::Ok();
  QS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p, 0, sizeof(float) * (size_t)n, (cudaStream_t)stream));
  return Status::Ok();
}

Status copy(float* dst, const float* src, int64_t n, void* stream) {
  if (n <= 0 || dst == src) return Status::Ok();
  QS_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dst, src, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
  return Status::Ok();
}

// out (M, N) [ldo] (= or +=) x (M, K) [ldx] · op(W) (+ bias)
// W is (N, K) [ldw] when out_in (torch Linear), (K, N) [ldw] otherwise (GPT-2 Conv1D).
// gemm_bias: out = acc + bias (beta 0) or out + acc + bias (beta 1), as the CPU's mm_forward.
Status mm_forward(float* out, int ldo, const float* x, int ldx, const float* W, int ldw, bool out_in, const float* bias,
                  int M, int K, int N, bool accumulate, void* stream) {
  return gemm_bias(false, out_in, M, N, K, 1.f, x, ldx, W, ldw, accumulate ? 1.f : 0.f, out, ldo, bias, stream);
}

// Backward of mm_forward: dx (M, K) [ldx] (= or +=) dy · op(W)ᵀ;  dW += ;  db += column sums.
Status mm_backward(float* dx, int ldx, bool dx_accumulate, float* dW, float* db, const float* dy, int ldy,
                   const float* x, int ldxi, const float* W, int ldw, bool out_in, int M, int K, int N, void* stream) {
  if (dx) QS_RETURN_IF_ERROR(gemm(false, !out_in, M, K, N, 1.f, dy, ldy, W, ldw, dx_accumulate ? 1.f : 0.f, dx, ldx, stream));
  if (dW) {
    if (out_in) QS_RETURN_IF_ERROR(gemm(true, false, N, K, M, 1.f, dy, ldy, x, ldxi, 1.f, dW, ldw, stream));  // dW (N,K) += dyᵀ x
    else QS_RETURN_IF_ERROR(gemm(true, false, K, N, M, 1.f, x, ldxi, dy, ldy, 1.f, dW, ldw, stream));         // dW (K,N) += xᵀ dy
  }
  if (db && N > 0) {
    bias_grad_kernel<<<grid_for(N), kBlock, 0, (cudaStream_t)stream>>>(db, dy, ldy, M, N);
    QS_CUDA_CHECK_LAUNCH(stream);
  }
  return Status::Ok();
}

Status norm_forward(const ModelConfig& c, float* out, float* mean, float* rstd, const float* x, const float* w,
                    const float* b, int N, void* stream) {
  if (is_gpt2(c)) return layernorm_forward(out, mean, rstd, x, w, b, N, c.d_model, (float)c.norm_eps, stream);
  return rmsnorm_forward(out, rstd, x, w, N, c.d_model, (float)c.norm_eps, stream);
}

// dx (N, D) += norm backward; dw, db += (either may be null)
Status norm_backward(const ModelConfig& c, float* dx, float* dw, float* db, const float* dout, const float* x,
                     const float* w, const float* mean, const float* rstd, int N, void* stream) {
  if (is_gpt2(c)) return layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, c.d_model, stream);
  return rmsnorm_backward(dx, dw, dout, x, w, rstd, N, c.d_model, stream);
}

cpu::AttentionShape attention_shape(const ModelConfig& c, const cpu::AttnPattern& p) {
  return cpu::AttentionShape{p.B, p.Tq, p.Tk, c.n_heads, c.n_kv_heads, c.head_dim, p.window};
}

float attention_scale(const ModelConfig& c) { return (float)(1.0 / std::sqrt((double)c.head_dim)); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// embeddings

Status embed_forward(const ModelConfig& c, const Weights& w, float* out, const int32_t* ids, const int32_t* pos, int N,
                     void* stream) {
  QS_RETURN_IF_ERROR(embedding_forward(out, ids, w.wte, N, c.d_model, c.vocab_size, stream));
  if (is_gpt2(c))
    QS_RETURN_IF_ERROR(position_embedding_forward(out, out, pos, w.wpe, N, c.d_model, c.max_seq_len, stream));
  return Status::Ok();
}

Status embed_backward(const ModelConfig& c, const Weights& g, const float* dout, const int32_t* ids, const int32_t* pos,
                      int N, void* stream) {
  QS_RETURN_IF_ERROR(embedding_backward(g.wte, dout, ids, N, c.d_model, c.vocab_size, stream));
  if (is_gpt2(c)) QS_RETURN_IF_ERROR(position_embedding_backward(g.wpe, dout, pos, N, c.d_model, c.max_seq_len, stream));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// block forward

Status block_qkv_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, const int32_t* pos, int N,
                         void* stream) {
  const int D = c.d_model;
  QS_RETURN_IF_ERROR(norm_forward(c, a.ln1, a.ln1_mean, a.ln1_rstd, x, w.ln1_w, w.ln1_b, N, stream));
  if (is_gpt2(c)) {
    // c_attn [D, 3D]: columns [0, D) are q, [D, 2D) k, [2D, 3D) v
    QS_RETURN_IF_ERROR(mm_forward(a.q, D, a.ln1, D, w.qkv_w, 3 * D, false, w.qkv_b, N, D, D, false, stream));
    QS_RETURN_IF_ERROR(mm_forward(a.k, D, a.ln1, D, w.qkv_w + D, 3 * D, false, at(w.qkv_b, D), N, D, D, false, stream));
    QS_RETURN_IF_ERROR(
        mm_forward(a.v, D, a.ln1, D, w.qkv_w + 2 * D, 3 * D, false, at(w.qkv_b, 2 * D), N, D, D, false, stream));
  } else {
    const int Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
    QS_RETURN_IF_ERROR(mm_forward(a.q, Q, a.ln1, D, w.q_w, D, true, w.q_b, N, D, Q, false, stream));
    QS_RETURN_IF_ERROR(mm_forward(a.k, KV, a.ln1, D, w.k_w, D, true, w.k_b, N, D, KV, false, stream));
    QS_RETURN_IF_ERROR(mm_forward(a.v, KV, a.ln1, D, w.v_w, D, true, w.v_b, N, D, KV, false, stream));
    QS_RETURN_IF_ERROR(rope_forward(a.q, a.q, pos, N, c.n_heads, c.head_dim, c.rope_theta, stream));
    QS_RETURN_IF_ERROR(rope_forward(a.k, a.k, pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, stream));
  }
  return Status::Ok();
}

Status attention_forward_call(const ModelConfig& c, Acts& a, const float* k, const float* v, const cpu::AttnPattern& p,
                              void* stream) {
  return attention_forward(a.att, a.lse, a.q, k, v, p.q_pos, p.k_pos, p.k_valid, attention_shape(c, p),
                           attention_scale(c), stream);
}

Status block_out_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, int N, void* stream) {
  const int D = c.d_model, F = c.d_ff, Q = c.n_heads * c.head_dim;
  const bool g2 = is_gpt2(c);
  const int64_t ND = (int64_t)N * D, NF = (int64_t)N * F;
  // res2 = x + att · Wo + bo
  QS_RETURN_IF_ERROR(copy(a.res2, x, ND, stream));
  QS_RETURN_IF_ERROR(mm_forward(a.res2, D, a.att, Q, w.o_w, g2 ? D : Q, !g2, w.o_b, N, Q, D, true, stream));
  // MLP on norm2(res2)
  QS_RETURN_IF_ERROR(norm_forward(c, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w.ln2_w, w.ln2_b, N, stream));
  if (g2) {
    QS_RETURN_IF_ERROR(mm_forward(a.fc, F, a.ln2, D, w.fc_w, F, false, w.fc_b, N, D, F, false, stream));
    QS_RETURN_IF_ERROR(gelu_forward(a.act, a.fc, NF, stream));
  } else {
    QS_RETURN_IF_ERROR(mm_forward(a.fc, F, a.ln2, D, w.fc_w, D, true, w.fc_b, N, D, F, false, stream));
    QS_RETURN_IF_ERROR(mm_forward(a.up, F, a.ln2, D, w.up_w, D, true, w.up_b, N, D, F, false, stream));
    QS_RETURN_IF_ERROR(swiglu_forward(a.act, a.fc, a.up, NF, stream));
  }
  // out = res2 + act · Wp + bp
  QS_RETURN_IF_ERROR(copy(a.out, a.res2, ND, stream));
  return mm_forward(a.out, D, a.act, F, w.proj_w, g2 ? D : F, !g2, w.proj_b, N, F, D, true, stream);
}

Status block_forward(const ModelConfig& c, const Layer& w, Acts& a, const float* x, const int32_t* pos,
                     const cpu::AttnPattern& p, void* stream) {
  const int N = p.B * p.Tq;
  QS_RETURN_IF_ERROR(block_qkv_forward(c, w, a, x, pos, N, stream));
  QS_RETURN_IF_ERROR(attention_forward_call(c, a, a.k, a.v, p, stream));
  return block_out_forward(c, w, a, x, N, stream);
}

// ---------------------------------------------------------------------------------------------
// block backward

size_t attention_scratch_bytes(const ModelConfig& c, const cpu::AttnPattern& p) {
  return attention_backward_scratch_bytes(attention_shape(c, p));
}

Status block_out_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, Grads& s, int N,
                          void* stream) {
  const int D = c.d_model, F = c.d_ff, Q = c.n_heads * c.head_dim;
  const bool g2 = is_gpt2(c);
  const int64_t NF = (int64_t)N * F;
  // out = res2 + act · Wp + bp
  QS_RETURN_IF_ERROR(
      mm_backward(s.dact, F, false, g.proj_w, g.proj_b, s.dres, D, a.act, F, w.proj_w, g2 ? D : F, !g2, N, F, D, stream));
  if (g2) {
    QS_RETURN_IF_ERROR(zero(s.dfc, NF, stream));  // gelu_backward accumulates
    QS_RETURN_IF_ERROR(gelu_backward(s.dfc, a.fc, s.dact, NF, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, false, g.fc_w, g.fc_b, s.dfc, F, a.ln2, D, w.fc_w, F, false, N, D, F, stream));
  } else {
    QS_RETURN_IF_ERROR(zero(s.dfc, NF, stream));  // swiglu_backward accumulates
    QS_RETURN_IF_ERROR(zero(s.dup, NF, stream));
    QS_RETURN_IF_ERROR(swiglu_backward(s.dfc, s.dup, a.fc, a.up, s.dact, NF, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, false, g.fc_w, g.fc_b, s.dfc, F, a.ln2, D, w.fc_w, D, true, N, D, F, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, true, g.up_w, g.up_b, s.dup, F, a.ln2, D, w.up_w, D, true, N, D, F, stream));
  }
  // res2 feeds both the MLP branch (through norm2) and the output: dres += norm2ᵀ(dln)
  QS_RETURN_IF_ERROR(
      norm_backward(c, s.dres, g.ln2_w, g.ln2_b, s.dln, a.res2, w.ln2_w, a.ln2_mean, a.ln2_rstd, N, stream));
  // res2 = x + att · Wo + bo
  return mm_backward(s.datt, Q, false, g.o_w, g.o_b, s.dres, D, a.att, Q, w.o_w, g2 ? D : Q, !g2, N, Q, D, stream);
}

Status attention_backward_call(const ModelConfig& c, const Acts& a, Grads& s, const cpu::AttnPattern& p, void* scratch,
                               void* stream) {
  const int64_t nq = (int64_t)p.B * p.Tq * c.n_heads * c.head_dim, nk = (int64_t)p.B * p.Tk * c.n_kv_heads * c.head_dim;
  QS_RETURN_IF_ERROR(zero(s.dq, nq, stream));  // the kernel accumulates
  QS_RETURN_IF_ERROR(zero(s.dk, nk, stream));
  QS_RETURN_IF_ERROR(zero(s.dv, nk, stream));
  return attention_backward(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, p.q_pos, p.k_pos, p.k_valid,
                            attention_shape(c, p), attention_scale(c), scratch, stream);
}

Status block_qkv_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, const float* x,
                          const int32_t* pos, Grads& s, int N, void* stream) {
  const int D = c.d_model;
  if (is_gpt2(c)) {
    QS_RETURN_IF_ERROR(
        mm_backward(s.dln, D, false, g.qkv_w, g.qkv_b, s.dq, D, a.ln1, D, w.qkv_w, 3 * D, false, N, D, D, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, true, g.qkv_w + D, at(g.qkv_b, D), s.dk, D, a.ln1, D, w.qkv_w + D, 3 * D,
                                   false, N, D, D, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, true, g.qkv_w + 2 * D, at(g.qkv_b, 2 * D), s.dv, D, a.ln1, D,
                                   w.qkv_w + 2 * D, 3 * D, false, N, D, D, stream));
  } else {
    const int Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
    // RoPE's backward is the rotation by -angle, in place.
    QS_RETURN_IF_ERROR(rope_inverse(s.dq, pos, N, c.n_heads, c.head_dim, c.rope_theta, stream));
    QS_RETURN_IF_ERROR(rope_inverse(s.dk, pos, N, c.n_kv_heads, c.head_dim, c.rope_theta, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, false, g.q_w, g.q_b, s.dq, Q, a.ln1, D, w.q_w, D, true, N, D, Q, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, true, g.k_w, g.k_b, s.dk, KV, a.ln1, D, w.k_w, D, true, N, D, KV, stream));
    QS_RETURN_IF_ERROR(mm_backward(s.dln, D, true, g.v_w, g.v_b, s.dv, KV, a.ln1, D, w.v_w, D, true, N, D, KV, stream));
  }
  return norm_backward(c, s.dres, g.ln1_w, g.ln1_b, s.dln, x, w.ln1_w, a.ln1_mean, a.ln1_rstd, N, stream);
}

Status block_backward(const ModelConfig& c, const Layer& w, const Layer& g, const Acts& a, const float* x,
                      const int32_t* pos, Grads& s, const cpu::AttnPattern& p, void* scratch, void* stream) {
  const int N = p.B * p.Tq;
  QS_RETURN_IF_ERROR(block_out_backward(c, w, g, a, s, N, stream));
  QS_RETURN_IF_ERROR(attention_backward_call(c, a, s, p, scratch, stream));
  return block_qkv_backward(c, w, g, a, x, pos, s, N, stream);
}

// ---------------------------------------------------------------------------------------------
// final norm and head

Status final_norm_forward(const ModelConfig& c, const Weights& w, float* hf, float* mean, float* rstd, const float* x,
                          int N, void* stream) {
  return norm_forward(c, hf, mean, rstd, x, w.lnf_w, w.lnf_b, N, stream);
}

Status final_norm_backward(const ModelConfig& c, const Weights& w, const Weights& g, float* dx, const float* dhf,
                           const float* x, const float* mean, const float* rstd, int N, void* stream) {
  return norm_backward(c, dx, g.lnf_w, g.lnf_b, dhf, x, w.lnf_w, mean, rstd, N, stream);
}

Status head_logits(const ModelConfig& c, const Weights& w, float* logits, const float* hf, int N, void* stream) {
  return gemm(false, true, N, c.vocab_size, c.d_model, 1.f, hf, c.d_model, w.head, c.d_model, 0.f, logits, c.vocab_size,
              stream);
}

// ---------------------------------------------------------------------------------------------
// memory helpers

Status copy_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows,
                 void* stream) {
  if (width == 0 || rows == 0) return Status::Ok();
  QS_CUDA_RETURN_IF_ERROR(
      cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
  return Status::Ok();
}

}  // namespace qs::cuda
