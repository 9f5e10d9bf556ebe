/**
 * QuietStarModel: a language model with Quiet-STaR's thought markers, thought embeddings and
 * mixing head (quietstar-spec §2.3), and the native two-phase training step (§2.4–§2.12).
 *
 * ```ts
 * using engine = Engine.create({ device: 'cpu' });
 * using qs = await QuietStarModel.fromPretrained(engine, 'models/stories260K', { tokenizer: 'tok512.bin' });
 * const metrics = await qs.step({ ids, valid, labels, B: 4, T: 256 }, 1);
 * await qs.params.clipGradNorm(1);
 * await qs.params.adamwStep({ lr: 1e-6, weightDecay: 0.001 });
 * await qs.save('out/quietstar');
 *
 * // evaluation (spec §4.1) and thinking at inference (spec §5)
 * const ev = await qs.evalForward({ ids, valid, B: 4, T: 256 }, 0); // per-position NLL with / without thought
 * const { mixed } = await qs.evalLogits([[0, 10]]);                  // full logits at chosen positions only
 * await qs.thinkResetCache(1, 512);
 * const { logits, thoughts } = await qs.thinkDecode(prompt, positions, undefined, 1, prompt.length, 0);
 * ```
 *
 * The model's vocabulary is the base's V plus `<|startthought|>` (id V) and `<|endthought|>`
 * (id V + 1). The extra parameters live in the model's own parameter buffer, after its views,
 * under the reference code's names (`start_embedding`, `end_embedding`, `talk_head.0.*`), so
 * AdamW, clipping and zeroGrad cover everything at once and saved folders name them as the
 * reference's exports do.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

import { Xoshiro128 } from '../data/prng.js';
import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { atomicDir, atomicTarget } from '../hf/atomic.js';
import { loadPretrained, loadWeights, savePretrained } from '../hf/checkpoint.js';
import { modelConfigFromHF, readJsonFile } from '../hf/config.js';
import { createModelConfig, type ModelConfig, type ModelConfigInput } from '../model/config.js';
import { Model } from '../model/model.js';
import { loadBinding, type NativeQuietStar, type NativeQuietStarMetrics, type NativeQuietStarOptions } from '../native.js';
import type { Parameters } from '../params.js';
import { loadTokenizer, type Tokenizer } from '../tokenizer/index.js';
import { resolveQuietStarOptions, thoughtLength, type QuietStarOptions } from './options.js';

/** The thought markers, as the reference code registers them (spec §1). */
export const START_THOUGHT = '<|startthought|>';
export const END_THOUGHT = '<|endthought|>';

/** The file beside the weights that names the markers and the tokenizer file (save/load). */
export const QUIETSTAR_TOKENS_FILE = 'quietstar_tokens.json';

/**
 * One micro-batch: B documents of T tokens, row-major (spec §2.2): ids with BOS, right-padded
 * with pad = EOS; valid = ids ≠ pad; labels = ids with pad → −100. The step shifts internally
 * (position i predicts x_{i+1}).
 */
export interface QuietStarBatch {
  /** (B·T) token ids in [0, V). */
  ids: Int32Array;
  /** (B·T) 1 = a real token, 0 = padding (never attended, never thought about). */
  valid: Uint8Array;
  /** (B·T) the ids again, −100 where no loss is wanted (padding). */
  labels: Int32Array;
  B: number;
  T: number;
}

/** Figures of one micro-step (means as the reference averages them, spec §2.9). */
export interface QuietStarStepMetrics {
  /** Total loss: NLL term + policyLossBeta · policy loss. */
  loss: number;
  /** Mean base NLL (no thought). */
  nllBase: number;
  /** Mean over the talk steps k of the mean talk NLL (with the thought, mixed). */
  nllTalk: number;
  /** REINFORCE term before policyLossBeta. */
  policyLoss: number;
  /** Raw reward Σ_k (base NLL − talk NLL) over scored (row, position): > 0 where thinking helped. */
  rewardMean: number;
  rewardStd: number;
  /** Share of (row, position) with a positive clamped centred reward. */
  positiveShare: number;
  /** The mixing weight w at the talk steps. */
  mixMean: number;
  mixStd: number;
  mixMin: number;
  mixMax: number;
  /** Text tokens of the micro-batch (valid B·T). */
  tokens: number;
}

/** A batch for {@link QuietStarModel.evalForward}: B documents of T tokens, row-major. */
export interface EvalBatch {
  /** (B·T) token ids in [0, V). */
  ids: Int32Array;
  /** (B·T) 1 = a real token, 0 = padding. @defaultValue every token valid */
  valid?: Uint8Array;
  B: number;
  T: number;
}

/**
 * Per-position results of {@link QuietStarModel.evalForward}, each (B, T) row-major: entry
 * (b, i) is about the prediction of x_{i+1} made at position i.
 */
export interface EvalForward {
  B: number;
  T: number;
  /** −log p_base(x_{i+1} | x_0..x_i); NaN where i = T − 1 or x_{i+1} is padding. */
  baseNll: Float64Array;
  /** The same for the mixed prediction after the thought at i; NaN at the same entries. */
  thinkNll: Float64Array;
  /** The mixing weight w at (b, i); NaN where i = T − 1 or x_i is padding. */
  mixWeight: Float64Array;
  /** (B, T, nAhead − 3) the thought sampled at each position. */
  thoughts: Int32Array;
}

