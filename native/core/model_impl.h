// model_impl.h: the Model's private state (model.cpp: config, creation, checks; model_run.cpp:
// buffers and the passes). Not part of the public API.
//
// The passes run on the engine's device (model_backend.h): every buffer below is carved out of
// an engine tensor, so it is host memory on a CPU engine and device memory on a CUDA engine.
// On CUDA the kernels read token ids, targets and positions from device copies carved next to
// the activations (the dev_* fields, null on the CPU, where the kernels read the host arrays).
#pragma once

#include <cstdint>
#include <vector>

#include "core/model_backend.h"
#include "cpu/transformer.h"
#include "quietstar/model.h"

namespace qs {

constexpr int kIgnoreIndex = -100;

// An int32 (B, T) token tensor on the CPU with every value in [lo, hi) (or -100 when
// allow_ignore). Errors name `what` (the method), the tensor and the [b, t] index.
Status check_tokens(const char* what, const char* name, const Tensor& t, int64_t B, int64_t T, int lo, int hi,
                    bool allow_ignore, const char* range_field);
// ids (B, T) (and targets when given) for a training or inference call, plus the device.
Status check_batch(const ModelConfig& config, Engine& engine, const char* what, const Tensor& ids, const Tensor* targets);
// One KV-cached decode step's inputs: ids and positions (B, n) int32 in range, valid (B, n) u8
// or undefined, n >= 1, and room for n more slots (used + n <= capacity).
Status check_decode_step(const ModelConfig& config, const char* what, const Tensor& ids, const Tensor& positions,
                         const Tensor& valid, int B, int used, int capacity);

// The counter-based initialisation (model.cpp): x[k] ~ N(0, stddev), each value a function of
// (key, k) only; keys are splitmix64(seed ^ splitmix64(view + 1)).
uint64_t splitmix64(uint64_t x);
template <typename T>
void fill_normal(T* x, int64_t n, uint64_t key, double stddev);

// A bump allocator over one byte buffer, 64-byte aligned pieces. With base == nullptr it only
// measures (used = the bytes needed); then the same calls on the real buffer hand out pointers.
struct Carver {
  char* base = nullptr;
  size_t used = 0;
  template <typename U>
  U* take(int64_t n) {
    size_t off = (used + 63) / 64 * 64;
    used = off + (size_t)n * sizeof(U);
    return base ? reinterpret_cast<U*>(base + off) : nullptr;
  }
};

// Training: every layer's activations plus the backward scratch, for N = B·T tokens.
template <typename T>
struct TrainBuffers {
  T* x0 = nullptr;                       // (N, D) embeddings (layer 0's input)
  std::vector<cpu::LayerActs<T>> layers;
  T *hf = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr;  // (N, D) final hidden state, (N), (N)
  T* losses = nullptr;                   // (N)
  float* lse = nullptr;                  // (N) LM head log-sum-exp
  T* G = nullptr;                        // (N, V) LM head unit gradient, or null (over budget)
  T* dlosses = nullptr;                  // (N)
  cpu::Scratch<T> s;
  // CUDA only: the tokens' device copies (N) and the LM head's / attention backward's scratch
  int32_t *dev_ids = nullptr, *dev_targets = nullptr, *dev_pos = nullptr;
  void* scratch = nullptr;
};

// Inference (logits, token losses, decode): one layer's activations reused by every layer, the
// residual stream in two buffers used in turn.
template <typename T>
struct InferBuffers {
  T *x0 = nullptr, *x1 = nullptr;        // (N, D)
  cpu::LayerActs<T> a;
  T *hf = nullptr, *mean = nullptr, *rstd = nullptr;  // (N, D), (N), (N)
  T* last = nullptr;                     // (B, D) the last position's residual
  float* lse = nullptr;                  // (N)
  // CUDA only (carve_infer_inputs): the inputs' device copies (N) and the LM head's scratch
  int32_t *dev_ids = nullptr, *dev_targets = nullptr, *dev_pos = nullptr;
  void* scratch = nullptr;
};

// A KV cache: per layer K and V (B, max, Hkv, hd) in the params' dtype, in one allocation, with
// each slot's position and validity. Attention reads all `max` slots of a row; a slot is
// attended iff valid (slots not yet written, or rewound, are 0), so rewinding is `len = n` plus
// clearing the dropped slots' valid flags (kv_rewind). On a CUDA engine K/V live on the device
// and pos / valid (kept on the host, where kv_rewind edits them) are mirrored into dev_pos /
// dev_valid (carved in `mem`) by every decode step before the attention reads them.
struct KvCache {
  Tensor mem;
  int B = 0, max = 0, len = 0;
  std::vector<int32_t> pos;    // (B, max)
  std::vector<uint8_t> valid;  // (B, max)
  std::vector<char*> k, v;     // per layer
  int32_t* dev_pos = nullptr;    // (B, max) CUDA only
  uint8_t* dev_valid = nullptr;  // (B, max) CUDA only
};

// (Re)allocates `kv` for B rows of max_len slots (grows only), empty. Errors name `what`.
template <typename T>
Status kv_reset(Engine& engine, const ModelConfig& c, KvCache& kv, int B, int max_len, const char* what);
// Drops the slots [len, kv.len) of every row.
void kv_rewind(KvCache& kv, int len);

// The engine is alive and can run a pass over parameters of dtype dt (CUDA: f32 only); errors
// name `what`. Model's passes and Quiet-STaR's share it.
Status check_engine(Engine& e, DType dt, const char* what);

// The inference buffers' carving for B·T rows (model_run.cpp).
template <typename T>
void carve_infer(Carver& cv, const ModelConfig& c, int B, int T_, InferBuffers<T>& b);
// After carve_infer on a CUDA engine: the dev_* inputs and the scratch (nothing on a CPU engine).
template <typename T>
void carve_infer_inputs(Carver& cv, const Exec& ex, const ModelConfig& c, int B, int T_, InferBuffers<T>& b);

// Cached decoding of n new slots per row, the per-layer loop shared by Model::decode and
// QuietStar::think_decode: ib.x0 (B·n, D) holds the input embeddings (positional included);
// pos, valid (B·n) the new slots' positions and validity (valid null = all valid). Appends the
// slots' K/V to `kv` (room checked by the caller) and sets *x_out to the last layer's residual
// stream (B·n, D) (ib.x0 or ib.x1). pos_host (B·n) is on the host (it goes into kv.pos);
// pos_exec is the same array where the kernels read it (pos_host on a CPU engine, a device
// copy on CUDA); valid (B·n) is on the host.
template <typename T>
Status kv_decode_layers(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib,
                        KvCache& kv, const int32_t* pos_host, const int32_t* pos_exec, const uint8_t* valid, int n,
                        const T** x_out);

// Logits (B, V) of each row's last position of x (B, T, D): only those rows go through the
// final norm and the head. Leaves the normed rows in ib.hf (B, D).
template <typename T>
Status last_logits(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib,
                   const T* x, int B, int T_, T* out);

struct Model::Impl {
  Engine* engine = nullptr;

