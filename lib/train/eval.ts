/**
 * Evaluation loss and perplexity: the token-weighted mean NLL over held-out rows (every
 * predicted token counts once, whatever batch it falls in), and exp of it.
 */
import type { LmDataset } from '../data/dataset.js';
import { evalBatches, type Batch } from '../data/loader.js';
import type { TokenBatch } from '../model/model.js';

/** What evaluation needs from a model (Model satisfies it). */
export interface ScoringModel {
  tokenLosses(batch: TokenBatch): Promise<Float32Array>;
}

export interface EvalResult {
  /** Mean NLL in nats per predicted token. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Predicted (non-ignored) tokens scored. */
  tokens: number;
}

/** Sums per-token losses over batches (float64 accumulation). */
export async function scoreBatches(model: ScoringModel, batches: Iterable<Batch>): Promise<EvalResult> {
  let sum = 0;
  let tokens = 0;
  for (const batch of batches) {
    const losses = await model.tokenLosses(batch); // (B·T), 0 where the target is -100
    for (let i = 0; i < losses.length; i++) {
      if (batch.targets[i] !== -100) {
        sum += losses[i] as number;
        tokens++;
      }
    }
  }
  const loss = tokens > 0 ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens };
}

/**
 * Evaluates `dataset`'s rows in order, `batchSize` rows at a time, at most `maxBatches`
 * batches (0 = all). NaN loss when there is no target.
 */
export async function evaluateLm(model: ScoringModel, dataset: LmDataset, options: { batchSize: number; maxBatches?: number }): Promise<EvalResult> {
  return scoreBatches(model, evalBatches(dataset, options.batchSize, options.maxBatches ?? 0));
}
