// thought_attention.cu: CUDA twin of cpu/thought_attention.h for f32: Quiet-STaR's masked parallel
// ("diagonal") attention for chain queries, with no mask and no (S·T)² buffer.
//
// A chain query (row r, step s, position i, head h) sees the base keys j of its document
// b = r / P with valid[b, j], j <= i and i - j < window, and its own chain keys (r, s', i),
// s' <= s, when valid[b, i]. The base part is plain causal attention with query position i and
// key position j, so it runs on the tile kernels of attention_tile.cuh (THOUGHT = true) over
// the gathered query order of the CPU kernel: a block is (document b, kv head hk, 64 gathered
// rows), the rows ordered by position, then row p of the document, query step, head of the
// group, so one K/V tile load serves every row, step and head at the same positions. Each row
// then folds its <= S chain keys into its online-softmax state (forward) or into dQ (backward),
// the "diagonal epilogue": s dot products gathered at the fixed column i.
//
// Backward:
//   d_kernel      D = rowsum(dout ∘ out) into scratch (R, Sq, T, H)
//   dq_kernel     dq_chain += scale (dS_base K_base + Σ_s' dS_s' k_chain(s'))
//   dkdv_kernel   dk_base, dv_base: one block per (b, kv head, key tile) loops over every
//                 gathered query tile of the document (every row p, step and head) in order:
//                 the only writer of its rows, a fixed summation order (with few documents
//                 x kv heads, split over ranges of query tiles into scratch partials summed
//                 in split order, attn::kv_splits)
//   chain_kernel  dk_chain, dv_chain: one warp per chain key (r, s', i, hk) sums over its
//                 queries (r, s >= s', i, heads of the group) in order; no other query sees
//                 that key, so there is no contention
// No float atomics: results are bit-reproducible.
#include <cmath>
#include <cstdint>

#include "cuda/attention_tile.cuh"
#include "cuda/kernels_attention.h"

