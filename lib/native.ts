/**
 * Loads the native addon and types its interface. Nothing else in lib/ touches the addon
 * directly except through these types.
 *
 * The addon is `build/Release/quietstar.node`, found with `bindings` from the package root
 * (computed from this file's URL, so `lib/*.ts` under tsx and `dist/*.js` resolve the same
 * file without stack-trace guessing). `QUIETSTAR_ADDON` points at another .node file.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { QuietstarError } from './errors.js';
import type { ModelConfig } from './model/config.js';
import type { QuietStarStepMetrics } from './quietstar/model.js';
import type { QuietStarOptions } from './quietstar/options.js';

/** Tensor element types. bf16 and f16 are storage formats (convert to f32 to compute). */
export type DType = 'f32' | 'f64' | 'bf16' | 'f16' | 'i32' | 'u8';
export type DeviceName = 'cpu' | 'cuda';

export interface NativeTensor {
  readonly dtype: DType;
  readonly shape: number[];
  readonly device: DeviceName;
  readonly disposed: boolean;
  dispose(): void;
}

export interface NativeMemory {
  hostBytes: number;
  deviceBytes: number;
  hostPeakBytes?: number;
  devicePeakBytes?: number;
  hostBuffers?: number;
  deviceBuffers?: number;
  deviceFreeBytes?: number;
  deviceTotalBytes?: number;
  // CUDA engines only: freed device blocks stay cached for reuse instead of going back to the
  // device (cudaFree synchronises the whole GPU), as in PyTorch's caching allocator.
  /** Bytes held from the device: tensors' blocks (rounded up to 512 B) plus the cache. */
  deviceReservedBytes?: number;
  /** The most `deviceReservedBytes` has been. */
  deviceReservedPeakBytes?: number;
  /** The free part of `deviceReservedBytes`, reused by the next allocations that fit. */
  deviceCachedBytes?: number;
  /** Device allocations (cudaMalloc) made so far. */
  deviceAllocations?: number;
  /** Allocations served from the cache without touching the device. */
  deviceCacheHits?: number;
}

export interface NativeParamEntry {
  name: string;
  shape: number[];
  offset: number;
  numel: number;
  decay: boolean;
}

export interface NativeParameters {
  entries(): NativeParamEntry[];
  buffer(which: 'params' | 'grads' | 'm' | 'v'): NativeTensor;
  adamwStep(config: {
    lr?: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
    bf16State?: boolean;
  }): Promise<number>;
  clipGradNorm(maxNorm: number): Promise<number>;
  zeroGrad(): Promise<void>;
  setStep(step: number): Promise<void>;
  dispose(): void;
}

/**
 * The configuration the native core reads: lib/model/config.ts's ModelConfig without the token
 * ids, with any string for modelType (the core names an unknown one); extra fields are ignored.
 */
export type NativeModelConfig = Omit<ModelConfig, 'modelType' | 'bosTokenId' | 'eosTokenId' | 'padTokenId'> & { modelType: string };

/** A transformer over a NativeParameters (native/addon/model_wrap.h). Arrays are copied at the call. */
export interface NativeModel {
  readonly cacheLength: number;
  readonly disposed: boolean;
  initWeights(seed: number): Promise<void>;
  forward(ids: Int32Array, targets: Int32Array, B: number, T: number): Promise<{ loss: number; tokens: number }>;
  backward(lossScale: number): Promise<void>;
  tokenLosses(ids: Int32Array, targets: Int32Array, B: number, T: number): Promise<Float32Array>;
  logits(ids: Int32Array, B: number, T: number, lastOnly: boolean): Promise<NativeTensor>;
  resetCache(B: number, maxLen: number): Promise<void>;
  decode(ids: Int32Array, positions: Int32Array, valid: Uint8Array | undefined, n: number): Promise<NativeTensor>;
  dispose(): void;
}

