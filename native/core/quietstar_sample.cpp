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
#include <cstring>

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
  Tensor out;
  QS_RETURN_IF_ERROR(engine->empty(DType::I32, {d.R, T_, d.M}, &out));
  if (d.M == 0) {  // nAhead <= 3: nothing is sampled
    *thoughts = out;
    return Status::Ok();
  }
  SampleBuffers<T>& b = sample<T>();
  Carver measure;
  carve_sample(measure, c, d, b);
  QS_RETURN_IF_ERROR(ensure(sample_mem, measure.used));
  Carver cv{static_cast<char*>(sample_mem.raw())};
  carve_sample(cv, c, d, b);

  const int32_t* ids = ids_t.data<int32_t>();
  const uint8_t* valid = valid_t.defined() ? valid_t.data<uint8_t>() : nullptr;
  const cpu::ModelWeights<T> w = cpu::bind_weights<T>(c, p.layout(), p.params().data<T>());
  const QsWeights<T> qw = bind_qs_weights<T>(p.layout(), p.params().data<T>());
  const T scale = (T)(1.0 / std::sqrt((double)d.hd));
  const bool gpt2 = c.family == ModelFamily::GPT2;
  for (int r = 0; r < d.R; r++)
    for (int i = 0; i < T_; i++) b.rows[(int64_t)r * T_ + i] = noise_row[r], b.posi[(int64_t)r * T_ + i] = i;

  // ---- base pass: the K/V of every layer (positions 0..T-1 = posi's first B·T entries)
  {
    cpu::embed_forward(c, w, b.x0, ids, b.posi, (int)d.BT);
    cpu::AttnPattern pat{B, T_, T_, b.posi, b.posi, valid, c.sliding_window};
    T* x = b.x0;
    for (int l = 0; l < d.L; l++) {
      b.a.k = b.kb[l], b.a.v = b.vb[l];
      cpu::block_qkv_forward(c, w.layers[l], b.a, x, b.posi, (int)d.BT);
      if (l == d.L - 1) break;  // the last layer's output is never read
      cpu::attention_forward_call(c, b.a, b.a.k, b.a.v, pat);
      b.a.out = x == b.x0 ? b.x1 : b.x0;
      cpu::block_out_forward(c, w.layers[l], b.a, x, (int)d.BT);
      x = b.a.out;
    }
  }

  // ---- chain steps 1..M, one token per (row, position) each
  const int32_t suppress[2] = {o.start_id, o.end_id};
  cpu::ThoughtSampleParams sp;
  sp.temperature = o.thought_temperature;
  sp.policy_temperature = o.reinforce_temperature;
  sp.seed = seed;
  int32_t* th = out.data<int32_t>();
  const int64_t RT = d.RT, KV = d.KV, D = d.D;
  for (int s = 1; s <= d.M; s++) {
    for (int64_t n = 0; n < RT; n++) b.posc[n] = b.posi[n] + s;
    if (s == 1) {  // the start marker, stored / embedding_scale (spec §2.3)
      for (int64_t n = 0; n < RT; n++)
        for (int j = 0; j < d.D; j++) b.x0[n * D + j] = (T)(o.embedding_scale * qw.start[j]);
    } else {
      cpu::embedding_forward<T>(b.x0, b.tok, w.wte, (int)RT, d.D);
    }
    if (gpt2) cpu::position_embedding_forward<T>(b.x0, b.posc, w.wpe, (int)RT, d.D);
    cpu::ThoughtAttentionShape sh{B, d.P, T_, 1, s, d.M, d.H, d.Hkv, d.hd, c.sliding_window};
    T* x = b.x0;
    for (int l = 0; l < d.L; l++) {
      b.a.k = b.kx, b.a.v = b.vx;
      cpu::block_qkv_forward(c, w.layers[l], b.a, x, b.posc, (int)RT);
      for (int r = 0; r < d.R; r++) {  // into the cache at (r, s - 1)
        const int64_t dst = ((int64_t)r * d.M + s - 1) * T_ * KV, src = (int64_t)r * T_ * KV;
        std::memcpy(b.kc[l] + dst, b.kx + src, sizeof(T) * (size_t)T_ * KV);
        std::memcpy(b.vc[l] + dst, b.vx + src, sizeof(T) * (size_t)T_ * KV);
      }
      {
        cpu::ProfScope ps(cpu::kProfAttention);
        cpu::thought_attention_forward<T>(b.a.att, b.a.lse, b.a.q, b.kb[l], b.vb[l], b.kc[l], b.vc[l], valid, sh, scale);
      }
      b.a.out = x == b.x0 ? b.x1 : b.x0;
      cpu::block_out_forward(c, w.layers[l], b.a, x, (int)RT);
      x = b.a.out;
    }
    cpu::final_norm_forward(c, w, b.hf, b.mean, b.rstd, x, (int)RT);
    sp.step = (uint32_t)s;
    {
      cpu::ProfScope ps(cpu::kProfHead);
      cpu::thought_sample<T>(b.tok, nullptr, nullptr, b.hf, w.head, (int)RT, d.D, d.V, b.rows, b.posi, suppress, 2, sp);
    }
    for (int64_t n = 0; n < RT; n++) th[n * d.M + s - 1] = b.tok[n];
  }
  *thoughts = out;
  return Status::Ok();
}

template Status QuietStar::Impl::sample_thoughts<float>(const ModelConfig&, const QuietStarOptions&, ParamSet&, const Tensor&,
                                                        const Tensor&, const Tensor&, uint64_t, Tensor*);
template Status QuietStar::Impl::sample_thoughts<double>(const ModelConfig&, const QuietStarOptions&, ParamSet&, const Tensor&,
                                                         const Tensor&, const Tensor&, uint64_t, Tensor*);

}  // namespace qs
