/**
 * What the evaluations share: token sequences as one right-padded eval batch, and the longest sequence the
 * eval-mode forward (one thought per position, nPasses 1, nAheadTalk 1) takes.
 */
import { QuietstarError } from '../errors.js';
import type { EvalBatch, QuietStarModel } from '../quietstar/model.js';
import { maxSeqLenFor } from '../quietstar/train.js';

/** `seqs` (non-empty, each with at least one token) right-padded with `pad` to the longest (valid marks the tokens). */
export function padBatch(seqs: ReadonlyArray<ArrayLike<number>>, pad: number): EvalBatch & { valid: Uint8Array } {
  if (seqs.length === 0) throw new QuietstarError('padBatch: no sequences', 'INVALID_ARGUMENT');
  const B = seqs.length;
  const T = Math.max(...seqs.map((s) => s.length));
  const ids = new Int32Array(B * T).fill(pad);
  const valid = new Uint8Array(B * T);
  seqs.forEach((s, b) => {
    ids.set(s, b * T);
    valid.fill(1, b * T, b * T + s.length);
  });
  return { ids, valid, B, T };
}

/** The padding id of a Quiet-STaR batch: the model's EOS (spec §2.2), else 0 (never attended). */
export function padId(qs: QuietStarModel): number {
  const eos = qs.model.config.eosTokenId;
  const id = Array.isArray(eos) ? eos[0] : eos;
  return typeof id === 'number' ? id : 0;
}

/** The longest T the eval forward takes (GPT-2's learned positions must also hold each thought's chain). */
export function evalSeqLimit(qs: QuietStarModel): number {
  return maxSeqLenFor({ model: qs.model, options: { ...qs.options, nAheadTalk: 1, nPasses: 1 } });
}

/** Throws INVALID_ARGUMENT naming `what` unless `v` is undefined or an integer >= `min`. */
export function optInt(v: unknown, what: string, fallback: number, min: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new QuietstarError(`${what} must be an integer >= ${min} (got ${String(v)})`, 'INVALID_ARGUMENT');
  }
  return v;
}
