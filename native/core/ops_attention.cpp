// ops_attention.cpp: causal multi-head attention with GQA, positions and padding.
//   q (B, Tq, H, d), k/v (B, Tk, Hkv, d), qPos (B, Tq), kPos (B, Tk), kValid (B, Tk) u8
// Positions default to the KV-cache convention: keys at 0..Tk-1, queries at the last Tq of them.
// On a CUDA engine every tensor (positions and kValid too) lives on the device and the f32
// kernels of cuda/attention.cu run on the engine's stream.
#include <cmath>
#include <vector>

#include "core/op_context.h"
#include "cpu/attention.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_attention.h"
#endif

namespace qs {

struct AttentionArgs {
  Tensor q, k, v, q_pos, k_pos, k_valid;
  cpu::AttentionShape shape{};
  double scale = 0;
};

static Status attention_args(OpContext& ctx, AttentionArgs* a) {
  QS_RETURN_IF_ERROR(ctx.tensor("q", Kind::FLOAT, {"B", "Tq", "H", "d"}, &a->q));
  QS_RETURN_IF_ERROR(ctx.tensor("k", Kind::FLOAT, {"B", "Tk", "Hkv", "d"}, &a->k));
  QS_RETURN_IF_ERROR(ctx.tensor("v", Kind::FLOAT, {"B", "Tk", "Hkv", "d"}, &a->v));
  QS_RETURN_IF_ERROR(ctx.tensor("qPos", Kind::I32, {"B", "Tq"}, &a->q_pos, true));
  QS_RETURN_IF_ERROR(ctx.tensor("kPos", Kind::I32, {"B", "Tk"}, &a->k_pos, true));
  QS_RETURN_IF_ERROR(ctx.tensor("kValid", Kind::U8, {"B", "Tk"}, &a->k_valid, true));
  cpu::AttentionShape& s = a->shape;
  s.B = (int)ctx.sym("B"); s.Tq = (int)ctx.sym("Tq"); s.Tk = (int)ctx.sym("Tk");
  s.H = (int)ctx.sym("H"); s.Hkv = (int)ctx.sym("Hkv"); s.d = (int)ctx.sym("d");
  QS_CHECK_ARG(s.Hkv > 0 && s.H % s.Hkv == 0,
               "%s: query heads H = %d must be a multiple of key/value heads Hkv = %d (GQA)", ctx.op(), s.H, s.Hkv);
  int64_t window = ctx.integer_or("window", 0);
  QS_CHECK_ARG(window >= 0, "%s: 'window' must be >= 0 (0 = no sliding window) (got %lld)", ctx.op(), (long long)window);
  s.window = (int)window;
  a->scale = ctx.number_or("scale", 1.0 / std::sqrt((double)s.d));
  // Default positions: keys 0..Tk-1, queries the last Tq of them (plain causal, or KV-cached decoding).
  if (!a->q_pos.defined() || !a->k_pos.defined()) {
    QS_CHECK_ARG(s.Tq <= s.Tk || a->q_pos.defined(),
                 "%s: Tq = %d > Tk = %d needs explicit 'qPos'", ctx.op(), s.Tq, s.Tk);
  }
  // Built on the host, then uploaded (a no-op copy on a CPU engine).
  if (!a->k_pos.defined()) {
    std::vector<int32_t> p((size_t)s.B * s.Tk);
    for (int b = 0; b < s.B; b++) for (int j = 0; j < s.Tk; j++) p[(size_t)b * s.Tk + j] = j;
    QS_RETURN_IF_ERROR(ctx.engine().empty(DType::I32, {s.B, s.Tk}, &a->k_pos));
    if (!p.empty()) QS_RETURN_IF_ERROR(ctx.engine().upload(p.data(), p.size() * sizeof(int32_t), a->k_pos));
  }
  if (!a->q_pos.defined()) {
    std::vector<int32_t> p((size_t)s.B * s.Tq);
    for (int b = 0; b < s.B; b++) for (int i = 0; i < s.Tq; i++) p[(size_t)b * s.Tq + i] = s.Tk - s.Tq + i;
    QS_RETURN_IF_ERROR(ctx.engine().empty(DType::I32, {s.B, s.Tq}, &a->q_pos));
    if (!p.empty()) QS_RETURN_IF_ERROR(ctx.engine().upload(p.data(), p.size() * sizeof(int32_t), a->q_pos));
  }
  return Status::Ok();
}

static Status attention_forward_op(OpContext& ctx) {
  AttentionArgs a;
  QS_RETURN_IF_ERROR(attention_args(ctx, &a));
  const cpu::AttentionShape& s = a.shape;
  Tensor out, lse;
  QS_RETURN_IF_ERROR(ctx.output("out", a.q.shape(), &out));
  QS_RETURN_IF_ERROR(ctx.output("lse", DType::F32, {s.B, s.H, s.Tq}, &lse));
  QS_CUDA_OR_CPU(ctx,
                 (cuda::attention_forward(ptr<float>(out), lse.data<float>(), ptr<float>(a.q), ptr<float>(a.k),
                                          ptr<float>(a.v), a.q_pos.data<int32_t>(), a.k_pos.data<int32_t>(),
                                          ptr<uint8_t>(a.k_valid), s, (float)a.scale, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::attention_forward<T>(ptr<T>(out), lse.data<float>(), ptr<T>(a.q), ptr<T>(a.k),
                                                             ptr<T>(a.v), a.q_pos.data<int32_t>(),
                                                             a.k_pos.data<int32_t>(), ptr<uint8_t>(a.k_valid), s,
                                                             (T)a.scale)));
  return Status::Ok();
}

static Status attention_backward_op(OpContext& ctx) {
  AttentionArgs a;
  QS_RETURN_IF_ERROR(attention_args(ctx, &a));
  const cpu::AttentionShape& s = a.shape;
  Tensor dout, out, lse, dq, dk, dv;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"B", "Tq", "H", "d"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("out", Kind::FLOAT, {"B", "Tq", "H", "d"}, &out));
  QS_RETURN_IF_ERROR(ctx.tensor("lse", Kind::F32, {"B", "H", "Tq"}, &lse));
  QS_RETURN_IF_ERROR(ctx.tensor("dq", Kind::FLOAT, {"B", "Tq", "H", "d"}, &dq, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dk", Kind::FLOAT, {"B", "Tk", "Hkv", "d"}, &dk, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dv", Kind::FLOAT, {"B", "Tk", "Hkv", "d"}, &dv, true));
  // The kernel writes all three; gradients the caller did not ask for go to scratch.
  if (!dq.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.q.shape(), &dq));
  if (!dk.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.k.shape(), &dk));
  if (!dv.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.v.shape(), &dv));
  Tensor scratch;  // CUDA: D = rowsum(dout ∘ out), (B, H, Tq) floats
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    const size_t bytes = cuda::attention_backward_scratch_bytes(s);
    if (bytes > 0) QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)bytes}, &scratch));
  }
