// test_engine.cpp: the native core without Node: status messages, tensors and views, the
// compute thread's ordering, op validation, parameter layout, arena reuse, and the CUDA
// backend (the elementwise kernel against its CPU twin; skipped without a GPU).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/activations.h"
#include "cpu/convert.h"
#include "engine_util.h"
#include "harness.h"
#include "quietstar/arena.h"
#include "quietstar/cuda_backend.h"
#include "quietstar/engine.h"
#include "quietstar/ops.h"
#include "quietstar/params.h"

using namespace qs;

using qs_test::make_engine;

static Tensor host_tensor(Engine& e, DType dtype, Shape shape, const void* data) {
  Tensor t;
  Status st = e.empty_on(Device::CPU, dtype, shape, &t);
  if (st.ok() && data) std::memcpy(t.raw(), data, t.nbytes());
  return t;
}

QS_TEST(status_carries_code_message_and_location) {
  Status s = QS_ERROR(INVALID_ARGUMENT, "bad %s %d", "thing", 3);
  QS_EXPECT(!s.ok(), "error status reports ok");
  QS_EXPECT(s.code() == Code::INVALID_ARGUMENT, "code");
  QS_EXPECT(s.message().find("bad thing 3 [native/tests/test_engine.cpp:") == 0, "message: %s", s.message().c_str());
  QS_EXPECT(std::string(code_name(Code::ENGINE_FAILED)) == "ENGINE_FAILED", "code name");
}

QS_TEST(views_share_storage_and_check_bounds) {
  auto e = make_engine();
  Tensor t, v, bad;
  QS_EXPECT(e->empty(DType::F32, {4, 4}, &t).ok(), "alloc");
  QS_EXPECT(t.view(4, {2, 2}, &v).ok(), "view");
  v.data<float>()[0] = 7;
  QS_EXPECT(t.data<float>()[4] == 7, "view writes through");
  QS_EXPECT(!t.view(15, {2}, &bad).ok(), "out-of-bounds view accepted");
  QS_EXPECT(((uintptr_t)t.raw() % 64) == 0, "host storage not 64-byte aligned");
  int64_t before = e->memory().host_bytes;
  t = Tensor();
  QS_EXPECT(e->memory().host_bytes == before, "freed while a view is alive");
  v = Tensor();
  QS_EXPECT(e->memory().host_bytes == before - 64, "not freed after the last view: %lld", (long long)e->memory().host_bytes);
}

QS_TEST(compute_thread_runs_jobs_in_order) {
  auto e = make_engine();
  std::vector<int> order;
  std::atomic<int> done{0};
  for (int i = 0; i < 50; i++) e->submit([&, i] { order.push_back(i); done++; });
  QS_EXPECT(e->run_sync([] { return Status::Ok(); }).ok(), "sync job");
  QS_EXPECT(done == 50, "jobs not run before a later job: %d", done.load());
  bool ordered = true;
  for (int i = 0; i < 50; i++) ordered &= order[i] == i;
  QS_EXPECT(ordered, "jobs ran out of order");
}