/** Full-vocabulary logits of {@link QuietStarModel.evalLogits}: one array of V per requested position. */
export interface EvalLogits {
  /** The mixed (post-thought) logits predicting x_{i+1}. */
  mixed: Float64Array[];
  /** The base model's logits predicting x_{i+1}. */
  base: Float64Array[];
}

/** One call of {@link QuietStarModel.thinkDecode}. */
export interface ThinkDecodeResult {
  /** (B, V) next-token logits mixed with the thought's, the two markers −inf. */
  logits: Float32Array | Float64Array;
  /** (B, V) the plain next-token logits (no thought). */
  baseLogits: Float32Array | Float64Array;
  /** (B, nAhead − 3) the thought sampled for each row (discarded from the cache). */
  thoughts: Int32Array;
}

/** What building a Quiet-STaR model from a base model takes. */
export interface QuietStarFromModelOptions {
  /** The algorithm options (defaults: the reference code's). */
  quietstar?: Partial<QuietStarOptions>;
  /**
   * Seed of the random initialisation: the two new embedding / LM-head rows (N(0, 0.02)) and
   * the mixing head.
   * @defaultValue 0
   */
  seed?: number;
  /**
   * The start/end embeddings start at the embedding of the FIRST token of
   * `tokenizer.encode(initToken)` (spec §2.3: ASCII "---", the paper's em dash).
   * @defaultValue '---'
   */
  initToken?: string;
  /** Allocate AdamW's moment buffers (needed to train). @defaultValue true */
  optimizer?: boolean;
}

/** Options of {@link QuietStarModel.fromPretrained}. */
export interface QuietStarFromPretrainedOptions extends QuietStarFromModelOptions {
  /**
   * The base tokenizer: a file or folder for {@link loadTokenizer}, or a tokenizer object
   * (which gains the two markers). A path is copied into folders written by save().
   * @defaultValue the model folder
   */
  tokenizer?: string | Tokenizer;
  /** Parameter and compute dtype. @defaultValue 'f32' */
  dtype?: 'f32' | 'f64';
}

/** Options of {@link QuietStarModel.load}. */
export interface QuietStarLoadOptions {
  /** Overrides of the options saved in config.json's "quietstar" block. */
  quietstar?: Partial<QuietStarOptions>;
  /**
   * The base tokenizer, when the folder holds none (a model built from an in-memory tokenizer).
   * @defaultValue the tokenizer saved in the folder
   */
  tokenizer?: string | Tokenizer;
  /** Parameter and compute dtype. @defaultValue 'f32' */
  dtype?: 'f32' | 'f64';
  /** Allocate AdamW's moment buffers. @defaultValue true */
  optimizer?: boolean;
}

/** Options of {@link QuietStarModel.save}. */
export interface QuietStarSaveOptions {
  /** Storage dtype of the weights. @defaultValue 'F32' */
  dtype?: 'F32' | 'BF16' | 'F16';
}

/** The marker fields of config.json's "quietstar" block (beside the options' own fields). */
const MARKER_FIELDS = ['startId', 'endId', 'startToken', 'endToken', 'baseVocabSize', 'initToken'];

/** config.json's "quietstar" block: the options' fields and the marker fields, flat. */
interface QuietStarBlock {
  options: QuietStarOptions;
  startId: number;
  endId: number;
  startToken: string;
  endToken: string;
  baseVocabSize: number;
  initToken: string;
}

// ---- arguments --------------------------------------------------------------------------

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

function checkSeed(seed: unknown, what = 'seed'): number {
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0) bad(`${what} must be a non-negative safe integer (got ${String(seed)})`);
  return seed;
}

function checkDim(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) bad(`${what} must be an integer >= 1 (got ${String(v)})`);
  return v;
}

function checkArray(what: string, v: unknown, ctor: typeof Int32Array | typeof Uint8Array, n: number): void {
  if (!(v instanceof ctor)) bad(`${what} must be ${ctor === Int32Array ? 'an Int32Array' : 'a Uint8Array'}`);
  if (v.length !== n) bad(`${what} has ${v.length} elements; B·T needs ${n}`);
}

function checkBatch(batch: Omit<QuietStarBatch, 'labels'> & { labels?: Int32Array }, labels: boolean): void {
  if (typeof batch !== 'object' || batch === null) bad('batch must be an object {ids, valid, labels, B, T}');
  const n = checkDim('batch.B', batch.B) * checkDim('batch.T', batch.T);
  checkArray('batch.ids', batch.ids, Int32Array, n);
  checkArray('batch.valid', batch.valid, Uint8Array, n);
  if (labels) checkArray('batch.labels', batch.labels, Int32Array, n);
}

function checkObject<T>(v: T | undefined, what: string): T | Record<string, never> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null) bad(`${what} must be an object`);
  return v;
}

