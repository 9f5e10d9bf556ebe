/**
 * Quiet-STaR training data, as the reference prepares it (spec §2.2):
 *
 *   each document is tokenised with the tokenizer's special tokens (BOS for Llama-style
 *   tokenizers: `encode(text, {addSpecialTokens: true})`, as HF's `tokenizer(text)` does);
 *   a document longer than T is cut to a window of T tokens — at a seeded random start
 *   (`cropMode 'random'`; the BOS can be lost) or its first T tokens (`'start'`); a shorter one
 *   is right-padded with pad = EOS (0 when the tokenizer has none);
 *   valid = ids != pad (so, pad being EOS, real EOS tokens are ignored too, as in the reference);
 *   labels = ids with pad → −100. The Quiet-STaR step shifts internally (position i predicts
 *   x_{i+1}), so labels are NOT shifted here.
 *
 * One document is one row: a micro-batch of B documents is (B, T). The training loader visits
 * documents in a seeded shuffled order per epoch; the order of epoch e is a pure function of
 * (seed, e) and a document's crop window a pure function of (seed, e, document), so the
 * position `{epoch, index}` is the loader's whole state (checkpointed for exact resume).
 */
import { readCorpus, type CorpusFormat, type CorpusTokenizer } from '../data/corpus.js';
import { IGNORE_INDEX } from '../data/dataset.js';
import { EpochLoader, type DataPosition } from '../data/epoch-loader.js';
import { Xoshiro128 } from '../data/prng.js';
import { QuietstarError } from '../errors.js';
import type { CropMode } from './config.js';

/** B documents of T tokens, as QuietStarModel.step takes them. */
export interface QuietStarDataBatch {
  ids: Int32Array; //    (B, T) token ids, pad past each document's end
  valid: Uint8Array; //  (B, T) 1 where ids != pad
  labels: Int32Array; // (B, T) ids, −100 where not valid (unshifted)
  B: number;
  T: number;
  /** Valid tokens (the sum of `valid`). */
  tokens: number;
}

/** What the data needs from a tokenizer (lib/tokenizer's Tokenizer satisfies it). */
export interface QuietStarTokenizer extends CorpusTokenizer {
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
}

function invalid(message: string): QuietstarError {
  return new QuietstarError(message, 'INVALID_ARGUMENT');
}

/** Documents (one row each) and the pad id. Documents with fewer than 2 tokens have no target and are dropped. */
export class QuietStarDataset {
  private constructor(
    /** Token ids of each document (BOS included when the tokenizer adds one). */
    readonly documents: readonly Int32Array[],
    /** Pad id (the EOS): never valid. */
    readonly padId: number,
  ) {}

  static fromDocuments(documents: readonly ArrayLike<number>[], options: { padId?: number } = {}): QuietStarDataset {
    const padId = options.padId ?? 0;
    if (!Number.isInteger(padId) || padId < 0) throw invalid(`data.padId must be an integer >= 0 (got ${String(padId)})`);
    if (!Array.isArray(documents)) throw invalid('data.documents must be an array of token-id arrays');
    const docs = documents.filter((d) => d.length >= 2).map((d) => (d instanceof Int32Array ? d : Int32Array.from(d)));
    return new QuietStarDataset(docs, padId);
  }

  /** Number of documents (= rows per epoch). */
  get rows(): number {
    return this.documents.length;
  }

  /** Total tokens over all documents (before cropping). */
  get tokens(): number {
    let n = 0;
    for (const d of this.documents) n += d.length;
    return n;
  }

  /** Documents [start, end). */
  slice(start: number, end: number): QuietStarDataset {
    if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= this.rows)) {
      throw new RangeError(`slice(${start}, ${end}) out of range [0, ${this.rows}]`);
    }
    return new QuietStarDataset(this.documents.slice(start, end), this.padId);
  }

  /** Holds out the last `fraction` of the documents (at least one) for evaluation. */
  split(fraction: number): { train: QuietStarDataset; eval: QuietStarDataset } {
    if (!(typeof fraction === 'number' && fraction > 0 && fraction < 1)) {
      throw invalid(`data.evalFraction must be a number in (0, 1) (got ${String(fraction)})`);
    }
    const nEval = Math.max(1, Math.round(this.rows * fraction));
    if (nEval >= this.rows) {
      throw invalid(`data.evalFraction ${fraction} leaves no training documents (${this.rows} documents); use more data or a smaller fraction`);
    }
    return { train: this.slice(0, this.rows - nEval), eval: this.slice(this.rows - nEval, this.rows) };
  }
}

