/**
 * Generation with thinking (spec §5) on a tiny random Quiet-STaR model: each token equals the eval forward's
 * prediction at the last position given the same thought (oracle §9.15), markers are never emitted even by a
 * model that prefers them, a seed reproduces the run, a row in a batch matches the row alone, nAhead = 1 is
 * plain generation, and bad arguments fail naming the option.
 */
import test from 'ava';

import { generate } from '../lib/generate.js';
import { generateWithThoughts } from '../lib/think-generate.js';
import { cpuEngine } from './support/engine.js';
import { rejectsWith } from './support/errors.js';
import { tinyQuietStar } from './support/tiny-quietstar.js';

const engine = cpuEngine(1);
test.after.always(() => engine.dispose());

const argmax = (xs: ArrayLike<number>): number => {
  let best = 0;
  for (let v = 1; v < xs.length; v++) if (xs[v]! > xs[best]!) best = v;
  return best;
};

const PROMPTS = [
  [256, 81, 58, 32, 50, 43],
  [256, 104, 105],
  [256, 116, 104, 101, 32, 99, 97, 116],
];

test('greedy thinking generation = the eval forward at the last position with the same thought (§9.15)', async (t) => {
  using qs = await tinyQuietStar(engine);
  const prompt = PROMPTS[0]!;
  const seed = 5;
  const r = await generateWithThoughts(qs, [prompt], { maxNewTokens: 6, temperature: 0, thoughtSeed: seed });
  t.is(r.ids[0]!.length, 6);
  t.is(r.thoughts[0]!.length, 6);
  const M = qs.options.nAhead - 3;
  for (let k = 0; k < 6; k++) {
    const text = [...prompt, ...r.ids[0]!.slice(0, k)];
    const T = text.length;
    // One more (arbitrary) token, so that position T − 1 is scored; causal: it changes nothing before it.
    const ev = await qs.evalForward({ ids: Int32Array.from([...text, 0]), B: 1, T: T + 1 }, seed);
    // The eval forward's thought at the last position is the one generation drew before token k.
    t.deepEqual(r.thoughts[0]![k], Array.from(ev.thoughts.subarray((T - 1) * M, T * M)), `thought ${k}`);
    const { mixed } = await qs.evalLogits([[0, T - 1]]);
    mixed[0]![qs.startId] = -Infinity;
    mixed[0]![qs.endId] = -Infinity;
    t.is(r.ids[0]![k], argmax(mixed[0]!), `token ${k}`);
  }
});

test('a seed reproduces thoughts and tokens; another thought seed draws other thoughts', async (t) => {
  using qs = await tinyQuietStar(engine);
  const opts = { maxNewTokens: 8, temperature: 0.8, seed: 3, thoughtSeed: 9 };
  const a = await generateWithThoughts(qs, PROMPTS, opts);
  const b = await generateWithThoughts(qs, PROMPTS, opts);
  t.deepEqual(a, b);
  const c = await generateWithThoughts(qs, PROMPTS, { ...opts, thoughtSeed: 10 });
  t.notDeepEqual(c.thoughts, a.thoughts);
  // Thoughts hold nAhead − 3 tokens and never a marker.
  for (const row of a.thoughts) for (const th of row) t.true(th.length === 2 && th.every((x) => x < qs.startId));
});

test('a row of a left-padded batch generates what it generates alone (same rowId)', async (t) => {
  using qs = await tinyQuietStar(engine);
  const opts = { maxNewTokens: 5, temperature: 1, seed: 4, rowIds: [7, 8, 9] };
  const all = await generateWithThoughts(qs, PROMPTS, opts);
  for (let b = 0; b < PROMPTS.length; b++) {
    const one = await generateWithThoughts(qs, [PROMPTS[b]!], { ...opts, rowIds: [opts.rowIds[b]!] });
    t.deepEqual(one.ids[0], all.ids[b], `row ${b}`);
    t.deepEqual(one.thoughts[0], all.thoughts[b], `row ${b} thoughts`);
  }
});

test('markers are never emitted, even when the model prefers them', async (t) => {
  using qs = await tinyQuietStar(engine);
  const prompt = PROMPTS[1]!;
  const first = (await generateWithThoughts(qs, [prompt], { maxNewTokens: 1, temperature: 0 })).ids[0]![0]!;
  // The markers' LM-head rows become 4 × the row of the token the model picks: their logits win.
  {
    using head = qs.model.params.view('lm_head.weight');
    const w = (await head.data()) as Float64Array;
    const D = w.length / (qs.endId + 1);
    for (const m of [qs.startId, qs.endId]) for (let d = 0; d < D; d++) w[m * D + d] = 4 * w[first * D + d]!;
    using src = engine.tensor(w, [qs.endId + 1, D]);
    await engine.ops.copy({ src, dst: head });
  }
  await qs.thinkResetCache(1, prompt.length);
  const step = await qs.thinkDecode(Int32Array.from(prompt), Int32Array.from(prompt.keys()), undefined, 1, prompt.length, 0);
  t.true([qs.startId, qs.endId].includes(argmax(step.baseLogits)), 'precondition: the base prediction is a marker');
  const r = await generateWithThoughts(qs, PROMPTS, { maxNewTokens: 12, temperature: 0 });
  const s = await generateWithThoughts(qs, PROMPTS, { maxNewTokens: 12, temperature: 2, seed: 1 });
  for (const ids of [...r.ids, ...s.ids]) t.false(ids.some((x) => x === qs.startId || x === qs.endId));
});

test('nAhead = 1: no thought, exactly plain generation', async (t) => {
  using qs = await tinyQuietStar(engine, { nAhead: 1 });
  const opts = { maxNewTokens: 7, temperature: 1, seed: 2, stopTokens: [10] };
  const think = await generateWithThoughts(qs, PROMPTS, opts);
  const plain = await generate(qs.model, PROMPTS, { ...opts, suppressTokens: [qs.startId, qs.endId] });
  t.deepEqual(think.ids, plain.ids);
  t.deepEqual(think.finished, plain.finished);
  t.true(think.thoughts.every((row, b) => row.length === think.ids[b]!.length && row.every((th) => th.length === 0)));
});

test('errors name the option', async (t) => {
  using qs = await tinyQuietStar(engine);
  // maxSeqLen 96: prompt 90 + 4 new tokens + a thought of nAhead 5 does not fit.
  const long = new Array(90).fill(97);
  await rejectsWith(t, generateWithThoughts(qs, [long], { maxNewTokens: 4 }), 'INVALID_ARGUMENT', /options\.maxNewTokens: the longest prompt \(90 tokens\).*maxSeqLen 96/);
  await rejectsWith(t, generateWithThoughts(qs, [[1]], { maxNewTokens: 2, thoughtSeed: -1 }), 'INVALID_ARGUMENT', /options\.thoughtSeed/);
  await rejectsWith(t, generateWithThoughts(qs, [[1]], { maxNewTokens: 1.5 }), 'INVALID_ARGUMENT', /options\.maxNewTokens/);
  await rejectsWith(t, generateWithThoughts(qs, [[999]], { maxNewTokens: 1 }), 'INVALID_ARGUMENT', /prompts\[0\]\[0\] = 999/);
  await rejectsWith(t, generateWithThoughts(qs, [[1]], { maxNewTokens: 1, topP: 0 }), 'INVALID_ARGUMENT', /options\.topP/);
  t.deepEqual(await generateWithThoughts(qs, [[1], [2]], { maxNewTokens: 0 }), { ids: [[], []], finished: [false, false], thoughts: [[], []] });
});
