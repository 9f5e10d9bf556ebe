/**
 * A tiny random Quiet-STaR model for the evaluation and thinking-generation suites: a byte-level Llama
 * (V 258 + the two markers, D 32, 2 layers, GQA 4:2) in f64 with every parameter random — the mixing head
 * included, so thinking changes the predictions.
 */
import { Model, createByteTokenizer, type Engine, type ModelConfigInput } from '../../lib/index.js';
import { QuietStarModel, type QuietStarOptions } from '../../lib/quietstar/index.js';
import { randomizeParams } from './model.js';

export const TINY_LLAMA: ModelConfigInput = {
  modelType: 'llama',
  vocabSize: 258,
  dModel: 32,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  dFF: 48,
  maxSeqLen: 96,
  eosTokenId: 257,
};

/** The tiny model with `options` (default nAhead 5: a thought of 2 sampled tokens). */
export async function tinyQuietStar(engine: Engine, options: Partial<QuietStarOptions> = {}, seed = 11): Promise<QuietStarModel> {
  using base = await Model.create(engine, TINY_LLAMA, { dtype: 'f64', optimizer: false });
  const tok = createByteTokenizer({ bosToken: '<s>', eosToken: '</s>' });
  const qs = await QuietStarModel.fromModel(base, tok, { quietstar: { nAhead: 5, ...options }, optimizer: false });
  await randomizeParams(qs.model, seed, (name) => (name.startsWith('talk_head') ? 0.6 : 0.3));
  return qs;
}
