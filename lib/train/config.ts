/**
 * TrainLmConfig: the hyper-parameters of plain language-model training, with their defaults
 * and the validation that runs before any step (errors name the field: `config.lr ...`).
 * Defaults follow nanoGPT's GPT-2 recipe (AdamW β = (0.9, 0.95), weight decay 0.1, clip 1.0,
 * cosine decay to lr/10).
 */
import { QuietstarError } from '../errors.js';
import { checkPaths, fail, int, num, oneOf } from './config-check.js';
import type { ScheduleKind } from './schedule.js';

/** Configuration of {@link trainLm}. Only `maxSteps` is required. */
export interface TrainLmConfig {
  /** Optimizer updates to train for (the schedule decays over them). */
  maxSteps: number;
  /** Peak learning rate. @defaultValue 3e-4 */
  lr?: number;
  /** Learning rate at the end of the decay. @defaultValue lr / 10 */
  minLr?: number;
  /** Linear warm-up steps from 0 to lr. @defaultValue 0 */
  warmupSteps?: number;
  /** Decay after the warm-up. @defaultValue 'cosine' */
  schedule?: ScheduleKind;
  /** Rows per micro-batch (one forward/backward). @defaultValue 8 */
  batchSize?: number;
  /** Micro-batches per optimizer update; the effective batch is batchSize · gradAccumulation rows. @defaultValue 1 */
  gradAccumulation?: number;
  /** Sequence length T; must equal the data's. @defaultValue the training data's seqLen */
  seqLen?: number;
  /** AdamW decoupled weight decay (rank ≥ 2 tensors only; never norm gains or biases). @defaultValue 0.1 */
  weightDecay?: number;
  /** @defaultValue 0.9 */
  beta1?: number;
  /** @defaultValue 0.95 */
  beta2?: number;
  /** @defaultValue 1e-8 */
  eps?: number;
  /** Clip the global gradient norm to this (0 = no clipping; the norm is still reported). @defaultValue 1 */
  clip?: number;
  /** Evaluate every this many steps (0 = only after the last step); needs eval data. @defaultValue 0 */
  evalEvery?: number;
  /** Evaluation batches per evaluation (0 = every held-out row). @defaultValue 20 */
  evalBatches?: number;
  /** Rows per evaluation batch. @defaultValue batchSize */
  evalBatchSize?: number;
  /** Save a checkpoint every this many steps (0 = only after the last step); needs outDir. @defaultValue 0 */
  checkpointEvery?: number;
  /** Keep only the newest this many checkpoints (0 = keep all). @defaultValue 0 */
  keepCheckpoints?: number;
  /** Data shuffling seed. @defaultValue 0 */
  seed?: number;
  /** Folder for `metrics.jsonl` and checkpoints; without it nothing is written. */
  outDir?: string;
  /** Continue from a checkpoint folder, or from an outDir's `latest` checkpoint. */
  resumeFrom?: string;
  /** dtype of the Hugging Face weights in checkpoints (resume always uses the exact f32 copy). @defaultValue 'F32' */
  saveDtype?: 'F32' | 'BF16' | 'F16';
}

/** A config with every default filled in. */
export type ResolvedTrainLmConfig = Required<Omit<TrainLmConfig, 'outDir' | 'resumeFrom'>> & {
  outDir?: string;
  resumeFrom?: string;
};

const KEYS: ReadonlySet<string> = new Set([
  'maxSteps', 'lr', 'minLr', 'warmupSteps', 'schedule', 'batchSize', 'gradAccumulation', 'seqLen', 'weightDecay',
  'beta1', 'beta2', 'eps', 'clip', 'evalEvery', 'evalBatches', 'evalBatchSize', 'checkpointEvery', 'keepCheckpoints',
  'seed', 'outDir', 'resumeFrom', 'saveDtype',
]);

/** Fills defaults and validates. `dataSeqLen` is the training data's T. */
export function resolveTrainLmConfig(config: TrainLmConfig, dataSeqLen: number): ResolvedTrainLmConfig {
  if (typeof config !== 'object' || config === null) throw new QuietstarError('config must be an object', 'INVALID_ARGUMENT');
  for (const k of Object.keys(config)) {
    if (!KEYS.has(k)) throw new QuietstarError(`config.${k} is not a TrainLmConfig field (fields: ${[...KEYS].join(', ')})`, 'INVALID_ARGUMENT');
  }
  const c = config;
  const lr = num('lr', c.lr ?? 3e-4, (x) => x >= 0, 'a finite number >= 0');
  const batchSize = int('batchSize', c.batchSize ?? 8, 1);
  const seqLen = int('seqLen', c.seqLen ?? dataSeqLen, 1);
  if (seqLen !== dataSeqLen) fail('seqLen', `the training data's seqLen ${dataSeqLen}`, seqLen);
  const schedule = oneOf('schedule', c.schedule ?? 'cosine', ['cosine', 'linear', 'constant'] as const);
  const saveDtype = oneOf('saveDtype', c.saveDtype ?? 'F32', ['F32', 'BF16', 'F16'] as const);
  checkPaths(c, ['outDir', 'resumeFrom']);
  const resolved: ResolvedTrainLmConfig = {
    maxSteps: int('maxSteps', c.maxSteps, 1),
    lr,
    minLr: num('minLr', c.minLr ?? lr / 10, (x) => x >= 0 && x <= lr, `a number in [0, lr = ${lr}]`),
    warmupSteps: int('warmupSteps', c.warmupSteps ?? 0, 0),
    schedule,
    batchSize,
    gradAccumulation: int('gradAccumulation', c.gradAccumulation ?? 1, 1),
    seqLen,
    weightDecay: num('weightDecay', c.weightDecay ?? 0.1, (x) => x >= 0, 'a finite number >= 0'),
    beta1: num('beta1', c.beta1 ?? 0.9, (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    beta2: num('beta2', c.beta2 ?? 0.95, (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    eps: num('eps', c.eps ?? 1e-8, (x) => x > 0, 'a finite number > 0'),
    clip: num('clip', c.clip ?? 1, (x) => x >= 0, 'a finite number >= 0 (0 = off)'),
    evalEvery: int('evalEvery', c.evalEvery ?? 0, 0),
    evalBatches: int('evalBatches', c.evalBatches ?? 20, 0),
    evalBatchSize: int('evalBatchSize', c.evalBatchSize ?? batchSize, 1),
    checkpointEvery: int('checkpointEvery', c.checkpointEvery ?? 0, 0),
    keepCheckpoints: int('keepCheckpoints', c.keepCheckpoints ?? 0, 0),
    seed: int('seed', c.seed ?? 0, 0),
    saveDtype,
  };
  if (c.outDir !== undefined) resolved.outDir = c.outDir;
  if (c.resumeFrom !== undefined) resolved.resumeFrom = c.resumeFrom;
  return resolved;
}
