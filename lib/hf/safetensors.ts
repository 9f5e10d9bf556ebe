/**
 * safetensors files (Hugging Face's tensor format): reader and atomic writer.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of JSON
 * `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`
 * (padded with spaces), then the raw little-endian tensor bytes; offsets are relative to the
 * end of the header. The reader validates the whole header when a file is opened and then reads
 * one tensor at a time at its offset, so a multi-GB file is never held in JS memory.
 */
import { promises as fsp } from 'node:fs';
import { basename } from 'node:path';

import { QuietstarError } from '../errors.js';
import { atomicTarget } from './atomic.js';

/** Element types of the safetensors format. */
export type SafetensorsDType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL'
  | 'F8_E4M3'
  | 'F8_E5M2';

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export function isSafetensorsDType(s: unknown): s is SafetensorsDType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_BYTES, s);
}

/** One tensor of a file: where its bytes are. `begin`/`end` are absolute file offsets. */
export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
  /** The file holding it. */
  file: string;
}

// HF's own reader refuses headers above 100 MB; so do we, before allocating.
const MAX_HEADER_BYTES = 100_000_000;

function bad(file: string, why: string): QuietstarError {
  return new QuietstarError(`${file}: ${why}`, 'BAD_FILE');
}

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

async function openFile(path: string): Promise<fsp.FileHandle> {
  try {
    return await fsp.open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new QuietstarError(`${path}: no such file`, 'NOT_FOUND');
    }
    throw err;
  }
}

