/**
 * Hugging Face `config.json` <-> {@link ModelConfig}, by `model_type` (gpt2, llama, mistral,
 * qwen2). Missing fields take the defaults of the transformers config classes (GPT2Config,
 * LlamaConfig, MistralConfig, Qwen2Config), as Python would; a value the native core cannot
 * honour (rope_scaling, another activation, ...) is a BAD_FILE error naming the file and field.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import { QuietstarError } from '../errors.js';
import { MODEL_TYPES, createModelConfig, type ModelConfig, type ModelConfigInput, type ModelType } from '../model/config.js';

type Json = Record<string, unknown>;

/** Reads and parses a JSON file: NOT_FOUND when missing, BAD_FILE when not a JSON object. */
export async function readJsonFile(path: string): Promise<Json> {
  let text: string;
  try {
    text = await fsp.readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new QuietstarError(`${path}: no such file`, 'NOT_FOUND');
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new QuietstarError(`${path}: not valid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new QuietstarError(`${path}: not a JSON object`, 'BAD_FILE');
  }
  return json as Json;
}

type TokenIds = Pick<ModelConfigInput, 'bosTokenId' | 'eosTokenId' | 'padTokenId'>;

/** Field readers that name `<file>: <field>: <why>` on a bad value. */
class Fields {
  constructor(
    readonly json: Json,
    readonly file: string,
  ) {}

  /** Whether the field is present (null included). */
  has(field: string): boolean {
    return Object.hasOwn(this.json, field);
  }

  fail(field: string, why: string): never {
    throw new QuietstarError(`${this.file}: ${field}: ${why}`, 'BAD_FILE');
  }

  /** The value, or undefined when absent or null. */
  raw(field: string): unknown {
    const v = this.json[field];
    return v === null ? undefined : v;
  }

  int(field: string, fallback?: number): number {
    const v = this.raw(field) ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      this.fail(field, v === undefined ? 'missing' : `must be an integer >= 0 (got ${JSON.stringify(v)})`);
    }
    return v;
  }

  optInt(field: string): number | undefined {
    return this.raw(field) === undefined ? undefined : this.int(field);
  }

  num(field: string, fallback: number): number {
    const v = this.raw(field) ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `must be a number (got ${JSON.stringify(v)})`);
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.raw(field) ?? fallback;
    if (typeof v !== 'boolean') this.fail(field, `must be true or false (got ${JSON.stringify(v)})`);
    return v;
  }

  /** A string field that must be one of `allowed`. */
  oneOf(field: string, fallback: string, allowed: readonly string[]): string {
    const v = this.raw(field) ?? fallback;
    if (typeof v !== 'string' || !allowed.includes(v)) {
      this.fail(field, `unsupported value ${JSON.stringify(v)} (supported: ${allowed.join(', ')})`);
    }
    return v;
  }

  /**
   * bos/eos/pad: an integer, or for eos a list of integers; null = none. An absent field takes
   * the config class's default when that id exists in the vocabulary.
   */
  tokenIds(vocabSize: number, defaults: { bos?: number; eos?: number } = {}): TokenIds {
    const out: TokenIds = {};
    const fallback = (field: string, d: number | undefined): number | undefined =>
      !this.has(field) && d !== undefined && d < vocabSize ? d : undefined;
    const bos = this.optInt('bos_token_id') ?? fallback('bos_token_id', defaults.bos);
    // Some published configs carry a pad id that names no token (Llama's -1, or vocab_size after
    // a resize that never happened): padding is then undefined, as transformers treats it.
    const rawPad = this.raw('pad_token_id');
    const pad = typeof rawPad === 'number' && Number.isSafeInteger(rawPad) && rawPad >= 0 && rawPad < vocabSize ? rawPad : undefined;
    const eos = this.raw('eos_token_id');
    const inVocab = (field: string, id: number): number =>
      id < vocabSize ? id : this.fail(field, `${id} is outside the vocabulary (vocab_size ${vocabSize})`);
    if (bos !== undefined) out.bosTokenId = inVocab('bos_token_id', bos);
    if (pad !== undefined) out.padTokenId = pad;
    if (Array.isArray(eos)) {
      if (!eos.every((id) => Number.isSafeInteger(id) && (id as number) >= 0)) {
        this.fail('eos_token_id', `must be integers >= 0 (got ${JSON.stringify(eos)})`);
      }
      out.eosTokenId = (eos as number[]).map((id) => inVocab('eos_token_id', id));
    } else if (eos !== undefined) {
      out.eosTokenId = inVocab('eos_token_id', this.int('eos_token_id'));
    } else {
      const d = fallback('eos_token_id', defaults.eos);
      if (d !== undefined) out.eosTokenId = d;
    }
    return out;
  }
}

function gpt2FromHF(f: Fields): ModelConfigInput {
  const dModel = f.int('n_embd', 768);
  // gelu_new and gelu_pytorch_tanh are both the tanh approximation the native GELU computes.
  f.oneOf('activation_function', 'gelu_new', ['gelu_new', 'gelu_pytorch_tanh']);
  if (f.bool('scale_attn_by_inverse_layer_idx', false)) f.fail('scale_attn_by_inverse_layer_idx', 'unsupported value true');
  if (!f.bool('scale_attn_weights', true)) f.fail('scale_attn_weights', 'unsupported value false');
  const nHeads = f.int('n_head', 12);
  if (nHeads === 0 || dModel % nHeads !== 0) f.fail('n_head', `${nHeads} does not divide n_embd ${dModel}`);
  const vocabSize = f.int('vocab_size', 50257);
  return {
    modelType: 'gpt2',
    vocabSize,
    dModel,
    nLayers: f.int('n_layer', 12),
    nHeads,
    nKvHeads: nHeads,
    headDim: dModel / nHeads,
    dFF: f.int('n_inner', 4 * dModel),
    maxSeqLen: f.int('n_positions', 1024),
    normEps: f.num('layer_norm_epsilon', 1e-5),
    tieEmbeddings: f.bool('tie_word_embeddings', true),
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    slidingWindow: 0,
    ...f.tokenIds(vocabSize, { bos: 50256, eos: 50256 }),
  };
}

/** Defaults of the Llama-family config classes that differ between them. */
type LlamaType = Exclude<ModelType, 'gpt2'>;
const LLAMA_DEFAULTS: Record<LlamaType, { vocab: number; hidden: number; inter: number; kv?: number; maxPos: number; eps: number }> = {
  llama: { vocab: 32000, hidden: 4096, inter: 11008, maxPos: 2048, eps: 1e-6 },
  mistral: { vocab: 32000, hidden: 4096, inter: 14336, kv: 8, maxPos: 4096 * 32, eps: 1e-6 },
  qwen2: { vocab: 151936, hidden: 4096, inter: 22016, kv: 32, maxPos: 32768, eps: 1e-6 },
};

/** RoPE: plain rotary only (rope_scaling null or of rope_type 'default'). */
function ropeTheta(f: Fields): number {
  for (const field of ['rope_scaling', 'rope_parameters']) {
    const v = f.raw(field);
    if (v === undefined) continue;
    const type = typeof v === 'object' ? ((v as Json).rope_type ?? (v as Json).type) : undefined;
    if (type !== 'default') {
      f.fail(field, `unsupported (${JSON.stringify(v)}); only plain RoPE (null or rope_type "default") is implemented`);
    }
  }
  const params = f.raw('rope_parameters') as Json | undefined;
  if (params?.rope_theta !== undefined) return new Fields(params, `${f.file}: rope_parameters`).num('rope_theta', 10000);
  return f.num('rope_theta', 10000);
}

/**
 * The one window every layer uses (0 = none). Per-layer windows (Qwen2's max_window_layers
 * between 0 and num_hidden_layers, or a mixed layer_types) are refused.
 */
function slidingWindow(f: Fields, modelType: ModelType, nLayers: number): number {
  const layerTypes = f.raw('layer_types');
  let sliding: boolean[];
  if (layerTypes !== undefined) {
    const known = (t: unknown): boolean => t === 'full_attention' || t === 'sliding_attention';
    if (!Array.isArray(layerTypes) || layerTypes.length !== nLayers || !layerTypes.every(known)) {
      f.fail('layer_types', `must list "full_attention" or "sliding_attention" for each of the ${nLayers} layers`);
    }
    sliding = layerTypes.map((t) => t === 'sliding_attention');
  } else if (modelType === 'mistral') {
    sliding = new Array<boolean>(nLayers).fill(true);
  } else if (modelType === 'qwen2') {
    // transformers' Qwen2: layer i uses the window iff use_sliding_window and i >= max_window_layers.
    const use = f.bool('use_sliding_window', false);
    const maxWindowLayers = f.int('max_window_layers', 28);
    sliding = Array.from({ length: nLayers }, (_, i) => use && i >= maxWindowLayers);
    if (sliding.some((s) => s) && !sliding.every((s) => s)) {
      const why = `${maxWindowLayers} gives a sliding window to only some of the ${nLayers} layers: unsupported (per-layer windows)`;
      f.fail('max_window_layers', why);
    }
  } else {
    sliding = new Array<boolean>(nLayers).fill(false);
  }
  if (sliding.some((s) => s) && !sliding.every((s) => s)) {
    f.fail('layer_types', 'mixes full and sliding attention: unsupported (per-layer windows)');
  }
  if (nLayers === 0 || !sliding[0]) return 0;
  // Absent: the config class's default 4096; null: no window (full attention).
  const window = f.has('sliding_window') ? f.raw('sliding_window') : 4096;
  if (window === undefined) return 0;
  if (typeof window !== 'number' || !Number.isSafeInteger(window) || window < 1) {
    f.fail('sliding_window', `must be an integer >= 1 or null (got ${JSON.stringify(window)})`);
  }
  return window;
}

function llamaFromHF(f: Fields, modelType: LlamaType): ModelConfigInput {
  const d = LLAMA_DEFAULTS[modelType];
  f.oneOf('hidden_act', 'silu', ['silu']);
  const dModel = f.int('hidden_size', d.hidden);
  const nHeads = f.int('num_attention_heads', 32);
  const nKvHeads = f.int('num_key_value_heads', d.kv ?? nHeads);
  if (nHeads === 0) f.fail('num_attention_heads', 'must be >= 1');
  if (nKvHeads === 0 || nHeads % nKvHeads !== 0) f.fail('num_key_value_heads', `${nKvHeads} does not divide num_attention_heads ${nHeads}`);
  const headDim = f.optInt('head_dim');
  if (headDim === undefined && dModel % nHeads !== 0) {
    f.fail('num_attention_heads', `${nHeads} does not divide hidden_size ${dModel} (and no head_dim)`);
  }
  const nLayers = f.int('num_hidden_layers', 32);
  const attentionBias = modelType === 'llama' ? f.bool('attention_bias', false) : false;
  const vocabSize = f.int('vocab_size', d.vocab);
  return {
    modelType,
    vocabSize,
    dModel,
    nLayers,
    nHeads,
    nKvHeads,
    headDim: headDim ?? dModel / nHeads,
    dFF: f.int('intermediate_size', d.inter),
    maxSeqLen: f.int('max_position_embeddings', d.maxPos),
    normEps: f.num('rms_norm_eps', d.eps),
    ropeTheta: ropeTheta(f),
    tieEmbeddings: f.bool('tie_word_embeddings', false),
    qkvBias: modelType === 'qwen2' ? true : attentionBias,
    oBias: attentionBias,
    mlpBias: modelType === 'llama' ? f.bool('mlp_bias', false) : false,
    slidingWindow: slidingWindow(f, modelType, nLayers),
    ...f.tokenIds(vocabSize, modelType === 'qwen2' ? {} : { bos: 1, eos: 2 }),
  };
}

/**
 * A {@link ModelConfig} from a parsed `config.json`; `file` names it in errors
 * (`<file>: <field>: <why>`, code BAD_FILE).
 */
export function modelConfigFromHF(json: unknown, file = 'config.json'): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new QuietstarError(`${file}: not a JSON object`, 'BAD_FILE');
  }
  const f = new Fields(json as Json, file);
  const modelType = f.raw('model_type');
  if (!MODEL_TYPES.includes(modelType as ModelType)) {
    f.fail('model_type', `${JSON.stringify(modelType)} is not supported (supported: ${MODEL_TYPES.join(', ')})`);
  }
  const input = modelType === 'gpt2' ? gpt2FromHF(f) : llamaFromHF(f, modelType as LlamaType);
  try {
    return createModelConfig(input);
  } catch (err) {
    if (err instanceof QuietstarError) throw new QuietstarError(`${file}: ${err.message}`, 'BAD_FILE');
    throw err;
  }
}

/** Reads `<dir>/config.json` into a {@link ModelConfig}. */
export async function readModelConfig(dir: string): Promise<ModelConfig> {
  const path = join(dir, 'config.json');
  return modelConfigFromHF(await readJsonFile(path), path);
}

/** torch dtype names for config.json's `torch_dtype`. */
export type TorchDType = 'float32' | 'bfloat16' | 'float16';

function unrepresentable(field: string, why: string): never {
  throw new QuietstarError(`modelConfigToHF: config.${field}: ${why}`, 'INVALID_ARGUMENT');
}

/** bos/eos/pad ids; an unknown one is written as null (absent would mean the class default). */
function tokenFields(c: ModelConfig): Json {
  return { bos_token_id: c.bosTokenId ?? null, eos_token_id: c.eosTokenId ?? null, pad_token_id: c.padTokenId ?? null };
}

/**
 * The `config.json` transformers loads for `c` (GPT2LMHeadModel, LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM). INVALID_ARGUMENT naming the field when `c` has a
 * combination the Python class cannot express (e.g. a Llama with q/k/v biases but no o bias).
 */
export function modelConfigToHF(c: ModelConfig, options: { torchDtype?: TorchDType } = {}): Json {
  const torch_dtype = options.torchDtype ?? 'float32';
  if (c.modelType === 'gpt2') {
    return {
      architectures: ['GPT2LMHeadModel'],
      model_type: 'gpt2',
      vocab_size: c.vocabSize,
      n_embd: c.dModel,
      n_layer: c.nLayers,
      n_head: c.nHeads,
      n_inner: c.dFF,
      n_positions: c.maxSeqLen,
      n_ctx: c.maxSeqLen,
      layer_norm_epsilon: c.normEps,
      activation_function: 'gelu_new',
      scale_attn_weights: true,
      scale_attn_by_inverse_layer_idx: false,
      reorder_and_upcast_attn: false,
      tie_word_embeddings: c.tieEmbeddings,
      ...tokenFields(c),
      torch_dtype,
    };
  }
  const common: Json = {
    model_type: c.modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.dModel,
    intermediate_size: c.dFF,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    head_dim: c.headDim,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    hidden_act: 'silu',
    tie_word_embeddings: c.tieEmbeddings,
  };
  if (c.modelType === 'llama') {
    if (c.qkvBias !== c.oBias) {
      unrepresentable('qkvBias', `Llama's attention_bias covers q, k, v and o together (qkvBias ${c.qkvBias}, oBias ${c.oBias})`);
    }
    if (c.slidingWindow !== 0) unrepresentable('slidingWindow', 'Llama has no sliding window (use modelType mistral)');
    const biases = { attention_bias: c.qkvBias, mlp_bias: c.mlpBias };
    return { architectures: ['LlamaForCausalLM'], ...common, ...biases, ...tokenFields(c), torch_dtype };
  }
  if (c.modelType === 'mistral') {
    for (const field of ['qkvBias', 'oBias', 'mlpBias'] as const) if (c[field]) unrepresentable(field, 'Mistral has no biases');
    return {
      architectures: ['MistralForCausalLM'],
      ...common,
      sliding_window: c.slidingWindow > 0 ? c.slidingWindow : null,
      ...tokenFields(c),
      torch_dtype,
    };
  }
  if (!c.qkvBias) unrepresentable('qkvBias', 'Qwen2 always has q/k/v biases');
  if (c.oBias || c.mlpBias) unrepresentable(c.oBias ? 'oBias' : 'mlpBias', 'Qwen2 has no o-projection or MLP biases');
  return {
    architectures: ['Qwen2ForCausalLM'],
    ...common,
    use_sliding_window: c.slidingWindow > 0,
    sliding_window: c.slidingWindow > 0 ? c.slidingWindow : null,
    max_window_layers: c.slidingWindow > 0 ? 0 : c.nLayers,
    ...tokenFields(c),
    torch_dtype,
  };
}

/** `generation_config.json` for `c`, or undefined when it knows neither BOS nor EOS. */
export function generationConfigToHF(c: ModelConfig): Json | undefined {
  if (c.bosTokenId === undefined && c.eosTokenId === undefined) return undefined;
  const out: Json = { _from_model_config: true };
  if (c.bosTokenId !== undefined) out.bos_token_id = c.bosTokenId;
  if (c.eosTokenId !== undefined) out.eos_token_id = c.eosTokenId;
  if (c.padTokenId !== undefined) out.pad_token_id = c.padTokenId;
  return out;
}
