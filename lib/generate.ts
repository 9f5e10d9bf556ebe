/**
 * Text generation with a KV cache: greedy, temperature, top-k, top-p; seeded; stop tokens;
 * several prompts in one batch.
 *
 * ```ts
 * const { ids } = await generate(model, [[1], [1, 403, 407]], { maxNewTokens: 50, temperature: 0 });
 * for await (const step of generateStream(model, [prompt], { maxNewTokens: 50 })) process.stdout.write(tok.decode([step.tokens[0]!]));
 * ```
 *
 * How a batch runs: prompts of different lengths are left-padded to the longest (L tokens);
 * padding slots are stored in the cache as invalid (never attended) and every row's positions
 * start at 0 on its first real token, so a row generates exactly what it would alone. The
 * whole padded prompt block goes through the model in one `decode` call (prefill), then one
 * token per row per step. Rows that have produced a stop token are finished: they keep
 * riding along as invalid slots and their output ends with the stop token (as in Hugging
 * Face's `generate`).
 *
 * Sampling is the native `sample_tokens` op: noise keyed by (seed, row, step), where row is the
 * prompt's index in `prompts` (or `rowIds[i]`) and step the index of the new token, so a run
 * is reproducible from its seed, independent of thread counts, and a row's tokens do not
 * depend on the other rows of the batch.
 */
import { QuietstarError } from './errors.js';
import type { Engine } from './engine.js';
import type { Model } from './model/model.js';
import type { Tensor } from './tensor.js';

/** Options of {@link generate} and {@link generateStream}. */
export interface GenerateOptions {
  /** New tokens per prompt at most (0 returns empty outputs without running the model). */
  maxNewTokens: number;
  /** Softmax temperature; 0 = greedy (the first argmax). @defaultValue 1 */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 = off. @defaultValue 0 */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose mass reaches p; 1 = off. @defaultValue 1 */
  topP?: number;
  /** Seed of the sampling noise (an integer in [0, 2^53)). @defaultValue 0 */
  seed?: number;
  /** A row finishes when it produces one of these ids (included in its output). @defaultValue [] */
  stopTokens?: readonly number[];
  /**
   * The sampling stream of each prompt (integers in [0, 2^31)): its noise is keyed by
   * (seed, rowIds[i], step). Run a prompt alone with the rowId it had in a batch (and the same
   * seed) to reproduce that row. @defaultValue each prompt's index in `prompts`
   */
  rowIds?: readonly number[];
  /** Ids never generated. @defaultValue [] */
  suppressTokens?: readonly number[];
  /** Stops between steps with an `AbortError` (the signal's reason). */
  signal?: AbortSignal;
}

/** Result of {@link generate}. */
export interface GenerateResult {
  /** Generated ids per prompt (not the prompt), stop token included. */
  ids: number[][];
  /** Whether each row ended on a stop token (false: it reached maxNewTokens). */
  finished: boolean[];
}

/** One step of {@link generateStream}: the token each row produced, null for finished rows. */
export interface GenerateStep {
  /** 0-based index of the new token. */
  step: number;
  /** (B) the new token per row, or null where the row had already finished. */
  tokens: (number | null)[];
  /** (B) whether each row is finished after this step. */
  finished: boolean[];
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

function checkIds(what: string, ids: unknown, vocabSize: number, allowEmpty: boolean): number[] {
  if (!Array.isArray(ids)) bad(`${what} must be an array of token ids`);
  if (!allowEmpty && ids.length === 0) bad(`${what} is empty (a prompt needs at least one token, e.g. BOS)`);
  ids.forEach((id: unknown, j) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      bad(`${what}[${j}] = ${String(id)} is not a token id in [0, ${vocabSize})`);
    }
  });
  return ids as number[];
}

interface Resolved {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  stop: Set<number>;
  suppress: number[];
  rowIds?: number[];
  signal?: AbortSignal;
}

