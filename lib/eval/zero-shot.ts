/**
 * Zero-shot answer evaluation (spec §4.1): the paper's metric — the whitelist-renormalised probability of the
 * gold answer under teacher forcing, with one thought per position — and, beside it, standard exact-match
 * accuracy of greedy generation, each with and without thinking. The two are not comparable (the paper's
 * number is an expected probability, not an argmax accuracy), so both are reported, named plainly.
 *
 * ```ts
 * const task = gsm8kTask(qs.tokenizer);
 * const examples = await loadGsm8k('../shared/data/gsm8k/test.jsonl');
 * const r = await evaluateAnswers(qs, task, examples, { limit: 100, jsonl: 'gsm8k.jsonl' });
 * r.paperMetric.withThinking;  // mean of paperMetricScore over the examples
 * r.exactMatch?.withThinking;  // share of greedy answers equal to the gold one
 * ```
 *
 * Streaming: the eval forward returns per-token NLLs; full-vocabulary logits are fetched only at the answer
 * positions (`evalLogits`), a few rows per example — never for every token (the reference holds 43 GB).
 */
import { promises as fsp } from 'node:fs';

import { Xoshiro128 } from '../data/prng.js';
import { QuietstarError } from '../errors.js';
import { generate } from '../generate.js';
import type { QuietStarModel } from '../quietstar/model.js';
import { generateWithThoughts, thinkingPromptLimit } from '../think-generate.js';
import { evalSeqLimit, optInt, padBatch, padId } from './batch.js';
import type { QaExample } from './datasets.js';
import { paperMetricScore } from './paper-metric.js';
import { newlineId, type AnswerTask } from './tasks.js';

export { gsm8kTask, csqaTask, type AnswerTask } from './tasks.js';

/** Options of {@link evaluateAnswers}. */
export interface AnswerEvalOptions {
  /** Evaluate the first `limit` examples only. @defaultValue all */
  limit?: number;
  /** Examples per forward pass / generation batch. @defaultValue 8 */
  batchSize?: number;
  /**
   * Seed of the thoughts, keyed by (seed, example index, position) as the training sampler keys them (so results
   * do not depend on batchSize), and of the crop windows (keyed by seed and example index). @defaultValue 0
   */
  seed?: number;
  /**
   * Longest sequence (prompt + answer, BOS included); longer ones are cut to a random window of this many
   * tokens, as the reference does (spec §4.1: it can cut the answer). @defaultValue min(256, the eval limit)
   */
  maxLen?: number;
  /** Also measure exact match with greedy generation (with and without thinking). @defaultValue true */
  exactMatch?: boolean;
  /** New tokens for exact match. @defaultValue the task's (GSM8K 16, CSQA 4) */
  maxNewTokens?: number;
  /** Append one JSON line per example to this file (created or emptied first). */
  jsonl?: string;
  /** Called after every batch. */
  onProgress?: (done: number, total: number) => void;
}

/** A pair of figures without and with thinking. */
export interface WithWithout {
  withThinking: number;
  withoutThinking: number;
}

/** One example's result (also its JSONL line). */
export interface AnswerExampleResult {
  id: string;
  /** The gold answer. */
  answer: string;
  /** The paper's metric (spec §4.1) of this example. */
  paperMetric: WithWithout;
  /** Answer tokens scored (after the crop); 0 when the crop cut the whole answer (the example then scores 0). */
  answerTokens: number;
  /** The sequence was longer than maxLen and cut to a random window. */
  cropped: boolean;
  /** Greedy generations, the answers read from them, and whether each equals the gold answer (exact match). */
  generated?: { withThinking: string; withoutThinking: string };
  extracted?: { withThinking: string | null; withoutThinking: string | null };
  correct?: { withThinking: boolean; withoutThinking: boolean };
}

/** Result of {@link evaluateAnswers}. */
export interface AnswerEvalResult {
  task: string;
  examples: number;
  /** Mean paper metric (the number the paper reports as "accuracy"). */
  paperMetric: WithWithout;
  /** Share of examples whose greedy answer equals the gold one (absent with exactMatch: false). */
  exactMatch?: WithWithout;
  perExample: AnswerExampleResult[];
}

