/**
 * Every differentiable op, through the binding, in float64: the backward op's gradient
 * against central finite differences of the forward op. The C++ tests prove the kernels;
 * this proves the op layer wires each argument to the right kernel parameter and that
 * gradients accumulate into the tensors passed in.
 *
 * Loss L = Σ_k <out_k, w_k> for fixed random w_k, so dL/dout_k = w_k. h = 1e-6 in f64 gives
 * truncation ~1e-12 and rounding ~1e-10 relative: agreement to 1e-6 means the gradient is right.
 */
import test, { type ExecutionContext } from 'ava';

import type { Engine, Tensor } from '../lib/index.js';
import { cpuEngine, randomArray, rng } from './support/engine.js';

type Inputs = Record<string, Tensor>;

interface Case {
  /** Float inputs to perturb (f64), by name and shape. */
  float: Record<string, number[]>;
  /** Fixed non-float inputs (ids, positions, masks). */
  fixed?: (e: Engine) => Inputs;
  /** Runs the forward op; returns the outputs that enter the loss. */
  forward: (e: Engine, x: Inputs) => Promise<Tensor[]>;
  /** Runs the backward op with dL/dout = w; fills grads[name] (+=) for every float input. */
  backward: (e: Engine, x: Inputs, w: Tensor[], outs: Tensor[], grads: Inputs) => Promise<void>;
  /** Inputs whose gradient is not defined (e.g. a table only indexed). */
  skip?: string[];
}

async function dot(outs: Tensor[], ws: Float64Array[]): Promise<number> {
  let s = 0;
  for (let k = 0; k < outs.length; k++) {
    const o = await outs[k]!.data();
    const w = ws[k]!;
    for (let i = 0; i < o.length; i++) s += (o[i] as number) * (w[i] as number);
  }
  return s;
}

async function gradcheck(t: ExecutionContext, name: string, c: Case, seed = 1): Promise<void> {
  using e = cpuEngine();
  const values: Record<string, Float64Array> = {};
  let s = seed;
  for (const [k, shape] of Object.entries(c.float)) values[k] = randomArray(shape.reduce((a, b) => a * b, 1), s++ * 7919);
  const fixed = c.fixed ? c.fixed(e) : {};
  const build = (): Inputs => {
    const x: Inputs = { ...fixed };
    for (const [k, shape] of Object.entries(c.float)) x[k] = e.tensor(values[k]!, shape, 'f64');
    return x;
  };
  const x0 = build();
  const outs = await c.forward(e, x0);
  const ws = outs.map((o, k) => randomArray(o.size, 1000 + k));
  const wTensors = outs.map((o, k) => e.tensor(ws[k]!, o.shape, 'f64'));
  const grads: Inputs = {};
  const prefill: Record<string, Float64Array> = {};
  for (const [k, shape] of Object.entries(c.float)) {
    // Start from non-zero gradients: the backward must ADD into them.
    prefill[k] = randomArray(values[k]!.length, 5000 + k.length);
    grads[k] = e.tensor(prefill[k]!, shape, 'f64');
  }
  await c.backward(e, x0, wTensors, outs, grads);
  const h = 1e-6;
  const r = rng(seed);
  for (const k of Object.keys(c.float)) {
    if (c.skip?.includes(k)) continue;
    const analytic = (await grads[k]!.data()) as Float64Array;
    const v = values[k]!;
    const coords = v.length <= 12 ? [...v.keys()] : Array.from({ length: 12 }, () => Math.floor(r() * v.length));
    let worst = 0;
    for (const i of coords) {
      const saved = v[i]!;
      v[i] = saved + h;
      const lp = await dot(await c.forward(e, build()), ws);
      v[i] = saved - h;
      const lm = await dot(await c.forward(e, build()), ws);
      v[i] = saved;
      const numeric = (lp - lm) / (2 * h);
      const got = analytic[i]! - prefill[k]![i]!;
      const err = Math.abs(got - numeric);
      const scale = Math.max(Math.abs(numeric), Math.abs(got), 1e-3);
      worst = Math.max(worst, err / scale);
      // absolute floor: f64 rounding of L over 2h (~1e-16·|L|/1e-6) and the prefill subtraction
      if (!(err <= 1e-6 * scale + 1e-8)) {
        t.fail(`${name}: d/d${k}[${i}] analytic ${got} numeric ${numeric}`);
        return;
      }
    }
    t.log(`${name} d/d${k}: ${coords.length} coords, max rel err ${worst.toExponential(2)}`);
  }
  t.pass();
}

