/**
 * Zero-shot answer evaluation and the hard-token analysis end to end on a tiny random Quiet-STaR model: the
 * paper metric without thinking equals the metric on the plain model's full-sequence logits, with thinking it
 * equals the metric on the thinking decode's logits at each answer position (same seed, same row), exact match
 * comes from greedy generation with and without thinking, the crop window, the JSONL lines; the hard-token NLLs
 * are the plain model's (base) and the eval forward's (thinking).
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { gsm8kPrompt, type QaExample } from '../lib/eval/datasets.js';
import { hardTokenAnalysis } from '../lib/eval/hard-tokens.js';
import { paperMetricScore } from '../lib/eval/paper-metric.js';
import { gsm8kTask } from '../lib/eval/tasks.js';
import { evaluateAnswers } from '../lib/eval/zero-shot.js';
import { generate } from '../lib/generate.js';
import type { QuietStarModel } from '../lib/quietstar/index.js';
import { generateWithThoughts } from '../lib/think-generate.js';
import { assertClose, cpuEngine } from './support/engine.js';
import { rejectsWith } from './support/errors.js';
import { tinyQuietStar } from './support/tiny-quietstar.js';

const engine = cpuEngine(1);
test.after.always(() => engine.dispose());

const EXAMPLES: QaExample[] = [
  ['a1', '2+3', '5'],
  ['a2', '12+30', '42'],
  ['a3', 'seven times six, minus 2', '40'],
].map(([id, q, a]) => ({ id: id!, question: q!, prompt: gsm8kPrompt(q!), answer: a! }));

/** Full-vocabulary logits of the plain model for one sequence: (T) rows. */
async function plainLogits(qs: QuietStarModel, ids: number[]): Promise<Float64Array[]> {
  using out = await qs.model.logits({ ids: Int32Array.from(ids), B: 1, T: ids.length });
  const x = (await out.data()) as Float64Array;
  const V = x.length / ids.length;
  return ids.map((_, i) => x.slice(i * V, (i + 1) * V));
}

test('paper metric: base = the plain model, thinking = the thinking decode at every answer position', async (t) => {
  using qs = await tinyQuietStar(engine);
  const task = gsm8kTask(qs.tokenizer);
  const seed = 3;
  const r = await evaluateAnswers(qs, task, EXAMPLES, { batchSize: 2, seed, exactMatch: false });
  t.is(r.task, 'gsm8k');
  t.is(r.examples, 3);
  t.is(r.exactMatch, undefined);
  for (const [b, ex] of EXAMPLES.entries()) {
    const row = b; // the example's index: its thoughts are keyed by it, whatever the batch
    const prompt = qs.tokenizer.encode(ex.prompt, { addSpecialTokens: true });
    const full = qs.tokenizer.encode(ex.prompt + task.answerText(ex.answer), { addSpecialTokens: true });
    const gold = full.slice(prompt.length);
    const base = await plainLogits(qs, full);
    const mixed: Float64Array[] = [];
    for (let j = prompt.length; j < full.length; j++) {
      await qs.thinkResetCache(1, j);
      const d = await qs.thinkDecode(Int32Array.from(full.slice(0, j)), Int32Array.from(full.slice(0, j).keys()), undefined, 1, j, seed, Int32Array.of(row));
      mixed.push(Float64Array.from(d.logits));
    }
    // The byte tokenizer's first answer token is the space: skipped (and outside the whitelist anyway).
    const want = {
      withoutThinking: paperMetricScore({ rows: base.slice(prompt.length - 1, full.length - 1), gold, whitelist: task.whitelist, skipFirst: true }),
      withThinking: paperMetricScore({ rows: mixed, gold, whitelist: task.whitelist, skipFirst: true }),
    };
    const got = r.perExample[b]!;
    t.is(got.answerTokens, gold.length);
    t.false(got.cropped);
    assertClose(t, [got.paperMetric.withoutThinking, got.paperMetric.withThinking], [want.withoutThinking, want.withThinking], { rtol: 1e-9, atol: 1e-12, label: ex.id });
    t.true(Math.abs(want.withThinking - want.withoutThinking) > 1e-6, 'the mixing head changes the prediction');
  }
  const mean = (k: 'withThinking' | 'withoutThinking'): number => r.perExample.reduce((s, x) => s + x.paperMetric[k], 0) / 3;
  t.is(r.paperMetric.withThinking, mean('withThinking'));
  t.is(r.paperMetric.withoutThinking, mean('withoutThinking'));
  // Neither figure depends on the batching (thoughts are keyed by example index).
  const one = await evaluateAnswers(qs, task, EXAMPLES, { batchSize: 1, seed, exactMatch: false });
  for (const k of ['withoutThinking', 'withThinking'] as const) {
    assertClose(t, one.perExample.map((x) => x.paperMetric[k]), r.perExample.map((x) => x.paperMetric[k]), { rtol: 1e-9, atol: 1e-12, label: `${k}: batch 1 vs 2` });
  }
});

