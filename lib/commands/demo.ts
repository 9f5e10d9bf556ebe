/**
 * `quietstar demo`: the embedded demo (lib/demo's runDemo), nothing downloaded — generated
 * arithmetic, a tiny Llama pretrained from scratch, Quiet-STaR, evaluation with and without
 * thinking; OUT/report.html, OUT/metrics.json and OUT/model. Progress bars on stderr (log lines
 * without a terminal), and a summary table on stdout that says whether thinking helped.
 */
import { resolve } from 'node:path';

import cliProgress from 'cli-progress';

import { DEMO_SIZES } from '../demo/config.js';
import { runDemo, type DemoPhase, type DemoProgress } from '../demo/pipeline.js';
import { formatChange, formatValue } from '../demo/verdict.js';
import { ENGINE_FLAGS, ENGINE_HELP, UsageError, int, openEngine, parseFlags, str } from './common.js';

/** `quietstar demo --help`. */
export const DEMO_HELP = `usage: quietstar demo [--out DIR] [--size ${Object.keys(DEMO_SIZES).join('|')}] [--seed N]

The whole method in a few minutes on a laptop, nothing downloaded: generates multi-step arithmetic
("Q: 37+48-19=?\\nA: 66", half of the training answers worked out step by step, held-out answers
direct), pretrains a tiny Llama on it from scratch (byte tokenizer), trains it with Quiet-STaR, and
compares the model's predictions without and with thinking on held-out problems never seen in training:
per-token NLL by difficulty decile, answer accuracy (the paper's metric and greedy exact match), and
example thoughts. Writes OUT/report.html (plots, tables, thoughts, configuration), OUT/metrics.json
(every figure) and OUT/model (a Quiet-STaR folder: try 'quietstar eval --model OUT/model ...').

  --out DIR                output folder (default demo-out)
  --size S                 default (about 5 minutes on 2 CPU cores) | tiny (seconds; a smoke test)
  --seed N                 corpus, weights, data order and thoughts (default 0)
${ENGINE_HELP}
`;

const FLAGS = {
  ...ENGINE_FLAGS,
  out: { type: 'string' },
  size: { type: 'string' },
  seed: { type: 'string' },
} as const;

const TITLES: Record<DemoPhase, string> = {
  pretrain: 'pretraining  ',
  baseline: 'baseline NLL ',
  quietstar: 'Quiet-STaR   ',
  'hard-tokens': 'hard tokens  ',
  answers: 'answers      ',
  thoughts: 'thoughts     ',
};

/** One bar per phase on a terminal; otherwise a log line every tenth of a phase. */
function phaseProgress(): { update(p: DemoProgress): void; close(): void } {
  const tty = process.stderr.isTTY === true;
  let phase: DemoPhase | undefined;
  let bar: cliProgress.SingleBar | undefined;
  let nextLog = 0;
  const info = (p: DemoProgress): string => Object.entries(p.info ?? {}).map(([k, v]) => `${k} ${v}`).join(' | ');
  const stop = (): void => {
    bar?.stop();
    bar = undefined;
  };
  return {
    update(p) {
      if (p.phase !== phase) {
        stop();
        phase = p.phase;
        nextLog = 0;
        if (tty) {
          bar = new cliProgress.SingleBar({ stream: process.stderr, format: `${TITLES[p.phase]} |{bar}| {value}/{total} {info} | ETA {eta_formatted}`, hideCursor: true, etaBuffer: 20 }, cliProgress.Presets.shades_classic);
          bar.start(p.total, 0, { info: '' });
        }
      }
      if (bar) bar.update(p.done, { info: info(p) });
      else if (p.done >= nextLog || p.done === p.total) {
        process.stderr.write(`${TITLES[p.phase].trim()} ${p.done}/${p.total}${p.info ? ` | ${info(p)}` : ''}\n`);
        nextLog = p.done + Math.max(1, Math.ceil(p.total / 10));
      }
    },
    close: stop,
  };
}

/** Text columns padded to their widest cell. */
function textTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n') + '\n';
}

/** Runs `quietstar demo` with its flags (see {@link DEMO_HELP}); resolves with the exit status (UsageError for bad flags). */
export async function demoCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(DEMO_HELP);
    return 0;
  }
  const outDir = str(values, 'out') ?? 'demo-out';
  if (outDir === '') throw new UsageError('--out must be a folder path');
  const size = str(values, 'size') ?? 'default';
  if (!Object.hasOwn(DEMO_SIZES, size)) throw new UsageError(`--size must be ${Object.keys(DEMO_SIZES).join(' or ')} (got '${size}')`);
  const seed = int(values, 'seed', 0);

  using engine = openEngine(values);
  process.stderr.write(`demo: size ${size}, seed ${seed}, ${engine.device} with ${engine.threads} threads; writing ${resolve(outDir)}\n`);
  const progress = phaseProgress();
  let metrics;
  try {
    metrics = await runDemo(engine, { outDir, size: size as keyof typeof DEMO_SIZES, seed, onProgress: (p) => progress.update(p) });
  } finally {
    progress.close();
  }
  const v = metrics.verdict;
  const rows = [['figure (held-out)', 'without thinking', 'with thinking', 'change'], ...v.rows.map((r) => [r.metric, formatValue(r.base, r.unit), formatValue(r.think, r.unit), formatChange(r)])];
  process.stdout.write(
    `\n${textTable(rows)}\n${v.headline}\n${v.context}\n\n` +
      `${metrics.answers.examples} held-out problems, ${metrics.hardTokens.tokens} held-out tokens; ${metrics.timings.total.toFixed(1)} s in all ` +
      `(pretraining ${metrics.timings.pretrain.toFixed(0)} s, Quiet-STaR ${metrics.timings.quietstar.toFixed(0)} s, evaluation ` +
      `${(metrics.timings.hardTokens + metrics.timings.answers + metrics.timings.thoughts).toFixed(0)} s).\n` +
      `report: ${resolve(outDir, 'report.html')}\nmetrics: ${resolve(outDir, 'metrics.json')}\nmodel: ${resolve(outDir, 'model')}\n`,
  );
  return 0;
}