const ids = (e: Engine, a: number[], shape?: number[]) => e.tensor(new Int32Array(a), shape ?? [a.length]);

for (const layout of ['out_in', 'in_out'] as const) {
  test(`linear (${layout}) with bias`, (t) =>
    gradcheck(t, `linear ${layout}`, {
      float: { inp: [2, 3, 5], weight: layout === 'out_in' ? [4, 5] : [5, 4], bias: [4] },
      forward: async (e, x) => [(await e.ops.linearForward({ inp: x.inp!, weight: x.weight!, bias: x.bias!, layout })).out],
      backward: async (e, x, [w], _o, g) => {
        await e.ops.linearBackward({ dout: w!, inp: x.inp!, weight: x.weight!, dinp: g.inp, dweight: g.weight, dbias: g.bias, layout });
      },
    }));
}

test('embedding and position embedding', (t) =>
  gradcheck(t, 'embedding', {
    float: { table: [6, 3], wpe: [5, 3] },
    fixed: (e) => ({ ids: ids(e, [1, 5, 1, 0], [2, 2]), pos: ids(e, [0, 1, 4, 1], [2, 2]) }),
    forward: async (e, x) => {
      const { out } = await e.ops.embeddingForward({ ids: x.ids!, table: x.table! });
      return [(await e.ops.positionEmbeddingForward({ inp: out, pos: x.pos!, wpe: x.wpe! })).out];
    },
    backward: async (e, x, [w], _o, g) => {
      await e.ops.embeddingBackward({ dout: w!, ids: x.ids!, dtable: g.table! });
      await e.ops.positionEmbeddingBackward({ dout: w!, pos: x.pos!, dwpe: g.wpe! });
    },
  }));

test('layernorm', (t) =>
  gradcheck(t, 'layernorm', {
    float: { inp: [3, 7], weight: [7], bias: [7] },
    forward: async (e, x) => [(await e.ops.layerNormForward({ inp: x.inp!, weight: x.weight!, bias: x.bias! })).out],
    backward: async (e, x, [w], _o, g) => {
      const f = await e.ops.layerNormForward({ inp: x.inp!, weight: x.weight!, bias: x.bias! });
      await e.ops.layerNormBackward({ dout: w!, inp: x.inp!, weight: x.weight!, mean: f.mean, rstd: f.rstd, dinp: g.inp, dweight: g.weight, dbias: g.bias });
    },
  }));

test('rmsnorm', (t) =>
  gradcheck(t, 'rmsnorm', {
    float: { inp: [2, 2, 5], weight: [5] },
    forward: async (e, x) => [(await e.ops.rmsNormForward({ inp: x.inp!, weight: x.weight! })).out],
    backward: async (e, x, [w], _o, g) => {
      const f = await e.ops.rmsNormForward({ inp: x.inp!, weight: x.weight! });
      await e.ops.rmsNormBackward({ dout: w!, inp: x.inp!, weight: x.weight!, rstd: f.rstd, dinp: g.inp, dweight: g.weight });
    },
  }));

test('rope at arbitrary positions', (t) =>
  gradcheck(t, 'rope', {
    float: { inp: [3, 2, 6] },
    fixed: (e) => ({ pos: ids(e, [5, 0, 17]) }),
    forward: async (e, x) => [(await e.ops.ropeForward({ inp: x.inp!, pos: x.pos!, theta: 500 })).out],
    backward: async (e, x, [w], _o, g) => {
      await e.ops.ropeBackward({ dout: w!, pos: x.pos!, dinp: g.inp!, theta: 500 });
    },
  }));

test('gelu, silu and swiglu', (t) =>
  gradcheck(t, 'pointwise', {
    float: { a: [9], b: [9], gate: [2, 4], up: [2, 4] },
    forward: async (e, x) => [
      (await e.ops.geluForward({ inp: x.a! })).out,
      (await e.ops.siluForward({ inp: x.b! })).out,
      (await e.ops.swiGluForward({ gate: x.gate!, up: x.up! })).out,
    ],
    backward: async (e, x, [w0, w1, w2], _o, g) => {
      await e.ops.geluBackward({ inp: x.a!, dout: w0!, dinp: g.a! });
      await e.ops.siluBackward({ inp: x.b!, dout: w1!, dinp: g.b! });
      await e.ops.swiGluBackward({ gate: x.gate!, up: x.up!, dout: w2!, dgate: g.gate!, dup: g.up! });
    },
  }));

