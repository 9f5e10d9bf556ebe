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

#include "core/quietstar_backend.h"
#include "core/quietstar_impl.h"
#include "cpu/embedding.h"
#include "cpu/quietstar_heads.h"
#include "cpu/sampling.h"
#include "cpu/thought_sampling.h"

namespace qs {

namespace {


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
  if (K == 0) {
    *mixed = m;
    *base = b;
    return Status::Ok();
  }
  const Exec ex = exec_of(*engine);
  StagedArrays staged(*engine, ex);
  const TrainBuffers2<T>& tb = train<T>();
  std::vector<int64_t> mix_row(K), base_row(K);  // the chosen talk-0 rows and their base rows
  for (int64_t k = 0; k < K; k++) {
    const int r = at[2 * k], i = at[2 * k + 1];
    mix_row[k] = d.talk_off[0] + (int64_t)r * (d.T - 1) + i;
    base_row[k] = (int64_t)(r / d.P) * d.T + i;
  }
  const int64_t *mix_e, *base_e;
  void *hm_mem, *hb_mem;
  QS_RETURN_IF_ERROR(staged.put(mix_row, &mix_e));
  QS_RETURN_IF_ERROR(staged.put(base_row, &base_e));
  QS_RETURN_IF_ERROR(staged.scratch(sizeof(T) * (size_t)K * d.D, &hm_mem));  // (K, D) the chosen rows
  QS_RETURN_IF_ERROR(staged.scratch(sizeof(T) * (size_t)K * d.D, &hb_mem));
  T* hm = static_cast<T*>(hm_mem);
  T* hb = static_cast<T*>(hb_mem);
  QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, hm, tb.hm, mix_e, K, d.D, T(1)));
  QS_RETURN_IF_ERROR(be::gather_rows<T>(ex, hb, tb.hf, base_e, K, d.D, T(1)));
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  QS_RETURN_IF_ERROR(be::head_logits(ex, c, w, m.data<T>(), hm, (int)K));
  QS_RETURN_IF_ERROR(be::head_logits(ex, c, w, b.data<T>(), hb, (int)K));
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
  const Exec ex = exec_of(*engine);
  StagedArrays staged(*engine, ex);
  Tensor logits, base, thoughts;
  QS_RETURN_IF_ERROR(engine->empty(dt, {B, V}, &logits));
  QS_RETURN_IF_ERROR(engine->empty(dt, {B, V}, &base));
  QS_RETURN_IF_ERROR(engine->empty_on(Device::CPU, DType::I32, {B, M}, &thoughts));  // read on the host
  InferBuffers<T>& ib = think<T>();
  {
    Carver measure;
    carve_infer(measure, c, B, n, ib);
    carve_infer_inputs(measure, ex, c, B, n, ib);
    QS_RETURN_IF_ERROR(ensure(think_mem, measure.used));
    Carver cv{static_cast<char*>(think_mem.raw())};
    carve_infer(cv, c, B, n, ib);
    carve_infer_inputs(cv, ex, c, B, n, ib);
  }
  T* flat = p.params().data<T>();
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), flat);
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), flat);
  const size_t row_bytes = sizeof(T) * (size_t)D;

  // 1. the text
  const int32_t* pos_p = pos_t.data<int32_t>();
  const int32_t *ids_e, *pos_e;
  QS_RETURN_IF_ERROR(staged.put(ids_t.data<int32_t>(), (size_t)B * n, &ids_e));
  QS_RETURN_IF_ERROR(staged.put(pos_p, (size_t)B * n, &pos_e));
  QS_RETURN_IF_ERROR(be::embed_forward(ex, c, w, ib.x0, ids_e, pos_e, B * n));
  const T* x;
  QS_RETURN_IF_ERROR(kv_decode_layers<T>(ex, c, w, ib, kv, pos_p, pos_e,
                                         valid_t.defined() ? valid_t.data<uint8_t>() : nullptr, n, &x));
  QS_RETURN_IF_ERROR(last_logits<T>(ex, c, w, ib, x, B, n, base.data<T>()));  // ib.hf (B, D): h_base
  T* out = logits.data<T>();
  QS_RETURN_IF_ERROR(be::copy_rows(ex, out, sizeof(T) * (size_t)B * V, base.data<T>(), sizeof(T) * (size_t)B * V,
                                   sizeof(T) * (size_t)B * V, 1));
  if (L > 0) {
    void* mem;
    QS_RETURN_IF_ERROR(staged.scratch(row_bytes * B, &mem));  // (B, D) h_base, kept while the branch runs
    T* hb = static_cast<T*>(mem);
    QS_RETURN_IF_ERROR(be::copy_rows(ex, hb, row_bytes * B, ib.hf, row_bytes * B, row_bytes * B, 1));
    // 2. the branch, one slot per row and step
    const int text_len = kv.len;
    const int32_t markers[2] = {o.start_id, o.end_id};
    std::vector<int64_t> every_row(B);
    for (int b = 0; b < B; b++) every_row[b] = b;
    const int32_t *suppress, *rid_e, *tpos_e;
    const int64_t* every_row_e;
    QS_RETURN_IF_ERROR(staged.put(markers, 2, &suppress));
    QS_RETURN_IF_ERROR(staged.put(rid, &rid_e));
    QS_RETURN_IF_ERROR(staged.put(tpos, &tpos_e));
    QS_RETURN_IF_ERROR(staged.put(every_row, &every_row_e));
    void *tok_mem, *bpos_mem, *sample_scratch;  // (B) the sampled tokens, the branch positions
    QS_RETURN_IF_ERROR(staged.scratch(sizeof(int32_t) * B, &tok_mem));
    QS_RETURN_IF_ERROR(staged.scratch(sizeof(int32_t) * B, &bpos_mem));
    QS_RETURN_IF_ERROR(staged.scratch(be::thought_sample_scratch_bytes(ex, B, V), &sample_scratch));
    int32_t* tok_e = static_cast<int32_t*>(tok_mem);
    int32_t* bpos_e = static_cast<int32_t*>(bpos_mem);
    cpu::ThoughtSampleParams sp;
    sp.temperature = o.thought_temperature;
    sp.policy_temperature = o.reinforce_temperature;
    sp.seed = seed;
    std::vector<int32_t> bpos(B), tok_copy;
    int32_t* th = M > 0 ? thoughts.data<int32_t>() : nullptr;
    for (int s = 1; s <= L; s++) {
      for (int b = 0; b < B; b++) bpos[b] = tpos[b] + s;
      QS_RETURN_IF_ERROR(be::upload(ex, bpos_e, bpos.data(), sizeof(int32_t) * B));
      if (s == 1 || s == L)  // the markers, stored / embedding_scale (spec §2.3)
        QS_RETURN_IF_ERROR(
            be::fill_rows<T>(ex, ib.x0, s == 1 ? qw.start : qw.end, every_row_e, B, D, (T)o.embedding_scale));
      else
        QS_RETURN_IF_ERROR(be::embedding_forward<T>(ex, ib.x0, tok_e, w.wte, B, D, V));
      if (c.family == ModelFamily::GPT2)
        QS_RETURN_IF_ERROR(be::position_embedding_forward<T>(ex, ib.x0, bpos_e, w.wpe, B, D, c.max_seq_len));
      QS_RETURN_IF_ERROR(kv_decode_layers<T>(ex, c, w, ib, kv, bpos.data(), bpos_e, nullptr, 1, &x));
      QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, ib.hf, ib.mean, ib.rstd, x, B));
      if (s > M) continue;  // s = N - 2 feeds t_M, s = N - 1 the end marker: nothing to sample
      sp.step = (uint32_t)s;
      QS_RETURN_IF_ERROR(
          be::thought_sample<T>(ex, tok_e, ib.hf, w.head, B, D, V, rid_e, tpos_e, suppress, 2, sp, sample_scratch));
      const int32_t* tok;
      QS_RETURN_IF_ERROR(be::host_view(ex, (const int32_t*)tok_e, B, &tok_copy, &tok));
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
    void* acts;  // z1, a1, z2, a2, hm (B, D) and wraw, w (B)
    QS_RETURN_IF_ERROR(staged.scratch(row_bytes * B * 5 + sizeof(T) * 2 * B, &acts));
    T* a0 = static_cast<T*>(acts);
    const int64_t BD = (int64_t)B * D;
    const cpu::MixingActs<T> ma{a0, a0 + BD, a0 + 2 * BD, a0 + 3 * BD, a0 + 5 * BD, a0 + 5 * BD + B, a0 + 4 * BD};
    const cpu::MixingWeights<T> mw{qw.w1, qw.b1, qw.w2, qw.b2, qw.w3};
    QS_RETURN_IF_ERROR(be::mixing_forward<T>(ex, ma, hb, ib.hf, mw, B, D, o.mixing_weights_base, o.mixing_sigmoid));
    QS_RETURN_IF_ERROR(be::head_logits(ex, c, w, out, ma.hm, B));
  }
  {  // the markers are never emitted: their logits are -inf
    std::vector<int64_t> marker_at(2 * (size_t)B);
    for (int b = 0; b < B; b++)
      marker_at[2 * b] = (int64_t)b * V + o.start_id, marker_at[2 * b + 1] = (int64_t)b * V + o.end_id;
    const T neg_inf = -std::numeric_limits<T>::infinity();
    const int64_t* marker_e;
    const T* neg_inf_e;
    QS_RETURN_IF_ERROR(staged.put(marker_at, &marker_e));
    QS_RETURN_IF_ERROR(staged.put(&neg_inf, 1, &neg_inf_e));
    QS_RETURN_IF_ERROR(be::fill_rows<T>(ex, out, neg_inf_e, marker_e, 2 * B, 1, T(1)));
  }
  *logits_out = logits;
  if (base_out) *base_out = base;
  if (thoughts_out) *thoughts_out = thoughts;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// public entry points

