// test_cuda_heads.cpp: the CUDA mixing head and row moves (native/cuda/quietstar_heads.cu) against
// their CPU twins (cpu/quietstar_heads.cpp). Skipped, with the probe's reason, without a GPU.
//
// Random f32 inputs; n (rows) of 1, 37 and 300 (not multiples of the 8-rows-per-block launch),
// D of 16 and 67 (not a multiple of the 32-lane warp); all four mixing conventions (reference /
// paper weights, with and without the sigmoid). Checked: every activation of the forward, and
// dh_base, dh_chain and the five parameter gradients of the backward (accumulated into nonzero
// buffers, so "+=" is checked). f32 tolerance: the products run in another summation order than
// the CPU gemm (errors ~1e-6 relative); kRtol / kAtol leave room for D = 67 sums. The row moves
// (gather, fill, sum, scatter-add by destination lists with repeated destinations) add in the
// CPU's order: exact, but for FMA contraction in the sums.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cpu/quietstar_heads.h"
#include "cuda/kernels_quietstar.h"
#include "cuda_test_util.h"
#include "harness.h"

using namespace qs_test;
namespace cpu = qs::cpu;

#ifndef QUIETSTAR_HAVE_CUDA
// The launchers exist only in a build with the CUDA backend.
QS_TEST(cuda_heads) { QS_SKIP("this build has no CUDA backend"); }
#else

namespace {

constexpr double kRtol = 1e-4, kAtol = 1e-5;

// Named device buffers for one case: put() uploads, get() downloads, p() is the device address.
struct Buffers {
  qs::Engine& e;
  std::map<std::string, qs::Tensor> t;
  template <typename T>
  qs::Status put(const std::string& name, qs::DType dt, const std::vector<T>& v) {
    return device_tensor(e, dt, {(int64_t)v.size()}, v, &t[name]);
  }
  qs::Status zeros(const std::string& name, size_t n) { return put(name, qs::DType::F32, std::vector<float>(n, 0.f)); }
  template <typename T = float>
  T* p(const std::string& name) { return t.count(name) ? t[name].data<T>() : nullptr; }
  template <typename T = float>
  qs::Status get(const std::string& name, std::vector<T>* v) { return fetch(e, t.at(name), v); }
};

}  // namespace

