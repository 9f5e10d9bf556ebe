// quietstar_infer.cpp: Quiet-STaR at inference (spec §4.1, §5), no gradients.
//
//   talk_logits   after forward_backward: the full-vocabulary logits of talk step 0 (mixed) and
//                 of the base head at K chosen (row, position) only, from the hidden states the
//                 pass kept (never the (R·T, V) logits of every position).
//   think_decode  KV-cached decoding with a thought per new token (spec §5). The text lives in
//                 a private cache (B, max_len + N - 1 slots). Per call:
//                   1. the n new text slots per row go through the cached layers (the loop
//                      Model::decode runs, kv_decode_layers); h_base = final norm of the last;
//                   2. a branch of N - 1 slots per row on top of the text, one slot per step,
//                      at positions t + 1 .. t + N - 1 (t = the row's last position):
//                        s = 1        embedding_scale·start_embedding[0]
//                        s = 2..N-2   wte[t_{s-1}], t_s sampled from the final hidden state of
//                                     step s (markers suppressed, noise (seed, row, s, t):
//                                     sample_thoughts' key for row r, position t)
//                        s = N-1      embedding_scale·end_embedding[0]   -> h_end
//                      (each branch slot attends the row's text and the branch before it: the
//                      thought attention of training, position-masked);
//                   3. w = mixing head([h_base ; h_end]), h = (1 - w)·h_base + w·h_end (or the
//                      paper's / sigmoid variants), logits = LM head(h), markers -inf;
//                   4. the branch is dropped: the cache is rewound to the text (kv_rewind).
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/quietstar_impl.h"
#include "cpu/embedding.h"
#include "cpu/quietstar_heads.h"
#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"

