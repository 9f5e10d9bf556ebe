/**
 * The Model through the binding: configurations and their errors, parameter names from the
 * native core, deterministic initialisation, a float64 finite-difference check of whole-model
 * gradients (tiny GPT-2 and tiny Llama with GQA and biases), KV-cached decoding against full
 * logits (also left-padded batches), token losses, input errors and dispose semantics.
 */
import test from 'ava';

import { Model, createModelConfig, modelFamily, type ModelConfigInput } from '../lib/index.js';
import { loadBinding } from '../lib/native.js';
import { assertClose, cpuEngine, rng } from './support/engine.js';
import { rejectsWith, throwsWith } from './support/errors.js';
import { randomIds, randomizeParams } from './support/model.js';

const GPT2: ModelConfigInput = { modelType: 'gpt2', vocabSize: 11, dModel: 8, nLayers: 2, nHeads: 2, maxSeqLen: 16 };
// GQA 4:2, q/k/v biases, untied head.
const LLAMA: ModelConfigInput = {
  modelType: 'llama',
  vocabSize: 13,
  dModel: 16,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  dFF: 24,
  maxSeqLen: 32,
  qkvBias: true,
  tieEmbeddings: false,
};
// Every optional bias, a tied head and a non-default head width and RoPE base.
const LLAMA_BIASES: ModelConfigInput = {
  modelType: 'llama',
  vocabSize: 9,
  dModel: 12,
  nLayers: 1,
  nHeads: 2,
  nKvHeads: 1,
  headDim: 4,
  dFF: 10,
  maxSeqLen: 16,
  qkvBias: true,
  oBias: true,
  mlpBias: true,
  tieEmbeddings: true,
  ropeTheta: 500,
};
const MISTRAL: ModelConfigInput = { ...LLAMA, modelType: 'mistral', qkvBias: false, slidingWindow: 3 };

async function setParam(model: Model, index: number, value: number): Promise<void> {
  using src = model.engine.tensor(new Float64Array([value]), [1]);
  using dst = model.params.buffer('params').view(index, [1]);
  await model.engine.ops.copy({ src, dst });
}

// ---------------------------------------------------------------------------------------------
// configuration

test('createModelConfig fills each family\'s defaults', (t) => {
  const g = createModelConfig({ modelType: 'gpt2', vocabSize: 50257, dModel: 768, nLayers: 12, nHeads: 12 });
  t.deepEqual(g, {
    modelType: 'gpt2',
    vocabSize: 50257,
    dModel: 768,
    nLayers: 12,
    nHeads: 12,
    nKvHeads: 12,
    headDim: 64,
    dFF: 3072,
    maxSeqLen: 1024,
    normEps: 1e-5,
    ropeTheta: 10000,
    tieEmbeddings: true,
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    slidingWindow: 0,
  });
  t.is(modelFamily(g), 'gpt2');
  const l = createModelConfig({ modelType: 'llama', vocabSize: 32000, dModel: 64, nLayers: 2, nHeads: 8, nKvHeads: 2 });
  t.is(modelFamily(l), 'llama');
  t.like(l, { headDim: 8, nKvHeads: 2, dFF: 256, tieEmbeddings: false, qkvBias: false, oBias: false, mlpBias: false, maxSeqLen: 2048 });
  t.like(createModelConfig({ modelType: 'qwen2', vocabSize: 10, dModel: 8, nLayers: 1, nHeads: 2 }), { qkvBias: true, oBias: false });
  t.is(modelFamily({ modelType: 'mistral' }), 'llama');
  t.like(createModelConfig({ ...LLAMA, bosTokenId: 1, eosTokenId: [2, 3] }), { bosTokenId: 1, eosTokenId: [2, 3] });
});

