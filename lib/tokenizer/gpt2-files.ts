/**
 * GPT-2's original BPE files: `encoder.json` / `vocab.json` (token -> id) and `vocab.bpe` /
 * `merges.txt` (a `#version` line, then one merge per line, highest priority first). They
 * become the tokenizer.json that transformers' GPT2TokenizerFast would write (byte-level
 * pre-tokenizer and decoder, BPE model, `<|endoftext|>` as the one special token), run by
 * the same {@link HfTokenizer}.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { QuietstarError } from '../errors.js';
import { isRecord, readJsonFile, readTokenizerFile } from './files.js';
import { HfTokenizer, type TokenizerJson } from './hf.js';

const ENDOFTEXT = '<|endoftext|>';

/** Parses a merges file: each non-empty line after an optional `#version` header is `left right`. */
export function parseMerges(text: string, file: string): [string, string][] {
  const lines = text.split('\n');
  const merges: [string, string][] = [];
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.length === 0 || (i === 0 && line.startsWith('#version'))) return;
    const parts = line.split(' ');
    if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
      throw new QuietstarError(`${file}: line ${i + 1} is not a merge "left right": ${JSON.stringify(line.slice(0, 80))}`, 'BAD_FILE');
    }
    merges.push([parts[0]!, parts[1]!]);
  });
  return merges;
}

/** Checks a vocabulary object: token -> integer id. */
export function validateVocab(vocab: unknown, file: string): Record<string, number> {
  if (!isRecord(vocab)) throw new QuietstarError(`${file}: a GPT-2 vocabulary must be a JSON object of token -> id`, 'BAD_FILE');
  for (const [tok, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new QuietstarError(`${file}: token ${JSON.stringify(tok)} has id ${JSON.stringify(id)}, not an integer >= 0`, 'BAD_FILE');
    }
  }
  return vocab as Record<string, number>;
}

/** The tokenizer.json of a GPT-2 style byte-level BPE (as GPT2TokenizerFast saves it). */
export function gpt2TokenizerJson(vocab: Record<string, number>, merges: [string, string][]): TokenizerJson {
  const eot = vocab[ENDOFTEXT];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens:
      eot === undefined
        ? []
        : [{ id: eot, content: ENDOFTEXT, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/**
 * Loads GPT-2's vocabulary and merges files. tokenizer_config.json beside the vocabulary is
 * read when present; otherwise `<|endoftext|>` is BOS and EOS, as in GPT-2.
 */
export async function loadGpt2Files(vocabPath: string, mergesPath: string): Promise<HfTokenizer> {
  const vocab = validateVocab(await readJsonFile(vocabPath), vocabPath);
  const merges = parseMerges((await readTokenizerFile(mergesPath)).toString('utf8'), mergesPath);
  for (const [i, [a, b]] of merges.entries()) {
    if (!Object.hasOwn(vocab, a) || !Object.hasOwn(vocab, b) || !Object.hasOwn(vocab, a + b)) {
      throw new QuietstarError(`${mergesPath}: merge ${i + 1} "${a} ${b}" uses a token missing from ${vocabPath}`, 'BAD_FILE');
    }
  }
  const configPath = join(dirname(vocabPath), 'tokenizer_config.json');
  let config: Record<string, unknown> = vocab[ENDOFTEXT] !== undefined ? { bos_token: ENDOFTEXT, eos_token: ENDOFTEXT } : {};
  if (existsSync(configPath)) {
    const cfg = await readJsonFile(configPath);
    if (!isRecord(cfg)) throw new QuietstarError(`${configPath}: must be a JSON object`, 'BAD_FILE');
    config = { ...config, ...cfg };
  }
  return new HfTokenizer(gpt2TokenizerJson(vocab, merges), config, vocabPath);
}
