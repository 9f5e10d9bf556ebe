/**
 * The Quiet-STaR algorithm options (quietstar-spec §1, §2.3–§2.10, §3): the mirror of the
 * native `QuietStarOptions` (native/include/quietstar/quietstar.h). Defaults are the reference
 * code's (`quiet-star-train.py` and the patched `MistralForCausalLM`); where the paper and the
 * code differ (spec §2.13) the paper's behaviour is an option.
 *
 * ```ts
 * const options = resolveQuietStarOptions({ nAhead: 8, nAheadTalk: 1 });
 * ```
 */
import { QuietstarError } from '../errors.js';

/** How the mixing weight `w` combines the base and the thought (spec §2.8, §2.13). */
export type MixingMode = 'reference' | 'paper';

export interface QuietStarOptions {
  /**
   * Thought schedule length N (`n_ahead`): a start marker, N − 3 sampled thought tokens and an
   * end marker. 1 = no thought (reproduces the base model, spec §9.7); otherwise at least 3.
   * @defaultValue 12
   */
  nAhead: number;
  /**
   * True tokens A scored after each thought (`n_ahead_talk`, the paper's n_true); the thought
   * at position i predicts x_{i+1}..x_{i+A}.
   * @defaultValue 4
   */
  nAheadTalk: number;
  /**
   * Thoughts P sampled per position (`n_passes`); the rows b·P + p are the P copies of
   * document b, and with {@link triceBaseline} their mean reward is the baseline.
   * @defaultValue 2
   */
  nPasses: number;
  /**
   * The start/end marker embeddings are stored divided by this and multiplied back at use,
   * so under Adam they move this many times faster (the paper's "gradient weight 1e2").
   * @defaultValue 100
   */
  embeddingScale: number;
  /**
   * Weight of the base NLL against the mean talk NLL (`original_loss_weight`):
   * NLL = baseLossBeta · (w · base + (1 − w) · talk).
   * @defaultValue 0.5
   */
  originalLossWeight: number;
  /** Scale of the whole NLL term (`base_loss_beta`). @defaultValue 1 */
  baseLossBeta: number;
  /** Scale of the REINFORCE term (`policy_loss_beta`). @defaultValue 1e6 */
  policyLossBeta: number;
  /**
   * Temperature of the policy log-probs log softmax(z / τ)[t] (`reinforce_temperature`); the
   * thoughts themselves are sampled at {@link thoughtTemperature}.
   * @defaultValue 3
   */
  reinforceTemperature: number;
  /**
   * Sampling temperature of the thought tokens; 0 = greedy. The reference's hard Gumbel
   * softmax always samples at 1 whatever its tau (spec §2.7).
   * @defaultValue 1
   */
  thoughtTemperature: number;
  /** Clamp the centred rewards at 0 (`remove_negative_rewards`, the paper's choice). @defaultValue true */
  removeNegativeRewards: boolean;
  /** Centre rewards on the mean over the P thoughts of a position (`trice_mode`). @defaultValue true */
  triceBaseline: boolean;
  /**
   * `'reference'`: logits of (1 − w)·h_base + w·h_thought, w weights the thought (the code);
   * `'paper'`: w weights the base, w·h_base + (1 − w)·h_thought. With a zero-initialised last
   * mixing layer (w ≡ 0) the reference starts at the base model and the paper's at the thought.
   * @defaultValue 'reference'
   */
  mixing: MixingMode;
  /** Squash w into (0, 1) with a sigmoid (several re-implementations); the code's w is unbounded. @defaultValue false */
  mixingSigmoid: boolean;
  /**
   * Memory, not the algorithm: the packed training pass keeps only each layer's output and
   * recomputes the layer's other activations during backward (one more forward of the layers;
   * activation memory per row and layer falls from about 6·d + 3·ffn values to d). The results
   * are identical.
   * @defaultValue false
   */
  recomputeActivations: boolean;
}

