// ops_tensor.cpp: general tensor ops: GEMM, dtype conversion, zeroing, copying.
#include <cstring>

#include "core/op_context.h"
#include "cpu/convert.h"
#include "cpu/gemm.h"
#include "quietstar/cuda_backend.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#endif

namespace qs {

// c (M, N) = alpha · op(a) · op(b) + beta · c. Without 'c' a new output is made (beta ignored);
// with 'c' it is updated in place and returned.
static Status gemm_op(OpContext& ctx) {
  bool ta = ctx.number_or("transA", 0) != 0, tb = ctx.number_or("transB", 0) != 0;
  Tensor a, b, c;
  QS_RETURN_IF_ERROR(ctx.tensor("a", Kind::FLOAT, ta ? std::vector<std::string>{"K", "M"} : std::vector<std::string>{"M", "K"}, &a));
  QS_RETURN_IF_ERROR(ctx.tensor("b", Kind::FLOAT, tb ? std::vector<std::string>{"N", "K"} : std::vector<std::string>{"K", "N"}, &b));
  QS_RETURN_IF_ERROR(ctx.tensor("c", Kind::FLOAT, {"M", "N"}, &c, true));
  int M = (int)ctx.sym("M"), N = (int)ctx.sym("N"), K = (int)ctx.sym("K");
  double alpha = ctx.number_or("alpha", 1.0), beta = ctx.number_or("beta", 0.0);
  if (c.defined()) ctx.pass_through("c", c);
  else { QS_RETURN_IF_ERROR(ctx.output("c", {M, N}, &c)); beta = 0; }
  QS_CUDA_OR_CPU(ctx, (cuda::gemm(ta, tb, M, N, K, (float)alpha, ptr<float>(a), ta ? M : K, ptr<float>(b), tb ? K : N,
                                  (float)beta, ptr<float>(c), N, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::gemm<T>(ta, tb, M, N, K, (T)alpha, ptr<T>(a), ta ? M : K, ptr<T>(b), tb ? K : N,
                                                (T)beta, ptr<T>(c), N)));
  return Status::Ok();
}

// Batched: a (Bt, M, K), b (Bt, K, N) (or transposed per flag) -> c (Bt, M, N).
static Status gemm_batched_op(OpContext& ctx) {
  bool ta = ctx.number_or("transA", 0) != 0, tb = ctx.number_or("transB", 0) != 0;
  Tensor a, b, c;
  QS_RETURN_IF_ERROR(ctx.tensor("a", Kind::FLOAT, ta ? std::vector<std::string>{"Bt", "K", "M"} : std::vector<std::string>{"Bt", "M", "K"}, &a));
  QS_RETURN_IF_ERROR(ctx.tensor("b", Kind::FLOAT, tb ? std::vector<std::string>{"Bt", "N", "K"} : std::vector<std::string>{"Bt", "K", "N"}, &b));
  QS_RETURN_IF_ERROR(ctx.tensor("c", Kind::FLOAT, {"Bt", "M", "N"}, &c, true));
  int Bt = (int)ctx.sym("Bt"), M = (int)ctx.sym("M"), N = (int)ctx.sym("N"), K = (int)ctx.sym("K");
  double alpha = ctx.number_or("alpha", 1.0), beta = ctx.number_or("beta", 0.0);
  if (c.defined()) ctx.pass_through("c", c);
  else { QS_RETURN_IF_ERROR(ctx.output("c", {Bt, M, N}, &c)); beta = 0; }
  QS_CUDA_OR_CPU(ctx, (cuda::gemm_batched(ta, tb, Bt, M, N, K, (float)alpha, ptr<float>(a), ta ? M : K, (int64_t)M * K,
                                          ptr<float>(b), tb ? K : N, (int64_t)K * N, (float)beta, ptr<float>(c), N,
                                          (int64_t)M * N, ctx.engine().stream())),
                 QS_FOR_FLOAT(ctx, cpu::gemm_batched<T>(ta, tb, Bt, M, N, K, (T)alpha, ptr<T>(a), ta ? M : K, (int64_t)M * K,
                                                        ptr<T>(b), tb ? K : N, (int64_t)K * N, (T)beta, ptr<T>(c), N,
                                                        (int64_t)M * N)));
  return Status::Ok();
}

// y = x converted to 'dtype' (f32 <-> f64, bf16, f16). Not QS_CUDA_OR_CPU: its f32-only check
// is about the engine's float dtype, while convert's dtypes are its arguments (f64 included).
static Status convert_op(OpContext& ctx) {
  Tensor x, y;
  QS_RETURN_IF_ERROR(ctx.tensor("x", Kind::ANY, {"*N"}, &x));
  std::string name;
  ctx.string_or("dtype", "", &name);
  DType to;
  QS_CHECK_ARG(parse_dtype(name, &to), "%s: 'dtype' must be one of f32, f64, bf16, f16 (got '%s')", ctx.op(), name.c_str());
  DType from = x.dtype();
  auto is_real = [](DType t) { return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::F16; };
  QS_CHECK_ARG(is_real(from) && is_real(to), "%s: converts between f32, f64, bf16 and f16 only (got %s to %s)", ctx.op(),
               dtype_name(from), dtype_name(to));
  QS_RETURN_IF_ERROR(ctx.output("y", to, x.shape(), &y));
  int64_t n = x.numel();
  if (ctx.engine().device() == Device::CUDA) {
#ifdef QUIETSTAR_HAVE_CUDA
    if (from == to) return cuda::memcpy_d2d(y.raw(), x.raw(), x.nbytes(), ctx.engine().stream());
    return cuda::convert(y.raw(), to, x.raw(), from, n, ctx.engine().stream());
#endif
  }
  QS_RETURN_IF_ERROR(ctx.require_cpu());
  if (from == to) { std::memcpy(y.raw(), x.raw(), x.nbytes()); return Status::Ok(); }
  // Go through f32 (exact for bf16/f16 -> f32; f64 -> f32 rounds once).
  std::vector<float> tmp;
  const float* src32;
  switch (from) {
    case DType::F32: src32 = x.data<float>(); break;
    case DType::F64: tmp.resize(n); for (int64_t i = 0; i < n; i++) tmp[i] = (float)x.data<double>()[i]; src32 = tmp.data(); break;
    case DType::BF16: tmp.resize(n); cpu::bf16_to_f32(tmp.data(), x.data<uint16_t>(), n); src32 = tmp.data(); break;
    default: tmp.resize(n); cpu::f16_to_f32(tmp.data(), x.data<uint16_t>(), n); src32 = tmp.data(); break;
  }
  switch (to) {
    case DType::F32: std::memcpy(y.raw(), src32, (size_t)n * 4); break;
    case DType::F64: for (int64_t i = 0; i < n; i++) y.data<double>()[i] = src32[i]; break;
    case DType::BF16: cpu::f32_to_bf16(y.data<uint16_t>(), src32, n); break;
    default: cpu::f32_to_f16(y.data<uint16_t>(), src32, n); break;
  }
  return Status::Ok();
}

// x = 0, in place (gradient buffers between steps).
static Status zero_op(OpContext& ctx) {
  Tensor x;
  QS_RETURN_IF_ERROR(ctx.tensor("x", Kind::ANY, {"*N"}, &x));
  if (x.device() == Device::CUDA) {
    QS_RETURN_IF_ERROR(cuda::memset_zero(x.raw(), x.nbytes(), ctx.engine().stream()));
  } else {
    std::memset(x.raw(), 0, x.nbytes());
  }
  ctx.pass_through("x", x);
  return Status::Ok();
}

// dst = src, in place (same dtype and element count).
static Status copy_op(OpContext& ctx) {
  Tensor src, dst;
  QS_RETURN_IF_ERROR(ctx.tensor("src", Kind::ANY, {"*N"}, &src));
  QS_RETURN_IF_ERROR(ctx.tensor("dst", Kind::ANY, {"*N"}, &dst));
  QS_CHECK_ARG(src.dtype() == dst.dtype(), "%s: 'src' %s and 'dst' %s must have the same dtype", ctx.op(),
               src.describe().c_str(), dst.describe().c_str());
  if (dst.device() == Device::CUDA) {
    QS_RETURN_IF_ERROR(cuda::memcpy_d2d(dst.raw(), src.raw(), src.nbytes(), ctx.engine().stream()));
  } else {
    std::memmove(dst.raw(), src.raw(), src.nbytes());
  }
  ctx.pass_through("dst", dst);
  return Status::Ok();
}

void register_tensor_ops(OpTable& t) {
  t["gemm"] = gemm_op;
  t["gemm_batched"] = gemm_batched_op;
  t["convert"] = convert_op;
  t["zero"] = zero_op;
  t["copy"] = copy_op;
}

}  // namespace qs