Status QuietStar::talk_logits(const Tensor& at, Tensor* mixed, Tensor* base) {
  QS_RETURN_IF_ERROR(check_engine(*impl_->engine, model_->params().params().dtype(), "QuietStar.talkLogits"));
  QS_CHECK_ARG(mixed != nullptr && base != nullptr, "QuietStar.talkLogits: no output tensors");
  if (model_->params().params().dtype() == DType::F64)
    return impl_->talk_logits<double>(model_->config(), model_->params(), at, mixed, base);
  return impl_->talk_logits<float>(model_->config(), model_->params(), at, mixed, base);
}

Status QuietStar::think_reset(int B, int max_len) {
  const char* what = "QuietStar.thinkResetCache";
  QS_RETURN_IF_ERROR(check_engine(*impl_->engine, model_->params().params().dtype(), what));
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
  QS_RETURN_IF_ERROR(check_engine(*impl_->engine, model_->params().params().dtype(), "QuietStar.thinkDecode"));
  QS_CHECK_ARG(logits != nullptr, "QuietStar.thinkDecode: no output tensor");
  if (model_->params().params().dtype() == DType::F64)
    return impl_->think_decode<double>(model_->config(), options_, model_->params(), ids, positions, valid, row_ids, seed,
                                       logits, base_logits, thoughts);
  return impl_->think_decode<float>(model_->config(), options_, model_->params(), ids, positions, valid, row_ids, seed,
                                    logits, base_logits, thoughts);
}

int QuietStar::think_cache_length() const { return impl_->think_kv.len; }

}  // namespace qs
