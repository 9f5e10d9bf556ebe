// model_run.cpp: the Model's buffers and passes (see model.h): training forward/backward,
// inference (token losses, logits) and KV-cached decoding, on top of cpu/transformer.h or
// cuda/transformer.h, whichever the engine's device is (model_backend.h: each pass is written
// once). On a CUDA engine (f32 parameters only) the token inputs (host tensors, or device
// tensors, which are downloaded once for the range checks and the host-side work) are uploaded
// into device buffers carved next to the activations; outputs are device tensors; the mean loss
// is summed on the host (in double, from the downloaded per-token losses).
//
// Buffers: each kind (training activations, inference scratch, KV cache) is ONE allocation,
// carved into tensors by a bump allocator (Carver). A call whose shapes need no more bytes than
// the current allocation re-carves it (no allocation, no zeroing); a larger one reallocates once.
// Training keeps every layer's activations (what backward reads); inference keeps one layer's,
// reused by all layers.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

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
void carve_train(Carver& cv, const Exec& ex, const ModelConfig& c, int B, int T_, TrainBuffers<T>& t,
                 int64_t logits_budget) {
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
  // The kept unit gradient is the CPU head's shortcut; the CUDA head recomputes it in chunks.
  const bool keep = !ex.cuda && N * c.vocab_size * (int64_t)sizeof(T) <= logits_budget;
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
  if (ex.cuda) {
    t.dev_ids = cv.take<int32_t>(N);
    t.dev_targets = cv.take<int32_t>(N);
    t.dev_pos = cv.take<int32_t>(N);
    // one scratch serves the head's forward, its backward and every layer's attention backward
    // (they run one after the other on the stream)
    const cpu::AttnPattern pat{B, T_, T_, nullptr, nullptr, nullptr, c.sliding_window};
    const size_t bytes = std::max(be::xent_scratch_bytes(ex, (int)N, c.vocab_size), be::attention_scratch_bytes(ex, c, pat));
    t.scratch = cv.take<char>((int64_t)std::max<size_t>(bytes, 1));
  } else {
    t.dev_ids = t.dev_targets = t.dev_pos = nullptr;
    t.scratch = nullptr;
  }
}

// pos (B·T) = 0..T-1 in every row
void fill_positions(std::vector<int32_t>& pos, int B, int T_) {
  pos.resize((size_t)B * T_);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T_; t++) pos[(size_t)b * T_ + t] = t;
}

// Token inputs may also be tensors on this CUDA engine's device: the checks and the host-side
// work read a host copy (one download). Anything else is passed through for the checks to judge.
Status on_host(Engine& e, const Tensor& t, Tensor* out) {
  if (!t.defined() || t.device() == Device::CPU || e.device() != Device::CUDA) {
    *out = t;
    return Status::Ok();
  }
  QS_RETURN_IF_ERROR(e.empty_on(Device::CPU, t.dtype(), t.shape(), out));
  return e.download(t, out->raw(), t.nbytes());
}

// The array the kernels read: `host` itself on a CPU engine; on CUDA, its copy uploaded into
// the device buffer `dev` (n elements).
template <typename U>
Status stage(const Exec& ex, const U* host, U* dev, int64_t n, const U** out) {
  if (!ex.cuda) {
    *out = host;
    return Status::Ok();
  }
  QS_RETURN_IF_ERROR(be::upload(ex, dev, host, sizeof(U) * (size_t)n));
  *out = dev;
  return Status::Ok();
}

}  // namespace

// The engine is alive and can run a pass over parameters of dtype dt (CUDA: f32 only).
Status check_engine(Engine& e, DType dt, const char* what) {
  QS_RETURN_IF_ERROR(e.check_alive());
  QS_CHECK_ARG(e.device() != Device::CUDA || dt == DType::F32,
               "%s: the model's CUDA path takes f32 parameters (got %s): convert them to f32, or use a CPU engine", what,
               dtype_name(dt));
  return Status::Ok();
}

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
void carve_infer_inputs(Carver& cv, const Exec& ex, const ModelConfig& c, int B, int T_, InferBuffers<T>& b) {
  if (!ex.cuda) {
    b.dev_ids = b.dev_targets = b.dev_pos = nullptr;
    b.scratch = nullptr;
    return;
  }
  const int64_t N = (int64_t)B * T_;
  b.dev_ids = cv.take<int32_t>(N);
  b.dev_targets = cv.take<int32_t>(N);
  b.dev_pos = cv.take<int32_t>(N);
  b.scratch = cv.take<char>((int64_t)std::max<size_t>(be::xent_scratch_bytes(ex, (int)N, c.vocab_size), 1));
}