test('createModelConfig errors name the field', (t) => {
  const base = { modelType: 'llama', vocabSize: 32, dModel: 64, nLayers: 2, nHeads: 8 } as const;
  const bad = (partial: object, pattern: RegExp): void =>
    throwsWith(t, () => createModelConfig({ ...base, ...partial } as ModelConfigInput), 'INVALID_ARGUMENT', pattern);
  bad({ nKvHeads: 3 }, /^config\.nKvHeads: 3 does not divide nHeads 8/);
  bad({ vocabSize: 0 }, /^config\.vocabSize: must be an integer/);
  bad({ dModel: 12.5 }, /^config\.dModel: must be an integer/);
  bad({ modelType: 'bert' }, /^config\.modelType: must be one of gpt2, llama, mistral, qwen2 \(got "bert"\)/);
  bad({ headDim: 7 }, /^config\.headDim: RoPE needs an even head width/);
  bad({ dModel: 60 }, /^config\.nHeads: 8 does not divide dModel 60/);
  bad({ normEps: -1 }, /^config\.normEps: must be a finite number > 0/);
  bad({ ropeTheta: Number.NaN }, /^config\.ropeTheta/);
  bad({ tieEmbeddings: 'yes' }, /^config\.tieEmbeddings: must be a boolean/);
  bad({ slidingWindow: -1 }, /^config\.slidingWindow/);
  bad({ nLayer: 2 }, /^config\.nLayer: not a ModelConfig field/);
  bad({ eosTokenId: [1, 32] }, /^config\.eosTokenId\[1\]: must be an integer in \[0, 31\]/);
  bad({ modelType: 'gpt2', nKvHeads: 4 }, /^config\.nKvHeads: GPT-2 has no grouped-query attention/);
  bad({ modelType: 'gpt2', qkvBias: false }, /^config\.qkvBias: GPT-2 always has this bias/);
  bad({ modelType: 'gpt2', headDim: 4 }, /^config\.headDim: GPT-2 needs nHeads·headDim = dModel 64/);
});

test('the native config check reaches JS as INVALID_ARGUMENT naming the field', async (t) => {
  const binding = loadBinding();
  const good = createModelConfig(LLAMA);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, nKvHeads: 3 }), 'INVALID_ARGUMENT', /config\.nKvHeads: 3 does not divide config\.nHeads 4/);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, headDim: 5 }), 'INVALID_ARGUMENT', /config\.headDim: must be even/);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, dFF: undefined } as never), 'INVALID_ARGUMENT', /config\.dFF must be a number/);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, nLayers: 1.5 }), 'INVALID_ARGUMENT', /config\.nLayers must be an integer/);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, modelType: 'bert' }), 'INVALID_ARGUMENT', /config\.modelType/);
  throwsWith(t, () => binding.modelParamSpecs({ ...good, qkvBias: 1 } as never), 'INVALID_ARGUMENT', /config\.qkvBias must be a boolean/);
  // createModel checks the parameters against the config view by view.
  using e = cpuEngine(1);
  const other = await e.native.createParameters(binding.modelParamSpecs(createModelConfig(GPT2)), 'f32', false);
  await rejectsWith(t, e.native.createModel(good, other), 'INVALID_ARGUMENT', /Model\.create: the parameters have no view 'model\.embed_tokens\.weight'/);
  throwsWith(t, () => e.native.createModel({ ...good, slidingWindow: -2 }, other), 'INVALID_ARGUMENT', /config\.slidingWindow/);
  other.dispose();
  throwsWith(t, () => e.native.createModel(good, other), 'DISPOSED', /parameters were disposed/);
});

// ---------------------------------------------------------------------------------------------
// parameters and initialisation

