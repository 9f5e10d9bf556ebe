// transformer.cpp: the transformer's per-layer passes on the CPU (see transformer.h).
//
// Linear layers call gemm directly rather than linear_forward/backward, for three reasons:
// outputs can be written with a row stride (GPT-2's c_attn column blocks), a residual can be
// accumulated straight into the output (beta = 1: res2 = x + att·Wo is one copy and one gemm,
// no temporary), and activation gradients are overwritten (beta = 0) so nothing needs zeroing.
// Products with at most 8 rows (KV-cached decoding) skip gemm, whose packing of the whole
// weight matrix would cost more than the product itself (cpu/matmul_small.h).
//
// Attention: the flash kernel (attention.h) for the forward of full sequences; the gemm-blocked
// kernel (attention_gemm.h) for their backward; the per-query decoding kernel for <= 4 queries
// per row. All three share attention.h's contract, so any may stand in for another.
#include "cpu/transformer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <algorithm>

#include "cpu/activations.h"
#include "cpu/attention.h"
#include "cpu/attention_gemm.h"
#include "cpu/embedding.h"
#include "cpu/gemm.h"
#include "cpu/isa.h"
#include "cpu/layernorm.h"
#include "cpu/matmul_small.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#include "cpu/vec_math.h"

namespace qs::cpu {

// ---------------------------------------------------------------------------------------------
// profile

Profile& profile() {
  static Profile p;
  return p;
}

const char* profile_name(int kind) {
  static const char* names[kProfCount] = {"matmul", "attention", "lmhead_xent", "norm", "elementwise", "embedding"};
  return kind >= 0 && kind < kProfCount ? names[kind] : "?";
}

static double clock_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
ProfScope::ProfScope(int k) : kind(k), t0(profile().enabled ? clock_s() : 0) {}
ProfScope::~ProfScope() {
  if (profile().enabled) profile().seconds[kind] += clock_s() - t0;
}

namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements; below this, loops stay on one thread

template <typename T>
inline T* at(T* p, int64_t offset) { return p ? p + offset : nullptr; }

// p[0, n) = 0
template <typename T>
void zero(T* p, int64_t n) {
  ProfScope ps(kProfElementwise);
  const int64_t block = 1 << 14;
  const int64_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t b = 0; b < nb; b++) {
    int64_t i0 = b * block, len = n - i0 < block ? n - i0 : block;
    std::memset(p + i0, 0, sizeof(T) * (size_t)len);
  }
}

// out (M, N) = x (M, N) + bias (N); x null = 0, bias null = 0.
template <typename T>
void rows_plus_bias(T* out, const T* x, const T* bias, int M, int N) {
  ProfScope ps(kProfElementwise);
#pragma omp parallel for schedule(static) if ((int64_t)M * N > kParallelMin)
  for (int m = 0; m < M; m++) {
    T* o = out + (int64_t)m * N;
    const T* r = x ? x + (int64_t)m * N : nullptr;
    if (r && bias) for (int n = 0; n < N; n++) o[n] = r[n] + bias[n];
    else if (r) std::memcpy(o, r, sizeof(T) * (size_t)N);
    else if (bias) std::memcpy(o, bias, sizeof(T) * (size_t)N);
    else std::memset(o, 0, sizeof(T) * (size_t)N);
  }
}

