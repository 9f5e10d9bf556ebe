/**
 * trainQuietStar: Quiet-STaR training (spec §2.12, §3) as an async iterator of per-step metrics.
 *
 * ```ts
 * const qs = await QuietStarModel.fromPretrained(engine, 'models/base', { quietstar: { nAhead: 8 } });
 * const data = await loadQuietStarData({ file: 'docs.jsonl', tokenizer: qs.tokenizer });
 * for await (const m of trainQuietStar(qs, data, { nAhead: 8, outDir: 'runs/a' })) {
 *   console.log(m.step, m.loss, m.nllBase, m.nllTalk, m.rewardMean);
 * }
 * await qs.save('runs/a');
 * ```
 *
 * One optimizer step (the reference's HF Trainer step with gradient accumulation):
 *   zeroGrad
 *   for each of batchSize / microBatchSize micro-batches of microBatchSize documents:
 *     qs.step(batch, thoughtSeed(seed, step, micro), {lossScale: 1 / accumulation})
 *     (sample thoughts without gradients, then one packed differentiable pass; the step's
 *     metrics are the means of the micro-batches' — min/max for the mixing-weight extremes)
 *   clip the global gradient norm (model and extras: one buffer); lr = schedule(step); AdamW
 * then, on their schedules, the Quiet-STaR loss on held-out documents (no backward; fixed
 * thought seeds, so evaluations differ only by the weights) and a checkpoint. Each step's
 * metrics are appended, with snake_case keys, to the metrics file and yielded.
 *
 * Exact resume: `resumeFrom` restores weights, AdamW moments, the step and the data position;
 * the document order, crop windows and thought noise are pure functions of (seed, epoch,
 * document, step, micro-batch), so continuing gives bit-identical metrics and weights on the
 * CPU compared with a run that never stopped (same data, config and thread count).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import { Xoshiro128 } from '../data/prng.js';
import { QuietstarError } from '../errors.js';
import { modelFamily } from '../model/config.js';
import { resolveCheckpointDir } from '../train/checkpoint.js';
import {
  METRICS_FILE,
  checkResumeData,
  checkpointer,
  due,
  openMetricsFile,
  optimizerUpdate,
  perSecond,
  requireOptimizerState,
  runClock,
  type StepCounters,
} from '../train/loop.js';
import { lrSchedule } from '../train/schedule.js';
import { loadQuietStarCheckpoint, saveQuietStarCheckpoint } from './checkpoint.js';
import {
  QUIETSTAR_OPTION_KEYS,
  accumulationSteps,
  resolveQuietStarConfig,
  type QuietStarConfig,
  type ResolvedQuietStarConfig,
} from './config.js';
import { QuietStarLoader, quietStarEvalBatches, type QuietStarData, type QuietStarDataBatch } from './data.js';
import type { QuietStarModel, QuietStarStepMetrics } from './model.js';
import { chainSteps } from './options.js';

/**
 * What {@link trainQuietStar} yields after each optimizer step: the terms of
 * {@link QuietStarStepMetrics} as means over the step's micro-batches (min and max for the
 * mixing-weight extremes), and the step's counters.
 */
export interface QuietStarTrainMetrics extends Omit<QuietStarStepMetrics, 'tokens'>, StepCounters {
  /** Held-out Quiet-STaR loss, base NLL and talk NLL (token-weighted over held-out micro-batches), on evaluation steps. */
  evalLoss?: number;
  evalNllBase?: number;
  evalNllTalk?: number;
}

/** Options of {@link trainQuietStar} that are not hyper-parameters. */
export interface QuietStarTrainOptions {
  /** Stops after the current step (saving a checkpoint when outDir is set). */
  signal?: AbortSignal;
}

export { METRICS_FILE };

// Keys of the streams derived from the run's seed ('THNK', 'EVAL').
const THOUGHT_KEY = 0x54484e4b;
const EVAL_KEY = 0x4556414c;

/**
 * The thought-noise seed of micro-batch `micro` of optimizer step `step` (0-based): a pure
 * function, so a resumed run draws the same thoughts. < 2^32.
 */
export function thoughtSeed(seed: number, step: number, micro: number, key = THOUGHT_KEY): number {
  return new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296) >>> 0, key, step >>> 0, micro >>> 0).nextUint32();
}

/** camelCase → snake_case (`nllBase` → `nll_base`). */
function snake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** One metrics line: the metrics with snake_case keys. */
export function metricsRecord(m: QuietStarTrainMetrics): Record<string, unknown> {
  return Object.fromEntries(Object.entries(m).map(([k, v]) => [snake(k), v]));
}