test('parameter views carry Hugging Face names and shapes from the native core', async (t) => {
  using e = cpuEngine(1);
  using g = await Model.create(e, GPT2);
  const gv = new Map(g.params.entries.map((x) => [x.name, x]));
  t.deepEqual(gv.get('transformer.wte.weight')?.shape, [11, 8]);
  t.deepEqual(gv.get('transformer.wpe.weight')?.shape, [16, 8]);
  t.deepEqual(gv.get('transformer.h.1.attn.c_attn.weight')?.shape, [8, 24]);
  t.deepEqual(gv.get('transformer.h.0.mlp.c_proj.weight')?.shape, [32, 8]);
  t.is(gv.get('transformer.h.0.ln_1.bias')?.decay, false);
  t.is(gv.get('transformer.wte.weight')?.decay, true);
  t.false(gv.has('lm_head.weight'));
  t.is(g.params.entries.length, 2 + 12 * 2 + 2);
  // wte + wpe + per layer (2 LN + c_attn + c_proj + c_fc + c_proj) + ln_f
  const D = 8, F = 32;
  const perLayer = 4 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D);
  t.is(g.numParameters(), 11 * D + 16 * D + 2 * perLayer + 2 * D);
  t.true(g.params.buffer('params').size >= g.numParameters());

  using l = await Model.create(e, LLAMA, { optimizer: false });
  const lv = new Map(l.params.entries.map((x) => [x.name, x]));
  t.deepEqual(lv.get('model.layers.0.self_attn.q_proj.weight')?.shape, [16, 16]);
  t.deepEqual(lv.get('model.layers.0.self_attn.k_proj.weight')?.shape, [8, 16]);
  t.deepEqual(lv.get('model.layers.1.self_attn.v_proj.bias')?.shape, [8]);
  t.deepEqual(lv.get('model.layers.0.mlp.down_proj.weight')?.shape, [16, 24]);
  t.deepEqual(lv.get('lm_head.weight')?.shape, [13, 16]);
  t.false(lv.has('model.layers.0.self_attn.o_proj.bias'));
  t.false(lv.has('model.layers.0.mlp.up_proj.bias'));
  throwsWith(t, () => l.params.buffer('m'), 'INVALID_ARGUMENT', /was not allocated/);
  t.is(l.config.nKvHeads, 2);
  t.true(Object.isFrozen(l.config));
});

test('initWeights is deterministic per seed with the GPT-2 statistics', async (t) => {
  using e = cpuEngine(1);
  const cfg: ModelConfigInput = { modelType: 'llama', vocabSize: 64, dModel: 32, nLayers: 2, nHeads: 4, dFF: 64, qkvBias: true };
  using a = await Model.create(e, cfg);
  using b = await Model.create(e, cfg);
  await a.initWeights(7);
  await b.initWeights(7);
  const pa = await a.params.buffer('params').data();
  t.deepEqual(await b.params.buffer('params').data(), pa);
  await b.initWeights(8);
  const pb = await b.params.buffer('params').data();
  t.notDeepEqual(pb, pa);
  const std = (name: string): number => {
    const x = a.params.entries.find((en) => en.name === name);
    if (!x) throw new Error(name);
    let s = 0;
    for (let i = 0; i < x.numel; i++) s += (pa[x.offset + i] as number) ** 2;
    return Math.sqrt(s / x.numel);
  };
  const within = (got: number, want: number): boolean => Math.abs(got - want) < 0.15 * want;
  t.true(within(std('model.embed_tokens.weight'), 0.02), `embed std ${std('model.embed_tokens.weight')}`);
  t.true(within(std('model.layers.0.mlp.gate_proj.weight'), 0.02));
  t.true(within(std('model.layers.1.mlp.down_proj.weight'), 0.02 / Math.sqrt(4)), `down_proj std ${std('model.layers.1.mlp.down_proj.weight')}`);
  t.true(within(std('model.layers.0.self_attn.o_proj.weight'), 0.02 / Math.sqrt(4)));
  const view = async (name: string): Promise<number[]> => a.params.view(name).array();
  t.true((await view('model.norm.weight')).every((x) => x === 1));
  t.true((await view('model.layers.0.input_layernorm.weight')).every((x) => x === 1));
  t.true((await view('model.layers.0.self_attn.q_proj.bias')).every((x) => x === 0));
  await rejectsWith(t, a.initWeights(-1), 'INVALID_ARGUMENT', /seed/);
});

// ---------------------------------------------------------------------------------------------
// gradients

