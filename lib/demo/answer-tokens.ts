/**
 * The NLL of the answer digits alone: in the demo's held-out text (`Q: 37+48-19=?\nA: 66\n`), the
 * tokens where computation is needed are the digits after `A: `. The operands are random by
 * construction (nothing can predict them) and the format characters are free, so the per-token
 * mean over all tokens dilutes what thinking does to the answers; this picks the answers out of
 * the hard-token windows (byte tokenizer: one digit, one token).
 */
import type { HardTokenWindow } from '../eval/hard-tokens.js';

/** Mean NLL of the answer digits without and with thinking. */
export interface AnswerTokenNll {
  /** Answer digits scored. */
  tokens: number;
  meanNllBase: number;
  meanNllThink: number;
}

const A = 0x41;
const COLON = 0x3a;
const SPACE = 0x20;
const isDigit = (id: number): boolean => id >= 0x30 && id <= 0x39;

/**
 * The answer digits of byte-level windows: every run of digits right after `A: `. Entry j of a
 * window's NLLs scores ids[j + 1], so digit k is scored by entry k − 1 (k ≥ 1); digits whose
 * `A: ` lies before the window's start are not recognised.
 */
export function answerTokenNll(windows: readonly HardTokenWindow[]): AnswerTokenNll {
  let base = 0;
  let think = 0;
  let tokens = 0;
  for (const w of windows) {
    const { ids } = w;
    for (let k = 3; k < ids.length; k++) {
      if (!(ids[k - 3] === A && ids[k - 2] === COLON && ids[k - 1] === SPACE)) continue;
      for (let j = k; j < ids.length && isDigit(ids[j]!); j++) {
        base += w.baseNll[j - 1]!;
        think += w.thinkNll[j - 1]!;
        tokens++;
      }
    }
  }
  return { tokens, meanNllBase: tokens > 0 ? base / tokens : NaN, meanNllThink: tokens > 0 ? think / tokens : NaN };
}
