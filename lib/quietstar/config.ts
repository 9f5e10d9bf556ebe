/**
 * QuietStarConfig: everything a Quiet-STaR training run is configured by — the algorithm
 * options of {@link QuietStarOptions} and the optimisation, data and output settings — with
 * the reference recipe's values as defaults (spec §3: `quiet-star-train.py` and the patched
 * Mistral class), validated before any step with errors that name the field (`config.lr ...`).
 *
 * Reference recipe (spec §3): AdamW lr 1e-6, β (0.9, 0.999), ε 1e-8, weight decay 0.001,
 * warm-up 20 steps then linear decay to 0 at max_steps 100000 (so ≈ constant over the 100
 * steps that run: kill_after 100), max grad norm 1.0, 8 documents per optimizer step as 4
 * per micro-batch × 2 accumulation, T 256 with a random 256-token window of longer documents,
 * seed 42.
 */
import { QuietstarError } from '../errors.js';
import { bool, checkPaths, fail, int, num, oneOf } from '../train/config-check.js';
import { resolveQuietStarOptions, type QuietStarOptions } from './options.js';

/** How a document longer than seqLen is cut to seqLen tokens. */
export type CropMode = 'random' | 'start';

/** The hyper-parameters of a run that are not algorithm options. */
export interface QuietStarTrainingConfig {
  /** Optimizer updates to run (the reference's kill_after). @defaultValue 100 */
  maxSteps?: number;
  /** Peak learning rate. @defaultValue 1e-6 */
  lr?: number;
  /** Learning rate the decay ends at. @defaultValue 0 */
  minLr?: number;
  /** Linear warm-up steps from 0 to lr (HF's get_linear_schedule_with_warmup). @defaultValue 20 */
  warmupSteps?: number;
  /** Decay after the warm-up. @defaultValue 'linear' */
  schedule?: 'linear' | 'cosine' | 'constant';
  /**
   * Step at which the decay reaches minLr; independent of maxSteps, as in the reference
   * (max_steps 100000 while the run stops at 100: the rate stays ≈ lr).
   * @defaultValue 100000
   */
  decaySteps?: number;
  /** AdamW decoupled weight decay (rank ≥ 2 tensors only; never norm gains or biases). @defaultValue 0.001 */
  weightDecay?: number;
  /** @defaultValue 0.9 */
  beta1?: number;
  /** @defaultValue 0.999 */
  beta2?: number;
  /** @defaultValue 1e-8 */
  eps?: number;
  /**
   * Mimic the reference's pure-bf16 parameters and AdamW state (spec §3): weights and moments
   * are rounded to bf16 after every step. Off: f32 master weights (the reference's lr 1e-6 then
   * takes much larger effective steps in the LM).
   * @defaultValue false
   */
  bf16State?: boolean;
  /** Clip the global gradient norm to this (0 = no clipping; the norm is still reported). @defaultValue 1 */
  clip?: number;
  /** Documents per optimizer step; a multiple of microBatchSize. @defaultValue 8 */
  batchSize?: number;
  /**
   * Documents per micro-batch (one Quiet-STaR forward/backward over microBatchSize · nPasses
   * rows); batchSize / microBatchSize micro-batches are accumulated per step.
   * @defaultValue min(4, batchSize)
   */
  microBatchSize?: number;
  /** Tokens per document row T (crop or right-pad). @defaultValue 256 */
  seqLen?: number;
  /** Seeds the document order, the crop windows and the thought noise. @defaultValue 42 */
  seed?: number;
  /**
   * `'random'`: a document longer than seqLen is cut to a seeded random window of seqLen tokens
   * (spec §2.2; the BOS can be lost); `'start'`: its first seqLen tokens.
   * @defaultValue 'random'
   */
  cropMode?: CropMode;
  /** Evaluate the Quiet-STaR loss on held-out documents every this many steps (0 = after the last step only); needs eval data. @defaultValue 10 */
  evalEvery?: number;
  /** Micro-batches of held-out documents per evaluation (0 = all). @defaultValue 4 */
  evalBatches?: number;
  /** Save a checkpoint every this many steps (0 = after the last step only); needs outDir. @defaultValue 100 */
  checkpointEvery?: number;
  /** Keep only the newest this many checkpoints (0 = keep all). @defaultValue 0 */
  keepCheckpoints?: number;
  /** dtype of the Hugging Face weights in checkpoints (resume always uses the exact flat copy). @defaultValue 'F32' */
  saveDtype?: 'F32' | 'BF16' | 'F16';
  /** Folder for checkpoints and `metrics.jsonl`; without it no checkpoint is written. @defaultValue none */
  outDir?: string;
  /** The metrics JSON-lines file. @defaultValue `<outDir>/metrics.jsonl` (none without outDir) */
  metricsFile?: string;
  /** Continue from a checkpoint folder, or from an outDir's `latest` checkpoint. @defaultValue none */
  resumeFrom?: string;
}

