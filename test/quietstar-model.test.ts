/**
 * QuietStarModel through the binding: option errors naming fields, the vocabulary + 2 model
 * built from a tiny random Llama (marker ids, copied weights, the extras' reference
 * initialisation), a training step, the initial-state identities of spec §9.6 (zero rewards,
 * zero policy loss), deterministic thoughts that never hold a marker, save → load, bad
 * folders, dispose, and (with the shared data) stories260K from its Hugging Face folder.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { Model, createByteTokenizer, loadPretrained, savePretrained, type ModelConfigInput, type Tokenizer } from '../lib/index.js';
import {
  DEFAULT_QUIETSTAR_OPTIONS,
  END_THOUGHT,
  QuietStarModel,
  START_THOUGHT,
  quietstarParamSpecs,
  resolveQuietStarOptions,
  type QuietStarBatch,
  type QuietStarOptions,
  type QuietStarStepMetrics,
} from '../lib/quietstar/index.js';
import { dataPath, missingData } from '../lib/util/data-path.js';
import { assertClose, cpuEngine, rng } from './support/engine.js';
import { rejectsWith, throwsWith } from './support/errors.js';

// A byte tokenizer: 256 bytes + BOS + EOS = 258 tokens; the model's vocabulary must agree.
const byteTokenizer = (): Tokenizer => createByteTokenizer({ bosToken: '<s>', eosToken: '</s>' });
const V = 258;
// 2 layers, D 64, GQA 4:2, untied head (both embed_tokens and lm_head grow by two rows).
const LLAMA: ModelConfigInput = { modelType: 'llama', vocabSize: V, dModel: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, dFF: 96, maxSeqLen: 64 };
// Short schedules keep the CPU steps small: 2 sampled thought tokens, 2 talk tokens.
const SMALL: Partial<QuietStarOptions> = { nAhead: 5, nAheadTalk: 2, nPasses: 2 };

/** Texts as a spec §2.2 batch: BOS + bytes, right-padded with pad = EOS, labels −100 at pads. */
function makeBatch(tok: Tokenizer, texts: string[], T: number): QuietStarBatch {
  const pad = tok.eosId!;
  const B = texts.length;
  const ids = new Int32Array(B * T).fill(pad);
  texts.forEach((text, b) => ids.set(tok.encode(text, { addSpecialTokens: true }).slice(0, T), b * T));
  const valid = Uint8Array.from(ids, (id) => (id === pad ? 0 : 1));
  const labels = Int32Array.from(ids, (id) => (id === pad ? -100 : id));
  return { ids, valid, labels, B, T };
}

const TEXTS = ['the cat sat on the mat', 'a b c d e f g h i j'];

async function baseModel(engine: ReturnType<typeof cpuEngine>, dtype: 'f32' | 'f64' = 'f32'): Promise<Model> {
  const m = await Model.create(engine, LLAMA, { dtype, optimizer: false });
  await m.initWeights(7);
  return m;
}

async function viewData(qs: QuietStarModel | Model, name: string): Promise<Float64Array> {
  using v = qs.params.view(name);
  return Float64Array.from(await v.data());
}

function isFiniteMetrics(m: QuietStarStepMetrics): boolean {
  return Object.values(m).every((x) => typeof x === 'number' && Number.isFinite(x));
}

// ---- options (no addon needed) ------------------------------------------------------------

