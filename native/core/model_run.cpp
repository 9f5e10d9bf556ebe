// model_run.cpp: the Model's buffers and passes (see model.h): training forward/backward,
// inference (token losses, logits) and KV-cached decoding, on top of cpu/transformer.h.
//
// Buffers: each kind (training activations, inference scratch, KV cache) is ONE allocation,
// carved into tensors by a bump allocator (Carver). A call whose shapes need no more bytes than
// the current allocation re-carves it (no allocation, no zeroing); a larger one reallocates once.
// Training keeps every layer's activations (what backward reads); inference keeps one layer's,
// reused by all layers.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/model_impl.h"
#include "cpu/lmhead_xent.h"

namespace qs {

namespace {

template <typename T>
void carve_layer(Carver& cv, const ModelConfig& c, int B, int T_, cpu::LayerActs<T>& a, bool with_out) {
  const int64_t N = (int64_t)B * T_, D = c.d_model, F = c.d_ff;
  const int64_t Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
  const bool llama = c.family != ModelFamily::GPT2;
  a.ln1 = cv.take<T>(N * D);
  a.ln1_mean = llama ? nullptr : cv.take<T>(N);
  a.ln1_rstd = cv.take<T>(N);
  a.q = cv.take<T>(N * Q);
  a.k = cv.take<T>(N * KV);
  a.v = cv.take<T>(N * KV);
  a.att = cv.take<T>(N * Q);
  a.lse = cv.take<float>(N * c.n_heads);
  a.res2 = cv.take<T>(N * D);
  a.ln2 = cv.take<T>(N * D);
  a.ln2_mean = llama ? nullptr : cv.take<T>(N);
  a.ln2_rstd = cv.take<T>(N);
  a.fc = cv.take<T>(N * F);
  a.up = llama ? cv.take<T>(N * F) : nullptr;
  a.act = cv.take<T>(N * F);
  a.out = with_out ? cv.take<T>(N * D) : nullptr;
}

template <typename T>
void carve_train(Carver& cv, const ModelConfig& c, int B, int T_, TrainBuffers<T>& t, int64_t logits_budget) {
  const int64_t N = (int64_t)B * T_, D = c.d_model, F = c.d_ff;
  const int64_t Q = (int64_t)c.n_heads * c.head_dim, KV = (int64_t)c.n_kv_heads * c.head_dim;
  const bool llama = c.family != ModelFamily::GPT2;
  t.x0 = cv.take<T>(N * D);
  t.layers.resize(c.n_layers);
  for (auto& a : t.layers) carve_layer(cv, c, B, T_, a, true);
  t.hf = cv.take<T>(N * D);
  t.lnf_mean = llama ? nullptr : cv.take<T>(N);
  t.lnf_rstd = cv.take<T>(N);
  t.losses = cv.take<T>(N);
  t.lse = cv.take<float>(N);
  const bool keep = N * c.vocab_size * (int64_t)sizeof(T) <= logits_budget;
  t.G = keep ? cv.take<T>(N * c.vocab_size) : nullptr;
  t.dlosses = cv.take<T>(N);
  cpu::Scratch<T>& s = t.s;
  s.dres = cv.take<T>(N * D);
  s.dln = cv.take<T>(N * D);
  s.datt = cv.take<T>(N * Q);
  s.dq = cv.take<T>(N * Q);
  s.dk = cv.take<T>(N * KV);
  s.dv = cv.take<T>(N * KV);
  s.dfc = cv.take<T>(N * F);
  s.dup = llama ? cv.take<T>(N * F) : nullptr;
  s.dact = cv.take<T>(N * F);
}

// pos (B·T) = 0..T-1 in every row
void fill_positions(std::vector<int32_t>& pos, int B, int T_) {
  pos.resize((size_t)B * T_);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T_; t++) pos[(size_t)b * T_ + t] = t;
}

Status require_cpu(Engine& e, const char* what) {
  QS_RETURN_IF_ERROR(e.check_alive());
  if (e.device() != Device::CPU)
    return QS_ERROR(UNIMPLEMENTED, "%s: the model has no CUDA path yet; create the engine with device 'cpu'", what);
  return Status::Ok();
}

}  // namespace

