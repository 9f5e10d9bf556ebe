/**
 * Quiet-STaR training checkpoints with exact resume.
 *
 * `<outDir>/checkpoint-<step>/` holds:
 * - a Quiet-STaR model folder written by QuietStarModel.save (HF weights with the two thought
 *   markers, start/end embeddings, mixing head, config.json with its "quietstar" block, the
 *   tokenizer), so a checkpoint loads wherever an exported model does;
 * - `optimizer.safetensors`: the flat `params`, `m` and `v` buffers (model + extras, one
 *   ParamSet) in the model's dtype and the AdamW step in the metadata; the weights are kept
 *   flat too, so a resume is bit-exact even when the HF weights were saved in BF16;
 * - `trainer_state.json`: step, data position (the whole data and thought-noise state: the
 *   document order, crop windows and thought seeds are pure functions of (seed, epoch, step)),
 *   token and time counters, the config, the model config and options, the last metrics.
 * The folder is built under a temporary name and renamed into place, then `<outDir>/latest` is
 * replaced atomically (the same layout as lib/train's checkpoints; `resolveCheckpointDir` and
 * `pruneCheckpoints` are shared).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import type { DataPosition } from '../data/loader.js';
import { QuietstarError } from '../errors.js';
import { atomicDir, atomicTarget } from '../hf/atomic.js';
import { SafetensorsReader, writeSafetensors, type SafetensorsDType } from '../hf/safetensors.js';
import { LATEST_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, checkpointName } from '../train/checkpoint.js';
import type { ResolvedQuietStarConfig } from './config.js';
import type { QuietStarModel } from './model.js';
import type { QuietStarOptions } from './options.js';

const STATE_FORMAT = 'quietstar-thought-trainer-state';
const STATE_VERSION = 1;

/** The contents of a Quiet-STaR checkpoint's trainer_state.json. */
export interface QuietStarTrainerState {
  format: typeof STATE_FORMAT;
  version: number;
  /** Optimizer updates done. */
  step: number;
  /** The next training document is the `index`-th of epoch `epoch`'s order; `rows` guards against other data. */
  data: DataPosition & { seed: number; rows: number };
  /** Valid text tokens trained on so far. */
  tokens: number;
  /** Training wall time so far (ms). */
  elapsedMs: number;
  config: Omit<ResolvedQuietStarConfig, 'resumeFrom'>;
  modelConfig: unknown;
  /** The model's algorithm options. */
  quietstar: QuietStarOptions;
  /** Elements of the flat parameter buffer (padding included). */
  parameterBufferSize: number;
  lastMetrics?: Record<string, unknown>;
}

const OPT_DTYPE: Record<'f32' | 'f64', SafetensorsDType> = { f32: 'F32', f64: 'F64' };

/**
 * Writes `<outDir>/checkpoint-<step>` atomically and points `<outDir>/latest` at it. Returns
 * the folder's path.
 */
export async function saveQuietStarCheckpoint(
  qs: QuietStarModel,
  outDir: string,
  state: Omit<QuietStarTrainerState, 'format' | 'version' | 'parameterBufferSize' | 'modelConfig' | 'quietstar'>,
  options: { saveDtype?: 'F32' | 'BF16' | 'F16' } = {},
): Promise<string> {
  const dir = join(outDir, checkpointName(state.step));
  const { params } = qs;
  const flat = params.buffer('params');
  const full: QuietStarTrainerState = {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    ...state,
    modelConfig: qs.model.config,
    quietstar: { ...qs.options },
    parameterBufferSize: flat.size,
  };
  await atomicDir(dir, async (tmp) => {
    // First: save() replaces the folder it writes.
    await qs.save(tmp, { dtype: options.saveDtype ?? 'F32' });
    const P = flat.size;
    await writeSafetensors(
      join(tmp, OPTIMIZER_FILE),
      (['params', 'm', 'v'] as const).map((name) => ({ name, dtype: OPT_DTYPE[qs.model.dtype], shape: [P], data: () => params.buffer(name).data() })),
      { format: 'quietstar-optimizer', step: String(params.step) },
    );
    await fsp.writeFile(join(tmp, TRAINER_STATE_FILE), JSON.stringify(full, null, 2) + '\n');
  });
  await atomicTarget(join(outDir, LATEST_FILE), (tmp) => fsp.writeFile(tmp, checkpointName(state.step) + '\n'));
  return dir;
}

/** Reads and checks a Quiet-STaR checkpoint's trainer_state.json. */
export async function readQuietStarTrainerState(dir: string): Promise<QuietStarTrainerState> {
  const file = join(dir, TRAINER_STATE_FILE);
  let json: unknown;
  try {
    json = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new QuietstarError(`${file} not found`, 'NOT_FOUND');
    throw new QuietstarError(`${file}: not valid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
  const s = json as Partial<QuietStarTrainerState>;
  if (s?.format !== STATE_FORMAT || s.version !== STATE_VERSION) {
    throw new QuietstarError(
      `${file}: not a Quiet-STaR trainer state (format ${JSON.stringify(s?.format)}, version ${JSON.stringify(s?.version)}; a train-lm checkpoint?)`,
      'BAD_FILE',
    );
  }
  const d = s.data;
  const isInt = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  if (!isInt(s.step) || !d || !isInt(d.epoch) || !isInt(d.index) || !isInt(d.seed) || !isInt(d.rows) || !isInt(s.parameterBufferSize) || !isInt(s.tokens)) {
    throw new QuietstarError(`${file}: field step, tokens, data.{epoch,index,seed,rows} or parameterBufferSize is missing or not an integer`, 'BAD_FILE');
  }
  if (typeof s.config !== 'object' || s.config === null || typeof s.quietstar !== 'object' || s.quietstar === null) {
    throw new QuietstarError(`${file}: field config or quietstar is missing`, 'BAD_FILE');
  }
  return s as QuietStarTrainerState;
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
 * Restores weights (model and extras), AdamW moments and step from a checkpoint folder into
 * `qs` (bit-exact), after checking it was made for the same architecture. Returns its state.
 */
export async function loadQuietStarCheckpoint(qs: QuietStarModel, dir: string): Promise<QuietStarTrainerState> {
  const state = await readQuietStarTrainerState(dir);
  const { params } = qs;
  const { engine, dtype } = qs.model;
  const P = params.buffer('params').size;
  if (canonicalJson(state.modelConfig) !== canonicalJson(qs.model.config) || state.parameterBufferSize !== P) {
    throw new QuietstarError(
      `${join(dir, TRAINER_STATE_FILE)}: the checkpoint was made for another model (config ${JSON.stringify(state.modelConfig)}, ` +
        `${state.parameterBufferSize} parameter elements) than this one (config ${JSON.stringify(qs.model.config)}, ${P})`,
      'INVALID_ARGUMENT',
    );
  }
  const file = join(dir, OPTIMIZER_FILE);
  const reader = await SafetensorsReader.open(file);
  try {
    const want = OPT_DTYPE[dtype];
    for (const name of ['params', 'm', 'v'] as const) {
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
  return state;
}
