// Types for the helpers exported by build-native.mjs (used by test/build-script.test.ts).

export const NAPI_VERSION: 8
export const DEFAULT_CUDA_ARCHS: readonly string[]
export const MARKER_SCHEMA: number
export const MARKER_NAME: string
export const ADDON_NAME: string
export const LOG_NAME: string

export interface NvccVersion {
  /** "major.minor", e.g. "13.0" */
  version: string
  /** the full version, e.g. "13.0.88" */
  full: string
}
export interface NvccCandidate {
  path: string
  /** "CUDACXX", "PATH", "/usr/local/cuda" or "/usr/local/cuda-*" */
  source: string
}
export interface NvccSearchEntry extends NvccCandidate {
  /** "not found", "did not answer --version" or "nvcc <version>" */
  status: string
}
export interface FoundNvcc extends NvccCandidate, NvccVersion {}

export interface NvccSearchOptions {
  env?: Record<string, string | undefined>
  listDir?: (dir: string) => string[]
  cudaRoot?: string
  platform?: NodeJS.Platform
}

export function parseNvccVersion(text: unknown): NvccVersion | null
export function compareVersions(a: string, b: string): -1 | 0 | 1
export function sortCudaDirs(names: readonly string[]): string[]
export function nvccCandidates(options?: NvccSearchOptions): NvccCandidate[]
export function findNvcc(
  options?: NvccSearchOptions & {
    isExecutable?: (file: string) => boolean
    getVersion?: (nvcc: string) => NvccVersion | null
  },
): { nvcc: FoundNvcc | null; searched: NvccSearchEntry[] }
export function describeNvccSearch(searched: readonly NvccSearchEntry[], env?: Record<string, string | undefined>): string

export type CudaMode = 'auto' | 'on' | 'off'
export function parseCudaMode(value: string | undefined | null): CudaMode
export function normalizeCudaArch(entry: string): string
export function parseCudaArchs(value: string | undefined | null): {
  archs: string[]
  added: string | null
  source: 'default' | 'QUIETSTAR_CUDA_ARCHS'
}
export function formatCudaArchs(archs: readonly string[] | string | null | undefined): string | null

export function stableStringify(value: unknown): string
export function markerMatches(marker: unknown, inputs: Record<string, unknown>): boolean
export function explainBuildFailure(text: string | null | undefined, root?: string | null): string
export function errorLines(text: string | null | undefined, max?: number): string[]

/** The fields of backendInfo() the build script reads; all optional. */
export interface BackendInfoLike {
  built?: string[]
  active?: string
  cudaArchs?: string | null
  nvccVersion?: string | null
  cudaUnavailableReason?: string | null
  cublas?: { found: boolean; path: string | null; reason: string | null }
  cpuThreads?: number
  gemmKernel?: string
}
export interface BuildOutcome {
  upToDate?: boolean
  tool?: 'cmake-js' | 'node-gyp'
  built?: string[]
  nvccVersion?: string | null
  archs?: string[] | null
  cudaSkipped?: string | null
  fallbacks?: string[]
}
export function formatSummary(info: BackendInfoLike | null | undefined, build: BuildOutcome): string

export function hashSources(root: string): { hash: string; files: number }
export function main(argv?: string[]): Promise<number>