test('exact match: greedy generation with and without thinking, answers extracted; JSONL per example; progress', async (t) => {
  using qs = await tinyQuietStar(engine);
  const task = gsm8kTask(qs.tokenizer);
  const jsonl = join(await fsp.mkdtemp(join(tmpdir(), 'qs-eval-')), 'out.jsonl');
  await fsp.writeFile(jsonl, 'stale\n');
  const progress: [number, number][] = [];
  const r = await evaluateAnswers(qs, task, EXAMPLES, { batchSize: 2, seed: 1, maxNewTokens: 5, jsonl, onProgress: (d, n) => progress.push([d, n]) });
  t.deepEqual(progress, [[2, 3], [3, 3]]);
  const prompts = EXAMPLES.map((ex) => qs.tokenizer.encode(ex.prompt, { addSpecialTokens: true }));
  const stopTokens = [257, 10];
  const think = await generateWithThoughts(qs, prompts.slice(0, 2), { maxNewTokens: 5, temperature: 0, stopTokens, thoughtSeed: 1 });
  const plain = await generate(qs.model, prompts, { maxNewTokens: 5, temperature: 0, stopTokens, suppressTokens: [qs.startId, qs.endId] });
  for (const [b, x] of r.perExample.entries()) {
    t.is(x.generated!.withoutThinking, qs.tokenizer.decode(plain.ids[b]!, { skipSpecialTokens: true }));
    if (b < 2) t.is(x.generated!.withThinking, qs.tokenizer.decode(think.ids[b]!, { skipSpecialTokens: true }));
    t.is(x.extracted!.withThinking, task.extract(x.generated!.withThinking) ?? null);
    t.is(x.correct!.withoutThinking, x.extracted!.withoutThinking === x.answer);
  }
  t.is(r.exactMatch!.withThinking, r.perExample.filter((x) => x.correct!.withThinking).length / 3);
  const lines = (await fsp.readFile(jsonl, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as unknown);
  t.deepEqual(lines, JSON.parse(JSON.stringify(r.perExample)));

});

test('crop: a sequence longer than maxLen is cut to a random window; answer tokens outside it are not scored', async (t) => {
  using qs = await tinyQuietStar(engine);
  const task = gsm8kTask(qs.tokenizer);
  const long: QaExample = { id: 'long', question: 'x'.repeat(40), prompt: gsm8kPrompt('x'.repeat(40)), answer: '123' };
  // BOS + 46 prompt bytes + " 123\n" = 52 tokens; windows of 20 start in [0, 32].
  const seen = new Set<string>();
  for (let seed = 0; seed < 12; seed++) {
    const r = await evaluateAnswers(qs, task, [long], { maxLen: 20, seed, exactMatch: false });
    const x = r.perExample[0]!;
    t.true(x.cropped);
    t.true(x.answerTokens >= 0 && x.answerTokens <= 5);
    if (x.answerTokens === 0) t.is(x.paperMetric.withThinking, 0);
    seen.add(String(x.answerTokens));
  }
  t.true(seen.size >= 2, `different windows keep different parts of the answer: ${[...seen]}`);
  await rejectsWith(t, evaluateAnswers(qs, task, [long], { maxLen: 500 }), 'INVALID_ARGUMENT', /opts\.maxLen 500 exceeds/);
  await rejectsWith(t, evaluateAnswers(qs, task, [], {}), 'INVALID_ARGUMENT', /examples must be a non-empty array/);
  await rejectsWith(t, evaluateAnswers(qs, task, [long], { batchSize: 0 }), 'INVALID_ARGUMENT', /opts\.batchSize/);
});

test('hard tokens: base NLL = the plain model, deciles over every predicted token, windows for the heat map', async (t) => {
  using qs = await tinyQuietStar(engine);
  const enc = (s: string): number[] => qs.tokenizer.encode(s, { addSpecialTokens: true });
  const docs = [enc('the cat sat on the mat and then it sat on the hat'), enc('12+30=42; 7*6-2=40'), enc('a')];
  const progress: number[] = [];
  const r = await hardTokenAnalysis(qs, docs, { seqLen: 16, batchSize: 3, seed: 2, onProgress: (d) => progress.push(d) });
  const predicted = docs.reduce((n, d) => n + Math.max(d.length - 1, 0), 0);
  t.is(r.tokens, predicted);
  t.is(r.deciles.reduce((n, d) => n + d.count, 0), predicted);
  // Windows of 16 overlapping by one: starts 0, 15, 30, … while a token is left to predict.
  const lengths = docs.flatMap((d) => Array.from({ length: Math.ceil((d.length - 1) / 15) }, (_, k) => Math.min(16, d.length - 15 * k)));
  t.deepEqual(r.windows.map((w) => w.ids.length), lengths);
  t.deepEqual(progress, Array.from({ length: Math.ceil(lengths.length / 3) }, (_, k) => Math.min(3 * k + 3, lengths.length)));
  for (const w of r.windows) {
    const logits = await plainLogits(qs, w.ids);
    const want = w.ids.slice(1).map((next, i) => {
      const row = logits[i]!;
      const m = Math.max(...row);
      return Math.log(row.reduce((s, x) => s + Math.exp(x - m), 0)) + m - row[next]!;
    });
    assertClose(t, w.baseNll, want, { rtol: 1e-9, atol: 1e-9, label: 'base NLL' });
    t.is(w.thinkNll.length, w.ids.length - 1);
    t.true(w.thinkNll.every(Number.isFinite));
  }
  const all = r.windows.flatMap((w) => w.thinkNll);
  t.true(Math.abs(r.meanNllThink - all.reduce((s, x) => s + x, 0) / all.length) < 1e-12);
  t.true(r.deciles.every((d, k) => k === 0 || d.lo >= r.deciles[k - 1]!.hi));
  t.is(r.hardest.perplexityBase, Math.exp(r.deciles[9]!.meanNllBase));
  t.is(r.hardest.perplexityThink, Math.exp(r.deciles[9]!.meanNllThink));
  await rejectsWith(t, hardTokenAnalysis(qs, [[256, 1]]), 'INVALID_ARGUMENT', /1 predicted tokens; ten deciles need at least 10/);
  await rejectsWith(t, hardTokenAnalysis(qs, [[256, 300]]), 'INVALID_ARGUMENT', /documents\[0\]\[1\] = 300/);
  await rejectsWith(t, hardTokenAnalysis(qs, docs, { seqLen: 1 }), 'INVALID_ARGUMENT', /opts\.seqLen/);
});