template <typename T>
Status last_logits(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib,
                   const T* x, int B, int T_, T* out) {
  const size_t row = sizeof(T) * (size_t)c.d_model;
  // ib.last (B, D) = x[b, T - 1, :]
  QS_RETURN_IF_ERROR(be::copy_rows(ex, ib.last, row, x + (int64_t)(T_ - 1) * c.d_model, row * T_, row, B));
  QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, ib.hf, ib.mean, ib.rstd, ib.last, B));
  return be::head_logits(ex, c, w, out, ib.hf, B);
}

template void carve_infer<float>(Carver&, const ModelConfig&, int, int, InferBuffers<float>&);
template void carve_infer<double>(Carver&, const ModelConfig&, int, int, InferBuffers<double>&);
template void carve_infer_inputs<float>(Carver&, const Exec&, const ModelConfig&, int, int, InferBuffers<float>&);
template void carve_infer_inputs<double>(Carver&, const Exec&, const ModelConfig&, int, int, InferBuffers<double>&);
template Status last_logits<float>(const Exec&, const ModelConfig&, const cpu::ModelWeights<float>&, InferBuffers<float>&,
                                   const float*, int, int, float*);
template Status last_logits<double>(const Exec&, const ModelConfig&, const cpu::ModelWeights<double>&,
                                    InferBuffers<double>&, const double*, int, int, double*);

Status Model::Impl::ensure(Tensor& mem, size_t bytes) {
  if (bytes == 0) bytes = 64;
  if (mem.defined() && mem.nbytes() >= bytes) return Status::Ok();
  mem = Tensor();  // free the old block before asking for the new one
  return engine->empty(DType::U8, {(int64_t)bytes}, &mem);
}

// ---------------------------------------------------------------------------------------------
// training

