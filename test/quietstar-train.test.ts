/**
 * The Quiet-STaR trainer and `quietstar train`:
 *   - QuietStarConfig: defaults equal the spec's (§3), bad values and unknown keys name the field;
 *   - data (spec §2.2): BOS from the tokenizer, seeded random crop windows, pad = EOS,
 *     valid = ids != pad, labels = ids with pad → −100, seeded shuffling with a resumable position;
 *   - a tiny run (random Llama, 2 layers, D 64, byte tokenizer, nAhead 4): finite metrics, the
 *     snake_case metrics file, lr warm-up as scheduled, the initial-state identities (w = 0 ⇒
 *     zero rewards and policy loss), the mixing head learning;
 *   - exact resume (bit-identical metrics, weights and AdamW moments), abort with a checkpoint;
 *   - the CLI as a child process on a saved model folder: metrics.jsonl with the required keys
 *     and an exported folder that QuietStarModel.load reads; bad flags exit 2 naming the flag.
 */
import test from 'ava';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError } from '../lib/errors.js';
import { savePretrained } from '../lib/hf/checkpoint.js';
import { createModelConfig, type ModelConfigInput } from '../lib/model/config.js';
import { Model } from '../lib/model/model.js';
import { readQuietStarTrainerState } from '../lib/quietstar/checkpoint.js';
import { resolveQuietStarConfig, type QuietStarConfig } from '../lib/quietstar/config.js';
import {
  QuietStarDataset,
  QuietStarLoader,
  cropStart,
  loadQuietStarData,
  makeQuietStarBatch,
  type QuietStarData,
} from '../lib/quietstar/data.js';
import { QuietStarModel } from '../lib/quietstar/model.js';
import { trainQuietStar, type QuietStarTrainMetrics } from '../lib/quietstar/train.js';
import { gpt2TokenizerJson } from '../lib/tokenizer/gpt2-files.js';
import { createByteTokenizer } from '../lib/tokenizer/index.js';
import { lrSchedule } from '../lib/train/schedule.js';
import { cli, type Run } from './support/cli.js';
import { cpuEngine, rng } from './support/engine.js';