/** Means over micro-batches (min/max for the extremes, sum for tokens). */
function combine(parts: QuietStarStepMetrics[]): QuietStarStepMetrics {
  const n = parts.length;
  const mean = (f: (m: QuietStarStepMetrics) => number): number => parts.reduce((s, m) => s + f(m), 0) / n;
  return {
    loss: mean((m) => m.loss),
    nllBase: mean((m) => m.nllBase),
    nllTalk: mean((m) => m.nllTalk),
    policyLoss: mean((m) => m.policyLoss),
    rewardMean: mean((m) => m.rewardMean),
    rewardStd: mean((m) => m.rewardStd),
    positiveShare: mean((m) => m.positiveShare),
    mixMean: mean((m) => m.mixMean),
    mixStd: mean((m) => m.mixStd),
    mixMin: Math.min(...parts.map((m) => m.mixMin)),
    mixMax: Math.max(...parts.map((m) => m.mixMax)),
    tokens: parts.reduce((s, m) => s + m.tokens, 0),
  };
}

/** The config in effect: the model's algorithm options, which `config` may restate but not change. */
function resolveFor(qs: QuietStarModel, config: QuietStarConfig): ResolvedQuietStarConfig {
  const resolved = resolveQuietStarConfig(config);
  for (const k of QUIETSTAR_OPTION_KEYS) {
    if (config[k] !== undefined && config[k] !== qs.options[k]) {
      throw new QuietstarError(
        `config.${k} is ${JSON.stringify(config[k])} but the QuietStarModel was made with ${k} ${JSON.stringify(qs.options[k])}; ` +
          'pass the algorithm options when creating or loading the model ({quietstar: {...}})',
        'INVALID_ARGUMENT',
      );
    }
  }
  const limit = maxSeqLenFor(qs);
  if (resolved.seqLen > limit) {
    fail('seqLen', limit, qs);
  }
  return { ...resolved, ...qs.options };
}

/**
 * The longest T the model takes: its maxSeqLen; for GPT-2's learned positions T − 1 + S must
 * stay below it too, as chain tokens sit at positions i + s (spec §2.6).
 */
export function maxSeqLenFor(qs: Pick<QuietStarModel, 'model' | 'options'>): number {
  const { maxSeqLen } = qs.model.config;
  if (modelFamily(qs.model.config) !== 'gpt2' || qs.options.nAhead === 1) return maxSeqLen;
  return maxSeqLen - chainSteps(qs.options);
}

function fail(field: 'seqLen', limit: number, qs: QuietStarModel): never {
  const gpt2 = modelFamily(qs.model.config) === 'gpt2';
  throw new QuietstarError(
    `config.${field} must be at most ${limit} for this model (maxSeqLen ${qs.model.config.maxSeqLen}` +
      `${gpt2 ? `, less the ${chainSteps(qs.options)} chain steps that follow the last position` : ''})`,
    'INVALID_ARGUMENT',
  );
}

/**
 * Held-out Quiet-STaR loss: thoughts sampled with fixed seeds, one forward pass per
 * micro-batch without backward; each term's mean weighted by the batch's valid tokens.
 */
export async function evaluateQuietStar(
  qs: QuietStarModel,
  data: QuietStarData['train'],
  config: Pick<ResolvedQuietStarConfig, 'microBatchSize' | 'seqLen' | 'seed' | 'cropMode' | 'evalBatches'>,
): Promise<{ loss: number; nllBase: number; nllTalk: number; tokens: number }> {
  let loss = 0;
  let nllBase = 0;
  let nllTalk = 0;
  let tokens = 0;
  let i = 0;
  for (const batch of quietStarEvalBatches(data, { batchSize: config.microBatchSize, seqLen: config.seqLen, seed: config.seed, cropMode: config.cropMode, maxBatches: config.evalBatches })) {
    const thoughts = await qs.sampleThoughts(batch, thoughtSeed(config.seed, 0, i++, EVAL_KEY));
    const m = await qs.forwardBackward(batch, thoughts, { backward: false });
    loss += m.loss * batch.tokens;
    nllBase += m.nllBase * batch.tokens;
    nllTalk += m.nllTalk * batch.tokens;
    tokens += batch.tokens;
  }
  const d = tokens > 0 ? tokens : NaN;
  return { loss: loss / d, nllBase: nllBase / d, nllTalk: nllTalk / d, tokens };
}

/**
 * Trains `qs` on `data.train`, evaluating on `data.eval` when present. See the module
 * comment. The iterator finishes after `config.maxSteps` steps (at once when a resumed
 * checkpoint is already there) or after an abort of `options.signal`, which saves a
 * checkpoint of the last step (with outDir). Breaking out of the loop stops without one.
 */