#endif
  QS_CUDA_OR_CPU(ctx,
                 (cuda::attention_backward(ptr<float>(dq), ptr<float>(dk), ptr<float>(dv), ptr<float>(dout),
                                           ptr<float>(a.q), ptr<float>(a.k), ptr<float>(a.v), ptr<float>(out),
                                           lse.data<float>(), a.q_pos.data<int32_t>(), a.k_pos.data<int32_t>(),
                                           ptr<uint8_t>(a.k_valid), s, (float)a.scale, ptr<uint8_t>(scratch),
                                           ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::attention_backward<T>(ptr<T>(dq), ptr<T>(dk), ptr<T>(dv), ptr<T>(dout),
                                                              ptr<T>(a.q), ptr<T>(a.k), ptr<T>(a.v), ptr<T>(out),
                                                              lse.data<float>(), a.q_pos.data<int32_t>(),
                                                              a.k_pos.data<int32_t>(), ptr<uint8_t>(a.k_valid), s,
                                                              (T)a.scale)));
  ctx.pass_through("dq", dq);
  ctx.pass_through("dk", dk);
  ctx.pass_through("dv", dv);
  return Status::Ok();
}

void register_attention_ops(OpTable& t) {
  t["attention_forward"] = attention_forward_op;
  t["attention_backward"] = attention_backward_op;
}

}  // namespace qs
