/**
 * Data pipeline: corpus readers (text, JSONL field, pre-tokenised ids) and their errors,
 * pack/crop/chunk layouts, held-out splits, seeded shuffling and exact resume of the loader.
 */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError } from '../lib/errors.js';
import {
  BatchLoader,
  IGNORE_INDEX,
  LmDataset,
  Xoshiro128,
  evalBatches,
  loadLmData,
  permutation,
  readCorpus,
  type CorpusTokenizer,
} from '../lib/data/index.js';

/** A character tokenizer for tests: id = char code + 1 (< 127), EOS = 0. */
const charTok: CorpusTokenizer = {
  vocabSize: 128,
  eosId: 0,
  encode: (text) => Array.from(text, (c) => c.charCodeAt(0) + 1),
};
const noEosTok: CorpusTokenizer = { vocabSize: 128, encode: charTok.encode };
const ids = (s: string): number[] => charTok.encode(s);

let dir = '';
test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qs-data-'));
});
test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function file(name: string, content: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, content);
  return p;
}

test('xoshiro128** matches the reference sequence and restores its state', (t) => {
  // Reference: xoshiro128** from state (1, 2, 3, 4): first outputs computed with the C reference.
  const r = Xoshiro128.fromState([1, 2, 3, 4]);
  t.deepEqual([r.nextUint32(), r.nextUint32(), r.nextUint32()], [11520, 0, 5927040]);
  const a = new Xoshiro128(42, 7);
  for (let i = 0; i < 10; i++) a.nextUint32();
  const b = Xoshiro128.fromState(a.state);
  t.deepEqual(Array.from({ length: 5 }, () => a.nextUint32()), Array.from({ length: 5 }, () => b.nextUint32()));
  // below(n) stays in range and is roughly uniform
  const counts = new Array<number>(5).fill(0);
  const c = new Xoshiro128(3);
  for (let i = 0; i < 5000; i++) counts[c.below(5)]!++;
  t.true(counts.every((n) => n > 900 && n < 1100), `counts ${counts.join(',')}`);
});

test('permutations are seeded, keyed by epoch, and complete', (t) => {
  const p = permutation(100, 5, 0);
  t.deepEqual(Array.from(p).sort((x, y) => x - y), Array.from({ length: 100 }, (_, i) => i));
  t.deepEqual(p, permutation(100, 5, 0));
  t.notDeepEqual(p, permutation(100, 5, 1));
  t.notDeepEqual(p, permutation(100, 6, 0));
  t.notDeepEqual(Array.from(p), Array.from({ length: 100 }, (_, i) => i));
});

test('plain text: one document with EOS, or several split on a separator; CRLF normalised', async (t) => {
  const f = await file('a.txt', 'ab\r\ncd');
  const c = await readCorpus(f, { tokenizer: charTok });
  t.is(c.format, 'text');
  t.deepEqual(c.documents.map((d) => Array.from(d)), [[...ids('ab\ncd'), 0]]);
  t.is(c.tokens, 6);
  const g = await file('b.txt', 'one<|endoftext|>two<|endoftext|>\n');
  const c2 = await readCorpus(g, { tokenizer: charTok, documentSeparator: '<|endoftext|>' });
  t.deepEqual(c2.documents.map((d) => Array.from(d)), [[...ids('one'), 0], [...ids('two'), 0]]);
  const c3 = await readCorpus(g, { tokenizer: noEosTok, documentSeparator: '<|endoftext|>' });
  t.deepEqual(c3.documents.map((d) => Array.from(d)), [ids('one'), ids('two')], 'no EOS when the tokenizer has none');
});

test('JSONL with a field option (one or several fields), blank lines skipped', async (t) => {
  const f = await file('c.jsonl', '{"text":"hi","q":"Q1","a":"A1"}\n\n{"text":"yo","q":"Q2","a":"A2"}\n');
  const c = await readCorpus(f, { tokenizer: charTok });
  t.is(c.format, 'jsonl');
  t.deepEqual(c.documents.map((d) => Array.from(d)), [[...ids('hi'), 0], [...ids('yo'), 0]]);
  const c2 = await readCorpus(f, { tokenizer: charTok, field: ['q', 'a'], fieldSeparator: '|', addEos: false });
  t.deepEqual(c2.documents.map((d) => Array.from(d)), [ids('Q1|A1'), ids('Q2|A2')]);
  const c3 = await readCorpus(f, { tokenizer: charTok, field: 'q', maxDocuments: 1 });
  t.is(c3.documents.length, 1);
});