// Key separating the crop stream from the shuffling stream of the same seed ('CROP').
const CROP_KEY = 0x43524f50;

/**
 * Where the T-token window of a document of `length` tokens starts: 0 when it fits or with
 * `'start'`; else uniform in [0, length − T], a pure function of (seed, epoch, document).
 */
export function cropStart(length: number, T: number, mode: CropMode, seed: number, epoch: number, document: number): number {
  if (length <= T || mode === 'start') return 0;
  const rng = new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296) >>> 0, CROP_KEY, epoch >>> 0, document >>> 0);
  return rng.below(length - T + 1);
}

/** Settings every batch of a run shares. */
export interface RowOptions {
  /** T. */
  seqLen: number;
  /** @defaultValue 'random' */
  cropMode?: CropMode;
  /** Crop seed. @defaultValue 0 */
  seed?: number;
}

/**
 * One micro-batch: documents `docs[b]` of `dataset`, each cropped with the window of epoch
 * `epochs[b]` (see {@link cropStart}) or padded to T.
 */
export function makeQuietStarBatch(dataset: QuietStarDataset, docs: ArrayLike<number>, epochs: ArrayLike<number>, options: RowOptions): QuietStarDataBatch {
  const T = options.seqLen;
  if (!Number.isInteger(T) || T < 2) throw invalid(`data.seqLen must be an integer >= 2 (got ${String(T)})`);
  const mode = options.cropMode ?? 'random';
  const seed = options.seed ?? 0;
  const B = docs.length;
  const pad = dataset.padId;
  const ids = new Int32Array(B * T).fill(pad);
  const valid = new Uint8Array(B * T);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  let tokens = 0;
  for (let b = 0; b < B; b++) {
    const d = docs[b] as number;
    const doc = dataset.documents[d];
    if (!doc) throw new RangeError(`document ${d} out of range [0, ${dataset.rows})`);
    const start = cropStart(doc.length, T, mode, seed, epochs[b] as number, d);
    const n = Math.min(T, doc.length);
    for (let j = 0; j < n; j++) {
      const x = doc[start + j] as number;
      const k = b * T + j;
      ids[k] = x;
      if (x !== pad) {
        valid[k] = 1;
        labels[k] = x;
        tokens++;
      }
    }
  }
  return { ids, valid, labels, B, T, tokens };
}

/** Options of {@link QuietStarLoader}. */
export interface QuietStarLoaderOptions extends RowOptions {
  /** Documents per batch. */
  batchSize: number;
  /** Shuffle the documents each epoch (seeded by `seed`); false visits them in order. @defaultValue true */
  shuffle?: boolean;
  /** Start here instead of `{epoch: 0, index: 0}`. */
  position?: DataPosition;
}

/** Training batches: every document once per epoch in a seeded order, epochs back to back. */
export class QuietStarLoader extends EpochLoader {
  private readonly rowOptions: Required<RowOptions>;

  constructor(
    readonly dataset: QuietStarDataset,
    options: QuietStarLoaderOptions,
  ) {
    super(dataset.rows, options, 'the training data has no document of 2 tokens or more');
    const { seqLen, cropMode = 'random' } = options;
    this.rowOptions = { seqLen, cropMode, seed: this.seed };
  }

  /** The next `batchSize` documents (crossing into the next epoch when this one runs out). */
  next(): QuietStarDataBatch {
    const { rows, epochs } = this.take();
    return makeQuietStarBatch(this.dataset, rows, epochs, this.rowOptions);
  }
}

/**
 * Evaluation batches: documents 0, 1, 2, ... in order (crop windows of epoch 0), `batchSize`
 * at a time (the last batch may be smaller), at most `maxBatches` batches (0 = all).
 */