template <typename T>
void carve_infer(Carver& cv, const ModelConfig& c, int B, int T_, InferBuffers<T>& b) {
  const int64_t N = (int64_t)B * T_, D = c.d_model;
  b.x0 = cv.take<T>(N * D);
  b.x1 = cv.take<T>(N * D);
  carve_layer(cv, c, B, T_, b.a, false);
  b.hf = cv.take<T>(N * D);
  b.mean = cv.take<T>(N);
  b.rstd = cv.take<T>(N);
  b.last = cv.take<T>((int64_t)B * D);
  b.lse = cv.take<float>(N);
}

template <typename T>
void last_logits(const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib, const T* x, int B, int T_,
                 T* out) {
  const int D = c.d_model;
  for (int b = 0; b < B; b++)
    std::memcpy(ib.last + (int64_t)b * D, x + ((int64_t)b * T_ + T_ - 1) * D, sizeof(T) * (size_t)D);
  cpu::final_norm_forward(c, w, ib.hf, ib.mean, ib.rstd, ib.last, B);
  cpu::head_logits(c, w, out, ib.hf, B);
}

template void carve_infer<float>(Carver&, const ModelConfig&, int, int, InferBuffers<float>&);
template void carve_infer<double>(Carver&, const ModelConfig&, int, int, InferBuffers<double>&);
template void last_logits<float>(const ModelConfig&, const cpu::ModelWeights<float>&, InferBuffers<float>&, const float*,
                                 int, int, float*);
template void last_logits<double>(const ModelConfig&, const cpu::ModelWeights<double>&, InferBuffers<double>&,
                                  const double*, int, int, double*);

Status Model::Impl::ensure(Tensor& mem, size_t bytes) {
  if (bytes == 0) bytes = 64;
  if (mem.defined() && mem.nbytes() >= bytes) return Status::Ok();
  mem = Tensor();  // free the old block before asking for the new one
  return engine->empty(DType::U8, {(int64_t)bytes}, &mem);
}

// ---------------------------------------------------------------------------------------------
// training

