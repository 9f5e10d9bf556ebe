/**
 * Data for language-model training and evaluation: corpora -> token rows -> batches.
 *
 * ```ts
 * const data = await loadLmData({ file: 'input.txt', tokenizer, seqLen: 128, evalFraction: 0.1 });
 * const loader = new BatchLoader(data.train, { batchSize: 8, seed: 1 });
 * const batch = loader.next();          // {ids, targets: Int32Array (B*T), B, T, tokens}
 * ```
 */
import { QuietstarError } from '../errors.js';
import { readCorpus, type CorpusOptions } from './corpus.js';
import { LmDataset, type Layout } from './dataset.js';

export { readCorpus, type CorpusOptions, type CorpusFormat, type CorpusTokenizer, type TokenCorpus } from './corpus.js';
export { LmDataset, IGNORE_INDEX, type DatasetOptions, type Layout } from './dataset.js';
export { BatchLoader, evalBatches, makeBatch, type Batch, type BatchLoaderOptions, type DataPosition } from './loader.js';
export { Xoshiro128, permutation, shuffleInPlace, type PrngState } from './prng.js';

/** Options of {@link loadLmData}: a corpus file, its layout, and an optional held-out split. */
export interface LmDataOptions extends CorpusOptions {
  /** The training corpus (text, JSONL or pre-tokenised JSONL; see {@link CorpusOptions}). */
  file: string;
  /** Sequence length T. */
  seqLen: number;
  /** @defaultValue 'pack' */
  layout?: Layout;
  /** Input id at padded positions. @defaultValue the corpus's EOS id, else 0 */
  padId?: number;
  /** Hold out the last fraction of `file`'s rows for evaluation (0 = none). Ignored with `evalFile`. @defaultValue 0 */
  evalFraction?: number;
  /** A separate evaluation corpus, read with the same options. */
  evalFile?: string;
}

/** Training rows and optional held-out rows, as {@link trainLm} takes them. */
export interface LmData {
  train: LmDataset;
  eval?: LmDataset;
}

/** Reads, tokenises and lays out a corpus (and its evaluation split or file). */
export async function loadLmData(options: LmDataOptions): Promise<LmData> {
  const { file, seqLen, layout, evalFraction = 0, evalFile, padId, ...corpusOptions } = options;
  if (typeof file !== 'string' || file === '') throw new QuietstarError('data.file must be a path', 'INVALID_ARGUMENT');
  if (!(typeof evalFraction === 'number' && evalFraction >= 0 && evalFraction < 1)) {
    throw new QuietstarError(`data.evalFraction must be a number in [0, 1) (got ${String(evalFraction)})`, 'INVALID_ARGUMENT');
  }
  const corpus = await readCorpus(file, corpusOptions);
  const dsOptions = { seqLen, layout: layout ?? 'pack', padId: padId ?? corpus.eosId ?? 0 };
  const all = LmDataset.fromCorpus(corpus, dsOptions);
  if (evalFile !== undefined) {
    const evalCorpus = await readCorpus(evalFile, corpusOptions);
    return { train: all, eval: LmDataset.fromCorpus(evalCorpus, dsOptions) };
  }
  if (evalFraction > 0) return all.split(evalFraction);
  return { train: all };
}