export function* quietStarEvalBatches(dataset: QuietStarDataset, options: RowOptions & { batchSize: number; maxBatches?: number }): Generator<QuietStarDataBatch> {
  const { batchSize, maxBatches = 0 } = options;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw invalid(`eval batchSize must be an integer >= 1 (got ${String(batchSize)})`);
  const end = maxBatches > 0 ? Math.min(dataset.rows, maxBatches * batchSize) : dataset.rows;
  for (let r = 0; r < end; r += batchSize) {
    const docs = Uint32Array.from({ length: Math.min(batchSize, end - r) }, (_, b) => r + b);
    yield makeQuietStarBatch(dataset, docs, new Uint32Array(docs.length), options);
  }
}

/** Options of {@link loadQuietStarData}. */
export interface QuietStarDataOptions {
  /** The training corpus: text, JSONL with a text field, or pre-tokenised `{"ids": [...]}` lines (used as they are). */
  file: string;
  /** Tokenises text and JSONL corpora; gives the pad (EOS) id and validates ids. */
  tokenizer?: QuietStarTokenizer;
  /** @defaultValue 'auto' (by extension and first record, as readCorpus) */
  format?: 'auto' | CorpusFormat;
  /** JSONL text field(s). @defaultValue 'text' */
  field?: string | string[];
  /** Joins several fields of a record. @defaultValue '\n\n' */
  fieldSeparator?: string;
  /** Splits a text file into documents. @defaultValue none: the file is one document */
  documentSeparator?: string;
  /** Tokenise with the tokenizer's special tokens (BOS), as HF's `tokenizer(text)`. @defaultValue true */
  addSpecialTokens?: boolean;
  /** Pad id. @defaultValue tokenizer.eosId, else 0 */
  padId?: number;
  /** Vocabulary size for validating ids. @defaultValue tokenizer.vocabSize */
  vocabSize?: number;
  /** Read at most this many documents (0 = all). @defaultValue 0 */
  maxDocuments?: number;
  /** A separate evaluation corpus, read with the same options. @defaultValue none */
  evalFile?: string;
  /** Or hold out the last fraction of `file`'s documents (0 = none; ignored with evalFile). @defaultValue 0 */
  evalFraction?: number;
}

/** Training documents and optional held-out documents, as {@link trainQuietStar} takes them. */
export interface QuietStarData {
  train: QuietStarDataset;
  eval?: QuietStarDataset;
}

/** Reads and tokenises a corpus (and its evaluation file or split) into documents. */
export async function loadQuietStarData(options: QuietStarDataOptions): Promise<QuietStarData> {
  const { file, tokenizer, evalFile, evalFraction = 0, addSpecialTokens = true, padId, ...rest } = options;
  if (typeof file !== 'string' || file === '') throw invalid('data.file must be a path');
  if (!(typeof evalFraction === 'number' && evalFraction >= 0 && evalFraction < 1)) {
    throw invalid(`data.evalFraction must be a number in [0, 1) (got ${String(evalFraction)})`);
  }
  // readCorpus calls encode(text); the reference tokenises with the special tokens.
  const corpusTokenizer: CorpusTokenizer | undefined = tokenizer && {
    vocabSize: tokenizer.vocabSize,
    ...(tokenizer.bosId !== undefined ? { bosId: tokenizer.bosId } : {}),
    ...(tokenizer.eosId !== undefined ? { eosId: tokenizer.eosId } : {}),
    encode: (text: string) => tokenizer.encode(text, { addSpecialTokens }),
  };
  const corpusOptions = { ...rest, ...(corpusTokenizer ? { tokenizer: corpusTokenizer } : {}), addEos: false, addBos: false };
  const pad = padId ?? tokenizer?.eosId ?? 0;
  const read = async (f: string): Promise<QuietStarDataset> =>
    QuietStarDataset.fromDocuments((await readCorpus(f, corpusOptions)).documents, { padId: pad });
  const all = await read(file);
  if (evalFile !== undefined) return { train: all, eval: await read(evalFile) };
  if (evalFraction > 0) return all.split(evalFraction);
  return { train: all };
}
