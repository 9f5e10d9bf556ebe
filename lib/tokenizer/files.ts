/** Reading tokenizer files with errors that name them. */
import { readFile } from 'node:fs/promises';

import { QuietstarError } from '../errors.js';

/** The file's bytes; a missing file is NOT_FOUND, any other read failure BAD_FILE. */
export async function readTokenizerFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new QuietstarError(`tokenizer file not found: ${path}`, 'NOT_FOUND');
    throw new QuietstarError(`cannot read tokenizer file ${path}: ${e.message}`, 'BAD_FILE');
  }
}

/** The file parsed as JSON; invalid JSON is BAD_FILE naming the file. */
export async function readJsonFile(path: string): Promise<unknown> {
  const buf = await readTokenizerFile(path);
  try {
    return JSON.parse(buf.toString('utf8')) as unknown;
  } catch (err) {
    throw new QuietstarError(`${path}: invalid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
}

export function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}