template <typename T>
Status Model::Impl::forward(const ModelConfig& c, ParamSet& p, const Tensor& ids_in, const Tensor& targets_in,
                            double* mean_loss, int64_t* count_out) {
  QS_RETURN_IF_ERROR(check_engine(*engine, p.params().dtype(), "Model.forward"));
  Tensor ids_t, targets_t;
  QS_RETURN_IF_ERROR(on_host(*engine, ids_in, &ids_t));
  QS_RETURN_IF_ERROR(on_host(*engine, targets_in, &targets_t));
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.forward", ids_t, &targets_t));
  has_forward = false;
  const Exec ex = exec_of(*engine);
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_, D = c.d_model;
  TrainBuffers<T>& tb = train<T>();
  QS_RETURN_IF_ERROR(carve_into(train_mem, [&](Carver& cv) { carve_train(cv, ex, c, B_, T_, tb, logits_budget); }));
  tB = B_, tT = T_;
  ids.assign(ids_t.data<int32_t>(), ids_t.data<int32_t>() + N);
  targets.assign(targets_t.data<int32_t>(), targets_t.data<int32_t>() + N);
  fill_positions(pos, B_, T_);
  const int32_t *ids_k, *targets_k, *pos_k;  // where the kernels read them
  QS_RETURN_IF_ERROR(stage(ex, ids.data(), tb.dev_ids, N, &ids_k));
  QS_RETURN_IF_ERROR(stage(ex, targets.data(), tb.dev_targets, N, &targets_k));
  QS_RETURN_IF_ERROR(stage(ex, pos.data(), tb.dev_pos, N, &pos_k));

  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  QS_RETURN_IF_ERROR(be::embed_forward(ex, c, w, tb.x0, ids_k, pos_k, N));
  cpu::AttnPattern pat{B_, T_, T_, pos_k, pos_k, nullptr, c.sliding_window};
  const T* x = tb.x0;
  for (int l = 0; l < c.n_layers; l++) {
    QS_RETURN_IF_ERROR(be::block_forward(ex, c, w.layers[l], tb.layers[l], x, pos_k, pat));
    x = tb.layers[l].out;
  }
  QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, tb.hf, tb.lnf_mean, tb.lnf_rstd, x, N));
  if (tb.G) {  // CPU only: keeps the unit gradient for backward
    cpu::ProfScope ps(cpu::kProfHead);
    cpu::lmhead_xent_forward_keep<T>(tb.losses, tb.lse, tb.G, tb.hf, w.head, targets.data(), N, D, c.vocab_size,
                                     kIgnoreIndex, 0);
  } else {
    QS_RETURN_IF_ERROR(be::lmhead_xent_forward(ex, tb.losses, tb.lse, tb.hf, w.head, targets_k, N, D, c.vocab_size,
                                               kIgnoreIndex, tb.scratch));
  }
  std::vector<T> host_losses;  // CUDA: the per-token losses, downloaded
  const T* losses = tb.losses;
  if (ex.cuda) {
    host_losses.resize(N);
    QS_RETURN_IF_ERROR(be::download(ex, host_losses.data(), tb.losses, sizeof(T) * (size_t)N));
    losses = host_losses.data();
  }
  double sum = 0;
  int64_t n = 0;
  for (int i = 0; i < N; i++)
    if (targets[i] != kIgnoreIndex) sum += (double)losses[i], n++;
  count = n;
  *count_out = n;
  *mean_loss = n > 0 ? sum / (double)n : 0.0;
  has_forward = true;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::backward(const ModelConfig& c, ParamSet& p, double loss_scale) {
  QS_RETURN_IF_ERROR(check_engine(*engine, p.params().dtype(), "Model.backward"));
  QS_CHECK_ARG(has_forward, "Model.backward: no forward pass to differentiate (call forward first)");
  QS_CHECK_ARG(std::isfinite(loss_scale), "Model.backward: lossScale must be a finite number (got %g)", loss_scale);
  if (count == 0) return Status::Ok();  // every target ignored: the loss is constant
  const Exec ex = exec_of(*engine);
  const int N = tB * tT, D = c.d_model;
  TrainBuffers<T>& tb = train<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  const cpu::ModelWeights<T> g = cpu::bind_weights<T>(c, p.layout(), p.grads().data<T>());
  cpu::Scratch<T>& s = tb.s;
  // forward staged them (the device copies are still in train_mem)
  const int32_t* ids_k = ex.cuda ? tb.dev_ids : ids.data();
  const int32_t* targets_k = ex.cuda ? tb.dev_targets : targets.data();
  const int32_t* pos_k = ex.cuda ? tb.dev_pos : pos.data();

  // d(mean loss)/d(loss_n) = loss_scale / count for every counted token
  const T dl = (T)(loss_scale / (double)count);
  {
    std::vector<T> dls(N);
    for (int i = 0; i < N; i++) dls[i] = targets[i] != kIgnoreIndex ? dl : T(0);
    QS_RETURN_IF_ERROR(be::upload(ex, tb.dlosses, dls.data(), sizeof(T) * (size_t)N));
  }
  // dhf: the head accumulates, and skips ignored rows
  QS_RETURN_IF_ERROR(be::zero(ex, s.dln, sizeof(T) * (size_t)N * D));
  if (tb.G) {  // CPU only
    cpu::ProfScope ps(cpu::kProfHead);
    cpu::lmhead_xent_backward_kept<T>(s.dln, g.head, dl, tb.G, tb.hf, w.head, targets.data(), N, D, c.vocab_size,
                                      kIgnoreIndex);
  } else {
    QS_RETURN_IF_ERROR(be::lmhead_xent_backward(ex, s.dln, g.head, tb.dlosses, tb.hf, w.head, targets_k, tb.lse, N, D,
                                                c.vocab_size, kIgnoreIndex, tb.scratch));
  }
  QS_RETURN_IF_ERROR(be::zero(ex, s.dres, sizeof(T) * (size_t)N * D));
  const T* x_last = tb.layers[c.n_layers - 1].out;
  QS_RETURN_IF_ERROR(be::final_norm_backward(ex, c, w, g, s.dres, s.dln, x_last, tb.lnf_mean, tb.lnf_rstd, N));
  cpu::AttnPattern pat{tB, tT, tT, pos_k, pos_k, nullptr, c.sliding_window};
  for (int l = c.n_layers - 1; l >= 0; l--) {
    const T* x = l == 0 ? tb.x0 : tb.layers[l - 1].out;
    QS_RETURN_IF_ERROR(be::block_backward(ex, c, w.layers[l], g.layers[l], tb.layers[l], x, pos_k, s, pat, tb.scratch));
  }
  return be::embed_backward(ex, c, g, s.dres, ids_k, pos_k, N);
}