function checkDType(dtype: unknown, what: string): 'f32' | 'f64' {
  const d = dtype ?? 'f32';
  if (d !== 'f32' && d !== 'f64') bad(`${what} must be 'f32' or 'f64' (got ${String(d)})`);
  return d;
}

function checkBool(v: unknown, what: string, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== 'boolean') bad(`${what} must be a boolean (got ${String(v)})`);
  return v;
}

// ---- native pieces ----------------------------------------------------------------------

/** The extra parameter views of a configuration (names and shapes from the native core). */
export function quietstarParamSpecs(config: ModelConfigInput): { name: string; shape: number[]; decay: boolean }[] {
  return loadBinding().quietstarParamSpecs(createModelConfig(config));
}

function nativeOptions(o: QuietStarOptions, startId: number, endId: number): NativeQuietStarOptions {
  const { mixing, ...rest } = o;
  return { ...rest, startId, endId, mixingWeightsBase: mixing === 'paper' };
}

/** A V+2 model over `config`'s base with the extras in its buffer. */
function createQuietStarModelStorage(engine: Engine, config: ModelConfig, dtype: 'f32' | 'f64', optimizer: boolean): Promise<Model> {
  return Model.create(engine, config, { dtype, optimizer, extraSpecs: quietstarParamSpecs(config) });
}

/**
 * N(0, std) values, deterministic in (seed, stream): xoshiro128** uniforms through Box–Muller.
 * (HF's resize_token_embeddings initialises new rows with _init_weights, N(0, 0.02), spec §2.3.)
 */
function normals(n: number, std: number, seed: number, stream: number, f64: boolean): Float32Array | Float64Array {
  const rng = new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296), stream, 0x51ab);
  const out = f64 ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = (rng.nextUint32() + 1) / 4294967297; // (0, 1): log never sees 0
    const u2 = rng.nextFloat();
    const r = Math.sqrt(-2 * Math.log(u1)) * std;
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/**
 * Copies `base`'s weights into `target` (the same names; vocabulary tensors [V, ...] into the
 * first V rows of [V+2, ...]) and fills the two new rows of each vocabulary tensor N(0, 0.02).
 */
async function copyBaseWeights(base: Model, target: Model, seed: number): Promise<void> {
  const engine = target.engine;
  const V = base.config.vocabSize;
  // The flat buffers are the parameters' own (shared) tensors: viewed, never disposed here.
  const dst = target.params.buffer('params');
  const src = base.params.buffer('params');
  {
    let stream = 0;
    for (const e of base.params.entries) {
      const t = target.params.entries.find((x) => x.name === e.name);
      if (!t) throw new QuietstarError(`QuietStarModel: the Quiet-STaR model has no parameter '${e.name}'`, 'INTERNAL');
      const same = t.shape.length === e.shape.length && t.shape.every((d, i) => d === e.shape[i]);
      const vocabRows = !same && e.shape[0] === V && t.shape[0] === V + 2 && t.shape.slice(1).every((d, i) => d === e.shape[i + 1]);
      if (!same && !vocabRows) {
        throw new QuietstarError(`QuietStarModel: parameter '${e.name}' is [${e.shape}] in the base and [${t.shape}] with the markers`, 'INTERNAL');
      }
      {
        using from = src.view(e.offset, e.shape);
        using to = dst.view(t.offset, e.shape); // the first V rows of a vocabulary tensor
        await engine.ops.copy({ src: from, dst: to });
      }
      if (vocabRows) {
        const row = e.numel / V;
        using fresh = engine.tensor(normals(2 * row, 0.02, seed, stream++, target.dtype === 'f64'), [2, row], target.dtype);
        using to = dst.view(t.offset + V * row, [2, row]);
        await engine.ops.copy({ src: fresh, dst: to });
      }
    }
  }
}

/**
 * Adds the markers to `tokenizer` (ids must come out as V and V + 1 — the model's rows) and
 * returns them. A tokenizer that already holds them at those ids is accepted as is.
 */
function addMarkers(tokenizer: Tokenizer, V: number, tokens: readonly [string, string], where: string): [number, number] {
  const have = [tokenizer.tokenToId(tokens[0]), tokenizer.tokenToId(tokens[1])];
  if (!(have[0] === V && have[1] === V + 1) && tokenizer.vocabSize !== V) {
    bad(
      `${where}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocabulary is ${V}: ` +
        `the thought markers must get ids ${V} and ${V + 1} (the model's new rows), so the two must agree`,
    );
  }
  const ids = tokenizer.addSpecialTokens([...tokens]);
  if (ids[0] !== V || ids[1] !== V + 1) {
    bad(`${where}: the tokenizer gave ${tokens[0]} id ${ids[0]} and ${tokens[1]} id ${ids[1]}; the model needs ${V} and ${V + 1}`);
  }
  return [V, V + 1];
}

// ---- tokenizer files --------------------------------------------------------------------

/** Files of a tokenizer folder that save() copies (every format loadTokenizer reads). */
const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'encoder.json',
  'vocab.bpe',
  'tokenizer.model',
];
const isTokenizerFile = (name: string): boolean => TOKENIZER_FILES.includes(name) || /^tok.*\.bin$/.test(name);

