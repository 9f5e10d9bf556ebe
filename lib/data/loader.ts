/**
 * Batches: B rows of a dataset as the flat (B, T) int32 arrays Model.forward takes.
 *
 * Training batches ({@link BatchLoader}) visit every row once per epoch in a seeded shuffled
 * order and continue into the next epoch without a gap; their position `{epoch, index}` (the
 * next row of that epoch's order) is the whole loader state, so checkpointing it and calling
 * {@link BatchLoader.seek} resumes the exact same sequence of batches.
 * Evaluation batches ({@link evalBatches}) are the rows in order, never shuffled.
 */
import { QuietstarError } from '../errors.js';
import type { LmDataset } from './dataset.js';
import { permutation } from './prng.js';

/** A batch for Model.forward: ids and targets are row-major (B, T); target -100 is ignored. */
export interface Batch {
  ids: Int32Array; //     (B, T)
  targets: Int32Array; // (B, T)
  B: number;
  T: number;
  /** Targets that are not -100. */
  tokens: number;
}

/** Where a {@link BatchLoader} stands: the next row is `order(epoch)[index]`. JSON-serialisable. */
export interface DataPosition {
  epoch: number;
  index: number;
}

/** Options of {@link BatchLoader}. */
export interface BatchLoaderOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Shuffling seed (an integer in [0, 2^53)). @defaultValue 0 */
  seed?: number;
  /** Shuffle rows each epoch; false visits them in order. @defaultValue true */
  shuffle?: boolean;
  /** Start here instead of `{epoch: 0, index: 0}`. */
  position?: DataPosition;
}

/** Fills one batch from the given rows. */
export function makeBatch(dataset: LmDataset, rows: ArrayLike<number>): Batch {
  const B = rows.length;
  const T = dataset.seqLen;
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  let tokens = 0;
  for (let b = 0; b < B; b++) tokens += dataset.fillRow(rows[b] as number, ids, targets, b * T);
  return { ids, targets, B, T, tokens };
}

export class BatchLoader {
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  private epoch = 0;
  private index = 0;
  private order: Uint32Array | undefined; // permutation of the current epoch (built lazily)

  constructor(
    readonly dataset: LmDataset,
    options: BatchLoaderOptions,
  ) {
    const { batchSize, seed = 0, shuffle = true } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new QuietstarError(`loader.batchSize must be an integer >= 1 (got ${String(batchSize)})`, 'INVALID_ARGUMENT');
    }
    if (!Number.isSafeInteger(seed) || seed < 0) throw new QuietstarError(`loader.seed must be an integer >= 0 (got ${String(seed)})`, 'INVALID_ARGUMENT');
    if (dataset.rows === 0) throw new QuietstarError(`the dataset has no rows of T=${dataset.seqLen}+1 tokens (too little data?)`, 'INVALID_ARGUMENT');
    this.batchSize = batchSize;
    this.seed = seed;
    this.shuffle = shuffle;
    if (options.position) this.seek(options.position);
  }

  /** The position of the next row (a copy). */
  get position(): DataPosition {
    return { epoch: this.epoch, index: this.index };
  }

  /** Continues from `position` (as returned by {@link position}). */
  seek(position: DataPosition): void {
    const { epoch, index } = position ?? {};
    if (!Number.isInteger(epoch) || epoch < 0 || !Number.isInteger(index) || index < 0 || index >= this.dataset.rows) {
      throw new QuietstarError(
        `data position must be {epoch >= 0, index in [0, ${this.dataset.rows})} (got ${JSON.stringify(position)}); was it saved for another dataset?`,
        'INVALID_ARGUMENT',
      );
    }
    if (epoch !== this.epoch) this.order = undefined;
    this.epoch = epoch;
    this.index = index;
  }

  /** The next `batchSize` rows (crossing into the next epoch when this one runs out). */
  next(): Batch {
    const rows = new Uint32Array(this.batchSize);
    for (let b = 0; b < this.batchSize; b++) rows[b] = this.nextRow();
    return makeBatch(this.dataset, rows);
  }

  private nextRow(): number {
    const n = this.dataset.rows;
    if (this.shuffle && !this.order) this.order = permutation(n, this.seed, this.epoch);
    const row = this.order ? (this.order[this.index] as number) : this.index;
    if (++this.index === n) {
      this.index = 0;
      this.epoch++;
      this.order = undefined;
    }
    return row;
  }
}

/**
 * Evaluation batches: rows 0, 1, 2, ... in order, `batchSize` at a time (the last batch may be
 * smaller), at most `maxBatches` batches (0 = all rows).
 */
export function* evalBatches(dataset: LmDataset, batchSize: number, maxBatches = 0): Generator<Batch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new QuietstarError(`eval batchSize must be an integer >= 1 (got ${String(batchSize)})`, 'INVALID_ARGUMENT');
  const end = maxBatches > 0 ? Math.min(dataset.rows, maxBatches * batchSize) : dataset.rows;
  for (let r = 0; r < end; r += batchSize) {
    const rows = new Uint32Array(Math.min(batchSize, end - r));
    for (let b = 0; b < rows.length; b++) rows[b] = r + b;
    yield makeBatch(dataset, rows);
  }
}