QS_TEST(cuda_mixing_head_matches_cpu_twin) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  for (int n : {1, 37, 300})
    for (int D : {16, 67})
      for (int conv = 0; conv < 4; conv++) {
        const bool weights_base = conv & 1, sigmoid = conv & 2;
        Rng r(n * 1009 + D * 31 + conv);
        const size_t nD = (size_t)n * D;
        const auto hb = random_vector<float>(r, nD), hc = random_vector<float>(r, nD);
        const auto w1 = random_vector<float>(r, (size_t)D * 2 * D, 0.2), b1 = random_vector<float>(r, D, 0.1);
        const auto w2 = random_vector<float>(r, (size_t)D * D, 0.2), b2 = random_vector<float>(r, D, 0.1);
        const auto w3 = random_vector<float>(r, D, 0.2), dhm0 = random_vector<float>(r, nD);
        const auto g1 = random_vector<float>(r, (size_t)D * 2 * D), gb1 = random_vector<float>(r, D);
        const auto g2 = random_vector<float>(r, (size_t)D * D), gb2 = random_vector<float>(r, D);
        const auto g3 = random_vector<float>(r, D);

        // CPU twin
        std::vector<float> z1(nD), a1(nD), z2(nD), a2(nD), wraw(n), wv(n), hm(nD);
        const cpu::MixingActs<float> ca{z1.data(), a1.data(), z2.data(), a2.data(), wraw.data(), wv.data(), hm.data()};
        const cpu::MixingWeights<float> cw{w1.data(), b1.data(), w2.data(), b2.data(), w3.data()};
        cpu::mixing_forward<float>(ca, hb.data(), hc.data(), cw, n, D, weights_base, sigmoid);
        std::vector<float> dhb(nD), dhc(nD), t1(nD), dw(n), dhm = dhm0;
        std::vector<float> cg1 = g1, cgb1 = gb1, cg2 = g2, cgb2 = gb2, cg3 = g3;
        const cpu::MixingGrads<float> cg{cg1.data(), cgb1.data(), cg2.data(), cgb2.data(), cg3.data()};
        cpu::mixing_backward<float>(dhb.data(), dhc.data(), cg, dhm.data(), t1.data(), dw.data(), ca, hb.data(),
                                    hc.data(), cw, n, D, weights_base, sigmoid);

        // device
        Buffers b{*e, {}};
        std::map<std::string, std::vector<float>> got;
        const char* outs[] = {"z1", "a1", "z2", "a2", "wraw", "w", "hm", "dhb", "dhc", "dw", "g1", "gb1", "g2", "gb2", "g3"};
        qs::Status st = e->run_sync([&]() -> qs::Status {
          const qs::DType F = qs::DType::F32;
          QS_RETURN_IF_ERROR(b.put("hb", F, hb));
          QS_RETURN_IF_ERROR(b.put("hc", F, hc));
          QS_RETURN_IF_ERROR(b.put("w1", F, w1));
          QS_RETURN_IF_ERROR(b.put("b1", F, b1));
          QS_RETURN_IF_ERROR(b.put("w2", F, w2));
          QS_RETURN_IF_ERROR(b.put("b2", F, b2));
          QS_RETURN_IF_ERROR(b.put("w3", F, w3));
          QS_RETURN_IF_ERROR(b.put("dhm", F, dhm0));
          QS_RETURN_IF_ERROR(b.put("g1", F, g1));
          QS_RETURN_IF_ERROR(b.put("gb1", F, gb1));
          QS_RETURN_IF_ERROR(b.put("g2", F, g2));
          QS_RETURN_IF_ERROR(b.put("gb2", F, gb2));
          QS_RETURN_IF_ERROR(b.put("g3", F, g3));
          for (const char* k : {"z1", "a1", "z2", "a2", "hm", "dhb", "dhc", "t1"}) QS_RETURN_IF_ERROR(b.zeros(k, nD));
          for (const char* k : {"wraw", "w", "dw"}) QS_RETURN_IF_ERROR(b.zeros(k, n));
          const cpu::MixingActs<float> da{b.p("z1"), b.p("a1"), b.p("z2"), b.p("a2"), b.p("wraw"), b.p("w"), b.p("hm")};
          const cpu::MixingWeights<float> dwt{b.p("w1"), b.p("b1"), b.p("w2"), b.p("b2"), b.p("w3")};
          const cpu::MixingGrads<float> dg{b.p("g1"), b.p("gb1"), b.p("g2"), b.p("gb2"), b.p("g3")};
          QS_RETURN_IF_ERROR(qs::cuda::mixing_forward(da, b.p("hb"), b.p("hc"), dwt, n, D, weights_base, sigmoid,
                                                      e->stream()));
          QS_RETURN_IF_ERROR(qs::cuda::mixing_backward(b.p("dhb"), b.p("dhc"), dg, b.p("dhm"), b.p("t1"), b.p("dw"), da,
                                                       b.p("hb"), b.p("hc"), dwt, n, D, weights_base, sigmoid,
                                                       e->stream()));
          for (const char* k : outs) QS_RETURN_IF_ERROR(b.get(k, &got[k]));
          return qs::Status::Ok();
        });
        char label[96];
        snprintf(label, sizeof label, "n=%d D=%d weights_base=%d sigmoid=%d", n, D, (int)weights_base, (int)sigmoid);
        QS_EXPECT(st.ok(), "%s: %s", label, st.to_string().c_str());
        if (!st.ok()) continue;
        printf("  %s\n", label);
        const std::map<std::string, const std::vector<float>*> want = {
            {"z1", &z1}, {"a1", &a1}, {"z2", &z2}, {"a2", &a2}, {"wraw", &wraw}, {"w", &wv}, {"hm", &hm},
            {"dhb", &dhb}, {"dhc", &dhc}, {"dw", &dw}, {"g1", &cg1}, {"gb1", &cgb1}, {"g2", &cg2}, {"gb2", &cgb2},
            {"g3", &cg3}};
        for (const char* k : outs) check_close(k, got[k].data(), want.at(k)->data(), want.at(k)->size(), kRtol, kAtol);
      }
}

