// ops_nn.cpp: the transformer layer ops (see ops.h for the boundary's rules).
// Shapes use the kernels' symbols: N rows (any leading dims flattened), C channels, V vocab.
// Forward ops return new tensors; backward ops accumulate (+=) into the gradient tensors passed
// in (dinp, dweight, ...) and return them.
#include <cmath>
#include <cstring>

#include "core/op_context.h"
#include "cpu/activations.h"
#include "cpu/embedding.h"
#include "cpu/layernorm.h"
#include "cpu/linear.h"
#include "cpu/lmhead_xent.h"
#include "cpu/rmsnorm.h"
#include "cpu/rope.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#endif

namespace qs {



// ---------------------------------------------------------------------------------------------
// linear: out (M, N) = inp (M, K) · W + bias

static Status parse_layout(OpContext& ctx, cpu::WeightLayout* layout) {
  std::string name;
  ctx.string_or("layout", "out_in", &name);
  if (name == "out_in") *layout = cpu::WeightLayout::OutIn;
  else if (name == "in_out") *layout = cpu::WeightLayout::InOut;
  else return QS_ERROR(INVALID_ARGUMENT, "%s: 'layout' must be 'out_in' (torch Linear, weight [N, K]) or 'in_out' (GPT-2 Conv1D, weight [K, N]) (got '%s')", ctx.op(), name.c_str());
  return Status::Ok();
}

static std::vector<std::string> weight_dims(cpu::WeightLayout layout) {
  return layout == cpu::WeightLayout::OutIn ? std::vector<std::string>{"N", "K"} : std::vector<std::string>{"K", "N"};
}

static Status linear_forward_op(OpContext& ctx) {
  cpu::WeightLayout layout;
  QS_RETURN_IF_ERROR(parse_layout(ctx, &layout));
  Tensor inp, weight, bias, out;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*M", "K"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, weight_dims(layout), &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("bias", Kind::FLOAT, {"N"}, &bias, true));
  int M = (int)ctx.sym("M"), K = (int)ctx.sym("K"), N = (int)ctx.sym("N");
  QS_RETURN_IF_ERROR(ctx.output("out", lead_shape(inp, 1, {N}), &out));
  QS_CUDA_OR_CPU(ctx, (cuda::linear_forward(ptr<float>(out), ptr<float>(inp), ptr<float>(weight), ptr<float>(bias), M, K, N, layout, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::linear_forward<T>(ptr<T>(out), ptr<T>(inp), ptr<T>(weight), ptr<T>(bias), M, K, N, layout)));
  return Status::Ok();
}

static Status linear_backward_op(OpContext& ctx) {
  cpu::WeightLayout layout;
  QS_RETURN_IF_ERROR(parse_layout(ctx, &layout));
  Tensor dout, inp, weight, dinp, dweight, dbias;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*M", "N"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*M", "K"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, weight_dims(layout), &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("dinp", Kind::FLOAT, {"*M", "K"}, &dinp, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dweight", Kind::FLOAT, weight_dims(layout), &dweight, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dbias", Kind::FLOAT, {"N"}, &dbias, true));
  int M = (int)ctx.sym("M"), K = (int)ctx.sym("K"), N = (int)ctx.sym("N");
  QS_CUDA_OR_CPU(ctx, (cuda::linear_backward(ptr<float>(dinp), ptr<float>(dweight), ptr<float>(dbias), ptr<float>(dout), ptr<float>(inp),
                                             ptr<float>(weight), M, K, N, layout, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::linear_backward<T>(ptr<T>(dinp), ptr<T>(dweight), ptr<T>(dbias), ptr<T>(dout), ptr<T>(inp),
                                                           ptr<T>(weight), M, K, N, layout)));
  ctx.pass_through("dinp", dinp);
  ctx.pass_through("dweight", dweight);
  ctx.pass_through("dbias", dbias);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// embeddings

static Status embedding_forward_op(OpContext& ctx) {
  Tensor ids, table, out;
  QS_RETURN_IF_ERROR(ctx.tensor("ids", Kind::I32, {"*N"}, &ids));
  QS_RETURN_IF_ERROR(ctx.tensor("table", Kind::FLOAT, {"V", "C"}, &table));
  QS_RETURN_IF_ERROR(ctx.check_range("ids", ids, 0, ctx.sym("V")));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_RETURN_IF_ERROR(ctx.output("out", lead_shape(ids, 0, {C}), &out));
  QS_CUDA_OR_CPU(ctx, (cuda::embedding_forward(ptr<float>(out), ids.data<int32_t>(), ptr<float>(table), N, C, (int)ctx.sym("V"), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::embedding_forward<T>(ptr<T>(out), ids.data<int32_t>(), ptr<T>(table), N, C)));
  return Status::Ok();
}

static Status embedding_backward_op(OpContext& ctx) {
  Tensor dout, ids, dtable;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N", "C"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("ids", Kind::I32, {"*N"}, &ids));
  QS_RETURN_IF_ERROR(ctx.tensor("dtable", Kind::FLOAT, {"V", "C"}, &dtable));
  QS_RETURN_IF_ERROR(ctx.check_range("ids", ids, 0, ctx.sym("V")));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_CUDA_OR_CPU(ctx, (cuda::embedding_backward(ptr<float>(dtable), ptr<float>(dout), ids.data<int32_t>(), N, C, (int)ctx.sym("V"), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::embedding_backward<T>(ptr<T>(dtable), ptr<T>(dout), ids.data<int32_t>(), N, C)));
  ctx.pass_through("dtable", dtable);
  return Status::Ok();
}

// out = inp + wpe[pos] (GPT-2's learned positions)
static Status position_embedding_forward_op(OpContext& ctx) {
  Tensor inp, pos, wpe, out;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N", "C"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("pos", Kind::I32, {"*N"}, &pos));
  QS_RETURN_IF_ERROR(ctx.tensor("wpe", Kind::FLOAT, {"P", "C"}, &wpe));
  QS_RETURN_IF_ERROR(ctx.check_range("pos", pos, 0, ctx.sym("P")));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_RETURN_IF_ERROR(ctx.output("out", inp.shape(), &out));
  QS_CUDA_OR_CPU(ctx, (cuda::position_embedding_forward(ptr<float>(out), ptr<float>(inp), pos.data<int32_t>(), ptr<float>(wpe), N, C, (int)ctx.sym("P"), ctx.engine().stream())),
                 std::memcpy(out.raw(), inp.raw(), inp.nbytes());
                 QS_FOR_FLOAT(ctx, cpu::position_embedding_forward<T>(ptr<T>(out), pos.data<int32_t>(), ptr<T>(wpe), N, C)));
  return Status::Ok();
}

static Status position_embedding_backward_op(OpContext& ctx) {
  Tensor dout, pos, dwpe;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N", "C"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("pos", Kind::I32, {"*N"}, &pos));
  QS_RETURN_IF_ERROR(ctx.tensor("dwpe", Kind::FLOAT, {"P", "C"}, &dwpe));
  QS_RETURN_IF_ERROR(ctx.check_range("pos", pos, 0, ctx.sym("P")));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_CUDA_OR_CPU(ctx, (cuda::position_embedding_backward(ptr<float>(dwpe), ptr<float>(dout), pos.data<int32_t>(), N, C, (int)ctx.sym("P"), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::position_embedding_backward<T>(ptr<T>(dwpe), ptr<T>(dout), pos.data<int32_t>(), N, C)));
  ctx.pass_through("dwpe", dwpe);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// normalisation

static Status layernorm_forward_op(OpContext& ctx) {
  Tensor inp, weight, bias, out, mean, rstd;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N", "C"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"C"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("bias", Kind::FLOAT, {"C"}, &bias, true));
  double eps = ctx.number_or("eps", 1e-5);
  QS_CHECK_ARG(eps >= 0, "%s: 'eps' must be >= 0 (got %g)", ctx.op(), eps);
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_RETURN_IF_ERROR(ctx.output("out", inp.shape(), &out));
  QS_RETURN_IF_ERROR(ctx.output("mean", {N}, &mean));
  QS_RETURN_IF_ERROR(ctx.output("rstd", {N}, &rstd));
  QS_CUDA_OR_CPU(ctx, (cuda::layernorm_forward(ptr<float>(out), ptr<float>(mean), ptr<float>(rstd), ptr<float>(inp), ptr<float>(weight), ptr<float>(bias), N, C, (float)eps, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::layernorm_forward<T>(ptr<T>(out), ptr<T>(mean), ptr<T>(rstd), ptr<T>(inp), ptr<T>(weight),
                                               ptr<T>(bias), N, C, (T)eps)));
  return Status::Ok();
}

static Status layernorm_backward_op(OpContext& ctx) {
  Tensor dout, inp, weight, mean, rstd, dinp, dweight, dbias;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N", "C"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N", "C"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"C"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("mean", Kind::FLOAT, {"N"}, &mean));
  QS_RETURN_IF_ERROR(ctx.tensor("rstd", Kind::FLOAT, {"N"}, &rstd));
  QS_RETURN_IF_ERROR(ctx.tensor("dinp", Kind::FLOAT, {"*N", "C"}, &dinp, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dweight", Kind::FLOAT, {"C"}, &dweight, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dbias", Kind::FLOAT, {"C"}, &dbias, true));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_CUDA_OR_CPU(ctx, (cuda::layernorm_backward(ptr<float>(dinp), ptr<float>(dweight), ptr<float>(dbias), ptr<float>(dout), ptr<float>(inp), ptr<float>(weight), ptr<float>(mean), ptr<float>(rstd), N, C, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::layernorm_backward<T>(ptr<T>(dinp), ptr<T>(dweight), ptr<T>(dbias), ptr<T>(dout), ptr<T>(inp),
                                                ptr<T>(weight), ptr<T>(mean), ptr<T>(rstd), N, C)));
  ctx.pass_through("dinp", dinp);
  ctx.pass_through("dweight", dweight);
  ctx.pass_through("dbias", dbias);
  return Status::Ok();
}

static Status rmsnorm_forward_op(OpContext& ctx) {
  Tensor inp, weight, out, rstd;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N", "C"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"C"}, &weight));
  double eps = ctx.number_or("eps", 1e-6);
  QS_CHECK_ARG(eps >= 0, "%s: 'eps' must be >= 0 (got %g)", ctx.op(), eps);
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_RETURN_IF_ERROR(ctx.output("out", inp.shape(), &out));
  QS_RETURN_IF_ERROR(ctx.output("rstd", {N}, &rstd));
  QS_CUDA_OR_CPU(ctx, (cuda::rmsnorm_forward(ptr<float>(out), ptr<float>(rstd), ptr<float>(inp), ptr<float>(weight), N, C, (float)eps, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::rmsnorm_forward<T>(ptr<T>(out), ptr<T>(rstd), ptr<T>(inp), ptr<T>(weight), N, C, (T)eps)));
  return Status::Ok();
}

static Status rmsnorm_backward_op(OpContext& ctx) {
  Tensor dout, inp, weight, rstd, dinp, dweight;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N", "C"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N", "C"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"C"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("rstd", Kind::FLOAT, {"N"}, &rstd));
  QS_RETURN_IF_ERROR(ctx.tensor("dinp", Kind::FLOAT, {"*N", "C"}, &dinp, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dweight", Kind::FLOAT, {"C"}, &dweight, true));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C");
  QS_CUDA_OR_CPU(ctx, (cuda::rmsnorm_backward(ptr<float>(dinp), ptr<float>(dweight), ptr<float>(dout), ptr<float>(inp), ptr<float>(weight), ptr<float>(rstd), N, C, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::rmsnorm_backward<T>(ptr<T>(dinp), ptr<T>(dweight), ptr<T>(dout), ptr<T>(inp), ptr<T>(weight),
                                              ptr<T>(rstd), N, C)));
  ctx.pass_through("dinp", dinp);
  ctx.pass_through("dweight", dweight);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// rope: x (N, H, d) rotated by per-token positions pos (N)

static Status rope_args(OpContext& ctx, const char* x_name, Tensor* x, Tensor* pos, double* theta) {
  QS_RETURN_IF_ERROR(ctx.tensor(x_name, Kind::FLOAT, {"*N", "H", "d"}, x));
  QS_RETURN_IF_ERROR(ctx.tensor("pos", Kind::I32, {"*N"}, pos));
  QS_CHECK_ARG(ctx.sym("d") % 2 == 0, "%s: head dimension d must be even for rotate-half RoPE (got %lld from %s)",
               ctx.op(), (long long)ctx.sym("d"), x->describe().c_str());
  *theta = ctx.number_or("theta", 10000.0);
  QS_CHECK_ARG(*theta > 0, "%s: 'theta' must be > 0 (got %g)", ctx.op(), *theta);
  return Status::Ok();
}

static Status rope_forward_op(OpContext& ctx) {
  Tensor inp, pos, out;
  double theta;
  QS_RETURN_IF_ERROR(rope_args(ctx, "inp", &inp, &pos, &theta));
  QS_RETURN_IF_ERROR(ctx.output("out", inp.shape(), &out));
  QS_CUDA_OR_CPU(ctx, (cuda::rope_forward(ptr<float>(out), ptr<float>(inp), pos.data<int32_t>(), (int)ctx.sym("N"), (int)ctx.sym("H"), (int)ctx.sym("d"), theta, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::rope_forward<T>(ptr<T>(out), ptr<T>(inp), pos.data<int32_t>(), (int)ctx.sym("N"),
                                          (int)ctx.sym("H"), (int)ctx.sym("d"), theta)));
  return Status::Ok();
}

static Status rope_backward_op(OpContext& ctx) {
  Tensor dout, pos, dinp;
  double theta;
  QS_RETURN_IF_ERROR(rope_args(ctx, "dout", &dout, &pos, &theta));
  QS_RETURN_IF_ERROR(ctx.tensor("dinp", Kind::FLOAT, {"*N", "H", "d"}, &dinp));
  QS_CUDA_OR_CPU(ctx, (cuda::rope_backward(ptr<float>(dinp), ptr<float>(dout), pos.data<int32_t>(), (int)ctx.sym("N"), (int)ctx.sym("H"), (int)ctx.sym("d"), theta, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::rope_backward<T>(ptr<T>(dinp), ptr<T>(dout), pos.data<int32_t>(), (int)ctx.sym("N"),
                                           (int)ctx.sym("H"), (int)ctx.sym("d"), theta)));
  ctx.pass_through("dinp", dinp);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// pointwise

using CudaUnaryForward = Status (*)(float*, const float*, int64_t, void*);
using CudaUnaryBackward = Status (*)(float*, const float*, const float*, int64_t, void*);

template <void (*F32)(float*, const float*, int64_t), void (*F64)(double*, const double*, int64_t),
          CudaUnaryForward CUDA>
static Status unary_forward_op(OpContext& ctx) {
  Tensor inp, out;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N"}, &inp));
  QS_RETURN_IF_ERROR(ctx.output("out", inp.shape(), &out));
  QS_CUDA_OR_CPU(ctx, (CUDA(out.data<float>(), inp.data<float>(), inp.numel(), ctx.engine().stream())),
                 if (ctx.float_dtype() == DType::F64) F64(out.data<double>(), inp.data<double>(), inp.numel());
                 else F32(out.data<float>(), inp.data<float>(), inp.numel()));
  return Status::Ok();
}

template <void (*F32)(float*, const float*, const float*, int64_t),
          void (*F64)(double*, const double*, const double*, int64_t), CudaUnaryBackward CUDA>
static Status unary_backward_op(OpContext& ctx) {
  Tensor inp, dout, dinp;
  QS_RETURN_IF_ERROR(ctx.tensor("inp", Kind::FLOAT, {"*N"}, &inp));
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("dinp", Kind::FLOAT, {"*N"}, &dinp));
  QS_CUDA_OR_CPU(ctx, (CUDA(dinp.data<float>(), inp.data<float>(), dout.data<float>(), inp.numel(), ctx.engine().stream())),
                 if (ctx.float_dtype() == DType::F64) F64(dinp.data<double>(), inp.data<double>(), dout.data<double>(), inp.numel());
                 else F32(dinp.data<float>(), inp.data<float>(), dout.data<float>(), inp.numel()));
  ctx.pass_through("dinp", dinp);
  return Status::Ok();
}

static Status swiglu_forward_op(OpContext& ctx) {
  Tensor gate, up, out;
  QS_RETURN_IF_ERROR(ctx.tensor("gate", Kind::FLOAT, {"*N", "F"}, &gate));
  QS_RETURN_IF_ERROR(ctx.tensor("up", Kind::FLOAT, {"*N", "F"}, &up));
  QS_RETURN_IF_ERROR(ctx.output("out", gate.shape(), &out));
  QS_CUDA_OR_CPU(ctx, (cuda::swiglu_forward(ptr<float>(out), ptr<float>(gate), ptr<float>(up), gate.numel(), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::swiglu_forward<T>(ptr<T>(out), ptr<T>(gate), ptr<T>(up), gate.numel())));
  return Status::Ok();
}

static Status swiglu_backward_op(OpContext& ctx) {
  Tensor gate, up, dout, dgate, dup;
  QS_RETURN_IF_ERROR(ctx.tensor("gate", Kind::FLOAT, {"*N", "F"}, &gate));
  QS_RETURN_IF_ERROR(ctx.tensor("up", Kind::FLOAT, {"*N", "F"}, &up));
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N", "F"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("dgate", Kind::FLOAT, {"*N", "F"}, &dgate));
  QS_RETURN_IF_ERROR(ctx.tensor("dup", Kind::FLOAT, {"*N", "F"}, &dup));
  QS_CUDA_OR_CPU(ctx, (cuda::swiglu_backward(ptr<float>(dgate), ptr<float>(dup), ptr<float>(gate), ptr<float>(up), ptr<float>(dout), gate.numel(), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::swiglu_backward<T>(ptr<T>(dgate), ptr<T>(dup), ptr<T>(gate), ptr<T>(up), ptr<T>(dout), gate.numel())));
  ctx.pass_through("dgate", dgate);
  ctx.pass_through("dup", dup);
  return Status::Ok();
}

static Status residual_forward_op(OpContext& ctx) {
  Tensor a, b, out;
  QS_RETURN_IF_ERROR(ctx.tensor("a", Kind::FLOAT, {"*N"}, &a));
  QS_RETURN_IF_ERROR(ctx.tensor("b", Kind::FLOAT, {"*N"}, &b));
  QS_CHECK_ARG(a.shape() == b.shape(), "%s: 'a' %s and 'b' %s must have the same shape", ctx.op(), a.describe().c_str(), b.describe().c_str());
  QS_RETURN_IF_ERROR(ctx.output("out", a.shape(), &out));
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    QS_CHECK_ARG(ctx.float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 (got %s)", ctx.op(), dtype_name(ctx.float_dtype()));
    return cuda::residual_forward(out.data<float>(), a.data<float>(), b.data<float>(), a.numel(), ctx.engine().stream());
  }
#endif
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  QS_FOR_FLOAT(ctx, cpu::residual_forward<T>(ptr<T>(out), ptr<T>(a), ptr<T>(b), a.numel()));
  return Status::Ok();
}

static Status residual_backward_op(OpContext& ctx) {
  Tensor dout, da, db;
  QS_RETURN_IF_ERROR(ctx.tensor("dout", Kind::FLOAT, {"*N"}, &dout));
  QS_RETURN_IF_ERROR(ctx.tensor("da", Kind::FLOAT, {"*N"}, &da, true));
  QS_RETURN_IF_ERROR(ctx.tensor("db", Kind::FLOAT, {"*N"}, &db, true));
  QS_CUDA_OR_CPU(ctx, (cuda::residual_backward(ptr<float>(da), ptr<float>(db), ptr<float>(dout), dout.numel(), ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::residual_backward<T>(ptr<T>(da), ptr<T>(db), ptr<T>(dout), dout.numel())));
  ctx.pass_through("da", da);
  ctx.pass_through("db", db);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// LM head + cross-entropy: losses (N) from h (N, C), weight (V, C), targets (N)

static Status xent_attrs(OpContext& ctx, int64_t* ignore_index, int64_t* chunk) {
  *ignore_index = ctx.integer_or("ignoreIndex", -100);
  *chunk = ctx.integer_or("chunk", 0);
  QS_CHECK_ARG(*chunk >= 0, "%s: 'chunk' must be >= 0 (0 = default) (got %lld)", ctx.op(), (long long)*chunk);
  return Status::Ok();
}

static Status lmhead_xent_forward_op(OpContext& ctx) {
  Tensor h, weight, targets, losses, lse;
  QS_RETURN_IF_ERROR(ctx.tensor("h", Kind::FLOAT, {"*N", "C"}, &h));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"V", "C"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("targets", Kind::I32, {"*N"}, &targets));
  int64_t ignore_index, chunk;
  QS_RETURN_IF_ERROR(xent_attrs(ctx, &ignore_index, &chunk));
  QS_RETURN_IF_ERROR(ctx.check_range("targets", targets, 0, ctx.sym("V"), ignore_index));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C"), V = (int)ctx.sym("V");
  QS_RETURN_IF_ERROR(ctx.output("losses", targets.shape(), &losses));
  QS_RETURN_IF_ERROR(ctx.output("lse", DType::F32, targets.shape(), &lse));
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    QS_CHECK_ARG(ctx.float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 (got %s)", ctx.op(), dtype_name(ctx.float_dtype()));
    Tensor scratch;  // (splits, N) per-row softmax statistics of the vocabulary splits
    const size_t bytes = cuda::lmhead_xent_forward_scratch_bytes(N, V);
    if (bytes > 0) QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)bytes}, &scratch));
    return cuda::lmhead_xent_forward_f32(losses.data<float>(), lse.data<float>(), h.data<float>(), weight.data<float>(),
                                         targets.data<int32_t>(), N, C, V, (int)ignore_index, ptr<uint8_t>(scratch),
                                         ctx.engine().stream());
  }
#endif
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  QS_FOR_FLOAT(ctx, cpu::lmhead_xent_forward<T>(ptr<T>(losses), lse.data<float>(), ptr<T>(h), ptr<T>(weight),
                                                 targets.data<int32_t>(), N, C, V, (int)ignore_index, (int)chunk));
  return Status::Ok();
}

static Status lmhead_xent_backward_op(OpContext& ctx) {
  Tensor dlosses, h, weight, targets, lse, dh, dweight;
  QS_RETURN_IF_ERROR(ctx.tensor("dlosses", Kind::FLOAT, {"*N"}, &dlosses));
  QS_RETURN_IF_ERROR(ctx.tensor("h", Kind::FLOAT, {"*N", "C"}, &h));
  QS_RETURN_IF_ERROR(ctx.tensor("weight", Kind::FLOAT, {"V", "C"}, &weight));
  QS_RETURN_IF_ERROR(ctx.tensor("targets", Kind::I32, {"*N"}, &targets));
  QS_RETURN_IF_ERROR(ctx.tensor("lse", Kind::F32, {"*N"}, &lse));
  QS_RETURN_IF_ERROR(ctx.tensor("dh", Kind::FLOAT, {"*N", "C"}, &dh, true));
  QS_RETURN_IF_ERROR(ctx.tensor("dweight", Kind::FLOAT, {"V", "C"}, &dweight, true));
  int64_t ignore_index, chunk;
  QS_RETURN_IF_ERROR(xent_attrs(ctx, &ignore_index, &chunk));
  QS_RETURN_IF_ERROR(ctx.check_range("targets", targets, 0, ctx.sym("V"), ignore_index));
  int N = (int)ctx.sym("N"), C = (int)ctx.sym("C"), V = (int)ctx.sym("V");
#ifdef QUIETSTAR_HAVE_CUDA
  if (ctx.engine().device() == Device::CUDA) {
    QS_CHECK_ARG(ctx.float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 (got %s)", ctx.op(), dtype_name(ctx.float_dtype()));
    Tensor scratch;  // (N, chunk) gradient of the logits of one vocabulary chunk
    const size_t bytes = cuda::lmhead_xent_backward_scratch_bytes(N, V, (int)chunk);
    if (bytes > 0) QS_RETURN_IF_ERROR(ctx.engine().empty(DType::U8, {(int64_t)bytes}, &scratch));
    QS_RETURN_IF_ERROR(cuda::lmhead_xent_backward_f32(ptr<float>(dh), ptr<float>(dweight), dlosses.data<float>(),
                                                      h.data<float>(), weight.data<float>(), targets.data<int32_t>(),
                                                      lse.data<float>(), N, C, V, (int)ignore_index, (int)chunk,
                                                      ptr<uint8_t>(scratch), ctx.engine().stream()));
    ctx.pass_through("dh", dh);
    ctx.pass_through("dweight", dweight);
    return Status::Ok();
  }
#endif
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  QS_FOR_FLOAT(ctx, cpu::lmhead_xent_backward<T>(ptr<T>(dh), ptr<T>(dweight), ptr<T>(dlosses), ptr<T>(h), ptr<T>(weight),
                                                  targets.data<int32_t>(), lse.data<float>(), N, C, V, (int)ignore_index,
                                                  (int)chunk));
  ctx.pass_through("dh", dh);
  ctx.pass_through("dweight", dweight);
  return Status::Ok();
}

void register_nn_ops(OpTable& t) {
  t["linear_forward"] = linear_forward_op;
  t["linear_backward"] = linear_backward_op;
  t["embedding_forward"] = embedding_forward_op;
  t["embedding_backward"] = embedding_backward_op;
  t["position_embedding_forward"] = position_embedding_forward_op;
  t["position_embedding_backward"] = position_embedding_backward_op;
  t["layernorm_forward"] = layernorm_forward_op;
  t["layernorm_backward"] = layernorm_backward_op;
  t["rmsnorm_forward"] = rmsnorm_forward_op;
  t["rmsnorm_backward"] = rmsnorm_backward_op;
  t["rope_forward"] = rope_forward_op;
  t["rope_backward"] = rope_backward_op;
  t["gelu_forward"] = unary_forward_op<cpu::gelu_forward<float>, cpu::gelu_forward<double>, QS_CUDA_FN(gelu_forward)>;
  t["gelu_backward"] = unary_backward_op<cpu::gelu_backward<float>, cpu::gelu_backward<double>, QS_CUDA_FN(gelu_backward)>;
  t["silu_forward"] = unary_forward_op<cpu::silu_forward<float>, cpu::silu_forward<double>, QS_CUDA_FN(silu_forward)>;
  t["silu_backward"] = unary_backward_op<cpu::silu_backward<float>, cpu::silu_backward<double>, QS_CUDA_FN(silu_backward)>;
  t["relu_forward"] = unary_forward_op<cpu::relu_forward<float>, cpu::relu_forward<double>, QS_CUDA_FN(relu_forward)>;
  t["relu_backward"] = unary_backward_op<cpu::relu_backward<float>, cpu::relu_backward<double>, QS_CUDA_FN(relu_backward)>;
  t["swiglu_forward"] = swiglu_forward_op;
  t["swiglu_backward"] = swiglu_backward_op;
  t["residual_forward"] = residual_forward_op;
  t["residual_backward"] = residual_backward_op;
  t["lmhead_xent_forward"] = lmhead_xent_forward_op;
  t["lmhead_xent_backward"] = lmhead_xent_backward_op;
}

}  // namespace qs
