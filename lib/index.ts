/**
 * quietstar: Quiet-STaR for Node.js. Public API.
 */
export { Engine, type EngineOptions, type MemoryInfo } from './engine.js';
export { Tensor, type AnyTypedArray } from './tensor.js';
export { Ops, type WeightLayout } from './ops.js';
export { Parameters, type ParameterSpec, type AdamWOptions, type BufferName } from './params.js';
export { scope, Scope } from './scope.js';
export { QuietstarError, type ErrorCode } from './errors.js';
export { backendInfo, opNames, formatBackendInfo, type BackendInfo } from './info.js';
export type { DType, DeviceName } from './native.js';
