/**
 * llama2.c's tokenizer.bin (`tok512.bin`, `tokenizer.bin`): int32 max_token_length, then per
 * token a float32 score, an int32 byte length and the piece's bytes (spaces are real spaces;
 * byte tokens are spelt `<0xXX>`). Ids 0, 1, 2 are <unk>, <s> (BOS), </s> (EOS); byte b is
 * id b + 3. The file does not store the vocabulary size (run.c takes it from the checkpoint),
 * so every record up to the end of the file is read unless `vocabSize` says how many.
 */
import { QuietstarError } from '../errors.js';
import { readTokenizerFile } from './files.js';
import { ScoreBpeTokenizer } from './score-bpe.js';

export interface Llama2cTokenizerOptions {
  /** Read exactly this many tokens (run.c's vocab_size). @defaultValue every record in the file */
  vocabSize?: number;
}

const SPECIAL_NAMES = ['<unk>', '<s>', '</s>'];

/** Parses the bytes of a llama2.c tokenizer file; `file` names it in errors. */
export function parseLlama2cTokenizer(buf: Uint8Array, file: string, options: Llama2cTokenizerOptions = {}): ScoreBpeTokenizer {
  const { vocabSize } = options;
  if (vocabSize !== undefined && (!Number.isInteger(vocabSize) || vocabSize < 3)) {
    throw new QuietstarError(`llama2c tokenizer: vocabSize must be an integer >= 3 (got ${String(vocabSize)})`, 'INVALID_ARGUMENT');
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = (why: string): QuietstarError => new QuietstarError(`${file}: not a llama2.c tokenizer: ${why}`, 'BAD_FILE');
  if (buf.byteLength < 4) throw bad(`file is ${buf.byteLength} bytes, shorter than its 4-byte header`);
  const maxLen = view.getInt32(0, true);
  if (maxLen <= 0 || maxLen > 1 << 16) throw bad(`max_token_length ${maxLen} is out of range`);

  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  let off = 4;
  while (vocabSize === undefined ? off < buf.byteLength : pieces.length < vocabSize) {
    const i = pieces.length;
    if (off + 8 > buf.byteLength) throw bad(`token ${i}: record header past the end of the file (offset ${off})`);
    const score = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    if (len < 0 || off + 8 + len > buf.byteLength) throw bad(`token ${i}: length ${len} at offset ${off + 4} runs past the end of the file`);
    if (Number.isNaN(score)) throw bad(`token ${i}: score is NaN`);
    pieces.push(buf.slice(off + 8, off + 8 + len));
    scores.push(score);
    off += 8 + len;
  }
  if (pieces.length < 259) throw bad(`${pieces.length} tokens; llama2.c needs at least 259 (<unk>, <s>, </s> and 256 byte tokens)`);

  const decoder = new TextDecoder();
  const names = pieces.map((p, id) => SPECIAL_NAMES[id] ?? decoder.decode(p));
  const byteIds = new Int32Array(256);
  for (let b = 0; b < 256; b++) byteIds[b] = b + 3; // run.c: "+3 ... the first 3 vocab elements are <unk>, <s>, </s>"
  return new ScoreBpeTokenizer({
    pieces,
    scores,
    names,
    byteIds,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    specials: [0, 1, 2],
    dummyPrefix: true,
    stripLeadingSpace: true,
  });
}

/** Reads a llama2.c tokenizer file (missing: NOT_FOUND; malformed: BAD_FILE, both naming it). */
export async function loadLlama2cTokenizer(path: string, options: Llama2cTokenizerOptions = {}): Promise<ScoreBpeTokenizer> {
  const buf = await readTokenizerFile(path);
  return parseLlama2cTokenizer(buf, path, options);
}
