// quietstar_sample.cpp: phase 1 of the Quiet-STaR step, thought sampling without gradients
// (spec §2.12 step 2, §8 "two-phase training").
//
//   base pass    once per document (B·T tokens, not R·T: the P rows of a document share it),
//                keeping every layer's K/V (B, T, Hkv, d); the last layer's attention and MLP
//                are skipped, nothing reads them here.
//   chain steps  s = 1 .. M (M = nAhead - 3): all R·T chain tokens of step s at once, at RoPE
//                / wpe position i + s: s = 1 feeds embedding_scale·start_embedding[0], s >= 2
//                the token sampled at step s - 1. Each layer appends the step's K/V to the
//                chain cache (R, M, T, Hkv, d) and runs the incremental thought attention (own
//                chain steps 1..s + the shared base K/V, cpu/thought_attention.h). The final
//                hidden state of step s gives t_s by the fused thought sampler
//                (cpu/thought_sampling.h): markers suppressed, Gumbel noise keyed by (seed,
//                row r, step s, position i), the same stream sample_tokens uses, so a
//                sequential sampler on the literal sequence draws the same tokens (spec §9.2).
// The steps after M (t_M, end marker, true tokens) produce no sample and are left to phase 2.
#include <cmath>
#include <vector>

#include "core/quietstar_backend.h"
#include "core/quietstar_impl.h"
#include "cpu/embedding.h"
#include "cpu/thought_attention.h"
#include "cpu/thought_sampling.h"