// db (N) += column sums of dy (M, N) [row stride ldy]. Columns in chunks: each thread reads
// whole cache lines of a row, and every column is summed in row order (deterministic).
template <typename T>
void bias_grad(T* db, const T* dy, int ldy, int M, int N) {
  ProfScope ps(kProfElementwise);
  constexpr int kCols = 64;
  const int nch = (N + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if ((int64_t)M * N > kParallelMin && nch > 1)
  for (int ch = 0; ch < nch; ch++) {
    const int c0 = ch * kCols, nc = N - c0 < kCols ? N - c0 : kCols;
    T acc[kCols] = {};
    for (int m = 0; m < M; m++) {
      const T* row = dy + (int64_t)m * ldy + c0;
      for (int c = 0; c < nc; c++) acc[c] += row[c];
    }
    for (int c = 0; c < nc; c++) db[c0 + c] += acc[c];
  }
}

// out (M, N) [ldo] (= or +=) x (M, K) [ldx] · op(W) (+ bias)
// W is (N, K) [ldw] when out_in (torch Linear), (K, N) [ldw] otherwise (GPT-2 Conv1D).
template <typename T>
void mm_forward(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, bool out_in, const T* bias, int M, int K,
                int N, bool accumulate) {
  if (bias && !accumulate) {
    ProfScope ps(kProfElementwise);
#pragma omp parallel for schedule(static) if ((int64_t)M * N > kParallelMin)
    for (int m = 0; m < M; m++) std::memcpy(out + (int64_t)m * ldo, bias, sizeof(T) * (size_t)N);
    accumulate = true;
  } else if (bias) {
    ProfScope ps(kProfElementwise);
#pragma omp parallel for schedule(static) if ((int64_t)M * N > kParallelMin)
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) out[(int64_t)m * ldo + n] += bias[n];
  }
  ProfScope ps(kProfMatmul);
  if (M <= kSmallRows) matmul_small<T>(out, ldo, x, ldx, W, ldw, out_in, M, K, N, accumulate);
  else gemm<T>(false, out_in, M, N, K, T(1), x, ldx, W, ldw, accumulate ? T(1) : T(0), out, ldo);
}

// Backward of mm_forward: dx (M, K) [ldx] (= or +=) dy · op(W)ᵀ;  dW += ;  db += column sums.
template <typename T>
void mm_backward(T* dx, int ldx, bool dx_accumulate, T* dW, T* db, const T* dy, int ldy, const T* x, int ldxi,
                 const T* W, int ldw, bool out_in, int M, int K, int N) {
  {
    ProfScope ps(kProfMatmul);
    if (dx) gemm<T>(false, !out_in, M, K, N, T(1), dy, ldy, W, ldw, dx_accumulate ? T(1) : T(0), dx, ldx);
    if (dW) {
      if (out_in) gemm<T>(true, false, N, K, M, T(1), dy, ldy, x, ldxi, T(1), dW, ldw);  // dW (N,K) += dyᵀ x
      else gemm<T>(true, false, K, N, M, T(1), x, ldxi, dy, ldy, T(1), dW, ldw);         // dW (K,N) += xᵀ dy
    }
  }
  if (db) bias_grad(db, dy, ldy, M, N);
}

template <typename T>
void norm_forward(const ModelConfig& c, T* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N) {
  ProfScope ps(kProfNorm);
  if (c.family == ModelFamily::GPT2) layernorm_forward<T>(out, mean, rstd, x, w, b, N, c.d_model, (T)c.norm_eps);
  else rmsnorm_forward<T>(out, rstd, x, w, N, c.d_model, (T)c.norm_eps);
}

template <typename T>
void norm_backward(const ModelConfig& c, T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                   const T* rstd, int N) {
  ProfScope ps(kProfNorm);
  if (c.family == ModelFamily::GPT2) layernorm_backward<T>(dx, dw, db, dout, x, w, mean, rstd, N, c.d_model);
  else rmsnorm_backward<T>(dx, dw, dout, x, w, rstd, N, c.d_model);
}