/** The native Quiet-STaR options (native/include/quietstar/quietstar.h QuietStarOptions): lib/quietstar/options.ts with the mixing mode as a boolean and the marker ids. */
export type NativeQuietStarOptions = Omit<QuietStarOptions, 'mixing'> & {
  startId: number;
  endId: number;
  /** true: w weights the base (the paper); false: w weights the thought (the reference code). */
  mixingWeightsBase: boolean;
};

/** Figures of one Quiet-STaR micro-step (native QuietStarMetrics), as lib/quietstar/model.ts documents them. */
export type NativeQuietStarMetrics = QuietStarStepMetrics;

/**
 * The Quiet-STaR step over a NativeModel (native/addon/quietstar_wrap.h). Token arrays are
 * (B·T) row-major and copied at the call; `valid` undefined = every token valid; thoughts
 * are (B·nPasses, T, nAhead − 3) int32.
 */
export interface NativeQuietStar {
  readonly disposed: boolean;
  initParameters(initTokenId: number, seed: number): Promise<void>;
  sampleThoughts(ids: Int32Array, valid: Uint8Array | undefined, B: number, T: number, seed: number, rowIds?: Int32Array): Promise<Int32Array>;
  forwardBackward(
    ids: Int32Array,
    valid: Uint8Array | undefined,
    labels: Int32Array,
    B: number,
    T: number,
    thoughts: Int32Array,
    backward: boolean,
    lossScale: number,
  ): Promise<NativeQuietStarMetrics>;
  step(
    ids: Int32Array,
    valid: Uint8Array | undefined,
    labels: Int32Array,
    B: number,
    T: number,
    seed: number,
    lossScale: number,
  ): Promise<NativeQuietStarMetrics & { thoughts: Int32Array }>;
  debugTensor(name: string): Promise<{ data: Float32Array | Float64Array; shape: number[] }>;
  /**
   * After forwardBackward: talk step 0's mixed logits and the base logits at K (row, position)
   * pairs, `at` = (K, 2) int32 row-major; each result (K, V) row-major, nothing masked.
   */
  talkLogits(at: Int32Array, K: number): Promise<{ mixed: Float32Array | Float64Array; base: Float32Array | Float64Array }>;
  /** Thinking decode's private KV cache: B rows, maxLen text slots (plus one thought branch). */
  thinkResetCache(B: number, maxLen: number): Promise<void>;
  /**
   * Thinking decode (spec §5): ids / positions / valid (B·n) appended to the cache, then a thought
   * per row; logits (B, V) mixed with the markers −inf, baseLogits (B, V) plain, thoughts (B, nAhead − 3).
   */
  thinkDecode(
    ids: Int32Array,
    positions: Int32Array,
    valid: Uint8Array | undefined,
    B: number,
    n: number,
    seed: number,
    rowIds: Int32Array | undefined,
  ): Promise<{ logits: Float32Array | Float64Array; baseLogits: Float32Array | Float64Array; thoughts: Int32Array }>;
  dispose(): void;
}

/** The matrix-product precision of an engine (see {@link EngineOptions.precision}). */
export type MatmulPrecision = 'f32' | 'tf32' | 'bf16';

export interface NativeEngine {
  readonly device: DeviceName;
  readonly threads: number;
  readonly precision: MatmulPrecision;
  readonly disposed: boolean;
  readonly pending: number;
  tensorFromArray(data: ArrayBufferView, shape: number[], dtype?: DType): NativeTensor;
  empty(dtype: DType, shape: number[]): NativeTensor;
  view(tensor: NativeTensor, offset: number, shape: number[]): NativeTensor;
  run(
    op: string,
    tensors: Record<string, NativeTensor | undefined>,
    numbers: Record<string, number | boolean | undefined>,
    strings: Record<string, string | undefined>,
  ): Promise<Record<string, NativeTensor>>;
  read(tensor: NativeTensor): Promise<ArrayBuffer>;
  readSync(tensor: NativeTensor): ArrayBuffer;
  memory(): NativeMemory;
  releaseCachedMemory(): number;
  synchronize(): Promise<void>;
  debugSleep(ms: number): Promise<void>;
  createParameters(
    specs: { name: string; shape: number[]; decay?: boolean }[],
    dtype: DType,
    withOptimizer: boolean,
  ): Promise<NativeParameters>;
  createModel(config: NativeModelConfig, parameters: NativeParameters): Promise<NativeModel>;
  dispose(): void;
}