namespace qs {

namespace {

template <typename T>
void carve_sample(Carver& cv, const ModelConfig& c, const QsDims& d, SampleBuffers<T>& b) {
  const int64_t RT = d.RT, BT = d.BT, D = d.D, KV = d.KV;
  b.x0 = cv.take<T>(RT * D);
  b.x1 = cv.take<T>(RT * D);
  qs_carve_layer(cv, c, RT, b.a, false, false);
  b.kx = cv.take<T>(RT * KV);
  b.vx = cv.take<T>(RT * KV);
  b.kb.assign(d.L, nullptr), b.vb.assign(d.L, nullptr), b.kc.assign(d.L, nullptr), b.vc.assign(d.L, nullptr);
  for (int l = 0; l < d.L; l++) {
    b.kb[l] = cv.take<T>(BT * KV);
    b.vb[l] = cv.take<T>(BT * KV);
    b.kc[l] = cv.take<T>(RT * d.M * KV);
    b.vc[l] = cv.take<T>(RT * d.M * KV);
  }
  b.hf = cv.take<T>(RT * D);
  b.mean = cv.take<T>(RT);
  b.rstd = cv.take<T>(RT);
  b.tok = cv.take<int32_t>(RT);
  b.rows = cv.take<int32_t>(RT);
  b.posi = cv.take<int32_t>(RT);
  b.posc = cv.take<int32_t>(RT);
}

}  // namespace

template <typename T>
Status QuietStar::Impl::sample_thoughts(const ModelConfig& c, const QuietStarOptions& o, ParamSet& p, const Tensor& ids_t,
                                        const Tensor& valid_t, const Tensor& row_ids, uint64_t seed, Tensor* thoughts) {
  const char* what = "QuietStar.sampleThoughts";
  QS_RETURN_IF_ERROR(check_qs_inputs(c, o, *engine, what, ids_t, valid_t, nullptr, nullptr));
  QS_CHECK_ARG(seed < ((uint64_t)1 << 53), "%s: seed must be an integer in [0, 2^53) (got %llu)", what,
               (unsigned long long)seed);
  const int B = (int)ids_t.dim(0), T_ = (int)ids_t.dim(1);
  const QsDims d = qs_dims(c, o, B, T_);
  std::vector<int32_t> noise_row;  // (R) the noise stream of each row
  QS_RETURN_IF_ERROR(noise_rows(what, row_ids, B, d.P, &noise_row));
  Tensor out;  // host memory on every engine: phase 2 and the caller read the thoughts there
  QS_RETURN_IF_ERROR(engine->empty_on(Device::CPU, DType::I32, {d.R, T_, d.M}, &out));
  if (d.M == 0) {  // nAhead <= 3: nothing is sampled
    *thoughts = out;
    return Status::Ok();
  }
  const Exec ex = exec_of(*engine);
  StagedArrays staged(*engine, ex);
  SampleBuffers<T>& b = sample<T>();
  Carver measure;
  carve_sample(measure, c, d, b);
  QS_RETURN_IF_ERROR(ensure(sample_mem, measure.used));
  Carver cv{static_cast<char*>(sample_mem.raw())};
  carve_sample(cv, c, d, b);

  const int64_t RT = d.RT, KV = d.KV, D = d.D;
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), p.params().data<T>());
  const T scale = (T)(1.0 / std::sqrt((double)d.hd));
  const bool gpt2 = c.family == ModelFamily::GPT2;
  // the step's index arrays: noise row and position of every (r, i); the base ids; validity
  std::vector<int32_t> rows_h(RT), posi_h(RT), posc_h(RT);
  for (int r = 0; r < d.R; r++)
    for (int i = 0; i < T_; i++) rows_h[(int64_t)r * T_ + i] = noise_row[r], posi_h[(int64_t)r * T_ + i] = i;
  QS_RETURN_IF_ERROR(be::upload(ex, b.rows, rows_h.data(), sizeof(int32_t) * RT));
  QS_RETURN_IF_ERROR(be::upload(ex, b.posi, posi_h.data(), sizeof(int32_t) * RT));
  const int32_t *ids, *suppress;
  const uint8_t* valid = nullptr;
  QS_RETURN_IF_ERROR(staged.put(ids_t.data<int32_t>(), (size_t)d.BT, &ids));
  if (valid_t.defined()) QS_RETURN_IF_ERROR(staged.put(valid_t.data<uint8_t>(), (size_t)d.BT, &valid));
  const int32_t markers[2] = {o.start_id, o.end_id};
  QS_RETURN_IF_ERROR(staged.put(markers, 2, &suppress));

  // ---- base pass: the K/V of every layer (positions 0..T-1 = posi's first B·T entries)
  {
    QS_RETURN_IF_ERROR(be::embed_forward(ex, c, w, b.x0, ids, b.posi, (int)d.BT));
    cpu::AttnPattern pat{B, T_, T_, b.posi, b.posi, valid, c.sliding_window};
    T* x = b.x0;
    for (int l = 0; l < d.L; l++) {
      b.a.k = b.kb[l], b.a.v = b.vb[l];
      QS_RETURN_IF_ERROR(be::block_qkv_forward(ex, c, w.layers[l], b.a, x, b.posi, (int)d.BT));
      if (l == d.L - 1) break;  // the last layer's output is never read
      QS_RETURN_IF_ERROR(be::attention_forward_call(ex, c, b.a, b.a.k, b.a.v, pat));
      b.a.out = x == b.x0 ? b.x1 : b.x0;
      QS_RETURN_IF_ERROR(be::block_out_forward(ex, c, w.layers[l], b.a, x, (int)d.BT));
      x = b.a.out;
    }
  }

  // ---- chain steps 1..M, one token per (row, position) each
  cpu::ThoughtSampleParams sp;
  sp.temperature = o.thought_temperature;
  sp.policy_temperature = o.reinforce_temperature;
  sp.seed = seed;
  std::vector<int64_t> every_row(RT);  // the start marker goes to every row of step 1
  for (int64_t n = 0; n < RT; n++) every_row[n] = n;
  const int64_t* every_row_e;
  QS_RETURN_IF_ERROR(staged.put(every_row, &every_row_e));
  void* sample_scratch;
  QS_RETURN_IF_ERROR(staged.scratch(be::thought_sample_scratch_bytes(ex, (int)RT, d.V), &sample_scratch));
  std::vector<int32_t> tok_copy;
  int32_t* th = out.data<int32_t>();
  for (int s = 1; s <= d.M; s++) {
    for (int64_t n = 0; n < RT; n++) posc_h[n] = posi_h[n] + s;
    QS_RETURN_IF_ERROR(be::upload(ex, b.posc, posc_h.data(), sizeof(int32_t) * RT));
    if (s == 1)  // the start marker, stored / embedding_scale (spec §2.3)
      QS_RETURN_IF_ERROR(be::fill_rows<T>(ex, b.x0, qw.start, every_row_e, RT, (int)D, (T)o.embedding_scale));
    else
      QS_RETURN_IF_ERROR(be::embedding_forward<T>(ex, b.x0, b.tok, w.wte, (int)RT, (int)D, d.V));
    if (gpt2) QS_RETURN_IF_ERROR(be::position_embedding_forward<T>(ex, b.x0, b.posc, w.wpe, (int)RT, (int)D, c.max_seq_len));
    cpu::ThoughtAttentionShape sh{B, d.P, T_, 1, s, d.M, d.H, d.Hkv, d.hd, c.sliding_window};
    T* x = b.x0;
    for (int l = 0; l < d.L; l++) {
      b.a.k = b.kx, b.a.v = b.vx;
      QS_RETURN_IF_ERROR(be::block_qkv_forward(ex, c, w.layers[l], b.a, x, b.posc, (int)RT));
      // into the cache at (r, s - 1) for every row r: (R, T·KV) rows into (R, M, T·KV)
      const size_t step_bytes = sizeof(T) * (size_t)T_ * KV;
      QS_RETURN_IF_ERROR(be::copy_rows(ex, b.kc[l] + (int64_t)(s - 1) * T_ * KV, step_bytes * d.M, b.kx, step_bytes,
                                       step_bytes, (size_t)d.R));
      QS_RETURN_IF_ERROR(be::copy_rows(ex, b.vc[l] + (int64_t)(s - 1) * T_ * KV, step_bytes * d.M, b.vx, step_bytes,
                                       step_bytes, (size_t)d.R));
      QS_RETURN_IF_ERROR(be::thought_attention_forward<T>(ex, b.a.att, b.a.lse, b.a.q, b.kb[l], b.vb[l], b.kc[l],
                                                          b.vc[l], valid, sh, scale));
      b.a.out = x == b.x0 ? b.x1 : b.x0;
      QS_RETURN_IF_ERROR(be::block_out_forward(ex, c, w.layers[l], b.a, x, (int)RT));
      x = b.a.out;
    }
    QS_RETURN_IF_ERROR(be::final_norm_forward(ex, c, w, b.hf, b.mean, b.rstd, x, (int)RT));
    sp.step = (uint32_t)s;
    QS_RETURN_IF_ERROR(be::thought_sample<T>(ex, b.tok, b.hf, w.head, (int)RT, (int)D, d.V, b.rows, b.posi, suppress, 2,
                                             sp, sample_scratch));
    const int32_t* tok_h;
    QS_RETURN_IF_ERROR(be::host_view(ex, (const int32_t*)b.tok, RT, &tok_copy, &tok_h));
    for (int64_t n = 0; n < RT; n++) th[n * d.M + s - 1] = tok_h[n];
  }
  *thoughts = out;
  return Status::Ok();
}

template Status QuietStar::Impl::sample_thoughts<float>(const ModelConfig&, const QuietStarOptions&, ParamSet&, const Tensor&,
                                                        const Tensor&, const Tensor&, uint64_t, Tensor*);
template Status QuietStar::Impl::sample_thoughts<double>(const ModelConfig&, const QuietStarOptions&, ParamSet&, const Tensor&,
                                                         const Tensor&, const Tensor&, uint64_t, Tensor*);

}  // namespace qs
