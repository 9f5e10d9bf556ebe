// quietstar_fixtures.h: the tiny models and tensor helpers shared by the Quiet-STaR oracle tests
// (test_quietstar.cpp, test_quietstar_inference.cpp, test_quietstar_think.cpp).
//
// Vocabulary: text ids in [0, 50), the two thought markers last (spec §2.3: appended to the
// vocabulary), so excluding them from a softmax is "the first 50 rows of the LM head".
#pragma once

#include <cstring>
#include <vector>

#include "harness.h"
#include "quietstar/engine.h"
#include "quietstar/model.h"

namespace qs_test {

inline constexpr int kV = 52, kStart = 50, kEnd = 51;

// Llama with GQA 4:2, q/k/v biases and an untied head.
inline qs::ModelConfig qs_llama() {
  qs::ModelConfig c;
  c.family = qs::ModelFamily::Llama;
  c.vocab_size = kV, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16;
  c.d_ff = 96, c.max_seq_len = 64, c.norm_eps = 1e-6, c.rope_theta = 10000.0, c.tie_embeddings = false;
  c.qkv_bias = true, c.o_bias = false, c.mlp_bias = false;
  return c;
}

// GPT-2 with a tied head (the markers' LM-head rows are their embedding rows).
inline qs::ModelConfig qs_gpt2() {
  qs::ModelConfig c;
  c.family = qs::ModelFamily::GPT2;
  c.vocab_size = kV, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.head_dim = 16;
  c.d_ff = 128, c.max_seq_len = 40, c.norm_eps = 1e-5, c.tie_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

// Tensors on the engine's device (CPU in these tests) from host vectors.
inline qs::Tensor i32(qs::Engine& e, const qs::Shape& shape, const std::vector<int32_t>& v) {
  qs::Tensor t;
  e.empty(qs::DType::I32, shape, &t);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), sizeof(int32_t) * v.size());
  return t;
}
inline qs::Tensor u8(qs::Engine& e, const qs::Shape& shape, const std::vector<uint8_t>& v) {
  qs::Tensor t;
  e.empty(qs::DType::U8, shape, &t);
  std::memcpy(t.raw(), v.data(), v.size());
  return t;
}
// An f32 or f64 tensor's values as doubles.
inline std::vector<double> doubles(const qs::Tensor& t) {
  std::vector<double> v(t.numel());
  for (int64_t i = 0; i < t.numel(); i++) v[i] = t.dtype() == qs::DType::F64 ? t.data<double>()[i] : (double)t.data<float>()[i];
  return v;
}

// B documents of T random text ids (< 50); document 0 is right-padded by `pad` slots
// (valid 0, id 0, label -100). Labels are the ids (the step shifts them).
struct PaddedBatch {
  std::vector<int32_t> ids, labels;  // (B, T)
  std::vector<uint8_t> valid;        // (B, T)
  std::vector<int> len;              // (B) valid tokens per document
};
inline PaddedBatch padded_batch(Rng& rng, int B, int T, int pad) {
  PaddedBatch p;
  p.ids.resize((size_t)B * T), p.labels.resize((size_t)B * T), p.valid.resize((size_t)B * T), p.len.resize(B);
  for (int d = 0; d < B; d++) {
    p.len[d] = T - (d == 0 ? pad : 0);
    for (int i = 0; i < T; i++) {
      const size_t n = (size_t)d * T + i;
      p.valid[n] = i < p.len[d];
      p.ids[n] = p.valid[n] ? rng.below(50) : 0;
      p.labels[n] = p.valid[n] ? p.ids[n] : -100;
    }
  }
  return p;
}

}  // namespace qs_test