inline bool is_gpt2(const ModelConfig& c) { return c.family == ModelFamily::GPT2; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// weights

template <typename T>
ModelWeights<T> bind_weights(const ModelConfig& c, const ParamLayout& layout, T* flat) {
  auto get = [&](const std::string& name) -> T* {
    const ParamEntry* e = layout.find(name);
    return e ? flat + e->offset : nullptr;
  };
  ModelWeights<T> w;
  w.layers.resize(c.n_layers);
  if (is_gpt2(c)) {
    w.wte = get("transformer.wte.weight");
    w.wpe = get("transformer.wpe.weight");
    w.lnf_w = get("transformer.ln_f.weight");
    w.lnf_b = get("transformer.ln_f.bias");
    for (int i = 0; i < c.n_layers; i++) {
      std::string p = "transformer.h." + std::to_string(i) + ".";
      LayerWeights<T>& l = w.layers[i];
      l.ln1_w = get(p + "ln_1.weight"), l.ln1_b = get(p + "ln_1.bias");
      l.qkv_w = get(p + "attn.c_attn.weight"), l.qkv_b = get(p + "attn.c_attn.bias");
      l.o_w = get(p + "attn.c_proj.weight"), l.o_b = get(p + "attn.c_proj.bias");
      l.ln2_w = get(p + "ln_2.weight"), l.ln2_b = get(p + "ln_2.bias");
      l.fc_w = get(p + "mlp.c_fc.weight"), l.fc_b = get(p + "mlp.c_fc.bias");
      l.proj_w = get(p + "mlp.c_proj.weight"), l.proj_b = get(p + "mlp.c_proj.bias");
    }
  } else {
    w.wte = get("model.embed_tokens.weight");
    w.lnf_w = get("model.norm.weight");
    for (int i = 0; i < c.n_layers; i++) {
      std::string p = "model.layers." + std::to_string(i) + ".";
      LayerWeights<T>& l = w.layers[i];
      l.ln1_w = get(p + "input_layernorm.weight");
      l.q_w = get(p + "self_attn.q_proj.weight"), l.q_b = get(p + "self_attn.q_proj.bias");
      l.k_w = get(p + "self_attn.k_proj.weight"), l.k_b = get(p + "self_attn.k_proj.bias");
      l.v_w = get(p + "self_attn.v_proj.weight"), l.v_b = get(p + "self_attn.v_proj.bias");
      l.o_w = get(p + "self_attn.o_proj.weight"), l.o_b = get(p + "self_attn.o_proj.bias");
      l.ln2_w = get(p + "post_attention_layernorm.weight");
      l.fc_w = get(p + "mlp.gate_proj.weight"), l.fc_b = get(p + "mlp.gate_proj.bias");
      l.up_w = get(p + "mlp.up_proj.weight"), l.up_b = get(p + "mlp.up_proj.bias");
      l.proj_w = get(p + "mlp.down_proj.weight"), l.proj_b = get(p + "mlp.down_proj.bias");
    }
  }
  w.head = c.tie_embeddings ? w.wte : get("lm_head.weight");
  return w;
}

// ---------------------------------------------------------------------------------------------
// embeddings

template <typename T>
void embed_forward(const ModelConfig& c, const ModelWeights<T>& w, T* out, const int32_t* ids, const int32_t* pos, int N) {
  ProfScope ps(kProfEmbed);
  embedding_forward<T>(out, ids, w.wte, N, c.d_model);
  if (is_gpt2(c)) position_embedding_forward<T>(out, pos, w.wpe, N, c.d_model);
}

template <typename T>
void embed_backward(const ModelConfig& c, const ModelWeights<T>& g, const T* dout, const int32_t* ids, const int32_t* pos,
                    int N) {
  ProfScope ps(kProfEmbed);
  embedding_backward<T>(g.wte, dout, ids, N, c.d_model);
  if (is_gpt2(c)) position_embedding_backward<T>(g.wpe, dout, pos, N, c.d_model);
}

// ---------------------------------------------------------------------------------------------
// block forward

template <typename T>
void block_qkv_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, const int32_t* pos,
                       int N) {
  const int D = c.d_model;
  norm_forward(c, a.ln1, a.ln1_mean, a.ln1_rstd, x, w.ln1_w, w.ln1_b, N);
  if (is_gpt2(c)) {
    // c_attn [D, 3D]: columns [0, D) are q, [D, 2D) k, [2D, 3D) v
    mm_forward(a.q, D, a.ln1, D, w.qkv_w, 3 * D, false, w.qkv_b, N, D, D, false);
    mm_forward(a.k, D, a.ln1, D, w.qkv_w + D, 3 * D, false, at(w.qkv_b, D), N, D, D, false);
    mm_forward(a.v, D, a.ln1, D, w.qkv_w + 2 * D, 3 * D, false, at(w.qkv_b, 2 * D), N, D, D, false);
  } else {
    const int Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
    mm_forward(a.q, Q, a.ln1, D, w.q_w, D, true, w.q_b, N, D, Q, false);
    mm_forward(a.k, KV, a.ln1, D, w.k_w, D, true, w.k_b, N, D, KV, false);
    mm_forward(a.v, KV, a.ln1, D, w.v_w, D, true, w.v_b, N, D, KV, false);
    ProfScope ps(kProfElementwise);
    rope_forward<T>(a.q, a.q, pos, N, c.n_heads, c.head_dim, c.rope_theta);
    rope_forward<T>(a.k, a.k, pos, N, c.n_kv_heads, c.head_dim, c.rope_theta);
  }
}

