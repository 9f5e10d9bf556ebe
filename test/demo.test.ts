/**
 * The embedded demo (lib/demo, `quietstar demo`):
 *   - the corpus: deterministic from its seed, answers that check out, a held-out split disjoint
 *     from the training problems, bad options named;
 *   - the SVG module: axes, ticks, labels, legends and bars land where the values say, text is
 *     escaped, non-finite points break a line;
 *   - the verdict follows the numbers (helped / did not help / mixed);
 *   - the byte tokenizer.json encodes as the in-memory byte tokenizer;
 *   - the demo at its tiny size writes report.html (with its SVG plots, figures and thoughts),
 *     metrics.json with the same figures, and a model folder that QuietStarModel.load reads.
 */
import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { demoCommand } from '../lib/commands/demo.js';
import { answerTokenNll } from '../lib/demo/answer-tokens.js';
import { arithmeticCorpus, evaluateExpression, formatProblem, lastNumber, problemPrompt, workedSteps } from '../lib/demo/corpus.js';
import type { DemoMetrics } from '../lib/demo/pipeline.js';
import { barChart, escapeXml, linePlot, niceTicks } from '../lib/demo/svg.js';
import { byteTokenizerJson } from '../lib/demo/tokenizer.js';
import { demoVerdict } from '../lib/demo/verdict.js';
import { QuietstarError } from '../lib/errors.js';
import { QuietStarModel } from '../lib/quietstar/model.js';
import { createByteTokenizer, loadTokenizer } from '../lib/tokenizer/index.js';
import { cpuEngine } from './support/engine.js';