test('options: the reference defaults, and errors naming the field', (t) => {
  const o = resolveQuietStarOptions();
  t.deepEqual(o, { ...DEFAULT_QUIETSTAR_OPTIONS });
  t.is(o.nAhead, 12);
  t.is(o.nAheadTalk, 4);
  t.is(o.nPasses, 2);
  t.is(o.policyLossBeta, 1e6);
  t.is(o.reinforceTemperature, 3);
  t.is(o.mixing, 'reference');
  t.is(resolveQuietStarOptions({ nAhead: 8, mixing: 'paper' }).nAhead, 8);
  throwsWith(t, () => resolveQuietStarOptions({ nAhead: 0 }), 'INVALID_ARGUMENT', /quietstar\.nAhead/);
  throwsWith(t, () => resolveQuietStarOptions({ nAhead: 2 }), 'INVALID_ARGUMENT', /quietstar\.nAhead/);
  throwsWith(t, () => resolveQuietStarOptions({ nAheadTalk: 1.5 }), 'INVALID_ARGUMENT', /quietstar\.nAheadTalk/);
  throwsWith(t, () => resolveQuietStarOptions({ nPasses: 0 }), 'INVALID_ARGUMENT', /quietstar\.nPasses/);
  throwsWith(t, () => resolveQuietStarOptions({ embeddingScale: 0 }), 'INVALID_ARGUMENT', /quietstar\.embeddingScale/);
  throwsWith(t, () => resolveQuietStarOptions({ originalLossWeight: 2 }), 'INVALID_ARGUMENT', /quietstar\.originalLossWeight/);
  throwsWith(t, () => resolveQuietStarOptions({ reinforceTemperature: 0 }), 'INVALID_ARGUMENT', /quietstar\.reinforceTemperature/);
  throwsWith(t, () => resolveQuietStarOptions({ thoughtTemperature: -1 }), 'INVALID_ARGUMENT', /quietstar\.thoughtTemperature/);
  throwsWith(t, () => resolveQuietStarOptions({ policyLossBeta: NaN }), 'INVALID_ARGUMENT', /quietstar\.policyLossBeta/);
  throwsWith(t, () => resolveQuietStarOptions({ triceBaseline: 1 as unknown as boolean }), 'INVALID_ARGUMENT', /quietstar\.triceBaseline/);
  throwsWith(t, () => resolveQuietStarOptions({ mixing: 'both' as 'paper' }), 'INVALID_ARGUMENT', /quietstar\.mixing/);
  throwsWith(t, () => resolveQuietStarOptions({ nAheed: 3 } as Partial<QuietStarOptions>), 'INVALID_ARGUMENT', /quietstar\.nAheed: unknown option/);
});

// ---- the model ------------------------------------------------------------------------------

test('quietstarParamSpecs: the reference names and shapes', (t) => {
  const specs = quietstarParamSpecs(LLAMA);
  const D = 64;
  t.deepEqual(
    specs.map((s) => [s.name, s.shape]),
    [
      ['start_embedding', [2, D]],
      ['end_embedding', [2, D]],
      ['talk_head.0.0.weight', [D, 2 * D]],
      ['talk_head.0.0.bias', [D]],
      ['talk_head.0.2.weight', [D, D]],
      ['talk_head.0.2.bias', [D]],
      ['talk_head.0.4.weight', [1, D]],
    ],
  );
});

test('fromModel: marker ids V and V+1, copied weights, the extras initialised as the reference', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e);
  const tok = byteTokenizer();
  using qs = await QuietStarModel.fromModel(base, tok, { quietstar: SMALL, seed: 3 });
  t.is(qs.startId, V);
  t.is(qs.endId, V + 1);
  t.is(tok.tokenToId(START_THOUGHT), V);
  t.is(tok.tokenToId(END_THOUGHT), V + 1);
  t.deepEqual(tok.encode(`x${START_THOUGHT}y${END_THOUGHT}`), [120, V, 121, V + 1]);
  t.is(qs.model.config.vocabSize, V + 2);
  t.is(qs.options.nAhead, 5);
  t.is(qs.params, qs.model.params);
  const names = qs.params.entries.map((p) => p.name);
  for (const s of quietstarParamSpecs(LLAMA)) t.true(names.includes(s.name), s.name);

  const D = 64;
  // Every base tensor is copied; the vocabulary tensors keep their first V rows.
  for (const p of base.params.entries) {
    const want = await viewData(base, p.name);
    const got = (await viewData(qs, p.name)).subarray(0, want.length);
    assertClose(t, got, want, { rtol: 0, atol: 0, label: p.name });
  }
  // The two new rows of embed_tokens and lm_head: N(0, 0.02), not copies of anything.
  for (const name of ['model.embed_tokens.weight', 'lm_head.weight']) {
    const rows = (await viewData(qs, name)).subarray(V * D);
    t.is(rows.length, 2 * D);
    const std = Math.sqrt(rows.reduce((s, x) => s + x * x, 0) / rows.length);
    t.true(std > 0.01 && std < 0.04, `${name} new rows std ${std}`);
  }
  // start/end row 0 = E[id('---')] / 100 (the first token of "---" is '-', byte 45); row 1 = 0.
  const E = await viewData(base, 'model.embed_tokens.weight');
  const dash = E.subarray(45 * D, 46 * D).map((x) => x / 100);
  for (const name of ['start_embedding', 'end_embedding']) {
    const v = await viewData(qs, name);
    assertClose(t, v.subarray(0, D), dash, { rtol: 1e-6, atol: 1e-9, label: `${name}[0]` });
    t.true(v.subarray(D).every((x) => x === 0), `${name}[1] is zero`);
  }
  // The mixing head: N(0, 0.02) weights, zero biases, an exactly zero last layer.
  t.true((await viewData(qs, 'talk_head.0.4.weight')).every((x) => x === 0));
  for (const name of ['talk_head.0.0.bias', 'talk_head.0.2.bias']) t.true((await viewData(qs, name)).every((x) => x === 0), name);
  for (const name of ['talk_head.0.0.weight', 'talk_head.0.2.weight']) {
    const w = await viewData(qs, name);
    const std = Math.sqrt(w.reduce((s, x) => s + x * x, 0) / w.length);
    t.true(std > 0.015 && std < 0.025, `${name} std ${std}`);
  }
  // The base model is left alone.
  t.false(base.disposed);
  t.is(base.config.vocabSize, V);

  // The same seed gives the same initialisation.
  using again = await QuietStarModel.fromModel(base, byteTokenizer(), { quietstar: SMALL, seed: 3 });
  for (const name of ['lm_head.weight', 'talk_head.0.0.weight']) {
    assertClose(t, await viewData(again, name), await viewData(qs, name), { rtol: 0, atol: 0, label: `${name} reproducible` });
  }
});