export interface GpuInfo {
  index: number;
  name: string;
  computeCapability: string;
  memoryBytes: number;
  multiprocessors: number;
}

/** What was built and what this machine can run; `quietstar info --json` prints it. */
export interface BackendInfo {
  built: DeviceName[];
  active: DeviceName;
  cudaCompiled: boolean;
  cudaArchs: string | null;
  nvccVersion: string | null;
  cudaRuntimeVersion: string | null;
  cudaDriverVersion: string | null;
  cudaUsable: boolean;
  cudaUnavailableReason: string | null;
  gpus: GpuInfo[];
  cublas: { found: boolean; path: string | null; reason: string | null };
  gemm: { cpu: string; cuda: string };
  gemmKernel: string;
  cpuThreads: number;
  openmp: boolean;
  napiVersion: number;
}

export interface BindingModule {
  NativeEngine: new (options: { device?: string; threads?: number; cudaDevice?: number; precision?: string }) => NativeEngine;
  NativeTensor: abstract new (...args: never[]) => NativeTensor;
  backendInfo(extraCublasDirs?: string[]): BackendInfo;
  opNames(): string[];
  /** The parameter views of a model configuration, in layout order (names from the native core). */
  modelParamSpecs(config: NativeModelConfig): { name: string; shape: number[]; decay: boolean }[];
  /** The Quiet-STaR extra views (start/end embeddings, mixing head), appended after the model's. */
  quietstarParamSpecs(config: NativeModelConfig): { name: string; shape: number[]; decay: boolean }[];
  /** A Quiet-STaR step over a model whose parameters hold modelParamSpecs ++ quietstarParamSpecs. */
  createQuietStar(model: NativeModel, options: NativeQuietStarOptions): Promise<NativeQuietStar>;
  setErrorClass(ctor: typeof QuietstarError): void;
}

/** The package root: one level above lib/ (tsx) or dist/ (compiled). */
export const packageRoot: string = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const BUILD_COMMAND = 'npm rebuild quietstar (or, in a clone, `npm run build:native`)';

let cached: BindingModule | undefined;

/** Loads the addon once. Throws {@link QuietstarError} `ADDON_NOT_BUILT` naming the fix. */
export function loadBinding(): BindingModule {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const override = process.env.QUIETSTAR_ADDON;
  let mod: BindingModule;
  try {
    if (override) {
      mod = require(resolve(override)) as BindingModule;
    } else {
      if (existsSync(join(packageRoot, 'build', 'Debug', 'quietstar.node'))) {
        process.emitWarning(
          `quietstar: ignoring build/Debug/quietstar.node; loading build/Release (remove build/Debug if stale)`,
        );
      }
      const release = join(packageRoot, 'build', 'Release', 'quietstar.node');
      // `bindings` would prefer a stale Debug build; ask it for Release explicitly when present.
      const bindings = require('bindings') as (opts: { bindings: string; module_root: string; try?: string[][] }) => unknown;
      mod = bindings({
        bindings: 'quietstar.node',
        module_root: packageRoot,
        ...(existsSync(release) ? { try: [['module_root', 'build', 'Release', 'bindings']] } : {}),
      }) as BindingModule;
    }
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new QuietstarError(
      `quietstar's native addon is not built or failed to load (${reason}). Build it with: ${BUILD_COMMAND}. ` +
        `If npm skipped install scripts, allow them for quietstar and reinstall.`,
      'ADDON_NOT_BUILT',
    );
  }
  mod.setErrorClass(QuietstarError);
  cached = mod;
  return mod;
}