let tmp = '';
test.before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'qs-demo-'));
});
test.after.always(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

// ---- corpus ---------------------------------------------------------------------------------

test('corpus: the same seed gives the same text, another seed another', (t) => {
  const a = arithmeticCorpus({ seed: 7, trainDocuments: 20, heldOutDocuments: 5 });
  const b = arithmeticCorpus({ seed: 7, trainDocuments: 20, heldOutDocuments: 5 });
  const c = arithmeticCorpus({ seed: 8, trainDocuments: 20, heldOutDocuments: 5 });
  t.deepEqual(a, b);
  t.notDeepEqual(a.train.map((d) => d.text), c.train.map((d) => d.text));
  t.is(a.train.length, 20);
  t.is(a.heldOut.length, 5);
  t.is(a.heldOutProblems.length, 5 * a.options.problemsPerDocument);
});

test('corpus: every answer is the value of its expression, in range, formatted as Q/A lines', (t) => {
  const c = arithmeticCorpus({ seed: 3, trainDocuments: 200, heldOutDocuments: 20, maxOperand: 9, threeOperandShare: 0.7 });
  let three = 0;
  for (const doc of [...c.train, ...c.heldOut]) {
    t.is(doc.text, doc.problems.map(formatProblem).join(''));
    for (const p of doc.problems) {
      t.regex(p.question, /^\d+([+-]\d+){1,2}=\?$/);
      const value = evaluateExpression(p.question);
      t.is(String(value), p.answer, p.question);
      t.true(value! >= 0 && value! <= 18, p.question);
      for (const operand of p.question.match(/\d+/g)!) t.true(Number(operand) >= 1 && Number(operand) <= 9);
      if (p.question.match(/[+-]/g)!.length === 2) three++;
    }
  }
  const total = (c.train.length + c.heldOut.length) * c.options.problemsPerDocument;
  t.true(three > total * 0.55 && three < total * 0.85, `${three} of ${total} have three operands`);
  t.is(formatProblem({ question: '37+48-19=?', answer: '66' }), 'Q: 37+48-19=?\nA: 66\n');
  t.is(problemPrompt({ question: '1+2=?', answer: '3' }), 'Q: 1+2=?\nA:');
  t.is(evaluateExpression('10-3+4'), 11);
  t.is(evaluateExpression('10*3'), undefined);
});

test('corpus: worked answers show each step and end on the answer; only training problems are worked', (t) => {
  t.is(workedSteps('37+48-19=?'), '37+48=85, 85-19=66');
  t.is(workedSteps('5+3=?'), '5+3=8');
  t.is(formatProblem({ question: '37+48-19=?', answer: '66', worked: true }), 'Q: 37+48-19=?\nA: 37+48=85, 85-19=66\n');
  t.is(lastNumber(' 37+48=85, 85-19=66\nQ: 1+2'), '66');
  t.is(lastNumber(' 66\n'), '66');
  t.is(lastNumber(' none'), undefined);
  const c = arithmeticCorpus({ seed: 2, trainDocuments: 300, heldOutDocuments: 30, maxOperand: 50, workedShare: 0.5 });
  const problems = c.train.flatMap((d) => d.problems);
  const worked = problems.filter((p) => p.worked);
  t.true(worked.length > problems.length * 0.4 && worked.length < problems.length * 0.6, `${worked.length} of ${problems.length}`);
  for (const p of worked) {
    const line = formatProblem(p).split('\nA:')[1]!;
    t.is(lastNumber(line), p.answer, line);
    // Every step is right.
    for (const step of line.trim().split(', ')) {
      const [lhs, rhs] = step.split('=');
      t.is(evaluateExpression(lhs!), Number(rhs), step);
    }
  }
  t.true(c.heldOut.every((d) => d.problems.every((p) => !p.worked)));
  t.is(arithmeticCorpus({ seed: 2, trainDocuments: 50, heldOutDocuments: 5 }).train.flatMap((d) => d.problems).filter((p) => p.worked).length, 0);
});

test('corpus: held-out problems never occur in training', (t) => {
  // A small operand range makes collisions likely, so the redraw is exercised.
  const c = arithmeticCorpus({ seed: 1, trainDocuments: 300, heldOutDocuments: 30, maxOperand: 6 });
  const train = new Set(c.train.flatMap((d) => d.problems.map((p) => p.question)));
  t.true(c.heldOutProblems.length > 0);
  for (const p of c.heldOutProblems) t.false(train.has(p.question), p.question);
});

test('corpus: bad options are INVALID_ARGUMENT naming the option', (t) => {
  for (const [opts, re] of [
    [{ trainDocuments: 0 }, /corpus\.trainDocuments/],
    [{ maxOperand: 1 }, /corpus\.maxOperand/],
    [{ threeOperandShare: 2 }, /corpus\.threeOperandShare/],
    [{ workedShare: -0.1 }, /corpus\.workedShare must be a number in \[0, 1\]/],
    [{ seed: -1 }, /corpus\.seed/],
    // Two operands in [1, 2]: every problem is seen in training, so no held-out problem exists.
    [{ maxOperand: 2, trainDocuments: 200, heldOutDocuments: 1, threeOperandShare: 0 }, /too few problems/],
  ] as const) {
    const err = t.throws(() => arithmeticCorpus(opts), { instanceOf: QuietstarError });
    t.is(err?.code, 'INVALID_ARGUMENT');
    t.regex(err?.message ?? '', re);
  }
});

// ---- svg ------------------------------------------------------------------------------------

test('svg: nice ticks are round and cover the range', (t) => {
  t.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  t.deepEqual(niceTicks(-0.03, 0.02, 5), [-0.03, -0.02, -0.01, 0, 0.01, 0.02]);
  t.deepEqual(niceTicks(1, 400, 4), [100, 200, 300, 400]);
  t.deepEqual(niceTicks(2, 2), [2]);
  t.deepEqual(niceTicks(NaN, 1), []);
});

/** The numeric attributes of every `<tag ...>` in an SVG string. */
function elements(svg: string, tag: string): Record<string, string>[] {
  return [...svg.matchAll(new RegExp(`<${tag} ([^>]*?)/?>`, 'g'))].map((m) => Object.fromEntries([...m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!])));
}