/** Siblings a single tokenizer file is read with (loadTokenizer looks beside it). */
const COMPANIONS: Record<string, string[]> = {
  'tokenizer.json': ['tokenizer_config.json', 'special_tokens_map.json'],
  'vocab.json': ['merges.txt', 'vocab.bpe'],
  'encoder.json': ['merges.txt', 'vocab.bpe'],
  'merges.txt': ['vocab.json', 'encoder.json'],
  'vocab.bpe': ['vocab.json', 'encoder.json'],
};

/** Where a tokenizer came from: the files save() copies and the one load() opens. */
interface TokenizerSource {
  files: string[];
  /** The file to open, or undefined to open the folder. */
  main?: string;
}

const exists = (p: string): Promise<boolean> => fsp.stat(p).then(() => true, () => false);

async function tokenizerSource(path: string): Promise<TokenizerSource> {
  const abs = resolve(path);
  const st = await fsp.stat(abs).catch(() => undefined);
  if (!st) return { files: [] };
  if (st.isDirectory()) {
    const names = (await fsp.readdir(abs)).filter(isTokenizerFile).sort();
    return { files: names.map((n) => join(abs, n)) };
  }
  const companions = (COMPANIONS[basename(abs)] ?? []).map((n) => join(dirname(abs), n));
  const found = [];
  for (const c of companions) if (await exists(c)) found.push(c);
  return { files: [abs, ...found], main: basename(abs) };
}

// ---- the model --------------------------------------------------------------------------

export class QuietStarModel implements Disposable {
  /** The V+2 language model; its parameters include the extras. */
  readonly model: Model;
  /** The base tokenizer with the two markers added. */
  readonly tokenizer: Tokenizer;
  /** The complete algorithm options (frozen). */
  readonly options: Readonly<QuietStarOptions>;
  /** `<|startthought|>`'s id: the base vocabulary size V. */
  readonly startId: number;
  /** `<|endthought|>`'s id: V + 1. */
  readonly endId: number;
  private readonly native: NativeQuietStar;
  /** The eval-mode step (nPasses 1, nAheadTalk 1), created by the first evalForward. */
  private evalNative: Promise<NativeQuietStar> | undefined;
  /** The shape of the last evalForward, for evalLogits. */
  private evalShape: { B: number; T: number } | undefined;
  /** evalForward / evalLogits run one at a time (they share the eval step's buffers). */
  private evalQueue: Promise<unknown> = Promise.resolve();
  private readonly source: TokenizerSource;
  private readonly initToken: string;

  private constructor(
    model: Model,
    tokenizer: Tokenizer,
    options: QuietStarOptions,
    native: NativeQuietStar,
    source: TokenizerSource,
    initToken: string,
  ) {
    this.model = model;
    this.tokenizer = tokenizer;
    this.options = Object.freeze(options);
    this.startId = model.config.vocabSize - 2;
    this.endId = model.config.vocabSize - 1;
    this.native = native;
    this.source = source;
    this.initToken = initToken;
  }

  /** One buffer for the model and the extras: AdamW, clipping and zeroGrad cover both. */
  get params(): Parameters {
    return this.model.params;
  }

  /** The engine every call runs on. */
  get engine(): Engine {
    return this.model.engine;
  }

  get disposed(): boolean {
    return this.native.disposed;
  }

  /**
   * A base Hugging Face model folder (config.json + safetensors) and its tokenizer: the
   * vocabulary grows by `<|startthought|>`, `<|endthought|>` (ids V, V + 1; new embedding and
   * LM-head rows N(0, 0.02)), the thought embeddings start at the embedding of `initToken`,
   * the mixing head at N(0, 0.02) with a zero last layer (w ≡ 0: the model starts at the base).
   */
  static async fromPretrained(engine: Engine, dir: string, options: QuietStarFromPretrainedOptions = {}): Promise<QuietStarModel> {
    if (typeof dir !== 'string' || dir.length === 0) bad('fromPretrained: dir must be a non-empty string');
    const o = checkObject(options, 'options');
    const dtype = checkDType(o.dtype, 'options.dtype');
    const tokArg = o.tokenizer ?? dir;
    if (typeof tokArg !== 'string' && (typeof tokArg !== 'object' || tokArg === null)) bad('options.tokenizer must be a path or a Tokenizer');
    resolveQuietStarOptions(checkObject(o.quietstar, 'options.quietstar')); // fail before loading anything
    const tokenizer = typeof tokArg === 'string' ? await loadTokenizer(tokArg) : tokArg;
    const source = typeof tokArg === 'string' ? await tokenizerSource(tokArg) : { files: [] };
    const base = await loadPretrained(engine, dir, { optimizer: false, dtype });
    try {
      return await QuietStarModel.build(base, tokenizer, o, source);
    } finally {
      base.dispose();
    }
  }

  /**
   * The same from an in-memory base model (copied into a V+2 model; `model` is not disposed).
   * `tokenizer` gains the two markers.
   */
  static async fromModel(model: Model, tokenizer: Tokenizer, options: QuietStarFromModelOptions = {}): Promise<QuietStarModel> {
    if (!(model instanceof Model)) bad('fromModel: model must be a Model');
    if (typeof tokenizer !== 'object' || tokenizer === null || typeof tokenizer.addSpecialTokens !== 'function') {
      bad('fromModel: tokenizer must be a Tokenizer');
    }
    return QuietStarModel.build(model, tokenizer, checkObject(options, 'options'), { files: [] });
  }

