/**
 * Engine: one compute device (CPU or a CUDA GPU) with its own compute thread.
 *
 * Every op runs off the JS thread on the engine's compute thread, in the order it was called,
 * and returns a Promise; the event loop keeps running meanwhile. Native memory (tensors,
 * parameters) is freed by `dispose()` (or `using`), never by the garbage collector, and
 * `memory()` reports what is held.
 *
 * ```ts
 * using engine = Engine.create();                 // CUDA if usable, else CPU
 * using x = engine.tensor([1, 2, 3, 4], [2, 2]);
 * const { out } = await engine.ops.geluForward({ inp: x });
 * console.log(await out.array());
 * ```
 */
import { QuietstarError } from './errors.js';
import {
  loadBinding,
  type DType,
  type DeviceName,
  type MatmulPrecision,
  type NativeEngine,
  type NativeMemory,
  type NativeTensor,
} from './native.js';
import { Ops } from './ops.js';
import { Parameters, type ParameterSpec } from './params.js';
import { Tensor, type AnyTypedArray } from './tensor.js';

/** Options of {@link Engine.create}. */
export interface EngineOptions {
  /**
   * Where to compute. `'auto'` picks CUDA when a usable GPU exists, else the CPU;
   * the `QUIETSTAR_DEVICE` environment variable (cpu | cuda) overrides `'auto'`.
   * An explicit `'cuda'` that cannot be honoured throws `UNAVAILABLE` with the reason.
   * @defaultValue 'auto'
   */
  device?: 'auto' | DeviceName;
  /**
   * CPU threads for kernels (one OpenMP pool shared by GEMM and every other kernel).
   * 0 means all cores.
   * @defaultValue 0
   */
  threads?: number;
  /** CUDA device index. @defaultValue 0 */
  cudaDevice?: number;
  /**
   * Matrix products on a CUDA engine. `'bf16'`: the inputs of every GEMM are rounded to bf16 and
   * multiplied on tensor cores with f32 accumulation, while weights, AdamW state and activations
   * stay f32 (mixed precision with f32 masters). `'tf32'`: TF32 tensor cores. `'f32'`: exact f32,
   * the math of the CPU kernels. `'auto'` is the `QUIETSTAR_MATMUL` environment variable when
   * set, else `'bf16'`. A CPU engine always computes in f32 / f64 (the option is ignored there).
   * @defaultValue 'auto'
   */
  precision?: 'auto' | MatmulPrecision;
}

/** Bytes held by an engine (see {@link Engine.memory}). */
export interface MemoryInfo extends NativeMemory {
  /** The engine's device. */
  device: DeviceName;
}

const PRECISIONS = ['auto', 'f32', 'tf32', 'bf16'];

function validateOptions(options: EngineOptions): Required<EngineOptions> {
  const device = options.device ?? 'auto';
  if (!['auto', 'cpu', 'cuda'].includes(device)) {
    throw new QuietstarError(`engine.device must be 'auto', 'cpu' or 'cuda' (got ${JSON.stringify(device)})`, 'INVALID_ARGUMENT');
  }
  const threads = options.threads ?? 0;
  if (!Number.isInteger(threads) || threads < 0) {
    throw new QuietstarError(`engine.threads must be an integer >= 0 (got ${String(threads)})`, 'INVALID_ARGUMENT');
  }
  const cudaDevice = options.cudaDevice ?? 0;
  if (!Number.isInteger(cudaDevice) || cudaDevice < 0) {
    throw new QuietstarError(`engine.cudaDevice must be an integer >= 0 (got ${String(cudaDevice)})`, 'INVALID_ARGUMENT');
  }
  const precision = options.precision ?? 'auto';
  if (!PRECISIONS.includes(precision)) {
    throw new QuietstarError(
      `engine.precision must be 'auto', 'f32', 'tf32' or 'bf16' (got ${JSON.stringify(precision)})`,
      'INVALID_ARGUMENT',
    );
  }
  return { device, threads, cudaDevice, precision };
}

const ARRAY_FOR: Record<DType, (n: number[]) => AnyTypedArray> = {
  f32: (n) => Float32Array.from(n),
  f64: (n) => Float64Array.from(n),
  i32: (n) => Int32Array.from(n),
  u8: (n) => Uint8Array.from(n),
  bf16: () => {
    throw new QuietstarError('bf16 tensors are made from Uint16Array bit patterns, or with convert()', 'INVALID_ARGUMENT');
  },
  f16: () => {
    throw new QuietstarError('f16 tensors are made from Uint16Array bit patterns, or with convert()', 'INVALID_ARGUMENT');
  },
};