template <typename T>
void attention_forward_call(const ModelConfig& c, LayerActs<T>& a, const T* k, const T* v, const AttnPattern& p) {
  ProfScope ps(kProfAttention);
  AttentionShape s{p.B, p.Tq, p.Tk, c.n_heads, c.n_kv_heads, c.head_dim, p.window};
  const T scale = (T)(1.0 / std::sqrt((double)c.head_dim));
  // A few queries per row (decoding): per-query dot products; the flash kernel's 64-query tiles
  // would mostly compute padding.
  if (p.Tq <= 4) attention_decode_forward<T>(a.att, a.lse, a.q, k, v, p.q_pos, p.k_pos, p.k_valid, s, scale);
  else attention_forward<T>(a.att, a.lse, a.q, k, v, p.q_pos, p.k_pos, p.k_valid, s, scale);
}

template <typename T>
void block_out_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, int N) {
  const int D = c.d_model, F = c.d_ff, Q = c.n_heads * c.head_dim;
  const bool g2 = is_gpt2(c);
  // res2 = x + att · Wo + bo
  rows_plus_bias(a.res2, x, w.o_b, N, D);
  mm_forward(a.res2, D, a.att, Q, w.o_w, g2 ? D : Q, !g2, (const T*)nullptr, N, Q, D, true);
  // MLP on norm2(res2)
  norm_forward(c, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w.ln2_w, w.ln2_b, N);
  if (g2) {
    mm_forward(a.fc, F, a.ln2, D, w.fc_w, F, false, w.fc_b, N, D, F, false);
    ProfScope ps(kProfElementwise);
    gelu_forward<T>(a.act, a.fc, (int64_t)N * F);
  } else {
    mm_forward(a.fc, F, a.ln2, D, w.fc_w, D, true, w.fc_b, N, D, F, false);
    mm_forward(a.up, F, a.ln2, D, w.up_w, D, true, w.up_b, N, D, F, false);
    ProfScope ps(kProfElementwise);
    swiglu_forward<T>(a.act, a.fc, a.up, (int64_t)N * F);
  }
  // out = res2 + act · Wp + bp
  rows_plus_bias(a.out, a.res2, w.proj_b, N, D);
  mm_forward(a.out, D, a.act, F, w.proj_w, g2 ? D : F, !g2, (const T*)nullptr, N, F, D, true);
}

template <typename T>
void block_forward(const ModelConfig& c, const LayerWeights<T>& w, LayerActs<T>& a, const T* x, const int32_t* pos,
                   const AttnPattern& p) {
  const int N = p.B * p.Tq;
  block_qkv_forward(c, w, a, x, pos, N);
  attention_forward_call(c, a, a.k, a.v, p);
  block_out_forward(c, w, a, x, N);
}

// ---------------------------------------------------------------------------------------------
// block backward

template <typename T>
void block_out_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                        Scratch<T>& s, int N) {
  const int D = c.d_model, F = c.d_ff, Q = c.n_heads * c.head_dim;
  const bool g2 = is_gpt2(c);
  // out = res2 + act · Wp + bp
  mm_backward(s.dact, F, false, g.proj_w, g.proj_b, s.dres, D, a.act, F, w.proj_w, g2 ? D : F, !g2, N, F, D);
  if (g2) {
    zero(s.dfc, (int64_t)N * F);
    {
      ProfScope ps(kProfElementwise);
      gelu_backward<T>(s.dfc, a.fc, s.dact, (int64_t)N * F);
    }
    mm_backward(s.dln, D, false, g.fc_w, g.fc_b, s.dfc, F, a.ln2, D, w.fc_w, F, false, N, D, F);
  } else {
    zero(s.dfc, (int64_t)N * F);
    zero(s.dup, (int64_t)N * F);
    {
      ProfScope ps(kProfElementwise);
      swiglu_backward<T>(s.dfc, s.dup, a.fc, a.up, s.dact, (int64_t)N * F);
    }
    mm_backward(s.dln, D, false, g.fc_w, g.fc_b, s.dfc, F, a.ln2, D, w.fc_w, D, true, N, D, F);
    mm_backward(s.dln, D, true, g.up_w, g.up_b, s.dup, F, a.ln2, D, w.up_w, D, true, N, D, F);
  }
  // res2 feeds both the MLP branch (through norm2) and the output: dres += norm2ᵀ(dln)
  norm_backward(c, s.dres, g.ln2_w, g.ln2_b, s.dln, a.res2, w.ln2_w, a.ln2_mean, a.ln2_rstd, N);
  // res2 = x + att · Wo + bo
  mm_backward(s.datt, Q, false, g.o_w, g.o_b, s.dres, D, a.att, Q, w.o_w, g2 ? D : Q, !g2, N, Q, D);
}