  // ---- training (the last forward) ----
  Tensor train_mem;
  int64_t logits_budget = (int64_t)128 << 20;  // bytes (Model::set_logits_budget)
  bool has_forward = false;
  int tB = 0, tT = 0;  // the last forward's batch shape
  int64_t count = 0;
  std::vector<int32_t> ids, targets, pos;  // (B·T) host copies: the caller may reuse its tensors
  TrainBuffers<float> tf;
  TrainBuffers<double> td;

  // ---- inference scratch ----
  Tensor infer_mem;
  InferBuffers<float> inf_f;
  InferBuffers<double> inf_d;

  // ---- KV cache ----
  KvCache cache;

  template <typename B_> TrainBuffers<B_>& train();
  template <typename B_> InferBuffers<B_>& infer();

  // Makes `mem` at least `bytes` long (reallocating only when it is too small).
  Status ensure(Tensor& mem, size_t bytes);
  // Lays buffers out in `mem`: carve(Carver&) runs once to measure them, `mem` grows to fit
  // (ensure), and carve runs again on `mem` to place them.
  template <typename F>
  Status carve_into(Tensor& mem, F carve) {
    Carver measure;
    carve(measure);
    QS_RETURN_IF_ERROR(ensure(mem, measure.used));
    Carver cv{static_cast<char*>(mem.raw())};
    carve(cv);
    return Status::Ok();
  }

  // The passes, for T = float or double (the params' dtype); model_run.cpp.
  template <typename T>
  Status forward(const ModelConfig& c, ParamSet& p, const Tensor& ids, const Tensor& targets, double* mean_loss,
                 int64_t* count);
  template <typename T>
  Status backward(const ModelConfig& c, ParamSet& p, double loss_scale);
  // Runs the layers without keeping activations; returns the last residual stream (N, D).
  template <typename T>
  Status infer_layers(const ModelConfig& c, ParamSet& p, const int32_t* ids, int B, int T_, const T** x_out);
  template <typename T>
  Status token_losses(const ModelConfig& c, ParamSet& p, const Tensor& ids, const Tensor& targets, Tensor* losses);
  template <typename T>
  Status logits(const ModelConfig& c, ParamSet& p, const Tensor& ids, bool last_only, Tensor* out);
  template <typename T>
  Status reset_cache(const ModelConfig& c, int B, int max_len);
  template <typename T>
  Status decode(const ModelConfig& c, ParamSet& p, const Tensor& ids, const Tensor& positions, const Tensor& valid,
                Tensor* out);
};

template <> inline TrainBuffers<float>& Model::Impl::train<float>() { return tf; }
template <> inline TrainBuffers<double>& Model::Impl::train<double>() { return td; }
template <> inline InferBuffers<float>& Model::Impl::infer<float>() { return inf_f; }
template <> inline InferBuffers<double>& Model::Impl::infer<double>() { return inf_d; }

}  // namespace qs
