/**
 * Difficulty buckets of the hard-token analysis (spec §4.3): tokens sorted by their base-model NLL and cut into
 * ten equal-count deciles (1 = easiest), with the mean NLL without and with thinking in each.
 */
import { QuietstarError } from '../errors.js';

/** One difficulty decile. */
export interface NllDecile {
  /** 1 = the easiest tenth of the tokens (lowest base NLL), 10 = the hardest. */
  decile: number;
  /** The lowest and highest base NLL in the decile (nats). */
  lo: number;
  hi: number;
  /** Tokens in the decile. */
  count: number;
  /** Mean NLL without thinking (the base prediction). */
  meanNllBase: number;
  /** Mean NLL with thinking (the mixed prediction). */
  meanNllThink: number;
  /** meanNllThink − meanNllBase: < 0 where thinking helped. */
  deltaNll: number;
}

/**
 * Ten deciles of the tokens by base NLL: decile d holds the tokens of sorted rank in
 * [⌊(d−1)·n/10⌋, ⌊d·n/10⌋) (ties broken by index, so the split is deterministic).
 * @throws QuietstarError `INVALID_ARGUMENT` when the arrays differ in length, hold fewer than 10 tokens, or hold
 *   a value that is not finite.
 */
export function nllDeciles(base: ArrayLike<number>, think: ArrayLike<number>): NllDecile[] {
  const n = base.length;
  if (think.length !== n) throw new QuietstarError(`nllDeciles: ${n} base NLLs but ${think.length} thinking NLLs`, 'INVALID_ARGUMENT');
  if (n < 10) throw new QuietstarError(`nllDeciles: ${n} tokens; ten deciles need at least 10`, 'INVALID_ARGUMENT');
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(base[i]) || !Number.isFinite(think[i])) {
      throw new QuietstarError(`nllDeciles: token ${i} has NLL base ${base[i]} / think ${think[i]}; both must be finite`, 'INVALID_ARGUMENT');
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => base[a]! - base[b]! || a - b);
  const out: NllDecile[] = [];
  for (let d = 1; d <= 10; d++) {
    const from = Math.floor(((d - 1) * n) / 10);
    const to = Math.floor((d * n) / 10);
    let sb = 0;
    let st = 0;
    for (let k = from; k < to; k++) {
      sb += base[order[k]!]!;
      st += think[order[k]!]!;
    }
    const count = to - from;
    const meanNllBase = sb / count;
    const meanNllThink = st / count;
    out.push({ decile: d, lo: base[order[from]!]!, hi: base[order[to - 1]!]!, count, meanNllBase, meanNllThink, deltaNll: meanNllThink - meanNllBase });
  }
  return out;
}

/** The q-quantile (q in [0, 1]) of `xs` by linear interpolation between sorted values; NaN for none. */
export function quantile(xs: ArrayLike<number>, q: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const at = q * (s.length - 1);
  const lo = Math.floor(at);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo]! + (s[hi]! - s[lo]!) * (at - lo);
}
