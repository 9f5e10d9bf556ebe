// op_context.cpp: argument checking shared by all ops, and the op table (see ops.h).
#include "core/op_context.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>

namespace qs {

static const char* kind_name(Kind k) {
  switch (k) {
    case Kind::FLOAT: return "f32 or f64";
    case Kind::F32: return "f32";
    case Kind::I32: return "i32";
    case Kind::U8: return "u8";
    case Kind::ANY: return "any dtype";
  }
  return "?";
}

Status OpContext::tensor(const char* name, Kind kind, const std::vector<std::string>& dims, Tensor* out,
                         bool optional) {
  *out = Tensor();
  auto it = args_.tensors.find(name);
  if (it == args_.tensors.end() || !it->second.defined()) {
    if (optional) return Status::Ok();
    return QS_ERROR(INVALID_ARGUMENT, "%smissing tensor argument '%s'", where().c_str(), name);
  }
  const Tensor& t = it->second;
  // dtype
  bool dtype_ok = true;
  switch (kind) {
    case Kind::FLOAT:
      if (t.dtype() != DType::F32 && t.dtype() != DType::F64) {
        dtype_ok = false;
      } else if (!float_bound_) {
        float_dtype_ = t.dtype();
        float_bound_ = true;
      } else if (t.dtype() != float_dtype_) {
        return QS_ERROR(INVALID_ARGUMENT, "%s'%s' is %s but the other float arguments are %s", where().c_str(), name,
                        dtype_name(t.dtype()), dtype_name(float_dtype_));
      }
      break;
    case Kind::F32: dtype_ok = t.dtype() == DType::F32; break;
    case Kind::I32: dtype_ok = t.dtype() == DType::I32; break;
    case Kind::U8: dtype_ok = t.dtype() == DType::U8; break;
    case Kind::ANY: break;
  }
  if (!dtype_ok) {
    return QS_ERROR(INVALID_ARGUMENT, "%s'%s' must be %s (got %s)", where().c_str(), name, kind_name(kind),
                    t.describe().c_str());
  }
  if (t.device() != engine_.device()) {
    return QS_ERROR(INVALID_ARGUMENT, "%s'%s' is on %s but the engine runs on %s", where().c_str(), name,
                    device_name(t.device()), device_name(engine_.device()));
  }
  // shape
  const Shape& shape = t.shape();
  size_t first = 0;
  std::string expected;
  for (size_t i = 0; i < dims.size(); i++) expected += (i ? ", " : "") + dims[i];
  expected = "[" + expected + "]";
  auto mismatch = [&](const std::string& detail) {
    return QS_ERROR(INVALID_ARGUMENT, "%s'%s' must have shape %s%s (got %s)", where().c_str(), name, expected.c_str(),
                    detail.c_str(), t.describe().c_str());
  };
  bool flatten = !dims.empty() && dims[0].size() > 1 && dims[0][0] == '*';
  size_t fixed = flatten ? dims.size() - 1 : dims.size();
  if (flatten ? shape.size() < fixed : shape.size() != dims.size()) {
    return mismatch(flatten ? ", with any leading dimensions" : "");
  }
  auto check_dim = [&](const std::string& sym, int64_t value) -> Status {
    bool literal = !sym.empty() && (std::isdigit((unsigned char)sym[0]) != 0);
    if (literal) {
      if (value != std::atoll(sym.c_str())) return mismatch("");
      return Status::Ok();
    }
    auto found = syms_.find(sym);
    if (found == syms_.end()) {
      syms_[sym] = value;
    } else if (found->second != value) {
      return mismatch(", where " + sym + " = " + std::to_string(found->second) + " from an earlier argument");
    }
    return Status::Ok();
  };
  if (flatten) {
    int64_t lead = 1;
    size_t nlead = shape.size() - fixed;
    for (size_t i = 0; i < nlead; i++) lead *= shape[i];
    QS_RETURN_IF_ERROR(check_dim(dims[0].substr(1), lead));
    first = nlead;
    for (size_t i = 1; i < dims.size(); i++) QS_RETURN_IF_ERROR(check_dim(dims[i], shape[first + i - 1]));
  } else {
    for (size_t i = 0; i < dims.size(); i++) QS_RETURN_IF_ERROR(check_dim(dims[i], shape[i]));
  }
  for (int64_t d : shape) {
    if (d > INT32_MAX) return mismatch(": dimensions above 2^31-1 are not supported");
  }
  *out = t;
  return Status::Ok();
}

Status OpContext::number(const char* name, double* out) {
  auto it = args_.numbers.find(name);
  if (it == args_.numbers.end()) return QS_ERROR(INVALID_ARGUMENT, "%smissing number argument '%s'", where().c_str(), name);
  *out = it->second;
  return Status::Ok();
}

double OpContext::number_or(const char* name, double fallback) const {
  auto it = args_.numbers.find(name);
  return it == args_.numbers.end() ? fallback : it->second;
}

Status OpContext::integer(const char* name, int64_t lo, int64_t hi, int64_t* out) {
  double v;
  QS_RETURN_IF_ERROR(number(name, &v));
  if (v != (double)(int64_t)v || v < (double)lo || v > (double)hi) {
    return QS_ERROR(INVALID_ARGUMENT, "%s'%s' must be an integer in [%lld, %lld] (got %g)", where().c_str(), name,
                    (long long)lo, (long long)hi, v);
  }
  *out = (int64_t)v;
  return Status::Ok();
}

int64_t OpContext::integer_or(const char* name, int64_t fallback) const {
  auto it = args_.numbers.find(name);
  return it == args_.numbers.end() ? fallback : (int64_t)it->second;
}

Status OpContext::string_or(const char* name, const std::string& fallback, std::string* out) const {
  auto it = args_.strings.find(name);
  *out = it == args_.strings.end() ? fallback : it->second;
  return Status::Ok();
}

int64_t OpContext::sym(const std::string& s) const {
  auto it = syms_.find(s);
  return it == syms_.end() ? -1 : it->second;
}

Status OpContext::output(const char* name, const Shape& shape, Tensor* out) {
  return output(name, float_dtype_, shape, out);
}

Status OpContext::output(const char* name, DType dtype, const Shape& shape, Tensor* out) {
  QS_RETURN_IF_ERROR(engine_.empty(dtype, shape, out));
  (*outputs_)[name] = *out;
  return Status::Ok();
}

Status OpContext::check_range(const char* name, const Tensor& ids, int64_t lo, int64_t hi, int64_t allowed) const {
  if (ids.device() != Device::CPU) return Status::Ok();  // device kernels clamp; checked on the host path only
  const int32_t* p = ids.data<int32_t>();
  int64_t n = ids.numel();
  for (int64_t i = 0; i < n; i++) {
    if ((p[i] < lo || p[i] >= hi) && p[i] != allowed) {
      return QS_ERROR(INVALID_ARGUMENT, "%s'%s'[%lld] = %d is out of range [%lld, %lld)", where().c_str(), name,
                      (long long)i, p[i], (long long)lo, (long long)hi);
    }
  }
  return Status::Ok();
}

Status OpContext::require_cpu() const {
  if (engine_.device() == Device::CPU) return Status::Ok();
  return QS_ERROR(UNIMPLEMENTED, "%sno CUDA kernel yet; create the engine with device 'cpu' for this op", where().c_str());
}

static const OpTable& op_table() {
  static OpTable table = [] {
    OpTable t;
    register_tensor_ops(t);
    register_nn_ops(t);
    register_attention_ops(t);
    register_optim_ops(t);
    register_sampling_ops(t);
    register_thought_sampling_ops(t);
    register_thought_attention_ops(t);
    return t;
  }();
  return table;
}

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (auto& kv : op_table()) names.push_back(kv.first);
  return names;
}

Status run_op(Engine& engine, const std::string& name, const OpArgs& args, OpOutputs* out) {
  QS_RETURN_IF_ERROR(engine.check_alive());
  const OpTable& table = op_table();
  auto it = table.find(name);
  if (it == table.end()) {
    std::string known;
    for (auto& kv : table) known += (known.empty() ? "" : ", ") + kv.first;
    return QS_ERROR(INVALID_ARGUMENT, "unknown op '%s' (known: %s)", name.c_str(), known.c_str());
  }
  OpOutputs outputs;
  OpContext ctx(engine, it->first.c_str(), args, &outputs);
  QS_RETURN_IF_ERROR(it->second(ctx));
  *out = std::move(outputs);
  return Status::Ok();
}

}  // namespace qs