// ---------------------------------------------------------------------------------------------
// inference

template <typename T>
Status Model::Impl::infer_layers(const ModelConfig& c, ParamSet& p, const int32_t* ids_p, int B_, int T_, const T** x_out) {
  const Exec ex = exec_of(*engine);
  InferBuffers<T>& ib = infer<T>();
  QS_RETURN_IF_ERROR(carve_into(infer_mem, [&](Carver& cv) {
    carve_infer(cv, c, B_, T_, ib);
    carve_infer_inputs(cv, ex, c, B_, T_, ib);
  }));
  std::vector<int32_t> ipos;
  fill_positions(ipos, B_, T_);
  const int N = B_ * T_;
  const int32_t *ids_k, *pos_k;
  QS_RETURN_IF_ERROR(stage(ex, ids_p, ib.dev_ids, N, &ids_k));
  QS_RETURN_IF_ERROR(stage(ex, (const int32_t*)ipos.data(), ib.dev_pos, N, &pos_k));
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  QS_RETURN_IF_ERROR(be::embed_forward(ex, c, w, ib.x0, ids_k, pos_k, N));
  cpu::AttnPattern pat{B_, T_, T_, pos_k, pos_k, nullptr, c.sliding_window};
  T* x = ib.x0;
  for (int l = 0; l < c.n_layers; l++) {
    ib.a.out = x == ib.x0 ? ib.x1 : ib.x0;
    QS_RETURN_IF_ERROR(be::block_forward(ex, c, w.layers[l], ib.a, x, pos_k, pat));
    x = ib.a.out;
  }
  *x_out = x;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::token_losses(const ModelConfig& c, ParamSet& p, const Tensor& ids_in, const Tensor& targets_in,
                                 Tensor* losses) {
  QS_RETURN_IF_ERROR(check_engine(*engine, p.params().dtype(), "Model.tokenLosses"));
  Tensor ids_t, targets_t;
  QS_RETURN_IF_ERROR(on_host(*engine, ids_in, &ids_t));
  QS_RETURN_IF_ERROR(on_host(*engine, targets_in, &targets_t));
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.tokenLosses", ids_t, &targets_t));
  const Exec ex = exec_of(*engine);
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_;
  Tensor out;
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), {B_, T_}, &out));
  const T* x;
  QS_RETURN_IF_ERROR(infer_layers<T>(c, p, ids_t.data<int32_t>(), B_, T_, &x));
  InferBuffers<T>& ib = infer<T>();
  const int32_t* targets_k;
  QS_RETURN_IF_ERROR(stage(ex, (const int32_t*)targets_t.data<int32_t>(), ib.dev_targets, N, &targets_k));
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, ib.hf, ib.mean, ib.rstd, x, N));
  QS_RETURN_IF_ERROR(be::lmhead_xent_forward(ex, out.data<T>(), ib.lse, ib.hf, w.head, targets_k, N, c.d_model,
                                             c.vocab_size, kIgnoreIndex, ib.scratch));
  *losses = out;
  return Status::Ok();
}