test('fromModel: errors name the field or the mismatch', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e);
  await rejectsWith(t, QuietStarModel.fromModel(base, byteTokenizer(), { quietstar: { nAhead: 0 } }), 'INVALID_ARGUMENT', /quietstar\.nAhead/);
  await rejectsWith(t, QuietStarModel.fromModel(base, byteTokenizer(), { seed: -1 }), 'INVALID_ARGUMENT', /options\.seed/);
  await rejectsWith(t, QuietStarModel.fromModel(base, byteTokenizer(), { initToken: '' }), 'INVALID_ARGUMENT', /options\.initToken/);
  // A tokenizer whose vocabulary differs from the model's cannot give the markers ids V, V+1.
  const other = createByteTokenizer({ bosToken: '<s>' });
  await rejectsWith(t, QuietStarModel.fromModel(base, other, {}), 'INVALID_ARGUMENT', /257 tokens but the model's vocabulary is 258/);
  t.is(other.tokenToId(START_THOUGHT), undefined, 'the tokenizer is left unchanged');
});

test('a training step gives finite metrics and gradients; the initial state is the base model (spec §9.6)', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e, 'f64');
  const tok = byteTokenizer();
  using qs = await QuietStarModel.fromModel(base, tok, { quietstar: SMALL, seed: 1 });
  const batch = makeBatch(tok, TEXTS, 16);

  const thoughts = await qs.sampleThoughts(batch, 11);
  t.is(thoughts.length, 2 * 2 * 16 * 2); // (B·P, T, nAhead − 3)
  const m = await qs.forwardBackward(batch, thoughts, { backward: false });
  t.true(isFiniteMetrics(m), JSON.stringify(m));
  t.is(m.tokens, batch.valid.reduce((s, x) => s + x, 0));
  // w ≡ 0: talk = base, so every reward and the policy loss vanish and the loss is
  // 0.5·base + 0.5·talk (originalLossWeight 0.5, baseLossBeta 1).
  t.true(Math.abs(m.policyLoss) < 1e-12, `policy loss ${m.policyLoss}`);
  t.true(Math.abs(m.rewardMean) < 1e-9, `reward mean ${m.rewardMean}`);
  t.true(Math.abs(m.rewardStd) < 1e-9, `reward std ${m.rewardStd}`);
  t.is(m.positiveShare, 0);
  t.is(m.mixMin, 0);
  t.is(m.mixMax, 0);
  t.true(Math.abs(m.loss - (0.5 * m.nllBase + 0.5 * m.nllTalk)) < 1e-9, `loss ${m.loss}`);
  const reward = await qs.debugTensor('reward');
  t.deepEqual(reward.shape, [4, 16]);
  t.true(reward.data.every((x) => Math.abs(x) < 1e-9), 'every reward is 0');

  // The full step: finite metrics, gradients in the shared buffer (last mixing layer included).
  await qs.params.zeroGrad();
  const s = await qs.step(batch, 12);
  t.true(isFiniteMetrics(s), JSON.stringify(s));
  t.true(s.loss > 0);
  const g = await viewData2(qs, 'talk_head.0.4.weight', 'grads');
  t.true(g.some((x) => x !== 0), 'the last mixing layer gets a gradient');
  const norm = await qs.params.clipGradNorm(0);
  t.true(Number.isFinite(norm) && norm > 0);
  await qs.params.adamwStep({ lr: 1e-3 });
  const after = await qs.step(batch, 13);
  t.true(isFiniteMetrics(after));
  await rejectsWith(t, qs.step({ ...batch, T: 15 }, 1), 'INVALID_ARGUMENT', /batch\.ids has 32 elements/);
  await rejectsWith(t, qs.forwardBackward(batch, new Int32Array(3)), 'INVALID_ARGUMENT', /thoughts has 3 elements/);
  await rejectsWith(t, qs.step(batch, -1), 'INVALID_ARGUMENT', /seed/);
});

