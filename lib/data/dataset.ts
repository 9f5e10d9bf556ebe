/**
 * LmDataset: a tokenised corpus cut into training rows of T inputs and T targets.
 *
 * All documents are concatenated into one token stream; a row is a slice `[start, start+len)`
 * of it with len ≤ T+1: inputs are its first len−1 tokens, targets the same shifted by one
 * (next-token prediction). Rows shorter than T+1 are padded: inputs with `padId`, targets with
 * -100 (ignored by the loss; causal attention means pads after the text change nothing before).
 *
 * Layouts:
 * - `pack`: documents back to back (separated by EOS when the corpus added one), cut into
 *   windows of T+1 tokens overlapping by one, so every token but the first is a target exactly
 *   once; the tail shorter than T+1 is dropped. The usual layout for pretraining.
 * - `crop`: each document is one row, cropped to T+1 tokens (the rest is dropped) or padded.
 * - `chunk`: each document is cut into windows of T+1 overlapping by one, never crossing a
 *   document; the last window is padded. Every target of every document is scored exactly once
 *   (perplexity over documents treated as independent sequences).
 * Documents with fewer than 2 tokens have no target and give no row.
 */
import { QuietstarError } from '../errors.js';
import type { TokenCorpus } from './corpus.js';

export type Layout = 'pack' | 'crop' | 'chunk';

/** Options of {@link LmDataset.fromDocuments}. */
export interface DatasetOptions {
  /** Sequence length T (inputs per row). */
  seqLen: number;
  /** @defaultValue 'pack' */
  layout?: Layout;
  /** Input id written at padded positions (its target is -100). @defaultValue 0 */
  padId?: number;
}

export const IGNORE_INDEX = -100;

export class LmDataset {
  /** Number of rows. */
  readonly rows: number;

  private constructor(
    /** Sequence length T. */
    readonly seqLen: number,
    readonly layout: Layout,
    readonly padId: number,
    private readonly stream: Int32Array,
    private readonly rowStart: Float64Array, // (rows) offsets into stream
    private readonly rowLen: Int32Array, //     (rows) tokens in the row, 2..T+1
  ) {
    this.rows = rowLen.length;
  }

  static fromCorpus(corpus: TokenCorpus, options: DatasetOptions): LmDataset {
    return LmDataset.fromDocuments(corpus.documents, options);
  }

  static fromDocuments(documents: readonly ArrayLike<number>[], options: DatasetOptions): LmDataset {
    const T = options.seqLen;
    if (!Number.isInteger(T) || T < 1) throw new QuietstarError(`data.seqLen must be an integer >= 1 (got ${String(T)})`, 'INVALID_ARGUMENT');
    const layout = options.layout ?? 'pack';
    if (!['pack', 'crop', 'chunk'].includes(layout)) {
      throw new QuietstarError(`data.layout must be 'pack', 'crop' or 'chunk' (got ${JSON.stringify(layout)})`, 'INVALID_ARGUMENT');
    }
    const padId = options.padId ?? 0;
    if (!Number.isInteger(padId) || padId < 0) throw new QuietstarError(`data.padId must be an integer >= 0 (got ${String(padId)})`, 'INVALID_ARGUMENT');

    let total = 0;
    for (const d of documents) total += d.length;
    const stream = new Int32Array(total);
    const docStart: number[] = [];
    let off = 0;
    for (const d of documents) {
      docStart.push(off);
      stream.set(d, off);
      off += d.length;
    }

    const starts: number[] = [];
    const lens: number[] = [];
    if (layout === 'pack') {
      // Windows [r·T, r·T + T + 1): consecutive windows share one token (last target = next first input).
      const rows = total > 1 ? Math.floor((total - 1) / T) : 0;
      for (let r = 0; r < rows; r++) {
        starts.push(r * T);
        lens.push(T + 1);
      }
    } else {
      documents.forEach((d, i) => {
        const s0 = docStart[i] as number;
        if (d.length < 2) return;
        if (layout === 'crop') {
          starts.push(s0);
          lens.push(Math.min(T + 1, d.length));
        } else {
          for (let s = 0; s < d.length - 1; s += T) {
            starts.push(s0 + s);
            lens.push(Math.min(T + 1, d.length - s));
          }
        }
      });
    }
    return new LmDataset(T, layout, padId, stream, Float64Array.from(starts), Int32Array.from(lens));
  }

  /** Number of target tokens (not ignored) over all rows. */
  get targetTokens(): number {
    let n = 0;
    for (let r = 0; r < this.rows; r++) n += (this.rowLen[r] as number) - 1;
    return n;
  }

  /** The token stream behind the rows (read-only by convention). */
  get tokenStream(): Int32Array {
    return this.stream;
  }

  /**
   * Writes row `row` into `ids` and `targets` at element `offset` (T elements each).
   * Returns the number of targets that are not ignored.
   */
  fillRow(row: number, ids: Int32Array, targets: Int32Array, offset = 0): number {
    if (!Number.isInteger(row) || row < 0 || row >= this.rows) throw new RangeError(`row ${row} out of range [0, ${this.rows})`);
    const T = this.seqLen;
    const start = this.rowStart[row] as number;
    const n = (this.rowLen[row] as number) - 1; // targets in this row
    const s = this.stream;
    for (let j = 0; j < n; j++) {
      ids[offset + j] = s[start + j] as number;
      targets[offset + j] = s[start + j + 1] as number;
    }
    for (let j = n; j < T; j++) {
      ids[offset + j] = this.padId;
      targets[offset + j] = IGNORE_INDEX;
    }
    return n;
  }

  /** Rows [start, end) as a dataset sharing this one's tokens. */
  slice(start: number, end: number): LmDataset {
    if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= this.rows)) {
      throw new RangeError(`slice(${start}, ${end}) out of range [0, ${this.rows}]`);
    }
    return new LmDataset(this.seqLen, this.layout, this.padId, this.stream, this.rowStart.subarray(start, end), this.rowLen.subarray(start, end));
  }

  /**
   * Holds out the last `fraction` of the rows (at least one) for evaluation: contiguous text at
   * the end of the corpus, as nanoGPT does, rather than rows scattered through the training text.
   */
  split(fraction: number): { train: LmDataset; eval: LmDataset } {
    if (!(typeof fraction === 'number' && fraction > 0 && fraction < 1)) {
      throw new QuietstarError(`data.evalFraction must be a number in (0, 1) (got ${String(fraction)})`, 'INVALID_ARGUMENT');
    }
    const nEval = Math.max(1, Math.round(this.rows * fraction));
    if (nEval >= this.rows) {
      throw new QuietstarError(
        `data.evalFraction ${fraction} leaves no training rows (${this.rows} rows of T=${this.seqLen}); use more data or a smaller fraction`,
        'INVALID_ARGUMENT',
      );
    }
    return { train: this.slice(0, this.rows - nEval), eval: this.slice(this.rows - nEval, this.rows) };
  }
}
