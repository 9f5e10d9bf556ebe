/**
 * The demo's report: one self-contained HTML page (inline CSS and SVG, no scripts, nothing
 * fetched) with the verdict, the headline figures, the training curves (LM loss, Quiet-STaR NLLs,
 * reward, mixing weight), ΔNLL by difficulty decile, example thoughts beside the tokens they
 * precede, the hard-token heat map, the configuration, the backend and the timings. Every text
 * that comes from data is escaped.
 */
import type { DemoMetrics } from './pipeline.js';
import { barChart, escapeXml as esc, linePlot, type Series } from './svg.js';
import { formatChange, formatValue } from './verdict.js';

/** Extra parts of the report. */
export interface ReportParts {
  /** A complete HTML page (the hard-token heat map), shown in a sandboxed frame. */
  heatmapHtml?: string;
}

const f3 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? String(x) : x.toFixed(3));

function table(head: string[], rows: string[][]): string {
  const th = head.map((h) => `<th>${esc(h)}</th>`).join('');
  const tr = rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table><thead><tr>${th}</tr></thead><tbody>\n${tr}\n</tbody></table>`;
}

/** Key/value rows of a flat object (nested values as JSON). */
function kvTable(obj: Record<string, unknown>): string {
  return table(['setting', 'value'], Object.entries(obj).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)]));
}

function plots(m: DemoMetrics): string[] {
  const lm = m.pretrain.curve;
  const qs = m.quietstar.curve;
  const pts = <T>(rows: T[], x: (r: T) => number, y: (r: T) => number | undefined): [number, number][] =>
    rows.filter((r) => y(r) !== undefined).map((r) => [x(r), y(r)!]);
  const evalSeries = (name: string, y: (r: (typeof qs)[number]) => number | undefined, color: string): Series[] => {
    const p = pts(qs, (r) => r.step, y);
    return p.length > 0 ? [{ name, points: p, dots: true, color }] : [];
  };
  return [
    linePlot({
      title: 'Pretraining: language-model loss',
      xLabel: 'step',
      yLabel: 'nats / token',
      series: [
        { name: 'train', points: pts(lm, (r) => r.step, (r) => r.loss) },
        { name: 'held-out', points: pts(lm, (r) => r.step, (r) => r.evalLoss), dots: true },
      ],
    }),
    linePlot({
      title: 'Quiet-STaR: NLL without and with thinking',
      xLabel: 'step',
      yLabel: 'nats / token',
      series: [
        { name: 'base (train)', points: pts(qs, (r) => r.step, (r) => r.nllBase), color: '#1f77b4' },
        { name: 'thinking (train)', points: pts(qs, (r) => r.step, (r) => r.nllTalk), color: '#2ca02c' },
        ...evalSeries('base (held-out)', (r) => r.evalNllBase, '#17becf'),
        ...evalSeries('thinking (held-out)', (r) => r.evalNllTalk, '#98df8a'),
      ],
    }),
    linePlot({
      title: 'Quiet-STaR: reward (base NLL − thinking NLL)',
      xLabel: 'step',
      yLabel: 'nats',
      referenceY: 0,
      series: [{ name: 'mean reward', points: pts(qs, (r) => r.step, (r) => r.rewardMean) }],
    }),
    linePlot({
      title: m.config.quietstar.mixing === 'paper' ? 'Quiet-STaR: mixing weight w of the base (1 − w: the thought)' : 'Quiet-STaR: mixing weight w of the thought',
      xLabel: 'step',
      yLabel: 'w',
      referenceY: 0,
      series: [
        { name: 'mean', points: pts(qs, (r) => r.step, (r) => r.mixMean), color: '#9467bd' },
        { name: 'min', points: pts(qs, (r) => r.step, (r) => r.mixMin), color: '#c5b0d5' },
        { name: 'max', points: pts(qs, (r) => r.step, (r) => r.mixMax), color: '#c5b0d5' },
      ],
    }),
    barChart({
      title: 'ΔNLL (thinking − base) by difficulty decile',
      xLabel: 'decile of base NLL (1 = easiest, 10 = hardest)',
      yLabel: 'Δ nats / token (< 0: thinking helped)',
      bars: m.hardTokens.deciles.map((d) => ({
        label: String(d.decile),
        value: d.deltaNll,
        title: `decile ${d.decile}: ${d.count} tokens, base NLL ${f3(d.meanNllBase)}, thinking ${f3(d.meanNllThink)}, Δ ${f3(d.deltaNll)}`,
      })),
    }),
  ];
}

function thoughtsSection(m: DemoMetrics): string {
  if (m.thoughts.length === 0) return '<p>No example generations.</p>';
  return m.thoughts
    .map((ex) => {
      const steps = ex.steps
        .map((s) => `<tr><td class="thought">${esc(JSON.stringify(s.thought))}</td><td class="tok">${esc(JSON.stringify(s.token))}</td></tr>`)
        .join('');
      const verdict = ex.correct ? 'correct' : `wrong (gold ${ex.gold})`;
      return (
        `<div class="example"><pre>${esc(ex.prompt)}</pre>` +
        `<p>greedy answer with thinking: <code>${esc(JSON.stringify(ex.generated))}</code> — ${esc(verdict)}</p>` +
        `<table><thead><tr><th>thought (between &lt;|startthought|&gt; and &lt;|endthought|&gt;)</th><th>then the token</th></tr></thead><tbody>${steps}</tbody></table></div>`
      );
    })
    .join('\n');
}

const STYLE = `body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.sub{color:#666;margin-top:0}
.verdict{padding:.8em 1em;border-radius:6px;font-size:1.1em}
.helped{background:#e6f4ea;border:1px solid #2ca02c}.not{background:#fdecea;border:1px solid #d62728}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f4f4f4}.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{border:1px solid #ddd}
.example{margin:1em 0;padding:.5em 1em;border-left:3px solid #9467bd}.thought{font-family:ui-monospace,monospace;color:#555}
.tok{font-family:ui-monospace,monospace;font-weight:bold}pre{background:#f7f7f7;padding:.5em}
iframe{width:100%;height:420px;border:1px solid #ddd}`;

/** The report page for a run's metrics. */
export function reportHtml(m: DemoMetrics, parts: ReportParts = {}): string {
  const v = m.verdict;
  const headline = table(
    ['figure (held-out data)', 'without thinking', 'with thinking', 'change'],
    v.rows.map((r) => [r.metric, formatValue(r.base, r.unit), formatValue(r.think, r.unit), formatChange(r)]),
  );
  const deciles = table(
    ['decile', 'base NLL range', 'tokens', 'NLL without thinking', 'NLL with thinking', 'ΔNLL'],
    m.hardTokens.deciles.map((d) => [String(d.decile), `${f3(d.lo)} – ${f3(d.hi)}`, String(d.count), f3(d.meanNllBase), f3(d.meanNllThink), f3(d.deltaNll)]),
  );
  const t = m.timings;
  const timings = table(
    ['phase', 'seconds'],
    [
      ['corpus', t.corpus],
      ['pretraining', t.pretrain],
      ['Quiet-STaR training', t.quietstar],
      ['hard-token analysis', t.hardTokens],
      ['answer evaluation', t.answers],
      ['example thoughts', t.thoughts],
      ['writing', t.write],
      ['total', t.total],
    ].map(([k, s]) => [String(k), (s as number).toFixed(1)]),
  );
  const heatmap = parts.heatmapHtml
    ? `<h2>Which tokens thinking helped</h2><p>Each held-out token coloured by ΔNLL: green = thinking helped, red = hurt; hover for both NLLs.</p>` +
      `<iframe sandbox="" title="hard-token heat map" srcdoc="${esc(parts.heatmapHtml)}"></iframe>`
    : '';
  const { size } = m.config;
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quiet-STaR demo report</title><style>${STYLE}</style></head>
<body>
<h1>Quiet-STaR demo</h1>
<p class="sub">A tiny Llama pretrained from scratch on generated arithmetic, then trained with Quiet-STaR to think before each token; evaluated on held-out problems it never saw. Size <b>${esc(m.size)}</b>, seed ${m.seed}, ${t.total.toFixed(0)} s on ${esc(m.backend.device)} (${m.backend.threads} threads).</p>
<div class="verdict ${v.helped ? 'helped' : 'not'}">${esc(v.headline)}</div>
<p>${esc(v.context)}</p>
<h2>Headline figures</h2>
${headline}
<p>NLL and perplexity: per token, one thought per position (the eval forward of spec §4.1), over ${m.hardTokens.tokens} held-out tokens; answer digits: the ${m.answerDigits.tokens} digits after "A: " alone (the operands are random by construction, so no thought can predict them). Paper metric: the probability of the gold direct answer with the softmax restricted to digits and newline (spec §4.1; not an accuracy). Exact match: greedy generation of ${m.answers.examples} held-out problems, the line's last number (a direct answer, or the result of a worked one) against the gold answer.</p>
<h2>Training and difficulty</h2>
<div class="plots">
${plots(m).join('\n')}
</div>
<h2>ΔNLL by difficulty decile</h2>
${deciles}
<h2>Example thoughts</h2>
<p>Greedy answers to held-out problems generated with thinking: before each output token the model samples a thought, mixes its prediction with the base one, and discards the thought.</p>
${thoughtsSection(m)}
${heatmap}
<h2>Configuration</h2>
<h3>Corpus</h3>
${kvTable({ ...size.corpus, trainDocuments: m.corpus.trainDocuments, heldOutDocuments: m.corpus.heldOutDocuments, trainTokens: m.corpus.trainTokens, heldOutTokens: m.corpus.heldOutTokens, heldOutProblems: m.corpus.heldOutProblems })}
<pre>${esc(m.corpus.sample)}</pre>
<h3>Model</h3>
${kvTable({ ...m.config.model, parameters: m.config.parameters })}
<h3>Training</h3>
${kvTable({ seqLen: size.seqLen, pretrain: size.pretrain, quietstar: size.quietstar, eval: size.eval })}
<h3>Quiet-STaR options</h3>
${kvTable({ ...m.config.quietstar })}
<h3>Backend</h3>
${kvTable({ ...m.backend })}
<h3>Timings</h3>
${timings}
</body></html>
`;
}