async function viewData2(qs: QuietStarModel, name: string, which: 'params' | 'grads'): Promise<Float64Array> {
  using v = qs.params.view(name, which);
  return Float64Array.from(await v.data());
}

test("mixing 'paper' maps to w weighting the base: at w = 0 the talk is the thought alone", async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e, 'f64');
  const tok = byteTokenizer();
  using ref = await QuietStarModel.fromModel(base, tok, { quietstar: SMALL, seed: 1 });
  using paper = await QuietStarModel.fromModel(base, tok, { quietstar: { ...SMALL, mixing: 'paper' }, seed: 1 });
  const batch = makeBatch(tok, TEXTS, 16);
  const thoughts = await ref.sampleThoughts(batch, 5);
  const a = await ref.forwardBackward(batch, thoughts, { backward: false });
  const b = await paper.forwardBackward(batch, thoughts, { backward: false });
  t.true(Math.abs(a.nllBase - b.nllBase) < 1e-9, 'the base pass is the same');
  t.true(Math.abs(a.nllTalk - b.nllTalk) > 1e-6, `talk NLL differs: ${a.nllTalk} vs ${b.nllTalk}`);
  t.true(b.rewardStd > 0, 'thought-only predictions give non-zero rewards');
});

test('thoughts: the same seed gives the same thoughts; markers are never sampled', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e);
  const tok = byteTokenizer();
  using qs = await QuietStarModel.fromModel(base, tok, { quietstar: { ...SMALL, nAhead: 8 }, seed: 2 });
  // Make the markers the LM head's favourites: every other row 0, theirs large and random, so
  // for most positions a marker would win the draw if it were not suppressed.
  const D = 64;
  const head = new Float32Array((V + 2) * D);
  const r = rng(9);
  for (let i = V * D; i < head.length; i++) head[i] = (r() * 2 - 1) * 20;
  {
    using src = e.tensor(head, [V + 2, D]);
    using dst = qs.params.view('lm_head.weight');
    await e.ops.copy({ src, dst });
  }
  const batch = makeBatch(tok, TEXTS, 16);
  const a = await qs.sampleThoughts(batch, 42);
  const b = await qs.sampleThoughts(batch, 42);
  const c = await qs.sampleThoughts(batch, 43);
  t.is(a.length, 2 * 2 * 16 * 5);
  t.deepEqual(b, a);
  t.notDeepEqual(c, a);
  t.true(a.every((id) => id >= 0 && id < V), `thought ids in [0, ${V})`);
  t.false(c.some((id) => id === qs.startId || id === qs.endId));
  // The P copies of a document draw independent noise.
  const L = 5;
  const row0 = a.subarray(0, 16 * L);
  const row1 = a.subarray(16 * L, 2 * 16 * L);
  t.notDeepEqual(row0, row1);
});

