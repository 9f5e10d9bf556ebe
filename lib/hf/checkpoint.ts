/**
 * Hugging Face model folders: load (config.json + model.safetensors or a sharded index) into a
 * {@link Model}, and save one back in the layout transformers' `from_pretrained` reads.
 *
 * Parameter views carry the HF tensor names and shapes (`model.params.entries`), so loading is
 * a name match plus a dtype conversion per tensor. Tensors are read one at a time (a multi-GB
 * file never sits in JS memory), uploaded in the file's dtype and converted on the engine.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { modelFamily, type ModelConfig } from '../model/config.js';
import { Model } from '../model/model.js';
import type { DType } from '../native.js';
import type { Parameters } from '../params.js';
import type { Tensor } from '../tensor.js';
import { atomicDir, atomicTarget } from './atomic.js';
import { generationConfigToHF, modelConfigFromHF, modelConfigToHF, readJsonFile, type TorchDType } from './config.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './dtype.js';
import { CheckpointWeights, writeCheckpointWeights } from './sharded.js';
import type { SafetensorsDType, SafetensorsEntry, SafetensorsTensor } from './safetensors.js';

/** What loading and saving need of a model ({@link Model} has it). */
export interface CheckpointModel {
  readonly engine: Engine;
  readonly config: ModelConfig;
  readonly params: Parameters;
}

// ---- names ------------------------------------------------------------------------------

/** File tensors that are not parameters: buffers HF or OpenAI code saved beside the weights. */
function ignoredName(name: string, config: ModelConfig): boolean {
  if (config.tieEmbeddings && name === 'lm_head.weight') return true; // a tied head's copy
  if (modelFamily(config) === 'gpt2') return /(^|\.)attn\.(masked_)?bias$/.test(name); // causal-mask buffers
  return /(^|\.)rotary_emb\.inv_freq$/.test(name);
}

/** The parameter names a file tensor may stand for: itself, or without the base-model prefix. */
function candidates(name: string, config: ModelConfig): string[] {
  return [name, (modelFamily(config) === 'gpt2' ? 'transformer.' : 'model.') + name];
}

const shapeStr = (s: readonly number[]): string => `[${s.join(', ')}]`;

function listNames(names: readonly string[], max = 8): string {
  const shown = names.slice(0, max).map((n) => `'${n}'`).join(', ');
  return names.length > max ? `${shown} (+${names.length - max} more)` : shown;
}

/**
 * Matches a checkpoint's tensors to the model's parameters: parameter name -> file entry.
 * BAD_FILE naming the file and tensor for a missing tensor, an unexpected one, two tensors for
 * one parameter, or a shape that differs from the parameter's.
 */
export function matchCheckpointTensors(
  entries: ReadonlyMap<string, SafetensorsEntry>,
  params: readonly { name: string; shape: readonly number[] }[],
  config: ModelConfig,
  source: string,
  ignore: (name: string) => boolean = () => false,
): Map<string, SafetensorsEntry> {
  const byParam = new Map(params.map((p) => [p.name, p]));
  const matched = new Map<string, SafetensorsEntry>();
  const extra: SafetensorsEntry[] = [];
  for (const e of entries.values()) {
    const target = candidates(e.name, config).find((n) => byParam.has(n));
    if (target === undefined) {
      if (!ignoredName(e.name, config) && !ignore(e.name)) extra.push(e);
      continue;
    }
    const prev = matched.get(target);
    if (prev) {
      throw new QuietstarError(`${e.file}: tensors '${prev.name}' and '${e.name}' both hold parameter '${target}'`, 'BAD_FILE');
    }
    const want = byParam.get(target)!.shape;
    if (e.shape.length !== want.length || e.shape.some((d, i) => d !== want[i])) {
      throw new QuietstarError(
        `${e.file}: tensor '${e.name}': shape ${shapeStr(e.shape)} does not match the model's ${shapeStr(want)} (from config.json)`,
        'BAD_FILE',
      );
    }
    matched.set(target, e);
  }
  if (extra.length) {
    const files = [...new Set(extra.map((e) => e.file))].join(', ');
    throw new QuietstarError(
      `${files}: unexpected tensor${extra.length > 1 ? 's' : ''} ${listNames(extra.map((e) => e.name))} ` +
        `(not parameters of this ${config.modelType} model)`,
      'BAD_FILE',
    );
  }
  const missing = params.filter((p) => !matched.has(p.name)).map((p) => p.name);
  if (missing.length) {
    throw new QuietstarError(`${source}: missing tensor${missing.length > 1 ? 's' : ''} ${listNames(missing)}`, 'BAD_FILE');
  }
  return matched;
}

