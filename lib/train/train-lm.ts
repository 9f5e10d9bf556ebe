/**
 * trainLm: plain next-token language-model training, as an async iterator of per-step metrics.
 *
 * ```ts
 * const data = await loadLmData({ file: 'input.txt', tokenizer, seqLen: 128, evalFraction: 0.1 });
 * for await (const m of trainLm(model, data, { maxSteps: 500, lr: 1e-3, outDir: 'runs/a' })) {
 *   console.log(m.step, m.loss.toFixed(3), m.evalLoss);
 * }
 * ```
 *
 * One optimizer step (llm.c's loop, with accumulation):
 *   zeroGrad
 *   for each of gradAccumulation micro-batches: forward, backward(1 / gradAccumulation)
 *     (the step's loss is the mean of the micro-batch losses, each a mean over its targets)
 *   clip the global gradient norm; lr = schedule(step); AdamW
 * then, on their schedules, evaluation on held-out rows and a checkpoint. Each step's metrics
 * are appended to `<outDir>/metrics.jsonl` and yielded.
 *
 * Exact resume: `resumeFrom` restores weights, AdamW moments, the step and the data position
 * from a checkpoint; continuing gives bit-identical losses and weights on the CPU compared with
 * a run that never stopped (the same data, config and thread count).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import { BatchLoader } from '../data/loader.js';
import type { LmData } from '../data/index.js';
import { QuietstarError } from '../errors.js';
import type { Model } from '../model/model.js';
import { loadCheckpoint, pruneCheckpoints, resolveCheckpointDir, saveCheckpoint } from './checkpoint.js';
import { resolveTrainLmConfig, type ResolvedTrainLmConfig, type TrainLmConfig } from './config.js';
import { evaluateLm } from './eval.js';
import { lrSchedule } from './schedule.js';

/** What {@link trainLm} yields after each optimizer step. */
export interface TrainLmMetrics {
  /** Optimizer updates done (1 after the first). */
  step: number;
  /** Mean training loss of this step's micro-batches (nats per token). */
  loss: number;
  /** Learning rate this step used. */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Target tokens trained on so far (this run and the runs it resumed). */
  tokens: number;
  /** Target tokens per second of this step's forward, backward and update. */
  tokensPerSecond: number;
  /** Wall time since training began (resumed runs included), evaluation and checkpoints included. */
  elapsedMs: number;
  /** Held-out loss (token-weighted mean NLL), on evaluation steps. */
  evalLoss?: number;
  /** exp(evalLoss). */
  evalPerplexity?: number;
  /** The checkpoint folder written after this step, if one was. */
  checkpoint?: string;
}

/** Options of {@link trainLm} that are not hyper-parameters. */
export interface TrainLmOptions {
  /** Stops after the current step (saving a checkpoint when outDir is set). */
  signal?: AbortSignal;
  /** Adds files to each checkpoint folder before it is renamed into place (e.g. the tokenizer). */
  onCheckpoint?: (dir: string) => Promise<void>;
}

export const METRICS_FILE = 'metrics.jsonl';