/** The reference code's values (spec §3). */
export const DEFAULT_QUIETSTAR_OPTIONS: Readonly<QuietStarOptions> = Object.freeze({
  nAhead: 12,
  nAheadTalk: 4,
  nPasses: 2,
  embeddingScale: 100,
  originalLossWeight: 0.5,
  baseLossBeta: 1,
  policyLossBeta: 1e6,
  reinforceTemperature: 3,
  thoughtTemperature: 1,
  removeNegativeRewards: true,
  triceBaseline: true,
  mixing: 'reference',
  mixingSigmoid: false,
  recomputeActivations: false,
});

const FIELDS = Object.keys(DEFAULT_QUIETSTAR_OPTIONS) as (keyof QuietStarOptions)[];

function bad(field: string, why: string): never {
  throw new QuietstarError(`quietstar.${field}: ${why}`, 'INVALID_ARGUMENT');
}

const show = (v: unknown): string => (typeof v === 'string' ? JSON.stringify(v) : String(v));

function integer(o: QuietStarOptions, field: 'nAhead' | 'nAheadTalk' | 'nPasses', min: number): void {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 1 << 16) {
    bad(field, `must be an integer in [${min}, 65536] (got ${show(v)})`);
  }
}

function number(o: QuietStarOptions, field: keyof QuietStarOptions, ok: (x: number) => boolean, range: string): void {
  const v = o[field];
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) bad(field, `must be a number ${range} (got ${show(v)})`);
}

function boolean(o: QuietStarOptions, field: keyof QuietStarOptions): void {
  if (typeof o[field] !== 'boolean') bad(field, `must be true or false (got ${show(o[field])})`);
}

/**
 * The complete options: defaults filled in, every field checked. INVALID_ARGUMENT naming the
 * field (`quietstar.nAhead: ...`) for a bad value or an unknown field.
 */
export function resolveQuietStarOptions(partial: Partial<QuietStarOptions> = {}): QuietStarOptions {
  if (typeof partial !== 'object' || partial === null || Array.isArray(partial)) {
    throw new QuietstarError('quietstar options must be an object', 'INVALID_ARGUMENT');
  }
  for (const key of Object.keys(partial)) {
    if (!(FIELDS as string[]).includes(key)) bad(key, `unknown option (known: ${FIELDS.join(', ')})`);
  }
  const o: QuietStarOptions = { ...DEFAULT_QUIETSTAR_OPTIONS };
  for (const key of FIELDS) {
    const v = partial[key];
    if (v !== undefined) (o as unknown as Record<string, unknown>)[key] = v;
  }
  integer(o, 'nAhead', 1);
  if (o.nAhead === 2) bad('nAhead', 'must be 1 (no thought) or >= 3 (start marker, nAhead - 3 sampled tokens, end marker) (got 2)');
  integer(o, 'nAheadTalk', 1);
  integer(o, 'nPasses', 1);
  number(o, 'embeddingScale', (x) => x > 0, '> 0');
  number(o, 'originalLossWeight', (x) => x >= 0 && x <= 1, 'in [0, 1]');
  number(o, 'baseLossBeta', (x) => x >= 0, '>= 0');
  number(o, 'policyLossBeta', (x) => x >= 0, '>= 0');
  number(o, 'reinforceTemperature', (x) => x > 0, '> 0');
  number(o, 'thoughtTemperature', (x) => x >= 0, '>= 0');
  boolean(o, 'removeNegativeRewards');
  boolean(o, 'triceBaseline');
  if (o.mixing !== 'reference' && o.mixing !== 'paper') bad('mixing', `must be 'reference' or 'paper' (got ${show(o.mixing)})`);
  boolean(o, 'mixingSigmoid');
  boolean(o, 'recomputeActivations');
  return o;
}

/** The chain steps S = nAhead + nAheadTalk − 2 (start, thought tokens, end, true tokens). */
export function chainSteps(o: QuietStarOptions): number {
  return o.nAhead + o.nAheadTalk - 2;
}

/** Sampled thought tokens per position: nAhead − 3 (0 without a thought). */
export function thoughtLength(o: QuietStarOptions): number {
  return Math.max(o.nAhead - 3, 0);
}