QS_TEST(ops_validate_shapes_dtypes_and_ranges) {
  auto e = make_engine();
  float x[6] = {1, 2, 3, 4, 5, 6};
  OpArgs args;
  args.tensors["inp"] = host_tensor(*e, DType::F32, {2, 3}, x);
  args.tensors["weight"] = host_tensor(*e, DType::F32, {4}, x);
  OpOutputs out;
  Status st = run_op(*e, "layernorm_forward", args, &out);
  QS_EXPECT(st.code() == Code::INVALID_ARGUMENT, "shape mismatch accepted");
  QS_EXPECT(st.message().find("'weight' must have shape [C], where C = 3") != std::string::npos, "%s", st.message().c_str());
  args.tensors["weight"] = host_tensor(*e, DType::F32, {3}, x);
  st = run_op(*e, "layernorm_forward", args, &out);
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
  QS_EXPECT(out.count("out") && out["out"].shape() == Shape({2, 3}), "output shape");
  QS_EXPECT(out.count("mean") && out["mean"].shape() == Shape({2}), "mean shape");
  // ids out of range
  int32_t ids[2] = {0, 5};
  OpArgs emb;
  emb.tensors["ids"] = host_tensor(*e, DType::I32, {2}, ids);
  emb.tensors["table"] = host_tensor(*e, DType::F32, {3, 2}, x);
  st = run_op(*e, "embedding_forward", emb, &out);
  QS_EXPECT(st.message().find("'ids'[1] = 5 is out of range [0, 3)") != std::string::npos, "%s", st.message().c_str());
  // missing argument, unknown op, GQA mismatch
  OpArgs none;
  st = run_op(*e, "gelu_forward", none, &out);
  QS_EXPECT(st.message().find("missing tensor argument 'inp'") != std::string::npos, "%s", st.message().c_str());
  st = run_op(*e, "nope", none, &out);
  QS_EXPECT(st.message().find("unknown op 'nope'") != std::string::npos, "%s", st.message().c_str());
  std::vector<float> qkv(2 * 3 * 4, 0.f);
  OpArgs att;
  att.tensors["q"] = host_tensor(*e, DType::F32, {1, 2, 3, 4}, qkv.data());
  att.tensors["k"] = host_tensor(*e, DType::F32, {1, 2, 2, 4}, qkv.data());
  att.tensors["v"] = host_tensor(*e, DType::F32, {1, 2, 2, 4}, qkv.data());
  st = run_op(*e, "attention_forward", att, &out);
  QS_EXPECT(st.message().find("H = 3 must be a multiple of key/value heads Hkv = 2") != std::string::npos, "%s",
            st.message().c_str());
}

QS_TEST(parameter_layout_aligns_and_orders_views) {
  ParamLayout layout;
  Status st = ParamLayout::create({{"norm", {7}, false}, {"w", {3, 5}, true}, {"b", {3}, false}}, &layout);
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
  QS_EXPECT(layout.entries()[0].name == "w" && layout.entries()[0].offset == 0, "decayed first");
  QS_EXPECT(layout.entries()[1].name == "norm" && layout.entries()[1].offset == 16, "aligned to 16");
  QS_EXPECT(layout.entries()[2].name == "b" && layout.entries()[2].offset == 32, "b offset %lld", (long long)layout.entries()[2].offset);
  QS_EXPECT(layout.decay_end() == 16 && layout.total() == 48, "decay_end %lld total %lld", (long long)layout.decay_end(), (long long)layout.total());
  ParamLayout dup;
  QS_EXPECT(!ParamLayout::create({{"a", {1}, true}, {"a", {2}, true}}, &dup).ok(), "duplicate names accepted");
  QS_EXPECT(!ParamLayout::create({{"a", {0}, true}}, &dup).ok(), "empty dimension accepted");
}

QS_TEST(adamw_step_respects_decay_ranges) {
  auto e = make_engine();
  ParamLayout layout;
  ParamLayout::create({{"w", {4}, true}, {"g", {4}, false}}, &layout);
  std::unique_ptr<ParamSet> p;
  QS_EXPECT(ParamSet::create(*e, DType::F64, layout, true, &p).ok(), "create");
  double* w = p->params().data<double>();
  for (int i = 0; i < 32; i++) w[i] = 1.0;
  AdamWConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.5;
  QS_EXPECT(p->adamw_step(c).ok(), "step");
  // zero gradients: only decay moves decayed weights (1 - lr·wd); non-decayed stay at 1
  // (hyper-parameters are passed as float, so 0.1·0.5 is exact only to ~1e-8)
  QS_EXPECT(std::fabs(w[0] - 0.95) < 1e-7, "decayed weight %g", w[0]);
  QS_EXPECT(w[16] == 1.0, "non-decayed weight moved: %g", w[16]);
  QS_EXPECT(p->step() == 1, "step count");
}