/**
 * Configuration of {@link trainQuietStar}: the algorithm options (spec names in camelCase;
 * see {@link QuietStarOptions} for each one's meaning and default — nAhead 12, nAheadTalk 4,
 * nPasses 2, policyLossBeta 1e6, reinforceTemperature 3, ...) plus the training settings.
 * Every field is optional.
 */
export interface QuietStarConfig extends Partial<QuietStarOptions>, QuietStarTrainingConfig {}

/** A config with every default filled in. */
export type ResolvedQuietStarConfig = QuietStarOptions &
  Required<Omit<QuietStarTrainingConfig, 'outDir' | 'metricsFile' | 'resumeFrom'>> &
  Pick<QuietStarTrainingConfig, 'outDir' | 'metricsFile' | 'resumeFrom'>;

/** The algorithm option names (the fields of QuietStarOptions). */
export const QUIETSTAR_OPTION_KEYS = [
  'nAhead', 'nAheadTalk', 'nPasses', 'embeddingScale', 'originalLossWeight', 'baseLossBeta', 'policyLossBeta',
  'reinforceTemperature', 'thoughtTemperature', 'removeNegativeRewards', 'triceBaseline', 'mixing', 'mixingSigmoid',
  'recomputeActivations',
] as const satisfies readonly (keyof QuietStarOptions)[];

const TRAINING_KEYS = [
  'maxSteps', 'lr', 'minLr', 'warmupSteps', 'schedule', 'decaySteps', 'weightDecay', 'beta1', 'beta2', 'eps', 'bf16State', 'clip',
  'batchSize', 'microBatchSize', 'seqLen', 'seed', 'cropMode', 'evalEvery', 'evalBatches', 'checkpointEvery',
  'keepCheckpoints', 'saveDtype', 'outDir', 'metricsFile', 'resumeFrom',
] as const satisfies readonly (keyof QuietStarTrainingConfig)[];

const KEYS: ReadonlySet<string> = new Set<string>([...QUIETSTAR_OPTION_KEYS, ...TRAINING_KEYS]);

/** The algorithm options `config` sets explicitly (to create or load a QuietStarModel with). */
export function quietStarOptionsOf(config: QuietStarConfig): Partial<QuietStarOptions> {
  const out: Record<string, unknown> = {};
  for (const k of QUIETSTAR_OPTION_KEYS) if (config[k] !== undefined) out[k] = config[k];
  return out as Partial<QuietStarOptions>;
}

/** Throws INVALID_ARGUMENT naming the first key of `config` that is not a QuietStarConfig field. */
export function checkConfigKeys(config: unknown, where = 'config'): void {
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new QuietstarError(`${where} must be an object of QuietStarConfig fields`, 'INVALID_ARGUMENT');
  }
  for (const k of Object.keys(config)) {
    if (!KEYS.has(k)) throw new QuietstarError(`${where}.${k} is not a QuietStarConfig field (fields: ${[...KEYS].join(', ')})`, 'INVALID_ARGUMENT');
  }
}

