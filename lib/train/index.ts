/**
 * Plain language-model training: schedule, config, the trainLm loop, evaluation, checkpoints.
 */
export { trainLm, type TrainLmMetrics, type TrainLmOptions } from './train-lm.js';
export { METRICS_FILE } from './loop.js';
export { resolveTrainLmConfig, type TrainLmConfig, type ResolvedTrainLmConfig } from './config.js';
export { lrSchedule, lrAt, type ScheduleKind, type ScheduleOptions } from './schedule.js';
export { evaluateLm, scoreBatches, type EvalResult, type ScoringModel } from './eval.js';
export {
  saveCheckpoint,
  loadCheckpoint,
  readTrainerState,
  resolveCheckpointDir,
  pruneCheckpoints,
  checkpointName,
  TRAINER_STATE_FILE,
  OPTIMIZER_FILE,
  LATEST_FILE,
  type TrainerState,
} from './checkpoint.js';
