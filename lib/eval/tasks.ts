/**
 * The answer formats of the zero-shot tasks (spec §4.1): how the gold answer follows the prompt, which token
 * ids the paper's metric renormalises over (the whitelist), and how an answer is read back from generated text
 * for exact match.
 *
 * ```ts
 * const task = gsm8kTask(tokenizer);   // Mistral: whitelist [28734, 28740, …, 13] (spec §4.1)
 * task.answerText('18');                // " 18\n"
 * task.extract(' 1,800 eggs\n');         // "1800"
 * ```
 *
 * The whitelists are derived from the tokenizer, so any tokenizer works: GSM8K's holds every vocabulary token
 * spelt only with digits, CommonsenseQA's the tokens of `" A"`..`" E"` as they come out after `"\nA:"`, and both
 * the newline token. For Mistral-7B this gives exactly the reference's hard-coded ids.
 */
import { QuietstarError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/index.js';

/** One zero-shot task's answer format. */
export interface AnswerTask {
  /** Shown in reports (`"gsm8k"`, `"csqa"`). */
  name: string;
  /** Token ids the paper's metric restricts the softmax to (distinct). */
  whitelist: number[];
  /** The text that follows the prompt for a gold answer, e.g. `" 18\n"` (spec §4.1). */
  answerText(gold: string): string;
  /** The answer read from generated text (the first integer / letter), undefined when there is none. */
  extract(generated: string): string | undefined;
  /** New tokens greedy generation may take for exact match. @defaultValue 16 */
  maxNewTokens?: number;
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

/** The id of a lone `"\n"` as it ends a line (`encode("A\n")`'s last token). */
export function newlineId(tokenizer: Tokenizer): number {
  const ids = tokenizer.encode('A\n');
  const id = ids[ids.length - 1];
  if (id === undefined || tokenizer.decode([id]) !== '\n') bad('tokenizer: "\\n" is not a token of its own, so no answer whitelist can end on it');
  return id;
}

/** Ids whose vocabulary spelling and decoded text are both digits only (Mistral: 0–9; byte fallbacks excluded). */
export function digitTokenIds(tokenizer: Tokenizer): number[] {
  const out: number[] = [];
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const piece = tokenizer.idToToken(id);
    if (piece === undefined || !/^[0-9]+$/.test(piece)) continue;
    if (/^[0-9]+$/.test(tokenizer.decode([id]))) out.push(id);
  }
  return out;
}

/** The token a text ends with when it follows `prefix` (the last id of encode(prefix + text) beyond encode(prefix)). */
function tokenAfter(tokenizer: Tokenizer, prefix: string, text: string): number {
  const head = tokenizer.encode(prefix);
  const full = tokenizer.encode(prefix + text);
  const id = full[full.length - 1];
  if (full.length <= head.length || id === undefined) bad(`tokenizer: ${JSON.stringify(text)} after ${JSON.stringify(prefix)} gives no token`);
  return id;
}

/** The first number in `text` (commas dropped, e.g. `"1,800"` → `"1800"`), else undefined. */
export function firstNumber(text: string): string | undefined {
  const m = /-?\d[\d,]*(\.\d+)?/.exec(text);
  if (!m) return undefined;
  return m[0].replace(/,/g, '');
}

/** The first standalone choice letter A–E in `text` (`" B\n"`, `"(C)"`), else undefined. */
export function firstChoice(text: string, letters = 'ABCDE'): string | undefined {
  const m = new RegExp(`(?:^|[^A-Za-z])([${letters}])(?![A-Za-z])`).exec(text);
  return m?.[1];
}

/**
 * GSM8K (spec §4.1): answer `" " + gold + "\n"`; whitelist = every digit-only token plus newline (Mistral:
 * {28734, 28740, 28750, 28770, 28781, 28782, 28784, 28787, 28783, 28774} + 13); 16 new tokens for exact match.
 * Also fits any "number then newline" task (the demo's arithmetic with a byte tokenizer: bytes 0–9 + 10).
 * @throws QuietstarError `INVALID_ARGUMENT` when the tokenizer has no digit tokens or no newline token.
 */
export function gsm8kTask(tokenizer: Tokenizer, name = 'gsm8k'): AnswerTask {
  const digits = digitTokenIds(tokenizer);
  if (digits.length === 0) bad('gsm8kTask: the tokenizer has no token spelt only with digits');
  const nl = newlineId(tokenizer);
  return {
    name,
    whitelist: [...digits.filter((id) => id !== nl), nl],
    answerText: (gold) => ` ${gold}\n`,
    extract: firstNumber,
    maxNewTokens: 16,
  };
}

/**
 * CommonsenseQA (spec §4.1): answer `" " + letter + "\n"`; whitelist = the tokens of `" A"`..`" E"` after
 * `"\nA:"` plus newline (Mistral: {330, 365, 334, 384, 413} + 13); 4 new tokens for exact match.
 * @throws QuietstarError `INVALID_ARGUMENT` when the letters do not get distinct tokens or there is no newline token.
 */
export function csqaTask(tokenizer: Tokenizer): AnswerTask {
  const letters = [...'ABCDE'].map((l) => tokenAfter(tokenizer, '\nA:', ` ${l}`));
  if (new Set(letters).size !== letters.length) bad('csqaTask: the tokenizer does not give " A".." E" distinct last tokens');
  const nl = newlineId(tokenizer);
  return {
    name: 'csqa',
    whitelist: [...letters, nl],
    answerText: (gold) => ` ${gold}\n`,
    extract: (text) => firstChoice(text),
    maxNewTokens: 4,
  };
}
