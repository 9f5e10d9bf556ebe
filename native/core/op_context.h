// op_context.h: argument checking and output allocation shared by all ops (see ops.h).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "quietstar/ops.h"

namespace qs {

// What an argument may hold. FLOAT is the op's compute type: f32 or f64, the same for every
// FLOAT argument of one call (f64 exists for gradient checks).
enum class Kind { FLOAT, F32, I32, U8, ANY };

class OpContext {
 public:
  OpContext(Engine& engine, const char* op, const OpArgs& args, OpOutputs* outputs)
      : engine_(engine), op_(op), args_(args), outputs_(outputs) {}

  // Looks up tensor `name` and checks it against `dims`: each entry is a dimension symbol
  // ("N", "C") bound on first sight and checked after, a number literal ("2"), or "*N" as the
  // first entry meaning "any leading dimensions, flattened into N". `out` is left undefined
  // (and OK returned) when the argument is optional and absent.
  Status tensor(const char* name, Kind kind, const std::vector<std::string>& dims, Tensor* out,
                bool optional = false);
  // A number attribute (required when no default is given).
  Status number(const char* name, double* out);
  double number_or(const char* name, double fallback) const;
  Status integer(const char* name, int64_t lo, int64_t hi, int64_t* out);
  int64_t integer_or(const char* name, int64_t fallback) const;
  Status string_or(const char* name, const std::string& fallback, std::string* out) const;

  int64_t sym(const std::string& s) const;  // value of a bound dimension symbol
  void bind(const std::string& s, int64_t v) { syms_[s] = v; }
  DType float_dtype() const { return float_dtype_; }

  // Allocates a zero-filled output of the compute float type (or `dtype`) and records it.
  Status output(const char* name, const Shape& shape, Tensor* out);
  Status output(const char* name, DType dtype, const Shape& shape, Tensor* out);
  // Returns an in-place argument (a gradient accumulated into) as an output too.
  void pass_through(const char* name, const Tensor& t) { if (t.defined()) (*outputs_)[name] = t; }

  // Checks every i32 value of `ids` lies in [lo, hi) (or equals `allowed`), naming the index.
  Status check_range(const char* name, const Tensor& ids, int64_t lo, int64_t hi,
                     int64_t allowed = INT64_MIN) const;
  // Refuses ops without a CUDA kernel yet on a CUDA engine.
  Status require_cpu() const;

  Engine& engine() { return engine_; }
  const char* op() const { return op_; }

 private:
  std::string where() const { return std::string(op_) + ": "; }
  Engine& engine_;
  const char* op_;
  const OpArgs& args_;
  OpOutputs* outputs_;
  std::map<std::string, int64_t> syms_;
  DType float_dtype_ = DType::F32;
  bool float_bound_ = false;
};

using OpFn = std::function<Status(OpContext&)>;
using OpTable = std::map<std::string, OpFn>;

// Each ops_*.cpp file adds its ops here; ops.cpp calls them all once. (Explicit calls rather
// than static registrars, which a static library's linker would silently drop.)
void register_tensor_ops(OpTable& table);
void register_nn_ops(OpTable& table);
void register_attention_ops(OpTable& table);
void register_optim_ops(OpTable& table);
void register_sampling_ops(OpTable& table);
void register_thought_sampling_ops(OpTable& table);
void register_thought_attention_ops(OpTable& table);

// Runs the statements with `T` = float or double, whichever the op's float arguments are.
// QS_CUDA_OR_CPU(ctx, (cuda::launcher(...)), cpu statement): on a CUDA engine checks that the
// float dtype is f32 (the device kernels' only dtype) and enqueues the launcher on the engine's
// stream; otherwise requires a CPU engine and runs the CPU statement. Without CUDA support the
// launcher is not even compiled. The launcher argument goes in parentheses (it has commas).
#ifdef QUIETSTAR_HAVE_CUDA
#define QS_CUDA_FN(f) cuda::f
#define QS_CUDA_OR_CPU(ctx, cuda_launch, ...)                                                          \
  do {                                                                                                \
    if ((ctx).engine().device() == Device::CUDA) {                                                    \
      QS_CHECK_ARG((ctx).float_dtype() == DType::F32, "%s: the CUDA kernel takes f32 (got %s)", (ctx).op(), \
                   dtype_name((ctx).float_dtype()));                                                  \
      QS_RETURN_IF_ERROR(cuda_launch);                                                                \
    } else {                                                                                          \
      QS_RETURN_IF_ERROR((ctx).require_cpu());                                                        \
      __VA_ARGS__;                                                                                    \
    }                                                                                                 \
  } while (0)
#else
#define QS_CUDA_FN(f) nullptr
#define QS_CUDA_OR_CPU(ctx, cuda_launch, ...) \
  do {                                        \
    QS_RETURN_IF_ERROR((ctx).require_cpu());  \
    __VA_ARGS__;                              \
  } while (0)
#endif

#define QS_FOR_FLOAT(ctx, ...)                                          \
  do {                                                                  \
    if ((ctx).float_dtype() == ::qs::DType::F64) {                      \
      using T = double;                                                 \
      __VA_ARGS__;                                                      \
    } else {                                                            \
      using T = float;                                                  \
      __VA_ARGS__;                                                      \
    }                                                                   \
  } while (0)

// Typed pointer of an optional tensor (null when undefined).
template <typename T>
inline T* ptr(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

// Leading dimensions of `t` without its last `drop` dimensions, followed by `tail`.
inline Shape lead_shape(const Tensor& t, int drop, std::initializer_list<int64_t> tail) {
  Shape s(t.shape().begin(), t.shape().end() - drop);
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

}  // namespace qs