/** Fills defaults and validates; errors name the field. */
export function resolveQuietStarConfig(config: QuietStarConfig = {}): ResolvedQuietStarConfig {
  checkConfigKeys(config);
  const c = config;
  let options: QuietStarOptions;
  try {
    options = resolveQuietStarOptions(quietStarOptionsOf(c));
  } catch (err) {
    // The options resolver names the field; say it is this config's.
    if (err instanceof QuietstarError) throw new QuietstarError(err.message.replace(/^(?:options|quietstar)\./, 'config.'), err.code);
    throw err;
  }
  const lr = num('lr', c.lr ?? 1e-6, (x) => x >= 0, 'a finite number >= 0');
  const batchSize = int('batchSize', c.batchSize ?? 8, 1);
  const microBatchSize = int('microBatchSize', c.microBatchSize ?? Math.min(4, batchSize), 1);
  if (batchSize % microBatchSize !== 0) fail('batchSize', `a multiple of microBatchSize ${microBatchSize}`, batchSize);
  const warmupSteps = int('warmupSteps', c.warmupSteps ?? 20, 0);
  const decaySteps = int('decaySteps', c.decaySteps ?? 100000, 1);
  checkPaths(c, ['outDir', 'metricsFile', 'resumeFrom']);
  const resolved: ResolvedQuietStarConfig = {
    ...options,
    maxSteps: int('maxSteps', c.maxSteps ?? 100, 1),
    lr,
    minLr: num('minLr', c.minLr ?? 0, (x) => x >= 0 && x <= lr, `a number in [0, lr = ${lr}]`),
    warmupSteps,
    schedule: oneOf('schedule', c.schedule ?? 'linear', ['linear', 'cosine', 'constant'] as const),
    decaySteps,
    weightDecay: num('weightDecay', c.weightDecay ?? 0.001, (x) => x >= 0, 'a finite number >= 0'),
    beta1: num('beta1', c.beta1 ?? 0.9, (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    beta2: num('beta2', c.beta2 ?? 0.999, (x) => x >= 0 && x < 1, 'a number in [0, 1)'),
    eps: num('eps', c.eps ?? 1e-8, (x) => x > 0, 'a finite number > 0'),
    bf16State: bool('bf16State', c.bf16State ?? false),
    clip: num('clip', c.clip ?? 1, (x) => x >= 0, 'a finite number >= 0 (0 = off)'),
    batchSize,
    microBatchSize,
    seqLen: int('seqLen', c.seqLen ?? 256, 2),
    seed: int('seed', c.seed ?? 42, 0),
    cropMode: oneOf('cropMode', c.cropMode ?? 'random', ['random', 'start'] as const),
    evalEvery: int('evalEvery', c.evalEvery ?? 10, 0),
    evalBatches: int('evalBatches', c.evalBatches ?? 4, 0),
    checkpointEvery: int('checkpointEvery', c.checkpointEvery ?? 100, 0),
    keepCheckpoints: int('keepCheckpoints', c.keepCheckpoints ?? 0, 0),
    saveDtype: oneOf('saveDtype', c.saveDtype ?? 'F32', ['F32', 'BF16', 'F16'] as const),
  };
  if (c.outDir !== undefined) resolved.outDir = c.outDir;
  if (c.metricsFile !== undefined) resolved.metricsFile = c.metricsFile;
  if (c.resumeFrom !== undefined) resolved.resumeFrom = c.resumeFrom;
  return resolved;
}

/** Gradient-accumulation micro-batches per optimizer step. */
export function accumulationSteps(c: Pick<ResolvedQuietStarConfig, 'batchSize' | 'microBatchSize'>): number {
  return c.batchSize / c.microBatchSize;
}
