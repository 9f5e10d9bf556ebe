// ops_thought_sampling.cpp: fused LM head + Gumbel-max thought sampling (see
// cpu/thought_sampling.h; Quiet-STaR spec §2.7, §2.9 item 7).
//
//   thought_sample: h (N, D), weight (V, D) f32|f64 -> tokens (N) i32, logp (N) f32, lse (N) f32
//     attributes: temperature (sampling; 0 = greedy, default 1),
//                 policyTemperature (> 0, of logp; default 3, the reference's reinforce temperature),
//                 seed (integer in [0, 2^53)), step (integer in [0, 2^32)), chunk (vocabulary
//                 columns per chunk, 0 = 4096)
//     optional tensors: rows (N) i32 (the noise stream's row id, default 0..N-1),
//                       positions (N) i32 (the stream's position, default 0),
//                       suppress (S) i32 (ids never drawn and in no normaliser: the markers).
#include <cmath>
#include <vector>

#include "core/op_context.h"
#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_sampling.h"
#endif

namespace qs {

// An optional integer attribute in [lo, hi], `fallback` when absent.
static Status optional_int(OpContext& ctx, const char* name, int64_t lo, int64_t hi, int64_t fallback, int64_t* out) {
  constexpr double kAbsent = -1.2345e300;
  if (ctx.number_or(name, kAbsent) == kAbsent) {
    *out = fallback;
    return Status::Ok();
  }
  return ctx.integer(name, lo, hi, out);
}

// The first row that could not be sampled (tokens below 0, cpu/sampling.h) as an error.
static Status row_errors(OpContext& ctx, const int32_t* tokens, int N) {
  for (int n = 0; n < N; n++) {
    if (tokens[n] == cpu::kSampleNonFinite) {
      return QS_ERROR(INVALID_ARGUMENT, "%s: the logits of row %d (h[%d] · weightᵀ) hold a NaN or +inf", ctx.op(), n, n);
    }
    if (tokens[n] == cpu::kSampleNoToken) {
      return QS_ERROR(INVALID_ARGUMENT, "%s: row %d has no token to draw (every logit is -inf or suppressed)", ctx.op(), n);
    }
  }
  return Status::Ok();
}

static Status thought_sample_op(OpContext& ctx) {
  Tensor h, weight, rows, positions, suppress, tokens, logp, lse;
  QS_RETURN_IF_ERROR(ctx.tensor("h", Kind::FLOAT, {"N", "D"}, &h));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"V", "D"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("rows", Kind::I32, {"N"}, &rows, true));
  QS_RETURN_IF_ERROR(ctx.tensor("positions", Kind::I32, {"N"}, &positions, true));
  QS_RETURN_IF_ERROR(ctx.tensor("suppress", Kind::I32, {"S"}, &suppress, true));
  const int N = (int)ctx.sym("N"), D = (int)ctx.sym("D"), V = (int)ctx.sym("V");
  QS_CHECK_ARG(V >= 1, "%s: 'weight' must have at least one vocabulary row (got V = 0)", ctx.op());
  if (rows.defined()) QS_RETURN_IF_ERROR(ctx.check_range("rows", rows, 0, INT32_MAX));
  if (positions.defined()) QS_RETURN_IF_ERROR(ctx.check_range("positions", positions, 0, INT32_MAX));
  if (suppress.defined()) QS_RETURN_IF_ERROR(ctx.check_range("suppress", suppress, 0, V));

  cpu::ThoughtSampleParams p;
  p.temperature = ctx.number_or("temperature", 1.0);
  QS_CHECK_ARG(std::isfinite(p.temperature) && p.temperature >= 0,
               "%s: 'temperature' must be a finite number >= 0 (0 = greedy) (got %g)", ctx.op(), p.temperature);
  p.policy_temperature = ctx.number_or("policyTemperature", 3.0);
  QS_CHECK_ARG(std::isfinite(p.policy_temperature) && p.policy_temperature > 0,
               "%s: 'policyTemperature' must be a finite number > 0 (got %g)", ctx.op(), p.policy_temperature);
  int64_t seed, step, chunk;
  QS_RETURN_IF_ERROR(optional_int(ctx, "seed", 0, (int64_t)1 << 53, 0, &seed));
  QS_RETURN_IF_ERROR(optional_int(ctx, "step", 0, UINT32_MAX, 0, &step));
  QS_RETURN_IF_ERROR(optional_int(ctx, "chunk", 0, INT32_MAX, 0, &chunk));
  p.seed = (uint64_t)seed;
  p.step = (uint32_t)step;
  p.chunk = (int)chunk;

  QS_RETURN_IF_ERROR(ctx.output("tokens", DType::I32, {N}, &tokens));
  QS_RETURN_IF_ERROR(ctx.output("logp", DType::F32, {N}, &logp));
  QS_RETURN_IF_ERROR(ctx.output("lse", DType::F32, {N}, &lse));
  const int n_sup = suppress.defined() ? (int)suppress.numel() : 0;
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    QS_CHECK_ARG(ctx.float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 (got %s)", ctx.op(),
                 dtype_name(ctx.float_dtype()));
    Tensor scratch;  // (splits, N) per-row partial states of the vocabulary splits
    const size_t scratch_bytes = cuda::thought_sample_scratch_bytes(N, V);
    if (scratch_bytes > 0) QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)scratch_bytes}, &scratch));
    QS_RETURN_IF_ERROR(cuda::thought_sample_f32(tokens.data<int32_t>(), logp.data<float>(), lse.data<float>(),
                                                h.data<float>(), weight.data<float>(), N, D, V, ptr<int32_t>(rows),
                                                ptr<int32_t>(positions), ptr<int32_t>(suppress), n_sup, p,
                                                ptr<uint8_t>(scratch), ctx.engine().stream()));
    // The tokens come back to the host (a sync of N ints) so that a row that cannot be sampled
    // is an error here, as on the CPU, rather than a negative id fed to the next step.
    std::vector<int32_t> host(N);
    QS_RETURN_IF_ERROR(ctx.engine().download(tokens, host.data(), host.size() * sizeof(int32_t)));
    return row_errors(ctx, host.data(), N);
  }
#endif
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  int32_t* out = tokens.data<int32_t>();
  QS_FOR_FLOAT(ctx, cpu::thought_sample<T>(out, logp.data<float>(), lse.data<float>(), ptr<T>(h), ptr<T>(weight), N, D,
                                           V, ptr<int32_t>(rows), ptr<int32_t>(positions), ptr<int32_t>(suppress),
                                           n_sup, p));
  return row_errors(ctx, out, N);
}

void register_thought_sampling_ops(OpTable& table) { table["thought_sample"] = thought_sample_op; }

}  // namespace qs
