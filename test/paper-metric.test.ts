/**
 * Oracle §9.14: the paper's zero-shot metric (spec §4.1) on hand-built distributions — whitelist-restricted,
 * renormalised softmax, product over gold answer tokens, skipping the space piece (numbers) and gold tokens
 * outside the whitelist.
 */
import test from 'ava';

import { QuietstarError } from '../lib/errors.js';
import { paperMetricMean, paperMetricScore } from '../lib/eval/paper-metric.js';

const close = (a: number, b: number, tol = 1e-12): boolean => Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

/** A logit row of width V: `probs` (id → probability over the whitelist) as logs + `shift`, other ids as given. */
function row(V: number, probs: Record<number, number>, others: number, shift = 0): number[] {
  const r = new Array<number>(V).fill(others);
  for (const [id, p] of Object.entries(probs)) r[Number(id)] = Math.log(p) + shift;
  return r;
}

// CSQA toy vocabulary: 0 ' ', 1 '\n', 2..6 'A'..'E', 7..9 other words.
const CSQA_V = 10;
const CSQA_WL = [2, 3, 4, 5, 6, 1];

test('CSQA: probability q on the gold letter and p on "\\n" scores q·p', (t) => {
  const q = 0.37;
  const p = 0.81;
  // Letter step: gold 'C' (4) gets q among the whitelist; '\n' and the other letters share the rest.
  const letter = row(CSQA_V, { 2: 0.1, 3: 0.2, 4: q, 5: 0.13, 6: 0.15, 1: 0.05 }, 3.0, 1.7);
  // Newline step: '\n' gets p.
  const nl = row(CSQA_V, { 1: p, 2: 0.04, 3: 0.03, 4: 0.05, 5: 0.04, 6: 0.03 }, -2.0, -5.0);
  // The space piece ' ' (0) follows "\nA:" in CSQA too but is not whitelisted, so it is skipped regardless.
  const space = row(CSQA_V, {}, 0.5);
  const s = paperMetricScore({ rows: [space, letter, nl], gold: [0, 4, 1], whitelist: CSQA_WL });
  t.true(close(s, q * p), `${s} vs ${q * p}`);
  // Same without the space row.
  t.true(close(paperMetricScore({ rows: [letter, nl], gold: [4, 1], whitelist: CSQA_WL }), q * p));
});

test('mass outside the whitelist is ignored by renormalisation; log-probs and logits agree', (t) => {
  const base = { 2: 0.5, 3: 0.1, 4: 0.1, 5: 0.2, 6: 0.05, 1: 0.05 };
  const small = row(CSQA_V, base, -30); // almost all mass inside the whitelist
  const huge = row(CSQA_V, base, 40); // almost all mass outside it
  const masked = row(CSQA_V, base, -Infinity);
  // log-probs: normalise the full row first; the restricted softmax must not change.
  const m = Math.max(...huge);
  const lse = m + Math.log(huge.reduce((a, x) => a + Math.exp(x - m), 0));
  const logp = huge.map((x) => x - lse);
  for (const r of [small, huge, masked, logp]) {
    t.true(close(paperMetricScore({ rows: [r], gold: [2], whitelist: CSQA_WL }), 0.5));
  }
  // Whitelist order does not matter.
  t.true(close(paperMetricScore({ rows: [huge], gold: [5], whitelist: [1, 6, 5, 4, 3, 2] }), 0.2));
});

// GSM8K toy vocabulary: 0 ' ', 1 '\n', 2..11 digits '0'..'9', 12 ',', 13 other.
const G_V = 14;
const DIGIT = (d: number): number => 2 + d;
const G_WL = [...Array.from({ length: 10 }, (_, d) => DIGIT(d)), 1];

