/**
 * Quiet-STaR at evaluation and inference through the binding (spec §4.1, §5, §9.15):
 * evalForward / evalLogits (one thought per position, streaming logits) and thinkDecode
 * (KV-cached decoding with a thought branch per token, then discarded).
 *
 * Tiny f64 Llama (GQA 4:2) over a byte tokenizer, a random nonzero mixing head (w ≠ 0: the
 * thought changes the prediction), a right-padded batch.
 */
import test from 'ava';

import { Model, createByteTokenizer, type ModelConfigInput, type Tokenizer } from '../lib/index.js';
import { QuietStarModel, type QuietStarOptions } from '../lib/quietstar/index.js';
import { cpuEngine, randomArray } from './support/engine.js';
import { rejectsWith } from './support/errors.js';

const byteTokenizer = (): Tokenizer => createByteTokenizer({ bosToken: '<s>', eosToken: '</s>' });
const V = 258;
const LLAMA: ModelConfigInput = { modelType: 'llama', vocabSize: V, dModel: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, dFF: 96, maxSeqLen: 64 };
// The training options differ from the eval step's (nPasses 1, nAheadTalk 1) on purpose.
const OPTIONS: Partial<QuietStarOptions> = { nAhead: 6, nAheadTalk: 2, nPasses: 2 };
const T = 12;
const TEXTS = ['the cat sat on', 'abc'];
const SEED = 17;

/** Texts as (B, T): BOS + bytes, right-padded with EOS (valid 0). */
function batchOf(tok: Tokenizer, texts: string[]): { ids: Int32Array; valid: Uint8Array; B: number; T: number } {
  const B = texts.length;
  const ids = new Int32Array(B * T).fill(tok.eosId!);
  const valid = new Uint8Array(B * T);
  texts.forEach((text, b) => {
    const enc = tok.encode(text, { addSpecialTokens: true }).slice(0, T);
    ids.set(enc, b * T);
    valid.fill(1, b * T, b * T + enc.length);
  });
  return { ids, valid, B, T };
}

/** A Quiet-STaR model with a mixing head whose last layer is uniform(±2), so w is clearly nonzero. */
async function thinkingModel(engine: ReturnType<typeof cpuEngine>, options: Partial<QuietStarOptions>): Promise<QuietStarModel> {
  using base = await Model.create(engine, LLAMA, { dtype: 'f64', optimizer: false });
  await base.initWeights(7);
  const qs = await QuietStarModel.fromModel(base, byteTokenizer(), { quietstar: options, seed: 3, optimizer: false });
  for (const [name, scale, seed] of [['talk_head.0.4.weight', 2, 1], ['talk_head.0.0.bias', 0.1, 2], ['start_embedding', 0.002, 3]] as const) {
    using view = qs.params.view(name);
    using fresh = engine.tensor(randomArray(view.shape.reduce((a, b) => a * b, 1), seed, scale), view.shape, 'f64');
    await engine.ops.copy({ src: fresh, dst: view });
  }
  return qs;
}