  private static async build(
    base: Model,
    tokenizer: Tokenizer,
    o: QuietStarFromModelOptions,
    source: TokenizerSource,
  ): Promise<QuietStarModel> {
    const options = resolveQuietStarOptions(checkObject(o.quietstar, 'options.quietstar'));
    const seed = checkSeed(o.seed ?? 0, 'options.seed');
    const optimizer = checkBool(o.optimizer, 'options.optimizer', true);
    const initToken = o.initToken ?? '---';
    if (typeof initToken !== 'string' || initToken.length === 0) bad('options.initToken must be a non-empty string');
    const V = base.config.vocabSize;
    // The init token is looked up before the markers exist, as the reference does (spec §2.3).
    const initId = tokenizer.encode(initToken)[0];
    if (initId === undefined || initId >= V) {
      bad(`options.initToken: ${JSON.stringify(initToken)} encodes to ${initId === undefined ? 'no token' : `id ${initId} >= vocabSize ${V}`}`);
    }
    const [startId, endId] = addMarkers(tokenizer, V, [START_THOUGHT, END_THOUGHT], 'fromModel');
    const config = createModelConfig({ ...base.config, vocabSize: V + 2 });
    const model = await createQuietStarModelStorage(base.engine, config, base.dtype, optimizer);
    let native: NativeQuietStar | undefined;
    try {
      await copyBaseWeights(base, model, seed).catch((err: unknown) => {
        if (!base.disposed) throw err;
        throw new QuietstarError('fromModel: the base model was disposed before its weights were copied (await fromModel first)', 'DISPOSED');
      });
      native = await loadBinding().createQuietStar(model.nativeModel, nativeOptions(options, startId, endId));
      await native.initParameters(initId, seed);
      return new QuietStarModel(model, tokenizer, options, native, source, initToken);
    } catch (err) {
      native?.dispose();
      model.dispose();
      throw err;
    }
  }

  /** A folder written by {@link save}: weights with the extras, options, markers, tokenizer. */
  static async load(engine: Engine, dir: string, options: QuietStarLoadOptions = {}): Promise<QuietStarModel> {
    if (typeof dir !== 'string' || dir.length === 0) bad('load: dir must be a non-empty string');
    const o = checkObject(options, 'options');
    const dtype = checkDType(o.dtype, 'options.dtype');
    const optimizer = checkBool(o.optimizer, 'options.optimizer', true);
    const overrides = checkObject(o.quietstar, 'options.quietstar');
    const path = join(dir, 'config.json');
    const json = await readJsonFile(path);
    const block = readBlock(json.quietstar, path);
    const config = modelConfigFromHF(json, path);
    if (config.vocabSize !== block.baseVocabSize + 2) {
      throw new QuietstarError(`${path}: vocab_size ${config.vocabSize} is not quietstar.baseVocabSize + 2 (${block.baseVocabSize + 2})`, 'BAD_FILE');
    }
    const resolved = resolveQuietStarOptions({ ...block.options, ...overrides });
    const { tokenizer, source } = await loadSavedTokenizer(dir, o.tokenizer);
    addMarkers(tokenizer, block.baseVocabSize, [block.startToken, block.endToken], dir);
    const model = await createQuietStarModelStorage(engine, config, dtype, optimizer);
    let native: NativeQuietStar | undefined;
    try {
      await loadWeights(model, dir);
      native = await loadBinding().createQuietStar(model.nativeModel, nativeOptions(resolved, block.startId, block.endId));
      return new QuietStarModel(model, tokenizer, resolved, native, source, block.initToken);
    } catch (err) {
      native?.dispose();
      model.dispose();
      throw err;
    }
  }

  /**
   * Saves a Quiet-STaR folder: config.json (the HF config with vocab_size V + 2 and a
   * "quietstar" block: the options' fields, startId, endId, startToken, endToken,
   * baseVocabSize, initToken), the weights
   * with `start_embedding`, `end_embedding` and `talk_head.*` under those names, the base
   * tokenizer's files (when it came from files) and quietstar_tokens.json. The folder is
   * built beside `dir` and renamed into place; unrelated files already in `dir` are kept.
   */
  async save(dir: string, options: QuietStarSaveOptions = {}): Promise<void> {
    if (typeof dir !== 'string' || dir.length === 0) bad('save: dir must be a non-empty string');
    const o = checkObject(options, 'options');
    const V = this.startId;
    const block = {
      ...this.options,
      startId: this.startId,
      endId: this.endId,
      startToken: START_THOUGHT,
      endToken: END_THOUGHT,
      baseVocabSize: V,
      initToken: this.initToken,
    };
    const tokens = {
      startThought: { content: START_THOUGHT, id: this.startId },
      endThought: { content: END_THOUGHT, id: this.endId },
      baseVocabSize: V,
      tokenizerFile: this.source.main ?? null,
    };
    await atomicDir(
      dir,
      async (tmp) => {
        await savePretrained(this.model, tmp, o.dtype === undefined ? {} : { dtype: o.dtype });
        const configPath = join(tmp, 'config.json');
        const hf = await readJsonFile(configPath);
        await writeJson(configPath, { ...hf, quietstar: block });
        for (const file of this.source.files) await fsp.copyFile(file, join(tmp, basename(file)));
        await writeJson(join(tmp, QUIETSTAR_TOKENS_FILE), tokens);
      },
      (name) => !isSavedFile(name),
    );
  }

