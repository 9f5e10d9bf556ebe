/**
 * The demo's sizes: corpus, model, the two training phases and the evaluation, as presets.
 * `default` is what `npm run demo` runs (a few minutes on 2 CPU cores); `tiny` is
 * the test's (well under a minute): the same pipeline, too small to learn much.
 */
import { QuietstarError } from '../errors.js';
import type { QuietStarOptions } from '../quietstar/options.js';
import type { ArithmeticCorpusOptions } from './corpus.js';

/** Everything a demo run is sized by. */
export interface DemoSize {
  /** The generated corpus (the seed comes from the run). */
  corpus: Omit<ArithmeticCorpusOptions, 'seed'>;
  /** The tiny Llama (byte vocabulary: 256). */
  model: { dModel: number; nLayers: number; nHeads: number };
  /** Tokens per row in both training phases and in the hard-token analysis. */
  seqLen: number;
  /** Pretraining (trainLm): steps, rows per step, peak lr (warm-up then cosine to lr/10), evaluations. */
  pretrain: { steps: number; batchSize: number; lr: number; warmupSteps: number; evalEvery: number };
  /** Quiet-STaR (trainQuietStar): steps, documents per step and per micro-batch, lr (constant after warm-up). */
  quietstar: { steps: number; batchSize: number; microBatchSize: number; lr: number; warmupSteps: number; evalEvery: number };
  /** The algorithm options (the rest are the reference defaults). */
  options: Partial<QuietStarOptions>;
  /** Held-out problems scored for answer accuracy, and hard-token windows (0 = all held-out documents). */
  eval: { problems: number; windows: number; batchSize: number; examples: number };
}

/** The names of the presets in {@link DEMO_SIZES}. */
export type DemoSizeName = 'tiny' | 'default';

/**
 * The presets. Choices behind `default` (measured on generated 2-digit arithmetic, d 96, 3 layers):
 * - two-digit operands with half of the training answers worked out step by step: the base model
 *   gets a minority of the held-out direct answers right, so there is room to help, and it has
 *   seen worked steps it can sample as thoughts (nAhead 12: 9 thought bytes, e.g. "37+48=85,");
 * - `mixing: 'paper'` (w weights the base, so training starts from the prediction after the
 *   thought and that path is trained from step 0). With the reference's convention the mixing
 *   weight stayed at |w| < 0.01 over 150 steps and thinking changed nothing;
 * - `policyLossBeta` 100 and lr 1e-4: the reference's 1e6 rewrote this fp32 model within 100
 *   steps at lr 1e-4 (held-out NLL 0.8 → 2.6), and at lr 1e-5 nothing moved at all.
 */
export const DEMO_SIZES: Readonly<Record<DemoSizeName, DemoSize>> = Object.freeze({
  tiny: {
    corpus: { trainDocuments: 64, heldOutDocuments: 8, problemsPerDocument: 2, maxOperand: 9, workedShare: 0.5 },
    model: { dModel: 32, nLayers: 1, nHeads: 2 },
    seqLen: 32,
    pretrain: { steps: 20, batchSize: 8, lr: 3e-3, warmupSteps: 2, evalEvery: 10 },
    quietstar: { steps: 4, batchSize: 4, microBatchSize: 4, lr: 1e-3, warmupSteps: 1, evalEvery: 2 },
    options: { nAhead: 6, nAheadTalk: 2, nPasses: 2, mixing: 'paper', policyLossBeta: 100 },
    eval: { problems: 8, windows: 4, batchSize: 4, examples: 2 },
  },
  default: {
    corpus: { trainDocuments: 16000, heldOutDocuments: 64, problemsPerDocument: 3, maxOperand: 50, workedShare: 0.5 },
    model: { dModel: 96, nLayers: 3, nHeads: 4 },
    seqLen: 64,
    pretrain: { steps: 2500, batchSize: 32, lr: 3e-3, warmupSteps: 20, evalEvery: 250 },
    quietstar: { steps: 400, batchSize: 8, microBatchSize: 8, lr: 1e-4, warmupSteps: 20, evalEvery: 50 },
    options: { nAhead: 12, nAheadTalk: 2, nPasses: 2, mixing: 'paper', policyLossBeta: 100 },
    eval: { problems: 128, windows: 0, batchSize: 16, examples: 6 },
  },
});

/** A preset by name; INVALID_ARGUMENT naming the known ones. */
export function demoSize(name: string): DemoSize {
  if (!Object.hasOwn(DEMO_SIZES, name)) {
    throw new QuietstarError(`demo size must be one of ${Object.keys(DEMO_SIZES).join(', ')} (got ${JSON.stringify(name)})`, 'INVALID_ARGUMENT');
  }
  return DEMO_SIZES[name as DemoSizeName];
}