// Spec §3's warning as an oracle: with parameters and moments in bf16 (bf16_state) and one AdamW
// step of lr 1e-6 (|update| ≈ lr), a weight moves only if half its bf16 ulp is below 1e-6, i.e.
// |w| ≲ 2.5e-4: about 2% of N(0, 0.02) weights. With f32 masters every weight moves.
QS_TEST(adamw_bf16_state_freezes_most_weights_at_lr_1e6) {
  auto e = make_engine();
  const int n = 100000;
  ParamLayout layout;
  ParamLayout::create({{"w", {n}, false}}, &layout);
  qs_test::Rng rng(3);
  std::vector<float> w0(n), g(n);
  for (int i = 0; i < n; i++) {
    // the bf16 parameters of the reference: N(0, 0.02) rounded to bf16
    uint16_t b;
    float x = (float)(0.02 * rng.normal());
    cpu::f32_to_bf16(&b, &x, 1);
    cpu::bf16_to_f32(&w0[i], &b, 1);
    g[i] = (float)rng.normal();
  }
  double moved[2];
  for (int bf16 = 0; bf16 < 2; bf16++) {
    std::unique_ptr<ParamSet> p;
    QS_EXPECT(ParamSet::create(*e, DType::F32, layout, true, &p).ok(), "create");
    std::copy(w0.begin(), w0.end(), p->params().data<float>());
    std::copy(g.begin(), g.end(), p->grads().data<float>());
    AdamWConfig c;
    c.lr = 1e-6, c.weight_decay = 0, c.bf16_state = bf16 == 1;
    QS_EXPECT(p->adamw_step(c).ok(), "step");
    int k = 0;
    for (int i = 0; i < n; i++) k += p->params().data<float>()[i] != w0[i];
    moved[bf16] = (double)k / n;
    if (bf16) {  // every stored value is a bf16 value
      for (int i = 0; i < n; i += 997) {
        uint32_t u;
        std::memcpy(&u, &p->params().data<float>()[i], 4);
        QS_EXPECT((u & 0xffffu) == 0, "param %d is not a bf16 value", i);
      }
    }
  }
  printf("    share of weights moved by one lr 1e-6 step: f32 masters %.4f, bf16 state %.4f\n", moved[0], moved[1]);
  QS_EXPECT(moved[0] > 0.99, "f32 masters: only %.3f moved", moved[0]);
  QS_EXPECT(moved[1] > 0.005 && moved[1] < 0.05, "bf16 state: %.4f moved (spec §3: about 2%%)", moved[1]);
}

QS_TEST(arena_reuses_memory_while_the_key_is_unchanged) {
  auto e = make_engine();
  Arena arena;
  Tensor a, b;
  for (int step = 0; step < 3; step++) {
    QS_EXPECT(arena.begin(*e, "B=2,T=8", 4096).ok(), "begin");
    QS_EXPECT(arena.take(DType::F32, {2, 8, 16}, &a).ok(), "take a");
    QS_EXPECT(arena.take(DType::F32, {2, 8}, &b).ok(), "take b");
    QS_EXPECT((uintptr_t)b.raw() % 64 == 0, "alignment");
  }
  QS_EXPECT(arena.reallocations() == 1, "reallocated %d times for one shape", arena.reallocations());
  QS_EXPECT(arena.begin(*e, "B=4,T=8", 8192).ok(), "begin new");
  QS_EXPECT(arena.reallocations() == 2, "new key must reallocate once");
  Tensor big;
  QS_EXPECT(!arena.take(DType::F32, {4096}, &big).ok(), "overflow not reported");
}

QS_TEST(cuda_probe_reports_a_reason_when_unusable) {
  const cuda::RuntimeInfo& info = cuda::probe();
#ifdef QUIETSTAR_HAVE_CUDA
  QS_EXPECT(info.compiled, "CUDA build reports not compiled");
  QS_EXPECT(!info.archs.empty(), "no architectures recorded");
#endif
  if (!info.usable) {
    QS_EXPECT(!info.unavailable_reason.empty(), "unusable without a reason");
    fprintf(stdout, "    CUDA unavailable: %s\n", info.unavailable_reason.c_str());
    std::unique_ptr<Engine> e;
    EngineOptions o;
    o.device = "cuda";
    Status st = Engine::create(o, &e);
    QS_EXPECT(st.code() == Code::UNAVAILABLE, "explicit cuda gave %s", st.to_string().c_str());
  }
}

