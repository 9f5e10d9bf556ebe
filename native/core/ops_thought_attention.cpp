// ops_thought_attention.cpp: Quiet-STaR's masked parallel thought attention (cpu/thought_attention.h).
//
//   thought_attention_forward:
//     qChain (R, Sq, T, H, d), kBase / vBase (B, T, Hkv, d), kChain / vChain (R, Sk, T, Hkv, d),
//     valid (B, T) u8 (optional, default all valid)  ->  out (R, Sq, T, H, d), lse (R, Sq, T, H) f32
//     numbers: sFirst (chain step of the first query step, default 1), window (0 = none),
//              scale (default 1/sqrt(d))
//   Rows r = b·P + p: R must be a multiple of B (P = R / B). Query step sFirst + t reads chain
//   steps 1..sFirst + t, so sFirst + Sq - 1 <= Sk. Packed mode: sFirst = 1, Sq = Sk = S;
//   incremental mode: sFirst = s, Sq = 1.
//   thought_attention_backward: the same arguments plus dout, out (like qChain), lse; gradients
//     dqChain, dkBase, dvBase, dkChain, dvChain are accumulated into (+=) when given, and
//     allocated (zeroed) and returned when not, as attention_backward does.
//   On a CUDA engine every tensor (valid too) lives on the device and the f32 kernels of
//   cuda/thought_attention.cu run on the engine's stream.
#include <algorithm>
#include <cmath>

#include "core/op_context.h"
#include "cpu/thought_attention.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_attention.h"
#endif

namespace qs {

struct ThoughtAttentionArgs {
  Tensor q, kb, vb, kc, vc, valid;
  cpu::ThoughtAttentionShape shape{};
  double scale = 0;
};

// An optional integer attribute in [lo, hi], `fallback` when absent.
static Status optional_int(OpContext& ctx, const char* name, int64_t lo, int64_t hi, int64_t fallback, int64_t* out) {
  constexpr double kAbsent = -1.2345e300;
  if (ctx.number_or(name, kAbsent) == kAbsent) {
    *out = fallback;
    return Status::Ok();
  }
  return ctx.integer(name, lo, hi, out);
}

static Status thought_attention_args(OpContext& ctx, ThoughtAttentionArgs* a) {
  QS_RETURN_IF_ERROR(ctx.tensor("qChain", Kind::FLOAT, {"R", "Sq", "T", "H", "d"}, &a->q));
  QS_RETURN_IF_ERROR(ctx.tensor("kBase", Kind::FLOAT, {"B", "T", "Hkv", "d"}, &a->kb));
  QS_RETURN_IF_ERROR(ctx.tensor("vBase", Kind::FLOAT, {"B", "T", "Hkv", "d"}, &a->vb));
  QS_RETURN_IF_ERROR(ctx.tensor("kChain", Kind::FLOAT, {"R", "Sk", "T", "Hkv", "d"}, &a->kc));
  QS_RETURN_IF_ERROR(ctx.tensor("vChain", Kind::FLOAT, {"R", "Sk", "T", "Hkv", "d"}, &a->vc));
  QS_RETURN_IF_ERROR(ctx.tensor("valid", Kind::U8, {"B", "T"}, &a->valid, true));
  cpu::ThoughtAttentionShape& s = a->shape;
  const int64_t R = ctx.sym("R");
  s.B = (int)ctx.sym("B"); s.T = (int)ctx.sym("T"); s.Sq = (int)ctx.sym("Sq"); s.Sk = (int)ctx.sym("Sk");
  s.H = (int)ctx.sym("H"); s.Hkv = (int)ctx.sym("Hkv"); s.d = (int)ctx.sym("d");
  QS_CHECK_ARG(s.B >= 1, "%s: 'kBase' must hold at least one document (got B = %d)", ctx.op(), s.B);
  QS_CHECK_ARG(R % s.B == 0,
               "%s: 'qChain' has R = %lld rows, not a multiple of the B = %d documents of 'kBase' "
               "(rows are r = b*P + p)",
               ctx.op(), (long long)R, s.B);
  s.P = (int)(R / s.B);
  QS_CHECK_ARG(s.Hkv > 0 && s.H % s.Hkv == 0,
               "%s: query heads H = %d ('qChain' dimension 3) must be a multiple of key/value heads Hkv = %d "
               "('kBase' dimension 2) (GQA)",
               ctx.op(), s.H, s.Hkv);
  int64_t s_first, window;
  QS_RETURN_IF_ERROR(optional_int(ctx, "sFirst", 1, INT32_MAX, 1, &s_first));
  s.s_first = (int)s_first;
  QS_CHECK_ARG(s_first + s.Sq - 1 <= s.Sk,
               "%s: query steps sFirst = %lld .. %lld ('qChain' dimension 1: Sq = %d) read chain steps up to %lld, "
               "but 'kChain' holds Sk = %d (dimension 1)",
               ctx.op(), (long long)s_first, (long long)(s_first + s.Sq - 1), s.Sq, (long long)(s_first + s.Sq - 1),
               s.Sk);
  QS_RETURN_IF_ERROR(optional_int(ctx, "window", 0, INT32_MAX, 0, &window));
  s.window = (int)window;
  a->scale = ctx.number_or("scale", 1.0 / std::sqrt((double)std::max(s.d, 1)));
  QS_CHECK_ARG(std::isfinite(a->scale), "%s: 'scale' must be a finite number (got %g)", ctx.op(), a->scale);
  return Status::Ok();
}

static Status thought_attention_forward_op(OpContext& ctx) {
  ThoughtAttentionArgs a;
  QS_RETURN_IF_ERROR(thought_attention_args(ctx, &a));
  const cpu::ThoughtAttentionShape& s = a.shape;
  Tensor out, lse;
  QS_RETURN_IF_ERROR(ctx.output("out", a.q.shape(), &out));
  QS_RETURN_IF_ERROR(ctx.output("lse", DType::F32, {(int64_t)s.B * s.P, s.Sq, s.T, s.H}, &lse));
  QS_CUDA_OR_CPU(ctx,
                 (cuda::thought_attention_forward(ptr<float>(out), lse.data<float>(), ptr<float>(a.q),
                                                  ptr<float>(a.kb), ptr<float>(a.vb), ptr<float>(a.kc),
                                                  ptr<float>(a.vc), ptr<uint8_t>(a.valid), s, (float)a.scale,
                                                  ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::thought_attention_forward<T>(ptr<T>(out), lse.data<float>(), ptr<T>(a.q),
                                                                     ptr<T>(a.kb), ptr<T>(a.vb), ptr<T>(a.kc),
                                                                     ptr<T>(a.vc), ptr<uint8_t>(a.valid), s,
                                                                     (T)a.scale)));
  return Status::Ok();
}

static Status thought_attention_backward_op(OpContext& ctx) {
  ThoughtAttentionArgs a;
  QS_RETURN_IF_ERROR(thought_attention_args(ctx, &a));
  const cpu::ThoughtAttentionShape& s = a.shape;
  Tensor dout, out, lse, dq, dkb, dvb, dkc, dvc;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"R", "Sq", "T", "H", "d"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("out", Kind::FLOAT, {"R", "Sq", "T", "H", "d"}, &out));
  QS_RETURN_IF_ERROR(ctx.tensor("lse", Kind::F32, {"R", "Sq", "T", "H"}, &lse));
  QS_RETURN_IF_ERROR(ctx.tensor("dqChain", Kind::FLOAT, {"R", "Sq", "T", "H", "d"}, &dq, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dkBase", Kind::FLOAT, {"B", "T", "Hkv", "d"}, &dkb, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dvBase", Kind::FLOAT, {"B", "T", "Hkv", "d"}, &dvb, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dkChain", Kind::FLOAT, {"R", "Sk", "T", "Hkv", "d"}, &dkc, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dvChain", Kind::FLOAT, {"R", "Sk", "T", "Hkv", "d"}, &dvc, true));
  // Gradients the caller did not pass are returned as new (zeroed) tensors, like attention_backward.
  if (!dq.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.q.shape(), &dq));
  if (!dkb.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.kb.shape(), &dkb));
  if (!dvb.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.vb.shape(), &dvb));
  if (!dkc.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.kc.shape(), &dkc));
  if (!dvc.defined()) QS_RETURN_IF_ERROR(ctx.engine().empty(ctx.float_dtype(), a.vc.shape(), &dvc));
  Tensor scratch;  // CUDA: D = rowsum(dout ∘ out), (R, Sq, T, H) floats
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    const size_t bytes = cuda::thought_attention_backward_scratch_bytes(s);
    if (bytes > 0) QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)bytes}, &scratch));
  }