// ---- loading ----------------------------------------------------------------------------

const FLOAT_FILE_DTYPES: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', F64: 'f64', BF16: 'bf16', F16: 'f16' };

/** A file tensor's bytes as an engine tensor of the parameter's dtype `to`. */
async function uploadAs(engine: Engine, e: SafetensorsEntry, bytes: Uint8Array, to: DType): Promise<Tensor> {
  const from = FLOAT_FILE_DTYPES[e.dtype];
  if (!from) throw new QuietstarError(`${e.file}: tensor '${e.name}': dtype ${e.dtype} cannot be loaded as float weights`, 'BAD_FILE');
  const raw =
    from === 'f32' ? new Float32Array(bytes.buffer) : from === 'f64' ? new Float64Array(bytes.buffer) : new Uint16Array(bytes.buffer);
  if (from === to) return engine.tensor(raw, e.shape, from);
  if (engine.device === 'cpu') {
    // Upload the file's own dtype; the engine converts (bf16/f16 -> f32 exactly).
    using src = engine.tensor(raw, e.shape, from);
    return (await engine.ops.convert({ x: src, dtype: to as 'f32' | 'f64' })).y;
  }
  // The convert op is CPU-only: convert on the host.
  const f32 = from === 'bf16' ? bf16ToF32(raw as Uint16Array) : from === 'f16' ? f16ToF32(raw as Uint16Array) : Float32Array.from(raw);
  return engine.tensor(to === 'f64' ? Float64Array.from(f32) : f32, e.shape, to);
}

/**
 * Loads a folder's safetensors weights into `model`'s parameters (names and shapes checked
 * first, then one tensor at a time). NOT_FOUND when the folder has no weights; BAD_FILE
 * naming the file and tensor for anything malformed or not matching the model.
 */
export async function loadWeights(
  model: CheckpointModel,
  dir: string,
  options: { ignore?: (name: string) => boolean } = {},
): Promise<void> {
  const { engine, params, config } = model;
  const weights = await CheckpointWeights.open(dir);
  try {
    const matched = matchCheckpointTensors(weights.entries, params.entries, config, weights.source, options.ignore);
    const to = params.buffer('params').dtype;
    for (const p of params.entries) {
      const e = matched.get(p.name)!;
      const bytes = await weights.read(e.name);
      using src = await uploadAs(engine, e, bytes, to);
      using dst = params.view(p.name);
      await engine.ops.copy({ src, dst });
    }
  } finally {
    await weights.close();
  }
}

/** Options of {@link loadPretrained}. */
export interface LoadPretrainedOptions {
  /** Allocate AdamW's moment buffers (needed to train). @defaultValue true */
  optimizer?: boolean;
  /** Parameter and compute dtype (the file's F16/BF16/F32 are converted to it). @defaultValue 'f32' */
  dtype?: 'f32' | 'f64';
}

// A Quiet-STaR folder's extra tensors (thought embeddings, mixing head; see lib/quietstar):
// a plain model loaded from such a folder is its language model, without thinking.
const QUIETSTAR_EXTRA = /^(start_embedding|end_embedding|talk_head\.)/;

/**
 * A model from a Hugging Face folder (config.json + model.safetensors or a sharded index).
 * A Quiet-STaR folder (config.json with a "quietstar" block) loads as its language model: the
 * thought embeddings and mixing head are left out (QuietStarModel.load reads them).
 */