QS_TEST(cuda_residual_forward_matches_cpu_twin) {
  if (!cuda::probe().usable) QS_SKIP("no usable CUDA device: " + cuda::probe().unavailable_reason);
  auto e = make_engine("cuda");
  if (!e) { QS_EXPECT(false, "cuda engine"); return; }
  for (int64_t n : {1, 255, 256, 1000003}) {
    qs_test::Rng rng(n);
    auto a = qs_test::random_vector<float>(rng, n), b = qs_test::random_vector<float>(rng, n);
    std::vector<float> want(n), got(n);
    cpu::residual_forward<float>(want.data(), a.data(), b.data(), n);
    Status st = e->run_sync([&]() -> Status {
      OpArgs args;
      QS_RETURN_IF_ERROR(e->empty(DType::F32, {n}, &args.tensors["a"]));
      QS_RETURN_IF_ERROR(e->empty(DType::F32, {n}, &args.tensors["b"]));
      QS_RETURN_IF_ERROR(e->upload(a.data(), n * 4, args.tensors["a"]));
      QS_RETURN_IF_ERROR(e->upload(b.data(), n * 4, args.tensors["b"]));
      OpOutputs out;
      QS_RETURN_IF_ERROR(run_op(*e, "residual_forward", args, &out));
      return e->download(out["out"], got.data(), n * 4);
    });
    QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
    qs_test::check_close(("residual_forward n=" + std::to_string(n)).c_str(), got.data(), want.data(), n, 0, 0);
  }
}

QS_TEST(cuda_device_cache_reuses_blocks_and_explains_oom) {
  if (!cuda::probe().usable) QS_SKIP("no usable CUDA device: " + cuda::probe().unavailable_reason);
  auto e = make_engine("cuda");
  if (!e) { QS_EXPECT(false, "cuda engine"); return; }
  Status st = e->run_sync([&]() -> Status {
    Tensor a;
    QS_RETURN_IF_ERROR(e->empty(DType::F32, {1 << 20}, &a));
    MemorySnapshot before = e->memory();
    a = Tensor();
    QS_RETURN_IF_ERROR(e->empty(DType::F32, {1 << 20}, &a));  // the freed block, from the cache
    MemorySnapshot after = e->memory();
    QS_EXPECT(after.device_allocations == before.device_allocations, "cudaMalloc again for a freed size");
    QS_EXPECT(after.device_cache_hits == before.device_cache_hits + 1, "no cache hit");
    QS_EXPECT(after.device_reserved >= after.device_bytes && after.device_bytes == 4 << 20, "reserved %lld, bytes %lld",
              (long long)after.device_reserved, (long long)after.device_bytes);
    Tensor huge;
    Status oom = e->empty(DType::U8, {after.device_total * 2}, &huge);
    QS_EXPECT(oom.code() == Code::OUT_OF_MEMORY, "twice the GPU: %s", oom.to_string().c_str());
    QS_EXPECT(oom.message().find(std::to_string(after.device_total * 2) + " bytes") != std::string::npos, "%s",
              oom.message().c_str());
    QS_EXPECT(!e->failed(), "out of memory is not a lost context");
    a = Tensor();
    QS_EXPECT(e->release_cached_memory() > 0 && e->memory().device_cached == 0, "cache not given back");
    return e->empty(DType::F32, {16}, &a);  // still usable
  });
  QS_EXPECT(st.ok(), "%s", st.to_string().c_str());
}

QS_TEST(cpu_engine_has_no_device_cache) {
  auto e = make_engine();
  MemorySnapshot m = e->memory();
  QS_EXPECT(m.device_reserved == 0 && m.device_allocations == 0 && m.device_cache_hits == 0, "device figures on cpu");
  QS_EXPECT(e->release_cached_memory() == 0 && !e->failed() && e->check_alive().ok(), "cpu engine state");
}

QS_TEST(cublas_loader_reports_where_or_why) {
  const cuda::BlasInfo& info = cuda::load_blas({});
  if (info.found) {
    QS_EXPECT(!info.path.empty(), "found without a path");
    fprintf(stdout, "    cuBLAS: %s\n", info.path.c_str());
  } else {
    QS_EXPECT(!info.reason.empty(), "not found without a reason");
    fprintf(stdout, "    cuBLAS: %s\n", info.reason.c_str());
  }
}

QS_TEST_MAIN()