template <typename T>
Status Model::Impl::forward(const ModelConfig& c, ParamSet& p, const Tensor& ids_t, const Tensor& targets_t,
                            double* mean_loss, int64_t* count_out) {
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.forward", ids_t, &targets_t));
  has_forward = false;
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_, D = c.d_model;
  TrainBuffers<T>& tb = train<T>();
  QS_RETURN_IF_ERROR(carve_into(train_mem, [&](Carver& cv) { carve_train(cv, c, B_, T_, tb, logits_budget); }));
  tB = B_, tT = T_;
  ids.assign(ids_t.data<int32_t>(), ids_t.data<int32_t>() + N);
  targets.assign(targets_t.data<int32_t>(), targets_t.data<int32_t>() + N);
  fill_positions(pos, B_, T_);

  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  cpu::embed_forward(c, w, tb.x0, ids.data(), pos.data(), N);
  cpu::AttnPattern pat{B_, T_, T_, pos.data(), pos.data(), nullptr, c.sliding_window};
  const T* x = tb.x0;
  for (int l = 0; l < c.n_layers; l++) {
    cpu::block_forward(c, w.layers[l], tb.layers[l], x, pos.data(), pat);
    x = tb.layers[l].out;
  }
  cpu::final_norm_forward(c, w, tb.hf, tb.lnf_mean, tb.lnf_rstd, x, N);
  {
    cpu::ProfScope ps(cpu::kProfHead);
    if (tb.G)
      cpu::lmhead_xent_forward_keep<T>(tb.losses, tb.lse, tb.G, tb.hf, w.head, targets.data(), N, D, c.vocab_size,
                                       kIgnoreIndex, 0);
    else
      cpu::lmhead_xent_forward<T>(tb.losses, tb.lse, tb.hf, w.head, targets.data(), N, D, c.vocab_size, kIgnoreIndex, 0);
  }
  double sum = 0;
  int64_t n = 0;
  for (int i = 0; i < N; i++)
    if (targets[i] != kIgnoreIndex) sum += (double)tb.losses[i], n++;
  count = n;
  *count_out = n;
  *mean_loss = n > 0 ? sum / (double)n : 0.0;
  has_forward = true;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::backward(const ModelConfig& c, ParamSet& p, double loss_scale) {
  QS_RETURN_IF_ERROR(require_cpu(*engine, "Model.backward"));
  QS_CHECK_ARG(has_forward, "Model.backward: no forward pass to differentiate (call forward first)");
  QS_CHECK_ARG(std::isfinite(loss_scale), "Model.backward: lossScale must be a finite number (got %g)", loss_scale);
  if (count == 0) return Status::Ok();  // every target ignored: the loss is constant
  const int N = tB * tT, D = c.d_model;
  TrainBuffers<T>& tb = train<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  const cpu::ModelWeights<T> g = cpu::bind_weights<T>(c, p.layout(), p.grads().data<T>());
  cpu::Scratch<T>& s = tb.s;

  // d(mean loss)/d(loss_n) = loss_scale / count for every counted token
  const T dl = (T)(loss_scale / (double)count);
  for (int i = 0; i < N; i++) tb.dlosses[i] = targets[i] != kIgnoreIndex ? dl : T(0);
  std::memset(s.dln, 0, sizeof(T) * (size_t)N * D);  // dhf: the head accumulates, and skips ignored rows
  {
    cpu::ProfScope ps(cpu::kProfHead);
    if (tb.G)
      cpu::lmhead_xent_backward_kept<T>(s.dln, g.head, dl, tb.G, tb.hf, w.head, targets.data(), N, D, c.vocab_size,
                                        kIgnoreIndex);
    else
      cpu::lmhead_xent_backward<T>(s.dln, g.head, tb.dlosses, tb.hf, w.head, targets.data(), tb.lse, N, D, c.vocab_size,
                                   kIgnoreIndex, 0);
  }
  std::memset(s.dres, 0, sizeof(T) * (size_t)N * D);
  const T* x_last = tb.layers[c.n_layers - 1].out;
  cpu::final_norm_backward(c, w, g, s.dres, s.dln, x_last, tb.lnf_mean, tb.lnf_rstd, N);
  cpu::AttnPattern pat{tB, tT, tT, pos.data(), pos.data(), nullptr, c.sliding_window};
  for (int l = c.n_layers - 1; l >= 0; l--) {
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    cpu::block_backward(c, w.layers[l], g.layers[l], tb.layers[l], x, pos.data(), s, pat);
  }
  cpu::embed_backward(c, g, s.dres, ids.data(), pos.data(), N);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// inference

template <typename T>
Status Model::Impl::infer_layers(const ModelConfig& c, ParamSet& p, const int32_t* ids_p, int B_, int T_, const T** x_out) {
  InferBuffers<T>& ib = infer<T>();
  QS_RETURN_IF_ERROR(carve_into(infer_mem, [&](Carver& cv) { carve_infer(cv, c, B_, T_, ib); }));
  std::vector<int32_t> ipos;
  fill_positions(ipos, B_, T_);
  const int N = B_ * T_;
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  cpu::embed_forward(c, w, ib.x0, ids_p, ipos.data(), N);
  cpu::AttnPattern pat{B_, T_, T_, ipos.data(), ipos.data(), nullptr, c.sliding_window};
  T* x = ib.x0;
  for (int l = 0; l < c.n_layers; l++) {
    ib.a.out = x == ib.x0 ? ib.x1 : ib.x0;
    cpu::block_forward(c, w.layers[l], ib.a, x, ipos.data(), pat);
    x = ib.a.out;
  }
  *x_out = x;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::token_losses(const ModelConfig& c, ParamSet& p, const Tensor& ids_t, const Tensor& targets_t,
                                 Tensor* losses) {
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.tokenLosses", ids_t, &targets_t));
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_;
  Tensor out;
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), {B_, T_}, &out));
  const T* x;
  QS_RETURN_IF_ERROR(infer_layers<T>(c, p, ids_t.data<int32_t>(), B_, T_, &x));
  InferBuffers<T>& ib = infer<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  cpu::final_norm_forward(c, w, ib.hf, ib.mean, ib.rstd, x, N);
  cpu::ProfScope ps(cpu::kProfHead);
  cpu::lmhead_xent_forward<T>(out.data<T>(), ib.lse, ib.hf, w.head, targets_t.data<int32_t>(), N, c.d_model, c.vocab_size,
                              kIgnoreIndex, 0);
  *losses = out;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::logits(const ModelConfig& c, ParamSet& p, const Tensor& ids_t, bool last_only, Tensor* out_t) {
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.logits", ids_t, nullptr));
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_;
  Tensor out;
  Shape shape = last_only ? Shape{B_, c.vocab_size} : Shape{B_, T_, c.vocab_size};
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), shape, &out));
  const T* x;
  QS_RETURN_IF_ERROR(infer_layers<T>(c, p, ids_t.data<int32_t>(), B_, T_, &x));
  InferBuffers<T>& ib = infer<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  if (last_only) {
    last_logits(c, w, ib, x, B_, T_, out.data<T>());
  } else {
    cpu::final_norm_forward(c, w, ib.hf, ib.mean, ib.rstd, x, N);
    cpu::head_logits(c, w, out.data<T>(), ib.hf, N);
  }
  *out_t = out;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// KV cache