/** An example tokenised for teacher forcing: the (cropped) sequence and where its answer tokens are. */
interface Scored {
  seq: number[];
  /** Indices in `seq` of the answer tokens that can be scored (index ≥ 1). */
  at: number[];
  skipFirst: boolean;
  cropped: boolean;
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

/**
 * `prompt + answerText(gold)` with BOS where the tokenizer adds it, its answer tokens (those after the
 * prompt's own tokens), cut to a random window of `maxLen` (keyed by seed and example index) when longer.
 * `skipFirst` when the first answer token decodes to whitespace only (the bare space piece, spec §4.1).
 */
function scoredExample(qs: QuietStarModel, task: AnswerTask, ex: QaExample, k: number, maxLen: number, seed: number): Scored {
  const tok = qs.tokenizer;
  const full = tok.encode(ex.prompt + task.answerText(ex.answer), { addSpecialTokens: true });
  const head = tok.encode(ex.prompt, { addSpecialTokens: true });
  let start = 0;
  while (start < head.length && start < full.length && head[start] === full[start]) start++;
  if (start >= full.length) bad(`example ${ex.id}: the answer ${JSON.stringify(ex.answer)} adds no token to the prompt`);
  const skipFirst = tok.decode([full[start]!]).trim() === '';
  let from = 0;
  if (full.length > maxLen) from = new Xoshiro128(seed, k, 0xc409).below(full.length - maxLen + 1);
  const seq = full.slice(from, from + maxLen);
  const at: number[] = [];
  for (let j = start; j < full.length; j++) if (j - 1 >= from && j < from + maxLen) at.push(j - from);
  // The first answer token's row is the one skipFirst drops: only when that token survived the crop.
  return { seq, at, skipFirst: skipFirst && at[0] === start - from, cropped: full.length > maxLen };
}

/** Paper metric of every example of a batch, with and without thinking. */
async function paperMetricBatch(qs: QuietStarModel, task: AnswerTask, items: Scored[], seed: number, rowIds: number[]): Promise<WithWithout[]> {
  const batch = padBatch(items.map((s) => s.seq), padId(qs));
  await qs.evalForward(batch, seed, Int32Array.from(rowIds));
  const at: [number, number][] = [];
  items.forEach((s, b) => s.at.forEach((j) => at.push([b, j - 1])));
  const { mixed, base } = at.length ? await qs.evalLogits(at) : { mixed: [], base: [] };
  let k = 0;
  return items.map((s) => {
    if (s.at.length === 0) return { withThinking: 0, withoutThinking: 0 };
    const gold = s.at.map((j) => s.seq[j]!);
    const rows = { mixed: mixed.slice(k, k + gold.length), base: base.slice(k, k + gold.length) };
    k += gold.length;
    const score = (r: Float64Array[]): number => paperMetricScore({ rows: r, gold, whitelist: task.whitelist, skipFirst: s.skipFirst });
    return { withThinking: score(rows.mixed), withoutThinking: score(rows.base) };
  });
}

/** Greedy continuations of the prompts with and without thinking, as text. */
async function greedyBatch(
  qs: QuietStarModel,
  prompts: number[][],
  maxNewTokens: number,
  seed: number,
  rowIds: number[],
): Promise<{ withThinking: string[]; withoutThinking: string[] }> {
  const tok = qs.tokenizer;
  const stopTokens = [...new Set([...(tok.eosId === undefined ? [] : [tok.eosId]), newlineId(tok)])];
  const common = { maxNewTokens, temperature: 0, stopTokens };
  const think = await generateWithThoughts(qs, prompts, { ...common, thoughtSeed: seed, rowIds });
  const plain = await generate(qs.model, prompts, { ...common, suppressTokens: [qs.startId, qs.endId] });
  const text = (ids: number[][]): string[] => ids.map((x) => tok.decode(x, { skipSpecialTokens: true }));
  return { withThinking: text(think.ids), withoutThinking: text(plain.ids) };
}

/**
 * Evaluates a Quiet-STaR model on zero-shot questions (spec §4.1): for every example the paper's metric from
 * one eval forward (mixed logits = with thinking, base logits = without) and, unless `exactMatch: false`, the
 * answers of greedy generation with thinking ({@link generateWithThoughts}) and without (plain decoding,
 * markers suppressed), read by `task.extract` and compared with the gold answer.
 * @throws QuietstarError `INVALID_ARGUMENT` naming the option or example at fault.
 */
export async function evaluateAnswers(qs: QuietStarModel, task: AnswerTask, examples: readonly QaExample[], opts: AnswerEvalOptions = {}): Promise<AnswerEvalResult> {
  if (typeof opts !== 'object' || opts === null) bad('evaluateAnswers: opts must be an object');
  if (!Array.isArray(examples) || examples.length === 0) bad('evaluateAnswers: examples must be a non-empty array');
  const limitN = optInt(opts.limit, 'opts.limit', examples.length, 1);
  const batchSize = optInt(opts.batchSize, 'opts.batchSize', 8, 1);
  const seed = optInt(opts.seed, 'opts.seed', 0, 0);
  const limit = evalSeqLimit(qs);
  const maxLen = optInt(opts.maxLen, 'opts.maxLen', Math.min(256, limit), 2);
  if (maxLen > limit) bad(`opts.maxLen ${maxLen} exceeds what the model's eval forward takes (${limit})`);
  const exact = opts.exactMatch ?? true;
  if (typeof exact !== 'boolean') bad(`opts.exactMatch must be a boolean (got ${String(exact)})`);
  const maxNewTokens = optInt(opts.maxNewTokens, 'opts.maxNewTokens', task.maxNewTokens ?? 16, 1);
  const promptLimit = exact ? thinkingPromptLimit(qs, maxNewTokens) : 0;
  if (exact && promptLimit < 1) bad(`opts.maxNewTokens ${maxNewTokens} leaves no room for a prompt within the model's maxSeqLen ${qs.model.config.maxSeqLen}`);
  const list = examples.slice(0, limitN);
  if (opts.jsonl !== undefined) await fsp.writeFile(opts.jsonl, '');

  const perExample: AnswerExampleResult[] = [];
  for (let from = 0; from < list.length; from += batchSize) {
    const chunk = list.slice(from, from + batchSize);
    const items = chunk.map((ex, j) => scoredExample(qs, task, ex, from + j, maxLen, seed));
    // Example k draws its thoughts as noise row k: results do not depend on the batch size.
    const rowIds = chunk.map((_, j) => from + j);
    const metric = await paperMetricBatch(qs, task, items, seed, rowIds);
    const rows: AnswerExampleResult[] = chunk.map((ex, j) => ({
      id: ex.id,
      answer: ex.answer,
      paperMetric: metric[j]!,
      answerTokens: items[j]!.at.length,
      cropped: items[j]!.cropped,
    }));
    if (exact) {
      // Generation sees the prompt's last tokens when it is longer than the model can continue.
      const prompts = chunk.map((ex) => qs.tokenizer.encode(ex.prompt, { addSpecialTokens: true }).slice(-Math.min(maxLen, promptLimit)));
      const gen = await greedyBatch(qs, prompts, maxNewTokens, seed, rowIds);
      rows.forEach((r, j) => {
        const withThinking = gen.withThinking[j]!;
        const withoutThinking = gen.withoutThinking[j]!;
        const got = { withThinking: task.extract(withThinking) ?? null, withoutThinking: task.extract(withoutThinking) ?? null };
        r.generated = { withThinking, withoutThinking };
        r.extracted = got;
        r.correct = { withThinking: got.withThinking === r.answer, withoutThinking: got.withoutThinking === r.answer };
      });
    }
    if (opts.jsonl !== undefined) await fsp.appendFile(opts.jsonl, rows.map((r) => JSON.stringify(r) + '\n').join(''));
    perExample.push(...rows);
    opts.onProgress?.(perExample.length, list.length);
  }
  const mean = (f: (r: AnswerExampleResult) => number): number => perExample.reduce((s, r) => s + f(r), 0) / perExample.length;
  return {
    task: task.name,
    examples: perExample.length,
    paperMetric: { withThinking: mean((r) => r.paperMetric.withThinking), withoutThinking: mean((r) => r.paperMetric.withoutThinking) },
    ...(exact
      ? { exactMatch: { withThinking: mean((r) => Number(r.correct!.withThinking)), withoutThinking: mean((r) => Number(r.correct!.withoutThinking)) } }
      : {}),
    perExample,
  };
}
