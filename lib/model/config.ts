/**
 * Model configurations: GPT-2 and the Llama family (Llama, Mistral, Qwen2), described with the
 * fields of their Hugging Face `config.json` under camelCase names.
 *
 * {@link createModelConfig} fills the defaults of each family and validates every field at the
 * boundary, so a bad value fails here with its name (`config.nKvHeads: 3 does not divide
 * nHeads 8`) before any native memory is allocated. The parameter names and shapes a
 * configuration implies come from the native core (`model.params.entries`); TypeScript keeps no
 * copy of that list.
 */
import { QuietstarError } from '../errors.js';

/** The two transformer families the native core implements. */
export type ModelFamily = 'gpt2' | 'llama';

/** Hugging Face `model_type`s that load: every one but `gpt2` is the Llama family. */
export type ModelType = 'gpt2' | 'llama' | 'mistral' | 'qwen2';

export const MODEL_TYPES: readonly ModelType[] = ['gpt2', 'llama', 'mistral', 'qwen2'];

/** A decoder-only transformer. Build one with {@link createModelConfig}. */
export interface ModelConfig {
  /** Hugging Face `model_type`; the family is `gpt2` for `gpt2`, `llama` otherwise. */
  modelType: ModelType;
  /** Vocabulary size (rows of the embedding and of the LM head). */
  vocabSize: number;
  /** Residual width (`n_embd` / `hidden_size`). */
  dModel: number;
  /** Transformer blocks (`n_layer` / `num_hidden_layers`). */
  nLayers: number;
  /** Query heads (`n_head` / `num_attention_heads`). */
  nHeads: number;
  /**
   * Key/value heads (`num_key_value_heads`); must divide `nHeads` (grouped-query attention).
   * GPT-2 has no GQA: it must equal `nHeads`.
   * @defaultValue nHeads
   */
  nKvHeads: number;
  /**
   * Width of one head. GPT-2 requires `nHeads · headDim = dModel`; the Llama family needs it
   * even (RoPE rotates pairs).
   * @defaultValue dModel / nHeads
   */
  headDim: number;
  /**
   * MLP hidden width (`n_inner` / `intermediate_size`).
   * @defaultValue 4 · dModel
   */
  dFF: number;
  /**
   * Longest sequence (`n_positions` / `max_position_embeddings`). GPT-2 allocates this many
   * position embeddings; the Llama family refuses positions beyond it.
   * @defaultValue 1024 for gpt2, 2048 otherwise
   */
  maxSeqLen: number;
  /**
   * Epsilon of the norms (`layer_norm_epsilon` / `rms_norm_eps`).
   * @defaultValue 1e-5
   */
  normEps: number;
  /**
   * RoPE base (`rope_theta`); unused by GPT-2.
   * @defaultValue 10000
   */
  ropeTheta: number;
  /**
   * The LM head shares the token embedding (`tie_word_embeddings`); when false the model has
   * its own `lm_head.weight`.
   * @defaultValue true for gpt2, false otherwise
   */
  tieEmbeddings: boolean;
  /**
   * Biases on the q, k and v projections (Qwen2; Llama's `attention_bias`). GPT-2: always true.
   * @defaultValue true for gpt2 and qwen2, false otherwise
   */
  qkvBias: boolean;
  /**
   * Bias on the attention output projection (Llama's `attention_bias`). GPT-2: always true.
   * @defaultValue true for gpt2, false otherwise
   */
  oBias: boolean;
  /**
   * Biases in the MLP (Llama's `mlp_bias`). GPT-2: always true.
   * @defaultValue true for gpt2, false otherwise
   */
  mlpBias: boolean;
  /**
   * Each query attends to at most this many most recent keys (itself included); 0 = no
   * window. Mistral's `sliding_window`; Qwen2's only with `use_sliding_window`. GPT-2: 0.
   * @defaultValue 0
   */
  slidingWindow: number;
  /** Beginning-of-sequence token, when the model has one. */
  bosTokenId?: number;
  /** End-of-sequence token(s); generation stops on any of them. */
  eosTokenId?: number | number[];
  /** Padding token, when the model has one. */
  padTokenId?: number;
}

/** The fields {@link createModelConfig} requires; everything else has a default. */
export type ModelConfigInput = Partial<ModelConfig> &
  Pick<ModelConfig, 'modelType' | 'vocabSize' | 'dModel' | 'nLayers' | 'nHeads'>;

const FIELDS: ReadonlySet<string> = new Set([
  'modelType',
  'vocabSize',
  'dModel',
  'nLayers',
  'nHeads',
  'nKvHeads',
  'headDim',
  'dFF',
  'maxSeqLen',
  'normEps',
  'ropeTheta',
  'tieEmbeddings',
  'qkvBias',
  'oBias',
  'mlpBias',
  'slidingWindow',
  'bosTokenId',
  'eosTokenId',
  'padTokenId',
]);

/** `gpt2` for GPT-2, `llama` for Llama, Mistral and Qwen2. */
export function modelFamily(c: Pick<ModelConfig, 'modelType'>): ModelFamily {
  return c.modelType === 'gpt2' ? 'gpt2' : 'llama';
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

function show(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

/** Integer in [min, max] (max defaults to 2^31 - 1: the native core indexes with int). */
function checkInt(field: string, v: unknown, min: number, max = 2 ** 31 - 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    bad(`config.${field}: must be an integer in [${min}, ${max}] (got ${show(v)})`);
  }
  return v;
}

function checkPositive(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    bad(`config.${field}: must be a finite number > 0 (got ${show(v)})`);
  }
  return v;
}