QS_TEST(cuda_row_moves_match_cpu_twin) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  for (int D : {1, 67, 256}) {
    const int64_t rows = 50, n = 123;  // n > rows: destinations repeat
    Rng r(D * 7 + 1);
    const auto src = random_vector<float>(r, (size_t)rows * D), vec = random_vector<float>(r, (size_t)D);
    const auto dst0 = random_vector<float>(r, (size_t)rows * D), out0 = random_vector<float>(r, (size_t)D);
    const auto srcn = random_vector<float>(r, (size_t)n * D);
    std::vector<int64_t> idx(n), distinct(20);
    for (auto& x : idx) x = r.below((int)rows);
    for (int k = 0; k < 20; k++) distinct[k] = (k * 7) % rows;  // 20 distinct rows
    cpu::ScatterLists L;
    cpu::scatter_lists(idx.data(), n, &L);
    const int64_t m = (int64_t)L.dest.size();
    const float f = 0.75f;

    std::vector<float> g_want((size_t)n * D), f_want = dst0, s_want = out0, a_want = dst0;
    cpu::gather_rows<float>(g_want.data(), src.data(), idx.data(), n, D, f);
    cpu::fill_rows<float>(f_want.data(), vec.data(), distinct.data(), 20, D, f);
    cpu::sum_rows<float>(s_want.data(), src.data(), idx.data(), n, D, f);
    cpu::scatter_add_rows<float>(a_want.data(), srcn.data(), L.dest.data(), L.start.data(), L.from.data(), m, D, f);

    Buffers b{*e, {}};
    std::vector<float> g, fl, sm, ad;
    qs::Status st = e->run_sync([&]() -> qs::Status {
      const qs::DType F = qs::DType::F32, I = qs::DType::F64;  // int64 in 8-byte slots
      QS_RETURN_IF_ERROR(b.put("src", F, src));
      QS_RETURN_IF_ERROR(b.put("srcn", F, srcn));
      QS_RETURN_IF_ERROR(b.put("vec", F, vec));
      QS_RETURN_IF_ERROR(b.put("fill", F, dst0));
      QS_RETURN_IF_ERROR(b.put("add", F, dst0));
      QS_RETURN_IF_ERROR(b.put("sum", F, out0));
      QS_RETURN_IF_ERROR(b.zeros("gather", (size_t)n * D));
      QS_RETURN_IF_ERROR(b.put("idx", I, idx));
      QS_RETURN_IF_ERROR(b.put("distinct", I, distinct));
      QS_RETURN_IF_ERROR(b.put("dest", I, L.dest));
      QS_RETURN_IF_ERROR(b.put("start", I, L.start));
      QS_RETURN_IF_ERROR(b.put("from", I, L.from));
      void* s = e->stream();
      QS_RETURN_IF_ERROR(qs::cuda::gather_rows(b.p("gather"), b.p("src"), b.p<int64_t>("idx"), n, D, f, s));
      QS_RETURN_IF_ERROR(qs::cuda::fill_rows(b.p("fill"), b.p("vec"), b.p<int64_t>("distinct"), 20, D, f, s));
      QS_RETURN_IF_ERROR(qs::cuda::sum_rows(b.p("sum"), b.p("src"), b.p<int64_t>("idx"), n, D, f, s));
      QS_RETURN_IF_ERROR(qs::cuda::scatter_add_rows(b.p("add"), b.p("srcn"), b.p<int64_t>("dest"), b.p<int64_t>("start"),
                                                    b.p<int64_t>("from"), m, D, f, s));
      QS_RETURN_IF_ERROR(b.get("gather", &g));
      QS_RETURN_IF_ERROR(b.get("fill", &fl));
      QS_RETURN_IF_ERROR(b.get("sum", &sm));
      return b.get("add", &ad);
    });
    QS_EXPECT(st.ok(), "D=%d: %s", D, st.to_string().c_str());
    if (!st.ok()) continue;
    printf("  D=%d (exact: the same sums in the same order)\n", D);
    check_close("gather_rows", g.data(), g_want.data(), g.size(), 0, 0);
    check_close("fill_rows", fl.data(), f_want.data(), fl.size(), 0, 0);
    check_close("sum_rows", sm.data(), s_want.data(), sm.size(), 1e-6, 1e-6);  // FMA contraction may differ
    check_close("scatter_add_rows", ad.data(), a_want.data(), ad.size(), 1e-6, 1e-6);
  }
}

#endif  // QUIETSTAR_HAVE_CUDA

QS_TEST_MAIN()
