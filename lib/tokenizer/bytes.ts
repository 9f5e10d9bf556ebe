/**
 * A byte-level tokenizer for tiny models trained from scratch: ids 0..255 are the UTF-8 bytes
 * of the text, special tokens follow from 256. Nothing to load, nothing unknown.
 */
import { QuietstarError } from '../errors.js';
import { AddedTokens } from './added-tokens.js';
import { checkIds, checkNewTokens, checkText, type DecodeOptions, type EncodeOptions, type Tokenizer } from './tokenizer.js';

export interface ByteTokenizerOptions {
  /** Special tokens, ids 256, 257, ... in this order. @defaultValue [] */
  specialTokens?: string[];
  /** The BOS token (added after `specialTokens` when not among them); encode adds it with addSpecialTokens. @defaultValue none */
  bosToken?: string;
  /** The EOS token (added after `specialTokens` and BOS when not among them). @defaultValue none */
  eosToken?: string;
}

const utf8 = new TextEncoder();

/** `a`..`~` spelt as themselves, every other byte as `<0xXX>`. */
function byteName(b: number): string {
  return b > 0x20 && b < 0x7f ? String.fromCharCode(b) : `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}

class ByteTokenizer implements Tokenizer {
  readonly bosId?: number;
  readonly eosId?: number;
  private readonly added = new AddedTokens();
  private readonly content: string[] = []; // id - 256 -> special token

  constructor(options: ByteTokenizerOptions) {
    const specials = options.specialTokens ?? [];
    checkNewTokens(specials);
    for (const [key, tok] of [['bosToken', options.bosToken], ['eosToken', options.eosToken]] as const) {
      if (tok !== undefined && (typeof tok !== 'string' || tok.length === 0)) {
        throw new QuietstarError(`createByteTokenizer: ${key} must be a non-empty string`, 'INVALID_ARGUMENT');
      }
    }
    const all = [...specials, options.bosToken, options.eosToken].filter((t): t is string => t !== undefined);
    this.addSpecialTokens(all);
    if (options.bosToken !== undefined) this.bosId = this.tokenToId(options.bosToken)!;
    if (options.eosToken !== undefined) this.eosId = this.tokenToId(options.eosToken)!;
  }

  get vocabSize(): number {
    return 256 + this.content.length;
  }

  get specialTokens(): readonly number[] {
    return this.content.map((_, i) => 256 + i);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    checkText(text);
    return this.added.encode(text, options.addSpecialTokens ? this.bosId : undefined, (plain) => utf8.encode(plain));
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkIds(ids, this.vocabSize, () => true);
    const bytes: number[] = [];
    for (const id of ids) {
      if (id < 256) bytes.push(id);
      else if (!options.skipSpecialTokens) bytes.push(...utf8.encode(this.content[id - 256]!));
    }
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }

  tokenToId(token: string): number | undefined {
    const special = this.added.get(token);
    if (special !== undefined) return special;
    if (token.length === 1 && token.charCodeAt(0) < 0x80) return token.charCodeAt(0);
    const m = /^<0x([0-9A-F]{2})>$/.exec(token);
    return m ? parseInt(m[1]!, 16) : undefined;
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return undefined;
    return id < 256 ? byteName(id) : this.content[id - 256];
  }

  /** Every new token gets a new id (256 + n), even one spelt like a byte: bytes are not matched as text. */
  addSpecialTokens(tokens: string[]): number[] {
    checkNewTokens(tokens);
    return tokens.map((tok) => {
      let id = this.added.get(tok);
      if (id === undefined) {
        id = 256 + this.content.length;
        this.content.push(tok);
        this.added.add(tok, id);
      }
      return id;
    });
  }
}

/** A tokenizer over raw UTF-8 bytes (256 ids) plus optional special tokens. */
export function createByteTokenizer(options: ByteTokenizerOptions = {}): Tokenizer {
  return new ByteTokenizer(options);
}
