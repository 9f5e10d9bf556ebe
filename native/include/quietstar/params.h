// params.h: parameters, gradients and optimizer state, each in ONE flat buffer (llm.c layout).
//
// A ParamLayout lists named tensors with their shapes; each gets an offset into a flat buffer
// (aligned to 16 elements = 64 bytes for f32, so every view starts on a cache line and an
// AVX-512 boundary). params, grads, m and v share that layout, which makes the optimizer step,
// gradient clipping, zeroing and checkpointing each one pass over one array. Padding between
// views stays zero in every buffer, so it never changes a norm or an update.
// Weight decay is per view (norm gains and biases usually have none); the layout puts decayed
// views first so AdamW runs over at most two contiguous ranges.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quietstar/engine.h"

namespace qs {

struct ParamSpec {
  std::string name;
  Shape shape;
  bool decay = true;
};

struct ParamEntry {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // elements from the start of the flat buffer
  int64_t numel = 0;
  bool decay = true;
};

class ParamLayout {
 public:
  static Status create(const std::vector<ParamSpec>& specs, ParamLayout* out);
  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t total() const { return total_; }            // flat buffer length (elements, padded)
  int64_t decay_end() const { return decay_end_; }    // decayed views live in [0, decay_end)
  const ParamEntry* find(const std::string& name) const;

 private:
  std::vector<ParamEntry> entries_;
  int64_t total_ = 0;
  int64_t decay_end_ = 0;
};

struct AdamWConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  // The reference's precision (spec §3): parameters and both AdamW moments stored in bf16, i.e.
  // rounded to bf16 (nearest even) after every step, so that an update below half a bf16 ulp is
  // lost as it is there. Off: f32 master weights and moments.
  bool bf16_state = false;
  // INVALID_ARGUMENT naming the field (JS names: lr, beta1, beta2, eps, weightDecay).
  Status validate() const;
};

class ParamSet {
 public:
  // Allocates params and grads (and m, v when `with_optimizer`) as zero-filled flat buffers.
  static Status create(Engine& engine, DType dtype, const ParamLayout& layout, bool with_optimizer,
                       std::unique_ptr<ParamSet>* out);

  const ParamLayout& layout() const { return layout_; }
  const Tensor& params() const { return params_; }  // (P)
  const Tensor& grads() const { return grads_; }    // (P)
  const Tensor& m() const { return m_; }            // (P) AdamW first moment, or undefined
  const Tensor& v() const { return v_; }            // (P) AdamW second moment, or undefined
  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }

  // A named view of `flat` (one of params/grads/m/v) with its shape.
  Status view(const Tensor& flat, const std::string& name, Tensor* out) const;

  // One AdamW step (t = step() + 1); decay applies to the decayed range only. On a CUDA engine
  // (f32) the device kernels run on the engine's stream (call on its compute thread).
  Status adamw_step(const AdamWConfig& config);
  // Global L2 norm of the gradients; with max_norm > 0 scales them to at most max_norm.
  Status clip_grad_norm(double max_norm, double* norm_before);
  Status zero_grad();

 private:
  Status require_device_kernels(const char* what) const;
  Engine* engine_ = nullptr;  // the engine the buffers live on
  ParamLayout layout_;
  Tensor params_, grads_, m_, v_;
  int64_t step_ = 0;
};

}  // namespace qs
