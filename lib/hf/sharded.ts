/**
 * A model folder's weights: `model.safetensors`, or shards listed by
 * `model.safetensors.index.json` (`{"metadata": {"total_size": N}, "weight_map": {name: file}}`),
 * read as one set of tensors; and the writer that shards above a size, named like HF's
 * `save_pretrained` (`model-00001-of-00003.safetensors`).
 */
import { promises as fsp } from 'node:fs';
import { isAbsolute, join, normalize, sep } from 'node:path';

import { QuietstarError } from '../errors.js';
import { atomicTarget } from './atomic.js';
import {
  SafetensorsReader,
  safetensorsOrder,
  tensorBytes,
  writeSafetensors,
  type SafetensorsEntry,
  type SafetensorsTensor,
} from './safetensors.js';

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';

/** HF's default `max_shard_size` ("5GB" = 5·10⁹ bytes). */
export const DEFAULT_MAX_SHARD_BYTES = 5_000_000_000;

const exists = (p: string): Promise<boolean> => fsp.stat(p).then(() => true, () => false);

/** Every tensor of a folder's safetensors file(s); `read` finds the right shard. */
export class CheckpointWeights {
  private constructor(
    /** The file that describes the set: the index, or the single file. */
    readonly source: string,
    private readonly readers: SafetensorsReader[],
    /** All tensors by name; `entry.file` says which shard holds each. */
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
    private readonly byFile: ReadonlyMap<string, SafetensorsReader>,
  ) {}

  /**
   * Opens `dir`'s weights: the index when present, else `model.safetensors`. NOT_FOUND when
   * neither exists (or a shard the index names is missing); BAD_FILE for a malformed file.
   */
  static async open(dir: string): Promise<CheckpointWeights> {
    const indexPath = join(dir, INDEX_FILE);
    if (await exists(indexPath)) return CheckpointWeights.openIndex(dir, indexPath);
    const single = join(dir, SINGLE_FILE);
    if (!(await exists(single))) {
      throw new QuietstarError(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE} (only safetensors checkpoints are read)`, 'NOT_FOUND');
    }
    const reader = await SafetensorsReader.open(single);
    return new CheckpointWeights(single, [reader], reader.entries, new Map([[single, reader]]));
  }

  private static async openIndex(dir: string, indexPath: string): Promise<CheckpointWeights> {
    const bad = (why: string): QuietstarError => new QuietstarError(`${indexPath}: ${why}`, 'BAD_FILE');
    let json: unknown;
    try {
      json = JSON.parse(await fsp.readFile(indexPath, 'utf8'));
    } catch (err) {
      throw bad(`not valid JSON (${(err as Error).message})`);
    }
    const map = (json as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) throw bad('weight_map is not an object');
    const weightMap = map as Record<string, unknown>;
    const files = new Set<string>();
    for (const [name, file] of Object.entries(weightMap)) {
      // Shards live in the folder itself: no absolute paths, no climbing out.
      if (typeof file !== 'string' || file === '' || isAbsolute(file) || normalize(file).split(sep).includes('..')) {
        throw bad(`weight_map['${name}']: ${JSON.stringify(file)} is not a file name inside the folder`);
      }
      files.add(file);
    }
    const readers: SafetensorsReader[] = [];
    try {
      const byFile = new Map<string, SafetensorsReader>();
      const entries = new Map<string, SafetensorsEntry>();
      for (const file of [...files].sort()) {
        const path = join(dir, file);
        if (!(await exists(path))) throw new QuietstarError(`${indexPath}: shard ${file} is missing (${path})`, 'NOT_FOUND');
        const r = await SafetensorsReader.open(path);
        readers.push(r);
        byFile.set(path, r);
        for (const [name, e] of r.entries) {
          const prev = entries.get(name);
          if (prev) throw new QuietstarError(`${path}: tensor '${name}' is also in ${prev.file}`, 'BAD_FILE');
          entries.set(name, e);
        }
      }
      for (const [name, file] of Object.entries(weightMap)) {
        const e = entries.get(name);
        const path = join(dir, file as string);
        if (!e || e.file !== path) {
          throw bad(`weight_map says tensor '${name}' is in ${file as string}, but that shard has no such tensor`);
        }
      }
      return new CheckpointWeights(indexPath, readers, entries, byFile);
    } catch (err) {
      await Promise.all(readers.map((r) => r.close()));
      throw err;
    }
  }

  /** The raw bytes of one tensor (see {@link SafetensorsReader.read}). */
  read(name: string): Promise<Uint8Array> {
    const e = this.entries.get(name);
    if (!e) throw new QuietstarError(`${this.source}: no tensor named '${name}'`, 'INVALID_ARGUMENT');
    return this.byFile.get(e.file)!.read(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.close()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Options of {@link writeCheckpointWeights}. */
export interface ShardOptions {
  /** Largest shard in bytes of tensor data; above it the weights are split. @defaultValue 5e9 (HF's "5GB") */
  maxShardBytes?: number;
  /** The safetensors `__metadata__`. @defaultValue `{format: 'pt'}` */
  metadata?: Record<string, string>;
}

/**
 * Writes tensors into `dir` as `model.safetensors`, or, when their total exceeds
 * `maxShardBytes`, as shards plus `model.safetensors.index.json`. Tensors fill shards in file
 * order; one larger than the limit gets a shard of its own (as HF does). Returns the file names.
 */
export async function writeCheckpointWeights(
  dir: string,
  tensors: readonly SafetensorsTensor[],
  options: ShardOptions = {},
): Promise<string[]> {
  const maxShardBytes = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(typeof maxShardBytes === 'number' && maxShardBytes > 0)) {
    throw new QuietstarError(`maxShardBytes must be a number > 0 (got ${String(maxShardBytes)})`, 'INVALID_ARGUMENT');
  }
  const metadata = options.metadata ?? { format: 'pt' };
  const ordered = safetensorsOrder(tensors);
  const total = ordered.reduce((s, t) => s + tensorBytes(t), 0);
  if (total <= maxShardBytes) {
    await writeSafetensors(join(dir, SINGLE_FILE), ordered, metadata);
    return [SINGLE_FILE];
  }
  const shards: SafetensorsTensor[][] = [];
  let current: SafetensorsTensor[] = [];
  let size = 0;
  for (const t of ordered) {
    const b = tensorBytes(t);
    if (current.length && size + b > maxShardBytes) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(t);
    size += b;
  }
  if (current.length) shards.push(current);
  const pad = (i: number): string => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(join(dir, names[i]!), shards[i]!, metadata);
    for (const t of shards[i]!) weightMap[t.name] = names[i]!;
  }
  const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
  const index = { metadata: { total_size: total }, weight_map: sortedMap };
  await atomicTarget(join(dir, INDEX_FILE), (tmp) => fsp.writeFile(tmp, JSON.stringify(index, null, 2) + '\n'));
  return [...names, INDEX_FILE];
}