export async function* trainQuietStar(
  qs: QuietStarModel,
  data: QuietStarData,
  config: QuietStarConfig = {},
  options: QuietStarTrainOptions = {},
): AsyncGenerator<QuietStarTrainMetrics, void, undefined> {
  if (!data || typeof data !== 'object' || !data.train) {
    throw new QuietstarError('data must be {train: QuietStarDataset, eval?: QuietStarDataset} (see loadQuietStarData)', 'INVALID_ARGUMENT');
  }
  const cfg = resolveFor(qs, config);
  const { params } = qs;
  requireOptimizerState(params, 'trainQuietStar', 'create or load it with optimizer buffers');
  const accumulation = accumulationSteps(cfg);
  const lrAt = lrSchedule({ lr: cfg.lr, minLr: cfg.minLr, warmupSteps: cfg.warmupSteps, schedule: cfg.schedule, maxSteps: cfg.decaySteps });
  const loader = new QuietStarLoader(data.train, { batchSize: cfg.microBatchSize, seqLen: cfg.seqLen, seed: cfg.seed, cropMode: cfg.cropMode });
  const { signal } = options;

  let step = 0;
  let tokens = 0;
  let elapsedBefore = 0;
  if (cfg.resumeFrom !== undefined) {
    const dir = await resolveCheckpointDir(cfg.resumeFrom);
    const state = await loadQuietStarCheckpoint(qs, dir);
    checkResumeData(dir, state.data, data.train.rows, cfg.seed, 'documents');
    for (const k of QUIETSTAR_OPTION_KEYS) {
      if (state.quietstar[k] !== cfg[k]) {
        throw new QuietstarError(
          `config.${k} ${JSON.stringify(cfg[k])} differs from the checkpoint's ${JSON.stringify(state.quietstar[k])} (${dir}); resume needs the same algorithm options`,
          'INVALID_ARGUMENT',
        );
      }
    }
    loader.seek(state.data);
    step = state.step;
    tokens = state.tokens;
    elapsedBefore = state.elapsedMs;
  }

  const metricsFile = cfg.metricsFile ?? (cfg.outDir !== undefined ? join(cfg.outDir, METRICS_FILE) : undefined);
  if (cfg.outDir !== undefined) await fsp.mkdir(cfg.outDir, { recursive: true });
  if (metricsFile !== undefined) await openMetricsFile(metricsFile, cfg.resumeFrom !== undefined ? step : undefined);

  const elapsed = runClock(elapsedBefore);
  const checkpoints = checkpointer<ResolvedQuietStarConfig, QuietStarTrainMetrics>(
    cfg,
    () => ({ step, data: { ...loader.position, seed: cfg.seed, rows: data.train.rows }, tokens, elapsedMs: elapsed() }),
    (outDir, state) => saveQuietStarCheckpoint(qs, outDir, state, { saveDtype: cfg.saveDtype }),
  );

  let lastMetrics: QuietStarTrainMetrics | undefined;
  while (step < cfg.maxSteps && !signal?.aborted) {
    const stepStart = performance.now();
    const lr = lrAt(step);
    await params.zeroGrad();
    const parts: QuietStarStepMetrics[] = [];
    for (let a = 0; a < accumulation; a++) {
      const batch: QuietStarDataBatch = loader.next();
      parts.push(await qs.step(batch, thoughtSeed(cfg.seed, step, a), { lossScale: 1 / accumulation }));
    }
    const m = combine(parts);
    const gradNorm = await optimizerUpdate(params, cfg, lr, m.loss, step);
    step++;
    tokens += m.tokens;
    const stepMs = performance.now() - stepStart;

    const { tokens: stepTokens, ...terms } = m;
    const metrics: QuietStarTrainMetrics = {
      step,
      ...terms,
      lr,
      gradNorm,
      tokens,
      tokensPerSecond: perSecond(stepTokens, stepMs),
      elapsedMs: 0,
    };
    const last = step === cfg.maxSteps || signal?.aborted === true;
    if (data.eval && data.eval.rows > 0 && due(cfg.evalEvery, step, last)) {
      const ev = await evaluateQuietStar(qs, data.eval, cfg);
      metrics.evalLoss = ev.loss;
      metrics.evalNllBase = ev.nllBase;
      metrics.evalNllTalk = ev.nllTalk;
    }
    metrics.elapsedMs = elapsed();
    if (checkpoints && due(cfg.checkpointEvery, step, last)) {
      metrics.checkpoint = await checkpoints.save(metrics);
      metrics.elapsedMs = elapsed();
    }
    if (metricsFile !== undefined) await fsp.appendFile(metricsFile, JSON.stringify(metricsRecord(metrics)) + '\n');
    lastMetrics = metrics;
    yield metrics;
  }
  if (signal?.aborted && checkpoints) await checkpoints.saveOnAbort(lastMetrics);
}
