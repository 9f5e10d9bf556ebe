/**
 * Generation with thinking at inference (spec §5): every output token gets a thought of its own.
 *
 * ```ts
 * const { ids, thoughts } = await generateWithThoughts(qs, [prompt], { maxNewTokens: 32, temperature: 0 });
 * qs.tokenizer.decode(thoughts[0][3]);   // the thought behind the 4th output token
 * ```
 *
 * The loop mirrors lib/generate.ts (left-padded prompts, one prefill call, then one token per row per step,
 * the native `sample_tokens` op keyed by (seed, row, step), stop tokens) on the Quiet-STaR model's thinking
 * decode: the text has one KV cache; for each new token a branch `<start>`, nAhead − 3 sampled tokens, `<end>`
 * is forked on top of it, its end state mixed with the base state by the mixing head, then the branch is
 * dropped — thoughts never enter the context of later tokens. The markers are never emitted. Cost per token ≈
 * nAhead plain decodes (bench/think_bench.cpp). With nAhead = 1 the output is exactly plain generation's.
 */
import { QuietstarError } from './errors.js';
import { drain, generateFrom, type GenerateOptions, type GenerateResult, type NextTokenSource } from './generate.js';
import type { QuietStarModel } from './quietstar/model.js';
import { thoughtLength } from './quietstar/options.js';

/** Options of {@link generateWithThoughts}: those of `generate`, and the thoughts' seed. */
export interface ThinkGenerateOptions extends GenerateOptions {
  /**
   * Seed of the thought tokens' sampling noise, keyed by (thoughtSeed, row, thought step, position) — the key
   * the training/eval sampler uses, so the thought at a position is the one the eval forward draws there.
   * @defaultValue `seed`
   */
  thoughtSeed?: number;
}

/** One step of {@link generateWithThoughtsStream}: the token and the thought behind it per row. */
export interface ThinkGenerateStep {
  /** 0-based index of the new token. */
  step: number;
  /** (B) the new token per row, or null where the row had already finished. */
  tokens: (number | null)[];
  /** (B) the thought tokens (nAhead − 3, markers excluded) behind each new token; [] where finished. */
  thoughts: number[][];
  /** (B) whether each row is finished after this step. */
  finished: boolean[];
}

/** Result of {@link generateWithThoughts}. */
export interface ThinkGenerateResult extends GenerateResult {
  /** Per prompt, per output token: the thought tokens it was predicted with. */
  thoughts: number[][][];
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

/**
 * The longest prompt thinking generation of `maxNewTokens` tokens takes: the last thought's end marker sits
 * at position (prompt + maxNewTokens − 2) + nAhead − 1, which must stay below the model's maxSeqLen.
 */
export function thinkingPromptLimit(qs: QuietStarModel, maxNewTokens: number): number {
  return qs.model.config.maxSeqLen - Math.max(maxNewTokens, 1) + 1 - branchLength(qs);
}

/** Positions a thought branch adds after the fed token: start, nAhead − 3 thought tokens, end. */
function branchLength(qs: QuietStarModel): number {
  return qs.options.nAhead > 1 ? qs.options.nAhead - 1 : 0;
}

/** The Quiet-STaR model's thinking decode as a next-token source whose notes are the thoughts. */
function thinkingSource(qs: QuietStarModel, thoughtSeed: number, rowIds: Int32Array | undefined): NextTokenSource<number[]> {
  const M = thoughtLength(qs.options);
  return {
    engine: qs.engine,
    vocabSize: qs.model.config.vocabSize,
    maxSeqLen: qs.model.config.maxSeqLen,
    extraPositions: branchLength(qs),
    alwaysSuppress: [qs.startId, qs.endId],
    reset: (B, maxLen) => qs.thinkResetCache(B, maxLen),
    decode: async (ids, positions, valid, n) => {
      const B = ids.length / n;
      const out = await qs.thinkDecode(ids, positions, valid, B, n, thoughtSeed, rowIds);
      const notes: number[][] = [];
      for (let b = 0; b < B; b++) notes.push(Array.from(out.thoughts.subarray(b * M, (b + 1) * M)));
      return { logits: qs.engine.tensor(out.logits, [B, out.logits.length / B]), notes };
    },
  };
}

/**
 * Generates up to `maxNewTokens` tokens after each prompt with a thought before every token, yielding each
 * step with its thoughts. The generator's return value is the {@link ThinkGenerateResult}. Resets the
 * thinking KV cache (not the model's plain one).
 * @throws QuietstarError `INVALID_ARGUMENT` for the arguments `generate` rejects, and when the longest prompt
 *   plus maxNewTokens and the thought do not fit the model's maxSeqLen.
 */
export async function* generateWithThoughtsStream(
  qs: QuietStarModel,
  prompts: readonly (readonly number[])[],
  options: ThinkGenerateOptions,
): AsyncGenerator<ThinkGenerateStep, ThinkGenerateResult, undefined> {
  if (typeof options !== 'object' || options === null) bad('options must be an object with maxNewTokens');
  const thoughtSeed = options.thoughtSeed ?? options.seed ?? 0;
  if (!Number.isSafeInteger(thoughtSeed) || thoughtSeed < 0) bad(`options.thoughtSeed must be an integer in [0, 2^53) (got ${String(thoughtSeed)})`);
  const rowIds = Array.isArray(options.rowIds) ? Int32Array.from(options.rowIds) : undefined;
  const it = generateFrom(thinkingSource(qs, thoughtSeed, rowIds), prompts, options);
  for (;;) {
    const r = await it.next();
    if (r.done) return { ids: r.value.ids, finished: r.value.finished, thoughts: r.value.notes };
    const { step, tokens, finished, notes } = r.value;
    yield { step, tokens, finished, thoughts: notes.map((n) => n ?? []) };
  }
}

/**
 * Generates up to `maxNewTokens` tokens after each prompt (batched) with a thought before every token
 * (spec §5) and returns the new ids and the thoughts behind them. See {@link generateWithThoughtsStream}.
 */
export async function generateWithThoughts(
  qs: QuietStarModel,
  prompts: readonly (readonly number[])[],
  options: ThinkGenerateOptions,
): Promise<ThinkGenerateResult> {
  return drain(generateWithThoughtsStream(qs, prompts, options));
}
