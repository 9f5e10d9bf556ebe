/**
 * The order in which the training loaders (BatchLoader, QuietStarLoader) visit their rows: every
 * row once per epoch, in a seeded shuffled order (or in order), epochs back to back. The
 * position `{epoch, index}` (the next row is the `index`-th of epoch `epoch`'s order) is the
 * whole state, since the order is a pure function of (seed, epoch): checkpointing it and
 * calling `seek` resumes the exact same sequence of batches.
 */
import { QuietstarError } from '../errors.js';
import { permutation } from './prng.js';

/** Where a loader stands: the next row is `order(epoch)[index]`. JSON-serialisable. */
export interface DataPosition {
  epoch: number;
  index: number;
}

/** The options every training loader takes. */
export interface EpochLoaderOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Shuffling seed (an integer in [0, 2^53)). @defaultValue 0 */
  seed?: number;
  /** Shuffle rows each epoch; false visits them in order. @defaultValue true */
  shuffle?: boolean;
  /** Start here instead of `{epoch: 0, index: 0}`. */
  position?: DataPosition;
}

const invalid = (message: string): QuietstarError => new QuietstarError(message, 'INVALID_ARGUMENT');

/** A loader over `rows` rows; subclasses turn {@link take}'s rows into their batches. */
export abstract class EpochLoader {
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  private epoch = 0;
  private index = 0;
  private order: Uint32Array | undefined; // permutation of the current epoch (built lazily)

  /** `empty` is the error message for a dataset without rows. */
  protected constructor(
    private readonly rows: number,
    options: EpochLoaderOptions,
    empty: string,
  ) {
    const { batchSize, seed = 0, shuffle = true } = options;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw invalid(`loader.batchSize must be an integer >= 1 (got ${String(batchSize)})`);
    if (!Number.isSafeInteger(seed) || seed < 0) throw invalid(`loader.seed must be an integer >= 0 (got ${String(seed)})`);
    if (rows === 0) throw invalid(empty);
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
    if (!Number.isInteger(epoch) || epoch < 0 || !Number.isInteger(index) || index < 0 || index >= this.rows) {
      throw invalid(`data position must be {epoch >= 0, index in [0, ${this.rows})} (got ${JSON.stringify(position)}); was it saved for other data?`);
    }
    if (epoch !== this.epoch) this.order = undefined;
    this.epoch = epoch;
    this.index = index;
  }

  /** The next `batchSize` rows and the epoch each belongs to (crossing into the next epoch when this one runs out). */
  protected take(): { rows: Uint32Array; epochs: Uint32Array } {
    const rows = new Uint32Array(this.batchSize);
    const epochs = new Uint32Array(this.batchSize);
    const n = this.rows;
    for (let b = 0; b < this.batchSize; b++) {
      if (this.shuffle && !this.order) this.order = permutation(n, this.seed, this.epoch);
      rows[b] = this.order ? (this.order[this.index] as number) : this.index;
      epochs[b] = this.epoch;
      if (++this.index === n) {
        this.index = 0;
        this.epoch++;
        this.order = undefined;
      }
    }
    return { rows, epochs };
  }
}