for (const [label, cfg] of [
  ['GPT-2', GPT2],
  ['Llama (GQA 4:2, q/k/v biases, untied head)', LLAMA],
  ['Llama (o/MLP biases, tied head, headDim != dModel/nHeads)', LLAMA_BIASES],
] as const) {
  test(`float64 finite differences match backward for a tiny ${label}`, async (t) => {
    using e = cpuEngine(1);
    using m = await Model.create(e, cfg, { dtype: 'f64' });
    t.is(m.dtype, 'f64');
    await randomizeParams(m, 3, 0.4);
    const B = 2, T = 5, V = m.config.vocabSize;
    const ids = randomIds(B * T, V, 11);
    const targets = randomIds(B * T, V, 12);
    targets[3] = -100; // ignored targets carry no gradient
    targets[9] = -100;
    const batch = { ids, targets, B, T };
    await m.params.zeroGrad();
    const { loss, tokens } = await m.forward(batch);
    t.is(tokens, B * T - 2);
    t.true(Number.isFinite(loss) && loss > 0);
    await m.backward();
    const grads = (await m.params.buffer('grads').data()) as Float64Array;
    const params = (await m.params.buffer('params').data()) as Float64Array;

    // Two elements of every view: the first and one drawn at random.
    const r = rng(5);
    const h = 1e-5;
    const got: number[] = [];
    const want: number[] = [];
    for (const en of m.params.entries) {
      for (const j of [0, Math.floor(r() * en.numel)]) {
        const idx = en.offset + j;
        const p = params[idx] as number;
        await setParam(m, idx, p + h);
        const lp = (await m.forward(batch)).loss;
        await setParam(m, idx, p - h);
        const lm = (await m.forward(batch)).loss;
        await setParam(m, idx, p);
        got.push(grads[idx] as number);
        want.push((lp - lm) / (2 * h));
      }
    }
    assertClose(t, got, want, { rtol: 1e-5, atol: 1e-8, label: `${label} dloss/dparam` });
    t.true(want.some((x) => Math.abs(x) > 1e-3), 'the check must see non-trivial gradients');
    // Padding between views never receives gradient.
    const inView = new Uint8Array(grads.length);
    for (const en of m.params.entries) inView.fill(1, en.offset, en.offset + en.numel);
    t.true(grads.every((g, i) => inView[i] === 1 || g === 0));
  });
}

test('backward accumulates lossScale-weighted gradients and needs a forward', async (t) => {
  using e = cpuEngine(1);
  using m = await Model.create(e, LLAMA, { dtype: 'f64' });
  await randomizeParams(m, 9, 0.3);
  await rejectsWith(t, m.backward(), 'INVALID_ARGUMENT', /forward/);
  const batch = { ids: randomIds(8, 13, 1), targets: randomIds(8, 13, 2), B: 2, T: 4 };
  await m.forward(batch);
  await m.backward();
  const g1 = Array.from(await m.params.buffer('grads').data());
  await m.forward(batch);
  await m.backward(0.5);
  const g15 = Array.from(await m.params.buffer('grads').data());
  assertClose(t, g15, g1.map((x) => 1.5 * x), { rtol: 1e-12, atol: 1e-15, label: 'accumulated grads' });
  await m.params.zeroGrad();
  t.true((await m.params.buffer('grads').array()).every((x) => x === 0));
});

// ---------------------------------------------------------------------------------------------
// inference

function logSoftmaxAt(row: ArrayLike<number>, offset: number, V: number, target: number): number {
  let max = -Infinity;
  for (let v = 0; v < V; v++) max = Math.max(max, row[offset + v] as number);
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp((row[offset + v] as number) - max);
  return (row[offset + target] as number) - max - Math.log(sum);
}

