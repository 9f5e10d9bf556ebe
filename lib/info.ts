/**
 * What quietstar was built with and what this machine can run.
 */
import { availableParallelism } from 'node:os';

import { loadBinding, type BackendInfo } from './native.js';

export type { BackendInfo } from './native.js';

/** Backends built and active, CUDA versions and GPUs, GEMM paths, cuBLAS location. */
export function backendInfo(): BackendInfo {
  return loadBinding().backendInfo();
}

/** Every op name `engine.run()` accepts. */
export function opNames(): string[] {
  return loadBinding().opNames();
}

/** A human-readable multi-line summary of {@link backendInfo}. */
export function formatBackendInfo(info: BackendInfo): string {
  const lines = [
    `backends built : ${info.built.join(', ')}${info.cudaCompiled ? ` (nvcc ${info.nvccVersion}, archs ${info.cudaArchs})` : ''}`,
    `active         : ${info.active}${info.active === 'cpu' && info.cudaUnavailableReason ? ` (CUDA: ${info.cudaUnavailableReason})` : ''}`,
    `CUDA runtime   : ${info.cudaRuntimeVersion ?? '-'}   driver: ${info.cudaDriverVersion ?? 'none'}`,
    `GPUs           : ${info.gpus.length ? info.gpus.map((g) => `${g.index}: ${g.name} (sm ${g.computeCapability}, ${(g.memoryBytes / 2 ** 30).toFixed(1)} GiB)`).join('; ') : 'none'}`,
    `GEMM           : cpu ${info.gemm.cpu}, cuda ${info.gemm.cuda}`,
    `cuBLAS         : ${info.cublas.found ? info.cublas.path : `not found (${info.cublas.reason})`}`,
    `CPU threads    : ${info.cpuThreads} (OpenMP ${info.openmp ? 'on' : 'off'}; Node sees ${availableParallelism()})`,
  ];
  return lines.join('\n');
}
