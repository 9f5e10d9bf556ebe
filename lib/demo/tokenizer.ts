/**
 * The demo's tokenizer as a file: a `tokenizer.json` (GPT-2 byte-level BPE without merges) whose
 * ids are the raw byte values 0..255, i.e. the same ids as lib/tokenizer/bytes.ts's
 * createByteTokenizer(). The demo trains with the in-memory byte tokenizer and writes this file
 * beside the saved model, so `quietstar eval --model DIR/model` (QuietStarModel.load) finds a
 * tokenizer that encodes exactly as the one it was trained with.
 */
import { gpt2TokenizerJson, type TokenizerJson } from '../tokenizer/index.js';

/**
 * GPT-2's byte → printable character table (`bytes_to_unicode`): printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100 onwards, in byte order.
 */
function byteCharacters(): string[] {
  const out = new Array<string>(256);
  const keep = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let n = 0;
  for (let b = 0; b < 256; b++) out[b] = keep(b) ? String.fromCharCode(b) : String.fromCharCode(256 + n++);
  return out;
}

/** The tokenizer.json of the byte tokenizer: token id = byte value, 256 tokens, no specials. */
export function byteTokenizerJson(): TokenizerJson {
  const vocab: Record<string, number> = {};
  byteCharacters().forEach((c, b) => (vocab[c] = b));
  return gpt2TokenizerJson(vocab, []);
}