test('svg: a line plot puts its points, labels and legend where the values say, escaped', (t) => {
  const svg = linePlot({
    title: 'Loss <&> "curves"',
    xLabel: 'step',
    yLabel: 'nats',
    width: 400,
    height: 300,
    yMin: 0,
    yMax: 4,
    series: [
      { name: 'train <a>', points: [[0, 0], [10, 4], [20, NaN], [30, 2], [40, 1]] },
      { name: 'held-out', points: [[0, 2], [40, 2]], dots: true },
    ],
  });
  t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  t.true(svg.trimEnd().endsWith('</svg>'));
  t.false(svg.includes('<script'));
  t.true(svg.includes('Loss &lt;&amp;&gt; &quot;curves&quot;'));
  t.true(svg.includes('>train &lt;a&gt;</text>'));
  t.false(svg.includes('<a>'));
  t.true(svg.includes('>step</text>') && svg.includes('>nats</text>'));
  // Plot area: x in [64, 384], y in [32, 256]; y = 0 at the bottom, 4 at the top.
  const lines = elements(svg, 'polyline').map((p) => p.points);
  // The NaN splits the first series into two runs: (0,0)-(10,4) and (30,2)-(40,1).
  t.deepEqual(lines, ['64,256 144,32', '304,144 384,200', '64,144 384,144']);
  t.is(elements(svg, 'circle').length, 2);
  // y ticks 0..4 with labels.
  for (const v of ['0', '1', '2', '3', '4']) t.true(svg.includes(`>${v}</text>`), v);
});

test('svg: a bar chart draws bars of either sign from the zero line, coloured by sign', (t) => {
  const svg = barChart({
    title: 'ΔNLL',
    height: 300,
    width: 400,
    bars: [
      { label: '1', value: 0.5 },
      { label: '2', value: -1 },
      { label: '<3>', value: 0 },
    ],
  });
  const rects = elements(svg, 'rect').slice(1); // the first is the background
  t.is(rects.length, 3);
  const [up, down, flat] = rects as [Record<string, string>, Record<string, string>, Record<string, string>];
  t.is(up.fill, '#d62728');
  t.is(down.fill, '#2ca02c');
  // The positive bar ends at the zero line where the negative one starts, and is half as tall.
  t.is(Number(up.y) + Number(up.height), Number(down.y));
  t.true(Math.abs(Number(down.height) - 2 * Number(up.height)) < 0.2);
  t.true(Number(flat.height) <= 0.5);
  t.true(svg.includes('>&lt;3&gt;</text>'));
  t.is(escapeXml(`a'b"c<d>&`), 'a&#39;b&quot;c&lt;d&gt;&amp;');
});

// ---- verdict --------------------------------------------------------------------------------

function figures(base: number, think: number, emBase: number, emThink: number): Pick<DemoMetrics, 'hardTokens' | 'answerDigits' | 'answers' | 'beforeQuietStar'> {
  return {
    beforeQuietStar: { meanNll: 1, hardestPerplexity: 10, answerDigitNll: 2 },
    answerDigits: { tokens: 20, meanNllBase: 2, meanNllThink: 2 + 2 * (think - base) },
    hardTokens: { tokens: 100, meanNllBase: base, meanNllThink: think, deciles: [], hardest: { perplexityBase: 10, perplexityThink: 10 + (think - base) } },
    answers: { task: 'arithmetic', examples: 10, paperMetric: { withoutThinking: 0.3, withThinking: 0.3 }, exactMatch: { withoutThinking: emBase, withThinking: emThink } },
  };
}