test('save → load: the same weights, logits and Quiet-STaR metrics; bad folders are named', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e);
  const tok = byteTokenizer();
  using qs = await QuietStarModel.fromModel(base, tok, { quietstar: SMALL, seed: 4 });
  const batch = makeBatch(tok, TEXTS, 16);
  // Move away from the initial state, so the mixing head and the rewards are not trivially 0.
  await qs.params.zeroGrad();
  await qs.step(batch, 1);
  await qs.params.adamwStep({ lr: 1e-2 });

  const root = await fsp.mkdtemp(join(tmpdir(), 'qs-model-'));
  t.teardown(() => fsp.rm(root, { recursive: true, force: true }));
  const dir = join(root, 'saved');
  await qs.save(dir);
  const files = (await fsp.readdir(dir)).sort();
  t.true(files.includes('config.json') && files.includes('model.safetensors') && files.includes('quietstar_tokens.json'), files.join(', '));
  const config = JSON.parse(await fsp.readFile(join(dir, 'config.json'), 'utf8'));
  t.is(config.vocab_size, V + 2);
  t.is(config.quietstar.startId, V);
  t.is(config.quietstar.endId, V + 1);
  t.is(config.quietstar.startToken, START_THOUGHT);
  t.is(config.quietstar.baseVocabSize, V);
  t.is(config.quietstar.nAhead, 5);
  t.is(config.quietstar.mixing, 'reference');

  // The byte tokenizer has no files: load takes it again (and adds the markers itself).
  await rejectsWith(t, QuietStarModel.load(e, dir), 'NOT_FOUND', /no tokenizer files.*options\.tokenizer/);
  using loaded = await QuietStarModel.load(e, dir, { tokenizer: byteTokenizer() });
  t.is(loaded.startId, V);
  t.deepEqual(loaded.options, qs.options);
  for (const p of qs.params.entries) {
    assertClose(t, await viewData(loaded, p.name), await viewData(qs, p.name), { rtol: 0, atol: 0, label: p.name });
  }
  const thoughts = await qs.sampleThoughts(batch, 77);
  t.deepEqual(await loaded.sampleThoughts(batch, 77), thoughts);
  const want = await qs.forwardBackward(batch, thoughts, { backward: false });
  const got = await loaded.forwardBackward(batch, thoughts, { backward: false });
  for (const k of Object.keys(want) as (keyof QuietStarStepMetrics)[]) {
    t.true(Math.abs(got[k] - want[k]) <= 1e-6 * (1 + Math.abs(want[k])), `${k}: ${got[k]} vs ${want[k]}`);
  }
  {
    using la = await qs.model.logits({ ids: batch.ids, B: batch.B, T: batch.T });
    using lb = await loaded.model.logits({ ids: batch.ids, B: batch.B, T: batch.T });
    assertClose(t, await lb.data(), await la.data(), { rtol: 0, atol: 0, label: 'logits' });
  }
  // The same folder loads as a plain language model (the extras left out), with the same logits.
  {
    using lm = await loadPretrained(e, dir, { optimizer: false });
    t.is(lm.config.vocabSize, V + 2);
    using la = await qs.model.logits({ ids: batch.ids, B: batch.B, T: batch.T });
    using lc = await lm.logits({ ids: batch.ids, B: batch.B, T: batch.T });
    assertClose(t, await lc.data(), await la.data(), { rtol: 0, atol: 0, label: 'logits as a plain model' });
  }
  // Options saved in the folder can be overridden at load.
  using overridden = await QuietStarModel.load(e, dir, { tokenizer: byteTokenizer(), quietstar: { nAheadTalk: 3 } });
  t.is(overridden.options.nAheadTalk, 3);
  t.is(overridden.options.nAhead, 5);

  // Bad folders.
  await rejectsWith(t, QuietStarModel.load(e, join(root, 'missing'), { tokenizer: byteTokenizer() }), 'NOT_FOUND', /config\.json/);
  const plain = join(root, 'plain');
  await savePretrained(base, plain);
  await rejectsWith(t, QuietStarModel.load(e, plain, { tokenizer: byteTokenizer() }), 'BAD_FILE', /no "quietstar" block/);
  const broken = join(root, 'broken');
  await fsp.cp(dir, broken, { recursive: true });
  const bad = { ...config, quietstar: { ...config.quietstar, nAhead: 0 } };
  await fsp.writeFile(join(broken, 'config.json'), JSON.stringify(bad));
  await rejectsWith(t, QuietStarModel.load(e, broken, { tokenizer: byteTokenizer() }), 'BAD_FILE', /config\.json: quietstar\.nAhead/);
  // Weights without the extras (a base checkpoint renamed into a Quiet-STaR config).
  const noExtras = join(root, 'no-extras');
  await fsp.cp(dir, noExtras, { recursive: true });
  await fsp.copyFile(join(plain, 'model.safetensors'), join(noExtras, 'model.safetensors'));
  await rejectsWith(t, QuietStarModel.load(e, noExtras, { tokenizer: byteTokenizer() }), 'BAD_FILE', /model\.safetensors|start_embedding|shape/);
  // A tokenizer of the wrong size.
  await rejectsWith(t, QuietStarModel.load(e, dir, { tokenizer: createByteTokenizer() }), 'INVALID_ARGUMENT', /256 tokens but the model's vocabulary is 258/);
});

