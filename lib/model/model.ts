/**
 * Model: a GPT-2 or Llama-family transformer whose forward and backward passes run in the
 * native core (llm.c style: per-layer passes over one flat parameter buffer).
 *
 * ```ts
 * using engine = Engine.create({ device: 'cpu' });
 * using model = await Model.create(engine, createModelConfig({ modelType: 'llama', vocabSize: 512, dModel: 64, nLayers: 2, nHeads: 4 }));
 * await model.initWeights(1337);
 * const { loss } = await model.forward({ ids, targets, B: 4, T: 64 });
 * await model.backward();
 * await model.params.adamwStep({ lr: 1e-3 });
 * ```
 *
 * Parameters carry Hugging Face names and shapes (`model.params.entries`, from the native
 * core), so checkpoints load view by view. Every heavy call is a job on the engine's compute
 * thread, in call order; token arrays are copied when the call is made, so they may be reused
 * at once.
 */
import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { loadBinding, type NativeModel } from '../native.js';
import { Parameters } from '../params.js';
import { Tensor } from '../tensor.js';
import { createModelConfig, type ModelConfig, type ModelConfigInput } from './config.js';

/** Options of {@link Model.create}. */
export interface ModelOptions {
  /**
   * Allocate AdamW's moment buffers (`m`, `v`). Inference-only models skip them.
   * @defaultValue true
   */
  optimizer?: boolean;
  /**
   * Parameter and compute dtype. `'f64'` is for gradient checks on the CPU.
   * @defaultValue 'f32'
   */
  dtype?: 'f32' | 'f64';
  /**
   * @internal Extra parameter views appended after the model's own in the same buffer (one
   * AdamW, one clip), e.g. Quiet-STaR's thought embeddings and mixing head.
   */
  extraSpecs?: readonly { name: string; shape: number[]; decay?: boolean }[];
}

/** A training or scoring batch: B rows of T tokens, row-major. */
export interface TokenBatch {
  /** (B·T) input ids in [0, vocabSize). */
  ids: Int32Array;
  /** (B·T) next-token targets in [0, vocabSize), or -100 where no loss is wanted. */
  targets: Int32Array;
  B: number;
  T: number;
}

/** Input of {@link Model.logits}. */
export interface LogitsBatch {
  /** (B·T) input ids. */
  ids: Int32Array;
  B: number;
  T: number;
  /** Only the last position of each row: (B, V) instead of (B, T, V). @defaultValue false */
  lastOnly?: boolean;
}

/** Input of {@link Model.decode}: n new slots for each of the cache's B rows. */
export interface DecodeStep {
  /** (B·n) token ids, row-major. */
  ids: Int32Array;
  /** (B·n) positions of those tokens (RoPE angle / GPT-2 position row). */
  positions: Int32Array;
  /** (B·n) 1 = a real token, 0 = padding (stored but never attended). @defaultValue all 1 */
  valid?: Uint8Array;
  /** Slots appended per row. */
  n: number;
}

function bad(message: string): never {
  throw new QuietstarError(message, 'INVALID_ARGUMENT');
}

function checkDim(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) bad(`${what} must be an integer >= 1 (got ${String(v)})`);
  return v;
}

function checkArray<A extends Int32Array | Uint8Array>(
  what: string,
  v: unknown,
  ctor: { new (n: number): A; name: string },
  n: number,
  shape: string,
): A {
  if (!(v instanceof ctor)) bad(`${what} must be ${ctor.name === 'Int32Array' ? 'an' : 'a'} ${ctor.name}`);
  if (v.length !== n) bad(`${what} has ${v.length} elements; ${shape} needs ${n}`);
  return v;
}

function checkBatch(batch: TokenBatch, withTargets: boolean): void {
  if (typeof batch !== 'object' || batch === null) bad('batch must be an object {ids, targets, B, T}');
  const B = checkDim('batch.B', batch.B);
  const T = checkDim('batch.T', batch.T);
  checkArray('batch.ids', batch.ids, Int32Array, B * T, `B·T = ${B}·${T}`);
  if (withTargets) checkArray('batch.targets', batch.targets, Int32Array, B * T, `B·T = ${B}·${T}`);
}

export class Model implements Disposable {
  /** The engine every call of this model runs on. */
  readonly engine: Engine;
  /** The complete, validated configuration (frozen). */
  readonly config: Readonly<ModelConfig>;
  /** Weights, gradients and AdamW state; views named as in Hugging Face checkpoints. */
  readonly params: Parameters;
  /** Parameter (and compute) dtype. */
  readonly dtype: 'f32' | 'f64';
  private readonly native: NativeModel;

  private constructor(engine: Engine, config: ModelConfig, params: Parameters, native: NativeModel, dtype: 'f32' | 'f64') {
    this.engine = engine;
    this.config = config;
    this.params = params;
    this.native = native;
    this.dtype = dtype;
  }