test('tokenLosses agree with the forward loss and with the logits', async (t) => {
  using e = cpuEngine(1);
  for (const cfg of [GPT2, LLAMA]) {
    using m = await Model.create(e, cfg);
    await m.initWeights(1);
    await randomizeParams(m, 4, 0.3);
    const B = 3, T = 6, V = m.config.vocabSize;
    const ids = randomIds(B * T, V, 21);
    const targets = randomIds(B * T, V, 22);
    targets[0] = -100;
    targets[7] = -100;
    const losses = await m.tokenLosses({ ids, targets, B, T });
    t.true(losses instanceof Float32Array);
    t.is(losses.length, B * T);
    t.is(losses[0], 0);
    t.is(losses[7], 0);
    const { loss, tokens } = await m.forward({ ids, targets, B, T });
    t.is(tokens, B * T - 2);
    const mean = losses.reduce((s, x) => s + x, 0) / tokens;
    assertClose(t, [mean], [loss], { rtol: 1e-5, atol: 1e-6, label: `${cfg.modelType} mean token loss` });

    using logits = await m.logits({ ids, B, T });
    t.deepEqual(logits.shape, [B, T, V]);
    t.is(logits.dtype, 'f32');
    const lg = await logits.data();
    const fromLogits = Array.from(targets, (y, i) => (y === -100 ? 0 : -logSoftmaxAt(lg, i * V, V, y)));
    assertClose(t, losses, fromLogits, { rtol: 1e-4, atol: 1e-5, label: `${cfg.modelType} NLL from logits` });

    using last = await m.logits({ ids, B, T, lastOnly: true });
    t.deepEqual(last.shape, [B, V]);
    const lastRows: number[] = [];
    for (let b = 0; b < B; b++) lastRows.push(...Array.from(lg.subarray((b * T + T - 1) * V, (b * T + T) * V)));
    assertClose(t, await last.data(), lastRows, { rtol: 1e-5, atol: 1e-6, label: 'lastOnly logits' });
  }
});

for (const cfg of [GPT2, LLAMA, MISTRAL]) {
  test(`decoding one token at a time equals logits() at every position (${cfg.modelType})`, async (t) => {
    using e = cpuEngine(1);
    using m = await Model.create(e, cfg, { optimizer: false });
    await randomizeParams(m, 8, 0.4);
    const T = 9, V = m.config.vocabSize;
    const ids = randomIds(T, V, 31);
    using full = await m.logits({ ids, B: 1, T });
    const want = await full.data();
    await m.resetCache(1, T);
    t.is(m.cacheLength, 0);
    for (let i = 0; i < T; i++) {
      using out = await m.decode({ ids: ids.subarray(i, i + 1), positions: Int32Array.of(i), n: 1 });
      t.deepEqual(out.shape, [1, V]);
      assertClose(t, await out.data(), want.subarray(i * V, (i + 1) * V), { rtol: 1e-4, atol: 1e-5, label: `position ${i}` });
    }
    t.is(m.cacheLength, T);
    await rejectsWith(t, m.decode({ ids: Int32Array.of(1), positions: Int32Array.of(T), n: 1 }), 'INVALID_ARGUMENT', /full|cache/i);
    // A prefill of several slots at once gives the last one's logits.
    await m.resetCache(1, T);
    t.is(m.cacheLength, 0);
    using pre = await m.decode({ ids, positions: Int32Array.from({ length: T }, (_, i) => i), n: T });
    assertClose(t, await pre.data(), want.subarray((T - 1) * V), { rtol: 1e-4, atol: 1e-5, label: 'prefill' });
  });
}

