/**
 * `quietstar eval` and `quietstar generate --think` as child processes, on a Quiet-STaR folder made from
 * stories260K (tok512.bin): the --json summary objects of gsm8k, csqa and hard-tokens, the human tables, the
 * JSONL and HTML files, thoughts printed between the markers, and usage errors (exit 2 naming the flag) and a
 * folder that is not Quiet-STaR's (exit 1).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { QuietStarModel } from '../lib/quietstar/index.js';
import { dataPath, missingData } from '../lib/util/data-path.js';
import { cli } from './support/cli.js';
import { cpuEngine } from './support/engine.js';

const STORIES = dataPath('models', 'stories260K-hf');
const TOK512 = dataPath('models', 'stories260K-llama2c', 'tok512.bin');
const GSM8K = dataPath('gsm8k', 'test.jsonl');
const CSQA_HF = dataPath('commonsenseqa', 'dev_hf_validation.jsonl');
const missing =
  missingData('models', 'stories260K-hf') ??
  missingData('models', 'stories260K-llama2c', 'tok512.bin') ??
  missingData('gsm8k', 'test.jsonl') ??
  missingData('commonsenseqa', 'dev_hf_validation.jsonl');
if (missing) console.log(`eval-cli: skipped: ${missing}`);
const withData = missing ? test.skip : test;

const dir = mkdtempSync(join(tmpdir(), 'qs-eval-cli-'));
const MODEL = join(dir, 'model');
test.before(async () => {
  if (missing) return;
  using engine = cpuEngine(1);
  using qs = await QuietStarModel.fromPretrained(engine, STORIES, { tokenizer: TOK512, quietstar: { nAhead: 4 }, optimizer: false });
  await qs.save(MODEL);
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

interface Summary {
  task: string;
  examples: number;
  paper_metric: { with_thinking: number; without_thinking: number };
  exact_match: { with_thinking: number; without_thinking: number } | null;
}

const inUnit = (x: number): boolean => Number.isFinite(x) && x >= 0 && x <= 1;

withData('eval gsm8k --json: one summary object; the table names both metrics', async (t) => {
  const r = await cli('eval', '--model', MODEL, '--task', 'gsm8k', '--data', GSM8K, '--limit', '3', '--batch-size', '2', '--max-new-tokens', '3', '--json');
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 1);
  const s = JSON.parse(lines[0]!) as Summary;
  t.is(s.task, 'gsm8k');
  t.is(s.examples, 3);
  t.true(inUnit(s.paper_metric.with_thinking) && inUnit(s.paper_metric.without_thinking), lines[0]);
  t.true(s.paper_metric.with_thinking > 0, 'digits and newline get some probability');
  t.true(inUnit(s.exact_match!.with_thinking) && inUnit(s.exact_match!.without_thinking));
  const table = await cli('eval', '--model', MODEL, '--task', 'gsm8k', '--data', GSM8K, '--limit', '1', '--max-new-tokens', '2');
  t.is(table.status, 0, table.stderr);
  t.regex(table.stdout, /gsm8k: 1 examples/);
  t.regex(table.stdout, /paper metric .*\d\.\d{4} +\d\.\d{4}/);
  t.regex(table.stdout, /exact match .*\d\.\d{4} +\d\.\d{4}/);
});

withData('eval csqa (Hugging Face layout) --no-exact-match --jsonl', async (t) => {
  const jsonl = join(dir, 'csqa.jsonl');
  const r = await cli('eval', '--model', MODEL, '--task', 'csqa', '--data', CSQA_HF, '--limit', '2', '--no-exact-match', '--jsonl', jsonl, '--json');
  t.is(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout) as Summary;
  t.is(s.task, 'csqa');
  t.is(s.exact_match, null);
  const lines = readFileSync(jsonl, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; answer: string; paperMetric: { withThinking: number } });
  t.deepEqual(lines.map((l) => l.id), ['1afa02df02c908a558b4036e80242fac', lines[1]!.id]);
  t.is(lines[0]!.answer, 'A');
  t.true(Math.abs((lines[0]!.paperMetric.withThinking + lines[1]!.paperMetric.withThinking) / 2 - s.paper_metric.with_thinking) < 1e-12);
});

withData('eval hard-tokens: deciles in the summary, the heat map and per-window JSONL', async (t) => {
  const data = join(dir, 'held-out.txt');
  writeFileSync(data, 'Once upon a time there was a little girl named Lily. She liked to play in the park with her dog.\n');
  const html = join(dir, 'heat.html');
  const jsonl = join(dir, 'windows.jsonl');
  const r = await cli('eval', '--model', MODEL, '--task', 'hard-tokens', '--data', data, '--seq-len', '16', '--html', html, '--jsonl', jsonl, '--json');
  t.is(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout) as { task: string; tokens: number; deciles: { count: number }[]; hardest_decile_perplexity: { with_thinking: number; without_thinking: number } };
  t.is(s.task, 'hard-tokens');
  t.is(s.deciles.length, 10);
  t.is(s.deciles.reduce((n, d) => n + d.count, 0), s.tokens);
  t.true(s.hardest_decile_perplexity.without_thinking > 1);
  const page = readFileSync(html, 'utf8');
  t.true(page.startsWith('<!DOCTYPE html>'));
  t.regex(page, /title="NLL without thinking \d/);
  const windows = readFileSync(jsonl, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { ids: number[]; base_nll: number[] });
  t.is(windows.reduce((n, w) => n + w.base_nll.length, 0), s.tokens);
  const table = await cli('eval', '--model', MODEL, '--task', 'hard-tokens', '--data', data, '--seq-len', '16');
  t.is(table.status, 0, table.stderr);
  t.regex(table.stdout, /hardest decile perplexity: without thinking \d+\.\d{3}, with thinking \d+\.\d{3}/);
});

withData('generate --think: thoughts between the markers with --show-thoughts, and in --json', async (t) => {
  const shown = await cli('generate', '--model', MODEL, '--think', '--show-thoughts', '--prompt', 'Once upon a time', '--max-new-tokens', '4', '--temperature', '0');
  t.is(shown.status, 0, shown.stderr);
  t.true(shown.stdout.startsWith('Once upon a time<|startthought|>'), shown.stdout);
  t.is(shown.stdout.match(/<\|startthought\|>[^<]*<\|endthought\|>/g)?.length, 4, shown.stdout);
  const json = await cli('generate', '--model', MODEL, '--think', '--prompt', 'Once upon a time', '--max-new-tokens', '4', '--temperature', '0', '--json');
  t.is(json.status, 0, json.stderr);
  const out = JSON.parse(json.stdout) as { ids: number[]; text: string; thoughts: number[][]; thought_texts: string[] };
  t.is(out.ids.length, 4);
  t.true(out.thoughts.length === 4 && out.thoughts.every((th) => th.length === 1), json.stdout); // nAhead 4: one sampled token
  t.is(out.thought_texts.length, 4);
  // Without the markers, the shown text is the plain --think text.
  const plain = await cli('generate', '--model', MODEL, '--think', '--prompt', 'Once upon a time', '--max-new-tokens', '4', '--temperature', '0');
  t.is(shown.stdout.replace(/<\|startthought\|>[^<]*<\|endthought\|>/g, ''), plain.stdout);
});

withData('errors: usage mistakes exit 2 naming the flag; a base model folder exits 1', async (t) => {
  const badTask = await cli('eval', '--model', MODEL, '--task', 'mmlu', '--data', GSM8K);
  t.is(badTask.status, 2);
  t.regex(badTask.stderr, /--task must be gsm8k, csqa or hard-tokens \(got 'mmlu'\)/);
  const noData = await cli('eval', '--model', MODEL, '--task', 'gsm8k');
  t.is(noData.status, 2);
  t.regex(noData.stderr, /--data is required/);
  const html = await cli('eval', '--model', MODEL, '--task', 'gsm8k', '--data', GSM8K, '--html', 'x.html');
  t.is(html.status, 2);
  t.regex(html.stderr, /--html is for --task hard-tokens/);
  const show = await cli('generate', '--model', MODEL, '--show-thoughts', '--prompt', 'a', '--max-new-tokens', '1');
  t.is(show.status, 2);
  t.regex(show.stderr, /--show-thoughts needs --think/);
  const base = await cli('eval', '--model', STORIES, '--task', 'gsm8k', '--data', GSM8K, '--limit', '1');
  t.is(base.status, 1);
  t.regex(base.stderr, /no "quietstar" block: not a Quiet-STaR folder/);
  const help = await cli('eval', '--help');
  t.is(help.status, 0);
  t.regex(help.stdout, /usage: quietstar eval --model DIR --task gsm8k\|csqa\|hard-tokens --data FILE/);
});