  /**
   * Phase 1 alone (no gradients): the sampled thought tokens, (B·nPasses, T, nAhead − 3)
   * row-major, row r = b·nPasses + p. Draws are keyed by (seed, row, step, position) with
   * row = rowIds[b]·nPasses + p (rowIds default: b): the same seed gives the same thoughts, and
   * a document given the same row id draws the same thoughts in any batch. Markers are never
   * sampled.
   */
  async sampleThoughts(batch: Omit<QuietStarBatch, 'labels'> & { labels?: Int32Array }, seed: number, rowIds?: Int32Array): Promise<Int32Array> {
    checkBatch(batch, false);
    if (rowIds !== undefined) checkArray('rowIds', rowIds, Int32Array, batch.B);
    return this.native.sampleThoughts(batch.ids, batch.valid, batch.B, batch.T, checkSeed(seed), rowIds);
  }

  /**
   * Phase 2 with given thoughts: losses, rewards and (with `backward`, the default) gradients
   * scaled by `lossScale` accumulated into `params` grads (never zeroed here).
   */
  async forwardBackward(
    batch: QuietStarBatch,
    thoughts: Int32Array,
    opts: { backward?: boolean; lossScale?: number } = {},
  ): Promise<QuietStarStepMetrics> {
    checkBatch(batch, true);
    const o = checkObject(opts, 'opts');
    const n = batch.B * this.options.nPasses * batch.T * thoughtLength(this.options);
    if (!(thoughts instanceof Int32Array)) bad('thoughts must be an Int32Array');
    if (thoughts.length !== n) bad(`thoughts has ${thoughts.length} elements; (B·nPasses, T, nAhead − 3) needs ${n}`);
    const backward = checkBool(o.backward, 'opts.backward', true);
    const m = await this.native.forwardBackward(batch.ids, batch.valid, batch.labels, batch.B, batch.T, thoughts, backward, lossScale(o.lossScale));
    return metrics(m);
  }

  /** One training micro-step: sample the thoughts, then forward and backward (gradients accumulate). */
  async step(batch: QuietStarBatch, seed: number, opts: { lossScale?: number } = {}): Promise<QuietStarStepMetrics> {
    checkBatch(batch, true);
    const o = checkObject(opts, 'opts');
    const m = await this.native.step(batch.ids, batch.valid, batch.labels, batch.B, batch.T, checkSeed(seed), lossScale(o.lossScale));
    return metrics(m);
  }

  /**
   * A copy of an internal of the last forwardBackward/step, for tests and analysis:
   * "base_hidden" (B,T,D), "chain_hidden" (R,S,T,D), "mix_weight" (R,A,T), "talk_nll" (R,A,T),
   * "base_nll" (B,T), "reward" (R,T), "reward_weight" (R,T), "policy_logp" (R,N−3,T).
   */
  async debugTensor(name: string): Promise<{ data: Float32Array | Float64Array; shape: number[] }> {
    if (typeof name !== 'string') bad('debugTensor: name must be a string');
    return this.native.debugTensor(name);
  }

  /**
   * Eval-mode forward without gradients (spec §4.1: one thought per position, nPasses 1,
   * nAheadTalk 1), on a second native step with those options over the same model, created by
   * the first call and disposed with the model. Thoughts are sampled with `seed` as
   * {@link sampleThoughts} samples them, document b with noise row rowIds[b] (default b): give
   * each document a fixed id (e.g. its index in the dataset) to make results independent of
   * batching. Calls run one at a time.
   */
  async evalForward(batch: EvalBatch, seed: number, rowIds?: Int32Array): Promise<EvalForward> {
    if (typeof batch !== 'object' || batch === null) bad('evalForward: batch must be an object {ids, valid?, B, T}');
    const B = checkDim('batch.B', batch.B);
    const T = checkDim('batch.T', batch.T);
    checkArray('batch.ids', batch.ids, Int32Array, B * T);
    if (batch.valid !== undefined) checkArray('batch.valid', batch.valid, Uint8Array, B * T);
    checkSeed(seed);
    if (rowIds !== undefined) checkArray('rowIds', rowIds, Int32Array, B);
    const { ids, valid } = batch;
    return this.serialEval(async () => {
      const native = await this.evalStep();
      const labels = new Int32Array(B * T);
      for (let n = 0; n < B * T; n++) labels[n] = valid === undefined || valid[n] ? ids[n]! : -100;
      this.evalShape = undefined;
      const thoughts = await native.sampleThoughts(ids, valid, B, T, seed, rowIds);
      await native.forwardBackward(ids, valid, labels, B, T, thoughts, false, 1);
      const base = (await native.debugTensor('base_nll')).data; // (B, T)
      const talk = (await native.debugTensor('talk_nll')).data; // (B, 1, T)
      const mix = (await native.debugTensor('mix_weight')).data; // (B, 1, T)
      this.evalShape = { B, T };
      const baseNll = new Float64Array(B * T).fill(NaN);
      const thinkNll = new Float64Array(B * T).fill(NaN);
      const mixWeight = new Float64Array(B * T).fill(NaN);
      for (let b = 0; b < B; b++) {
        for (let i = 0; i + 1 < T; i++) {
          const n = b * T + i;
          if (labels[n + 1] !== -100) {
            baseNll[n] = base[n]!;
            thinkNll[n] = talk[n]!;
          }
          if (labels[n] !== -100) mixWeight[n] = mix[n]!;
        }
      }
      return { B, T, baseNll, thinkNll, mixWeight, thoughts };
    });
  }

