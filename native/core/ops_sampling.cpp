// ops_sampling.cpp: next-token sampling (see cpu/sampling.h and quietstar/rng.h).
//
//   sample_tokens: logits (B, V) f32|f64 -> ids (B) i32
//     attributes: temperature (0 = greedy, default 1), topK (0 = off), topP (1 = off),
//                 seed (integer in [0, 2^53)), step (integer in [0, 2^32))
//     optional tensors: rows (B) i32 (the stream's row id per batch row, default 0..B-1),
//                       positions (B) i32 (the stream's position, default 0),
//                       suppress (S) i32 (ids never drawn).
#include <cmath>

#include <vector>

#include "core/op_context.h"
#include "cpu/sampling.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_sampling.h"
#endif

namespace qs {

// An optional integer attribute in [lo, hi], `fallback` when absent.
static Status optional_integer(OpContext& ctx, const char* name, int64_t lo, int64_t hi, int64_t fallback,
                               int64_t* out) {
  constexpr double kAbsent = -1.2345e300;
  if (ctx.number_or(name, kAbsent) == kAbsent) {
    *out = fallback;
    return Status::Ok();
  }
  return ctx.integer(name, lo, hi, out);
}

// The first row that could not be sampled (ids below 0, cpu/sampling.h) as an error.
static Status row_errors(OpContext& ctx, const int32_t* ids, int B) {
  for (int b = 0; b < B; b++) {
    if (ids[b] == cpu::kSampleNonFinite) {
      return QS_ERROR(INVALID_ARGUMENT, "%s: 'logits' row %d holds a NaN or +inf", ctx.op(), b);
    }
    if (ids[b] == cpu::kSampleNoToken) {
      return QS_ERROR(INVALID_ARGUMENT, "%s: 'logits' row %d has no token to draw (every logit is -inf or suppressed)",
                      ctx.op(), b);
    }
  }
  return Status::Ok();
}

static Status sample_tokens_op(OpContext& ctx) {
  Tensor logits, rows, positions, suppress, ids;
  QS_RETURN_IF_ERROR(ctx.tensor("logits", Kind::FLOAT, {"B", "V"}, &logits));
  QS_RETURN_IF_ERROR(ctx.tensor("rows", Kind::I32, {"B"}, &rows, true));
  QS_RETURN_IF_ERROR(ctx.tensor("positions", Kind::I32, {"B"}, &positions, true));
  QS_RETURN_IF_ERROR(ctx.tensor("suppress", Kind::I32, {"S"}, &suppress, true));
  const int B = (int)ctx.sym("B"), V = (int)ctx.sym("V");
  QS_CHECK_ARG(V >= 1, "%s: 'logits' must have at least one vocabulary column (got V = 0)", ctx.op());
  if (rows.defined()) QS_RETURN_IF_ERROR(ctx.check_range("rows", rows, 0, INT32_MAX));
  if (positions.defined()) QS_RETURN_IF_ERROR(ctx.check_range("positions", positions, 0, INT32_MAX));
  if (suppress.defined()) QS_RETURN_IF_ERROR(ctx.check_range("suppress", suppress, 0, V));

  cpu::SampleParams p;
  p.temperature = ctx.number_or("temperature", 1.0);
  QS_CHECK_ARG(std::isfinite(p.temperature) && p.temperature >= 0,
               "%s: 'temperature' must be a finite number >= 0 (0 = greedy) (got %g)", ctx.op(), p.temperature);
  int64_t top_k, seed, step;
  QS_RETURN_IF_ERROR(optional_integer(ctx, "topK", 0, INT32_MAX, 0, &top_k));
  p.top_k = (int)top_k;
  p.top_p = ctx.number_or("topP", 1.0);
  QS_CHECK_ARG(p.top_p > 0 && p.top_p <= 1, "%s: 'topP' must be in (0, 1] (1 = off) (got %g)", ctx.op(), p.top_p);
  QS_RETURN_IF_ERROR(optional_integer(ctx, "seed", 0, (int64_t)1 << 53, 0, &seed));
  QS_RETURN_IF_ERROR(optional_integer(ctx, "step", 0, UINT32_MAX, 0, &step));
  p.seed = (uint64_t)seed;
  p.step = (uint32_t)step;

  QS_RETURN_IF_ERROR(ctx.output("ids", DType::I32, {B}, &ids));
  const int32_t* rows_p = ptr<int32_t>(rows);
  const int32_t* pos_p = ptr<int32_t>(positions);
  const int32_t* sup_p = ptr<int32_t>(suppress);
  const int n_sup = suppress.defined() ? (int)suppress.numel() : 0;
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    QS_CHECK_ARG(ctx.float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 logits (got %s)", ctx.op(),
                 dtype_name(ctx.float_dtype()));
    Tensor scratch;  // top-k / top-p only: the sort's buffers (from the engine's device cache)
    if (const size_t bytes = cuda::sample_tokens_scratch_bytes(B, V, p))
      QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)bytes}, &scratch));
    QS_RETURN_IF_ERROR(cuda::sample_tokens_f32(ids.data<int32_t>(), logits.data<float>(), B, V, p, rows_p, pos_p, sup_p,
                                               n_sup, scratch.defined() ? scratch.raw() : nullptr,
                                               ctx.engine().stream()));
    // The ids come back to the host (a sync) so that a row that cannot be sampled is an error
    // here, as on the CPU, rather than a negative id fed to the next embedding lookup.
    std::vector<int32_t> host(B);
    QS_RETURN_IF_ERROR(ctx.engine().download(ids, host.data(), host.size() * sizeof(int32_t)));
    return row_errors(ctx, host.data(), B);
  }
#endif
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  int32_t* out = ids.data<int32_t>();
  int failed = 0;
  QS_FOR_FLOAT(ctx, failed = cpu::sample_tokens<T>(out, ptr<T>(logits), B, V, p, rows_p, pos_p, sup_p, n_sup));
  return failed ? row_errors(ctx, out, B) : Status::Ok();
}

void register_sampling_ops(OpTable& table) { table["sample_tokens"] = sample_tokens_op; }

}  // namespace qs
