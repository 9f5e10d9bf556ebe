/**
 * Plain LM training: the LR schedule against hand-computed values, config validation,
 * gradient accumulation equivalence, token-weighted evaluation, checkpoints and bit-exact
 * resume on the CPU, abort, and a tiny Llama trained on tinyshakespeare ending well below the
 * unigram entropy of its held-out tokens.
 */
import test from 'ava';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { BatchLoader, LmDataset, evalBatches, loadLmData, makeBatch, type LmData } from '../lib/data/index.js';
import { QuietstarError } from '../lib/errors.js';
import { loadPretrained } from '../lib/hf/checkpoint.js';
import { createModelConfig, type ModelConfigInput } from '../lib/model/config.js';
import { Model } from '../lib/model/model.js';
import { createByteTokenizer } from '../lib/tokenizer/index.js';
import { evaluateLm, lrSchedule, readTrainerState, resolveTrainLmConfig, trainLm, type TrainLmMetrics } from '../lib/train/index.js';
import { dataPath, missingData } from '../lib/util/data-path.js';
import { assertClose, cpuEngine, rng } from './support/engine.js';

const TINY: ModelConfigInput = { modelType: 'llama', vocabSize: 64, dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, dFF: 64, maxSeqLen: 64 };

/** A random token corpus over [0, 64) with some structure (a repeated motif), as one document. */
function tinyData(seqLen: number, rows: number, seed = 1): LmData {
  const r = rng(seed);
  const n = rows * seqLen + 1;
  const doc: number[] = [];
  for (let i = 0; i < n; i++) doc.push(i % 7 === 0 ? 5 : Math.floor(r() * 64));
  return LmDataset.fromDocuments([doc], { seqLen }).split(0.2);
}

