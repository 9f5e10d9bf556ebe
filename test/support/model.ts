/**
 * Seeded random models and token ids for the model and generation suites: the same seed gives
 * the same values on every run, so a failure reproduces.
 */
import type { Model } from '../../lib/index.js';
import { rng } from './engine.js';

/** n token ids uniform in [0, vocab). */
export function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const r = rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/**
 * Overwrites every parameter view with uniform(-s, s) values, s = `scale` or `scale(name)` per
 * view (padding stays 0), so that biases and gains matter.
 */
export async function randomizeParams(model: Model, seed: number, scale: number | ((name: string) => number) = 0.5): Promise<void> {
  const flat = model.params.buffer('params');
  const values = model.dtype === 'f64' ? new Float64Array(flat.size) : new Float32Array(flat.size);
  const r = rng(seed);
  for (const e of model.params.entries) {
    const s = typeof scale === 'number' ? scale : scale(e.name);
    for (let i = 0; i < e.numel; i++) values[e.offset + i] = (r() * 2 - 1) * s;
  }
  using src = model.engine.tensor(values, [flat.size]);
  await model.engine.ops.copy({ src, dst: flat });
}
