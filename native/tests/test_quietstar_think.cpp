// test_quietstar_think.cpp: thinking at inference (spec §5) against the eval forward (§4.1),
// oracle §9.15 with real sampling.
//
// A P = 1, A = 1 QuietStar (the eval step) samples thoughts for a right-padded batch
// (sample_thoughts) and runs forward_backward with them; talk_logits gives its mixed and base
// predictions at (b, t). think_decode of the prefix x_0..x_t (row id b, the same seed) must:
//   (1) draw the same thoughts as sample_thoughts at (b, t) and give the same mixed logits
//       (markers aside) and base logits, within 1e-10 in float64 — one row at a time and a
//       left-padded batch of both documents;
//   (2) rewind the cache: the next token x_{t+1} decoded after the thought gets the logits the
//       model's own KV cache gives for x_0..x_{t+1} (no thought ever in it), and the mixed
//       prediction the eval forward makes at t + 1;
//   (3) never put a marker in a thought and give the markers -inf;
//   (4) nAhead = 1: mixed = base;
//   (5) refuse bad inputs with INVALID_ARGUMENT naming the argument.
// Tiny untied Llama (RoPE, GQA 4:2) and tied GPT-2 (learned positions), random weights and a
// random mixing head (w of order 1, checked).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "harness.h"
#include "quietstar_fixtures.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"
#include "quietstar/params.h"
#include "quietstar/quietstar.h"

using namespace qs;
using namespace qs_test;

