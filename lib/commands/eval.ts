/**
 * `quietstar eval`: zero-shot GSM8K / CommonsenseQA (the paper's metric beside exact match, with and without
 * thinking, spec §4.1) and the hard-token analysis (spec §4.3) of a Quiet-STaR model folder.
 */
import { promises as fsp } from 'node:fs';

import cliProgress from 'cli-progress';

import { readCorpus } from '../data/corpus.js';
import { loadCommonsenseQa, loadGsm8k } from '../eval/datasets.js';
import { hardTokenAnalysis, hardTokenHeatmapHtml, type HardTokenResult } from '../eval/hard-tokens.js';
import { csqaTask, gsm8kTask } from '../eval/tasks.js';
import { evaluateAnswers, type AnswerEvalResult, type WithWithout } from '../eval/zero-shot.js';
import { QuietStarModel } from '../quietstar/model.js';
import {
  CORPUS_FLAGS,
  ENGINE_FLAGS,
  ENGINE_HELP,
  UsageError,
  addsBos,
  corpusFlags,
  int,
  openEngine,
  parseFlags,
  required,
  str,
} from './common.js';

export const EVAL_HELP = `usage: quietstar eval --model DIR --task gsm8k|csqa|hard-tokens --data FILE [options]

Evaluates a Quiet-STaR model folder (written by 'quietstar train' or the demo) with and without
thinking.

gsm8k, csqa (zero-shot, spec §4.1; prompts "Q: ...\\nA:"):
  paper metric   the reference's score: the probability of the gold answer under teacher forcing,
                 softmax restricted to the answer tokens (digits / letters + newline), one thought
                 per position; the mean over examples is what the paper reports as "accuracy"
  exact match    standard accuracy: greedy generation, the first number / letter compared with the
                 gold answer (not comparable with the paper metric)
hard-tokens (spec §4.3): per-token NLL without and with thinking on a held-out corpus, by decile
                 of base NLL (1 = easiest), and the hardest decile's perplexity

  --model DIR              Quiet-STaR folder (config.json with a "quietstar" block)
  --tokenizer FILE         tokenizer, when the folder has none
  --task T                 gsm8k | csqa | hard-tokens
  --data FILE              gsm8k: test.jsonl ({"question","answer"} lines, gold after "#### ");
                           csqa: dev_rand_split.jsonl or the Hugging Face layout;
                           hard-tokens: a text, JSONL or {"ids": [...]} corpus (see --format)
  --format F, --field NAME, --separator STR   how to read a hard-tokens corpus (as 'perplexity')
  --limit N                the first N examples (hard-tokens: N windows); default all
  --batch-size N           sequences per forward pass (default 8)
  --seed N                 seed of the thoughts and the crop windows (default 0)
  --seq-len N              longest sequence: longer questions are cut to a random window as the
                           reference does; hard-tokens window length (default min(256, the model's))
  --no-exact-match         skip greedy generation (only the paper metric)
  --max-new-tokens N       tokens generated for exact match (default gsm8k 16, csqa 4)
  --jsonl FILE             one JSON line per example (hard-tokens: per window)
  --html FILE              hard-tokens: write the heat map of the tokens thinking helped or hurt
  --json                   print one summary object instead of the table
${ENGINE_HELP}
`;

const FLAGS = {
  ...ENGINE_FLAGS,
  ...CORPUS_FLAGS,
  model: { type: 'string' },
  task: { type: 'string' },
  limit: { type: 'string' },
  'batch-size': { type: 'string' },
  seed: { type: 'string' },
  'no-exact-match': { type: 'boolean' },
  'max-new-tokens': { type: 'string' },
  jsonl: { type: 'string' },
  html: { type: 'string' },
  json: { type: 'boolean' },
} as const;

const TASKS = ['gsm8k', 'csqa', 'hard-tokens'];

/** A progress bar on stderr when it is a terminal (nothing otherwise: a log file gets no garbled bar). */
function progressBar(label: string): { update: (done: number, total: number) => void; stop: () => void } {
  if (process.stderr.isTTY !== true) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: `${label} [{bar}] {value}/{total} | {eta_formatted} left`, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total) {
      if (!started) bar.start(total, 0);
      started = true;
      bar.update(done);
    },
    stop: () => (started ? bar.stop() : undefined),
  };
}

const snake = (x: WithWithout): { with_thinking: number; without_thinking: number } => ({
  with_thinking: x.withThinking,
  without_thinking: x.withoutThinking,
});

function answerTable(r: AnswerEvalResult): string {
  const row = (name: string, x: WithWithout): string =>
    `${name.padEnd(34)}${x.withoutThinking.toFixed(4).padStart(18)}${x.withThinking.toFixed(4).padStart(16)}\n`;
  return (
    `${r.task}: ${r.examples} examples\n` +
    `${''.padEnd(34)}${'without thinking'.padStart(18)}${'with thinking'.padStart(16)}\n` +
    row('paper metric (spec §4.1, mean p)', r.paperMetric) +
    (r.exactMatch ? row('exact match (greedy, accuracy)', r.exactMatch) : '') +
    'The paper metric is the whitelist-renormalised probability of the gold answer; it is not an accuracy.\n'
  );
}