let tmp = '';
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'qs-qstrain-'));
});
test.after.always(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

// ---- config ---------------------------------------------------------------------------------

test('config: the defaults are the reference recipe (spec §3)', (t) => {
  const c = resolveQuietStarConfig({});
  t.like(c, {
    nAhead: 12, nAheadTalk: 4, nPasses: 2, policyLossBeta: 1e6, reinforceTemperature: 3, embeddingScale: 100,
    originalLossWeight: 0.5, baseLossBeta: 1, removeNegativeRewards: true, triceBaseline: true, mixing: 'reference',
    mixingSigmoid: false, thoughtTemperature: 1,
    lr: 1e-6, minLr: 0, warmupSteps: 20, schedule: 'linear', decaySteps: 100000, maxSteps: 100, weightDecay: 0.001,
    beta1: 0.9, beta2: 0.999, eps: 1e-8, clip: 1, batchSize: 8, microBatchSize: 4, seqLen: 256, seed: 42, cropMode: 'random',
  });
  t.is(c.outDir, undefined);
  // A smaller batch takes itself as the micro-batch.
  t.is(resolveQuietStarConfig({ batchSize: 2 }).microBatchSize, 2);
  // The reference's schedule: warm-up over 20 steps, then linear decay to 0 at 100000 (≈ constant for 100 steps).
  const lr = lrSchedule({ lr: c.lr, minLr: c.minLr, warmupSteps: c.warmupSteps, schedule: c.schedule, maxSteps: c.decaySteps });
  t.is(lr(0), 0);
  t.true(Math.abs(lr(10) - 5e-7) < 1e-20);
  t.is(lr(20), 1e-6);
  t.true(Math.abs(lr(99) - 1e-6 * (1 - 79 / 99980)) < 1e-20);
});

test('config: bad values and unknown keys name the field', (t) => {
  const bad = (cfg: object, re: RegExp): void => {
    const err = t.throws(() => resolveQuietStarConfig(cfg as QuietStarConfig), { instanceOf: QuietstarError });
    t.is(err?.code, 'INVALID_ARGUMENT');
    t.regex(err?.message ?? '', re);
  };
  bad({ lr: -1 }, /config\.lr must be a finite number >= 0 \(got -1\)/);
  bad({ batchSize: 6, microBatchSize: 4 }, /config\.batchSize must be a multiple of microBatchSize 4 \(got 6\)/);
  bad({ microBatchSize: 0 }, /config\.microBatchSize/);
  bad({ maxSteps: 1.5 }, /config\.maxSteps must be an integer >= 1/);
  bad({ beta2: 1 }, /config\.beta2/);
  bad({ schedule: 'step' }, /config\.schedule must be 'linear', 'cosine' or 'constant'/);
  bad({ cropMode: 'end' }, /config\.cropMode must be 'random' or 'start'/);
  bad({ seqLen: 1 }, /config\.seqLen/);
  bad({ nAhead: 2 }, /config\.nAhead/);
  bad({ nPasses: 0 }, /config\.nPasses/);
  bad({ mixing: 'both' }, /config\.mixing/);
  bad({ removeNegativeRewards: 'yes' }, /config\.removeNegativeRewards/);
  bad({ learningRate: 1e-6 }, /config\.learningRate is not a QuietStarConfig field/);
  bad({ outDir: '' }, /config\.outDir must be a path/);
});

// ---- data -----------------------------------------------------------------------------------

const byteTokenizer = (): ReturnType<typeof createByteTokenizer> => createByteTokenizer({ bosToken: '<s>', eosToken: '</s>' });

test('data: BOS from the tokenizer, pad = EOS, valid = ids != pad, labels = ids with pad → -100', async (t) => {
  const tok = byteTokenizer(); // BOS 256, EOS 257
  const file = join(tmp, 'docs.jsonl');
  await writeFile(file, ['ab', 'hello world', 'x'].map((text) => JSON.stringify({ text })).join('\n') + '\n');
  const data = await loadQuietStarData({ file, tokenizer: tok });
  t.is(data.train.padId, 257);
  // 'x' is BOS + one token: 2 tokens, kept.
  t.deepEqual(data.train.documents.map((d) => [...d]), [[256, 97, 98], [256, ...Buffer.from('hello world')], [256, 120]]);
  const batch = makeQuietStarBatch(data.train, [0, 2], [0, 0], { seqLen: 5 });
  t.deepEqual([...batch.ids], [256, 97, 98, 257, 257, 256, 120, 257, 257, 257]);
  t.deepEqual([...batch.valid], [1, 1, 1, 0, 0, 1, 1, 0, 0, 0]);
  t.deepEqual([...batch.labels], [256, 97, 98, -100, -100, 256, 120, -100, -100, -100]);
  t.is(batch.tokens, 5);
  t.is(batch.B, 2);
  t.is(batch.T, 5);
  // An EOS inside a pre-tokenised document is the pad: ignored (spec §2.2), as the reference does.
  const ids = QuietStarDataset.fromDocuments([[256, 5, 257, 6], [7]], { padId: 257 });
  t.is(ids.rows, 1, 'documents under 2 tokens are dropped');
  const b2 = makeQuietStarBatch(ids, [0], [0], { seqLen: 4 });
  t.deepEqual([...b2.valid], [1, 1, 0, 1]);
  t.deepEqual([...b2.labels], [256, 5, -100, 6]);
  // Without BOS when asked.
  const plain = await loadQuietStarData({ file, tokenizer: tok, addSpecialTokens: false, evalFraction: 0.34 });
  t.deepEqual([...plain.train.documents[0]!], [97, 98]);
  t.is(plain.eval?.rows, 1);
});

test('data: long documents are cropped to a seeded random window; start mode takes the head', (t) => {
  const docs = Array.from({ length: 40 }, (_, d) => Array.from({ length: 30 + d }, (_, i) => 1000 * d + i + 1));
  const ds = QuietStarDataset.fromDocuments(docs, { padId: 0 });
  const T = 8;
  const starts = (seed: number, epoch: number): number[] => docs.map((d, i) => cropStart(d.length, T, 'random', seed, epoch, i));
  const a = starts(42, 0);
  t.deepEqual(starts(42, 0), a, 'a pure function of (seed, epoch, document)');
  t.true(a.every((s, i) => s >= 0 && s <= docs[i]!.length - T));
  t.true(new Set(a).size > 10, 'starts vary');
  t.notDeepEqual(starts(43, 0), a);
  t.notDeepEqual(starts(42, 1), a);
  const batch = makeQuietStarBatch(ds, [3, 4], [0, 0], { seqLen: T, seed: 42 });
  for (const [b, d] of [[0, 3], [1, 4]] as const) {
    const s = a[d]!;
    t.deepEqual([...batch.ids.subarray(b * T, (b + 1) * T)], docs[d]!.slice(s, s + T), `document ${d}: a contiguous window at ${s}`);
  }
  t.true(batch.valid.every((v) => v === 1));
  const head = makeQuietStarBatch(ds, [3], [0], { seqLen: T, seed: 42, cropMode: 'start' });
  t.deepEqual([...head.ids], docs[3]!.slice(0, T));
  t.is(cropStart(5, 8, 'random', 1, 0, 0), 0, 'short documents are not cropped');
});

test('data: the loader shuffles each epoch with the seed and resumes from its position', (t) => {
  const docs = Array.from({ length: 10 }, (_, d) => [d + 1, d + 1, d + 1]);
  const ds = QuietStarDataset.fromDocuments(docs, { padId: 0 });
  const firstIds = (l: QuietStarLoader, n: number): number[] => Array.from({ length: n }, () => [...l.next().ids].filter((_, i) => i % 3 === 0)).flat();
  const a = new QuietStarLoader(ds, { batchSize: 2, seqLen: 3, seed: 7 });
  const seq = firstIds(a, 10); // two epochs
  t.deepEqual([...seq.slice(0, 10)].sort((x, y) => x - y), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'every document once per epoch');
  t.deepEqual([...seq.slice(10)].sort((x, y) => x - y), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  t.notDeepEqual(seq.slice(0, 10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'shuffled');
  t.notDeepEqual(seq.slice(0, 10), seq.slice(10), 'a new order per epoch');
  const b = new QuietStarLoader(ds, { batchSize: 2, seqLen: 3, seed: 7 });
  firstIds(b, 3);
  const pos = JSON.parse(JSON.stringify(b.position)) as { epoch: number; index: number };
  t.deepEqual(pos, { epoch: 0, index: 6 });
  const c = new QuietStarLoader(ds, { batchSize: 2, seqLen: 3, seed: 7, position: pos });
  t.deepEqual(firstIds(c, 7), seq.slice(6));
  t.throws(() => c.seek({ epoch: 0, index: 10 }), { message: /data position/ });
});

// ---- training -------------------------------------------------------------------------------

const TINY: Omit<ModelConfigInput, 'vocabSize'> = { modelType: 'llama', dModel: 64, nLayers: 2, nHeads: 4, nKvHeads: 2, dFF: 128, maxSeqLen: 64 };
const ALGO = { nAhead: 4, nAheadTalk: 2, nPasses: 2 } as const;

/** Documents of lowercase text with structure (repeated words), 20..60 bytes each. */
function corpus(n: number, seed: number): string[] {
  const r = rng(seed);
  const words = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'then', 'ran', 'away', '1 + 1 = 2', '2 + 2 = 4'];
  return Array.from({ length: n }, () => {
    let s = '';
    const len = 20 + Math.floor(r() * 40);
    while (s.length < len) s += words[Math.floor(r() * words.length)] + ' ';
    return s.trim();
  });
}

async function tinyData(tok: ReturnType<typeof createByteTokenizer>, nTrain: number, nEval = 0): Promise<QuietStarData> {
  const file = join(tmp, `corpus-${nTrain}-${nEval}.jsonl`);
  await writeFile(file, corpus(nTrain + nEval, 5).map((text) => JSON.stringify({ text })).join('\n') + '\n');
  const all = await loadQuietStarData({ file, tokenizer: tok });
  return nEval > 0 ? { train: all.train.slice(0, nTrain), eval: all.train.slice(nTrain, nTrain + nEval) } : { train: all.train };
}

/** A tiny random Llama with the thought tokens added (the base model is disposed). */
async function tinyQs(engine: ReturnType<typeof cpuEngine>, seed: number): Promise<QuietStarModel> {
  const tok = byteTokenizer();
  using base = await Model.create(engine, createModelConfig({ ...TINY, vocabSize: tok.vocabSize }));
  await base.initWeights(seed);
  return await QuietStarModel.fromModel(base, tok, { quietstar: ALGO, seed });
}

async function collect(it: AsyncIterable<QuietStarTrainMetrics>, stopAfter = Infinity): Promise<QuietStarTrainMetrics[]> {
  const out: QuietStarTrainMetrics[] = [];
  for await (const m of it) {
    out.push(m);
    if (out.length >= stopAfter) break;
  }
  return out;
}

const REQUIRED_KEYS = ['step', 'loss', 'nll_base', 'nll_talk', 'policy_loss', 'reward_mean'];
const ALL_KEYS = [
  ...REQUIRED_KEYS, 'reward_std', 'positive_share', 'mix_mean', 'mix_std', 'mix_min', 'mix_max', 'lr', 'grad_norm', 'tokens',
  'tokens_per_second', 'elapsed_ms',
];

test('a tiny run: finite metrics, snake_case metrics file, warm-up, zero rewards at w = 0, the mixing head learns', async (t) => {
  using engine = cpuEngine(1);
  using qs = await tinyQs(engine, 1);
  const data = await tinyData(qs.tokenizer as ReturnType<typeof createByteTokenizer>, 12, 4);
  const outDir = join(tmp, 'tiny');
  const config: QuietStarConfig = {
    ...ALGO, maxSteps: 4, batchSize: 4, microBatchSize: 2, seqLen: 24, lr: 1e-3, warmupSteps: 2, evalEvery: 2, evalBatches: 1, outDir,
  };
  const ms = await collect(trainQuietStar(qs, data, config));
  t.deepEqual(ms.map((m) => m.step), [1, 2, 3, 4]);
  for (const m of ms) {
    for (const [k, v] of Object.entries(m)) if (typeof v === 'number') t.true(Number.isFinite(v), `step ${m.step} ${k} = ${v}`);
    t.true(m.loss > 0 && m.nllBase > 0 && m.nllTalk > 0);
    t.true(m.positiveShare >= 0 && m.positiveShare <= 1);
    t.true(m.mixMin <= m.mixMean && m.mixMean <= m.mixMax);
  }
  // Warm-up from 0 over 2 steps, then lr (decay to 0 at step 100000).
  const want = [0, 5e-4, 1e-3, 1e-3 * (1 - 1 / 99998)];
  ms.forEach((m, i) => t.true(Math.abs(m.lr - want[i]!) < 1e-15, `lr at step ${m.step}: ${m.lr} vs ${want[i]}`));
  // Steps 1 and 2 run at the initial weights (lr 0 at step 1): w = 0, so talk = base and every
  // reward and the policy loss are 0 (spec §2.8).
  for (const m of ms.slice(0, 2)) {
    t.is(m.mixMin, 0);
    t.is(m.mixMax, 0);
    t.true(Math.abs(m.rewardMean) < 1e-5 && m.rewardStd < 1e-4, `step ${m.step}: reward ${m.rewardMean} ± ${m.rewardStd}`);
    t.true(Math.abs(m.policyLoss) < 1e-6, `policy loss ${m.policyLoss}`);
  }
  // After an update the zero-initialised last mixing layer has moved: w is no longer 0.
  t.true(ms[3]!.mixMax - ms[3]!.mixMin > 0, `mixing weights at step 4: [${ms[3]!.mixMin}, ${ms[3]!.mixMax}]`);
  t.true(ms[1]!.tokens > ms[0]!.tokens, 'tokens count up');
  t.true(ms[0]!.tokens > 0 && ms[0]!.tokens <= 4 * 24);
  t.true(ms[1]!.evalLoss !== undefined && Number.isFinite(ms[1]!.evalLoss) && ms[0]!.evalLoss === undefined);
  t.true(Number.isFinite(ms[3]!.evalNllBase!) && Number.isFinite(ms[3]!.evalNllTalk!));

  const lines = (await readFile(join(outDir, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(lines.map((l) => l.step), [1, 2, 3, 4]);
  for (const l of lines) for (const k of ALL_KEYS) t.is(typeof l[k], 'number', `metrics.jsonl key ${k}`);
  t.is(lines[0]!.nll_base, ms[0]!.nllBase);
  t.is(typeof lines[1]!.eval_loss, 'number');
  // The last step wrote a checkpoint (a Quiet-STaR folder + optimizer + state).
  t.is((await readFile(join(outDir, 'latest'), 'utf8')).trim(), 'checkpoint-4');
  const files = await readdir(join(outDir, 'checkpoint-4'));
  for (const f of ['config.json', 'optimizer.safetensors', 'trainer_state.json']) t.true(files.includes(f), f);

  // T must fit the model; the config may restate the model's algorithm options but not change them.
  await t.throwsAsync(collect(trainQuietStar(qs, data, { ...config, seqLen: 65, outDir: undefined })), { message: /config\.seqLen must be at most 64/ });
  await t.throwsAsync(collect(trainQuietStar(qs, data, { ...config, nAhead: 5, outDir: undefined })), { message: /config\.nAhead is 5 but the QuietStarModel was made with nAhead 4/ });
});

test('checkpoint + resume continues bit-identically; abort stops with a checkpoint', async (t) => {
  using engine = cpuEngine(1);
  const buffers = async (qs: QuietStarModel): Promise<Buffer[]> =>
    Promise.all((['params', 'm', 'v'] as const).map(async (b) => Buffer.from(((await qs.params.buffer(b).data()) as Float32Array).buffer)));
  using straight = await tinyQs(engine, 2);
  const tok = straight.tokenizer as ReturnType<typeof createByteTokenizer>;
  const data = await tinyData(tok, 10, 3);
  const config: QuietStarConfig = {
    ...ALGO, maxSteps: 5, batchSize: 4, microBatchSize: 2, seqLen: 20, lr: 1e-3, warmupSteps: 1, evalEvery: 2, evalBatches: 1, seed: 9, checkpointEvery: 0,
  };
  const a = await collect(trainQuietStar(straight, data, { ...config, outDir: join(tmp, 'straight') }));
  t.deepEqual(a.map((m) => m.step), [1, 2, 3, 4, 5]);

  const dirB = join(tmp, 'resumed');
  let part1: QuietStarTrainMetrics[];
  {
    using first = await tinyQs(engine, 2);
    part1 = await collect(trainQuietStar(first, data, { ...config, outDir: dirB, checkpointEvery: 3 }), 3);
  }
  t.is(part1[2]!.checkpoint, join(dirB, 'checkpoint-3'));
  const state = await readQuietStarTrainerState(join(dirB, 'checkpoint-3'));
  t.is(state.step, 3);
  t.deepEqual({ epoch: state.data.epoch, index: state.data.index }, { epoch: 1, index: 2 }); // 3 steps · 4 documents of 10
  t.is(state.quietstar.nAhead, 4);

  // A model with other weights resumes from the checkpoint.
  using resumed = await tinyQs(engine, 77);
  const b = await collect(trainQuietStar(resumed, data, { ...config, outDir: dirB, checkpointEvery: 3, resumeFrom: dirB }));
  t.deepEqual(b.map((m) => m.step), [4, 5]);
  const key = (m: QuietStarTrainMetrics): unknown => [m.step, m.loss, m.nllBase, m.nllTalk, m.policyLoss, m.rewardMean, m.mixMax, m.lr, m.gradNorm, m.tokens, m.evalLoss];
  t.deepEqual([...part1, ...b].map(key), a.map(key));
  const [pa, ma, va] = await buffers(straight);
  const [pb, mb, vb] = await buffers(resumed);
  t.true(pa!.equals(pb!), 'weights differ');
  t.true(ma!.equals(mb!), 'm differs');
  t.true(va!.equals(vb!), 'v differs');
  t.is(resumed.params.step, 5);
  const lines = (await readFile(join(dirB, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { step: number });
  t.deepEqual(lines.map((m) => m.step), [1, 2, 3, 4, 5]);

  // The checkpoint folder is a Quiet-STaR model with the trained weights (the tokenizer was an
  // in-memory one, so it is given again).
  using loaded = await QuietStarModel.load(engine, join(dirB, 'checkpoint-5'), { tokenizer: byteTokenizer() });
  t.true(Buffer.from(((await loaded.params.buffer('params').data()) as Float32Array).buffer).equals(pa!), 'saved weights differ');
  t.deepEqual(loaded.options, straight.options);

  // Other data or another seed is refused.
  await t.throwsAsync(collect(trainQuietStar(resumed, await tinyData(tok, 11), { ...config, resumeFrom: dirB })), { message: /documents/ });
  await t.throwsAsync(collect(trainQuietStar(resumed, data, { ...config, seed: 10, resumeFrom: dirB })), { message: /config\.seed/ });

  // Abort: stops after the current step and writes its checkpoint.
  using model = await tinyQs(engine, 3);
  const ac = new AbortController();
  const outDir = join(tmp, 'abort');
  const got: number[] = [];
  for await (const m of trainQuietStar(model, data, { ...config, maxSteps: 50, outDir }, { signal: ac.signal })) {
    got.push(m.step);
    if (m.step === 2) ac.abort();
  }
  t.deepEqual(got, [1, 2]);
  t.is((await readFile(join(outDir, 'latest'), 'utf8')).trim(), 'checkpoint-2');
  t.is((await readQuietStarTrainerState(join(outDir, 'checkpoint-2'))).step, 2);
});

// ---- CLI ------------------------------------------------------------------------------------

/** GPT-2's byte → printable character map (bytes_to_unicode). */
function byteChars(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const out: string[] = new Array<string>(256);
  for (const b of bs) out[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (out[b] === undefined) out[b] = String.fromCharCode(256 + n++);
  return out;
}

/** A base model folder: a tiny random Llama and a byte-level tokenizer.json (256 bytes + <|endoftext|>). */
async function baseModelFolder(dir: string): Promise<void> {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, b) => (vocab[c] = b));
  vocab['<|endoftext|>'] = 256;
  using engine = cpuEngine(1);
  using model = await Model.create(engine, createModelConfig({ ...TINY, vocabSize: 257, eosTokenId: 256, bosTokenId: 256 }));
  await model.initWeights(4);
  await savePretrained(model, dir);
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(gpt2TokenizerJson(vocab, [])));
}

test('quietstar train on a model folder: progress, metrics.jsonl with the required keys, a loadable export; resume', async (t) => {
  const dir = join(tmp, 'cli');
  const modelDir = join(dir, 'base');
  await baseModelFolder(modelDir);
  const data = join(dir, 'train.jsonl');
  await writeFile(data, corpus(16, 9).map((text) => JSON.stringify({ text })).join('\n') + '\n');
  const configFile = join(dir, 'qs.json');
  await writeFile(configFile, JSON.stringify({ nAhead: 4, nAheadTalk: 2, lr: 1e-3, warmupSteps: 1, microBatchSize: 2 }));
  const out = join(dir, 'out');
  const res = await cli(
    'train', '--model', modelDir, '--data', data, '--config', configFile, '--steps', '3', '--seq-len', '16', '--batch-size', '4',
    '--out', out, '--checkpoint-every', '2', '--threads', '1',
  );
  t.is(res.status, 0, res.stderr);
  t.regex(res.stderr, /step 3\/3 loss \d+\.\d+ \| nll base \d+\.\d+ talk \d+\.\d+ \| policy [\d.e+-]+ \| reward [\d.e+-]+ \(\d+\.\d% positive\)/);
  const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(lines.map((l) => l.step), [1, 2, 3]);
  for (const l of lines) for (const k of REQUIRED_KEYS) t.is(typeof l[k], 'number', k);
  const files = await readdir(out);
  for (const f of ['config.json', 'model.safetensors', 'checkpoint-2', 'checkpoint-3', 'latest', 'metrics.jsonl']) t.true(files.includes(f), f);
  const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as { quietstar?: { nAhead?: number } };
  t.is(config.quietstar?.nAhead, 4);
  {
    using engine = cpuEngine(1);
    using qs = await QuietStarModel.load(engine, out);
    t.is(qs.options.nAhead, 4);
    t.is(qs.options.nAheadTalk, 2);
    t.is(qs.model.config.vocabSize, 259);
  }
  // --resume continues from the latest checkpoint with its config; --steps extends the run.
  const more = await cli('train', '--data', data, '--out', out, '--resume', '--steps', '4', '--threads', '1');
  t.is(more.status, 0, more.stderr);
  const lines2 = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { step: number });
  t.deepEqual(lines2.map((l) => l.step), [1, 2, 3, 4]);
  // A Quiet-STaR folder trains further as --model (its options come along); --metrics elsewhere.
  const metrics = join(dir, 'again.jsonl');
  const again = await cli('train', '--model', out, '--data', data, '--out', join(dir, 'out2'), '--steps', '1', '--seq-len', '16',
    '--batch-size', '2', '--metrics', metrics, '--threads', '1');
  t.is(again.status, 0, again.stderr);
  t.regex(again.stderr, /nAhead 4/);
  t.is((await readFile(metrics, 'utf8')).trim().split('\n').length, 1);
});

test('quietstar train: help, and bad flags exit 2 naming the flag', async (t) => {
  const help = await cli('train', '--help');
  t.is(help.status, 0);
  for (const flag of ['--model', '--data', '--config', '--steps', '--seq-len', '--batch-size', '--out', '--resume', '--metrics']) t.true(help.stdout.includes(flag), flag);
  const top = await cli('--help');
  t.regex(top.stdout, /\n {2}train {8}Quiet-STaR/);
  const cases: [string[], RegExp][] = [
    [['train', '--model', 'x', '--out', 'z'], /--data is required/],
    [['train', '--model', 'x', '--data', 'y'], /--out is required/],
    [['train', '--model', 'x', '--data', 'y', '--out', 'z', '--steps', '0'], /--steps must be an integer >= 1 \(got '0'\)/],
    [['train', '--model', 'x', '--data', 'y', '--out', 'z', '--n-ahead', '2'], /--n-ahead must be 1 \(no thought\) or >= 3/],
    [['train', '--model', 'x', '--data', 'y', '--out', 'z', '--crop', 'end'], /--crop must be random or start/],
    [['train', '--model', 'x', '--data', 'y', '--out', 'z', '--bogus'], /Unknown option '--bogus'/],
    [['train', '--data', 'y', '--out', join(tmp, 'nothing-here'), '--resume'], /--resume: no checkpoint in --out/],
    [['train', '--data', 'y', '--out', 'z'], /--model is required/],
  ];
  const runs: Run[] = [];
  for (let i = 0; i < cases.length; i += 4) runs.push(...(await Promise.all(cases.slice(i, i + 4).map(([args]) => cli(...args)))));
  cases.forEach(([args, message], i) => {
    t.is(runs[i]!.status, 2, `${args.join(' ')}: ${runs[i]!.stderr}`);
    t.regex(runs[i]!.stderr, message);
  });
  // A config file with an unknown field is a bad file (exit 1) naming the file and the field.
  const bad = join(tmp, 'bad-config.json');
  await writeFile(bad, JSON.stringify({ nAhead: 4, learning_rate: 1 }));
  const r = await cli('train', '--model', 'x', '--data', 'y', '--out', 'z', '--config', bad);
  t.is(r.status, 1);
  t.regex(r.stderr, /bad-config\.json: config\.learning_rate is not a QuietStarConfig field/);
});
