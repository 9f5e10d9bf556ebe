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
import { EpochLoader, type EpochLoaderOptions } from './epoch-loader.js';

export type { DataPosition } from './epoch-loader.js';

/** A batch for Model.forward: ids and targets are row-major (B, T); target -100 is ignored. */
export interface Batch {
  ids: Int32Array; //     (B, T)
  targets: Int32Array; // (B, T)
  B: number;
  T: number;
  /** Targets that are not -100. */
  tokens: number;
}

/** Options of {@link BatchLoader}. */
export type BatchLoaderOptions = EpochLoaderOptions;

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

export class BatchLoader extends EpochLoader {
  constructor(
    readonly dataset: LmDataset,
    options: BatchLoaderOptions,
  ) {
    super(dataset.rows, options, `the dataset has no rows of T=${dataset.seqLen}+1 tokens (too little data?)`);
  }

  /** The next `batchSize` rows (crossing into the next epoch when this one runs out). */
  next(): Batch {
    return makeBatch(this.dataset, this.take().rows);
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
