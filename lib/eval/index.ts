/**
 * Evaluation (spec §4): the paper's zero-shot metric, the GSM8K / CommonsenseQA loaders and tasks, zero-shot
 * evaluation with and without thinking, and the hard-token analysis with its heat map.
 */
export { paperMetricScore, paperMetricMean, type PaperMetricInput } from './paper-metric.js';
export { loadGsm8k, loadCommonsenseQa, gsm8kPrompt, csqaPrompt, gsm8kGold, type QaExample } from './datasets.js';
export { gsm8kTask, csqaTask, digitTokenIds, newlineId, firstNumber, firstChoice, type AnswerTask } from './tasks.js';
export {
  evaluateAnswers,
  type AnswerEvalOptions,
  type AnswerEvalResult,
  type AnswerExampleResult,
  type WithWithout,
} from './zero-shot.js';
export {
  hardTokenAnalysis,
  documentWindows,
  type HardTokenOptions,
  type HardTokenResult,
  type HardTokenWindow,
} from './hard-tokens.js';
export { nllDeciles, quantile, type NllDecile } from './deciles.js';
export { hardTokenHeatmapHtml, tokenPieces, escapeHtml, type HeatmapInput, type HeatmapOptions } from './heatmap.js';