function naturalDtype(data: AnyTypedArray): DType | undefined {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Float64Array) return 'f64';
  if (data instanceof Int32Array) return 'i32';
  if (data instanceof Uint8Array) return 'u8';
  return undefined;
}

export class Engine {
  /** @internal */
  readonly native: NativeEngine;
  /** The kernels as typed async functions. */
  readonly ops: Ops;

  private constructor(native: NativeEngine) {
    this.native = native;
    this.ops = new Ops(this);
  }

  /** Starts an engine (and its compute thread). */
  static create(options: EngineOptions = {}): Engine {
    const resolved = validateOptions(options);
    const binding = loadBinding();
    return new Engine(new binding.NativeEngine(resolved));
  }

  get device(): DeviceName {
    return this.native.device;
  }
  get threads(): number {
    return this.native.threads;
  }
  /** The matrix-product precision in use: always `'f32'` on a CPU engine. */
  get precision(): MatmulPrecision {
    return this.native.precision;
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** Jobs queued or running on the compute thread. */
  get pending(): number {
    return this.native.pending;
  }

  /**
   * A tensor holding a copy of `data`. A plain number array becomes `dtype` (default f32);
   * a typed array keeps its own type (Uint16Array needs dtype 'bf16' or 'f16').
   * `shape` defaults to `[data.length]`.
   */
  tensor(data: number[] | AnyTypedArray, shape?: number[], dtype?: DType): Tensor {
    const array = Array.isArray(data) ? ARRAY_FOR[dtype ?? 'f32'](data) : data;
    const natural = naturalDtype(array);
    if (dtype && natural && dtype !== natural) {
      throw new QuietstarError(`tensor(): dtype '${dtype}' does not match a ${array.constructor.name}`, 'INVALID_ARGUMENT');
    }
    const native = this.native.tensorFromArray(array, shape ?? [array.length], dtype ?? natural);
    return Tensor.wrap(this.native, native);
  }

  /** A zero-filled tensor. */
  zeros(shape: number[], dtype: DType = 'f32'): Tensor {
    return Tensor.wrap(this.native, this.native.empty(dtype, shape));
  }

  /**
   * Runs the native op `op` (see `opNames()`): tensors by name, numbers/booleans/strings as
   * attributes. Resolves with the op's outputs by name; tensors updated in place (gradients)
   * come back as the same objects that were passed in.
   */
  async run(
    op: string,
    tensors: Record<string, Tensor | undefined>,
    attrs: Record<string, number | boolean | string | undefined> = {},
  ): Promise<Record<string, Tensor>> {
    const nativeTensors: Record<string, NativeTensor | undefined> = {};
    for (const [k, v] of Object.entries(tensors)) {
      if (v !== undefined && !(v instanceof Tensor)) {
        throw new QuietstarError(`${op}: '${k}' must be a Tensor`, 'INVALID_ARGUMENT');
      }
      nativeTensors[k] = v?.native;
    }
    const numbers: Record<string, number | boolean> = {};
    const strings: Record<string, string> = {};
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined) continue;
      if (typeof v === 'string') strings[k] = v;
      else numbers[k] = v;
    }
    const out = await this.native.run(op, nativeTensors, numbers, strings);
    const result: Record<string, Tensor> = {};
    for (const [k, v] of Object.entries(out)) result[k] = Tensor.wrap(this.native, v);
    return result;
  }

  /** Parameters, gradients and AdamW state, each in one flat buffer with named views. */
  async createParameters(
    specs: ParameterSpec[],
    options: { dtype?: 'f32' | 'f64'; optimizer?: boolean } = {},
  ): Promise<Parameters> {
    const native = await this.native.createParameters(specs, options.dtype ?? 'f32', options.optimizer ?? true);
    return new Parameters(this, native);
  }

  /**
   * Host and device bytes held by this engine's tensors and buffers. On CUDA, `deviceBytes` is
   * what tensors hold and `deviceReservedBytes` what the engine holds from the GPU, including
   * freed blocks cached for reuse. When the GPU runs out, the cache is given back and the
   * allocation retried once before `OUT_OF_MEMORY`.
   */
  memory(): MemoryInfo {
    return { device: this.device, ...this.native.memory() };
  }

  /**
   * Gives the device memory cached for reuse (freed tensors' blocks) back to the GPU, e.g. before
   * another program or engine needs it; returns the bytes released (0 on the CPU).
   */
  releaseCachedMemory(): number {
    return this.native.releaseCachedMemory();
  }

  /** Waits for every queued job (and, on CUDA, the stream). */
  async synchronize(): Promise<void> {
    await this.native.synchronize();
  }

  /** Stops the compute thread after its queue and frees the engine (idempotent). */
  dispose(): void {
    this.native.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
