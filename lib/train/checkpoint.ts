/**
 * Training checkpoints with exact resume.
 *
 * `<outDir>/checkpoint-<step>/` holds:
 * - the model in Hugging Face layout (config.json + model.safetensors, via savePretrained), so a
 *   checkpoint loads anywhere a pretrained folder does;
 * - `optimizer.safetensors`: the flat `params`, `m` and `v` buffers in the model's dtype (F32
 *   for f32 models) and the AdamW step in the metadata. The weights are saved flat too, so a
 *   resume is bit-exact even when the HF weights were saved in BF16;
 * - `trainer_state.json`: step, data position, token and time counters, the config, the model
 *   config, and the last metrics.
 * The folder is built under a temporary name and renamed into place, then `<outDir>/latest`
 * (the folder's name) is replaced atomically, so a crash leaves either the old or the new
 * checkpoint, never half of one.
 */
import { promises as fsp } from 'node:fs';
import { basename, join } from 'node:path';

import type { DataPosition } from '../data/loader.js';
import { QuietstarError } from '../errors.js';
import { atomicDir, atomicTarget } from '../hf/atomic.js';
import { savePretrained } from '../hf/checkpoint.js';
import { SafetensorsReader, writeSafetensors, type SafetensorsDType } from '../hf/safetensors.js';
import type { Model } from '../model/model.js';
import type { ResolvedTrainLmConfig } from './config.js';

export const TRAINER_STATE_FILE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const LATEST_FILE = 'latest';
const STATE_FORMAT = 'quietstar-trainer-state';
const STATE_VERSION = 1;

/** The contents of trainer_state.json. */
export interface TrainerState {
  format: typeof STATE_FORMAT;
  version: number;
  /** Optimizer updates done. */
  step: number;
  /**
   * Where the training loader stands: the next row is the `index`-th of epoch `epoch`'s order.
   * The order is a pure function of (seed, epoch) (see lib/data/prng.ts), so this is the whole
   * shuffling state; `rows` guards against resuming on other data.
   */
  data: DataPosition & { seed: number; rows: number };
  /** Target tokens trained on so far. */
  tokens: number;
  /** Training wall time so far (ms). */
  elapsedMs: number;
  config: Omit<ResolvedTrainLmConfig, 'resumeFrom'>;
  modelConfig: unknown;
  /** Elements of the flat parameter buffer (padding included). */
  parameterBufferSize: number;
  lastMetrics?: Record<string, unknown>;
}

/** The checkpoint folder name of `step`. */
export function checkpointName(step: number): string {
  return `checkpoint-${step}`;
}

const OPT_DTYPE: Record<'f32' | 'f64', SafetensorsDType> = { f32: 'F32', f64: 'F64' };

/**
 * Writes `<outDir>/checkpoint-<step>` atomically and points `<outDir>/latest` at it.
 * `extra(tmpDir)` may add files (a tokenizer, say) before the folder is renamed into place.
 * Returns the folder's path.
 */
export async function saveCheckpoint(
  model: Model,
  outDir: string,
  state: Omit<TrainerState, 'format' | 'version' | 'parameterBufferSize' | 'modelConfig'>,
  options: { saveDtype?: 'F32' | 'BF16' | 'F16'; extra?: (dir: string) => Promise<void> } = {},
): Promise<string> {
  const dir = join(outDir, checkpointName(state.step));
  const { params } = model;
  const flat = params.buffer('params');
  const full: TrainerState = {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    ...state,
    modelConfig: model.config,
    parameterBufferSize: flat.size,
  };
  await atomicDir(dir, async (tmp) => {
    await savePretrained(model, tmp, { dtype: options.saveDtype ?? 'F32' });
    const dtype = OPT_DTYPE[model.dtype];
    const P = flat.size;
    await writeSafetensors(
      join(tmp, OPTIMIZER_FILE),
      (['params', 'm', 'v'] as const).map((name) => ({ name, dtype, shape: [P], data: () => params.buffer(name).data() })),
      { format: 'quietstar-optimizer', step: String(params.step) },
    );
    await fsp.writeFile(join(tmp, TRAINER_STATE_FILE), JSON.stringify(full, null, 2) + '\n');
    if (options.extra) await options.extra(tmp);
  });
  await atomicTarget(join(outDir, LATEST_FILE), (tmp) => fsp.writeFile(tmp, checkpointName(state.step) + '\n'));
  return dir;
}