function resolveOptions(options: GenerateOptions, vocabSize: number, B: number): Resolved {
  if (typeof options !== 'object' || options === null) bad('options must be an object with maxNewTokens');
  const { maxNewTokens, temperature = 1, topK = 0, topP = 1, seed = 0 } = options;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) bad(`options.maxNewTokens must be an integer >= 0 (got ${String(maxNewTokens)})`);
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    bad(`options.temperature must be a finite number >= 0 (0 = greedy) (got ${String(temperature)})`);
  }
  if (!Number.isInteger(topK) || topK < 0) bad(`options.topK must be an integer >= 0 (0 = off) (got ${String(topK)})`);
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) bad(`options.topP must be in (0, 1] (1 = off) (got ${String(topP)})`);
  if (!Number.isSafeInteger(seed) || seed < 0) bad(`options.seed must be an integer in [0, 2^53) (got ${String(seed)})`);
  const stop = new Set(checkIds('options.stopTokens', options.stopTokens ?? [], vocabSize, true));
  const suppress = checkIds('options.suppressTokens', options.suppressTokens ?? [], vocabSize, true);
  let rowIds: number[] | undefined;
  if (options.rowIds !== undefined) {
    if (!Array.isArray(options.rowIds) || options.rowIds.length !== B) bad(`options.rowIds must be an array of ${B} integers, one per prompt`);
    rowIds = options.rowIds.map((r: unknown, i) => {
      if (typeof r !== 'number' || !Number.isInteger(r) || r < 0 || r > 0x7fffffff) bad(`options.rowIds[${i}] = ${String(r)} is not an integer in [0, 2^31)`);
      return r;
    });
  }
  return { maxNewTokens, temperature, topK, topP, seed, stop, suppress, rowIds, signal: options.signal };
}

/**
 * Where generation's next-token logits come from: the plain model's KV-cached decoding, or a
 * Quiet-STaR model thinking before each token (lib/think-generate.ts). `N` is what a step
 * reports per row besides its token (nothing, or the thought behind it).
 */
export interface NextTokenSource<N> {
  readonly engine: Engine;
  readonly vocabSize: number;
  /** The largest position a prompt of L tokens and maxNewTokens new ones may reach is checked against this. */
  readonly maxSeqLen: number;
  /** Positions a step uses beyond the fed token (a thought branch's), for the length check. */
  readonly extraPositions: number;
  /** Ids never generated, on top of options.suppressTokens (e.g. the thought markers). */
  readonly alwaysSuppress: readonly number[];
  /** Empties the cache for B rows of maxLen text slots. */
  reset(B: number, maxLen: number): Promise<void>;
  /** Appends (B, n) slots; returns the logits (B, V) after each row's last slot and a note per row. */
  decode(ids: Int32Array, positions: Int32Array, valid: Uint8Array, n: number): Promise<{ logits: Tensor; notes: N[] }>;
}

/** One step of {@link generateFrom}: a {@link GenerateStep} plus each row's note ([] where finished). */
export interface SourceStep<N> extends GenerateStep {
  notes: (N | null)[];
}

/**
 * The generation loop over any {@link NextTokenSource}; the generator's return value is the
 * {@link GenerateResult} plus the notes of every generated token per prompt.
 */