template <typename T>
Status kv_reset(Engine& engine, const ModelConfig& c, KvCache& kv, int B_, int max_len, const char* what) {
  QS_CHECK_ARG(B_ >= 1, "%s: B must be >= 1 (got %d)", what, B_);
  QS_CHECK_ARG(max_len >= 1, "%s: maxLen must be >= 1 (got %d)", what, max_len);
  QS_CHECK_ARG((int64_t)B_ * max_len <= ((int64_t)1 << 28), "%s: B x maxLen = %lld slots is too many", what,
               (long long)B_ * max_len);
  const int64_t per = (int64_t)B_ * max_len * c.n_kv_heads * c.head_dim;  // elements per layer, K or V
  Carver measure;
  for (int l = 0; l < 2 * c.n_layers; l++) measure.take<T>(per);
  if (!kv.mem.defined() || kv.mem.nbytes() < measure.used) {
    kv.mem = Tensor();  // free the old block before asking for the new one
    QS_RETURN_IF_ERROR(engine.empty(DType::U8, {(int64_t)std::max<size_t>(measure.used, 64)}, &kv.mem));
  }
  Carver cv{static_cast<char*>(kv.mem.raw())};
  kv.k.assign(c.n_layers, nullptr);
  kv.v.assign(c.n_layers, nullptr);
  for (int l = 0; l < c.n_layers; l++) {
    kv.k[l] = reinterpret_cast<char*>(cv.take<T>(per));
    kv.v[l] = reinterpret_cast<char*>(cv.take<T>(per));
  }
  kv.B = B_, kv.max = max_len, kv.len = 0;
  kv.pos.assign((size_t)B_ * max_len, 0);
  kv.valid.assign((size_t)B_ * max_len, 0);  // stale K/V of an earlier sequence are never attended
  return Status::Ok();
}
template Status kv_reset<float>(Engine&, const ModelConfig&, KvCache&, int, int, const char*);
template Status kv_reset<double>(Engine&, const ModelConfig&, KvCache&, int, int, const char*);

void kv_rewind(KvCache& kv, int len) {
  for (int b = 0; b < kv.B; b++)
    for (int s = len; s < kv.len; s++) kv.valid[(size_t)b * kv.max + s] = 0;
  kv.len = len;
}