  /**
   * After {@link evalForward}: the full-vocabulary logits predicting x_{i+1} at the K chosen
   * (b, i), i < T − 1, mixed and base (nothing masked). Only those K rows go through the LM
   * head: never the logits of every position.
   */
  async evalLogits(at: ReadonlyArray<readonly [b: number, i: number]>): Promise<EvalLogits> {
    if (!Array.isArray(at)) bad('evalLogits: at must be an array of [b, i] pairs');
    return this.serialEval(async () => {
      const shape = this.evalShape;
      if (shape === undefined) bad('evalLogits: no evalForward yet (call evalForward first)');
      const flat = new Int32Array(at.length * 2);
      at.forEach((pair, k) => {
        const [b, i] = Array.isArray(pair) ? pair : [NaN, NaN];
        if (!Number.isInteger(b) || b < 0 || b >= shape.B || !Number.isInteger(i) || i < 0 || i >= shape.T - 1) {
          bad(`evalLogits: at[${k}] = ${JSON.stringify(pair)} must be [b, i] with b in [0, ${shape.B}) and i in [0, ${shape.T - 1}) (T − 1)`);
        }
        flat[2 * k] = b;
        flat[2 * k + 1] = i;
      });
      const native = await this.evalStep();
      const r = await native.talkLogits(flat, at.length);
      const V = this.model.config.vocabSize;
      const rows = (x: Float32Array | Float64Array): Float64Array[] =>
        at.map((_, k) => Float64Array.from(x.subarray(k * V, (k + 1) * V)));
      return { mixed: rows(r.mixed), base: rows(r.base) };
    });
  }

  /**
   * Resets the private KV cache of {@link thinkDecode} (not the model's own cache): B rows,
   * `maxLen` text slots, plus room for one thought branch.
   */
  async thinkResetCache(B: number, maxLen: number): Promise<void> {
    await this.native.thinkResetCache(checkDim('B', B), checkDim('maxLen', maxLen));
  }

  /**
   * Thinking decode (spec §5): appends `ids` (B·n, at `positions`, padding where `valid` is 0)
   * to the thinking cache, then for every row forks a thought on top of it (start marker at
   * t + 1, nAhead − 3 sampled tokens, end marker; t = the row's last position), mixes it into
   * the next-token prediction and discards it from the cache. Thoughts are keyed by (seed,
   * rowIds[b] (default b), step, t): they equal {@link evalForward}'s at (rowIds[b], t) on the same
   * text with the same seed. Cost: about nAhead plain decoding steps.
   */
  async thinkDecode(
    ids: Int32Array,
    positions: Int32Array,
    valid: Uint8Array | undefined,
    B: number,
    n: number,
    seed: number,
    rowIds?: Int32Array,
  ): Promise<ThinkDecodeResult> {
    const count = checkDim('B', B) * checkDim('n', n);
    checkArray('ids', ids, Int32Array, count);
    checkArray('positions', positions, Int32Array, count);
    if (valid !== undefined) checkArray('valid', valid, Uint8Array, count);
    if (rowIds !== undefined) checkArray('rowIds', rowIds, Int32Array, B);
    return this.native.thinkDecode(ids, positions, valid, B, n, checkSeed(seed), rowIds);
  }

  /** Frees the step's buffers, the model and its parameters (idempotent). Later calls reject with DISPOSED. */
  dispose(): void {
    this.native.dispose();
    void this.evalNative?.then((n) => n.dispose(), () => undefined);
    this.model.dispose();
  }

  /** The eval-mode step, created once. */
  private evalStep(): Promise<NativeQuietStar> {
    if (this.disposed) return Promise.reject(new QuietstarError('this QuietStarModel was disposed', 'DISPOSED'));
    if (this.evalNative === undefined) {
      const created = loadBinding().createQuietStar(
        this.model.nativeModel,
        nativeOptions({ ...this.options, nPasses: 1, nAheadTalk: 1 }, this.startId, this.endId),
      );
      this.evalNative = created;
      created.catch(() => {
        if (this.evalNative === created) this.evalNative = undefined; // a later call tries again
      });
    }
    return this.evalNative;
  }