namespace {

// A model with the Quiet-STaR views, its eval step (P = 1, A = 1) and random weights.
struct Rig {
  std::unique_ptr<Engine> e;
  std::shared_ptr<ParamSet> ps;
  std::unique_ptr<Model> m;
  std::unique_ptr<QuietStar> q;
  QuietStarOptions o;
  ModelConfig c;
};

bool make_rig(Rig& r, const ModelConfig& c, int N, uint64_t seed) {
  EngineOptions eo;
  eo.device = "cpu";
  Status st = Engine::create(eo, &r.e);
  r.c = c;
  r.o.n_ahead = N, r.o.n_ahead_talk = 1, r.o.n_passes = 1, r.o.start_id = kStart, r.o.end_id = kEnd;
  ParamLayout layout;
  std::unique_ptr<ParamSet> tmp;
  if (st.ok()) st = quietstar_model_layout(c, &layout);
  if (st.ok()) st = ParamSet::create(*r.e, DType::F64, layout, false, &tmp);
  r.ps = std::move(tmp);
  if (st.ok()) st = Model::create(*r.e, c, r.ps, &r.m);
  if (st.ok()) st = QuietStar::create(*r.e, r.m.get(), r.o, &r.q);
  if (st.ok())
    st = r.e->run_sync([&]() -> Status {
      QS_RETURN_IF_ERROR(r.m->init_weights(seed));
      return r.q->init_parameters(3, seed);
    });
  QS_EXPECT(st.ok(), "rig: %s", st.to_string().c_str());
  if (!st.ok()) return false;
  // Sharper weights than the N(0, 0.02) init (distinct predictions), and a mixing head whose
  // layers are all random so that w is of order 1.
  Rng rng(seed + 100);
  for (const ParamEntry& en : r.ps->layout().entries()) {
    double* x = r.ps->params().data<double>() + en.offset;
    const bool head = en.name.compare(0, 9, "talk_head") == 0;
    for (int64_t i = 0; i < en.numel; i++) x[i] = head ? 0.06 * rng.normal() : 6.0 * x[i];
  }
  return true;
}

std::vector<int32_t> ints(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

double max_diff(const double* a, const double* b, int n) {
  double m = 0;
  for (int i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// One configuration: B = 2 documents of T tokens, document 0 right-padded by `pad`.
void check_think(const ModelConfig& c, int N, int T, int pad, uint64_t seed, const char* label) {
  Rig r;
  if (!make_rig(r, c, N, seed)) return;
  Engine& e = *r.e;
  const int B = 2, V = c.vocab_size, M = r.o.thought_tokens();
  Rng rng(seed);
  PaddedBatch batch = padded_batch(rng, B, T, pad);
  std::vector<int32_t>& ids = batch.ids;
  std::vector<int32_t>& labels = batch.labels;
  std::vector<uint8_t>& valid = batch.valid;
  std::vector<int>& len = batch.len;
  const uint64_t tseed = seed * 7 + 1;

  // The eval forward: sampled thoughts, then the pass; the logits at every scored (b, t).
  std::vector<int32_t> sampled;
  std::vector<std::array<int32_t, 2>> at;
  for (int d = 0; d < B; d++)
    for (int t = 0; t < std::min(len[d], T - 1); t++) at.push_back({d, t});
  const int K = (int)at.size();
  std::vector<double> mixed, base, mixw;
  Status st = e.run_sync([&]() -> Status {
    Tensor th, m, b, w;
    QS_RETURN_IF_ERROR(r.q->sample_thoughts(i32(e, {B, T}, ids), u8(e, {B, T}, valid), tseed, &th));
    sampled = ints(th);
    QS_RETURN_IF_ERROR(r.q->forward_backward(i32(e, {B, T}, ids), u8(e, {B, T}, valid), i32(e, {B, T}, labels), th, false,
                                             1.0, nullptr));
    std::vector<int32_t> flat;
    for (auto& p : at) flat.insert(flat.end(), p.begin(), p.end());
    QS_RETURN_IF_ERROR(r.q->talk_logits(i32(e, {K, 2}, flat), &m, &b));
    QS_RETURN_IF_ERROR(r.q->debug_tensor("mix_weight", &w));
    mixed = doubles(m), base = doubles(b), mixw = doubles(w);
    return Status();
  });
  QS_EXPECT(st.ok(), "%s: eval forward: %s", label, st.to_string().c_str());
  if (!st.ok()) return;
  auto row_of = [&](int d, int t) {
    for (int k = 0; k < K; k++)
      if (at[k][0] == d && at[k][1] == t) return k;
    return -1;
  };

  // (1)-(3) one row at a time: prefix x_0..x_t, then x_{t+1}.
  double e_mixed = 0, e_base = 0, e_next = 0, e_next_mixed = 0, sum_w = 0;
  int thought_mismatch = 0, markers_in_thoughts = 0, markers_not_masked = 0, checked = 0;
  for (int d = 0; d < B; d++)
    for (int t = 0; t < std::min(len[d], T - 1); t++) {
      std::vector<int32_t> prefix(ids.begin() + (size_t)d * T, ids.begin() + (size_t)d * T + t + 1), pos(t + 1);
      for (int i = 0; i <= t; i++) pos[i] = i;
      std::vector<double> l1, b1, l2, b2, plain;
      std::vector<int32_t> th1;
      const bool next = t + 1 < len[d];
      st = e.run_sync([&]() -> Status {
        Tensor l, b, th;
        QS_RETURN_IF_ERROR(r.q->think_reset(1, t + 2));
        // The model's own cache, interleaved: the thinking cache is a different one.
        QS_RETURN_IF_ERROR(r.m->reset_cache(1, t + 2));
        QS_RETURN_IF_ERROR(r.q->think_decode(i32(e, {1, t + 1}, prefix), i32(e, {1, t + 1}, pos), Tensor(),
                                             i32(e, {1}, {d}), tseed, &l, &b, &th));
        l1 = doubles(l), b1 = doubles(b), th1 = ints(th);
        if (r.q->think_cache_length() != t + 1)
          return QS_ERROR(INTERNAL, "thinking cache holds %d slots, want %d", r.q->think_cache_length(), t + 1);
        if (!next) return Status();
        const std::vector<int32_t> x1{ids[(size_t)d * T + t + 1]}, p1{t + 1};
        QS_RETURN_IF_ERROR(r.q->think_decode(i32(e, {1, 1}, x1), i32(e, {1, 1}, p1), u8(e, {1, 1}, {1}), i32(e, {1}, {d}),
                                             tseed, &l, &b, nullptr));
        l2 = doubles(l), b2 = doubles(b);
        std::vector<int32_t> full = prefix, fpos = pos;
        full.push_back(x1[0]), fpos.push_back(t + 1);
        Tensor out;
        QS_RETURN_IF_ERROR(r.m->decode(i32(e, {1, t + 2}, full), i32(e, {1, t + 2}, fpos), Tensor(), &out));
        plain = doubles(out);
        return Status();
      });
      QS_EXPECT(st.ok(), "%s: think_decode d=%d t=%d: %s", label, d, t, st.to_string().c_str());
      if (!st.ok()) return;
      const int k = row_of(d, t);
      for (int m = 0; m < M; m++) {
        const int32_t x = th1[m];
        thought_mismatch += x != sampled[((size_t)d * T + t) * M + m];
        markers_in_thoughts += x == kStart || x == kEnd;
      }
      markers_not_masked += !(std::isinf(l1[kStart]) && l1[kStart] < 0 && std::isinf(l1[kEnd]) && l1[kEnd] < 0);
      e_mixed = std::max(e_mixed, max_diff(l1.data(), &mixed[(size_t)k * V], kStart));
      e_base = std::max(e_base, max_diff(b1.data(), &base[(size_t)k * V], V));
      sum_w += std::fabs(mixw[(size_t)d * T + t]);
      if (next) {
        e_next = std::max(e_next, max_diff(b2.data(), plain.data(), V));
        const int k1 = row_of(d, t + 1);
        if (k1 >= 0) e_next_mixed = std::max(e_next_mixed, max_diff(l2.data(), &mixed[(size_t)k1 * V], kStart));
      }
      checked++;
    }

  // (1) batched: both documents' prefixes up to len - 2, left-padded, row ids 0 and 1.
  double e_batch = 0;
  int batch_mismatch = 0;
  {
    std::vector<int> tl(B);
    for (int d = 0; d < B; d++) tl[d] = std::min(len[d], T - 1) - 1;  // last position of the prefix
    const int L = std::max(tl[0], tl[1]) + 1;
    std::vector<int32_t> bid((size_t)B * L, 0), bpos((size_t)B * L, 0);
    std::vector<uint8_t> bval((size_t)B * L, 0);
    for (int d = 0; d < B; d++)
      for (int j = 0; j <= tl[d]; j++) {
        const size_t s = (size_t)d * L + L - 1 - tl[d] + j;
        bid[s] = ids[(size_t)d * T + j], bpos[s] = j, bval[s] = 1;
      }
    std::vector<double> l;
    std::vector<int32_t> th;
    st = e.run_sync([&]() -> Status {
      Tensor lt, tt;
      QS_RETURN_IF_ERROR(r.q->think_reset(B, L));
      QS_RETURN_IF_ERROR(r.q->think_decode(i32(e, {B, L}, bid), i32(e, {B, L}, bpos), u8(e, {B, L}, bval), Tensor(), tseed,
                                           &lt, nullptr, &tt));
      l = doubles(lt), th = ints(tt);
      return Status();
    });
    QS_EXPECT(st.ok(), "%s: batched think_decode: %s", label, st.to_string().c_str());
    if (!st.ok()) return;
    for (int d = 0; d < B; d++) {
      e_batch = std::max(e_batch, max_diff(&l[(size_t)d * V], &mixed[(size_t)row_of(d, tl[d]) * V], kStart));
      for (int m = 0; m < M; m++) batch_mismatch += th[(size_t)d * M + m] != sampled[((size_t)d * T + tl[d]) * M + m];
    }
  }

  fprintf(stdout,
          "    %-12s positions=%d  |dmixed| %.2e  |dbase| %.2e  |dnext plain| %.2e  |dnext mixed| %.2e  |dbatch| %.2e  "
          "mean|w| %.2f\n",
          label, checked, e_mixed, e_base, e_next, e_next_mixed, e_batch, sum_w / std::max(checked, 1));
  const double tol = 1e-10;
  QS_EXPECT(thought_mismatch == 0 && batch_mismatch == 0, "%s: %d (+%d batched) thought tokens differ from sample_thoughts",
            label, thought_mismatch, batch_mismatch);
  QS_EXPECT(markers_in_thoughts == 0, "%s: %d thought tokens are markers", label, markers_in_thoughts);
  QS_EXPECT(markers_not_masked == 0, "%s: %d rows give a marker a finite logit", label, markers_not_masked);
  QS_EXPECT(e_mixed <= tol, "%s: mixed logits differ from talk_logits by %.3e", label, e_mixed);
  QS_EXPECT(e_base <= tol, "%s: base logits differ from talk_logits by %.3e", label, e_base);
  QS_EXPECT(e_next <= tol, "%s: after a thought, the next token's logits differ from plain decoding by %.3e", label, e_next);
  QS_EXPECT(e_next_mixed <= tol, "%s: after a thought, the next mixed logits differ by %.3e", label, e_next_mixed);
  QS_EXPECT(e_batch <= tol, "%s: the left-padded batch differs by %.3e", label, e_batch);
  QS_EXPECT(sum_w / std::max(checked, 1) > 0.05, "%s: mean |w| %.3e: the check would not see the thought", label,
            sum_w / std::max(checked, 1));
}

// The status of `f` must be INVALID_ARGUMENT with `needle` in its message.
template <typename F>
void expect_invalid(Engine& e, const char* needle, F f) {
  Status st = e.run_sync(f);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT && st.message().find(needle) != std::string::npos,
            "want INVALID_ARGUMENT naming '%s', got %s", needle, st.to_string().c_str());
}

}  // namespace

QS_TEST(think_decode_equals_eval_forward_llama) {
  check_think(qs_llama(), 6, 9, 3, 11, "llama N=6");
  check_think(qs_llama(), 3, 6, 1, 12, "llama N=3");  // [<start>, <end>]: nothing sampled
}

QS_TEST(think_decode_equals_eval_forward_gpt2_tied) { check_think(qs_gpt2(), 5, 8, 2, 21, "gpt2 N=5"); }

QS_TEST(think_decode_no_thought_is_the_base) {
  Rig r;
  if (!make_rig(r, qs_llama(), 1, 5)) return;
  Engine& e = *r.e;
  std::vector<double> l, b;
  int64_t nthought = -1;
  Status st = e.run_sync([&]() -> Status {
    Tensor lt, bt, tt;
    QS_RETURN_IF_ERROR(r.q->think_reset(1, 4));
    QS_RETURN_IF_ERROR(
        r.q->think_decode(i32(e, {1, 3}, {4, 9, 2}), i32(e, {1, 3}, {0, 1, 2}), Tensor(), Tensor(), 1, &lt, &bt, &tt));
    l = doubles(lt), b = doubles(bt), nthought = tt.numel();
    return Status();
  });
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
  if (!st.ok()) return;
  QS_EXPECT(nthought == 0, "nAhead = 1: %lld thought tokens", (long long)nthought);
  QS_EXPECT(max_diff(l.data(), b.data(), kStart) == 0, "nAhead = 1: mixed != base");
  QS_EXPECT(std::isinf(l[kStart]) && std::isinf(l[kEnd]), "nAhead = 1: markers not masked");
}

QS_TEST(think_decode_rejects_bad_inputs) {
  Rig r;
  if (!make_rig(r, qs_gpt2(), 5, 6)) return;
  Engine& e = *r.e;
  QuietStar& q = *r.q;
  Tensor l, b, th;
  const Tensor ids = i32(e, {2, 2}, {1, 2, 3, 4}), pos = i32(e, {2, 2}, {0, 1, 0, 1});
  expect_invalid(e, "thinkResetCache", [&] { return q.think_decode(ids, pos, Tensor(), Tensor(), 0, &l, &b, &th); });
  expect_invalid(e, "maxLen", [&] { return q.think_reset(2, 0); });
  expect_invalid(e, "B must be", [&] { return q.think_reset(0, 4); });
  expect_invalid(e, "no forwardBackward", [&] { return q.talk_logits(i32(e, {1, 2}, {0, 0}), &l, &b); });
  QS_EXPECT(e.run_sync([&] { return q.think_reset(2, 3); }).ok(), "think_reset");
  expect_invalid(e, "'ids' has 1 rows", [&] { return q.think_decode(i32(e, {1, 2}, {1, 2}), pos, Tensor(), Tensor(), 0, &l, &b, &th); });
  expect_invalid(e, "ids", [&] { return q.think_decode(i32(e, {2, 2}, {1, 2, 3, kV}), pos, Tensor(), Tensor(), 0, &l, &b, &th); });
  expect_invalid(e, "positions", [&] { return q.think_decode(ids, i32(e, {2, 1}, {0, 1}), Tensor(), Tensor(), 0, &l, &b, &th); });
  expect_invalid(e, "'valid'", [&] { return q.think_decode(ids, pos, u8(e, {2, 1}, {1, 1}), Tensor(), 0, &l, &b, &th); });
  expect_invalid(e, "'rowIds'", [&] { return q.think_decode(ids, pos, Tensor(), i32(e, {3}, {0, 1, 2}), 0, &l, &b, &th); });
  expect_invalid(e, "rowIds[1]", [&] { return q.think_decode(ids, pos, Tensor(), i32(e, {2}, {0, -1}), 0, &l, &b, &th); });
  expect_invalid(e, "seed", [&] { return q.think_decode(ids, pos, Tensor(), Tensor(), (uint64_t)1 << 60, &l, &b, &th); });
  // GPT-2 (maxSeqLen 40): a thought after position 37 would leave the position table.
  expect_invalid(e, "maxSeqLen", [&] { return q.think_decode(ids, i32(e, {2, 2}, {0, 1, 36, 37}), Tensor(), Tensor(), 0, &l, &b, &th); });
  QS_EXPECT(e.run_sync([&] { return q.think_decode(ids, pos, Tensor(), Tensor(), 0, &l, &b, &th); }).ok(), "think_decode");
  expect_invalid(e, "cache is full", [&] { return q.think_decode(ids, pos, Tensor(), Tensor(), 0, &l, &b, &th); });
  // talk_logits after a forward: rows and positions in range.
  QS_EXPECT(e.run_sync([&] {
              return q.forward_backward(i32(e, {1, 3}, {1, 2, 3}), Tensor(), i32(e, {1, 3}, {1, 2, 3}), i32(e, {1, 3, 2}, {1, 2, 3, 4, 5, 6}),
                                        false, 1.0, nullptr);
            }).ok(),
            "forward");
  expect_invalid(e, "at[1]", [&] { return q.talk_logits(i32(e, {2, 2}, {0, 1, 0, 2}), &l, &b); });
  expect_invalid(e, "at[0]", [&] { return q.talk_logits(i32(e, {1, 2}, {1, 0}), &l, &b); });
  expect_invalid(e, "'at'", [&] { return q.talk_logits(i32(e, {2}, {0, 0}), &l, &b); });
}

QS_TEST_MAIN()