  /**
   * A model with zero weights (call {@link initWeights} or load a checkpoint). `config` is
   * completed and validated by {@link createModelConfig}; the parameter views come from the
   * native core.
   */
  static async create(engine: Engine, config: ModelConfigInput, options: ModelOptions = {}): Promise<Model> {
    const full = createModelConfig(config);
    if (Array.isArray(full.eosTokenId)) Object.freeze(full.eosTokenId);
    Object.freeze(full);
    const dtype = options.dtype ?? 'f32';
    if (dtype !== 'f32' && dtype !== 'f64') bad(`options.dtype must be 'f32' or 'f64' (got ${String(dtype)})`);
    const optimizer = options.optimizer ?? true;
    if (typeof optimizer !== 'boolean') bad(`options.optimizer must be a boolean (got ${String(optimizer)})`);
    const specs = [...loadBinding().modelParamSpecs(full), ...(options.extraSpecs ?? [])];
    const nativeParams = await engine.native.createParameters(specs, dtype, optimizer);
    let native: NativeModel;
    try {
      native = await engine.native.createModel(full, nativeParams);
    } catch (err) {
      nativeParams.dispose();
      throw err;
    }
    return new Model(engine, full, new Parameters(engine, nativeParams), native, dtype);
  }

  /** @internal The binding's model (lib/quietstar builds its step over it). */
  get nativeModel(): NativeModel {
    return this.native;
  }

  /** Parameter count (elements of every view; the alignment padding is not counted). */
  numParameters(): number {
    return this.params.entries.reduce((n, e) => n + e.numel, 0);
  }

  /**
   * GPT-2 / Llama initialisation: weights ~ N(0, 0.02), residual output projections ~
   * N(0, 0.02/√(2·nLayers)), norm gains 1, biases 0. The same seed gives the same weights.
   */
  async initWeights(seed: number): Promise<void> {
    if (!Number.isSafeInteger(seed) || seed < 0) bad(`seed must be a non-negative safe integer (got ${String(seed)})`);
    await this.native.initWeights(seed);
  }

  /**
   * Training forward: mean next-token NLL over the targets that are not -100 (`tokens` of
   * them; loss 0 when there are none). Keeps the activations {@link backward} needs.
   */
  async forward(batch: TokenBatch): Promise<{ loss: number; tokens: number }> {
    checkBatch(batch, true);
    return this.native.forward(batch.ids, batch.targets, batch.B, batch.T);
  }

  /**
   * grads += lossScale · d(loss of the last forward)/d(params). Gradients accumulate: zero
   * them with `params.zeroGrad()`. Rejects without a preceding forward.
   */
  async backward(lossScale = 1): Promise<void> {
    if (typeof lossScale !== 'number' || !Number.isFinite(lossScale)) bad(`lossScale must be a finite number (got ${String(lossScale)})`);
    await this.native.backward(lossScale);
  }

  /** Per-token NLL (B·T; 0 where the target is -100), keeping no activations. */
  async tokenLosses(batch: TokenBatch): Promise<Float32Array> {
    checkBatch(batch, true);
    return this.native.tokenLosses(batch.ids, batch.targets, batch.B, batch.T);
  }

  /** Logits (B, T, V), or (B, V) with `lastOnly`, in the model's dtype. The caller disposes the tensor. */
  async logits(batch: LogitsBatch): Promise<Tensor> {
    if (typeof batch !== 'object' || batch === null) bad('batch must be an object {ids, B, T}');
    const B = checkDim('batch.B', batch.B);
    const T = checkDim('batch.T', batch.T);
    checkArray('batch.ids', batch.ids, Int32Array, B * T, `B·T = ${B}·${T}`);
    const out = await this.native.logits(batch.ids, B, T, batch.lastOnly ?? false);
    return Tensor.wrap(this.engine.native, out);
  }

  /** Allocates (or reuses) the KV cache for B rows of maxLen slots and empties it. */
  async resetCache(B: number, maxLen: number): Promise<void> {
    checkDim('B', B);
    checkDim('maxLen', maxLen);
    await this.native.resetCache(B, maxLen);
  }

  /**
   * Appends n slots to every cache row and returns the logits of each row's last appended
   * slot, (B, V) in the model's dtype; the caller disposes the tensor. Padding slots
   * (valid 0) are kept in the cache but never attended, so left-padded prompts of different
   * lengths decode together.
   */
  async decode(step: DecodeStep): Promise<Tensor> {
    if (typeof step !== 'object' || step === null) bad('step must be an object {ids, positions, valid?, n}');
    const n = checkDim('step.n', step.n);
    if (!(step.ids instanceof Int32Array)) bad('step.ids must be an Int32Array');
    const len = step.ids.length;
    if (len === 0 || len % n !== 0) bad(`step.ids has ${len} elements: must be B·n with B >= 1 and n = ${n}`);
    checkArray('step.positions', step.positions, Int32Array, len, `B·n = ${len / n}·${n}`);
    if (step.valid !== undefined) checkArray('step.valid', step.valid, Uint8Array, len, `B·n = ${len / n}·${n}`);
    const out = await this.native.decode(step.ids, step.positions, step.valid, n);
    return Tensor.wrap(this.engine.native, out);
  }

  /** Cache slots used per row, as of the last completed resetCache/decode. */
  get cacheLength(): number {
    return this.native.cacheLength;
  }

  get disposed(): boolean {
    return this.native.disposed;
  }

  /**
   * Frees the activations, the KV cache and the parameters once the jobs already queued have
   * run (idempotent). Later calls reject with `DISPOSED`.
   */
  dispose(): void {
    this.native.dispose();
    this.params.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
