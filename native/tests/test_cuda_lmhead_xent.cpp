// test_cuda_lmhead_xent.cpp: the CUDA LM head + cross-entropy (native/cuda/lmhead_xent.cu)
// against its CPU twin (cpu/lmhead_xent.cpp), through the lmhead_xent_forward / _backward ops
// on a CUDA engine. Skipped, with the probe's reason, without a usable GPU.
//
// h, W, dlosses random normal; about one target in five is ignore_index (-100). Shapes: N = 1
// (T = 1 decode), N and V not multiples of the 32-row / 64-id tiles, D not a multiple of the
// 32-deep step, V = 1, V > the default 4096 chunk. Checked: losses and lse (forward), dh and
// dW (backward, accumulated into nonzero tensors, and each from the device's own lse).
// f32 tolerance: the device sums its dot products in another order than the CPU gemm, so
// errors are ~1e-6 relative; we allow kTol relative to the largest magnitude of the reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/lmhead_xent.h"
#include "cuda_test_util.h"
#include "harness.h"
#include "quietstar/ops.h"

using namespace qs_test;
namespace cpu = qs::cpu;

constexpr double kTol = 1e-4;  // f32: max |cuda - cpu| / max(1, max |cpu|)
constexpr int kIgnore = -100;

// The largest |a - b|, relative to max(1, max |b|).
static double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, scale = 1;
  for (size_t i = 0; i < b.size(); i++) {
    err = std::max(err, (double)std::fabs(a[i] - b[i]));
    scale = std::max(scale, (double)std::fabs(b[i]));
  }
  return err / scale;
}

QS_TEST(cuda_lmhead_xent_matches_cpu_twin) {
  std::string why;
  auto e = cuda_engine(&why);
  if (!e) QS_SKIP(why);
  double worst[4] = {0, 0, 0, 0};  // losses, lse, dh, dW
  for (int N : {1, 37, 300}) {
    for (int D : {32, 67}) {
      for (int V : {1, 1000, 4099}) {
        Rng r(N * 7919 + D * 131 + V);
        const std::vector<float> h = random_vector<float>(r, (size_t)N * D), W = random_vector<float>(r, (size_t)V * D, 0.3);
        const std::vector<float> dl = random_vector<float>(r, N), dh0 = random_vector<float>(r, (size_t)N * D),
                                 dW0 = random_vector<float>(r, (size_t)V * D);
        std::vector<int32_t> tg(N);
        for (int n = 0; n < N; n++) tg[n] = r.below(5) == 0 && N > 1 ? kIgnore : r.below(V);

        // the CPU twin; its backward uses the device's lse, as the device's does
        std::vector<float> want_loss(N), want_lse(N), want_dh = dh0, want_dW = dW0;
        cpu::lmhead_xent_forward<float>(want_loss.data(), want_lse.data(), h.data(), W.data(), tg.data(), N, D, V,
                                        kIgnore, 0);
        std::vector<float> loss, lse, dh, dW;
        qs::Status st = e->run_sync([&]() -> qs::Status {
          qs::OpArgs a;
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {N, D}, h, &a.tensors["h"]));
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {V, D}, W, &a.tensors["weight"]));
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::I32, {N}, tg, &a.tensors["targets"]));
          qs::OpOutputs out;
          QS_RETURN_IF_ERROR(qs::run_op(*e, "lmhead_xent_forward", a, &out));
          QS_RETURN_IF_ERROR(fetch(*e, out["losses"], &loss));
          QS_RETURN_IF_ERROR(fetch(*e, out["lse"], &lse));
          a.tensors["lse"] = out["lse"];
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {N}, dl, &a.tensors["dlosses"]));
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {N, D}, dh0, &a.tensors["dh"]));
          QS_RETURN_IF_ERROR(device_tensor(*e, qs::DType::F32, {V, D}, dW0, &a.tensors["dweight"]));
          qs::OpOutputs grads;
          QS_RETURN_IF_ERROR(qs::run_op(*e, "lmhead_xent_backward", a, &grads));
          QS_RETURN_IF_ERROR(fetch(*e, grads["dh"], &dh));
          return fetch(*e, grads["dweight"], &dW);
        });
        char label[64];
        snprintf(label, sizeof label, "N=%d D=%d V=%d", N, D, V);
        QS_EXPECT(st.ok(), "%s: %s", label, st.to_string().c_str());
        if (!st.ok()) continue;
        cpu::lmhead_xent_backward<float>(want_dh.data(), want_dW.data(), dl.data(), h.data(), W.data(), tg.data(),
                                         lse.data(), N, D, V, kIgnore, 0);
        const double err[4] = {rel_err(loss, want_loss), rel_err(lse, want_lse), rel_err(dh, want_dh),
                               rel_err(dW, want_dW)};
        const char* names[4] = {"losses", "lse", "dh", "dW"};
        for (int k = 0; k < 4; k++) {
          QS_EXPECT(err[k] <= kTol, "%s: %s error %.3g > %.0e", label, names[k], err[k], kTol);
          worst[k] = std::max(worst[k], err[k]);
        }
        for (int n = 0; n < N; n++) {
          if (tg[n] == kIgnore) QS_EXPECT(loss[n] == 0 && lse[n] == 0, "%s: ignored row %d: loss %g lse %g", label, n, loss[n], lse[n]);
        }
        fprintf(stdout, "    %-20s losses %.2e  lse %.2e  dh %.2e  dW %.2e\n", label, err[0], err[1], err[2], err[3]);
      }
    }
  }
  fprintf(stdout, "    max errors (f32, relative): losses %.2e  lse %.2e  dh %.2e  dW %.2e\n", worst[0], worst[1],
          worst[2], worst[3]);
}

QS_TEST_MAIN()
