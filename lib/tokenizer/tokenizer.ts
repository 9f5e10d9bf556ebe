/**
 * The one tokenizer interface every format implements (tokenizer.json, GPT-2 vocab + merges,
 * llama2.c tok*.bin, SentencePiece tokenizer.model, raw bytes), plus the argument checks they
 * share.
 */
import { QuietstarError } from '../errors.js';

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /**
   * Add the special tokens the tokenizer adds around a single sequence: BOS for Llama/Mistral
   * style tokenizers (their post-processor, or `add_bos_token` in tokenizer_config.json), and
   * nothing for GPT-2.
   * @defaultValue false
   */
  addSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.decode}. */
export interface DecodeOptions {
  /**
   * Leave special tokens (BOS, EOS, added special tokens) out of the text.
   * @defaultValue false
   */
  skipSpecialTokens?: boolean;
}

export interface Tokenizer {
  /** Number of ids, including added tokens: every id is in [0, vocabSize). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, when the tokenizer has one. */
  readonly bosId?: number;
  /** End-of-sequence id, when the tokenizer has one. */
  readonly eosId?: number;
  /** Ids of every special token (BOS/EOS/UNK and those added by {@link addSpecialTokens}). */
  readonly specialTokens: readonly number[];
  /** Text to ids. Special tokens written in the text are matched as whole tokens. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Ids to text; an id outside [0, vocabSize) is an `INVALID_ARGUMENT` naming its index. */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /** The id of a vocabulary or added token, written as {@link idToToken} writes it. */
  tokenToId(token: string): number | undefined;
  /** The vocabulary entry of an id (the model's own spelling, e.g. `Ġworld` or `▁world`). */
  idToToken(id: number): string | undefined;
  /**
   * Adds special tokens (e.g. Quiet-STaR's thought delimiters) and returns their ids. A new
   * token gets the next id after the current vocabulary; a token already in the vocabulary
   * keeps its id and becomes special. From then on encode() matches them atomically and
   * decode() writes them back verbatim.
   */
  addSpecialTokens(tokens: string[]): number[];
}

/** Throws unless `text` is a string. */
export function checkText(text: unknown, what = 'text'): asserts text is string {
  if (typeof text !== 'string') {
    throw new QuietstarError(`tokenizer.encode: ${what} must be a string (got ${typeof text})`, 'INVALID_ARGUMENT');
  }
}

/** Throws unless every id is an integer in [0, vocabSize) that has a token. */
export function checkIds(ids: readonly number[], vocabSize: number, has: (id: number) => boolean): void {
  if (!Array.isArray(ids)) {
    throw new QuietstarError(`tokenizer.decode: ids must be an array of integers`, 'INVALID_ARGUMENT');
  }
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize || !has(id)) {
      throw new QuietstarError(
        `tokenizer.decode: ids[${i}] = ${String(id)} is not a token id (vocabSize ${vocabSize})`,
        'INVALID_ARGUMENT',
      );
    }
  }
}

/** Throws unless `tokens` is an array of non-empty strings. */
export function checkNewTokens(tokens: unknown): asserts tokens is string[] {
  if (!Array.isArray(tokens)) {
    throw new QuietstarError('tokenizer.addSpecialTokens: tokens must be an array of strings', 'INVALID_ARGUMENT');
  }
  tokens.forEach((tok, i) => {
    if (typeof tok !== 'string' || tok.length === 0) {
      throw new QuietstarError(`tokenizer.addSpecialTokens: tokens[${i}] must be a non-empty string`, 'INVALID_ARGUMENT');
    }
  });
}
