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
export type { DType, DeviceName, MatmulPrecision } from './native.js';
export { Model, type ModelOptions, type TokenBatch, type LogitsBatch, type DecodeStep } from './model/model.js';
export {
  createModelConfig,
  modelFamily,
  MODEL_TYPES,
  type ModelConfig,
  type ModelConfigInput,
  type ModelFamily,
  type ModelType,
} from './model/config.js';
export {
  loadTokenizer,
  createByteTokenizer,
  HfTokenizer,
  ScoreBpeTokenizer,
  loadHfTokenizer,
  loadGpt2Files,
  loadLlama2cTokenizer,
  loadSentencePieceModel,
  type Tokenizer,
  type EncodeOptions as TokenizerEncodeOptions,
  type DecodeOptions as TokenizerDecodeOptions,
  type ByteTokenizerOptions,
  type Llama2cTokenizerOptions,
} from './tokenizer/index.js';
export {
  loadPretrained,
  loadWeights,
  savePretrained,
  type LoadPretrainedOptions,
  type SavePretrainedOptions,
} from './hf/checkpoint.js';
export { SafetensorsReader, writeSafetensors, type SafetensorsDType, type SafetensorsEntry } from './hf/safetensors.js';
export { modelConfigFromHF, modelConfigToHF, readModelConfig } from './hf/config.js';
export { generate, generateStream, type GenerateOptions, type GenerateResult, type GenerateStep } from './generate.js';
export {
  generateWithThoughts,
  generateWithThoughtsStream,
  thinkingPromptLimit,
  type ThinkGenerateOptions,
  type ThinkGenerateResult,
  type ThinkGenerateStep,
} from './think-generate.js';
export * from './data/index.js';
export * from './train/index.js';
export * from './quietstar/index.js';
export * from './eval/index.js';
export { runDemo, type DemoOptions, type DemoMetrics, type DemoProgress, type DemoPhase } from './demo/pipeline.js';
export { DEMO_SIZES, demoSize, type DemoSize, type DemoSizeName } from './demo/config.js';
export { arithmeticCorpus, type ArithmeticCorpus, type ArithmeticCorpusOptions, type ArithmeticProblem } from './demo/corpus.js';
