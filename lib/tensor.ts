/**
 * Tensors: n-dimensional arrays in native memory, on the CPU or a CUDA device.
 *
 * Create them with an {@link Engine} (`engine.tensor(data, shape)`, `engine.zeros(...)`), read
 * them back with `await t.data()` (or `t.dataSync()` on a CPU engine), and free them with
 * `t.dispose()` or `using t = ...`: native memory is released deterministically, never left to
 * the garbage collector. Disposing while a queued job still reads the tensor is safe: the memory
 * goes once that job has run.
 */
import type { DType, DeviceName, NativeEngine, NativeTensor } from './native.js';
import { QuietstarError } from './errors.js';
import { noteNewTensor } from './scope.js';

/** The typed array that holds each dtype (bf16 and f16 as raw 16-bit patterns). */
export type TypedArrayFor<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'f64'
    ? Float64Array
    : D extends 'i32'
      ? Int32Array
      : D extends 'u8'
        ? Uint8Array
        : Uint16Array;

export type AnyTypedArray = Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array;

export function typedArrayOf(dtype: DType, buffer: ArrayBuffer): AnyTypedArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(buffer);
    case 'f64':
      return new Float64Array(buffer);
    case 'i32':
      return new Int32Array(buffer);
    case 'u8':
      return new Uint8Array(buffer);
    case 'bf16':
    case 'f16':
      return new Uint16Array(buffer);
  }
}

// One TS wrapper per native tensor, so in-place op outputs come back as the caller's object.
const wrappers = new WeakMap<NativeTensor, Tensor>();

export class Tensor {
  /** @internal */
  readonly native: NativeTensor;
  /** @internal */
  readonly engineNative: NativeEngine;

  /** @internal Use engine.tensor() / engine.zeros(). */
  constructor(engineNative: NativeEngine, native: NativeTensor) {
    this.engineNative = engineNative;
    this.native = native;
  }

  /** @internal The unique wrapper of a native tensor. */
  static wrap(engineNative: NativeEngine, native: NativeTensor): Tensor {
    let t = wrappers.get(native);
    if (!t) {
      t = new Tensor(engineNative, native);
      wrappers.set(native, t);
      noteNewTensor(t);
    }
    return t;
  }

  get dtype(): DType {
    return this.native.dtype;
  }
  get shape(): number[] {
    return this.native.shape;
  }
  get device(): DeviceName {
    return this.native.device;
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Copies the contents back (after every job queued before this call). */
  async data(): Promise<AnyTypedArray> {
    this.checkAlive();
    return typedArrayOf(this.dtype, await this.engineNative.read(this.native));
  }

  /** Synchronous copy; CPU engines only, with no job in flight. */
  dataSync(): AnyTypedArray {
    this.checkAlive();
    return typedArrayOf(this.dtype, this.engineNative.readSync(this.native));
  }

  /** Contents as a plain number array (convenient in tests and small reads). */
  async array(): Promise<number[]> {
    return Array.from(await this.data());
  }

  /** A view of `shape` starting `offset` elements in; shares memory with this tensor. */
  view(offset: number, shape: number[]): Tensor {
    this.checkAlive();
    return Tensor.wrap(this.engineNative, this.engineNative.view(this.native, offset, shape));
  }

  /** The same elements with another shape (a view). */
  reshape(shape: number[]): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.size) {
      throw new QuietstarError(`reshape: ${JSON.stringify(shape)} has ${n} elements, tensor has ${this.size}`, 'INVALID_ARGUMENT');
    }
    return this.view(0, shape);
  }

  /** Frees the native memory (idempotent). */
  dispose(): void {
    this.native.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}${JSON.stringify(this.shape)}, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  private checkAlive(): void {
    if (this.native.disposed) {
      throw new QuietstarError(`${this.toString()} was disposed`, 'DISPOSED');
    }
  }
}