export async function loadPretrained(engine: Engine, dir: string, options: LoadPretrainedOptions = {}): Promise<Model> {
  const path = join(dir, 'config.json');
  const json = await readJsonFile(path);
  const config = modelConfigFromHF(json, path);
  const isQuietStar = typeof json === 'object' && json !== null && !Array.isArray(json) && 'quietstar' in json;
  const model = await Model.create(engine, config, { optimizer: options.optimizer ?? true, dtype: options.dtype ?? 'f32' });
  try {
    await loadWeights(model, dir, { ignore: isQuietStar ? (n) => QUIETSTAR_EXTRA.test(n) : undefined });
  } catch (err) {
    model.dispose();
    throw err;
  }
  return model;
}

// ---- saving -----------------------------------------------------------------------------

/** Options of {@link savePretrained}. */
export interface SavePretrainedOptions {
  /** Storage dtype of the weights. @defaultValue 'F32' */
  dtype?: 'F32' | 'BF16' | 'F16';
  /** Split the weights into shards of at most this many bytes (HF's max_shard_size). @defaultValue 5e9 */
  maxShardBytes?: number;
}

const TORCH_DTYPE: Record<'F32' | 'BF16' | 'F16', TorchDType> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/** Files a save writes (or that belong to an older save's weights): replaced, never carried over. */
function isCheckpointFile(name: string): boolean {
  return (
    name === 'config.json' ||
    name === 'generation_config.json' ||
    /^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$/.test(name) ||
    /^pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?$/.test(name)
  );
}

/** One parameter's bytes in the storage dtype, read from the engine when the writer asks. */
function tensorSource(model: CheckpointModel, name: string, dtype: 'F32' | 'BF16' | 'F16'): () => Promise<ArrayBufferView> {
  const { engine, params } = model;
  return async () => {
    using view = params.view(name);
    if (engine.device === 'cpu' && !(dtype === 'F32' && view.dtype === 'f32')) {
      using y = (await engine.ops.convert({ x: view, dtype: dtype === 'F32' ? 'f32' : dtype === 'BF16' ? 'bf16' : 'f16' })).y;
      return await y.data();
    }
    const data = await view.data();
    const f32 = data instanceof Float32Array ? data : Float32Array.from(data as Float64Array);
    return dtype === 'F32' ? f32 : dtype === 'BF16' ? f32ToBf16(f32) : f32ToF16(f32);
  };
}

const writeJson = (path: string, json: unknown): Promise<void> =>
  atomicTarget(path, (tmp) => fsp.writeFile(tmp, JSON.stringify(json, null, 2) + '\n'));

/**
 * Saves `model` as a Hugging Face folder: config.json, model.safetensors (or shards + index
 * above `maxShardBytes`), and generation_config.json when BOS/EOS are known. The folder is
 * built beside `dir` and renamed into place, so `dir` never holds a half-written save; other
 * files already in `dir` (a tokenizer, say) are kept. A tied head writes no `lm_head.weight`.
 */
export async function savePretrained(model: CheckpointModel, dir: string, options: SavePretrainedOptions = {}): Promise<void> {
  const dtype = options.dtype ?? 'F32';
  if (!(dtype in TORCH_DTYPE)) {
    throw new QuietstarError(`savePretrained: dtype must be 'F32', 'BF16' or 'F16' (got ${JSON.stringify(dtype)})`, 'INVALID_ARGUMENT');
  }
  const hfConfig = modelConfigToHF(model.config, { torchDtype: TORCH_DTYPE[dtype] });
  const genConfig = generationConfigToHF(model.config);
  const tensors: SafetensorsTensor[] = model.params.entries.map((p) => ({
    name: p.name,
    dtype,
    shape: [...p.shape],
    data: tensorSource(model, p.name, dtype),
  }));
  await atomicDir(
    dir,
    async (tmp) => {
      await writeJson(join(tmp, 'config.json'), hfConfig);
      if (genConfig) await writeJson(join(tmp, 'generation_config.json'), genConfig);
      await writeCheckpointWeights(tmp, tensors, options.maxShardBytes === undefined ? {} : { maxShardBytes: options.maxShardBytes });
    },
    (name) => !isCheckpointFile(name),
  );
}