function checkBool(field: string, v: unknown): boolean {
  if (typeof v !== 'boolean') bad(`config.${field}: must be a boolean (got ${show(v)})`);
  return v;
}

/**
 * A complete configuration: `partial` with every missing field set to its family's default
 * (see the `@defaultValue` of each {@link ModelConfig} field), validated. Throws
 * `QuietstarError` `INVALID_ARGUMENT` naming the field, e.g.
 * `config.nKvHeads: 3 does not divide nHeads 8`. Unknown fields are refused too (a typo
 * would otherwise silently fall back to a default).
 */
export function createModelConfig(partial: ModelConfigInput): ModelConfig {
  if (typeof partial !== 'object' || partial === null) bad('config: must be an object');
  for (const key of Object.keys(partial)) {
    if (!FIELDS.has(key)) bad(`config.${key}: not a ModelConfig field (fields: ${[...FIELDS].join(', ')})`);
  }
  const p = partial as Partial<Record<keyof ModelConfig, unknown>>;
  if (!MODEL_TYPES.includes(p.modelType as ModelType)) {
    bad(`config.modelType: must be one of ${MODEL_TYPES.join(', ')} (got ${show(p.modelType)})`);
  }
  const modelType = p.modelType as ModelType;
  const gpt2 = modelType === 'gpt2';

  const vocabSize = checkInt('vocabSize', p.vocabSize, 1);
  const dModel = checkInt('dModel', p.dModel, 1);
  const nLayers = checkInt('nLayers', p.nLayers, 1);
  const nHeads = checkInt('nHeads', p.nHeads, 1);
  const nKvHeads = checkInt('nKvHeads', p.nKvHeads ?? nHeads, 1);
  if (nHeads % nKvHeads !== 0) bad(`config.nKvHeads: ${nKvHeads} does not divide nHeads ${nHeads}`);
  if (p.headDim === undefined && dModel % nHeads !== 0) {
    bad(`config.nHeads: ${nHeads} does not divide dModel ${dModel} (or give config.headDim)`);
  }
  const headDim = checkInt('headDim', p.headDim ?? dModel / nHeads, 1);
  const dFF = checkInt('dFF', p.dFF ?? 4 * dModel, 1);
  const maxSeqLen = checkInt('maxSeqLen', p.maxSeqLen ?? (gpt2 ? 1024 : 2048), 1);
  const normEps = checkPositive('normEps', p.normEps ?? 1e-5);
  const ropeTheta = checkPositive('ropeTheta', p.ropeTheta ?? 10000);
  const tieEmbeddings = checkBool('tieEmbeddings', p.tieEmbeddings ?? gpt2);
  const qkvBias = checkBool('qkvBias', p.qkvBias ?? (gpt2 || modelType === 'qwen2'));
  const oBias = checkBool('oBias', p.oBias ?? gpt2);
  const mlpBias = checkBool('mlpBias', p.mlpBias ?? gpt2);
  const slidingWindow = checkInt('slidingWindow', p.slidingWindow ?? 0, 0);

  if (gpt2) {
    // GPT-2's fused c_attn is [dModel, 3·dModel] and its layers always carry biases.
    if (nKvHeads !== nHeads) bad(`config.nKvHeads: GPT-2 has no grouped-query attention; must equal nHeads ${nHeads} (got ${nKvHeads})`);
    if (headDim * nHeads !== dModel) bad(`config.headDim: GPT-2 needs nHeads·headDim = dModel ${dModel} (got ${nHeads}·${headDim})`);
    for (const [field, v] of [['qkvBias', qkvBias], ['oBias', oBias], ['mlpBias', mlpBias]] as const) {
      if (!v) bad(`config.${field}: GPT-2 always has this bias (must be true)`);
    }
    if (slidingWindow !== 0) bad(`config.slidingWindow: GPT-2 has no sliding window (must be 0, got ${slidingWindow})`);
  } else if (headDim % 2 !== 0) {
    bad(`config.headDim: RoPE needs an even head width (got ${headDim})`);
  }

  const config: ModelConfig = {
    modelType,
    vocabSize,
    dModel,
    nLayers,
    nHeads,
    nKvHeads,
    headDim,
    dFF,
    maxSeqLen,
    normEps,
    ropeTheta,
    tieEmbeddings,
    qkvBias,
    oBias,
    mlpBias,
    slidingWindow,
  };
  const tokenId = (field: string, v: unknown): number => checkInt(field, v, 0, vocabSize - 1);
  if (p.bosTokenId !== undefined) config.bosTokenId = tokenId('bosTokenId', p.bosTokenId);
  if (p.padTokenId !== undefined) config.padTokenId = tokenId('padTokenId', p.padTokenId);
  if (p.eosTokenId !== undefined) {
    const eos = p.eosTokenId;
    config.eosTokenId = Array.isArray(eos)
      ? eos.map((id, i) => tokenId(`eosTokenId[${i}]`, id))
      : tokenId('eosTokenId', eos);
  }
  return config;
}
