// ops_optim.cpp: AdamW, gradient norm and clipping over flat buffers (see cpu/adamw.h).
#include <cmath>

#include "core/op_context.h"
#include "cpu/adamw.h"
#include "quietstar/params.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#endif

namespace qs {

// params, grads, m, v: same number of elements, updated in place.
static Status adamw_update_op(OpContext& ctx) {
  Tensor params, grads, m, v;
  QS_RETURN_IF_ERROR(ctx.tensor("params", Kind::FLOAT, {"*N"}, &params));
  QS_RETURN_IF_ERROR(ctx.tensor("grads", Kind::FLOAT, {"*N"}, &grads));
  QS_RETURN_IF_ERROR(ctx.tensor("m", Kind::FLOAT, {"*N"}, &m));
  QS_RETURN_IF_ERROR(ctx.tensor("v", Kind::FLOAT, {"*N"}, &v));
  AdamWConfig c;
  int64_t step;
  QS_RETURN_IF_ERROR(ctx.number("lr", &c.lr));
  QS_RETURN_IF_ERROR(ctx.integer("step", 1, INT64_MAX / 2, &step));
  c.beta1 = ctx.number_or("beta1", c.beta1);
  c.beta2 = ctx.number_or("beta2", c.beta2);
  c.eps = ctx.number_or("eps", c.eps);
  c.weight_decay = ctx.number_or("weightDecay", c.weight_decay);
  Status valid = c.validate();
  if (!valid.ok()) return Status(valid.code(), std::string(ctx.op()) + ": " + valid.message());
  QS_CUDA_OR_CPU(ctx,
                 (cuda::adamw_update(ptr<float>(params), ptr<float>(grads), ptr<float>(m), ptr<float>(v), params.numel(),
                                     (float)c.lr, (float)c.beta1, (float)c.beta2, (float)c.eps, (float)c.weight_decay, step,
                                     ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::adamw_update<T>(ptr<T>(params), ptr<T>(grads), ptr<T>(m), ptr<T>(v), params.numel(),
                                                        (float)c.lr, (float)c.beta1, (float)c.beta2, (float)c.eps,
                                                        (float)c.weight_decay, step)));
  ctx.pass_through("params", params);
  ctx.pass_through("m", m);
  ctx.pass_through("v", v);
  return Status::Ok();
}

// norm (f64 [1]) = sqrt(sum x²), deterministic.
static Status global_norm_op(OpContext& ctx) {
  Tensor x, norm;
  QS_RETURN_IF_ERROR(ctx.tensor("x", Kind::FLOAT, {"*N"}, &x));
  QS_RETURN_IF_ERROR(ctx.output("norm", DType::F64, {1}, &norm));
  double ss = 0;
  QS_CUDA_OR_CPU(ctx, (cuda::global_norm(norm.data<double>(), ptr<float>(x), x.numel(), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, ss = cpu::sum_squares<T>(ptr<T>(x), x.numel()));
                 norm.data<double>()[0] = std::sqrt(ss));
  return Status::Ok();
}

// Scales grads in place so that their global norm is at most maxNorm (torch's
// clip_grad_norm_: factor maxNorm / (norm + 1e-6), applied only when it is < 1).
// Returns the norm before clipping as f64 [1].
static Status clip_grad_norm_op(OpContext& ctx) {
  Tensor grads, norm;
  QS_RETURN_IF_ERROR(ctx.tensor("grads", Kind::FLOAT, {"*N"}, &grads));
  double max_norm;
  QS_RETURN_IF_ERROR(ctx.number("maxNorm", &max_norm));
  QS_CHECK_ARG(max_norm > 0, "%s: 'maxNorm' must be > 0 (got %g)", ctx.op(), max_norm);
  QS_RETURN_IF_ERROR(ctx.output("norm", DType::F64, {1}, &norm));
  QS_CUDA_OR_CPU(ctx, (cuda::clip_grad_norm(norm.data<double>(), ptr<float>(grads), grads.numel(), max_norm, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, norm.data<double>()[0] = cpu::clip_grad_norm<T>(ptr<T>(grads), grads.numel(), max_norm)));
  ctx.pass_through("grads", grads);
  return Status::Ok();
}

void register_optim_ops(OpTable& t) {
  t["adamw_update"] = adamw_update_op;
  t["global_norm"] = global_norm_op;
  t["clip_grad_norm"] = clip_grad_norm_op;
}

}  // namespace qs
