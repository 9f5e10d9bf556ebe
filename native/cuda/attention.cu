// attention.cu: CUDA twin of cpu/attention.h for f32 (contract there and in kernels_attention.h):
// causal multi-head attention with GQA by index, explicit positions, key validity and a
// sliding window; out and lse forward, "+=" gradients backward.
//
// Full sequences (Tq > kDecodeMaxTq) use the flash-style tile kernels of attention_tile.cuh:
// forward one block per (b, h, 64-query tile) with an online softmax over shared-memory K/V
// tiles; backward D = rowsum(dout ∘ out) into the caller's scratch, a dQ kernel per
// (b, h, query tile) and a dK/dV kernel per (b, kv head, key tile) that loops over every query
// head of its GQA group and every query tile, so each gradient row has one writer and a fixed
// summation order (no atomics: deterministic). When there are too few (b, kv head, key tile)
// blocks to fill the GPU, the query tiles are split into contiguous ranges whose partial dK/dV
// go to scratch and are summed in split order (attn::kv_splits: a function of the shape only).
//
// Decoding (Tq <= kDecodeMaxTq, typically 1 new token against a long KV cache with invalid
// slots) would leave a 64-row query tile nearly empty, so it has its own forward kernel:
// one block per (b, kv head, chunk of kDecodeRows (query, head-of-group) rows), whose 8 warps
// split the key range (warp w takes 32-key tiles w, w + 8, ...; lane = key for the scores,
// lane = head dimension for P·V). Each warp keeps its own online-softmax state (m, l, O); the
// block combines the 8 states in warp order at the end, so the result is deterministic. K/V
// are read once per block for all rows of the group.
#include <cmath>
#include <cstdint>

#include "cuda/attention_tile.cuh"
#include "cuda/kernels_attention.h"

