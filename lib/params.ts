/**
 * Parameters: weights, gradients and AdamW moments, each ONE flat native buffer with named,
 * shaped views (llm.c's layout). One buffer makes the optimizer step, clipping, zeroing and
 * checkpointing single passes. Views are aligned to 64 bytes; decayed views come first.
 */
import type { Engine } from './engine.js';
import type { NativeParamEntry, NativeParameters } from './native.js';
import type { Tensor } from './tensor.js';
import { Tensor as TensorClass } from './tensor.js';

/** One named parameter tensor. */
export interface ParameterSpec {
  name: string;
  shape: number[];
  /** Whether AdamW's weight decay applies (usually not for norm gains and biases). @defaultValue true */
  decay?: boolean;
}

/** AdamW hyper-parameters (torch.optim.AdamW semantics). */
export interface AdamWOptions {
  /** Learning rate. */
  lr: number;
  /** @defaultValue 0.9 */
  beta1?: number;
  /** @defaultValue 0.999 */
  beta2?: number;
  /** @defaultValue 1e-8 */
  eps?: number;
  /** Decoupled weight decay, applied to views with `decay`. @defaultValue 0.01 */
  weightDecay?: number;
  /**
   * The reference's precision (spec §3): the parameters and both moments are rounded to bf16
   * after every step, so an update smaller than half a bf16 ulp is lost, as in the reference's
   * pure-bf16 training (at lr 1e-6 most LM weights then never move). Off: f32 master weights
   * and moments. Needs f32 parameters.
   * @defaultValue false
   */
  bf16State?: boolean;
}

export type BufferName = 'params' | 'grads' | 'm' | 'v';

export class Parameters {
  readonly entries: readonly NativeParamEntry[];
  private readonly byName: Map<string, NativeParamEntry>;
  private stepCount = 0;
  private isDisposed = false;

  /** @internal use engine.createParameters() */
  constructor(
    private readonly engine: Engine,
    private readonly native: NativeParameters,
  ) {
    this.entries = native.entries();
    this.byName = new Map(this.entries.map((e) => [e.name, e]));
  }

  /** AdamW steps taken (restored with {@link setStep}). */
  get step(): number {
    return this.stepCount;
  }

  /** A flat buffer (P elements, padding included). */
  buffer(which: BufferName): Tensor {
    return TensorClass.wrap(this.engine.native, this.native.buffer(which));
  }

  /** The named view of a buffer, e.g. `view('wte')` or `view('wte', 'grads')`. */
  view(name: string, which: BufferName = 'params'): Tensor {
    const e = this.byName.get(name);
    if (!e) {
      throw new RangeError(`no parameter named '${name}' (have: ${[...this.byName.keys()].join(', ')})`);
    }
    return this.buffer(which).view(e.offset, e.shape);
  }

  /** One AdamW step over every parameter; resolves with the new step count. */
  async adamwStep(options: AdamWOptions): Promise<number> {
    this.stepCount = await this.native.adamwStep(options);
    return this.stepCount;
  }

  /** Global gradient norm; with maxNorm > 0 the gradients are scaled to at most it. */
  clipGradNorm(maxNorm = 0): Promise<number> {
    return this.native.clipGradNorm(maxNorm);
  }

  zeroGrad(): Promise<void> {
    return this.native.zeroGrad();
  }

  async setStep(step: number): Promise<void> {
    await this.native.setStep(step);
    this.stepCount = step;
  }

  dispose(): void {
    if (this.isDisposed) return;
    this.isDisposed = true;
    this.native.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