template <typename T>
const T* kv_decode_layers(const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib, KvCache& kv,
                          const int32_t* pos_p, const uint8_t* valid_p, int n) {
  const int B_ = kv.B, N = B_ * n, KV = c.n_kv_heads * c.head_dim;
  for (int b = 0; b < B_; b++)
    for (int i = 0; i < n; i++) {
      size_t slot = (size_t)b * kv.max + kv.len + i;
      kv.pos[slot] = pos_p[b * n + i];
      kv.valid[slot] = valid_p ? (valid_p[b * n + i] != 0) : 1;
    }
  // Keys: every slot of the cache (B, max, Hkv, hd); slots not yet written have valid = 0.
  cpu::AttnPattern pat{B_, n, kv.max, pos_p, kv.pos.data(), kv.valid.data(), c.sliding_window};
  T* x = ib.x0;
  for (int l = 0; l < c.n_layers; l++) {
    cpu::block_qkv_forward(c, w.layers[l], ib.a, x, pos_p, N);
    T* K = reinterpret_cast<T*>(kv.k[l]);
    T* V = reinterpret_cast<T*>(kv.v[l]);
    for (int b = 0; b < B_; b++) {  // append the new keys and values
      size_t dst = ((size_t)b * kv.max + kv.len) * KV, src = (size_t)b * n * KV;
      std::memcpy(K + dst, ib.a.k + src, sizeof(T) * (size_t)n * KV);
      std::memcpy(V + dst, ib.a.v + src, sizeof(T) * (size_t)n * KV);
    }
    cpu::attention_forward_call(c, ib.a, K, V, pat);
    ib.a.out = x == ib.x0 ? ib.x1 : ib.x0;
    cpu::block_out_forward(c, w.layers[l], ib.a, x, N);
    x = ib.a.out;
  }
  kv.len += n;
  return x;
}
template const float* kv_decode_layers<float>(const ModelConfig&, const cpu::ModelWeights<float>&, InferBuffers<float>&,
                                               KvCache&, const int32_t*, const uint8_t*, int);
template const double* kv_decode_layers<double>(const ModelConfig&, const cpu::ModelWeights<double>&,
                                                InferBuffers<double>&, KvCache&, const int32_t*, const uint8_t*, int);

template <typename T>
Status Model::Impl::reset_cache(const ModelConfig& c, int B_, int max_len) {
  QS_RETURN_IF_ERROR(require_cpu(*engine, "Model.resetCache"));
  return kv_reset<T>(*engine, c, cache, B_, max_len, "Model.resetCache");
}

Status check_decode_step(const ModelConfig& c, const char* what, const Tensor& ids_t, const Tensor& pos_t,
                         const Tensor& valid_t, int B, int used, int capacity) {
  QS_CHECK_ARG(ids_t.defined() && ids_t.rank() == 2, "%s: 'ids' must have shape [B, n] (got %s)", what,
               ids_t.defined() ? ids_t.describe().c_str() : "nothing");
  const int n = (int)ids_t.dim(1);
  QS_CHECK_ARG(ids_t.dim(0) == B, "%s: 'ids' has %lld rows but the cache was reset for B = %d", what,
               (long long)ids_t.dim(0), B);
  QS_CHECK_ARG(n >= 1, "%s: 'ids' must hold at least one slot per row (got %s)", what, ids_t.describe().c_str());
  QS_CHECK_ARG(used + n <= capacity, "%s: the cache is full: %d slots used + %d new > maxLen %d", what, used, n, capacity);
  QS_RETURN_IF_ERROR(check_tokens(what, "ids", ids_t, B, n, 0, c.vocab_size, false, "config.vocabSize"));
  QS_RETURN_IF_ERROR(check_tokens(what, "positions", pos_t, B, n, 0, c.max_seq_len, false, "config.maxSeqLen"));
  if (valid_t.defined()) {
    QS_CHECK_ARG(valid_t.dtype() == DType::U8 && valid_t.device() == Device::CPU && valid_t.rank() == 2 &&
                     valid_t.dim(0) == B && valid_t.dim(1) == n,
                 "%s: 'valid' must be a u8 tensor of shape [%d, %d] (got %s)", what, B, n, valid_t.describe().c_str());
  }
  return Status::Ok();
}

