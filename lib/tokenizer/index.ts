/**
 * Tokenizers: {@link loadTokenizer} opens any supported file or model folder; every format
 * gives the same {@link Tokenizer} interface.
 *
 * ```ts
 * const tok = await loadTokenizer('models/mistral');          // a folder or a file
 * tok.encode('Hello world', { addSpecialTokens: true });     // [1, 22557, 1526]
 * const [startThought, endThought] = tok.addSpecialTokens(['<|startofthought|>', '<|endofthought|>']);
 * ```
 */
import { readdir, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, extname, join } from 'node:path';

import { QuietstarError } from '../errors.js';
import { isRecord, readJsonFile, readTokenizerFile } from './files.js';
import { loadGpt2Files } from './gpt2-files.js';
import { HfTokenizer, loadHfTokenizer } from './hf.js';
import { loadLlama2cTokenizer } from './llama2c.js';
import { loadSentencePieceModel } from './sentencepiece.js';
import type { Tokenizer } from './tokenizer.js';

export type { Tokenizer, EncodeOptions, DecodeOptions } from './tokenizer.js';
export { HfTokenizer, loadHfTokenizer, type TokenizerJson, type AddedTokenJson } from './hf.js';
export { loadGpt2Files, gpt2TokenizerJson } from './gpt2-files.js';
export { loadLlama2cTokenizer, parseLlama2cTokenizer, type Llama2cTokenizerOptions } from './llama2c.js';
export { loadSentencePieceModel, parseSentencePieceModel } from './sentencepiece.js';
export { ScoreBpeTokenizer } from './score-bpe.js';
export { createByteTokenizer, type ByteTokenizerOptions } from './bytes.js';

const VOCAB_NAMES = ['vocab.json', 'encoder.json'];
const MERGES_NAMES = ['merges.txt', 'vocab.bpe'];

/** The first of `names` that exists in `dir`, else undefined. */
function firstExisting(dir: string, names: string[]): string | undefined {
  return names.map((n) => join(dir, n)).find((p) => existsSync(p));
}

function isLlama2cName(name: string): boolean {
  return /^tok.*\.bin$/.test(name);
}

async function loadFromDir(dir: string): Promise<Tokenizer> {
  const tokenizerJson = join(dir, 'tokenizer.json');
  if (existsSync(tokenizerJson)) return loadHfTokenizer(tokenizerJson);
  const vocab = firstExisting(dir, VOCAB_NAMES);
  const merges = firstExisting(dir, MERGES_NAMES);
  if (vocab !== undefined && merges !== undefined) return loadGpt2Files(vocab, merges);
  const bins = (await readdir(dir)).filter(isLlama2cName).sort();
  const bin = bins.includes('tokenizer.bin') ? 'tokenizer.bin' : bins[0];
  if (bin !== undefined) return loadLlama2cTokenizer(join(dir, bin));
  const model = join(dir, 'tokenizer.model');
  if (existsSync(model)) return loadSentencePieceModel(model);
  throw new QuietstarError(
    `no tokenizer in ${dir}: tried ${[
      'tokenizer.json',
      `${VOCAB_NAMES.join(' | ')} with ${MERGES_NAMES.join(' | ')}`,
      'tok*.bin',
      'tokenizer.model',
    ].join(', ')}`,
    'NOT_FOUND',
  );
}

/** GPT-2 files given one of the pair: find the other beside it. */
function loadGpt2Pair(file: string, isVocab: boolean): Promise<HfTokenizer> {
  const dir = dirname(file);
  const names = isVocab ? MERGES_NAMES : VOCAB_NAMES;
  const other = firstExisting(dir, names);
  if (other === undefined) {
    throw new QuietstarError(
      `${file}: a GPT-2 ${isVocab ? 'vocabulary' : 'merges file'} needs its ${isVocab ? 'merges' : 'vocabulary'} beside it: tried ${names.map((n) => join(dir, n)).join(', ')}`,
      'NOT_FOUND',
    );
  }
  return isVocab ? loadGpt2Files(file, other) : loadGpt2Files(other, file);
}

async function loadJsonFile(file: string): Promise<Tokenizer> {
  const name = basename(file);
  if (VOCAB_NAMES.includes(name)) return loadGpt2Pair(file, true);
  const json = await readJsonFile(file);
  if (isRecord(json) && 'model' in json) return loadHfTokenizer(file);
  if (isRecord(json) && Object.values(json).every((v) => Number.isInteger(v))) return loadGpt2Pair(file, true);
  throw new QuietstarError(`${file}: neither a tokenizer.json (no "model") nor a GPT-2 vocabulary (token -> id)`, 'BAD_FILE');
}

/**
 * Loads a tokenizer from a file or a model folder.
 *
 * - A folder: `tokenizer.json` (with tokenizer_config.json beside it), else `vocab.json` /
 *   `encoder.json` with `merges.txt` / `vocab.bpe`, else a llama2.c `tok*.bin`, else a
 *   SentencePiece `tokenizer.model`.
 * - A file, by name: `*.json` (tokenizer.json, or a GPT-2 vocabulary with its merges beside
 *   it), `merges.txt` / `vocab.bpe` / `*.bpe`, `*.bin` (llama2.c), `*.model` (SentencePiece).
 *
 * A missing path is `NOT_FOUND` naming what was tried; a malformed file is `BAD_FILE` naming it.
 */
export async function loadTokenizer(path: string): Promise<Tokenizer> {
  if (typeof path !== 'string' || path.length === 0) {
    throw new QuietstarError('loadTokenizer: path must be a non-empty string', 'INVALID_ARGUMENT');
  }
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch {
    throw new QuietstarError(`tokenizer not found: ${path}`, 'NOT_FOUND');
  }
  if (isDir) return loadFromDir(path);

  const name = basename(path);
  const ext = extname(name).toLowerCase();
  if (ext === '.json') return loadJsonFile(path);
  if (MERGES_NAMES.includes(name) || ext === '.bpe') return loadGpt2Pair(path, false);
  if (ext === '.bin') return loadLlama2cTokenizer(path);
  if (ext === '.model') return loadSentencePieceModel(path);
  // Unknown name: JSON content, else try llama2.c (its parser names the file when it is not one).
  const head = (await readTokenizerFile(path)).subarray(0, 64).toString('utf8').trimStart();
  if (head.startsWith('{')) return loadJsonFile(path);
  try {
    return await loadLlama2cTokenizer(path);
  } catch (err) {
    if (!(err instanceof QuietstarError) || err.code !== 'BAD_FILE') throw err;
    throw new QuietstarError(`${path}: unknown tokenizer format (not JSON; ${err.message})`, 'BAD_FILE');
  }
}