export async function* generateFrom<N>(
  source: NextTokenSource<N>,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): AsyncGenerator<SourceStep<N>, GenerateResult & { notes: N[][] }, undefined> {
  const V = source.vocabSize;
  if (!Array.isArray(prompts) || prompts.length === 0) bad('prompts must be a non-empty array of token id arrays');
  prompts.forEach((p, i) => checkIds(`prompts[${i}]`, p, V, false));
  const B = prompts.length;
  const o = resolveOptions(options, V, B);
  const lens = prompts.map((p) => p.length);
  const L = Math.max(...lens);
  const ids: number[][] = prompts.map(() => []);
  const notes: N[][] = prompts.map(() => []);
  const finished: boolean[] = prompts.map(() => false);
  if (o.maxNewTokens === 0) return { ids, finished, notes };
  // The last token fed is at position len + maxNewTokens - 2 (the final one is never fed); a
  // step's branch (if any) reaches extraPositions beyond it.
  const last = L + o.maxNewTokens - 2 + source.extraPositions;
  if (last + 1 > source.maxSeqLen) {
    const branch = source.extraPositions ? ` + ${source.extraPositions} thought positions` : '';
    bad(
      `options.maxNewTokens: the longest prompt (${L} tokens) + maxNewTokens (${o.maxNewTokens}) - 1${branch} = ` +
        `${last + 1} positions exceeds the model's maxSeqLen ${source.maxSeqLen}`,
    );
  }
  o.signal?.throwIfAborted();

  const engine = source.engine;
  await source.reset(B, L + o.maxNewTokens - 1);

  // Prefill: (B, L) left-padded; padding is invalid, positions count real tokens from 0.
  const pre = new Int32Array(B * L);
  const prePos = new Int32Array(B * L);
  const preValid = new Uint8Array(B * L);
  for (let b = 0; b < B; b++) {
    const pad = L - lens[b]!;
    pre.set(prompts[b]!, b * L + pad);
    for (let j = pad; j < L; j++) prePos[b * L + j] = j - pad;
    preValid.fill(1, b * L + pad, b * L + L);
  }
  const suppressIds = [...new Set([...source.alwaysSuppress, ...o.suppress])];
  const suppress = suppressIds.length ? engine.tensor(Int32Array.from(suppressIds), [suppressIds.length]) : undefined;
  const rows = o.rowIds ? engine.tensor(Int32Array.from(o.rowIds), [B]) : undefined;
  let out: { logits: Tensor | undefined; notes: N[] } = await source.decode(pre, prePos, preValid, L);
  try {
    const next = new Int32Array(B);
    const pos = new Int32Array(B);
    const valid = new Uint8Array(B);
    for (let step = 0; step < o.maxNewTokens; step++) {
      const { ids: sampled } = await engine.ops.sampleTokens({
        logits: out.logits!,
        rows,
        suppress,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed,
        step,
      });
      out.logits!.dispose();
      out.logits = undefined;
      const drawn = (await sampled.data()) as Int32Array;
      sampled.dispose();
      const tokens: (number | null)[] = [];
      const stepNotes: (N | null)[] = [];
      for (let b = 0; b < B; b++) {
        if (finished[b]) {
          tokens.push(null);
          stepNotes.push(null);
          continue;
        }
        const t = drawn[b]!;
        ids[b]!.push(t);
        tokens.push(t);
        notes[b]!.push(out.notes[b]!);
        stepNotes.push(out.notes[b]!);
        if (o.stop.has(t)) finished[b] = true;
      }
      yield { step, tokens, finished: finished.slice(), notes: stepNotes };
      if (finished.every(Boolean) || step === o.maxNewTokens - 1) break;
      o.signal?.throwIfAborted();
      for (let b = 0; b < B; b++) {
        next[b] = finished[b] ? 0 : drawn[b]!;
        pos[b] = lens[b]! + step;
        valid[b] = finished[b] ? 0 : 1;
      }
      out = await source.decode(next, pos, valid, 1);
    }
  } finally {
    out.logits?.dispose();
    suppress?.dispose();
    rows?.dispose();
  }
  return { ids, finished, notes };
}

/** The plain model as a {@link NextTokenSource} (no notes). */
function modelSource(model: Model): NextTokenSource<null> {
  return {
    engine: model.engine,
    vocabSize: model.config.vocabSize,
    maxSeqLen: model.config.maxSeqLen,
    extraPositions: 0,
    alwaysSuppress: [],
    reset: (B, maxLen) => model.resetCache(B, maxLen),
    decode: async (ids, positions, valid, n) => ({
      logits: await model.decode({ ids, positions, valid, n }),
      notes: new Array<null>(ids.length / n).fill(null),
    }),
  };
}

/** Drains a generator and returns its return value. */
export async function drain<Y, R>(it: AsyncGenerator<Y, R, undefined>): Promise<R> {
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}

/**
 * Generates up to `maxNewTokens` tokens after each prompt, yielding every step as it is
 * sampled (for streaming output). The generator's return value is the {@link GenerateResult}.
 * Resets the model's KV cache.
 */
export async function* generateStream(
  model: Model,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): AsyncGenerator<GenerateStep, GenerateResult, undefined> {
  const it = generateFrom(modelSource(model), prompts, options);
  for (;;) {
    const r = await it.next();
    if (r.done) return { ids: r.value.ids, finished: r.value.finished };
    const { step, tokens, finished } = r.value;
    yield { step, tokens, finished };
  }
}

/**
 * Generates up to `maxNewTokens` tokens after each prompt (token id arrays, batched in one
 * run) and returns the new ids per prompt. Resets the model's KV cache.
 */
export async function generate(
  model: Model,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): Promise<GenerateResult> {
  return drain(generateStream(model, prompts, options));
}
