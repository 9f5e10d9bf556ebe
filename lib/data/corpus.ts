/**
 * Corpora: files of documents, tokenised into one Int32Array per document.
 *
 * Formats:
 * - `text`: a plain text file; one document, or several split on `documentSeparator`
 *   (e.g. `'<|endoftext|>'`). CRLF becomes LF unless `normalizeNewlines` is false.
 * - `jsonl`: one JSON object per line with a string field (`field`, default `'text'`); several
 *   fields (`['Q', 'A']`) are joined with `fieldSeparator`. Blank lines are skipped.
 * - `ids`: pre-tokenised JSONL, one `{"ids": [...]}` per line, as datasets are often shipped;
 *   every id must be an integer in [0, vocabSize).
 *
 * Memory: a corpus is read whole and held as 4-byte token ids (a few MB of text become a few
 * MB of ids, plus the text while it is tokenised). That suits corpora up to some tens of MB;
 * larger ones need pre-sharding into several files, which this module does not do.
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { extname } from 'node:path';
import { createInterface } from 'node:readline';

import { QuietstarError } from '../errors.js';

/** What the data pipeline needs from a tokenizer (lib/tokenizer's Tokenizer satisfies it). */
export interface CorpusTokenizer {
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosId?: number;
  encode(text: string): number[];
}

export type CorpusFormat = 'text' | 'jsonl' | 'ids';

/** Options of {@link readCorpus}. */
export interface CorpusOptions {
  /** Tokenises `text` and `jsonl` corpora; optional for `ids` when `vocabSize` is given. */
  tokenizer?: CorpusTokenizer;
  /**
   * File format. `'auto'`: `.jsonl`/`.ndjson`/`.json` files are `ids` when their first record
   * has an `ids` array and no text field, else `jsonl`; every other file is `text`.
   * @defaultValue 'auto'
   */
  format?: 'auto' | CorpusFormat;
  /** JSONL field(s) holding the text; several are joined with `fieldSeparator`. @defaultValue 'text' */
  field?: string | string[];
  /** Joins several `field`s of one record. @defaultValue '\n\n' */
  fieldSeparator?: string;
  /** Splits a text file into documents (parts that are only whitespace are dropped). @defaultValue none: the file is one document */
  documentSeparator?: string;
  /** Turn CRLF (and lone CR) into LF before tokenising. @defaultValue true */
  normalizeNewlines?: boolean;
  /**
   * Append the end-of-sequence id after every document, so packed documents are separated
   * and a model learns where text ends.
   * @defaultValue true for `text`/`jsonl` when the tokenizer has an EOS; false for `ids` (already tokenised)
   */
  addEos?: boolean;
  /** Prepend the beginning-of-sequence id to every document. @defaultValue false */
  addBos?: boolean;
  /** The EOS id to add. @defaultValue tokenizer.eosId */
  eosId?: number;
  /** Vocabulary size for validating `ids` corpora. @defaultValue tokenizer.vocabSize */
  vocabSize?: number;
  /** Read at most this many documents (0 = all). @defaultValue 0 */
  maxDocuments?: number;
}

/** A tokenised corpus. */
export interface TokenCorpus {
  file: string;
  format: CorpusFormat;
  /** One Int32Array of token ids per document (EOS/BOS included when added). */
  documents: Int32Array[];
  /** Total number of tokens. */
  tokens: number;
  /** Ids are in [0, vocabSize). */
  vocabSize: number;
  /** The EOS id used as separator, when one was added. */
  eosId?: number;
}

const JSONL_EXTENSIONS = new Set(['.jsonl', '.ndjson', '.json']);

function badFile(message: string): QuietstarError {
  return new QuietstarError(message, 'BAD_FILE');
}

function invalid(message: string): QuietstarError {
  return new QuietstarError(message, 'INVALID_ARGUMENT');
}

function checkIdOption(name: string, v: number | undefined, vocabSize: number): void {
  if (v !== undefined && (!Number.isInteger(v) || v < 0 || v >= vocabSize)) {
    throw invalid(`corpus.${name} must be an integer in [0, ${vocabSize}) (got ${String(v)})`);
  }
}

/** Lines of a file with their 1-based numbers, streamed (the file is never one JS string). */
async function* lines(file: string): AsyncGenerator<[string, number]> {
  const rl = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let n = 0;
  for await (const line of rl) yield [line, ++n];
}

async function firstRecord(file: string): Promise<unknown> {
  for await (const [line, n] of lines(file)) {
    if (line.trim() === '') continue;
    try {
      return JSON.parse(line);
    } catch (err) {
      throw badFile(`${file}:${n}: invalid JSON (${(err as Error).message})`);
    }
  }
  return undefined;
}

async function detectFormat(file: string, fields: string[]): Promise<CorpusFormat> {
  if (!JSONL_EXTENSIONS.has(extname(file).toLowerCase())) return 'text';
  const rec = await firstRecord(file);
  if (rec !== null && typeof rec === 'object' && Array.isArray((rec as Record<string, unknown>).ids) && !fields.some((f) => f in rec)) {
    return 'ids';
  }
  return 'jsonl';
}

function fieldsOf(field: string | string[] | undefined): string[] {
  const fields = field === undefined ? ['text'] : Array.isArray(field) ? field : [field];
  if (fields.length === 0 || fields.some((f) => typeof f !== 'string' || f === '')) {
    throw invalid(`corpus.field must be a non-empty string or a non-empty array of them (got ${JSON.stringify(field)})`);
  }
  return fields;
}

