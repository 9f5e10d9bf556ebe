/**
 * Quiet-STaR (Zelikman et al. 2024): the algorithm options and the model with thought markers,
 * thought embeddings and mixing head over the native two-phase training step.
 */
export {
  resolveQuietStarOptions,
  chainSteps,
  thoughtLength,
  DEFAULT_QUIETSTAR_OPTIONS,
  type QuietStarOptions,
  type MixingMode,
} from './options.js';
export {
  QuietStarModel,
  quietstarParamSpecs,
  START_THOUGHT,
  END_THOUGHT,
  QUIETSTAR_TOKENS_FILE,
  type QuietStarBatch,
  type QuietStarStepMetrics,
  type EvalBatch,
  type EvalForward,
  type EvalLogits,
  type ThinkDecodeResult,
  type QuietStarFromModelOptions,
  type QuietStarFromPretrainedOptions,
  type QuietStarLoadOptions,
  type QuietStarSaveOptions,
} from './model.js';
export {
  resolveQuietStarConfig,
  type QuietStarConfig,
  type QuietStarTrainingConfig,
  type ResolvedQuietStarConfig,
  type CropMode,
} from './config.js';
export {
  loadQuietStarData,
  QuietStarDataset,
  QuietStarLoader,
  makeQuietStarBatch,
  type QuietStarData,
  type QuietStarDataOptions,
  type QuietStarDataBatch,
} from './data.js';
export {
  trainQuietStar,
  evaluateQuietStar,
  type QuietStarTrainMetrics,
  type QuietStarTrainOptions,
} from './train.js';
export {
  saveQuietStarCheckpoint,
  loadQuietStarCheckpoint,
  readQuietStarTrainerState,
  type QuietStarTrainerState,
} from './checkpoint.js';