// The backward of full sequences runs on attention_gemm.h (one score recompute instead of the
// flash kernel's two, and the gemm micro-kernel for the products: ~1.4x faster at T = 256,
// d = 64) when there are at least 4 (batch row, kv head) tasks to spread over the threads and
// its (128, Tk) scratch stays small; otherwise on the flash kernel. Both take the forward's out
// and lse and agree to rounding (test_attention_gemm.cpp). The choice does not depend on the
// thread count, so results stay bit-identical across thread counts.
static bool use_gemm_backward(const AttnPattern& p, int Hkv) { return p.Tk <= 8192 && p.B * Hkv >= 4; }

template <typename T>
void attention_backward_call(const ModelConfig& c, const LayerActs<T>& a, Scratch<T>& s, const AttnPattern& p) {
  const int64_t nq = (int64_t)p.B * p.Tq * c.n_heads * c.head_dim, nk = (int64_t)p.B * p.Tk * c.n_kv_heads * c.head_dim;
  zero(s.dq, nq);  // the kernels accumulate
  zero(s.dk, nk);
  zero(s.dv, nk);
  ProfScope ps(kProfAttention);
  AttentionShape sh{p.B, p.Tq, p.Tk, c.n_heads, c.n_kv_heads, c.head_dim, p.window};
  const T scale = (T)(1.0 / std::sqrt((double)c.head_dim));
  if (use_gemm_backward(p, c.n_kv_heads))
    attention_gemm_backward<T>(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, p.q_pos, p.k_pos, p.k_valid, sh,
                               scale);
  else
    attention_backward<T>(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, p.q_pos, p.k_pos, p.k_valid, sh, scale);
}

template <typename T>
void block_qkv_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                        const T* x, const int32_t* pos, Scratch<T>& s, int N) {
  const int D = c.d_model;
  if (is_gpt2(c)) {
    mm_backward(s.dln, D, false, g.qkv_w, g.qkv_b, s.dq, D, a.ln1, D, w.qkv_w, 3 * D, false, N, D, D);
    mm_backward(s.dln, D, true, g.qkv_w + D, at(g.qkv_b, D), s.dk, D, a.ln1, D, w.qkv_w + D, 3 * D, false, N, D, D);
    mm_backward(s.dln, D, true, g.qkv_w + 2 * D, at(g.qkv_b, 2 * D), s.dv, D, a.ln1, D, w.qkv_w + 2 * D, 3 * D, false, N,
                D, D);
  } else {
    const int Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
    {
      // RoPE's backward is the rotation by -angle: the forward at negated positions, in place.
      ProfScope ps(kProfElementwise);
      std::vector<int32_t> neg(N);
      for (int i = 0; i < N; i++) neg[i] = -pos[i];
      rope_forward<T>(s.dq, s.dq, neg.data(), N, c.n_heads, c.head_dim, c.rope_theta);
      rope_forward<T>(s.dk, s.dk, neg.data(), N, c.n_kv_heads, c.head_dim, c.rope_theta);
    }
    mm_backward(s.dln, D, false, g.q_w, g.q_b, s.dq, Q, a.ln1, D, w.q_w, D, true, N, D, Q);
    mm_backward(s.dln, D, true, g.k_w, g.k_b, s.dk, KV, a.ln1, D, w.k_w, D, true, N, D, KV);
    mm_backward(s.dln, D, true, g.v_w, g.v_b, s.dv, KV, a.ln1, D, w.v_w, D, true, N, D, KV);
  }
  norm_backward(c, s.dres, g.ln1_w, g.ln1_b, s.dln, x, w.ln1_w, a.ln1_mean, a.ln1_rstd, N);
}