/** Reads exactly `length` bytes at `position` (loops over short reads). */
async function readExact(fh: fsp.FileHandle, into: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Parses and validates a header; `dataStart` = 8 + N, `fileSize` the file's length. */
function parseHeader(
  file: string,
  json: unknown,
  dataStart: number,
  fileSize: number,
): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw bad(file, 'header is not a JSON object');
  }
  const dataBytes = fileSize - dataStart;
  const entries = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(file, '__metadata__ is not an object');
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') throw bad(file, `__metadata__.${k} is not a string`);
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (typeof raw !== 'object' || raw === null) throw bad(file, `${where}: entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (!isSafetensorsDType(dtype)) throw bad(file, `${where}: unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad(file, `${where}: shape ${JSON.stringify(shape)} is not a list of integers >= 0`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      throw bad(file, `${where}: data_offsets ${JSON.stringify(offsets)} is not [begin, end]`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw bad(file, `${where}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataBytes) {
      throw bad(
        file,
        `${where}: data_offsets [${begin}, ${end}] run past the end of the file ` +
          `(data section has ${Math.max(dataBytes, 0)} bytes; truncated file?)`,
      );
    }
    const want = numel(shape as number[]) * DTYPE_BYTES[dtype];
    if (end - begin !== want) {
      throw bad(file, `${where}: ${end - begin} bytes of data but ${dtype}${JSON.stringify(shape)} needs ${want}`);
    }
    entries.set(name, { name, dtype, shape: shape as number[], begin: dataStart + begin, end: dataStart + end, file });
  }
  // No two tensors may share bytes (empty tensors share nothing).
  const sorted = [...entries.values()].filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.begin < prev.end) throw bad(file, `tensor '${cur.name}' overlaps tensor '${prev.name}'`);
  }
  const last = sorted.length ? sorted[sorted.length - 1]!.end : dataStart;
  if (last !== fileSize) {
    throw bad(file, `${fileSize - last} bytes after the last tensor's data (file size ${fileSize}, header ends at ${dataStart})`);
  }
  return { entries, metadata };
}

/** An open safetensors file. Close it with `close()` (or `await using`). */
export class SafetensorsReader {
  private constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
    /** Tensors by name, in header order. */
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
    /** The header's `__metadata__` (e.g. `{format: 'pt'}`). */
    readonly metadata: Readonly<Record<string, string>>,
  ) {}

  /** Opens `path` and validates its header (NOT_FOUND / BAD_FILE naming the file and tensor). */
  static async open(path: string): Promise<SafetensorsReader> {
    const fh = await openFile(path);
    try {
      const size = (await fh.stat()).size;
      if (size < 8) throw bad(path, `truncated file: ${size} bytes, less than the 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      await readExact(fh, lenBytes, 0);
      const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (n > BigInt(size - 8)) {
        throw bad(path, `header length ${n} runs past the end of the file (${size} bytes; truncated file?)`);
      }
      if (n > BigInt(MAX_HEADER_BYTES)) throw bad(path, `header length ${n} exceeds ${MAX_HEADER_BYTES} bytes`);
      const headerBytes = new Uint8Array(Number(n));
      if ((await readExact(fh, headerBytes, 8)) !== headerBytes.length) throw bad(path, 'truncated header');
      let json: unknown;
      try {
        json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
      } catch (err) {
        throw bad(path, `header is not valid JSON (${(err as Error).message})`);
      }
      const { entries, metadata } = parseHeader(path, json, 8 + headerBytes.length, size);
      return new SafetensorsReader(path, fh, entries, metadata);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** One entry by name (INVALID_ARGUMENT naming the file when absent). */
  entry(name: string): SafetensorsEntry {
    const e = this.entries.get(name);
    if (!e) throw new QuietstarError(`${this.path}: no tensor named '${name}'`, 'INVALID_ARGUMENT');
    return e;
  }

  /**
   * The raw little-endian bytes of one tensor, in a fresh ArrayBuffer (offset 0, so typed
   * arrays of any element size can view it).
   */
  async read(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const out = new Uint8Array(new ArrayBuffer(e.end - e.begin));
    const got = await readExact(this.fh, out, e.begin);
    if (got !== out.length) {
      throw bad(this.path, `tensor '${name}': file ended after ${got} of its ${out.length} bytes (truncated while open?)`);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A tensor to write: its bytes, or a function producing them (called once, in file order). */
export interface SafetensorsTensor {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  data: ArrayBufferView | (() => Promise<ArrayBufferView>);
}

/** The order HF's writer lays tensors out: larger elements first (alignment), then by name. */
export function safetensorsOrder<T extends { name: string; dtype: SafetensorsDType }>(tensors: readonly T[]): T[] {
  return [...tensors].sort(
    (a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
}

/** Bytes a tensor takes in a file. */
export function tensorBytes(t: { dtype: SafetensorsDType; shape: readonly number[] }): number {
  return numel(t.shape) * DTYPE_BYTES[t.dtype];
}

function validateTensors(path: string, tensors: readonly SafetensorsTensor[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    const where = `writeSafetensors(${basename(path)}): tensor '${t.name}'`;
    if (typeof t.name !== 'string' || t.name === '' || t.name === '__metadata__') {
      throw new QuietstarError(`writeSafetensors(${basename(path)}): bad tensor name ${JSON.stringify(t.name)}`, 'INVALID_ARGUMENT');
    }
    if (seen.has(t.name)) throw new QuietstarError(`${where}: duplicate name`, 'INVALID_ARGUMENT');
    seen.add(t.name);
    if (!isSafetensorsDType(t.dtype)) throw new QuietstarError(`${where}: unknown dtype ${JSON.stringify(t.dtype)}`, 'INVALID_ARGUMENT');
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new QuietstarError(`${where}: shape ${JSON.stringify(t.shape)} is not a list of integers >= 0`, 'INVALID_ARGUMENT');
    }
  }
}

/**
 * Writes a safetensors file atomically: `<path>.tmp-<pid>-<n>`, fsync, rename. Tensors are
 * streamed one at a time (a `data` function is called just before its bytes are written), the
 * header carries `__metadata__` (`{format: 'pt'}` unless given) and is space-padded to a
 * multiple of 8 bytes like HF's writer. Data must be little-endian (every platform Node runs on).
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly SafetensorsTensor[],
  metadata: Record<string, string> = { format: 'pt' },
): Promise<void> {
  validateTensors(path, tensors);
  const ordered = safetensorsOrder(tensors);
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of ordered) {
    const size = tensorBytes(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  const jsonBytes = new TextEncoder().encode(json).length;
  json += ' '.repeat((8 - (jsonBytes % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const lenBytes = new Uint8Array(8);
  new DataView(lenBytes.buffer).setBigUint64(0, BigInt(headerBytes.length), true);

  await atomicTarget(path, async (tmp) => {
    const fh = await fsp.open(tmp, 'w');
    try {
      let pos = 0;
      const put = async (bytes: Uint8Array): Promise<void> => {
        let done = 0;
        while (done < bytes.length) {
          const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, pos + done);
          done += bytesWritten;
        }
        pos += bytes.length;
      };
      await put(lenBytes);
      await put(headerBytes);
      for (const t of ordered) {
        const view = typeof t.data === 'function' ? await t.data() : t.data;
        const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
        if (bytes.length !== tensorBytes(t)) {
          throw new QuietstarError(
            `writeSafetensors(${basename(path)}): tensor '${t.name}': ${bytes.length} bytes of data ` +
              `but ${t.dtype}${JSON.stringify(t.shape)} needs ${tensorBytes(t)}`,
            'INVALID_ARGUMENT',
          );
        }
        await put(bytes);
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
  });
}