test('JSONL errors name the file, the line and the field', async (t) => {
  const f = await file('bad.jsonl', '{"text":"ok"}\n{"body":"x"}\n');
  const e1 = await t.throwsAsync(readCorpus(f, { tokenizer: charTok }), { instanceOf: QuietstarError });
  t.is(e1?.code, 'BAD_FILE');
  t.true(e1?.message.includes(`${f}:2: field 'text' is missing`), e1?.message);
  const g = await file('bad2.jsonl', '{"text":"ok"}\n{"text":3}\n');
  const e2 = await t.throwsAsync(readCorpus(g, { tokenizer: charTok }));
  t.true(e2?.message.includes(`${g}:2: field 'text' must be a string`), e2?.message);
  const h = await file('bad3.jsonl', '{"text":"ok"}\n\n{"text":\n');
  const e3 = await t.throwsAsync(readCorpus(h, { tokenizer: charTok }));
  t.true(e3?.message.includes(`${h}:3: invalid JSON`), e3?.message);
  const e4 = await t.throwsAsync(readCorpus(join(dir, 'nope.txt'), { tokenizer: charTok }), { instanceOf: QuietstarError });
  t.is(e4?.code, 'NOT_FOUND');
  const e5 = await t.throwsAsync(readCorpus(f, { tokenizer: charTok, field: '' }), { instanceOf: QuietstarError });
  t.is(e5?.code, 'INVALID_ARGUMENT');
  t.regex(e5?.message ?? '', /corpus\.field/);
});

test('pre-tokenised {"ids": [...]} lines: detected, validated, no EOS added by default', async (t) => {
  const f = await file('ids.jsonl', '{"ids":[1,2,3]}\n{"ids":[4,5]}\n');
  const c = await readCorpus(f, { vocabSize: 10 });
  t.is(c.format, 'ids');
  t.deepEqual(c.documents.map((d) => Array.from(d)), [[1, 2, 3], [4, 5]]);
  const c2 = await readCorpus(f, { vocabSize: 10, addEos: true, eosId: 9 });
  t.deepEqual(c2.documents.map((d) => Array.from(d)), [[1, 2, 3, 9], [4, 5, 9]]);
  const bad = await file('ids-bad.jsonl', '{"ids":[1,2]}\n{"ids":[1,10]}\n');
  const e = await t.throwsAsync(readCorpus(bad, { vocabSize: 10 }), { instanceOf: QuietstarError });
  t.is(e?.code, 'BAD_FILE');
  t.true(e?.message.includes(`${bad}:2: ids[1] = 10 is not a token id in [0, 10)`), e?.message);
  const frac = await file('ids-frac.jsonl', '{"ids":[1.5]}\n');
  await t.throwsAsync(readCorpus(frac, { vocabSize: 10 }), { message: /ids\[0\] = 1\.5/ });
  const notArr = await file('ids-str.jsonl', '{"ids":[1]}\n{"ids":"1 2"}\n');
  await t.throwsAsync(readCorpus(notArr, { format: 'ids', vocabSize: 10 }), { message: /:2: field 'ids' must be an array/ });
  await t.throwsAsync(readCorpus(f, {}), { message: /corpus\.vocabSize/ });
});

test('pack: windows of T+1 with overlap 1, tail dropped', (t) => {
  // stream 0..10 (11 tokens), T=4: rows [0..4], [4..8]; tokens 8..10 are a tail shorter than T+1
  const ds = LmDataset.fromDocuments([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], { seqLen: 4 });
  t.is(ds.rows, 2);
  const x = new Int32Array(4);
  const y = new Int32Array(4);
  t.is(ds.fillRow(0, x, y), 4);
  t.deepEqual([Array.from(x), Array.from(y)], [[0, 1, 2, 3], [1, 2, 3, 4]]);
  ds.fillRow(1, x, y);
  t.deepEqual([Array.from(x), Array.from(y)], [[4, 5, 6, 7], [5, 6, 7, 8]]);
  t.is(ds.targetTokens, 8);
});