/** Reads and tokenises a corpus file. */
export async function readCorpus(file: string, options: CorpusOptions = {}): Promise<TokenCorpus> {
  const { tokenizer } = options;
  const fields = fieldsOf(options.field);
  const fieldSeparator = options.fieldSeparator ?? '\n\n';
  const normalize = options.normalizeNewlines ?? true;
  const maxDocuments = options.maxDocuments ?? 0;
  if (!Number.isInteger(maxDocuments) || maxDocuments < 0) {
    throw invalid(`corpus.maxDocuments must be an integer >= 0 (got ${String(maxDocuments)})`);
  }
  const format = options.format ?? 'auto';
  if (!['auto', 'text', 'jsonl', 'ids'].includes(format)) {
    throw invalid(`corpus.format must be 'auto', 'text', 'jsonl' or 'ids' (got ${JSON.stringify(format)})`);
  }
  if (options.documentSeparator !== undefined && (typeof options.documentSeparator !== 'string' || options.documentSeparator === '')) {
    throw invalid('corpus.documentSeparator must be a non-empty string');
  }
  try {
    const s = await stat(file);
    if (!s.isFile()) throw invalid(`corpus file ${file} is not a file`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new QuietstarError(`corpus file not found: ${file}`, 'NOT_FOUND');
    throw err;
  }
  const resolved: CorpusFormat = format === 'auto' ? await detectFormat(file, fields) : format;

  const vocabSize = options.vocabSize ?? tokenizer?.vocabSize;
  if (vocabSize === undefined || !Number.isInteger(vocabSize) || vocabSize < 1) {
    throw invalid(
      resolved === 'ids'
        ? `corpus.vocabSize (or a tokenizer) is needed to validate the ids of ${file}`
        : `corpus.tokenizer is needed to tokenise ${file} (format '${resolved}')`,
    );
  }
  if (resolved !== 'ids' && !tokenizer) throw invalid(`corpus.tokenizer is needed to tokenise ${file} (format '${resolved}')`);

  const eosId = options.eosId ?? tokenizer?.eosId;
  const addEos = options.addEos ?? (resolved !== 'ids' && eosId !== undefined);
  if (addEos && eosId === undefined) throw invalid('corpus.addEos is true but there is no EOS id (set corpus.eosId)');
  checkIdOption('eosId', eosId, vocabSize);
  const addBos = options.addBos ?? false;
  const bosId = tokenizer?.bosId;
  if (addBos && bosId === undefined) throw invalid('corpus.addBos is true but the tokenizer has no BOS id');

  const documents: Int32Array[] = [];
  let tokens = 0;
  const push = (ids: ArrayLike<number>): boolean => {
    const extra = (addBos ? 1 : 0) + (addEos ? 1 : 0);
    const doc = new Int32Array(ids.length + extra);
    let k = 0;
    if (addBos) doc[k++] = bosId as number;
    for (let i = 0; i < ids.length; i++) doc[k++] = ids[i] as number;
    if (addEos) doc[k++] = eosId as number;
    documents.push(doc);
    tokens += doc.length;
    return maxDocuments > 0 && documents.length >= maxDocuments;
  };
  const encode = (text: string): number[] => (tokenizer as CorpusTokenizer).encode(normalize ? text.replace(/\r\n?/g, '\n') : text);

  if (resolved === 'text') {
    const text = await readFile(file, 'utf8');
    const parts = options.documentSeparator === undefined ? [text] : text.split(options.documentSeparator).filter((p) => p.trim() !== '');
    for (const part of parts) if (push(encode(part))) break;
  } else {
    for await (const [line, n] of lines(file)) {
      if (line.trim() === '') continue;
      let rec: unknown;
      try {
        rec = JSON.parse(line);
      } catch (err) {
        throw badFile(`${file}:${n}: invalid JSON (${(err as Error).message})`);
      }
      if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) throw badFile(`${file}:${n}: expected a JSON object`);
      const obj = rec as Record<string, unknown>;
      let done: boolean;
      if (resolved === 'ids') {
        done = push(validateIds(obj.ids, vocabSize, `${file}:${n}`));
      } else {
        const texts = fields.map((f) => {
          const v = obj[f];
          if (v === undefined) throw badFile(`${file}:${n}: field '${f}' is missing (keys: ${Object.keys(obj).join(', ') || 'none'})`);
          if (typeof v !== 'string') throw badFile(`${file}:${n}: field '${f}' must be a string (got ${v === null ? 'null' : typeof v})`);
          return v;
        });
        done = push(encode(texts.join(fieldSeparator)));
      }
      if (done) break;
    }
  }
  return { file, format: resolved, documents, tokens, vocabSize, ...(addEos ? { eosId } : {}) };
}

function validateIds(ids: unknown, vocabSize: number, where: string): number[] {
  if (!Array.isArray(ids)) throw badFile(`${where}: field 'ids' must be an array of token ids (got ${ids === undefined ? 'nothing' : typeof ids})`);
  for (let i = 0; i < ids.length; i++) {
    const v: unknown = ids[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocabSize) {
      throw badFile(`${where}: ids[${i}] = ${JSON.stringify(v)} is not a token id in [0, ${vocabSize})`);
    }
  }
  return ids as number[];
}