template <typename T>
void block_backward(const ModelConfig& c, const LayerWeights<T>& w, const LayerWeights<T>& g, const LayerActs<T>& a,
                    const T* x, const int32_t* pos, Scratch<T>& s, const AttnPattern& p) {
  const int N = p.B * p.Tq;
  block_out_backward(c, w, g, a, s, N);
  attention_backward_call(c, a, s, p);
  block_qkv_backward(c, w, g, a, x, pos, s, N);
}

// ---------------------------------------------------------------------------------------------
// final norm and head

template <typename T>
void final_norm_forward(const ModelConfig& c, const ModelWeights<T>& w, T* hf, T* mean, T* rstd, const T* x, int N) {
  norm_forward(c, hf, mean, rstd, x, w.lnf_w, w.lnf_b, N);
}

template <typename T>
void final_norm_backward(const ModelConfig& c, const ModelWeights<T>& w, const ModelWeights<T>& g, T* dx, const T* dhf,
                         const T* x, const T* mean, const T* rstd, int N) {
  norm_backward(c, dx, g.lnf_w, g.lnf_b, dhf, x, w.lnf_w, mean, rstd, N);
}

template <typename T>
void head_logits(const ModelConfig& c, const ModelWeights<T>& w, T* logits, const T* hf, int N) {
  ProfScope ps(kProfHead);
  if (N <= kSmallRows) matmul_small<T>(logits, c.vocab_size, hf, c.d_model, w.head, c.d_model, true, N, c.d_model, c.vocab_size, false);
  else gemm<T>(false, true, N, c.vocab_size, c.d_model, T(1), hf, c.d_model, w.head, c.d_model, T(0), logits, c.vocab_size);
}

// ---------------------------------------------------------------------------------------------
// instantiations

#define QS_TRANSFORMER_INSTANTIATE(T)                                                                                     \
  template ModelWeights<T> bind_weights<T>(const ModelConfig&, const ParamLayout&, T*);                                   \
  template void embed_forward<T>(const ModelConfig&, const ModelWeights<T>&, T*, const int32_t*, const int32_t*, int);   \
  template void embed_backward<T>(const ModelConfig&, const ModelWeights<T>&, const T*, const int32_t*, const int32_t*,  \
                                  int);                                                                                   \
  template void block_qkv_forward<T>(const ModelConfig&, const LayerWeights<T>&, LayerActs<T>&, const T*,                 \
                                     const int32_t*, int);                                                                \
  template void attention_forward_call<T>(const ModelConfig&, LayerActs<T>&, const T*, const T*, const AttnPattern&);     \
  template void block_out_forward<T>(const ModelConfig&, const LayerWeights<T>&, LayerActs<T>&, const T*, int);           \
  template void block_forward<T>(const ModelConfig&, const LayerWeights<T>&, LayerActs<T>&, const T*, const int32_t*,     \
                                 const AttnPattern&);                                                                     \
  template void block_out_backward<T>(const ModelConfig&, const LayerWeights<T>&, const LayerWeights<T>&,                 \
                                      const LayerActs<T>&, Scratch<T>&, int);                                             \
  template void attention_backward_call<T>(const ModelConfig&, const LayerActs<T>&, Scratch<T>&, const AttnPattern&);     \
  template void block_qkv_backward<T>(const ModelConfig&, const LayerWeights<T>&, const LayerWeights<T>&,                 \
                                      const LayerActs<T>&, const T*, const int32_t*, Scratch<T>&, int);                   \
  template void block_backward<T>(const ModelConfig&, const LayerWeights<T>&, const LayerWeights<T>&,                     \
                                  const LayerActs<T>&, const T*, const int32_t*, Scratch<T>&, const AttnPattern&);        \
  template void final_norm_forward<T>(const ModelConfig&, const ModelWeights<T>&, T*, T*, T*, const T*, int);             \
  template void final_norm_backward<T>(const ModelConfig&, const ModelWeights<T>&, const ModelWeights<T>&, T*, const T*,  \
                                       const T*, const T*, const T*, int);                                                \
  template void head_logits<T>(const ModelConfig&, const ModelWeights<T>&, T*, const T*, int);

QS_TRANSFORMER_INSTANTIATE(float)
QS_TRANSFORMER_INSTANTIATE(double)

}  // namespace qs::cpu