template <typename T>
Status Model::Impl::logits(const ModelConfig& c, ParamSet& p, const Tensor& ids_in, bool last_only, Tensor* out_t) {
  QS_RETURN_IF_ERROR(check_engine(*engine, p.params().dtype(), "Model.logits"));
  Tensor ids_t;
  QS_RETURN_IF_ERROR(on_host(*engine, ids_in, &ids_t));
  QS_RETURN_IF_ERROR(check_batch(c, *engine, "Model.logits", ids_t, nullptr));
  const Exec ex = exec_of(*engine);
  const int B_ = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1), N = B_ * T_;
  Tensor out;
  Shape shape = last_only ? Shape{B_, c.vocab_size} : Shape{B_, T_, c.vocab_size};
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), shape, &out));
  const T* x;
  QS_RETURN_IF_ERROR(infer_layers<T>(c, p, ids_t.data<int32_t>(), B_, T_, &x));
  InferBuffers<T>& ib = infer<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  if (last_only) {
    QS_RETURN_IF_ERROR(last_logits<T>(ex, c, w, ib, x, B_, T_, out.data<T>()));
  } else {
    QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, ib.hf, ib.mean, ib.rstd, x, N));
    QS_RETURN_IF_ERROR(be::head_logits(ex, c, w, out.data<T>(), ib.hf, N));
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
  const bool mirror = engine.device() == Device::CUDA;  // pos / valid mirrored on the device
  auto carve = [&](Carver& cv) {
    kv.k.assign(c.n_layers, nullptr);
    kv.v.assign(c.n_layers, nullptr);
    for (int l = 0; l < c.n_layers; l++) {
      kv.k[l] = reinterpret_cast<char*>(cv.take<T>(per));
      kv.v[l] = reinterpret_cast<char*>(cv.take<T>(per));
    }
    kv.dev_pos = mirror ? cv.take<int32_t>((int64_t)B_ * max_len) : nullptr;
    kv.dev_valid = mirror ? cv.take<uint8_t>((int64_t)B_ * max_len) : nullptr;
  };
  Carver measure;
  carve(measure);
  if (!kv.mem.defined() || kv.mem.nbytes() < measure.used) {
    kv.mem = Tensor();  // free the old block before asking for the new one
    QS_RETURN_IF_ERROR(engine.empty(DType::U8, {(int64_t)std::max<size_t>(measure.used, 64)}, &kv.mem));
  }
  Carver cv{static_cast<char*>(kv.mem.raw())};
  carve(cv);
  kv.B = B_, kv.max = max_len, kv.len = 0;
  kv.pos.assign((size_t)B_ * max_len, 0);
  kv.valid.assign((size_t)B_ * max_len, 0);  // stale K/V of an earlier sequence are never attended
  // (the device mirrors are uploaded by each decode step before the attention reads them)
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
Status kv_decode_layers(const Exec& ex, const ModelConfig& c, const cpu::ModelWeights<T>& w, InferBuffers<T>& ib,
                        KvCache& kv, const int32_t* pos_host, const int32_t* pos_exec, const uint8_t* valid_p, int n,
                        const T** x_out) {
  const int B_ = kv.B, N = B_ * n, KV = c.n_kv_heads * c.head_dim;
  for (int b = 0; b < B_; b++)
    for (int i = 0; i < n; i++) {
      size_t slot = (size_t)b * kv.max + kv.len + i;
      kv.pos[slot] = pos_host[b * n + i];
      kv.valid[slot] = valid_p ? (valid_p[b * n + i] != 0) : 1;
    }
  // Keys: every slot of the cache (B, max, Hkv, hd); slots not yet written have valid = 0.
  // On CUDA the whole (B, max) pos / valid go to the device mirrors (kv_rewind edits the host).
  const int64_t slots = (int64_t)B_ * kv.max;
  const int32_t* kpos;
  const uint8_t* kvalid;
  QS_RETURN_IF_ERROR(stage(ex, (const int32_t*)kv.pos.data(), kv.dev_pos, slots, &kpos));
  QS_RETURN_IF_ERROR(stage(ex, (const uint8_t*)kv.valid.data(), kv.dev_valid, slots, &kvalid));
  cpu::AttnPattern pat{B_, n, kv.max, pos_exec, kpos, kvalid, c.sliding_window};
  const size_t new_bytes = sizeof(T) * (size_t)n * KV, row_bytes = sizeof(T) * (size_t)kv.max * KV;
  T* x = ib.x0;
  for (int l = 0; l < c.n_layers; l++) {
    QS_RETURN_IF_ERROR(be::block_qkv_forward(ex, c, w.layers[l], ib.a, x, pos_exec, N));
    T* K = reinterpret_cast<T*>(kv.k[l]);
    T* V = reinterpret_cast<T*>(kv.v[l]);
    // append the new keys and values: row b's n slots (n·KV) go to K[b, len:len+n]
    const int64_t dst = (int64_t)kv.len * KV;
    QS_RETURN_IF_ERROR(be::copy_rows(ex, K + dst, row_bytes, ib.a.k, new_bytes, new_bytes, B_));
    QS_RETURN_IF_ERROR(be::copy_rows(ex, V + dst, row_bytes, ib.a.v, new_bytes, new_bytes, B_));
    QS_RETURN_IF_ERROR(be::attention_forward_call(ex, c, ib.a, K, V, pat));
    ib.a.out = x == ib.x0 ? ib.x1 : ib.x0;
    QS_RETURN_IF_ERROR(be::block_out_forward(ex, c, w.layers[l], ib.a, x, N));
    x = ib.a.out;
  }
  kv.len += n;
  *x_out = x;
  return Status::Ok();
}