namespace qs {

namespace {

Status infer_require_cpu(Engine& e, const char* what) {
  QS_RETURN_IF_ERROR(e.check_alive());
  if (e.device() != Device::CPU)
    return QS_ERROR(UNIMPLEMENTED, "%s: Quiet-STaR has no CUDA path yet; create the engine with device 'cpu'", what);
  return Status::Ok();
}

// A CPU int32 tensor of the given shape (rank 1 or 2), or an error naming it.
Status check_i32(const char* what, const char* name, const Tensor& t, const Shape& shape) {
  QS_CHECK_ARG(t.defined() && t.dtype() == DType::I32 && t.device() == Device::CPU && t.shape() == shape,
               "%s: '%s' must be an int32 tensor of shape %s on the CPU (got %s)", what, name, shape_string(shape).c_str(),
               t.defined() ? t.describe().c_str() : "nothing");
  return Status::Ok();
}

}  // namespace

Status noise_rows(const char* what, const Tensor& row_ids, int B, int P, std::vector<int32_t>* rows) {
  rows->resize((size_t)B * P);
  for (int r = 0; r < B * P; r++) (*rows)[r] = r;
  if (!row_ids.defined()) return Status::Ok();
  QS_RETURN_IF_ERROR(check_i32(what, "rowIds", row_ids, {B}));
  for (int b = 0; b < B; b++) {
    const int64_t id = row_ids.data<int32_t>()[b];
    QS_CHECK_ARG(id >= 0 && (id + 1) * P - 1 <= INT32_MAX, "%s: rowIds[%d] = %lld must be in [0, 2^31 / nPasses)", what, b,
                 (long long)id);
    for (int q = 0; q < P; q++) (*rows)[(size_t)b * P + q] = (int32_t)(id * P + q);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// talk logits

template <typename T>
Status QuietStar::Impl::talk_logits(const ModelConfig& c, ParamSet& p, const Tensor& at_t, Tensor* mixed, Tensor* base) {
  const char* what = "QuietStar.talkLogits";
  QS_CHECK_ARG(has_forward, "%s: no forwardBackward yet", what);
  QS_CHECK_ARG(at_t.defined() && at_t.rank() == 2, "%s: 'at' must have shape [K, 2] (got %s)", what,
               at_t.defined() ? at_t.describe().c_str() : "nothing");
  const int64_t K = at_t.dim(0);
  QS_RETURN_IF_ERROR(check_i32(what, "at", at_t, {K, 2}));
  const QsDims& d = dims;
  const int32_t* at = at_t.data<int32_t>();
  for (int64_t k = 0; k < K; k++)
    QS_CHECK_ARG(at[2 * k] >= 0 && at[2 * k] < d.R && at[2 * k + 1] >= 0 && at[2 * k + 1] < d.T - 1,
                 "%s: at[%lld] = (%d, %d) is not a (row, position) with row in [0, %d) (B x nPasses) and position in [0, "
                 "%d) (T - 1: the last position predicts nothing)",
                 what, (long long)k, at[2 * k], at[2 * k + 1], d.R, d.T - 1);
  const DType dt = p.params().dtype();
  Tensor m, b;
  QS_RETURN_IF_ERROR(engine->empty(dt, {K, d.V}, &m));
  QS_RETURN_IF_ERROR(engine->empty(dt, {K, d.V}, &b));
  const TrainBuffers2<T>& tb = train<T>();
  std::vector<T> hm((size_t)K * d.D), hb((size_t)K * d.D);  // (K, D) the chosen rows
  for (int64_t k = 0; k < K; k++) {
    const int r = at[2 * k], i = at[2 * k + 1];
    std::memcpy(hm.data() + k * d.D, tb.hm + (d.talk_off[0] + (int64_t)r * (d.T - 1) + i) * d.D, sizeof(T) * d.D);
    std::memcpy(hb.data() + k * d.D, tb.hf + ((int64_t)(r / d.P) * d.T + i) * d.D, sizeof(T) * d.D);
  }
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  if (K > 0) {
    cpu::head_logits(c, w, m.data<T>(), hm.data(), (int)K);
    cpu::head_logits(c, w, b.data<T>(), hb.data(), (int)K);
  }
  *mixed = m;
  *base = b;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// thinking decode

template <typename T>
Status QuietStar::Impl::think_decode(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids_t,
                                     const Tensor& pos_t, const Tensor& valid_t, const Tensor& rows_t, uint64_t seed,
                                     Tensor* logits_out, Tensor* base_out, Tensor* thoughts_out) {
  const char* what = "QuietStar.thinkDecode";
  KvCache& kv = think_kv;
  QS_CHECK_ARG(kv.B > 0, "%s: no thinking cache (call thinkResetCache(B, maxLen) first)", what);
  QS_RETURN_IF_ERROR(check_decode_step(c, what, ids_t, pos_t, valid_t, kv.B, kv.len, think_text_max));
  const int B = kv.B, n = (int)ids_t.dim(1), D = c.d_model, V = c.vocab_size;
  const int N = o.n_ahead, M = o.thought_tokens(), L = N == 1 ? 0 : N - 1;  // branch slots
  std::vector<int32_t> rid, tpos(B);  // noise row id and last text position of each row
  QS_RETURN_IF_ERROR(noise_rows(what, rows_t, B, 1, &rid));
  for (int b = 0; b < B; b++) tpos[b] = pos_t.data<int32_t>()[(int64_t)b * n + n - 1];
  // GPT-2's learned position table must hold the branch (RoPE positions have no table).
  for (int b = 0; b < B && c.family == ModelFamily::GPT2; b++)
    QS_CHECK_ARG(tpos[b] + L < c.max_seq_len,
                 "%s: the thought of row %d reaches position %d + nAhead - 1 = %d but config.maxSeqLen is %d (GPT-2 learned "
                 "positions)",
                 what, b, tpos[b], tpos[b] + L, c.max_seq_len);
  QS_CHECK_ARG(seed < ((uint64_t)1 << 53), "%s: seed must be an integer in [0, 2^53) (got %llu)", what,
               (unsigned long long)seed);

  const DType dt = p.params().dtype();
  Tensor logits, base, thoughts;
  QS_RETURN_IF_ERROR(engine->empty(dt, {B, V}, &logits));
  QS_RETURN_IF_ERROR(engine->empty(dt, {B, V}, &base));
  QS_RETURN_IF_ERROR(engine->empty(DType::I32, {B, M}, &thoughts));
  InferBuffers<T>& ib = think<T>();
  {
    Carver measure;
    carve_infer(measure, c, B, n, ib);
    QS_RETURN_IF_ERROR(ensure(think_mem, measure.used));
    Carver cv{static_cast<char*>(think_mem.raw())};
    carve_infer(cv, c, B, n, ib);
  }
  T* flat = p.params().data<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), flat);
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), flat);