test('crop: one row per document, cropped or padded with target -100', (t) => {
  const ds = LmDataset.fromDocuments([[1, 2, 3, 4, 5, 6, 7], [8, 9], [5]], { seqLen: 4, layout: 'crop', padId: 0 });
  t.is(ds.rows, 2, 'a 1-token document has no target');
  const loader = new BatchLoader(ds, { batchSize: 2, shuffle: false });
  const b = loader.next();
  t.is(b.B, 2);
  t.is(b.T, 4);
  t.deepEqual(Array.from(b.ids), [1, 2, 3, 4, 8, 0, 0, 0]);
  t.deepEqual(Array.from(b.targets), [2, 3, 4, 5, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
  t.is(b.tokens, 5);
});

test('chunk: documents cut into windows that never cross a document; every target once', (t) => {
  const ds = LmDataset.fromDocuments([[1, 2, 3, 4, 5, 6], [7, 8, 9]], { seqLen: 2, layout: 'chunk', padId: 0 });
  const rows = [...evalBatches(ds, 10)][0]!;
  t.is(rows.B, 4);
  t.deepEqual(Array.from(rows.ids), [1, 2, 3, 4, 5, 0, 7, 8]);
  t.deepEqual(Array.from(rows.targets), [2, 3, 4, 5, 6, IGNORE_INDEX, 8, 9]);
  t.is(ds.targetTokens, 5 + 2);
});

test('loader: batches are deterministic in the seed, cover each epoch once, and resume exactly', (t) => {
  const docs = [Array.from({ length: 41 }, (_, i) => i)];
  const ds = LmDataset.fromDocuments(docs, { seqLen: 4 }); // 10 rows
  const seen = (l: BatchLoader, n: number): number[] => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(...Array.from(l.next().ids).filter((_, j) => j % 4 === 0));
    return out;
  };
  const a = seen(new BatchLoader(ds, { batchSize: 2, seed: 1 }), 5); // one epoch
  t.deepEqual([...a].sort((x, y) => x - y), [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]);
  t.deepEqual(seen(new BatchLoader(ds, { batchSize: 2, seed: 1 }), 5), a);
  t.notDeepEqual(seen(new BatchLoader(ds, { batchSize: 2, seed: 2 }), 5), a);
  // 13 batches straight == 4 batches, save the position (JSON), new loader, 9 batches
  const straight = seen(new BatchLoader(ds, { batchSize: 3, seed: 9 }), 13);
  const first = new BatchLoader(ds, { batchSize: 3, seed: 9 });
  const part1 = seen(first, 4);
  const pos = JSON.parse(JSON.stringify(first.position));
  t.deepEqual(pos, { epoch: 1, index: 2 });
  const resumed = new BatchLoader(ds, { batchSize: 3, seed: 9, position: pos });
  t.deepEqual([...part1, ...seen(resumed, 9)], straight);
  t.throws(() => new BatchLoader(ds, { batchSize: 2, position: { epoch: 0, index: 10 } }), { message: /data position/ });
  t.throws(() => new BatchLoader(ds, { batchSize: 0 }), { message: /loader\.batchSize/ });
});

test('eval batches: in order, last one partial, capped by maxBatches', (t) => {
  const ds = LmDataset.fromDocuments([Array.from({ length: 21 }, (_, i) => i)], { seqLen: 4 }); // 5 rows
  const all = [...evalBatches(ds, 2)];
  t.deepEqual(all.map((b) => b.B), [2, 2, 1]);
  t.deepEqual(Array.from(all[2]!.ids), [16, 17, 18, 19]);
  t.deepEqual([...evalBatches(ds, 2, 2)].map((b) => b.B), [2, 2]);
});

test('loadLmData: held-out fraction (contiguous tail) or a separate file', async (t) => {
  const f = await file('corpus.txt', 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ'); // 46 chars + EOS
  const d = await loadLmData({ file: f, tokenizer: charTok, seqLen: 5, evalFraction: 0.2 });
  t.is(d.train.rows + d.eval!.rows, 9);
  t.is(d.eval!.rows, 2);
  const b = [...evalBatches(d.eval!, 8)][0]!;
  t.deepEqual(Array.from(b.ids.subarray(0, 5)), ids('9ABCD'), 'eval rows are the end of the text');
  const g = await file('eval.txt', 'zyxwvutsrqp');
  const d2 = await loadLmData({ file: f, evalFile: g, tokenizer: charTok, seqLen: 5 });
  t.is(d2.eval!.rows, 2);
  await t.throwsAsync(loadLmData({ file: f, tokenizer: charTok, seqLen: 5, evalFraction: 1.5 }), { message: /data\.evalFraction/ });
  await t.throwsAsync(loadLmData({ file: f, tokenizer: charTok, seqLen: 0 }), { message: /data\.seqLen/ });
  await t.throwsAsync(loadLmData({ file: f, tokenizer: charTok, seqLen: 5, layout: 'zigzag' as 'pack' }), { message: /data\.layout/ });
});