let tmp = '';
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'qs-train-'));
});
test.after.always(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

test('schedule: warm-up from 0, cosine and linear decay to minLr, constant', (t) => {
  const cos = lrSchedule({ lr: 1, minLr: 0.1, warmupSteps: 10, maxSteps: 110, schedule: 'cosine' });
  t.is(cos(0), 0);
  t.is(cos(5), 0.5);
  t.is(cos(10), 1);
  // p = 50/100 = 0.5: 0.1 + 0.9 · ½ (1 + cos(π/2)) = 0.55
  t.true(Math.abs(cos(60) - 0.55) < 1e-12);
  // p = 25/100: 0.1 + 0.45 (1 + cos(π/4)) = 0.868198...
  t.true(Math.abs(cos(35) - (0.1 + 0.45 * (1 + Math.SQRT1_2))) < 1e-12);
  t.true(Math.abs(cos(110) - 0.1) < 1e-12);
  t.true(Math.abs(cos(500) - 0.1) < 1e-12, 'stays at minLr past maxSteps');
  const lin = lrSchedule({ lr: 2, minLr: 0, warmupSteps: 0, maxSteps: 100, schedule: 'linear' });
  t.is(lin(0), 2);
  t.is(lin(25), 1.5);
  t.is(lin(100), 0);
  const con = lrSchedule({ lr: 3e-4, warmupSteps: 4, maxSteps: 10, schedule: 'constant' });
  t.deepEqual([0, 1, 2, 4, 9].map(con), [0, 0.75e-4, 1.5e-4, 3e-4, 3e-4]);
  t.throws(() => lrSchedule({ lr: 1, minLr: 2, maxSteps: 10 }), { message: /config\.minLr/ });
  t.throws(() => lrSchedule({ lr: 1, maxSteps: 0 }), { message: /config\.maxSteps/ });
});

test('config: defaults filled, bad values name the field', (t) => {
  const c = resolveTrainLmConfig({ maxSteps: 10, lr: 1e-3 }, 32);
  t.is(c.minLr, 1e-4);
  t.is(c.seqLen, 32);
  t.is(c.batchSize, 8);
  t.is(c.evalBatchSize, 8);
  t.is(c.schedule, 'cosine');
  const bad = (cfg: object, re: RegExp): void => {
    const err = t.throws(() => resolveTrainLmConfig({ maxSteps: 10, ...cfg }, 32), { instanceOf: QuietstarError });
    t.is(err?.code, 'INVALID_ARGUMENT');
    t.regex(err?.message ?? '', re);
  };
  bad({ batchSize: 0 }, /config\.batchSize must be an integer >= 1 \(got 0\)/);
  bad({ gradAccumulation: 1.5 }, /config\.gradAccumulation/);
  bad({ seqLen: 16 }, /config\.seqLen must be the training data's seqLen 32/);
  bad({ beta2: 1 }, /config\.beta2/);
  bad({ schedule: 'step' }, /config\.schedule/);
  bad({ lr: -1 }, /config\.lr/);
  bad({ learningRate: 1 }, /config\.learningRate is not a TrainLmConfig field/);
  t.throws(() => resolveTrainLmConfig({} as { maxSteps: number }, 32), { message: /config\.maxSteps/ });
});

test('gradient accumulation: B=4 once equals B=2 twice with backward(1/2)', async (t) => {
  using engine = cpuEngine();
  using model = await Model.create(engine, createModelConfig(TINY));
  await model.initWeights(3);
  const { train } = tinyData(16, 20);
  const rows = [0, 3, 7, 9];
  const g = async (parts: number[][]): Promise<Float32Array> => {
    await model.params.zeroGrad();
    for (const p of parts) {
      await model.forward(makeBatch(train, p));
      await model.backward(1 / parts.length);
    }
    return (await model.params.buffer('grads').data()) as Float32Array;
  };
  const whole = await g([rows]);
  const halves = await g([rows.slice(0, 2), rows.slice(2)]);
  t.true(whole.some((x) => x !== 0));
  assertClose(t, halves, whole, { rtol: 1e-4, atol: 1e-7, label: 'grads' });

  // The same through trainLm: its first step's loss and gradient norm agree.
  const data = tinyData(16, 20);
  const first = async (batchSize: number, gradAccumulation: number): Promise<TrainLmMetrics> => {
    await model.initWeights(3);
    await model.params.setStep(0);
    for await (const m of trainLm(model, data, { maxSteps: 1, batchSize, gradAccumulation, lr: 1e-3, seed: 4 })) return m;
    throw new Error('no step');
  };
  const a = await first(4, 1);
  const b = await first(2, 2);
  t.true(Math.abs(a.loss - b.loss) < 1e-5 * a.loss, `loss ${a.loss} vs ${b.loss}`);
  t.true(Math.abs(a.gradNorm - b.gradNorm) < 1e-4 * a.gradNorm, `gradNorm ${a.gradNorm} vs ${b.gradNorm}`);
  t.is(a.tokens, 4 * 16);
  t.is(b.tokens, 4 * 16);
});

test('evaluation is a token-weighted mean: independent of how padded rows are batched', async (t) => {
  using engine = cpuEngine();
  using model = await Model.create(engine, createModelConfig(TINY));
  await model.initWeights(5);
  const r = rng(2);
  const docs = [3, 17, 9, 30, 2, 12].map((n) => Array.from({ length: n }, () => Math.floor(r() * 64)));
  const ds = LmDataset.fromDocuments(docs, { seqLen: 16, layout: 'crop' });
  const all = [...evalBatches(ds, ds.rows)][0]!;
  const ref = await model.forward(all); // mean over every non-ignored target
  t.is(ref.tokens, ds.targetTokens);
  for (const batchSize of [1, 2, 4]) {
    const ev = await evaluateLm(model, ds, { batchSize });
    t.is(ev.tokens, ds.targetTokens);
    t.true(Math.abs(ev.loss - ref.loss) < 1e-5 * ref.loss, `batchSize ${batchSize}: ${ev.loss} vs ${ref.loss}`);
    t.true(Math.abs(ev.perplexity - Math.exp(ev.loss)) < 1e-9 * ev.perplexity);
  }
});

async function collect(it: AsyncIterable<TrainLmMetrics>, stopAfter = Infinity): Promise<TrainLmMetrics[]> {
  const out: TrainLmMetrics[] = [];
  for await (const m of it) {
    out.push(m);
    if (out.length >= stopAfter) break;
  }
  return out;
}

test('checkpoint + resume continues bit-identically (losses, weights, AdamW moments)', async (t) => {
  const data = tinyData(16, 30);
  const config = {
    maxSteps: 7, batchSize: 3, gradAccumulation: 2, lr: 3e-3, warmupSteps: 2, evalEvery: 2, evalBatches: 2, seed: 11,
  };
  using engine = cpuEngine();
  const buffers = async (m: Model): Promise<Float32Array[]> =>
    Promise.all((['params', 'm', 'v'] as const).map(async (b) => (await m.params.buffer(b).data()) as Float32Array));

  // Straight through.
  using straight = await Model.create(engine, createModelConfig(TINY));
  await straight.initWeights(1);
  const dirA = join(tmp, 'straight');
  const a = await collect(trainLm(straight, data, { ...config, outDir: dirA }));
  t.deepEqual(a.map((m) => m.step), [1, 2, 3, 4, 5, 6, 7]);

  // Three steps (checkpoint at 3), stop; a fresh model with other weights resumes for the rest.
  const dirB = join(tmp, 'resumed');
  let part1: TrainLmMetrics[];
  {
    using first = await Model.create(engine, createModelConfig(TINY));
    await first.initWeights(1);
    part1 = await collect(trainLm(first, data, { ...config, outDir: dirB, checkpointEvery: 3 }), 3);
  }
  t.is(part1[2]!.checkpoint, join(dirB, 'checkpoint-3'));
  const files = (await readdir(join(dirB, 'checkpoint-3'))).sort();
  t.deepEqual(files, ['config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer_state.json']);
  const state = await readTrainerState(join(dirB, 'checkpoint-3'));
  t.is(state.step, 3);
  t.deepEqual({ epoch: state.data.epoch, index: state.data.index }, { epoch: 0, index: 18 }); // 3 steps · 2 · 3 rows of 24
  t.is(state.tokens, 3 * 6 * 16);

  using resumed = await Model.create(engine, createModelConfig(TINY));
  await resumed.initWeights(999);
  const b = await collect(trainLm(resumed, data, { ...config, outDir: dirB, checkpointEvery: 3, resumeFrom: dirB }));
  t.deepEqual(b.map((m) => m.step), [4, 5, 6, 7]);

  // Exact equality: resume must be bit-identical on the CPU.
  const key = (m: TrainLmMetrics): unknown => [m.step, m.loss, m.lr, m.gradNorm, m.tokens, m.evalLoss];
  t.deepEqual([...part1, ...b].map(key), a.map(key));
  const [pa, ma, va] = await buffers(straight);
  const [pb, mb, vb] = await buffers(resumed);
  t.true(Buffer.from(pa!.buffer).equals(Buffer.from(pb!.buffer)), 'weights differ');
  t.true(Buffer.from(ma!.buffer).equals(Buffer.from(mb!.buffer)), 'm differs');
  t.true(Buffer.from(va!.buffer).equals(Buffer.from(vb!.buffer)), 'v differs');
  t.is(resumed.params.step, 7);

  // metrics.jsonl holds each step once; latest points at the final checkpoint.
  const lines = (await readFile(join(dirB, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as TrainLmMetrics);
  t.deepEqual(lines.map((m) => m.step), [1, 2, 3, 4, 5, 6, 7]);
  t.is((await readFile(join(dirB, 'latest'), 'utf8')).trim(), 'checkpoint-7');
  t.deepEqual((await readdir(dirB)).filter((n) => n.startsWith('checkpoint-')).sort(), ['checkpoint-3', 'checkpoint-6', 'checkpoint-7']);

  // The checkpoint is a Hugging Face folder that loads with the trained weights.
  using loaded = await loadPretrained(engine, join(dirB, 'checkpoint-7'));
  const pl = (await loaded.params.buffer('params').data()) as Float32Array;
  t.true(Buffer.from(pl.buffer).equals(Buffer.from(pa!.buffer)), 'HF weights differ from the trained ones');

  // Resuming a finished run does nothing; other data is refused.
  t.deepEqual(await collect(trainLm(resumed, data, { ...config, resumeFrom: dirB })), []);
  await t.throwsAsync(collect(trainLm(resumed, tinyData(16, 40), { ...config, resumeFrom: dirB })), { message: /rows/ });
  using other = await Model.create(engine, createModelConfig({ ...TINY, dFF: 96 }));
  await t.throwsAsync(collect(trainLm(other, data, { ...config, resumeFrom: dirB })), { message: /another model/ });
});

test('abort stops after the current step and saves a checkpoint', async (t) => {
  using engine = cpuEngine();
  using model = await Model.create(engine, createModelConfig(TINY));
  await model.initWeights(1);
  const ac = new AbortController();
  const outDir = join(tmp, 'abort');
  const got: TrainLmMetrics[] = [];
  for await (const m of trainLm(model, tinyData(16, 20), { maxSteps: 50, batchSize: 2, outDir }, { signal: ac.signal })) {
    got.push(m);
    if (m.step === 2) ac.abort();
  }
  t.deepEqual(got.map((m) => m.step), [1, 2]);
  t.is((await readFile(join(outDir, 'latest'), 'utf8')).trim(), 'checkpoint-2');
  const state = await readTrainerState(join(outDir, 'checkpoint-2'));
  t.is(state.step, 2);
});

test('trainLm refuses a model without optimizer state and data without rows', async (t) => {
  using engine = cpuEngine();
  using model = await Model.create(engine, createModelConfig(TINY), { optimizer: false });
  await t.throwsAsync(collect(trainLm(model, tinyData(16, 10), { maxSteps: 1 })), { message: /optimizer/ });
  using m2 = await Model.create(engine, createModelConfig(TINY));
  const empty = { train: LmDataset.fromDocuments([[1, 2]], { seqLen: 16, layout: 'pack' }) };
  await t.throwsAsync(collect(trainLm(m2, empty, { maxSteps: 1 })), { message: /no rows/ });
});

// ---- tinyshakespeare ------------------------------------------------------------------------

const shakespeareMissing = missingData('tinyshakespeare', 'input.txt');
if (shakespeareMissing) console.log(`train.test.ts: skipping the tinyshakespeare run: ${shakespeareMissing}`);

/** Entropy (nats) of the empirical unigram distribution of the held-out targets. */
function unigramEntropy(ds: LmDataset): { entropy: number; tokens: number } {
  const counts = new Map<number, number>();
  let n = 0;
  for (const b of evalBatches(ds, 64)) {
    for (const y of b.targets) {
      if (y === -100) continue;
      counts.set(y, (counts.get(y) ?? 0) + 1);
      n++;
    }
  }
  let h = 0;
  for (const c of counts.values()) h -= (c / n) * Math.log(c / n);
  return { entropy: h, tokens: n };
}

(shakespeareMissing ? test.skip : test)('a tiny Llama trained on tinyshakespeare ends well below the unigram entropy', async (t) => {
  const tokenizer = createByteTokenizer({ eosToken: '<|endoftext|>' });
  const seqLen = 64;
  const all = await loadLmData({ file: dataPath('tinyshakespeare', 'input.txt'), tokenizer, seqLen, evalFraction: 0.1 });
  // The first 512 held-out rows (32k tokens) keep evaluation cheap; the entropy is of the same tokens.
  const data = { train: all.train, eval: all.eval!.slice(0, 512) };
  const { entropy, tokens } = unigramEntropy(data.eval);
  // One thread: ava runs test files side by side, and OpenMP teams oversubscribed on a small
  // machine spin-wait (seconds per step); the result does not depend on the thread count.
  using engine = cpuEngine(1);
  using model = await Model.create(
    engine,
    createModelConfig({ modelType: 'llama', vocabSize: tokenizer.vocabSize, dModel: 64, nLayers: 2, nHeads: 4, dFF: 192, maxSeqLen: seqLen }),
  );
  await model.initWeights(1337);
  const config = { maxSteps: 300, batchSize: 16, lr: 3e-3, minLr: 3e-4, warmupSteps: 20, weightDecay: 0.1, evalBatches: 0, evalBatchSize: 64, seed: 1 };
  const start = await evaluateLm(model, data.eval, { batchSize: 64 });
  const metrics = await collect(trainLm(model, data, config));
  const last = metrics[metrics.length - 1]!;
  t.log(`held-out tokens: ${tokens}; unigram entropy ${entropy.toFixed(3)} nats/token`);
  t.log(`eval loss: ${start.loss.toFixed(3)} at init -> ${last.evalLoss!.toFixed(3)} after ${last.step} steps (train loss ${last.loss.toFixed(3)}, ${Math.round(last.tokensPerSecond)} tok/s)`);
  t.is(last.step, 300);
  t.true(Math.abs(start.loss - Math.log(tokenizer.vocabSize)) < 0.3, 'an untrained model is near uniform');
  t.true(last.evalLoss! < entropy - 0.4, `eval loss ${last.evalLoss} is not clearly below the unigram entropy ${entropy}`);
});