  // 1. the text
  const int32_t* pos_p = pos_t.data<int32_t>();
  cpu::embed_forward(c, w, ib.x0, ids_t.data<int32_t>(), pos_p, B * n);
  const T* x = kv_decode_layers<T>(c, w, ib, kv, pos_p, valid_t.defined() ? valid_t.data<uint8_t>() : nullptr, n);
  last_logits(c, w, ib, x, B, n, base.data<T>());  // ib.hf (B, D): h_base
  T* out = logits.data<T>();
  std::memcpy(out, base.data<T>(), sizeof(T) * (size_t)B * V);
  if (L > 0) {
    std::vector<T> hb(ib.hf, ib.hf + (size_t)B * D);
    // 2. the branch, one slot per row and step
    const int text_len = kv.len;
    const int32_t suppress[2] = {o.start_id, o.end_id};
    cpu::ThoughtSampleParams sp;
    sp.temperature = o.thought_temperature;
    sp.policy_temperature = o.reinforce_temperature;
    sp.seed = seed;
    std::vector<int32_t> tok(B), bpos(B);
    int32_t* th = M > 0 ? thoughts.data<int32_t>() : nullptr;
    for (int s = 1; s <= L; s++) {
      for (int b = 0; b < B; b++) bpos[b] = tpos[b] + s;
      if (s == 1 || s == L) {  // the markers, stored / embedding_scale (spec §2.3)
        const T* e = s == 1 ? qw.start : qw.end;
        for (int b = 0; b < B; b++)
          for (int j = 0; j < D; j++) ib.x0[(int64_t)b * D + j] = (T)(o.embedding_scale * e[j]);
      } else {
        cpu::embedding_forward<T>(ib.x0, tok.data(), w.wte, B, D);
      }
      if (c.family == ModelFamily::GPT2) cpu::position_embedding_forward<T>(ib.x0, bpos.data(), w.wpe, B, D);
      x = kv_decode_layers<T>(c, w, ib, kv, bpos.data(), nullptr, 1);
      cpu::final_norm_forward(c, w, ib.hf, ib.mean, ib.rstd, x, B);
      if (s > M) continue;  // s = N - 2 feeds t_M, s = N - 1 the end marker: nothing to sample
      sp.step = (uint32_t)s;
      {
        cpu::ProfScope ps(cpu::kProfHead);
        cpu::thought_sample<T>(tok.data(), nullptr, nullptr, ib.hf, w.head, B, D, V, rid.data(), tpos.data(), suppress, 2, sp);
      }
      for (int b = 0; b < B; b++) {
        if (tok[b] < 0) {
          kv_rewind(kv, text_len);
          return QS_ERROR(INVALID_ARGUMENT, "%s: row %d: no thought token can be sampled at step %d (%s)", what, b, s,
                          tok[b] == cpu::kSampleNonFinite ? "a NaN or +inf logit: the weights are not finite"
                                                          : "every logit is -inf");
        }
        th[(int64_t)b * M + s - 1] = tok[b];
      }
    }
    kv_rewind(kv, text_len);  // 4. the thought is discarded
    // 3. mixing (ib.hf holds h_end) and the LM head on the mixed hidden state
    std::vector<T> z1((size_t)B * D), a1((size_t)B * D), z2((size_t)B * D), a2((size_t)B * D), hm((size_t)B * D);
    std::vector<T> wraw(B), wmix(B);
    const cpu::MixingActs<T> ma{z1.data(), a1.data(), z2.data(), a2.data(), wraw.data(), wmix.data(), hm.data()};
    const cpu::MixingWeights<T> mw{qw.w1, qw.b1, qw.w2, qw.b2, qw.w3};
    cpu::mixing_forward<T>(ma, hb.data(), ib.hf, mw, B, D, o.mixing_weights_base, o.mixing_sigmoid);
    cpu::head_logits(c, w, out, hm.data(), B);
  }
  for (int b = 0; b < B; b++) {
    out[(int64_t)b * V + o.start_id] = -std::numeric_limits<T>::infinity();
    out[(int64_t)b * V + o.end_id] = -std::numeric_limits<T>::infinity();
  }
  *logits_out = logits;
  if (base_out) *base_out = base;
  if (thoughts_out) *thoughts_out = thoughts;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// public entry points

Status QuietStar::talk_logits(const Tensor& at, Tensor* mixed, Tensor* base) {
  QS_RETURN_IF_ERROR(infer_require_cpu(*impl_->engine, "QuietStar.talkLogits"));
  QS_CHECK_ARG(mixed != nullptr && base != nullptr, "QuietStar.talkLogits: no output tensors");
  if (model_->params().params().dtype() == DType::F64)
    return impl_->talk_logits<double>(model_->config(), model_->params(), at, mixed, base);
  return impl_->talk_logits<float>(model_->config(), model_->params(), at, mixed, base);
}

Status QuietStar::think_reset(int B, int max_len) {
  const char* what = "QuietStar.thinkResetCache";
  QS_RETURN_IF_ERROR(infer_require_cpu(*impl_->engine, what));
  QS_CHECK_ARG(max_len >= 1 && max_len <= (1 << 24), "%s: maxLen must be an integer in [1, 2^24] (got %d)", what, max_len);
  const ModelConfig& c = model_->config();
  const int slots = max_len + think_length();
  impl_->think_text_max = 0;
  impl_->think_kv.B = 0;  // unusable until the reset succeeds
  if (model_->params().params().dtype() == DType::F64)
    QS_RETURN_IF_ERROR(kv_reset<double>(*impl_->engine, c, impl_->think_kv, B, slots, what));
  else
    QS_RETURN_IF_ERROR(kv_reset<float>(*impl_->engine, c, impl_->think_kv, B, slots, what));
  impl_->think_text_max = max_len;
  return Status::Ok();
}

Status QuietStar::think_decode(const Tensor& ids, const Tensor& positions, const Tensor& valid, const Tensor& row_ids,
                               uint64_t seed, Tensor* logits, Tensor* base_logits, Tensor* thoughts) {
  QS_RETURN_IF_ERROR(infer_require_cpu(*impl_->engine, "QuietStar.thinkDecode"));
  QS_CHECK_ARG(logits != nullptr, "QuietStar.thinkDecode: no output tensor");
  if (model_->params().params().dtype() == DType::F64)
    return impl_->think_decode<double>(model_->config(), options_, model_->params(), ids, positions, valid, row_ids, seed,
                                       logits, base_logits, thoughts);
  return impl_->think_decode<float>(model_->config(), options_, model_->params(), ids, positions, valid, row_ids, seed,
                                    logits, base_logits, thoughts);
}

int QuietStar::think_cache_length() const { return impl_->think_kv.len; }

}  // namespace qs
