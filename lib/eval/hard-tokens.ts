/**
 * Hard-token analysis (spec §4.3): which tokens thinking helps. Held-out documents are cut into windows, each
 * window goes through the eval forward (one thought per position), and every predicted token gets its NLL
 * without thinking (the base prediction) and with it (the mixed one). Tokens are bucketed into deciles of base
 * NLL ("difficulty"; the reference has no threshold), with ΔNLL per decile and the hardest decile's perplexity
 * with and without thinking; {@link hardTokenHeatmapHtml} draws the tokens.
 *
 * ```ts
 * const docs = texts.map((t) => qs.tokenizer.encode(t, { addSpecialTokens: true }));
 * const r = await hardTokenAnalysis(qs, docs, { seqLen: 256, limit: 64 });
 * r.deciles[9].deltaNll;            // < 0: thinking helped the hardest tenth of the tokens
 * await writeFile('heat.html', hardTokenHeatmapHtml(r, qs.tokenizer));
 * ```
 */
import { QuietstarError } from '../errors.js';
import type { QuietStarModel } from '../quietstar/model.js';
import { evalSeqLimit, optInt, padBatch, padId } from './batch.js';
import { nllDeciles, type NllDecile } from './deciles.js';

export { hardTokenHeatmapHtml, type HeatmapOptions } from './heatmap.js';
export { nllDeciles, type NllDecile } from './deciles.js';

/** Options of {@link hardTokenAnalysis}. */
export interface HardTokenOptions {
  /** Window length in tokens (consecutive windows of a document share one token). @defaultValue min(256, the eval limit) */
  seqLen?: number;
  /** Windows per forward pass. @defaultValue 8 */
  batchSize?: number;
  /** Seed of the thoughts, keyed by (seed, window index, position): results do not depend on batchSize. @defaultValue 0 */
  seed?: number;
  /** Evaluate the first `limit` windows only. @defaultValue all */
  limit?: number;
  /** Called after every batch with windows done and windows in all. */
  onProgress?: (done: number, total: number) => void;
}

/** One evaluated window: baseNll[j] / thinkNll[j] are the NLLs (nats) of ids[j + 1]. */
export interface HardTokenWindow {
  ids: number[];
  baseNll: number[];
  thinkNll: number[];
}

/** Result of {@link hardTokenAnalysis}. */
export interface HardTokenResult {
  /** Predicted tokens scored. */
  tokens: number;
  meanNllBase: number;
  meanNllThink: number;
  /** Ten deciles of base NLL, 1 = easiest. */
  deciles: NllDecile[];
  /** Perplexity exp(mean NLL) of the hardest decile without and with thinking. */
  hardest: { perplexityBase: number; perplexityThink: number };
  /** The windows in order, for the heat map. */
  windows: HardTokenWindow[];
}

/**
 * Each document cut into windows of `seqLen` tokens overlapping by one, so every token after a document's
 * first is predicted exactly once; a last piece of a single token is dropped (nothing to predict).
 */
export function documentWindows(documents: ReadonlyArray<ArrayLike<number>>, seqLen: number): number[][] {
  const out: number[][] = [];
  for (const doc of documents) {
    const ids = Array.from(doc);
    for (let s = 0; s + 1 < ids.length; s += seqLen - 1) out.push(ids.slice(s, s + seqLen));
  }
  return out;
}

/**
 * Per-token NLL without and with thinking on held-out documents (arrays of token ids in the base vocabulary, BOS
 * included where wanted; `number[]` or `Int32Array` as readCorpus gives them), and
 * their deciles (spec §4.3).
 * @throws QuietstarError `INVALID_ARGUMENT` naming the option, a document id outside the vocabulary, or when
 *   the documents give fewer than 10 predicted tokens.
 */
export async function hardTokenAnalysis(qs: QuietStarModel, documents: ReadonlyArray<ArrayLike<number>>, opts: HardTokenOptions = {}): Promise<HardTokenResult> {
  if (typeof opts !== 'object' || opts === null) throw new QuietstarError('hardTokenAnalysis: opts must be an object', 'INVALID_ARGUMENT');
  if (!Array.isArray(documents)) throw new QuietstarError('hardTokenAnalysis: documents must be an array of token id arrays', 'INVALID_ARGUMENT');
  const limitT = evalSeqLimit(qs);
  const seqLen = optInt(opts.seqLen, 'opts.seqLen', Math.min(256, limitT), 2);
  if (seqLen > limitT) throw new QuietstarError(`opts.seqLen ${seqLen} exceeds what the model's eval forward takes (${limitT})`, 'INVALID_ARGUMENT');
  const batchSize = optInt(opts.batchSize, 'opts.batchSize', 8, 1);
  const seed = optInt(opts.seed, 'opts.seed', 0, 0);
  const V = qs.startId; // text ids are base-vocabulary ids
  documents.forEach((doc, d) => {
    if (typeof doc !== 'object' || doc === null || typeof doc.length !== 'number') {
      throw new QuietstarError(`documents[${d}] must be an array of token ids`, 'INVALID_ARGUMENT');
    }
    for (let j = 0; j < doc.length; j++) {
      const id: unknown = doc[j];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= V) {
        throw new QuietstarError(`documents[${d}][${j}] = ${String(id)} is not a token id in [0, ${V})`, 'INVALID_ARGUMENT');
      }
    }
  });
  let all = documentWindows(documents, seqLen);
  all = all.slice(0, optInt(opts.limit, 'opts.limit', all.length, 1));
  const predicted = all.reduce((n, w) => n + w.length - 1, 0);
  if (predicted < 10) {
    throw new QuietstarError(`hardTokenAnalysis: the documents give ${predicted} predicted tokens; ten deciles need at least 10`, 'INVALID_ARGUMENT');
  }

  const windows: HardTokenWindow[] = [];
  const base: number[] = [];
  const think: number[] = [];
  for (let from = 0; from < all.length; from += batchSize) {
    const chunk = all.slice(from, from + batchSize);
    // Window k draws its thoughts as noise row k, whatever the batch size.
    const rowIds = Int32Array.from(chunk, (_, j) => from + j);
    const ev = await qs.evalForward(padBatch(chunk, padId(qs)), seed, rowIds);
    chunk.forEach((ids, b) => {
      const w: HardTokenWindow = { ids, baseNll: [], thinkNll: [] };
      for (let i = 0; i + 1 < ids.length; i++) {
        w.baseNll.push(ev.baseNll[b * ev.T + i]!);
        w.thinkNll.push(ev.thinkNll[b * ev.T + i]!);
      }
      base.push(...w.baseNll);
      think.push(...w.thinkNll);
      windows.push(w);
    });
    opts.onProgress?.(windows.length, all.length);
  }
  const deciles = nllDeciles(base, think);
  const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length;
  const hard = deciles[deciles.length - 1]!;
  return {
    tokens: base.length,
    meanNllBase: mean(base),
    meanNllThink: mean(think),
    deciles,
    hardest: { perplexityBase: Math.exp(hard.meanNllBase), perplexityThink: Math.exp(hard.meanNllThink) },
    windows,
  };
}
