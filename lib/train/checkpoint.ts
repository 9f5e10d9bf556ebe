/**
 * Training checkpoints with exact resume.
 *
 * `<outDir>/checkpoint-<step>/` holds:
 * - the model in Hugging Face layout (config.json + model.safetensors, via savePretrained), so a
 *   checkpoint loads anywhere a pretrained folder does;
 * - `optimizer.safetensors`: the flat `params`, `m` and `v` buffers (see checkpoint-parts.ts);
 * - `trainer_state.json`: step, data position, token and time counters, the config, the model
 *   config, and the last metrics.
 * The folder is written atomically, then `<outDir>/latest` names it (checkpoint-parts.ts).
 */
import { promises as fsp } from 'node:fs';
import { basename, join } from 'node:path';

import { QuietstarError } from '../errors.js';
import { savePretrained } from '../hf/checkpoint.js';
import type { Model } from '../model/model.js';
import {
  LATEST_FILE,
  TRAINER_STATE_FILE,
  checkpointName,
  loadOptimizerState,
  readStateFile,
  writeCheckpointDir,
  type TrainerStateBase,
} from './checkpoint-parts.js';
import type { ResolvedTrainLmConfig } from './config.js';

export { LATEST_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE, checkpointName } from './checkpoint-parts.js';
const STATE_FORMAT = 'quietstar-trainer-state';
const STATE_VERSION = 1;

/** The contents of trainer_state.json. */
export interface TrainerState extends TrainerStateBase {
  format: typeof STATE_FORMAT;
  config: Omit<ResolvedTrainLmConfig, 'resumeFrom'>;
}

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
  const full: TrainerState = {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    ...state,
    modelConfig: model.config,
    parameterBufferSize: model.params.buffer('params').size,
  };
  return writeCheckpointDir(outDir, state.step, model, full, (tmp) => savePretrained(model, tmp, { dtype: options.saveDtype ?? 'F32' }), options.extra);
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
export function readTrainerState(dir: string): Promise<TrainerState> {
  return readStateFile<TrainerState>(dir, STATE_FORMAT, STATE_VERSION, 'quietstar trainer state');
}

/**
 * Restores weights, AdamW moments and step from a checkpoint folder into `model` (bit-exact),
 * after checking that the checkpoint was made for the same architecture. Returns its state.
 */
export async function loadCheckpoint(model: Model, dir: string): Promise<TrainerState> {
  const state = await readTrainerState(dir);
  await loadOptimizerState(dir, model, model.config, state);
  return state;
}