for (const cfg of [GPT2, LLAMA]) {
  test(`a left-padded batch decodes like the unpadded rows (${cfg.modelType})`, async (t) => {
    using e = cpuEngine(1);
    using m = await Model.create(e, cfg, { optimizer: false });
    await randomizeParams(m, 12, 0.4);
    const V = m.config.vocabSize;
    const short = [3, 1, 4]; // row 0, padded on the left to 5
    const long = [2, 7, 1, 8, 2]; // row 1
    const next = [
      [5, 9],
      [6, 0],
    ];
    // Reference: each row alone, no padding.
    const alone = async (prompt: number[], more: number[]): Promise<Float32Array[]> => {
      await m.resetCache(1, 8);
      const outs: Float32Array[] = [];
      using first = await m.decode({ ids: Int32Array.from(prompt), positions: Int32Array.from(prompt, (_, i) => i), n: prompt.length });
      outs.push((await first.data()) as Float32Array);
      for (let k = 0; k < more.length; k++) {
        using o = await m.decode({ ids: Int32Array.of(more[k] as number), positions: Int32Array.of(prompt.length + k), n: 1 });
        outs.push((await o.data()) as Float32Array);
      }
      return outs;
    };
    const ref0 = await alone(short, next[0] as number[]);
    const ref1 = await alone(long, next[1] as number[]);

    await m.resetCache(2, 8);
    const PAD = 0;
    using first = await m.decode({
      ids: Int32Array.from([PAD, PAD, ...short, ...long]),
      positions: Int32Array.from([0, 0, 0, 1, 2, 0, 1, 2, 3, 4]),
      valid: Uint8Array.from([0, 0, 1, 1, 1, 1, 1, 1, 1, 1]),
      n: 5,
    });
    const f = await first.data();
    assertClose(t, f.subarray(0, V), ref0[0] as Float32Array, { rtol: 1e-4, atol: 1e-5, label: 'padded row, prompt' });
    assertClose(t, f.subarray(V), ref1[0] as Float32Array, { rtol: 1e-4, atol: 1e-5, label: 'full row, prompt' });
    for (let k = 0; k < 2; k++) {
      using o = await m.decode({
        ids: Int32Array.of(next[0]?.[k] as number, next[1]?.[k] as number),
        positions: Int32Array.of(short.length + k, long.length + k),
        n: 1,
      });
      const d = await o.data();
      assertClose(t, d.subarray(0, V), ref0[k + 1] as Float32Array, { rtol: 1e-4, atol: 1e-5, label: `padded row, step ${k}` });
      assertClose(t, d.subarray(V), ref1[k + 1] as Float32Array, { rtol: 1e-4, atol: 1e-5, label: `full row, step ${k}` });
    }
    t.is(m.cacheLength, 7);
  });
}

// ---------------------------------------------------------------------------------------------
// errors and lifetime

test('bad batches are errors naming the tensor and index', async (t) => {
  using e = cpuEngine(1);
  using m = await Model.create(e, LLAMA);
  const ok = { ids: new Int32Array(6), targets: new Int32Array(6), B: 2, T: 3 };
  await rejectsWith(t, m.forward({ ...ok, ids: Int32Array.of(0, 1, 2, 3, 4, 13) }), 'INVALID_ARGUMENT', /ids\[1, 2\] = 13 is out of range \[0, 13\)/);
  await rejectsWith(t, m.forward({ ...ok, targets: Int32Array.of(0, -5, 0, 0, 0, 0) }), 'INVALID_ARGUMENT', /targets\[0, 1\] = -5 is out of range/);
  await rejectsWith(t, m.tokenLosses({ ...ok, ids: Int32Array.of(-1, 0, 0, 0, 0, 0) }), 'INVALID_ARGUMENT', /ids\[0, 0\] = -1/);
  await rejectsWith(t, m.logits({ ids: Int32Array.of(0, 99), B: 1, T: 2 }), 'INVALID_ARGUMENT', /ids\[0, 1\] = 99/);
  await rejectsWith(t, m.forward({ ...ok, ids: new Int32Array(5) }), 'INVALID_ARGUMENT', /^batch\.ids has 5 elements; B·T = 2·3 needs 6/);
  await rejectsWith(t, m.forward({ ...ok, targets: new Float32Array(6) as never }), 'INVALID_ARGUMENT', /^batch\.targets must be an Int32Array/);
  await rejectsWith(t, m.forward({ ...ok, B: 0 }), 'INVALID_ARGUMENT', /^batch\.B must be an integer >= 1/);
  const T = 33; // > maxSeqLen 32
  await rejectsWith(t, m.logits({ ids: new Int32Array(T), B: 1, T }), 'INVALID_ARGUMENT', /maxSeqLen/);
  await rejectsWith(t, m.backward(Number.NaN), 'INVALID_ARGUMENT', /lossScale/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1), positions: Int32Array.of(0), n: 1 }), 'INVALID_ARGUMENT', /resetCache/);
  await m.resetCache(2, 4);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 2), positions: Int32Array.of(0, 32), n: 1 }), 'INVALID_ARGUMENT', /positions\[1, 0\] = 32 is out of range/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 2, 3), positions: Int32Array.of(0, 0, 0), n: 2 }), 'INVALID_ARGUMENT', /^step\.ids has 3 elements/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 2), positions: Int32Array.of(0), n: 1 }), 'INVALID_ARGUMENT', /^step\.positions has 1 elements/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 2), positions: Int32Array.of(0, 0), valid: Int8Array.of(1, 1) as never, n: 1 }), 'INVALID_ARGUMENT', /^step\.valid must be a Uint8Array/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 2, 3), positions: Int32Array.of(0, 0, 0), n: 1 }), 'INVALID_ARGUMENT', /B|rows|batch/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 13), positions: Int32Array.of(0, 0), n: 1 }), 'INVALID_ARGUMENT', /ids\[1, 0\] = 13/);
  await rejectsWith(t, Model.create(e, { ...LLAMA, nKvHeads: 3 }), 'INVALID_ARGUMENT', /^config\.nKvHeads: 3 does not divide nHeads 4/);
  await rejectsWith(t, Model.create(e, LLAMA, { dtype: 'bf16' as never }), 'INVALID_ARGUMENT', /options\.dtype/);
  // The model still works after all of that.
  t.true(Number.isFinite((await m.forward(ok)).loss));
});