function logSoftmaxAt(z: ArrayLike<number>, target: number, n = z.length): number {
  let mx = -Infinity;
  for (let v = 0; v < n; v++) mx = Math.max(mx, z[v]!);
  let s = 0;
  for (let v = 0; v < n; v++) s += Math.exp(z[v]! - mx);
  return z[target]! - mx - Math.log(s);
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>, n: number): number {
  let m = 0;
  for (let i = 0; i < n; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('evalForward = the P = 1, A = 1 step (sampleThoughts + forwardBackward); evalLogits matches its NLLs', async (t) => {
  using e = cpuEngine(1);
  using qs = await thinkingModel(e, OPTIONS);
  using ref = await thinkingModel(e, { ...OPTIONS, nPasses: 1, nAheadTalk: 1 });
  const tok = qs.tokenizer;
  const batch = batchOf(tok, TEXTS);
  await rejectsWith(t, qs.evalLogits([[0, 0]]), 'INVALID_ARGUMENT', /no evalForward yet/);

  const ev = await qs.evalForward(batch, SEED);
  const labels = Int32Array.from(batch.ids, (id, n) => (batch.valid[n] ? id : -100));
  const thoughts = await ref.sampleThoughts({ ...batch, labels }, SEED);
  t.deepEqual(ev.thoughts, thoughts, 'the same thoughts as the P = 1 sampler');
  await ref.forwardBackward({ ...batch, labels }, thoughts, { backward: false });
  const baseNll = (await ref.debugTensor('base_nll')).data;
  const talkNll = (await ref.debugTensor('talk_nll')).data;
  const mix = (await ref.debugTensor('mix_weight')).data;
  let checked = 0;
  let meanW = 0;
  for (let b = 0; b < batch.B; b++) {
    for (let i = 0; i < T; i++) {
      const n = b * T + i;
      const scored = i + 1 < T && labels[n + 1] !== -100;
      t.is(Number.isNaN(ev.baseNll[n]!), !scored, `baseNll NaN at (${b}, ${i})`);
      t.is(Number.isNaN(ev.thinkNll[n]!), !scored, `thinkNll NaN at (${b}, ${i})`);
      if (!scored) continue;
      t.true(Math.abs(ev.baseNll[n]! - baseNll[n]!) <= 1e-12, `baseNll (${b}, ${i})`);
      t.true(Math.abs(ev.thinkNll[n]! - talkNll[n]!) <= 1e-12, `thinkNll (${b}, ${i})`);
      t.true(Math.abs(ev.mixWeight[n]! - mix[n]!) <= 1e-12, `mixWeight (${b}, ${i})`);
      meanW += Math.abs(ev.mixWeight[n]!);
      checked++;
    }
  }
  t.true(checked > 10);
  t.true(meanW / checked > 0.05, `mean |w| ${meanW / checked}: the thought must matter`);
  t.true(ev.baseNll.some((x, n) => Math.abs(x - ev.thinkNll[n]!) > 1e-6), 'thinking changes some NLL');

  // evalLogits: log-softmax at the label is −NLL, for both heads; only the chosen rows.
  const at: [number, number][] = [[0, 0], [0, 5], [1, 2], [0, 3]];
  const lg = await qs.evalLogits(at);
  t.is(lg.mixed.length, at.length);
  at.forEach(([b, i], k) => {
    const target = batch.ids[b * T + i + 1]!;
    t.is(lg.mixed[k]!.length, V + 2);
    t.true(Math.abs(-logSoftmaxAt(lg.mixed[k]!, target) - ev.thinkNll[b * T + i]!) <= 1e-10, `mixed logits at (${b}, ${i})`);
    t.true(Math.abs(-logSoftmaxAt(lg.base[k]!, target) - ev.baseNll[b * T + i]!) <= 1e-10, `base logits at (${b}, ${i})`);
  });
  await rejectsWith(t, qs.evalLogits([[0, T - 1]]), 'INVALID_ARGUMENT', /at\[0\]/);
  await rejectsWith(t, qs.evalLogits([[2, 0]]), 'INVALID_ARGUMENT', /b in \[0, 2\)/);
  await rejectsWith(t, qs.evalForward({ ...batch, T: 5 }, 1), 'INVALID_ARGUMENT', /batch\.ids has 24 elements; B·T needs 10/);
});

test('thinkDecode = evalLogits at the last position with the same seed; the thought is dropped from the cache', async (t) => {
  using e = cpuEngine(1);
  using qs = await thinkingModel(e, OPTIONS);
  const tok = qs.tokenizer;
  const batch = batchOf(tok, TEXTS);
  const ev = await qs.evalForward(batch, SEED);
  const M = OPTIONS.nAhead! - 3;
  const textIds = V; // the markers are the last two ids
  // Both documents' prefixes x_0..x_t at once, left-padded to a common length; rowIds = b.
  const lens = [6, 3]; // valid tokens of each prefix (t = len − 1)
  const L = Math.max(...lens);
  const ids = new Int32Array(2 * L);
  const pos = new Int32Array(2 * L);
  const valid = new Uint8Array(2 * L);
  lens.forEach((len, b) => {
    for (let j = 0; j < len; j++) {
      const k = b * L + L - len + j;
      ids[k] = batch.ids[b * T + j]!;
      pos[k] = j;
      valid[k] = 1;
    }
  });
  await rejectsWith(t, qs.thinkDecode(ids, pos, valid, 2, L, SEED), 'INVALID_ARGUMENT', /thinkResetCache/);
  await qs.thinkResetCache(2, L + 1);
  const out = await qs.thinkDecode(ids, pos, valid, 2, L, SEED, Int32Array.from([0, 1]));
  const lg = await qs.evalLogits(lens.map((len, b) => [b, len - 1] as [number, number]));
  lens.forEach((len, b) => {
    const tPos = len - 1;
    t.deepEqual(Array.from(out.thoughts.subarray(b * M, (b + 1) * M)), Array.from(ev.thoughts.subarray((b * T + tPos) * M, (b * T + tPos + 1) * M)), `thought of row ${b}`);
    const row = out.logits.subarray(b * (V + 2), (b + 1) * (V + 2));
    t.true(maxDiff(row, lg.mixed[b]!, textIds) <= 1e-10, `mixed logits of row ${b}: ${maxDiff(row, lg.mixed[b]!, textIds)}`);
    t.is(row[V], -Infinity, 'start marker masked');
    t.is(row[V + 1], -Infinity, 'end marker masked');
    const base = out.baseLogits.subarray(b * (V + 2), (b + 1) * (V + 2));
    t.true(maxDiff(base, lg.base[b]!, V + 2) <= 1e-10, `base logits of row ${b}`);
  });

  // The next token after the thought: decoding x_{t+1} sees the text only (the branch is gone).
  const next = Int32Array.from(lens.map((len, b) => batch.ids[b * T + len]!));
  const out2 = await qs.thinkDecode(next, Int32Array.from(lens), undefined, 2, 1, SEED);
  const lg2 = await qs.evalLogits(lens.map((len, b) => [b, len] as [number, number]));
  lens.forEach((len, b) => {
    t.true(maxDiff(out2.baseLogits.subarray(b * (V + 2)), lg2.base[b]!, V + 2) <= 1e-10, `base logits after the thought, row ${b}`);
    t.true(maxDiff(out2.logits.subarray(b * (V + 2)), lg2.mixed[b]!, textIds) <= 1e-10, `mixed logits after the thought, row ${b}`);
  });
  await rejectsWith(t, qs.thinkDecode(next, Int32Array.from(lens), undefined, 2, 1, SEED), 'INVALID_ARGUMENT', /cache is full/);
  await rejectsWith(t, qs.thinkDecode(next, new Int32Array(3), undefined, 2, 1, SEED), 'INVALID_ARGUMENT', /positions has 3 elements/);
  await rejectsWith(t, qs.thinkDecode(next, Int32Array.from(lens), undefined, 2, 1, SEED, new Int32Array(1)), 'INVALID_ARGUMENT', /rowIds/);
});

test('nAhead = 1: thinkDecode gives the base logits, no thought', async (t) => {
  using e = cpuEngine(1);
  using qs = await thinkingModel(e, { nAhead: 1, nAheadTalk: 1, nPasses: 1 });
  const ids = Int32Array.from([256, 104, 105]);
  await qs.thinkResetCache(1, 3);
  const out = await qs.thinkDecode(ids, Int32Array.from([0, 1, 2]), undefined, 1, 3, 0);
  t.is(out.thoughts.length, 0);
  t.true(maxDiff(out.logits, out.baseLogits, V) === 0);
  t.is(out.logits[V], -Infinity);
});

test('row ids: a document draws the same thoughts and NLLs in any batch (evalForward, sampleThoughts)', async (t) => {
  using engine = cpuEngine();
  using qs = await thinkingModel(engine, OPTIONS);
  const tok = qs.tokenizer;
  // Document "abc" as row 1 of a batch with row ids [5, 9], and alone with row id 9.
  const pair = batchOf(tok, TEXTS);
  const alone = batchOf(tok, [TEXTS[1]!]);
  const M = OPTIONS.nAhead! - 3;
  const inPair = await qs.evalForward(pair, SEED, Int32Array.from([5, 9]));
  const byItself = await qs.evalForward(alone, SEED, Int32Array.from([9]));
  t.deepEqual(Array.from(inPair.thoughts.subarray(T * M, 2 * T * M)), Array.from(byItself.thoughts));
  for (let i = 0; i < T; i++) {
    const a = inPair.thinkNll[T + i]!, b = byItself.thinkNll[i]!;
    t.true(Number.isNaN(a) ? Number.isNaN(b) : Math.abs(a - b) <= 1e-12, `thinkNll at ${i}: ${a} vs ${b}`);
  }
  // Without row ids the same document, alone, is row 0: other draws (the key differs).
  const asRow0 = await qs.evalForward(alone, SEED);
  t.notDeepEqual(Array.from(asRow0.thoughts), Array.from(byItself.thoughts));
  // The training sampler (nPasses 2): document b's rows are rowIds[b]·2 + p.
  const th2 = await qs.sampleThoughts(pair, SEED, Int32Array.from([5, 9]));
  const th1 = await qs.sampleThoughts(alone, SEED, Int32Array.from([9]));
  t.deepEqual(Array.from(th2.subarray(2 * T * M)), Array.from(th1));
  await rejectsWith(t, qs.evalForward(alone, SEED, Int32Array.from([-1])), 'INVALID_ARGUMENT', /rowIds\[0\] = -1/);
  await rejectsWith(t, qs.sampleThoughts(pair, SEED, Int32Array.from([1])), 'INVALID_ARGUMENT', /rowIds/);
});