test('verdict: says whether thinking helped, by how much, and where the figures disagree', (t) => {
  const helped = demoVerdict(figures(1.0, 0.9, 0.2, 0.3));
  t.true(helped.helped);
  t.regex(helped.headline, /^Thinking helped: it lowered the held-out NLL from 1\.000 to 0\.900 nats\/token \(10\.00 %\)\./);
  t.regex(helped.headline, /Also better: answer-digit NLL \(nats\/token\), hardest-decile perplexity, answer exact match/);
  t.regex(helped.headline, /Unchanged: answer score, paper metric/);
  t.is(
    helped.context,
    "Before Quiet-STaR training the pretrained model's held-out NLL was 1.000 nats/token (answer digits 2.000); after it, 1.000 without thinking " +
      'and 0.900 with thinking (better than before; answer digits 2.000 and 1.800, better than before).',
  );
  const hurt = demoVerdict(figures(1.0, 1.05, 0.3, 0.4));
  t.false(hurt.helped);
  t.regex(hurt.headline, /^Thinking did not help: it raised the held-out NLL from 1\.000 to 1\.050/);
  t.regex(hurt.headline, /But better: answer exact match/);
  t.deepEqual(hurt.rows.map((r) => r.improved), [false, false, false, false, true]);
  const none = demoVerdict(figures(1, 1.0001, 0.2, 0.2));
  t.false(none.helped);
  t.regex(none.headline, /^Thinking made no measurable difference to the held-out NLL \(1\.000 → 1\.000 nats\/token\)\./);
  t.true(none.rows.every((r) => r.negligible && !r.improved));
});

test('answer digits: the NLLs of the digits right after "A: " and nothing else', (t) => {
  const text = 'Q: 7+5=?\nA: 12\nQ: 3+4=?\nA: 7\nA: x';
  const ids = [...Buffer.from(text)];
  // Entry j scores ids[j + 1]: give every entry its index, so the picked entries are visible.
  const baseNll = ids.slice(1).map((_, j) => j);
  const thinkNll = baseNll.map((x) => x / 2);
  const r = answerTokenNll([{ ids, baseNll, thinkNll }]);
  const at = [text.indexOf('12'), text.indexOf('12') + 1, text.indexOf('7\nA: x')];
  t.is(r.tokens, 3);
  const want = at.reduce((s, k) => s + (k - 1), 0) / 3;
  t.is(r.meanNllBase, want);
  t.is(r.meanNllThink, want / 2);
  t.true(Number.isNaN(answerTokenNll([{ ids: [...Buffer.from('no answers')], baseNll: [], thinkNll: [] }]).meanNllBase));
});

// ---- tokenizer file -------------------------------------------------------------------------

test('the byte tokenizer.json encodes and decodes as the byte tokenizer', async (t) => {
  const file = join(tmp, 'tokenizer.json');
  await writeFile(file, JSON.stringify(byteTokenizerJson()));
  const fromFile = await loadTokenizer(file);
  const bytes = createByteTokenizer();
  t.is(fromFile.vocabSize, 256);
  for (const text of ['Q: 37+48-19=?\nA: 66\n', '  tabs\tand ünïcode ✓ ---', '\u0000\u00ff']) {
    t.deepEqual(fromFile.encode(text), bytes.encode(text), JSON.stringify(text));
    t.is(fromFile.decode(bytes.encode(text)), text);
  }
});

// ---- the demo, tiny -------------------------------------------------------------------------

