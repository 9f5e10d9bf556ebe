/**
 * Precision and memory options at the API boundary: the engine's matrix-product precision, the
 * reference's pure-bf16 optimizer state (AdamW bf16State) and activation recomputation in the
 * Quiet-STaR options and trainer config. (Their numerics are checked natively: test_engine for
 * bf16State's freezing, test_quietstar for recomputation's identical gradients, and the CUDA
 * tests for the bf16 GEMMs on a GPU.)
 */
import test from 'ava';

import { Engine, QuietstarError, resolveQuietStarConfig, resolveQuietStarOptions } from '../lib/index.js';
import { cpuEngine } from './support/engine.js';

test('a CPU engine computes in f32 whatever precision is asked; bad names are refused', (t) => {
  for (const precision of ['auto', 'f32', 'tf32', 'bf16'] as const) {
    using engine = Engine.create({ device: 'cpu', precision });
    t.is(engine.precision, 'f32');
  }
  const err = t.throws(() => Engine.create({ device: 'cpu', precision: 'fp8' as never }), { instanceOf: QuietstarError });
  t.regex(err?.message ?? '', /engine\.precision must be 'auto', 'f32', 'tf32' or 'bf16' \(got "fp8"\)/);
});

test('adamwStep with bf16State leaves every parameter and moment a bf16 value', async (t) => {
  using engine = cpuEngine();
  using params = await engine.createParameters([{ name: 'w', shape: [64] }]);
  const values = Float32Array.from({ length: 64 }, (_, i) => 0.02 * Math.sin(i + 1));
  const grads = Float32Array.from({ length: 64 }, (_, i) => Math.cos(3 * i));
  await engine.ops.copy({ src: engine.tensor(values, [64]), dst: params.view('w') });
  await engine.ops.copy({ src: engine.tensor(grads, [64]), dst: params.view('w', 'grads') });
  await params.adamwStep({ lr: 1e-3, weightDecay: 0, bf16State: true });
  for (const buffer of ['params', 'm', 'v'] as const) {
    const bits = new Uint32Array((await params.view('w', buffer).data()).buffer);
    t.true(
      bits.every((u) => (u & 0xffff) === 0),
      `${buffer}: a value is not a bf16 value`,
    );
  }
  await t.throwsAsync(params.adamwStep({ lr: 1e-3, bf16State: 'yes' as never }), { message: /bf16State must be a boolean/ });
});

test('recomputeActivations and bf16State are validated options with false defaults', (t) => {
  t.false(resolveQuietStarOptions({}).recomputeActivations);
  t.true(resolveQuietStarOptions({ recomputeActivations: true }).recomputeActivations);
  t.throws(() => resolveQuietStarOptions({ recomputeActivations: 1 as never }), {
    message: /quietstar\.recomputeActivations: must be true or false/,
  });
  const c = resolveQuietStarConfig({ recomputeActivations: true, bf16State: true });
  t.true(c.recomputeActivations);
  t.true(c.bf16State);
  t.false(resolveQuietStarConfig({}).bf16State);
  t.throws(() => resolveQuietStarConfig({ bf16State: 'on' as never }), { message: /config\.bf16State must be a boolean/ });
});