namespace qs::cuda {
namespace {

using attn::Params;

constexpr int kChainWarps = 8;
constexpr int kMaxLaneDims = 4;  // d <= 128: each lane holds dims lane + 32u, u < 4

// dk_chain, dv_chain (R, Sk, T, Hkv, d) +=. Warp e (in the chain layout's order without d)
// owns chain key (r, t = s' - 1, i, hk).
__global__ void __launch_bounds__(kChainWarps * 32) chain_kernel(Params p, int64_t nkeys) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = (int64_t)gridDim.x * kChainWarps;
  const int d = p.d;
  const int64_t cstep_rows = (int64_t)p.Tq;  // positions per chain step
  for (int64_t e = (int64_t)blockIdx.x * kChainWarps + threadIdx.x / 32; e < nkeys; e += warps) {
    const int hk = (int)(e % p.Hkv);
    const int i = (int)((e / p.Hkv) % p.Tq);
    const int t = (int)((e / p.Hkv / p.Tq) % p.Sk);
    const int64_t r = e / p.Hkv / p.Tq / p.Sk;
    const int64_t b = r / p.P;
    if (p.k_valid && !p.k_valid[b * p.Tq + i]) continue;  // no query sees the chain keys of an invalid position
    const int64_t koff = e * d;
    float kc[kMaxLaneDims], vc[kMaxLaneDims], dk[kMaxLaneDims], dv[kMaxLaneDims];
#pragma unroll
    for (int u = 0; u < kMaxLaneDims; u++) {
      const int c = lane + 32 * u;
      kc[u] = c < d ? p.kc[koff + c] : 0.f;
      vc[u] = c < d ? p.vc[koff + c] : 0.f;
      dk[u] = dv[u] = 0.f;
    }
    // Query steps s = s_first + sq >= t + 1 see this key.
    const int sq0 = max(0, t + 1 - p.s_first);
    for (int sq = sq0; sq < p.Sq; sq++) {
      for (int g = 0; g < p.G; g++) {
        const int64_t lrow = ((r * p.Sq + sq) * cstep_rows + i) * p.H + (int64_t)hk * p.G + g;
        const float lse = p.lse_in[lrow];
        if (lse == -CUDART_INF_F) continue;  // the query saw nothing: no gradient
        const int64_t qoff = lrow * d;
        float qv[kMaxLaneDims], gv[kMaxLaneDims], s = 0.f, dp = 0.f;
#pragma unroll
        for (int u = 0; u < kMaxLaneDims; u++) {
          const int c = lane + 32 * u;
          qv[u] = c < d ? p.q[qoff + c] : 0.f;
          gv[u] = c < d ? p.dout[qoff + c] : 0.f;
          s = fmaf(qv[u], kc[u], s);
          dp = fmaf(gv[u], vc[u], dp);
        }
        for (int o = 16; o > 0; o >>= 1) {
          s += __shfl_xor_sync(0xffffffffu, s, o);
          dp += __shfl_xor_sync(0xffffffffu, dp, o);
        }
        const float pr = expf(s * p.scale - lse);
        const float ds = pr * (dp - p.D[lrow]);
#pragma unroll
        for (int u = 0; u < kMaxLaneDims; u++) {
          dk[u] = fmaf(ds, qv[u], dk[u]);
          dv[u] = fmaf(pr, gv[u], dv[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kMaxLaneDims; u++) {
      const int c = lane + 32 * u;
      if (c >= d) continue;
      if (p.dkc) p.dkc[koff + c] += p.scale * dk[u];
      if (p.dvc) p.dvc[koff + c] += dv[u];
    }
  }
}

bool empty_shape(const cpu::ThoughtAttentionShape& s) {
  return s.B <= 0 || s.P <= 0 || s.T <= 0 || s.Sq <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0;
}

Status check_shape(const cpu::ThoughtAttentionShape& s, const char* what) {
  QS_CHECK_ARG(s.H % s.Hkv == 0, "%s: query heads H = %d must be a multiple of key/value heads Hkv = %d", what, s.H,
               s.Hkv);
  QS_CHECK_ARG(s.s_first >= 1 && s.s_first + s.Sq - 1 <= s.Sk,
               "%s: query steps %d .. %d need chain steps up to %d, but Sk = %d", what, s.s_first,
               s.s_first + s.Sq - 1, s.s_first + s.Sq - 1, s.Sk);
  QS_CHECK_ARG(attn::padded_width(s.d) > 0,
               "%s: head dimension d = %d is not supported by the CUDA kernels (d <= 128)", what, s.d);
  return Status::Ok();
}

Params make_params(const float* q, const float* kb, const float* vb, const float* kc, const float* vc,
                   const uint8_t* valid, const cpu::ThoughtAttentionShape& s, float scale) {
  Params p{};
  p.q = q, p.k = kb, p.v = vb, p.kc = kc, p.vc = vc, p.k_valid = valid;
  p.q_pos = nullptr, p.k_pos = nullptr;  // positions are i and j
  p.B = s.B, p.Tq = s.T, p.Tk = s.T, p.H = s.H, p.Hkv = s.Hkv, p.G = s.H / s.Hkv, p.d = s.d;
  p.window = s.window, p.scale = scale;
  p.P = s.P, p.Sq = s.Sq, p.s_first = s.s_first, p.Sk = s.Sk, p.M = s.P * s.Sq * p.G;
  return p;
}

}  // namespace

Status thought_attention_forward(float* out, float* lse, const float* q_chain, const float* k_base,
                                 const float* v_base, const float* k_chain, const float* v_chain,
                                 const uint8_t* valid, const cpu::ThoughtAttentionShape& s, float scale, void* stream) {
  if (empty_shape(s)) return Status::Ok();
  QS_RETURN_IF_ERROR(check_shape(s, "thought_attention_forward"));
  Params p = make_params(q_chain, k_base, v_base, k_chain, v_chain, valid, s, scale);
  p.out = out, p.lse = lse;
  QS_ATTN_FOR_WIDTH(s.d, "thought_attention_forward",
                    (attn::run_forward<DP, attn::kThought>(p, s.B * s.Hkv, (cudaStream_t)stream)));
}

size_t thought_attention_backward_scratch_bytes(const cpu::ThoughtAttentionShape& s) {
  if (empty_shape(s)) return 0;
  // D, indexed like lse (R, Sq, T, H), then the base dK/dV kernel's split partials when it splits
  const int64_t rows_per_kv_head = (int64_t)s.T * s.P * s.Sq * (s.H / s.Hkv);
  const int splits = attn::kv_splits(s.B, s.Hkv, s.T, s.d, rows_per_kv_head, 1);
  return attn::backward_scratch_bytes((int64_t)s.B * s.P * s.Sq * s.T * s.H, splits, (int64_t)s.B * s.T * s.Hkv * s.d);
}

Status thought_attention_backward(float* dq_chain, float* dk_base, float* dv_base, float* dk_chain, float* dv_chain,
                                  const float* dout, const float* q_chain, const float* k_base, const float* v_base,
                                  const float* k_chain, const float* v_chain, const float* out, const float* lse,
                                  const uint8_t* valid, const cpu::ThoughtAttentionShape& s, float scale,
                                  void* scratch, void* stream) {
  if (empty_shape(s)) return Status::Ok();
  if (!dq_chain && !dk_base && !dv_base && !dk_chain && !dv_chain) return Status::Ok();
  QS_RETURN_IF_ERROR(check_shape(s, "thought_attention_backward"));
  QS_CHECK_ARG(scratch != nullptr,
               "thought_attention_backward: scratch of thought_attention_backward_scratch_bytes() is required");
  cudaStream_t st = (cudaStream_t)stream;
  Params p = make_params(q_chain, k_base, v_base, k_chain, v_chain, valid, s, scale);
  p.dq = dq_chain, p.dk = dk_base, p.dv = dv_base, p.dkc = dk_chain, p.dvc = dv_chain;
  p.dout = dout, p.o = out, p.lse_in = lse, p.D = (float*)scratch;
  const int64_t nrows = (int64_t)s.B * s.P * s.Sq * s.T * s.H;
  // D, dq_chain (base and chain keys), dk_base / dv_base.
  auto run = [&]() -> Status {
    QS_ATTN_FOR_WIDTH(s.d, "thought_attention_backward", (attn::run_backward<DP, attn::kThought>(p, s.B * s.Hkv, nrows, st)));
  };
  QS_RETURN_IF_ERROR(run());
  if (dk_chain || dv_chain) {
    const int64_t nkeys = (int64_t)s.B * s.P * s.Sk * s.T * s.Hkv;
    const int64_t blocks = std::min<int64_t>((nkeys + kChainWarps - 1) / kChainWarps, 65535 * 8);
    if (blocks > 0) {
      chain_kernel<<<(unsigned)blocks, kChainWarps * 32, 0, st>>>(p, nkeys);
      QS_CUDA_CHECK_LAUNCH(st);
    }
  }
  return Status::Ok();
}

}  // namespace qs::cuda
