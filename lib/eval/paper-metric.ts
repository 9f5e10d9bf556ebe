/**
 * The Quiet-STaR paper's zero-shot "direct" score (spec §4.1, oracle §9.14).
 *
 * The reference `compute_metrics` does not report argmax accuracy: for each answer token after the last
 * `"\nA:"` marker it takes the model's next-token distribution at the previous position, restricts the softmax
 * to a whitelist (GSM8K: the digit pieces `0`–`9` plus newline; CSQA: the letters `A`–`E` plus newline),
 * renormalises, and multiplies the probabilities of the gold tokens, skipping gold tokens that are not in the
 * whitelist (e.g. the comma of `1,000`). For numeric answers the first token after the marker (the bare space
 * piece) is skipped. The example's score is that product — the probability of the gold answer under
 * whitelist-renormalised teacher-forced decoding — and the reported "accuracy" is its mean over examples.
 */
import { QuietstarError } from '../errors.js';

/** Inputs of {@link paperMetricScore}. */
export interface PaperMetricInput {
  /**
   * One row per answer token: `rows[i]` is the length-V logits (or log-probabilities — the restricted softmax is
   * shift-invariant, so either gives the same result) at the position *before* `gold[i]`, i.e. the
   * distribution that predicts `gold[i]`. `-Infinity` entries (masked tokens) are allowed; NaN and `+Infinity`
   * are not.
   */
  rows: ReadonlyArray<ArrayLike<number>>;
  /** Gold answer token ids, in order (starting with the first token after the `"\nA:"` marker). */
  gold: ArrayLike<number>;
  /** Token ids the softmax is restricted to (e.g. digit pieces + newline, or letters + newline). Distinct ids. */
  whitelist: ArrayLike<number>;
  /**
   * Skip the first answer token (and its row), as the reference does for numeric answers, whose first token
   * after `"\nA:"` is the bare space piece. Default `false`.
   */
  skipFirst?: boolean;
}

function invalid(message: string): QuietstarError {
  return new QuietstarError(message, 'INVALID_ARGUMENT');
}

function isTokenId(x: unknown, V: number): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x < V;
}

/**
 * Spec §4.1 score of one example: `∏_{i ∈ answer, gold[i] ∈ whitelist} softmax_W(rows[i])[gold[i]]`, where
 * `softmax_W` is the softmax restricted to the whitelist `W` and renormalised over it. Gold tokens outside the
 * whitelist contribute a factor 1 (skipped); with `skipFirst` the first gold token is skipped as well. An answer
 * with no scored token scores 1 (an empty product), as in the reference.
 *
 * @returns the score in [0, 1].
 * @throws QuietstarError `INVALID_ARGUMENT` (naming the argument) when `rows` and `gold` differ in length, rows
 *   differ in width or contain NaN / `+Infinity`, a token id is not an integer in `[0, V)`, the whitelist is
 *   empty or has duplicates, or a scored row has all of its whitelist entries at `-Infinity`.
 */
export function paperMetricScore(input: PaperMetricInput): number {
  if (input === null || typeof input !== 'object') throw invalid('paperMetricScore: input must be an object');
  const { rows, gold, whitelist } = input;
  const skipFirst = input.skipFirst ?? false;
  if (typeof skipFirst !== 'boolean') throw invalid(`skipFirst must be a boolean (got ${String(skipFirst)})`);
  if (!Array.isArray(rows)) throw invalid('rows must be an array of logit rows');
  if (gold === null || typeof gold !== 'object' || typeof gold.length !== 'number') throw invalid('gold must be an array of token ids');
  if (whitelist === null || typeof whitelist !== 'object' || typeof whitelist.length !== 'number') {
    throw invalid('whitelist must be an array of token ids');
  }
  if (rows.length !== gold.length) {
    throw invalid(`rows must have one row per gold token (got ${rows.length} rows for ${gold.length} gold tokens)`);
  }
  if (rows.length === 0) return 1;
  const first = rows[0];
  if (first === null || typeof first !== 'object' || typeof first.length !== 'number' || first.length < 1) {
    throw invalid('rows[0] must be a non-empty array of logits');
  }
  const V = first.length;
  if (whitelist.length === 0) throw invalid('whitelist must not be empty');
  const seen = new Set<number>();
  for (let j = 0; j < whitelist.length; j++) {
    const id = whitelist[j];
    if (!isTokenId(id, V)) throw invalid(`whitelist[${j}] must be an integer token id in [0, ${V}) (got ${String(id)})`);
    if (seen.has(id)) throw invalid(`whitelist has a duplicate id ${id}`);
    seen.add(id);
  }
  for (let i = 0; i < gold.length; i++) {
    const g = gold[i];
    if (!isTokenId(g, V)) throw invalid(`gold[${i}] must be an integer token id in [0, ${V}) (got ${String(g)})`);
    const row = rows[i];
    if (row === null || typeof row !== 'object' || row.length !== V) {
      throw invalid(`rows[${i}] must have length ${V} like rows[0] (got ${row === null || typeof row !== 'object' ? String(row) : row.length})`);
    }
    for (let v = 0; v < V; v++) {
      const x = row[v];
      if (typeof x !== 'number' || Number.isNaN(x) || x === Infinity) {
        throw invalid(`rows[${i}][${v}] must be a finite number or -Infinity (got ${String(x)})`);
      }
    }
  }

  let score = 1;
  for (let i = skipFirst ? 1 : 0; i < gold.length; i++) {
    const g = gold[i]!;
    if (!seen.has(g)) continue; // not in the whitelist (e.g. a comma): skipped, as in the reference
    const row = rows[i]!;
    let m = -Infinity;
    for (let j = 0; j < whitelist.length; j++) m = Math.max(m, row[whitelist[j]!]!);
    if (m === -Infinity) throw invalid(`rows[${i}] has every whitelist entry at -Infinity; the restricted softmax is undefined`);
    let z = 0;
    for (let j = 0; j < whitelist.length; j++) z += Math.exp(row[whitelist[j]!]! - m);
    score *= Math.exp(row[g]! - m) / z;
  }
  return score;
}

/** Mean of {@link paperMetricScore} over examples — the number the paper reports as "accuracy" (spec §4.1). */
export function paperMetricMean(examples: ReadonlyArray<PaperMetricInput>): number {
  if (!Array.isArray(examples) || examples.length === 0) throw invalid('examples must be a non-empty array');
  let s = 0;
  for (const ex of examples) s += paperMetricScore(ex);
  return s / examples.length;
}
