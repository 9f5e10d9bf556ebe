/**
 * Quiet-STaR training checkpoints with exact resume.
 *
 * `<outDir>/checkpoint-<step>/` holds:
 * - a Quiet-STaR model folder written by QuietStarModel.save (HF weights with the two thought
 *   markers, start/end embeddings, mixing head, config.json with its "quietstar" block, the
 *   tokenizer), so a checkpoint loads wherever an exported model does;
 * - `optimizer.safetensors`: the flat `params`, `m` and `v` buffers (model + extras, one
 *   ParamSet; see lib/train/checkpoint-parts.ts);
 * - `trainer_state.json`: step, data position (the whole data and thought-noise state: the
 *   document order, crop windows and thought seeds are pure functions of (seed, epoch, step)),
 *   token and time counters, the config, the model config and options, the last metrics.
 * The folder is written atomically, then `<outDir>/latest` names it (the same layout as
 * lib/train's checkpoints; `resolveCheckpointDir` and `pruneCheckpoints` are shared).
 */
import { join } from 'node:path';

import { QuietstarError } from '../errors.js';
import { TRAINER_STATE_FILE, loadOptimizerState, readStateFile, writeCheckpointDir, type TrainerStateBase } from '../train/checkpoint-parts.js';
import type { ResolvedQuietStarConfig } from './config.js';
import type { QuietStarModel } from './model.js';
import type { QuietStarOptions } from './options.js';

const STATE_FORMAT = 'quietstar-thought-trainer-state';
const STATE_VERSION = 1;

/** The contents of a Quiet-STaR checkpoint's trainer_state.json. */
export interface QuietStarTrainerState extends TrainerStateBase {
  format: typeof STATE_FORMAT;
  config: Omit<ResolvedQuietStarConfig, 'resumeFrom'>;
  /** The model's algorithm options. */
  quietstar: QuietStarOptions;
}

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
  const full: QuietStarTrainerState = {
    format: STATE_FORMAT,
    version: STATE_VERSION,
    ...state,
    modelConfig: qs.model.config,
    quietstar: { ...qs.options },
    parameterBufferSize: qs.params.buffer('params').size,
  };
  const trained = { params: qs.params, engine: qs.model.engine, dtype: qs.model.dtype };
  return writeCheckpointDir(outDir, state.step, trained, full, (tmp) => qs.save(tmp, { dtype: options.saveDtype ?? 'F32' }));
}

/** Reads and checks a Quiet-STaR checkpoint's trainer_state.json. */
export async function readQuietStarTrainerState(dir: string): Promise<QuietStarTrainerState> {
  const s = await readStateFile<QuietStarTrainerState>(dir, STATE_FORMAT, STATE_VERSION, 'Quiet-STaR trainer state', '; a train-lm checkpoint?', ['tokens']);
  if (typeof s.config !== 'object' || s.config === null || typeof s.quietstar !== 'object' || s.quietstar === null) {
    throw new QuietstarError(`${join(dir, TRAINER_STATE_FILE)}: field config or quietstar is missing`, 'BAD_FILE');
  }
  return s;
}

/**
 * Restores weights (model and extras), AdamW moments and step from a checkpoint folder into
 * `qs` (bit-exact), after checking it was made for the same architecture. Returns its state.
 */
export async function loadQuietStarCheckpoint(qs: QuietStarModel, dir: string): Promise<QuietStarTrainerState> {
  const state = await readQuietStarTrainerState(dir);
  await loadOptimizerState(dir, { params: qs.params, engine: qs.model.engine, dtype: qs.model.dtype }, qs.model.config, state);
  return state;
}