test('dispose frees the model, the step and the parameters; later calls are DISPOSED', async (t) => {
  using e = cpuEngine(1);
  using base = await baseModel(e);
  await e.synchronize();
  const before = e.memory().hostBytes;
  const tok = byteTokenizer();
  const qs = await QuietStarModel.fromModel(base, tok, { quietstar: SMALL });
  const batch = makeBatch(tok, TEXTS, 16);
  await qs.step(batch, 1);
  t.true(e.memory().hostBytes > before);
  const queued = qs.step(batch, 2); // a job already queued still runs
  qs.dispose();
  qs.dispose(); // idempotent
  t.true(qs.disposed);
  t.true(isFiniteMetrics(await queued));
  await e.synchronize();
  t.is(e.memory().hostBytes, before);
  await rejectsWith(t, qs.step(batch, 3), 'DISPOSED', /disposed/);
  await rejectsWith(t, qs.sampleThoughts(batch, 3), 'DISPOSED', /disposed/);
  await rejectsWith(t, qs.debugTensor('reward'), 'DISPOSED', /disposed/);
});

// ---- stories260K from its Hugging Face folder -------------------------------------------------

const storiesMissing = missingData('models', 'stories260K-hf', 'model.safetensors') ?? missingData('models', 'stories260K-llama2c', 'tok512.bin');
if (storiesMissing) console.log(`quietstar-model: stories260K test skipped: ${storiesMissing}`);

(storiesMissing ? test.skip : test)('fromPretrained: stories260K with tok512.bin runs a step, saves and loads', async (t) => {
  using e = cpuEngine();
  const dir = dataPath('models', 'stories260K-hf');
  const tokFile = dataPath('models', 'stories260K-llama2c', 'tok512.bin');
  using qs = await QuietStarModel.fromPretrained(e, dir, { tokenizer: tokFile, quietstar: { nAhead: 6, nAheadTalk: 2 }, seed: 1 });
  t.is(qs.startId, 512);
  t.is(qs.endId, 513);
  t.is(qs.model.config.vocabSize, 514);
  const tok = qs.tokenizer;
  const T = 32;
  const texts = ['Once upon a time, there was a little girl named Lily.', 'The dog ran to the park.'];
  const pad = tok.eosId ?? 2;
  const ids = new Int32Array(texts.length * T).fill(pad);
  texts.forEach((s, b) => ids.set(tok.encode(s, { addSpecialTokens: true }).slice(0, T), b * T));
  const batch: QuietStarBatch = {
    ids,
    valid: Uint8Array.from(ids, (x) => (x === pad ? 0 : 1)),
    labels: Int32Array.from(ids, (x) => (x === pad ? -100 : x)),
    B: texts.length,
    T,
  };
  const m = await qs.step(batch, 1);
  t.log(JSON.stringify(m));
  t.true(isFiniteMetrics(m));
  // A trained 260K model: base NLL well below log(512) ≈ 6.2; at init the talk equals the base.
  t.true(m.nllBase > 0 && m.nllBase < 4, `nllBase ${m.nllBase}`);
  t.true(Math.abs(m.policyLoss) < 1e-4, `policy loss ${m.policyLoss}`);

  const root = await fsp.mkdtemp(join(tmpdir(), 'qs-stories-'));
  t.teardown(() => fsp.rm(root, { recursive: true, force: true }));
  const out = join(root, 'qs');
  await qs.save(out);
  t.true((await fsp.readdir(out)).includes('tok512.bin'), 'the tokenizer file is copied');
  using loaded = await QuietStarModel.load(e, out);
  t.is(loaded.startId, 512);
  t.deepEqual(loaded.tokenizer.encode(texts[0]!), tok.encode(texts[0]!));
  const thoughts = await qs.sampleThoughts(batch, 5);
  const a = await qs.forwardBackward(batch, thoughts, { backward: false });
  const b = await loaded.forwardBackward(batch, thoughts, { backward: false });
  t.true(Math.abs(a.loss - b.loss) <= 1e-6 * (1 + Math.abs(a.loss)), `${a.loss} vs ${b.loss}`);
  // Saving over the folder it was loaded from keeps its tokenizer (copied before the swap).
  await loaded.save(out);
  t.deepEqual((await fsp.readdir(out)).sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'quietstar_tokens.json', 'tok512.bin'].sort());
  using again = await QuietStarModel.load(e, out, { optimizer: false });
  t.deepEqual(again.tokenizer.encode(texts[1]!), tok.encode(texts[1]!));
});