// ReLU's kink at 0 is avoided by the random inputs (|x| of ~1e-6 has negligible odds with
// this seed); gradient 0 below 0 is then what the finite differences see too.
test('relu', (t) =>
  gradcheck(t, 'relu', {
    float: { a: [2, 6] },  // 12 values: every coordinate is checked
    forward: async (e, x) => [(await e.ops.reluForward({ inp: x.a! })).out],
    backward: async (e, x, [w], _o, g) => {
      await e.ops.reluBackward({ inp: x.a!, dout: w!, dinp: g.a! });
    },
  }));

test('residual', (t) =>
  gradcheck(t, 'residual', {
    float: { a: [2, 3], b: [2, 3] },
    forward: async (e, x) => [(await e.ops.residualForward({ a: x.a!, b: x.b! })).out],
    backward: async (e, _x, [w], _o, g) => {
      await e.ops.residualBackward({ dout: w!, da: g.a, db: g.b });
    },
  }));

test('attention with GQA, padding and a sliding window', (t) =>
  gradcheck(t, 'attention', {
    float: { q: [2, 5, 4, 3], k: [2, 5, 2, 3], v: [2, 5, 2, 3] },
    fixed: (e) => ({ kValid: e.tensor(new Uint8Array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1]), [2, 5]) }),
    forward: async (e, x) => [(await e.ops.attentionForward({ q: x.q!, k: x.k!, v: x.v!, kValid: x.kValid!, window: 3 })).out],
    backward: async (e, x, [w], _o, g) => {
      const f = await e.ops.attentionForward({ q: x.q!, k: x.k!, v: x.v!, kValid: x.kValid!, window: 3 });
      await e.ops.attentionBackward({ dout: w!, q: x.q!, k: x.k!, v: x.v!, out: f.out, lse: f.lse, kValid: x.kValid!, window: 3, dq: g.q, dk: g.k, dv: g.v });
    },
  }));

// Quiet-STaR's chain queries: B 2 documents x P 2 rows, T 5, 3 chain steps, GQA 4:2, d 3.
// qChain (R, Sq, T, H, d), kBase/vBase (B, T, Hkv, d), kChain/vChain (R, Sk, T, Hkv, d).
test('thought attention (packed chain steps, shared base K/V, padding, GQA, window)', (t) =>
  gradcheck(t, 'thought_attention', {
    float: { qChain: [4, 3, 5, 4, 3], kBase: [2, 5, 2, 3], vBase: [2, 5, 2, 3], kChain: [4, 3, 5, 2, 3], vChain: [4, 3, 5, 2, 3] },
    fixed: (e) => ({ valid: e.tensor(new Uint8Array([1, 1, 1, 1, 0, 1, 0, 1, 1, 1]), [2, 5]) }),
    forward: async (e, x) => [
      (await e.ops.thoughtAttentionForward({ qChain: x.qChain!, kBase: x.kBase!, vBase: x.vBase!, kChain: x.kChain!, vChain: x.vChain!, valid: x.valid!, window: 3 })).out,
    ],
    backward: async (e, x, [w], _o, g) => {
      const a = { qChain: x.qChain!, kBase: x.kBase!, vBase: x.vBase!, kChain: x.kChain!, vChain: x.vChain!, valid: x.valid!, window: 3 };
      const f = await e.ops.thoughtAttentionForward(a);
      await e.ops.thoughtAttentionBackward({
        ...a, dout: w!, out: f.out, lse: f.lse,
        dqChain: g.qChain, dkBase: g.kBase, dvBase: g.vBase, dkChain: g.kChain, dvChain: g.vChain,
      });
    },
  }));

test('LM head + cross-entropy with an ignored target', (t) =>
  gradcheck(t, 'lmhead_xent', {
    float: { h: [4, 5], weight: [11, 5] },
    fixed: (e) => ({ targets: ids(e, [3, -100, 10, 0]) }),
    forward: async (e, x) => [(await e.ops.lmHeadXentForward({ h: x.h!, weight: x.weight!, targets: x.targets!, chunk: 4 })).losses],
    backward: async (e, x, [w], _o, g) => {
      const f = await e.ops.lmHeadXentForward({ h: x.h!, weight: x.weight!, targets: x.targets!, chunk: 4 });
      await e.ops.lmHeadXentBackward({ dlosses: w!, h: x.h!, weight: x.weight!, targets: x.targets!, lse: f.lse, dh: g.h, dweight: g.weight, chunk: 4 });
    },
  }));