test('GSM8K: skips the space piece and non-whitelisted tokens (the comma of "1,000")', (t) => {
  // Gold " 1,000\n" → [' ', '1', ',', '0', '0', '0', '\n'].
  const gold = [0, DIGIT(1), 12, DIGIT(0), DIGIT(0), DIGIT(0), 1];
  const probs = [0.6, 0.7, 0.8, 0.9, 0.55];
  const rest = (p: number): number => (1 - p) / 10; // spread over the other 10 whitelist ids
  const rowFor = (id: number, p: number, other: number): number[] => {
    const pr: Record<number, number> = {};
    for (const w of G_WL) pr[w] = rest(p);
    pr[id] = p;
    return row(G_V, pr, other);
  };
  // The space row puts almost no whitelist mass on anything meaningful: it must be skipped (skipFirst).
  const spaceRow = row(G_V, { 0: 0.99 }, -50);
  // The comma row is skipped because ',' is not in the whitelist, whatever it holds.
  const commaRow = row(G_V, { 12: 0.99, [DIGIT(7)]: 0.01 }, -50);
  const rows = [
    spaceRow,
    rowFor(DIGIT(1), probs[0]!, 2),
    commaRow,
    rowFor(DIGIT(0), probs[1]!, -3),
    rowFor(DIGIT(0), probs[2]!, 10),
    rowFor(DIGIT(0), probs[3]!, 0),
    rowFor(1, probs[4]!, 5),
  ];
  const expected = probs.reduce((a, b) => a * b, 1);
  const s = paperMetricScore({ rows, gold, whitelist: G_WL, skipFirst: true });
  t.true(close(s, expected), `${s} vs ${expected}`);
  // skipFirst only matters when the first token is whitelisted: the bare space is not, so the result is the same.
  t.true(close(paperMetricScore({ rows, gold, whitelist: G_WL }), expected));
  // If the first token after the marker is a digit, skipFirst drops it (and only it).
  const gold2 = [DIGIT(1), DIGIT(0), 1];
  const rows2 = [rowFor(DIGIT(1), 0.25, 0), rowFor(DIGIT(0), 0.5, 0), rowFor(1, 0.75, 0)];
  t.true(close(paperMetricScore({ rows: rows2, gold: gold2, whitelist: G_WL, skipFirst: true }), 0.5 * 0.75));
  t.true(close(paperMetricScore({ rows: rows2, gold: gold2, whitelist: G_WL }), 0.25 * 0.5 * 0.75));
  // Typed-array rows work too.
  t.true(close(paperMetricScore({ rows: rows2.map((r) => Float64Array.from(r)), gold: Int32Array.from(gold2), whitelist: G_WL }), 0.25 * 0.5 * 0.75));
});

test('the mean over examples is the reported "accuracy"; an answer with nothing scored counts 1', (t) => {
  const a = { rows: [row(CSQA_V, { 2: 0.4, 3: 0.6 }, -Infinity)], gold: [2], whitelist: CSQA_WL };
  const b = { rows: [row(CSQA_V, { 2: 0.4, 3: 0.6 }, -Infinity)], gold: [3], whitelist: CSQA_WL };
  t.true(close(paperMetricMean([a, b]), 0.5));
  t.is(paperMetricScore({ rows: [], gold: [], whitelist: CSQA_WL }), 1);
  t.is(paperMetricScore({ rows: [row(CSQA_V, {}, 0)], gold: [8], whitelist: CSQA_WL }), 1);
});

test('invalid inputs throw INVALID_ARGUMENT naming the argument', (t) => {
  const r = row(CSQA_V, { 2: 1 }, 0);
  const bad = (input: unknown, re: RegExp): void => {
    const e = t.throws(() => paperMetricScore(input as never), { instanceOf: QuietstarError });
    t.is(e?.code, 'INVALID_ARGUMENT');
    t.regex(e?.message ?? '', re);
  };
  bad({ rows: [r], gold: [2, 1], whitelist: CSQA_WL }, /rows must have one row per gold token/);
  bad({ rows: [r, r.slice(1)], gold: [2, 1], whitelist: CSQA_WL }, /rows\[1\] must have length 10/);
  bad({ rows: [r], gold: [10], whitelist: CSQA_WL }, /gold\[0\]/);
  bad({ rows: [r], gold: [1.5], whitelist: CSQA_WL }, /gold\[0\]/);
  bad({ rows: [r], gold: [2], whitelist: [] }, /whitelist must not be empty/);
  bad({ rows: [r], gold: [2], whitelist: [2, 2] }, /whitelist has a duplicate/);
  bad({ rows: [r], gold: [2], whitelist: [-1] }, /whitelist\[0\]/);
  bad({ rows: [r.map((x, i) => (i === 3 ? NaN : x))], gold: [2], whitelist: CSQA_WL }, /rows\[0\]\[3\]/);
  bad({ rows: [r.map((x, i) => (i === 3 ? Infinity : x))], gold: [2], whitelist: CSQA_WL }, /rows\[0\]\[3\]/);
  bad({ rows: [row(CSQA_V, {}, -Infinity).map((x, i) => (i === 8 ? 0 : x))], gold: [2], whitelist: CSQA_WL }, /rows\[0\] has every whitelist entry at -Infinity/);
  bad({ rows: 'x', gold: [2], whitelist: CSQA_WL }, /rows must be an array/);
  bad({ rows: [r], gold: [2], whitelist: CSQA_WL, skipFirst: 1 }, /skipFirst must be a boolean/);
  t.throws(() => paperMetricMean([]), { instanceOf: QuietstarError, message: /examples must be a non-empty array/ });
});