/** Keeps metrics.jsonl lines up to `step` (a resumed run rewrites the steps after its checkpoint). */
async function truncateMetrics(file: string, step: number): Promise<void> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const kept = text.split('\n').filter((line) => {
    if (line.trim() === '') return false;
    try {
      return (JSON.parse(line) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
  await fsp.writeFile(file, kept.map((l) => l + '\n').join(''));
}

/**
 * Trains `model` on `data.train`, evaluating on `data.eval` when present. See the module
 * comment. The iterator finishes after `config.maxSteps` steps (at once when a resumed
 * checkpoint is already there) or after an abort of `options.signal`, which saves a checkpoint
 * of the last step (with outDir). Breaking out of the loop stops without one.
 */
export async function* trainLm(model: Model, data: LmData, config: TrainLmConfig, options: TrainLmOptions = {}): AsyncGenerator<TrainLmMetrics, void, undefined> {
  if (!data || typeof data !== 'object' || !data.train) throw new QuietstarError('data must be {train: LmDataset, eval?: LmDataset} (see loadLmData)', 'INVALID_ARGUMENT');
  const cfg: ResolvedTrainLmConfig = resolveTrainLmConfig(config, data.train.seqLen);
  const { params } = model;
  try {
    params.buffer('m');
  } catch {
    throw new QuietstarError('trainLm: the model has no optimizer state (create it with {optimizer: true})', 'INVALID_ARGUMENT');
  }
  const lrAt = lrSchedule(cfg);
  const loader = new BatchLoader(data.train, { batchSize: cfg.batchSize, seed: cfg.seed });
  const { signal, onCheckpoint } = options;

  let step = 0;
  let tokens = 0;
  let elapsedBefore = 0;
  if (cfg.resumeFrom !== undefined) {
    const dir = await resolveCheckpointDir(cfg.resumeFrom);
    const state = await loadCheckpoint(model, dir);
    if (state.data.rows !== data.train.rows) {
      throw new QuietstarError(
        `resumeFrom ${dir}: the checkpoint's training data had ${state.data.rows} rows, this data has ${data.train.rows}; resume needs the same data`,
        'INVALID_ARGUMENT',
      );
    }
    if (state.data.seed !== cfg.seed) {
      throw new QuietstarError(`config.seed ${cfg.seed} differs from the checkpoint's data seed ${state.data.seed} (${dir})`, 'INVALID_ARGUMENT');
    }
    loader.seek(state.data);
    step = state.step;
    tokens = state.tokens;
    elapsedBefore = state.elapsedMs;
  }

  const metricsFile = cfg.outDir === undefined ? undefined : join(cfg.outDir, METRICS_FILE);
  if (cfg.outDir !== undefined && metricsFile !== undefined) {
    await fsp.mkdir(cfg.outDir, { recursive: true });
    if (cfg.resumeFrom !== undefined) await truncateMetrics(metricsFile, step);
    else await fsp.writeFile(metricsFile, '');
  }

  const t0 = performance.now();
  const elapsed = (): number => elapsedBefore + (performance.now() - t0);
  const { resumeFrom: _resumeFrom, ...savedConfig } = cfg;
  let lastCheckpointStep = -1;
  const checkpoint = async (metrics: TrainLmMetrics): Promise<string> => {
    const dir = await saveCheckpoint(
      model,
      cfg.outDir as string,
      {
        step,
        data: { ...loader.position, seed: cfg.seed, rows: data.train.rows },
        tokens,
        elapsedMs: elapsed(),
        config: savedConfig,
        lastMetrics: { ...metrics },
      },
      { saveDtype: cfg.saveDtype, ...(onCheckpoint ? { extra: onCheckpoint } : {}) },
    );
    lastCheckpointStep = step;
    await pruneCheckpoints(cfg.outDir as string, cfg.keepCheckpoints);
    return dir;
  };

  let lastMetrics: TrainLmMetrics | undefined;
  while (step < cfg.maxSteps && !signal?.aborted) {
    const stepStart = performance.now();
    const lr = lrAt(step);
    await params.zeroGrad();
    let lossSum = 0;
    let stepTokens = 0;
    for (let a = 0; a < cfg.gradAccumulation; a++) {
      const batch = loader.next();
      const { loss, tokens: n } = await model.forward(batch);
      await model.backward(1 / cfg.gradAccumulation);
      lossSum += loss;
      stepTokens += n;
    }
    const loss = lossSum / cfg.gradAccumulation;
    if (!Number.isFinite(loss)) {
      throw new QuietstarError(`training diverged: loss is ${loss} at step ${step + 1} (weights left as of step ${step})`, 'INTERNAL');
    }
    const gradNorm = await params.clipGradNorm(cfg.clip);
    await params.adamwStep({ lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weightDecay });
    step++;
    tokens += stepTokens;
    const stepMs = performance.now() - stepStart;

    const metrics: TrainLmMetrics = {
      step,
      loss,
      lr,
      gradNorm,
      tokens,
      tokensPerSecond: stepMs > 0 ? (stepTokens * 1000) / stepMs : 0,
      elapsedMs: 0,
    };
    const last = step === cfg.maxSteps || signal?.aborted === true;
    if (data.eval && ((cfg.evalEvery > 0 && step % cfg.evalEvery === 0) || last)) {
      const ev = await evaluateLm(model, data.eval, { batchSize: cfg.evalBatchSize, maxBatches: cfg.evalBatches });
      metrics.evalLoss = ev.loss;
      metrics.evalPerplexity = ev.perplexity;
    }
    metrics.elapsedMs = elapsed();
    if (cfg.outDir !== undefined && ((cfg.checkpointEvery > 0 && step % cfg.checkpointEvery === 0) || last)) {
      metrics.checkpoint = await checkpoint(metrics);
      metrics.elapsedMs = elapsed();
    }
    if (metricsFile) await fsp.appendFile(metricsFile, JSON.stringify(metrics) + '\n');
    lastMetrics = metrics;
    yield metrics;
  }
  // Aborted while the caller held the last step's metrics: that step has no checkpoint yet.
  if (signal?.aborted && cfg.outDir !== undefined && lastMetrics && lastCheckpointStep !== step) await checkpoint(lastMetrics);
}