  private serialEval<R>(job: () => Promise<R>): Promise<R> {
    const run = this.evalQueue.then(job, job);
    this.evalQueue = run.catch(() => undefined);
    return run;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// ---- helpers of the methods -------------------------------------------------------------

function lossScale(v: unknown): number {
  if (v === undefined) return 1;
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(`opts.lossScale must be a finite number (got ${String(v)})`);
  return v;
}

function metrics(m: NativeQuietStarMetrics): QuietStarStepMetrics {
  return {
    loss: m.loss,
    nllBase: m.nllBase,
    nllTalk: m.nllTalk,
    policyLoss: m.policyLoss,
    rewardMean: m.rewardMean,
    rewardStd: m.rewardStd,
    positiveShare: m.positiveShare,
    mixMean: m.mixMean,
    mixStd: m.mixStd,
    mixMin: m.mixMin,
    mixMax: m.mixMax,
    tokens: m.tokens,
  };
}

const writeJson = (path: string, json: unknown): Promise<void> =>
  atomicTarget(path, (tmp) => fsp.writeFile(tmp, JSON.stringify(json, null, 2) + '\n'));

/** Files a save writes (or an older save's weights and tokenizer): replaced, never carried over. */
function isSavedFile(name: string): boolean {
  return (
    name === 'config.json' ||
    name === 'generation_config.json' ||
    name === QUIETSTAR_TOKENS_FILE ||
    isTokenizerFile(name) ||
    /^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$/.test(name) ||
    /^pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?$/.test(name)
  );
}

/** config.json's "quietstar" block, checked: BAD_FILE naming the file and field. */
function readBlock(v: unknown, path: string): QuietStarBlock {
  const fail = (field: string, why: string): never => {
    throw new QuietstarError(`${path}: quietstar${field ? '.' + field : ''}: ${why}`, 'BAD_FILE');
  };
  if (v === undefined) {
    throw new QuietstarError(
      `${path}: no "quietstar" block: not a Quiet-STaR folder (QuietStarModel.save writes one; start from a base model with QuietStarModel.fromPretrained)`,
      'BAD_FILE',
    );
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('', 'must be an object');
  const b = v as Record<string, unknown>;
  const int = (field: string): number => {
    const x = b[field];
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) fail(field, `must be an integer >= 0 (got ${JSON.stringify(x)})`);
    return x as number;
  };
  const str = (field: string): string => {
    const x = b[field];
    if (typeof x !== 'string' || x.length === 0) fail(field, `must be a non-empty string (got ${JSON.stringify(x)})`);
    return x as string;
  };
  const baseVocabSize = int('baseVocabSize');
  const startId = int('startId');
  const endId = int('endId');
  if (startId !== baseVocabSize || endId !== baseVocabSize + 1) {
    fail('startId', `the markers must be ids baseVocabSize and baseVocabSize + 1 (${baseVocabSize}, ${baseVocabSize + 1}); got ${startId}, ${endId}`);
  }
  const optionFields = Object.fromEntries(Object.entries(b).filter(([k]) => !MARKER_FIELDS.includes(k)));
  let options: QuietStarOptions;
  try {
    options = resolveQuietStarOptions(optionFields as Partial<QuietStarOptions>);
  } catch (err) {
    if (err instanceof QuietstarError) throw new QuietstarError(`${path}: ${err.message}`, 'BAD_FILE');
    throw err;
  }
  return {
    options,
    startId,
    endId,
    startToken: str('startToken'),
    endToken: str('endToken'),
    baseVocabSize,
    initToken: typeof b.initToken === 'string' ? b.initToken : '---',
  };
}

/** The tokenizer of a saved folder (the file quietstar_tokens.json names, else the folder). */
async function loadSavedTokenizer(dir: string, given: string | Tokenizer | undefined): Promise<{ tokenizer: Tokenizer; source: TokenizerSource }> {
  if (given !== undefined) {
    if (typeof given === 'string') return { tokenizer: await loadTokenizer(given), source: await tokenizerSource(given) };
    if (typeof given !== 'object' || given === null) bad('options.tokenizer must be a path or a Tokenizer');
    return { tokenizer: given, source: { files: [] } };
  }
  const tokensPath = join(dir, QUIETSTAR_TOKENS_FILE);
  let main: string | undefined;
  if (await exists(tokensPath)) {
    const t = await readJsonFile(tokensPath);
    if (t.tokenizerFile !== undefined && t.tokenizerFile !== null) {
      if (typeof t.tokenizerFile !== 'string' || t.tokenizerFile !== basename(t.tokenizerFile)) {
        throw new QuietstarError(`${tokensPath}: tokenizerFile must be a file name in the folder (got ${JSON.stringify(t.tokenizerFile)})`, 'BAD_FILE');
      }
      main = t.tokenizerFile;
    }
  }
  const path = main === undefined ? dir : join(dir, main);
  const source = await tokenizerSource(path);
  if (main === undefined && source.files.length === 0) {
    throw new QuietstarError(
      `${dir}: no tokenizer files (the model was built from an in-memory tokenizer): pass options.tokenizer`,
      'NOT_FOUND',
    );
  }
  return { tokenizer: await loadTokenizer(path), source };
}