namespace qs::cuda {
namespace {

using attn::Params;

constexpr int kDecodeMaxTq = 8;  // queries per batch row served by the decode kernel
constexpr int kDecodeWarps = 8;

// out (n) = value
__global__ void fill_kernel(float* out, int64_t n, float value) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = value;
}

Status fill(float* out, int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return Status::Ok();
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 4096);
  fill_kernel<<<(unsigned)blocks, 256, 0, stream>>>(out, n, value);
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum32(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Decode forward. Grid (B·Hkv, row chunks); rows n = chunk·NR + r of the (b, hk) group are
// (query i = n / G, head h = hk·G + n % G). ND = head-dimension elements per lane (d <= 32·ND).
// vec4: d % 4 == 0 and k 16-byte aligned, so a lane reads its key row as float4.
template <int ND, int NR>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(Params p, bool vec4) {
  constexpr int DP = ND * 32, W = kDecodeWarps;
  __shared__ __align__(16) float Qs[NR][DP];
  __shared__ int64_t qoff[NR], loff[NR];
  __shared__ int qpos[NR];
  __shared__ float wm[W][NR], wl[W][NR];
  __shared__ float wo[W][NR][DP];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int b = blockIdx.x / p.Hkv, hk = blockIdx.x % p.Hkv;
  const int nrows = p.Tq * p.G;
  const int d = p.d;
  const float ninf = -CUDART_INF_F;

  for (int r = tid; r < NR; r += blockDim.x) {
    const int n = blockIdx.y * NR + r;
    if (n < nrows) {
      const int i = n / p.G, h = hk * p.G + n % p.G;
      qoff[r] = (((int64_t)b * p.Tq + i) * p.H + h) * d;
      loff[r] = ((int64_t)b * p.H + h) * p.Tq + i;
      qpos[r] = p.q_pos[(int64_t)b * p.Tq + i];
    } else {
      qoff[r] = -1, loff[r] = 0, qpos[r] = 0;
    }
  }
  __syncthreads();
  for (int e = tid; e < NR * DP; e += blockDim.x) {
    const int r = e / DP, c = e % DP;
    Qs[r][c] = qoff[r] >= 0 && c < d ? p.q[qoff[r] + c] : 0.f;
  }
  __syncthreads();

  bool rok[NR];
  int qp[NR];
  float m[NR], l[NR], o[NR][ND];
#pragma unroll
  for (int r = 0; r < NR; r++) {
    rok[r] = qoff[r] >= 0, qp[r] = qpos[r], m[r] = ninf, l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < ND; c++) o[r][c] = 0.f;
  }
  const int64_t ld = (int64_t)p.Hkv * d;
  const float* kb = p.k + (int64_t)b * p.Tk * ld + (int64_t)hk * d;
  const float* vb = p.v + (int64_t)b * p.Tk * ld + (int64_t)hk * d;
  const int ntiles = (p.Tk + 31) / 32;
  for (int t = warp; t < ntiles; t += W) {  // warp-uniform from here on
    const int j = t * 32 + lane;
    const bool kok = j < p.Tk && (!p.k_valid || p.k_valid[(int64_t)b * p.Tk + j]);
    const int kp = kok ? p.k_pos[(int64_t)b * p.Tk + j] : 0;
    bool vis[NR], lane_vis = false;
#pragma unroll
    for (int r = 0; r < NR; r++) {
      vis[r] = kok && rok[r] && attn::visible(qp[r], kp, p.window);
      lane_vis |= vis[r];
    }
    const unsigned keymask = __ballot_sync(0xffffffffu, lane_vis);
    if (!keymask) continue;

    float s[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) s[r] = 0.f;
    if (lane_vis) {  // this lane's key row against every row's query
      const float* kr = kb + (int64_t)j * ld;
      if (vec4) {
        for (int c = 0; c < d; c += 4) {
          const float4 kk = *reinterpret_cast<const float4*>(kr + c);
#pragma unroll
          for (int r = 0; r < NR; r++)
            s[r] = fmaf(Qs[r][c], kk.x, fmaf(Qs[r][c + 1], kk.y, fmaf(Qs[r][c + 2], kk.z, fmaf(Qs[r][c + 3], kk.w, s[r]))));
        }
      } else {
        for (int c = 0; c < d; c++) {
          const float kk = kr[c];
#pragma unroll
          for (int r = 0; r < NR; r++) s[r] = fmaf(Qs[r][c], kk, s[r]);
        }
      }
    }
    float pr[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) {
      const float x = vis[r] ? s[r] * p.scale : ninf;
      const float mnew = fmaxf(m[r], warp_max(x));
      const float msafe = mnew == ninf ? 0.f : mnew;
      const float corr = expf(m[r] - msafe);
      pr[r] = expf(x - msafe);
      l[r] = l[r] * corr + warp_sum32(pr[r]);
      m[r] = mnew;
#pragma unroll
      for (int c = 0; c < ND; c++) o[r][c] *= corr;
    }
    // P·V over the keys some row sees (others are never read: their slots may hold garbage).
    for (unsigned mask = keymask; mask; mask &= mask - 1) {
      const int jj = __ffs(mask) - 1;
      const float* vr = vb + (int64_t)(t * 32 + jj) * ld;
      float vv[ND];
#pragma unroll
      for (int c = 0; c < ND; c++) vv[c] = lane + 32 * c < d ? vr[lane + 32 * c] : 0.f;
#pragma unroll
      for (int r = 0; r < NR; r++) {
        const float pj = __shfl_sync(0xffffffffu, pr[r], jj);
#pragma unroll
        for (int c = 0; c < ND; c++) o[r][c] = fmaf(pj, vv[c], o[r][c]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < NR; r++) {
    if (lane == 0) wm[warp][r] = m[r], wl[warp][r] = l[r];
#pragma unroll
    for (int c = 0; c < ND; c++) wo[warp][r][lane + 32 * c] = o[r][c];
  }
  __syncthreads();
  // Combine the warps' states in warp order.
  for (int e = tid; e < NR * DP; e += blockDim.x) {
    const int r = e / DP, c = e % DP;
    if (qoff[r] < 0) continue;
    float M = ninf;
    for (int w = 0; w < W; w++) M = fmaxf(M, wm[w][r]);
    float L = 0.f, O = 0.f;
    if (M != ninf) {
      for (int w = 0; w < W; w++) {
        if (wm[w][r] == ninf) continue;
        const float f = expf(wm[w][r] - M);
        L = fmaf(wl[w][r], f, L);
        O = fmaf(wo[w][r][c], f, O);
      }
    }
    const bool seen = L > 0.f;
    if (c < d) p.out[qoff[r] + c] = seen ? O / L : 0.f;
    if (c == 0) p.lse[loff[r]] = seen ? M + logf(L) : ninf;
  }
}

template <int ND>
Status run_decode(const Params& p, cudaStream_t stream) {
  const int nrows = p.Tq * p.G;
  const bool vec4 = p.d % 4 == 0 && ((uintptr_t)p.k & 15) == 0;
  if (nrows <= 2) {
    decode_kernel<ND, 2><<<dim3(p.B * p.Hkv, (nrows + 1) / 2), kDecodeWarps * 32, 0, stream>>>(p, vec4);
  } else {
    decode_kernel<ND, 8><<<dim3(p.B * p.Hkv, (nrows + 7) / 8), kDecodeWarps * 32, 0, stream>>>(p, vec4);
  }
  QS_CUDA_CHECK_LAUNCH(stream);
  return Status::Ok();
}

Status check_shape(const cpu::AttentionShape& s, const char* what) {
  QS_CHECK_ARG(s.Hkv > 0 && s.H % s.Hkv == 0, "%s: query heads H = %d must be a multiple of key/value heads Hkv = %d",
               what, s.H, s.Hkv);
  QS_CHECK_ARG(attn::padded_width(s.d) > 0,
               "%s: head dimension d = %d is not supported by the CUDA kernels (d <= 128)", what, s.d);
  return Status::Ok();
}

Params make_params(const float* q, const float* k, const float* v, const int32_t* q_pos, const int32_t* k_pos,
                   const uint8_t* k_valid, const cpu::AttentionShape& s, float scale) {
  Params p{};
  p.q = q, p.k = k, p.v = v, p.q_pos = q_pos, p.k_pos = k_pos, p.k_valid = k_valid;
  p.B = s.B, p.Tq = s.Tq, p.Tk = s.Tk, p.H = s.H, p.Hkv = s.Hkv, p.G = s.H / s.Hkv, p.d = s.d;
  p.window = s.window, p.scale = scale;
  return p;
}

}  // namespace

Status attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* q_pos,
                         const int32_t* k_pos, const uint8_t* k_valid, const cpu::AttentionShape& s, float scale,
                         void* stream) {
  cudaStream_t st = (cudaStream_t)stream;
  if (s.B <= 0 || s.Tq <= 0 || s.H <= 0 || s.d <= 0) return Status::Ok();
  if (s.Tk <= 0 || s.Hkv <= 0) {  // no key: every query sees nothing
    QS_RETURN_IF_ERROR(fill(out, (int64_t)s.B * s.Tq * s.H * s.d, 0.f, st));
    return fill(lse, (int64_t)s.B * s.H * s.Tq, -INFINITY, st);
  }
  QS_RETURN_IF_ERROR(check_shape(s, "attention_forward"));
  Params p = make_params(q, k, v, q_pos, k_pos, k_valid, s, scale);
  p.out = out, p.lse = lse;
  if (s.Tq <= kDecodeMaxTq) {
    switch ((s.d + 31) / 32) {
      case 1: return run_decode<1>(p, st);
      case 2: return run_decode<2>(p, st);
      case 3: return run_decode<3>(p, st);
      default: return run_decode<4>(p, st);
    }
  }
  QS_ATTN_FOR_WIDTH(s.d, "attention_forward", (attn::run_forward<DP, attn::kPlain>(p, s.B * s.H, st)));
}

size_t attention_backward_scratch_bytes(const cpu::AttentionShape& s) {
  if (s.B <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0) return 0;
  // D (B, H, Tq), then the dK/dV kernel's split partials when it splits
  const int splits = attn::kv_splits(s.B, s.Hkv, s.Tk, s.d, s.Tq, s.H / s.Hkv);
  return attn::backward_scratch_bytes((int64_t)s.B * s.H * s.Tq, splits, (int64_t)s.B * s.Tk * s.Hkv * s.d);
}

Status attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* out, const float* lse, const int32_t* q_pos,
                          const int32_t* k_pos, const uint8_t* k_valid, const cpu::AttentionShape& s, float scale,
                          void* scratch, void* stream) {
  if (s.B <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0) return Status::Ok();
  if (!dq && !dk && !dv) return Status::Ok();
  QS_RETURN_IF_ERROR(check_shape(s, "attention_backward"));
  QS_CHECK_ARG(scratch != nullptr, "attention_backward: scratch of attention_backward_scratch_bytes() is required");
  Params p = make_params(q, k, v, q_pos, k_pos, k_valid, s, scale);
  p.dq = dq, p.dk = dk, p.dv = dv, p.dout = dout, p.o = out, p.lse_in = lse, p.D = (float*)scratch;
  const int64_t nrows = (int64_t)s.B * s.H * s.Tq;
  QS_ATTN_FOR_WIDTH(s.d, "attention_backward",
                    (attn::run_backward<DP, attn::kPlain>(p, s.B * s.H, nrows, (cudaStream_t)stream)));
}

// Dense masked reference: the tile kernels with visibility from the materialised mask and no
// tile skipped (every score is computed, as a masked SDPA does).
Status attention_forward_masked(float* out, float* lse, const float* q, const float* k, const float* v,
                                const uint8_t* mask, const uint8_t* k_valid, const cpu::AttentionShape& s,
                                float scale, void* stream) {
  if (s.B <= 0 || s.Tq <= 0 || s.H <= 0 || s.d <= 0) return Status::Ok();
  if (s.Tk <= 0 || s.Hkv <= 0) {
    QS_RETURN_IF_ERROR(fill(out, (int64_t)s.B * s.Tq * s.H * s.d, 0.f, (cudaStream_t)stream));
    return fill(lse, (int64_t)s.B * s.H * s.Tq, -INFINITY, (cudaStream_t)stream);
  }
  QS_RETURN_IF_ERROR(check_shape(s, "attention_forward_masked"));
  Params p = make_params(q, k, v, nullptr, nullptr, k_valid, s, scale);
  p.mask = mask, p.out = out, p.lse = lse;
  QS_ATTN_FOR_WIDTH(s.d, "attention_forward_masked",
                    (attn::run_forward<DP, attn::kMasked>(p, s.B * s.H, (cudaStream_t)stream)));
}

Status attention_backward_masked(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                                 const float* v, const float* out, const float* lse, const uint8_t* mask,
                                 const uint8_t* k_valid, const cpu::AttentionShape& s, float scale, void* scratch,
                                 void* stream) {
  if (s.B <= 0 || s.Tq <= 0 || s.Tk <= 0 || s.H <= 0 || s.Hkv <= 0 || s.d <= 0) return Status::Ok();
  if (!dq && !dk && !dv) return Status::Ok();
  QS_RETURN_IF_ERROR(check_shape(s, "attention_backward_masked"));
  QS_CHECK_ARG(scratch != nullptr, "attention_backward_masked: scratch of attention_backward_scratch_bytes() is required");
  Params p = make_params(q, k, v, nullptr, nullptr, k_valid, s, scale);
  p.mask = mask, p.dq = dq, p.dk = dk, p.dv = dv, p.dout = dout, p.o = out, p.lse_in = lse, p.D = (float*)scratch;
  const int64_t nrows = (int64_t)s.B * s.H * s.Tq;
  QS_ATTN_FOR_WIDTH(s.d, "attention_backward_masked",
                    (attn::run_backward<DP, attn::kMasked>(p, s.B * s.H, nrows, (cudaStream_t)stream)));
}

}  // namespace qs::cuda