#endif
  QS_CUDA_OR_CPU(ctx,
                 (cuda::thought_attention_backward(ptr<float>(dq), ptr<float>(dkb), ptr<float>(dvb), ptr<float>(dkc),
                                                   ptr<float>(dvc), ptr<float>(dout), ptr<float>(a.q),
                                                   ptr<float>(a.kb), ptr<float>(a.vb), ptr<float>(a.kc),
                                                   ptr<float>(a.vc), ptr<float>(out), lse.data<float>(),
                                                   ptr<uint8_t>(a.valid), s, (float)a.scale, ptr<uint8_t>(scratch),
                                                   ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::thought_attention_backward<T>(
                                       ptr<T>(dq), ptr<T>(dkb), ptr<T>(dvb), ptr<T>(dkc), ptr<T>(dvc), ptr<T>(dout),
                                       ptr<T>(a.q), ptr<T>(a.kb), ptr<T>(a.vb), ptr<T>(a.kc), ptr<T>(a.vc),
                                       ptr<T>(out), lse.data<float>(), ptr<uint8_t>(a.valid), s, (T)a.scale)));
  ctx.pass_through("dqChain", dq);
  ctx.pass_through("dkBase", dkb);
  ctx.pass_through("dvBase", dvb);
  ctx.pass_through("dkChain", dkc);
  ctx.pass_through("dvChain", dvc);
  return Status::Ok();
}

void register_thought_attention_ops(OpTable& t) {
  t["thought_attention_forward"] = thought_attention_forward_op;
  t["thought_attention_backward"] = thought_attention_backward_op;
}

}  // namespace qs
