// matmul_small.h: products with a few rows, out (M, N) = x (M, K) · op(W), M <= kSmallRows.
//
// For KV-cached decoding and per-token sampling heads, where M (the batch rows) is tiny: gemm
// packs the whole weight matrix on every call, which costs more than such a product; this
// streams each weight row once for all M rows. Results do not depend on the thread count.
#pragma once

namespace qs::cpu {

constexpr int kSmallRows = 8;  // the most rows matmul_small takes

// out (M, N) [ldo] (= or +=) x (M, K) [ldx] · op(W), M <= kSmallRows.
// W is (N, K) [ldw] when out_in (torch Linear: out[m][n] = <x_m, W_n>), (K, N) [ldw] otherwise.
template <typename T>
void matmul_small(T* out, int ldo, const T* x, int ldx, const T* W, int ldw, bool out_in, int M, int K, int N,
                  bool accumulate);

}  // namespace qs::cpu
