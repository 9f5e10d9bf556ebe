// params.cpp: flat parameter buffers with named views (see params.h).
#include "quietstar/params.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "cpu/adamw.h"
#include "cpu/convert.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#ifdef QUIETSTAR_HAVE_CUDA
#include "cuda/kernels_nn.h"
#endif

namespace qs {

static constexpr int64_t kAlign = 16;  // elements

Status ParamLayout::create(const std::vector<ParamSpec>& specs, ParamLayout* out) {
  ParamLayout layout;
  std::set<std::string> seen;
  for (size_t i = 0; i < specs.size(); i++) {
    const ParamSpec& s = specs[i];
    QS_CHECK_ARG(!s.name.empty(), "parameter %zu has an empty name", i);
    QS_CHECK_ARG(seen.insert(s.name).second, "parameter name '%s' appears twice", s.name.c_str());
    for (int64_t d : s.shape) QS_CHECK_ARG(d > 0, "parameter '%s' has shape %s: dimensions must be > 0", s.name.c_str(), shape_string(s.shape).c_str());
  }
  // Decayed views first, each group in the given order.
  for (int pass = 0; pass < 2; pass++) {
    bool want_decay = pass == 0;
    for (const ParamSpec& s : specs) {
      if (s.decay != want_decay) continue;
      ParamEntry e;
      e.name = s.name;
      e.shape = s.shape;
      e.numel = shape_numel(s.shape);
      e.decay = s.decay;
      e.offset = layout.total_;
      layout.total_ = (e.offset + e.numel + kAlign - 1) / kAlign * kAlign;
      layout.entries_.push_back(e);
    }
    if (want_decay) layout.decay_end_ = layout.total_;
  }
  *out = std::move(layout);
  return Status::Ok();
}

const ParamEntry* ParamLayout::find(const std::string& name) const {
  for (const ParamEntry& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

Status ParamSet::create(Engine& engine, DType dtype, const ParamLayout& layout, bool with_optimizer,
                        std::unique_ptr<ParamSet>* out) {
  QS_CHECK_ARG(dtype == DType::F32 || dtype == DType::F64, "parameters must be f32 or f64 (got %s)", dtype_name(dtype));
  std::unique_ptr<ParamSet> p(new ParamSet());
  p->layout_ = layout;
  p->engine_ = &engine;
  Shape flat{layout.total()};
  QS_RETURN_IF_ERROR(engine.empty(dtype, flat, &p->params_));
  QS_RETURN_IF_ERROR(engine.empty(dtype, flat, &p->grads_));
  if (with_optimizer) {
    QS_RETURN_IF_ERROR(engine.empty(dtype, flat, &p->m_));
    QS_RETURN_IF_ERROR(engine.empty(dtype, flat, &p->v_));
  }
  *out = std::move(p);
  return Status::Ok();
}

Status ParamSet::view(const Tensor& flat, const std::string& name, Tensor* out) const {
  const ParamEntry* e = layout_.find(name);
  if (!e) {
    std::string known;
    for (auto& x : layout_.entries()) known += (known.empty() ? "" : ", ") + x.name;
    return QS_ERROR(INVALID_ARGUMENT, "no parameter named '%s' (have: %s)", name.c_str(), known.c_str());
  }
  QS_CHECK_ARG(flat.defined(), "view of '%s' in a buffer that was not allocated (optimizer state off?)", name.c_str());
  return flat.view(e->offset, e->shape, out);
}

template <typename T>
static void adamw_ranges(ParamSet& p, const AdamWConfig& c, int64_t t) {
  T* params = p.params().data<T>();
  const T* grads = p.grads().data<T>();
  T* m = p.m().data<T>();
  T* v = p.v().data<T>();
  int64_t split = p.layout().decay_end(), total = p.layout().total();
  if (split > 0)
    cpu::adamw_update<T>(params, grads, m, v, split, (float)c.lr, (float)c.beta1, (float)c.beta2, (float)c.eps,
                         (float)c.weight_decay, t);
  if (total > split)
    cpu::adamw_update<T>(params + split, grads + split, m + split, v + split, total - split, (float)c.lr,
                         (float)c.beta1, (float)c.beta2, (float)c.eps, 0.0f, t);
}

Status AdamWConfig::validate() const {
  QS_CHECK_ARG(lr >= 0 && std::isfinite(lr), "'lr' must be a finite number >= 0 (got %g)", lr);
  QS_CHECK_ARG(beta1 >= 0 && beta1 < 1, "'beta1' must be in [0, 1) (got %g)", beta1);
  QS_CHECK_ARG(beta2 >= 0 && beta2 < 1, "'beta2' must be in [0, 1) (got %g)", beta2);
  QS_CHECK_ARG(eps > 0, "'eps' must be > 0 (got %g)", eps);
  QS_CHECK_ARG(weight_decay >= 0, "'weightDecay' must be >= 0 (got %g)", weight_decay);
  return Status::Ok();
}

#ifdef QUIETSTAR_HAVE_CUDA
// AdamW on device buffers (f32): the decayed range, then the rest without decay, as on the CPU.
static Status adamw_ranges_cuda(ParamSet& p, const AdamWConfig& c, int64_t t, void* stream) {
  float* params = p.params().data<float>();
  const float* grads = p.grads().data<float>();
  float* m = p.m().data<float>();
  float* v = p.v().data<float>();
  int64_t split = p.layout().decay_end(), total = p.layout().total();
  if (split > 0)
    QS_RETURN_IF_ERROR(cuda::adamw_update(params, grads, m, v, split, (float)c.lr, (float)c.beta1, (float)c.beta2,
                                          (float)c.eps, (float)c.weight_decay, t, stream));
  if (total > split)
    QS_RETURN_IF_ERROR(cuda::adamw_update(params + split, grads + split, m + split, v + split, total - split,
                                          (float)c.lr, (float)c.beta1, (float)c.beta2, (float)c.eps, 0.0f, t, stream));
  return Status::Ok();
}
#endif

// On a CUDA engine the buffers are device memory: the f32 device kernels (adamw.cu) run on the
// engine's stream. (f64 parameters on a CUDA engine have no kernels.)
Status ParamSet::require_device_kernels(const char* what) const {
  if (params_.device() == Device::CPU) return Status::Ok();
#ifdef QUIETSTAR_HAVE_CUDA
  QS_RETURN_IF_ERROR(engine_->check_alive());
  QS_CHECK_ARG(params_.dtype() == DType::F32, "%s: CUDA parameters must be f32 (got %s)", what,
               dtype_name(params_.dtype()));
  return Status::Ok();
#else
  return QS_ERROR(UNAVAILABLE, "%s: this build has no CUDA backend", what);
#endif
}

// t[0, n) = bf16(t) (round to nearest even), through a bf16 scratch: the conversions of
// cpu/convert.h or native/cuda/convert.cu, bit-identical on both.
static Status round_to_bf16(Engine& e, const Tensor& t) {
  const int64_t n = t.numel();
  if (t.device() == Device::CPU) {
    std::vector<uint16_t> tmp((size_t)std::min<int64_t>(n, 1 << 16));
    for (int64_t i = 0; i < n; i += (int64_t)tmp.size()) {
      const int64_t k = std::min<int64_t>((int64_t)tmp.size(), n - i);
      cpu::f32_to_bf16(tmp.data(), t.data<float>() + i, k);
      cpu::bf16_to_f32(t.data<float>() + i, tmp.data(), k);
    }
    return Status::Ok();
  }
#ifdef QUIETSTAR_HAVE_CUDA
  Tensor tmp;
  QS_RETURN_IF_ERROR(e.empty(DType::BF16, {n}, &tmp));
  QS_RETURN_IF_ERROR(cuda::convert(tmp.raw(), DType::BF16, t.raw(), DType::F32, n, e.stream()));
  return cuda::convert(t.raw(), DType::F32, tmp.raw(), DType::BF16, n, e.stream());
#else
  (void)e;
  return QS_ERROR(UNAVAILABLE, "this build has no CUDA backend");
#endif
}

Status ParamSet::adamw_step(const AdamWConfig& c) {
  QS_CHECK_ARG(m_.defined(), "adamw step on parameters created without optimizer state");
  QS_RETURN_IF_ERROR(c.validate());
  QS_RETURN_IF_ERROR(require_device_kernels("adamw"));
  QS_CHECK_ARG(!c.bf16_state || params_.dtype() == DType::F32, "adamw: bf16State needs f32 parameters (got %s)",
               dtype_name(params_.dtype()));
#ifdef QUIETSTAR_HAVE_CUDA
  if (params_.device() == Device::CUDA) QS_RETURN_IF_ERROR(adamw_ranges_cuda(*this, c, step_ + 1, engine_->stream()));
#endif
  if (params_.device() == Device::CPU) {
    if (params_.dtype() == DType::F64) adamw_ranges<double>(*this, c, step_ + 1);
    else adamw_ranges<float>(*this, c, step_ + 1);
  }
  if (c.bf16_state)
    for (const Tensor* t : {&params_, &m_, &v_}) QS_RETURN_IF_ERROR(round_to_bf16(*engine_, *t));
  step_++;
  return Status::Ok();
}

Status ParamSet::clip_grad_norm(double max_norm, double* norm_before) {
  QS_RETURN_IF_ERROR(require_device_kernels("clipGradNorm"));
  int64_t n = layout_.total();
#ifdef QUIETSTAR_HAVE_CUDA
  if (grads_.device() == Device::CUDA) {
    Tensor norm;  // one f64 on the device: the decision to scale is made there (no sync before it)
    QS_RETURN_IF_ERROR(engine_->empty(DType::F64, {1}, &norm));
    if (max_norm > 0) QS_RETURN_IF_ERROR(cuda::clip_grad_norm(norm.data<double>(), grads_.data<float>(), n, max_norm, engine_->stream()));
    else QS_RETURN_IF_ERROR(cuda::global_norm(norm.data<double>(), grads_.data<float>(), n, engine_->stream()));
    return engine_->download(norm, norm_before, sizeof(double));
  }
#endif
  *norm_before = grads_.dtype() == DType::F64 ? cpu::clip_grad_norm<double>(grads_.data<double>(), n, max_norm)
                                              : cpu::clip_grad_norm<float>(grads_.data<float>(), n, max_norm);
  return Status::Ok();
}

Status ParamSet::zero_grad() {
  if (grads_.device() == Device::CPU) {
    std::memset(grads_.raw(), 0, grads_.nbytes());
    return Status::Ok();
  }
  QS_RETURN_IF_ERROR(engine_->check_alive());
  return cuda::memset_zero(grads_.raw(), grads_.nbytes(), engine_->stream());
}

}  // namespace qs