template <typename T>
Status Model::Impl::decode(const ModelConfig& c, ParamSet& p, const Tensor& ids_t, const Tensor& pos_t, const Tensor& valid_t,
                           Tensor* out_t) {
  const char* what = "Model.decode";
  QS_RETURN_IF_ERROR(require_cpu(*engine, what));
  QS_CHECK_ARG(cache.B > 0, "%s: no KV cache (call resetCache(B, maxLen) first)", what);
  QS_RETURN_IF_ERROR(check_decode_step(c, what, ids_t, pos_t, valid_t, cache.B, cache.len, cache.max));
  const int B_ = cache.B, n = (int)ids_t.dim(1);
  const int N = B_ * n;
  Tensor out;
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), {B_, c.vocab_size}, &out));

  InferBuffers<T>& ib = infer<T>();
  QS_RETURN_IF_ERROR(carve_into(infer_mem, [&](Carver& cv) { carve_infer(cv, c, B_, n, ib); }));
  const int32_t* pos_p = pos_t.data<int32_t>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  cpu::embed_forward(c, w, ib.x0, ids_t.data<int32_t>(), pos_p, N);
  const T* x = kv_decode_layers<T>(c, w, ib, cache, pos_p, valid_t.defined() ? valid_t.data<uint8_t>() : nullptr, n);
  last_logits(c, w, ib, x, B_, n, out.data<T>());
  *out_t = out;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// public methods: dispatch on the params' dtype

#define QS_MODEL_DISPATCH(name, ...)                                                 \
  do {                                                                              \
    if (params_->params().dtype() == DType::F64) return impl_->name<double>(__VA_ARGS__); \
    return impl_->name<float>(__VA_ARGS__);                                         \
  } while (0)

Status Model::forward(const Tensor& ids, const Tensor& targets, double* mean_loss, int64_t* count) {
  QS_MODEL_DISPATCH(forward, config_, *params_, ids, targets, mean_loss, count); 
}

Status Model::backward(double loss_scale) { QS_MODEL_DISPATCH(backward, config_, *params_, loss_scale); }

Status Model::token_losses(const Tensor& ids, const Tensor& targets, Tensor* losses) {
  QS_MODEL_DISPATCH(token_losses, config_, *params_, ids, targets, losses); 
}

Status Model::logits(const Tensor& ids, bool last_only, Tensor* out) {
  QS_MODEL_DISPATCH(logits, config_, *params_, ids, last_only, out); 
}

Status Model::reset_cache(int B, int max_len) { QS_MODEL_DISPATCH(reset_cache, config_, B, max_len); }

Status Model::decode(const Tensor& ids, const Tensor& positions, const Tensor& valid, Tensor* logits) {
  QS_MODEL_DISPATCH(decode, config_, *params_, ids, positions, valid, logits); 
}

Status Model::last_hidden(Tensor* out) const {
  QS_CHECK_ARG(impl_->has_forward, "Model.lastHidden: no forward pass yet");
  const DType dt = params_->params().dtype();
  const char* hf = dt == DType::F64 ? (const char*)impl_->td.hf : (const char*)impl_->tf.hf;
  const Tensor& mem = impl_->train_mem;
  const size_t offset = mem.offset_bytes() + (size_t)(hf - static_cast<const char*>(mem.raw()));
  *out = Tensor(mem.storage(), offset, dt, {impl_->tB, impl_->tT, config_.d_model});
  return Status::Ok();
}

void Model::set_logits_budget(int64_t bytes) { impl_->logits_budget = bytes; }

int Model::cache_length() const { return impl_->cache.len; }

int64_t Model::activation_bytes() const {
  int64_t n = 0;
  for (const Tensor* t : {&impl_->train_mem, &impl_->infer_mem, &impl_->cache.mem})
    if (t->defined()) n += (int64_t)t->nbytes();
  return n;
}

}  // namespace qs
