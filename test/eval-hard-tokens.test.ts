/**
 * The hard-token analysis' pure parts (spec §4.3): decile bucketing of base NLL with ΔNLL per bucket, the
 * windows a document is cut into, and the heat map (colour by the sign of ΔNLL, opacity between the 50th and
 * 95th percentile of |ΔNLL|, escaped text, tooltips with both NLLs).
 */
import test from 'ava';

import { createByteTokenizer } from '../lib/index.js';
import { nllDeciles, quantile } from '../lib/eval/deciles.js';
import { documentWindows } from '../lib/eval/hard-tokens.js';
import { escapeHtml, hardTokenHeatmapHtml, tokenPieces } from '../lib/eval/heatmap.js';
import { throwsWith } from './support/errors.js';

test('nllDeciles: equal-count buckets by base NLL, means and ΔNLL per bucket', (t) => {
  // 20 tokens, base NLL 20..1 (reversed, so sorting matters); thinking lowers the hard half by 1.
  const base = Array.from({ length: 20 }, (_, i) => 20 - i);
  const think = base.map((b) => (b > 10 ? b - 1 : b + 0.5));
  const d = nllDeciles(base, think);
  t.is(d.length, 10);
  t.deepEqual(d.map((x) => x.count), new Array(10).fill(2));
  t.deepEqual(d.map((x) => [x.lo, x.hi]), Array.from({ length: 10 }, (_, k) => [2 * k + 1, 2 * k + 2]));
  t.is(d[0]!.decile, 1);
  t.is(d[0]!.meanNllBase, 1.5);
  t.is(d[0]!.meanNllThink, 2);
  t.is(d[0]!.deltaNll, 0.5);
  t.is(d[9]!.meanNllBase, 19.5);
  t.is(d[9]!.deltaNll, -1);
  // Uneven n: 13 tokens, boundaries ⌊d·13/10⌋ = 1,2,3,5,6,7,9,10,11,13; every token in one bucket.
  const u = nllDeciles(Array.from({ length: 13 }, (_, i) => i), new Array(13).fill(0));
  t.deepEqual(u.map((x) => x.count), [1, 1, 1, 2, 1, 1, 2, 1, 1, 2]);
  t.is(u.reduce((s, x) => s + x.count, 0), 13);
});

test('nllDeciles: errors', (t) => {
  throwsWith(t, () => nllDeciles([1, 2], [1]), 'INVALID_ARGUMENT', /2 base NLLs but 1 thinking/);
  throwsWith(t, () => nllDeciles([1, 2, 3], [1, 2, 3]), 'INVALID_ARGUMENT', /3 tokens; ten deciles need at least 10/);
  const withNaN = Array.from({ length: 10 }, (_, i) => (i === 4 ? NaN : i));
  throwsWith(t, () => nllDeciles(withNaN, withNaN), 'INVALID_ARGUMENT', /token 4 has NLL/);
});

test('quantile: linear interpolation', (t) => {
  t.is(quantile([3, 1, 2, 4], 0.5), 2.5);
  t.is(quantile([0, 10], 0.95), 9.5);
  t.is(quantile([7], 0.3), 7);
  t.true(Number.isNaN(quantile([], 0.5)));
});

test('documentWindows: windows overlap by one token so each token after the first is predicted once', (t) => {
  const doc = Array.from({ length: 10 }, (_, i) => i);
  const w = documentWindows([doc, [5], [], [1, 2]], 4);
  t.deepEqual(w, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [1, 2]]);
  t.is(w.reduce((n, x) => n + x.length - 1, 0), 9 + 1);
});

test('heat map: green where thinking helped, red where it hurt, opacity by percentile, escaped', (t) => {
  const tok = createByteTokenizer();
  const text = 'a<b&"c\'d';
  const ids = [...Buffer.from(text)];
  // Δ per predicted token (7 of them): helped strongly, hurt mildly, and zeros.
  const base = [2, 2, 2, 2, 2, 2, 2];
  const think = [0, 2.5, 2, 2, 2, 1.9, 2];
  const html = hardTokenHeatmapHtml({ windows: [{ ids, baseNll: base, thinkNll: think }] }, tok, { title: 'T <1>' });
  t.true(html.startsWith('<!DOCTYPE html>'));
  t.true(html.includes('<title>T &lt;1&gt;</title>'));
  t.false(html.includes('<script'));
  // The first token is context.
  t.true(html.includes('<span class="ctx">a</span>'));
  // p50 of |Δ| = 0 and p95 ≈ 1.7: the big help is fully green; the others partly or not at all.
  t.regex(html, /background:rgba\(40,170,60,1\.000\)" title="NLL without thinking 2\.000, with thinking 0\.000, Δ -2\.000">&lt;</);
  t.regex(html, /background:rgba\(220,50,40,0\.\d+\)" title="[^"]*Δ 0\.500">b</);
  t.true(html.includes('>&amp;<'));
  t.true(html.includes('>&quot;<'));
  t.true(html.includes('>&#39;<'));
  t.is(escapeHtml('<a href="x">&\'</a>'), '&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;');
});

test('heat map: maxTokens keeps whole windows; pieces keep multi-byte characters whole', (t) => {
  const tok = createByteTokenizer();
  const w = { ids: [104, 105, 106], baseNll: [1, 1], thinkNll: [1, 1] };
  const html = hardTokenHeatmapHtml({ windows: [w, w, w] }, tok, { maxTokens: 7 });
  t.is(html.match(/class="win"/g)?.length, 2);
  t.true(html.includes('6 tokens in 2 windows'));
  // "é" is two bytes: the first shows nothing, the second the whole character.
  t.deepEqual(tokenPieces(tok, [...Buffer.from('aé b')]), ['a', '', 'é', ' ', 'b']);
});