template Status kv_decode_layers<float>(const Exec&, const ModelConfig&, const cpu::ModelWeights<float>&,
                                        InferBuffers<float>&, KvCache&, const int32_t*, const int32_t*, const uint8_t*,
                                        int, const float**);
template Status kv_decode_layers<double>(const Exec&, const ModelConfig&, const cpu::ModelWeights<double>&,
                                         InferBuffers<double>&, KvCache&, const int32_t*, const int32_t*,
                                         const uint8_t*, int, const double**);

template <typename T>
Status Model::Impl::reset_cache(const ModelConfig& c, int B_, int max_len) {
  const DType dt = std::is_same_v<T, double> ? DType::F64 : DType::F32;  // the params' (the dispatch picked T)
  QS_RETURN_IF_ERROR(check_engine(*engine, dt, "Model.resetCache"));
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
Status Model::Impl::decode(const ModelConfig& c, ParamSet& p, const Tensor& ids_in, const Tensor& pos_in,
                           const Tensor& valid_in, Tensor* out_t) {
  const char* what = "Model.decode";
  QS_RETURN_IF_ERROR(check_engine(*engine, p.params().dtype(), what));
  Tensor ids_t, pos_t, valid_t;
  QS_RETURN_IF_ERROR(on_host(*engine, ids_in, &ids_t));
  QS_RETURN_IF_ERROR(on_host(*engine, pos_in, &pos_t));
  QS_RETURN_IF_ERROR(on_host(*engine, valid_in, &valid_t));
  QS_CHECK_ARG(cache.B > 0, "%s: no KV cache (call resetCache(B, maxLen) first)", what);
  QS_RETURN_IF_ERROR(check_decode_step(c, what, ids_t, pos_t, valid_t, cache.B, cache.len, cache.max));
  const Exec ex = exec_of(*engine);
  const int B_ = cache.B, n = (int)ids_t.dim(1);
  const int N = B_ * n;
  Tensor out;
  QS_RETURN_IF_ERROR(engine->empty(p.params().dtype(), {B_, c.vocab_size}, &out));

  InferBuffers<T>& ib = infer<T>();
  QS_RETURN_IF_ERROR(carve_into(infer_mem, [&](Carver& cv) {
    carve_infer(cv, c, B_, n, ib);
    carve_infer_inputs(cv, ex, c, B_, n, ib);
  }));
  const int32_t* pos_p = pos_t.data<int32_t>();
  const int32_t *ids_k, *pos_k;
  QS_RETURN_IF_ERROR(stage(ex, (const int32_t*)ids_t.data<int32_t>(), ib.dev_ids, N, &ids_k));
  QS_RETURN_IF_ERROR(stage(ex, pos_p, ib.dev_pos, N, &pos_k));
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  QS_RETURN_IF_ERROR(be::embed_forward(ex, c, w, ib.x0, ids_k, pos_k, N));
  const T* x;
  QS_RETURN_IF_ERROR(kv_decode_layers<T>(ex, c, w, ib, cache, pos_p, pos_k,
                                         valid_t.defined() ? valid_t.data<uint8_t>() : nullptr, n, &x));
  QS_RETURN_IF_ERROR(last_logits<T>(ex, c, w, ib, x, B_, n, out.data<T>()));
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