function hardTable(r: HardTokenResult): string {
  const lines = [
    `hard tokens: ${r.tokens} predicted tokens in ${r.windows.length} windows`,
    'decile  base NLL range      tokens  NLL base  NLL think      ΔNLL',
    ...r.deciles.map(
      (d) =>
        `${String(d.decile).padStart(6)}  ${`${d.lo.toFixed(2)}–${d.hi.toFixed(2)}`.padEnd(17)}${String(d.count).padStart(8)}` +
        `${d.meanNllBase.toFixed(4).padStart(10)}${d.meanNllThink.toFixed(4).padStart(11)}${d.deltaNll.toFixed(4).padStart(10)}`,
    ),
    `mean NLL: without thinking ${r.meanNllBase.toFixed(4)}, with thinking ${r.meanNllThink.toFixed(4)} nats/token`,
    `hardest decile perplexity: without thinking ${r.hardest.perplexityBase.toFixed(3)}, with thinking ${r.hardest.perplexityThink.toFixed(3)}`,
    'ΔNLL = with − without thinking: negative where thinking helped.',
  ];
  return lines.join('\n') + '\n';
}

function hardJson(r: HardTokenResult): object {
  return {
    task: 'hard-tokens',
    tokens: r.tokens,
    windows: r.windows.length,
    mean_nll: { with_thinking: r.meanNllThink, without_thinking: r.meanNllBase },
    deciles: r.deciles.map((d) => ({
      decile: d.decile,
      lo: d.lo,
      hi: d.hi,
      count: d.count,
      nll_without_thinking: d.meanNllBase,
      nll_with_thinking: d.meanNllThink,
      delta_nll: d.deltaNll,
    })),
    hardest_decile_perplexity: { with_thinking: r.hardest.perplexityThink, without_thinking: r.hardest.perplexityBase },
  };
}

export async function evalCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(EVAL_HELP);
    return 0;
  }
  const modelDir = required(values, 'model');
  const task = required(values, 'task');
  if (!TASKS.includes(task)) throw new UsageError(`--task must be gsm8k, csqa or hard-tokens (got '${task}')`);
  const dataFile = required(values, 'data');
  const limit = int(values, 'limit', 0, 1);
  const batchSize = int(values, 'batch-size', 8, 1);
  const seed = int(values, 'seed', 0, 0);
  const seqLen = int(values, 'seq-len', 0, 2);
  const maxNewTokens = int(values, 'max-new-tokens', 0, 1);
  const jsonl = str(values, 'jsonl');
  const html = str(values, 'html');
  if (html !== undefined && task !== 'hard-tokens') throw new UsageError('--html is for --task hard-tokens');
  if (task === 'hard-tokens' && (values['no-exact-match'] || maxNewTokens)) throw new UsageError('--no-exact-match and --max-new-tokens are for gsm8k and csqa');
  const corpusOptions = corpusFlags(values);

  using engine = openEngine(values);
  const tokenizer = str(values, 'tokenizer');
  using qs = await QuietStarModel.load(engine, modelDir, { optimizer: false, ...(tokenizer !== undefined ? { tokenizer } : {}) });
  const bar = progressBar(task);
  let summary: object;
  let table: string;
  try {
    if (task === 'hard-tokens') {
      const corpus = await readCorpus(dataFile, {
        ...corpusOptions,
        tokenizer: qs.tokenizer,
        vocabSize: qs.startId,
        addEos: false,
        addBos: addsBos(qs.tokenizer),
      });
      const r = await hardTokenAnalysis(qs, corpus.documents, {
        batchSize,
        seed,
        ...(seqLen ? { seqLen } : {}),
        ...(limit ? { limit } : {}),
        onProgress: bar.update,
      });
      if (jsonl !== undefined) {
        await fsp.writeFile(jsonl, r.windows.map((w) => JSON.stringify({ ids: w.ids, base_nll: w.baseNll, think_nll: w.thinkNll }) + '\n').join(''));
      }
      if (html !== undefined) await fsp.writeFile(html, hardTokenHeatmapHtml(r, qs.tokenizer, { title: `Where thinking helps: ${dataFile}` }));
      summary = hardJson(r);
      table = hardTable(r);
    } else {
      const examples = task === 'gsm8k' ? await loadGsm8k(dataFile) : await loadCommonsenseQa(dataFile);
      const answerTask = task === 'gsm8k' ? gsm8kTask(qs.tokenizer) : csqaTask(qs.tokenizer);
      const r = await evaluateAnswers(qs, answerTask, examples, {
        batchSize,
        seed,
        exactMatch: !values['no-exact-match'],
        ...(limit ? { limit } : {}),
        ...(seqLen ? { maxLen: seqLen } : {}),
        ...(maxNewTokens ? { maxNewTokens } : {}),
        ...(jsonl !== undefined ? { jsonl } : {}),
        onProgress: bar.update,
      });
      summary = {
        task: r.task,
        examples: r.examples,
        paper_metric: snake(r.paperMetric),
        exact_match: r.exactMatch ? snake(r.exactMatch) : null,
      };
      table = answerTable(r);
    }
  } finally {
    bar.stop();
  }
  process.stdout.write(values.json ? `${JSON.stringify(summary)}\n` : table);
  return 0;
}
