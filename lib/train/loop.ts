/**
 * The parts of a training loop that trainLm and trainQuietStar share: the metrics file, the
 * resume checks, the optimizer update, the evaluation/checkpoint schedule, the run clock and
 * the checkpoint bookkeeping (so an abort saves the last step exactly once).
 */
import { promises as fsp } from 'node:fs';
import { dirname } from 'node:path';

import { QuietstarError } from '../errors.js';
import type { DataPosition } from '../data/epoch-loader.js';
import type { Parameters } from '../params.js';
import { pruneCheckpoints } from './checkpoint.js';

export const METRICS_FILE = 'metrics.jsonl';

/** The counters in every trainer's per-step metrics. */
export interface StepCounters {
  /** Optimizer updates done (1 after the first). */
  step: number;
  /** Learning rate this step used. */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Tokens trained on so far (this run and the runs it resumed): target tokens; valid text tokens for Quiet-STaR. */
  tokens: number;
  /** Those tokens per second of this step's work (forward, backward and update; thoughts too for Quiet-STaR). */
  tokensPerSecond: number;
  /** Wall time since training began (resumed runs included), evaluation and checkpoints included. */
  elapsedMs: number;
  /** The checkpoint folder written after this step, if one was. */
  checkpoint?: string;
}

/** Keeps metrics lines up to `step` (a resumed run rewrites the steps after its checkpoint). */
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

/** Readies the metrics file: emptied for a fresh run, cut back to `resumedStep` for a resumed one. */
export async function openMetricsFile(file: string, resumedStep: number | undefined): Promise<void> {
  await fsp.mkdir(dirname(file), { recursive: true });
  if (resumedStep !== undefined) await truncateMetrics(file, resumedStep);
  else await fsp.writeFile(file, '');
}

/** Throws unless the model has AdamW moments to update. */
export function requireOptimizerState(params: Parameters, what: string, hint: string): void {
  try {
    params.buffer('m');
  } catch {
    throw new QuietstarError(`${what}: the model has no optimizer state (${hint})`, 'INVALID_ARGUMENT');
  }
}

/** Exact resume needs the data (its size, in `unit`s) and the seed that the checkpoint saw. */
export function checkResumeData(dir: string, saved: { rows: number; seed: number }, rows: number, seed: number, unit: string): void {
  if (saved.rows !== rows) {
    throw new QuietstarError(
      `resumeFrom ${dir}: the checkpoint's training data had ${saved.rows} ${unit}, this data has ${rows}; resume needs the same data`,
      'INVALID_ARGUMENT',
    );
  }
  if (saved.seed !== seed) {
    throw new QuietstarError(`config.seed ${seed} differs from the checkpoint's data seed ${saved.seed} (${dir})`, 'INVALID_ARGUMENT');
  }
}

export interface UpdateConfig {
  clip: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Round parameters and moments to bf16 after each step (AdamWOptions.bf16State). */
  bf16State?: boolean;
}

/**
 * The update after the step's backward passes: refuses a non-finite loss (before touching the
 * weights), clips the global gradient norm, then AdamW. `step` is 0-based. Returns the norm
 * before clipping.
 */
export async function optimizerUpdate(params: Parameters, cfg: UpdateConfig, lr: number, loss: number, step: number): Promise<number> {
  if (!Number.isFinite(loss)) {
    throw new QuietstarError(`training diverged: loss is ${loss} at step ${step + 1} (weights left as of step ${step})`, 'INTERNAL');
  }
  const gradNorm = await params.clipGradNorm(cfg.clip);
  await params.adamwStep({
    lr,
    beta1: cfg.beta1,
    beta2: cfg.beta2,
    eps: cfg.eps,
    weightDecay: cfg.weightDecay,
    bf16State: cfg.bf16State ?? false,
  });
  return gradNorm;
}

/** Whether a periodic action (every `every` steps, 0 = never) runs after `step`; the last step always runs it. */
export function due(every: number, step: number, last: boolean): boolean {
  return (every > 0 && step % every === 0) || last;
}

/** Wall time since training began, counting the `before` ms of the runs this one resumed. */
export function runClock(before: number): () => number {
  const t0 = performance.now();
  return () => before + (performance.now() - t0);
}

/** Target tokens per second of a step that took `ms`. */
export function perSecond(tokens: number, ms: number): number {
  return ms > 0 ? (tokens * 1000) / ms : 0;
}

/** Where a run stands: what a checkpoint's trainer state records besides the config and metrics. */
export interface RunState {
  step: number;
  data: DataPosition & { seed: number; rows: number };
  tokens: number;
  elapsedMs: number;
}

/** The trainer state a checkpoint saves: the run state, the config (less resumeFrom) and the last metrics. */
export type SavedState<C> = RunState & { config: Omit<C, 'resumeFrom'>; lastMetrics: Record<string, unknown> };

export interface Checkpointer<M> {
  /** Saves the current step, with `metrics` as its last metrics; returns the folder. */
  save(metrics: M): Promise<string>;
  /** Aborted while the caller held the last step's metrics: saves that step if it has no checkpoint yet. */
  saveOnAbort(metrics: M | undefined): Promise<void>;
}

/**
 * Checkpoints into `cfg.outDir` (none without one) with `write(outDir, state)`, `now()` giving
 * the run state, pruning to `cfg.keepCheckpoints` after each save.
 */
export function checkpointer<C extends { outDir?: string; keepCheckpoints: number; resumeFrom?: string }, M extends object>(
  cfg: C,
  now: () => RunState,
  write: (outDir: string, state: SavedState<C>) => Promise<string>,
): Checkpointer<M> | undefined {
  const { outDir } = cfg;
  if (outDir === undefined) return undefined;
  const { resumeFrom: _resumeFrom, ...config } = cfg;
  let lastStep = -1;
  const save = async (metrics: M): Promise<string> => {
    const state = now();
    const dir = await write(outDir, { ...state, config, lastMetrics: { ...metrics } as Record<string, unknown> });
    lastStep = state.step;
    await pruneCheckpoints(outDir, cfg.keepCheckpoints);
    return dir;
  };
  return {
    save,
    async saveOnAbort(metrics) {
      if (metrics && lastStep !== now().step) await save(metrics);
    },
  };
}