test('demo --size tiny writes a report with its plots and figures, metrics.json and a loadable model', async (t) => {
  const out = join(tmp, 'tiny');
  const write = process.stdout.write.bind(process.stdout);
  let stdout = '';
  process.stdout.write = ((chunk: string | Uint8Array) => ((stdout += String(chunk)), true)) as typeof process.stdout.write;
  let status: number;
  try {
    status = await demoCommand(['--out', out, '--size', 'tiny', '--threads', '1']);
  } finally {
    process.stdout.write = write;
  }
  t.is(status, 0);
  const m = JSON.parse(await readFile(join(out, 'metrics.json'), 'utf8')) as DemoMetrics;
  const html = await readFile(join(out, 'report.html'), 'utf8');

  // metrics.json: curves of the configured lengths, finite figures, ten deciles.
  t.is(m.size, 'tiny');
  t.is(m.pretrain.curve.length, m.config.size.pretrain.steps);
  t.is(m.quietstar.curve.length, m.config.size.quietstar.steps);
  for (const x of [m.pretrain.finalLoss, m.hardTokens.meanNllBase, m.hardTokens.meanNllThink, m.answers.paperMetric.withThinking, m.answers.paperMetric.withoutThinking]) {
    t.true(Number.isFinite(x));
  }
  t.is(m.hardTokens.deciles.length, 10);
  t.true(m.answerDigits.tokens > 0 && Number.isFinite(m.answerDigits.meanNllThink));
  t.is(m.answers.examples, m.config.size.eval.problems);
  t.is(m.thoughts.length, m.config.size.eval.examples);
  t.is(m.config.quietstar.nAhead, m.config.size.options.nAhead!);
  t.is(m.backend.device, 'cpu');
  t.is(m.backend.threads, 1);
  t.true(m.timings.total > 0);
  // Every output token comes with a thought of nAhead − 3 tokens, never a marker.
  for (const ex of m.thoughts) {
    t.true(ex.steps.length > 0 && ex.steps.length <= 5);
    for (const s of ex.steps) {
      t.is(s.thoughtIds.length, m.config.quietstar.nAhead - 3);
      t.true(s.thoughtIds.every((id) => id < 256));
    }
  }
  t.deepEqual(demoVerdict(m), m.verdict);

  // report.html: self-contained, the five plots, and the same figures as metrics.json.
  t.true(html.startsWith('<!DOCTYPE html>'));
  t.false(/<script|src="http|href="http/.test(html));
  t.is((html.match(/<svg /g) ?? []).length, 5);
  for (const title of ['Pretraining: language-model loss', 'Quiet-STaR: NLL without and with thinking', 'Quiet-STaR: reward', 'mixing weight', 'by difficulty decile']) {
    t.true(html.includes(title), title);
  }
  t.true(html.includes(escapeXml(m.verdict.headline)));
  t.true(html.includes(escapeXml(m.verdict.context)));
  for (const r of m.verdict.rows) t.true(html.includes(escapeXml(r.metric)), r.metric);
  t.true(html.includes(m.hardTokens.meanNllBase.toFixed(3)));
  t.true(html.includes(m.hardTokens.meanNllThink.toFixed(3)));
  t.true(html.includes((100 * m.answers.paperMetric.withThinking).toFixed(1)));
  t.true(html.includes(escapeXml(m.thoughts[0]!.prompt)));
  t.true(html.includes('srcdoc='));
  // The console summary states the verdict and the table.
  t.true(stdout.includes(m.verdict.headline));
  t.true(stdout.includes(m.verdict.context));
  t.true(Number.isFinite(m.beforeQuietStar.meanNll));
  t.regex(stdout, /held-out NLL \(nats\/token\)\s+\d+\.\d{3}\s+\d+\.\d{3}/);

  // model/: a Quiet-STaR folder that loads with its tokenizer and options.
  using engine = cpuEngine(1);
  using qs = await QuietStarModel.load(engine, join(out, 'model'), { optimizer: false });
  t.is(qs.options.nAhead, m.config.quietstar.nAhead);
  t.deepEqual(qs.tokenizer.encode('Q: 1+2=?\nA:'), [...Buffer.from('Q: 1+2=?\nA:')]);
  t.is(qs.startId, 256);
});

test('demo: bad flags are usage errors naming the flag', async (t) => {
  await t.throwsAsync(demoCommand(['--size', 'huge']), { message: /--size must be tiny or default \(got 'huge'\)/ });
  await t.throwsAsync(demoCommand(['--seed', 'x']), { message: /--seed must be an integer >= 0 \(got 'x'\)/ });
  await t.throwsAsync(demoCommand(['--bogus']), { message: /bogus/ });
});
