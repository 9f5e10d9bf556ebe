// quietstar_fixtures.h: the tiny models and tensor helpers shared by the Quiet-STaR oracle tests
// (test_quietstar.cpp, test_quietstar_inference.cpp).
//
// Vocabulary: text ids in [0, 50), the two thought markers last (spec §2.3: appended to the
// vocabulary), so excluding them from a softmax is "the first 50 rows of the LM head".
#pragma once

#include <cstring>
#include <vector>

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

}  // namespace qs_test