test('token arrays are copied at the call, so callers may reuse them', async (t) => {
  using e = cpuEngine(1);
  using m = await Model.create(e, GPT2);
  await randomizeParams(m, 2, 0.4);
  const ids = randomIds(8, 11, 41);
  const targets = randomIds(8, 11, 42);
  const want = (await m.forward({ ids, targets, B: 2, T: 4 })).loss;
  const pending = m.forward({ ids, targets, B: 2, T: 4 });
  ids.fill(0);
  targets.fill(-100);
  const got = await pending;
  t.is(got.loss, want);
  t.is(got.tokens, 8);
});

test('dispose frees activations, cache and parameters; later calls are DISPOSED', async (t) => {
  using e = cpuEngine(1);
  await e.synchronize();
  const before = e.memory().hostBytes;
  const m = await Model.create(e, LLAMA);
  await m.initWeights(1);
  const batch = { ids: randomIds(8, 13, 1), targets: randomIds(8, 13, 2), B: 2, T: 4 };
  await m.forward(batch);
  await m.resetCache(2, 16);
  t.true(e.memory().hostBytes > before);
  // A job already queued still runs after dispose.
  const queued = m.forward(batch);
  m.dispose();
  m.dispose(); // idempotent
  t.true(m.disposed);
  t.true(Number.isFinite((await queued).loss));
  await e.synchronize();
  t.is(e.memory().hostBytes, before);
  await rejectsWith(t, m.forward(batch), 'DISPOSED', /Model was disposed/);
  await rejectsWith(t, m.decode({ ids: Int32Array.of(1, 1), positions: Int32Array.of(0, 0), n: 1 }), 'DISPOSED', /Model was disposed/);
  await rejectsWith(t, m.initWeights(1), 'DISPOSED', /disposed/);
  throwsWith(t, () => m.params.buffer('params'), 'DISPOSED', /disposed/);
  t.is(m.cacheLength, 0);

  // A disposed engine refuses the model's work.
  const e2 = cpuEngine(1);
  using m2 = await Model.create(e2, GPT2);
  e2.dispose();
  await rejectsWith(t, m2.forward({ ids: new Int32Array(2), targets: new Int32Array(2), B: 1, T: 2 }), 'DISPOSED', /Engine was disposed/);
});