/** Removes all but the newest `keep` checkpoint folders of `outDir` (keep 0 = remove none). */
export async function pruneCheckpoints(outDir: string, keep: number): Promise<void> {
  if (keep <= 0) return;
  const steps = (await fsp.readdir(outDir))
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
  for (const s of steps.slice(keep)) await fsp.rm(join(outDir, checkpointName(s)), { recursive: true, force: true });
}

/**
 * The checkpoint folder `path` names: itself when it holds trainer_state.json, else the folder
 * its `latest` file points to. NOT_FOUND when neither exists.
 */
export async function resolveCheckpointDir(path: string): Promise<string> {
  const exists = (p: string): Promise<boolean> => fsp.stat(p).then(() => true, () => false);
  if (await exists(join(path, TRAINER_STATE_FILE))) return path;
  const latest = join(path, LATEST_FILE);
  if (await exists(latest)) {
    const name = (await fsp.readFile(latest, 'utf8')).trim();
    const dir = join(path, basename(name));
    if (await exists(join(dir, TRAINER_STATE_FILE))) return dir;
    throw new QuietstarError(`${latest} points to ${dir}, which holds no ${TRAINER_STATE_FILE}`, 'NOT_FOUND');
  }
  throw new QuietstarError(`no checkpoint at ${path}: neither ${TRAINER_STATE_FILE} nor a '${LATEST_FILE}' file`, 'NOT_FOUND');
}

/** Reads and checks a checkpoint's trainer_state.json. */
export async function readTrainerState(dir: string): Promise<TrainerState> {
  const file = join(dir, TRAINER_STATE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new QuietstarError(`${file} not found`, 'NOT_FOUND');
    throw new QuietstarError(`${file}: not valid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
  const s = json as Partial<TrainerState>;
  if (s?.format !== STATE_FORMAT || s.version !== STATE_VERSION) {
    throw new QuietstarError(`${file}: not a quietstar trainer state (format ${JSON.stringify(s?.format)}, version ${JSON.stringify(s?.version)})`, 'BAD_FILE');
  }
  const d = s.data;
  const isInt = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!isInt(s.step) || !d || !isInt(d.epoch) || !isInt(d.index) || !isInt(d.seed) || !isInt(d.rows) || !isInt(s.parameterBufferSize)) {
    throw new QuietstarError(`${file}: field step, data.{epoch,index,seed,rows} or parameterBufferSize is missing or not an integer`, 'BAD_FILE');
  }
  return s as TrainerState;
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
 * Restores weights, AdamW moments and step from a checkpoint folder into `model` (bit-exact),
 * after checking that the checkpoint was made for the same architecture. Returns its state.
 */
export async function loadCheckpoint(model: Model, dir: string): Promise<TrainerState> {
  const state = await readTrainerState(dir);
  const { params, engine } = model;
  const P = params.buffer('params').size;
  if (canonicalJson(state.modelConfig) !== canonicalJson(model.config) || state.parameterBufferSize !== P) {
    throw new QuietstarError(
      `${join(dir, TRAINER_STATE_FILE)}: the checkpoint was made for another model (config ${JSON.stringify(state.modelConfig)}, ` +
        `${state.parameterBufferSize} parameter elements) than this one (config ${JSON.stringify(model.config)}, ${P})`,
      'INVALID_ARGUMENT',
    );
  }
  const file = join(dir, OPTIMIZER_FILE);
  const reader = await SafetensorsReader.open(file);
  try {
    const want = OPT_DTYPE[model.dtype];
    for (const name of ['params', 'm', 'v'] as const) {
      const e = reader.entries.get(name);
      if (!e) throw new QuietstarError(`${file}: tensor '${name}' is missing`, 'BAD_FILE');
      if (e.dtype !== want || e.shape.length !== 1 || e.shape[0] !== P) {
        throw new QuietstarError(`${file}: tensor '${name}' is ${e.dtype}${JSON.stringify(e.shape)}, expected ${want}[${P}]`, 'BAD_FILE');
      }
      const bytes = await reader.read(name);
      const data = model.dtype === 'f32' ? new Float32Array(bytes.buffer) : new Float64Array(bytes.buffer);
      using src = engine.tensor(data, [P]);
      await engine.ops.copy({ src, dst: params.buffer(name) });
    }
    const step = Number(reader.metadata.step);
    if (!Number.isSafeInteger(step) || step < 0) throw new QuietstarError(`${file}: metadata 'step' is missing or not an integer`, 'BAD_FILE');
    await params.setStep(step);
  } finally {
    await reader.close();
  }
  return state;
}
