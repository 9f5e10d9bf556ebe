/**
 * The parts of a checkpoint folder that lib/train and lib/quietstar share; each writes its own
 * model folder and trainer state around them.
 * - `optimizer.safetensors`: the flat `params`, `m` and `v` buffers in the model's dtype and the
 *   AdamW step in the metadata. The weights are kept flat too, so a resume is bit-exact even
 *   when the model folder's weights were saved in BF16.
 * - The folder is built under a temporary name and renamed into place, then `<outDir>/latest`
 *   (the folder's name) is replaced atomically, so a crash leaves either the old or the new
 *   checkpoint, never half of one.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import type { DataPosition } from '../data/epoch-loader.js';
import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { atomicDir, atomicTarget } from '../hf/atomic.js';
import { SafetensorsReader, writeSafetensors, type SafetensorsDType } from '../hf/safetensors.js';
import type { Parameters } from '../params.js';

export const TRAINER_STATE_FILE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const LATEST_FILE = 'latest';

/** The checkpoint folder name of `step`. */
export function checkpointName(step: number): string {
  return `checkpoint-${step}`;
}

/** The trainer_state.json fields that every trainer writes (each adds its format, config, ...). */
export interface TrainerStateBase {
  version: number;
  /** Optimizer updates done. */
  step: number;
  /**
   * Where the training loader stands: the next row is the `index`-th of epoch `epoch`'s order.
   * The order is a pure function of (seed, epoch) (see lib/data/epoch-loader.ts), so this is the
   * whole shuffling state; `rows` guards against resuming on other data.
   */
  data: DataPosition & { seed: number; rows: number };
  /** Tokens trained on so far (target tokens; valid text tokens for Quiet-STaR). */
  tokens: number;
  /** Training wall time so far (ms). */
  elapsedMs: number;
  modelConfig: unknown;
  /** Elements of the flat parameter buffer (padding included). */
  parameterBufferSize: number;
  lastMetrics?: Record<string, unknown>;
}

/** What a checkpoint needs of the model being trained. */
export interface TrainedParams {
  params: Parameters;
  engine: Engine;
  dtype: 'f32' | 'f64';
}

const OPT_DTYPE: Record<'f32' | 'f64', SafetensorsDType> = { f32: 'F32', f64: 'F64' };
const BUFFERS = ['params', 'm', 'v'] as const;

/**
 * Writes `<outDir>/checkpoint-<step>` atomically and points `<outDir>/latest` at it.
 * `saveModel(tmp)` writes the model folder first (a model save may replace the folder it writes);
 * then come optimizer.safetensors, trainer_state.json (`state`) and `extra(tmp)`'s files.
 * Returns the folder's path.
 */
export async function writeCheckpointDir(
  outDir: string,
  step: number,
  model: TrainedParams,
  state: object,
  saveModel: (tmp: string) => Promise<void>,
  extra?: (tmp: string) => Promise<void>,
): Promise<string> {
  const dir = join(outDir, checkpointName(step));
  const { params } = model;
  await atomicDir(dir, async (tmp) => {
    await saveModel(tmp);
    const P = params.buffer('params').size;
    await writeSafetensors(
      join(tmp, OPTIMIZER_FILE),
      BUFFERS.map((name) => ({ name, dtype: OPT_DTYPE[model.dtype], shape: [P], data: () => params.buffer(name).data() })),
      { format: 'quietstar-optimizer', step: String(params.step) },
    );
    await fsp.writeFile(join(tmp, TRAINER_STATE_FILE), JSON.stringify(state, null, 2) + '\n');
    if (extra) await extra(tmp);
  });
  await atomicTarget(join(outDir, LATEST_FILE), (tmp) => fsp.writeFile(tmp, checkpointName(step) + '\n'));
  return dir;
}

/**
 * Reads `dir`'s trainer_state.json and checks its format and version (`kind` names the state in
 * the error, `hint` may follow) and the integers every trainer state has, plus `moreInts`.
 */
export async function readStateFile<T>(dir: string, format: string, version: number, kind: string, hint = '', moreInts: string[] = []): Promise<T> {
  const file = join(dir, TRAINER_STATE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new QuietstarError(`${file} not found`, 'NOT_FOUND');
    throw new QuietstarError(`${file}: not valid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
  const s = json as Record<string, unknown> | null;
  if (s?.format !== format || s.version !== version) {
    throw new QuietstarError(`${file}: not a ${kind} (format ${JSON.stringify(s?.format)}, version ${JSON.stringify(s?.version)}${hint})`, 'BAD_FILE');
  }
  const d = s.data as Record<string, unknown> | undefined;
  const isInt = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!isInt(s.step) || !d || !isInt(d.epoch) || !isInt(d.index) || !isInt(d.seed) || !isInt(d.rows) || !isInt(s.parameterBufferSize) || moreInts.some((k) => !isInt(s[k]))) {
    const fields = ['step', ...moreInts, 'data.{epoch,index,seed,rows}'].join(', ');
    throw new QuietstarError(`${file}: field ${fields} or parameterBufferSize is missing or not an integer`, 'BAD_FILE');
  }
  return s as T;
}

/** JSON with object keys sorted, so configs built in different orders compare equal. */
function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );
}

/**
 * Restores the flat weights, AdamW moments and step of the checkpoint in `dir` into `model`
 * (bit-exact), after checking that it was made for the same architecture (`modelConfig` and the
 * buffer size that `state` recorded).
 */
export async function loadOptimizerState(
  dir: string,
  model: TrainedParams,
  modelConfig: unknown,
  state: { modelConfig: unknown; parameterBufferSize: number },
): Promise<void> {
  const { params, engine, dtype } = model;
  const P = params.buffer('params').size;
  if (canonicalJson(state.modelConfig) !== canonicalJson(modelConfig) || state.parameterBufferSize !== P) {
    throw new QuietstarError(
      `${join(dir, TRAINER_STATE_FILE)}: the checkpoint was made for another model (config ${JSON.stringify(state.modelConfig)}, ` +
        `${state.parameterBufferSize} parameter elements) than this one (config ${JSON.stringify(modelConfig)}, ${P})`,
      'INVALID_ARGUMENT',
    );
  }
  const file = join(dir, OPTIMIZER_FILE);
  const reader = await SafetensorsReader.open(file);
  try {
    const want = OPT_DTYPE[dtype];
    for (const name of BUFFERS) {
      const e = reader.entries.get(name);
      if (!e) throw new QuietstarError(`${file}: tensor '${name}' is missing`, 'BAD_FILE');
      if (e.dtype !== want || e.shape.length !== 1 || e.shape[0] !== P) {
        throw new QuietstarError(`${file}: tensor '${name}' is ${e.dtype}${JSON.stringify(e.shape)}, expected ${want}[${P}]`, 'BAD_FILE');
      }
      const bytes = await reader.read(name);
      const data = dtype === 'f32' ? new Float32Array(bytes.buffer, bytes.byteOffset, P) : new Float64Array(bytes.buffer, bytes.byteOffset, P);
      using src = engine.tensor(data, [P]);
      await engine.ops.copy({ src, dst: params.buffer(name) });
    }
    const step = Number(reader.metadata.step);
    if (!Number.isSafeInteger(step) || step < 0) throw new QuietstarError(`${file}: metadata 'step' is missing or not an integer`, 'BAD_FILE');
    await params.setStep(step);
  } finally {
    await reader.close();
  }
}
