// params.cpp: flat parameter buffers with named views (see params.h).
#include "quietstar/params.h"

#include <cmath>
#include <cstring>
#include <set>

#include "cpu/adamw.h"

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

Status ParamSet::adamw_step(const AdamWConfig& c) {
  QS_CHECK_ARG(m_.defined(), "adamw step on parameters created without optimizer state");
  QS_CHECK_ARG(params_.device() == Device::CPU, "adamw on CUDA parameters is not implemented yet");
  QS_RETURN_IF_ERROR(c.validate());
  step_++;
  if (params_.dtype() == DType::F64) adamw_ranges<double>(*this, c, step_);
  else adamw_ranges<float>(*this, c, step_);
  return Status::Ok();
}

Status ParamSet::clip_grad_norm(double max_norm, double* norm_before) {
  QS_CHECK_ARG(grads_.device() == Device::CPU, "clipping CUDA gradients is not implemented yet");
  int64_t n = layout_.total();
  *norm_before = grads_.dtype() == DType::F64 ? cpu::clip_grad_norm<double>(grads_.data<double>(), n, max_norm)
                                              : cpu::clip_grad_norm<float>(grads_.data<float>(), n, max_norm);
  return Status::Ok();
}

void ParamSet::zero_grad() {
  if (grads_.device() == Device::CPU) std::memset(grads_.raw(), 0, grads_.nbytes());
}

}  // namespace qs
