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
import { loadCheckpoint, resolveCheckpointDir, saveCheckpoint } from './checkpoint.js';
import { resolveTrainLmConfig, type ResolvedTrainLmConfig, type TrainLmConfig } from './config.js';
import { evaluateLm } from './eval.js';
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
} from './loop.js';
import { lrSchedule } from './schedule.js';

/** What {@link trainLm} yields after each optimizer step. */
export interface TrainLmMetrics extends StepCounters {
  /** Mean training loss of this step's micro-batches (nats per token). */
  loss: number;
  /** Held-out loss (token-weighted mean NLL), on evaluation steps. */
  evalLoss?: number;
  /** exp(evalLoss). */
  evalPerplexity?: number;
}

/** Options of {@link trainLm} that are not hyper-parameters. */
export interface TrainLmOptions {
  /** Stops after the current step (saving a checkpoint when outDir is set). */
  signal?: AbortSignal;
  /** Adds files to each checkpoint folder before it is renamed into place (e.g. the tokenizer). */
  onCheckpoint?: (dir: string) => Promise<void>;
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
  requireOptimizerState(params, 'trainLm', 'create it with {optimizer: true}');
  const lrAt = lrSchedule(cfg);
  const loader = new BatchLoader(data.train, { batchSize: cfg.batchSize, seed: cfg.seed });
  const { signal, onCheckpoint } = options;

  let step = 0;
  let tokens = 0;
  let elapsedBefore = 0;
  if (cfg.resumeFrom !== undefined) {
    const dir = await resolveCheckpointDir(cfg.resumeFrom);
    const state = await loadCheckpoint(model, dir);
    checkResumeData(dir, state.data, data.train.rows, cfg.seed, 'rows');
    loader.seek(state.data);
    step = state.step;
    tokens = state.tokens;
    elapsedBefore = state.elapsedMs;
  }

  const metricsFile = cfg.outDir === undefined ? undefined : join(cfg.outDir, METRICS_FILE);
  if (metricsFile !== undefined) await openMetricsFile(metricsFile, cfg.resumeFrom !== undefined ? step : undefined);

  const elapsed = runClock(elapsedBefore);
  const checkpoints = checkpointer<ResolvedTrainLmConfig, TrainLmMetrics>(
    cfg,
    () => ({ step, data: { ...loader.position, seed: cfg.seed, rows: data.train.rows }, tokens, elapsedMs: elapsed() }),
    (outDir, state) => saveCheckpoint(model, outDir, state, { saveDtype: cfg.saveDtype, ...(onCheckpoint ? { extra: onCheckpoint } : {}) }),
  );

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
    const gradNorm = await optimizerUpdate(params, cfg, lr, loss, step);
    step++;
    tokens += stepTokens;
    const stepMs = performance.now() - stepStart;

    const metrics: TrainLmMetrics = {
      step,
      loss,
      lr,
      gradNorm,
      tokens,
      tokensPerSecond: perSecond(stepTokens, stepMs),
      elapsedMs: 0,
    };
    const last = step === cfg.maxSteps || signal?.aborted === true;
    if (data.eval && due(cfg.evalEvery, step, last)) {
      const ev = await evaluateLm(model, data.eval, { batchSize: cfg.evalBatchSize, maxBatches: cfg.evalBatches });
      metrics.evalLoss = ev.loss;
      metrics.evalPerplexity = ev.perplexity;
    }
    metrics.elapsedMs = elapsed();
    if (checkpoints && due(cfg.checkpointEvery, step, last)) {
      metrics.checkpoint = await checkpoints.save(metrics);
      metrics.elapsedMs = elapsed();
    }
    if (metricsFile) await fsp.appendFile(metricsFile, JSON.stringify(metrics) + '\n');
    lastMetrics = metrics;
    yield metrics;
  }
  if (signal?.aborted && checkpoints) await checkpoints.saveOnAbort(lastMetrics);
}
