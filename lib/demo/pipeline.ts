/**
 * runDemo: the embedded demo, end to end, with nothing downloaded.
 *
 *   1. corpus     multi-step arithmetic generated from the seed (lib/demo/corpus.ts), held-out split
 *   2. pretrain   a tiny Llama from scratch on it, byte tokenizer (trainLm)
 *   3. quietstar  Quiet-STaR on the same corpus (QuietStarModel.fromModel + trainQuietStar)
 *   4. evaluate   on the held-out data, base against thinking: per-token NLL by difficulty decile
 *                 (hardTokenAnalysis), answer accuracy (evaluateAnswers: the paper's whitelist
 *                 metric and greedy exact match), example thoughts (generateWithThoughts)
 *   5. write      OUT/model (loadable by `quietstar eval --model OUT/model`), OUT/metrics.json
 *                 (every figure) and OUT/report.html (plots, tables, thoughts, configuration)
 *
 * ```ts
 * using engine = Engine.create({ device: 'cpu' });
 * const metrics = await runDemo(engine, { outDir: 'demo-out', size: 'default' });
 * console.log(metrics.verdict.headline);
 * ```
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';

import { LmDataset } from '../data/dataset.js';
import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { hardTokenAnalysis, hardTokenHeatmapHtml, type HardTokenResult } from '../eval/hard-tokens.js';
import { evaluateAnswers, gsm8kTask, type AnswerEvalResult } from '../eval/zero-shot.js';
import { createModelConfig } from '../model/config.js';
import { Model } from '../model/model.js';
import { QuietStarDataset } from '../quietstar/data.js';
import { QuietStarModel } from '../quietstar/model.js';
import { resolveQuietStarOptions, type QuietStarOptions } from '../quietstar/options.js';
import { trainQuietStar } from '../quietstar/train.js';
import { generateWithThoughts } from '../think-generate.js';
import { createByteTokenizer, type Tokenizer } from '../tokenizer/index.js';
import { trainLm } from '../train/train-lm.js';
import { answerTokenNll, type AnswerTokenNll } from './answer-tokens.js';
import { demoSize, type DemoSize, type DemoSizeName } from './config.js';
import { arithmeticCorpus, evaluateExpression, lastNumber, problemPrompt, type ArithmeticCorpus } from './corpus.js';
import { reportHtml } from './report.js';
import { byteTokenizerJson } from './tokenizer.js';
import { demoVerdict, type DemoVerdict } from './verdict.js';

/** The phases {@link DemoOptions.onProgress} reports. */
export type DemoPhase = 'pretrain' | 'baseline' | 'quietstar' | 'hard-tokens' | 'answers' | 'thoughts';

/** A progress report: `done` of `total` units of `phase`, with a few figures to show. */
export interface DemoProgress {
  phase: DemoPhase;
  done: number;
  total: number;
  info?: Record<string, string | number>;
}

/** Options of {@link runDemo}. */
export interface DemoOptions {
  /** Output folder (created; report.html, metrics.json and model/ are replaced). */
  outDir: string;
  /** A preset name or a size. @defaultValue 'default' */
  size?: DemoSizeName | DemoSize;
  /** Seed of the corpus, the weights, the data order and the thoughts. @defaultValue 0 */
  seed?: number;
  /** Called as each phase advances (progress bars). */
  onProgress?: (p: DemoProgress) => void;
}

/** One pretraining step's figures. */
export interface PretrainPoint {
  step: number;
  loss: number;
  evalLoss?: number;
}

/** One Quiet-STaR step's figures (means over the step's micro-batches). */
export interface QuietStarPoint {
  step: number;
  loss: number;
  nllBase: number;
  nllTalk: number;
  policyLoss: number;
  rewardMean: number;
  positiveShare: number;
  mixMean: number;
  mixMin: number;
  mixMax: number;
  evalNllBase?: number;
  evalNllTalk?: number;
}

/** A greedy answer generated with thinking, each output token beside the thought before it. */
export interface ThoughtExample {
  prompt: string;
  gold: string;
  generated: string;
  correct: boolean;
  /** Per output token: the thought's ids and text, then the token's text. */
  steps: { thoughtIds: number[]; thought: string; token: string }[];
}

/** Everything the demo measured: the content of metrics.json. */
export interface DemoMetrics {
  size: string;
  seed: number;
  config: { size: DemoSize; model: Record<string, unknown>; quietstar: QuietStarOptions; parameters: number };
  backend: { device: string; threads: number; cpus: number; cpuModel: string; platform: string; node: string };
  corpus: { trainDocuments: number; heldOutDocuments: number; trainTokens: number; heldOutTokens: number; heldOutProblems: number; sample: string };
  /** Wall time of each phase and in all, in seconds (pretrain includes the baseline analysis). */
  timings: { corpus: number; pretrain: number; quietstar: number; hardTokens: number; answers: number; thoughts: number; write: number; total: number };
  pretrain: { curve: PretrainPoint[]; finalLoss: number; finalEvalLoss?: number };
  quietstar: { curve: QuietStarPoint[] };
  hardTokens: Omit<HardTokenResult, 'windows'>;
  /** The held-out answer digits alone (from the same windows). */
  answerDigits: AnswerTokenNll;
  /** The same analysis of the pretrained model, before Quiet-STaR (w = 0: no thinking effect). */
  beforeQuietStar: { meanNll: number; hardestPerplexity: number; answerDigitNll: number };
  answers: { task: string; examples: number; paperMetric: AnswerEvalResult['paperMetric']; exactMatch?: AnswerEvalResult['exactMatch'] };
  thoughts: ThoughtExample[];
  verdict: DemoVerdict;
}

const seconds = (ms: number): number => Math.round(ms) / 1000;

/** New tokens of a generated answer: room for a worked one (" 37+48=85, 85-19=66\n"). */
const ANSWER_TOKENS = 24;

/** A clock of named phases. */
function phaseClock(): { lap(): number; total(): number } {
  const start = performance.now();
  let last = start;
  return {
    lap() {
      const now = performance.now();
      const ms = now - last;
      last = now;
      return seconds(ms);
    },
    total: () => seconds(performance.now() - start),
  };
}

async function pretrain(engine: Engine, size: DemoSize, seed: number, train: number[][], heldOut: number[][], progress: DemoOptions['onProgress']): Promise<{ model: Model; curve: PretrainPoint[] }> {
  const { seqLen } = size;
  const config = createModelConfig({ modelType: 'llama', vocabSize: 256, ...size.model, maxSeqLen: 4 * seqLen });
  const model = await Model.create(engine, config);
  try {
    await model.initWeights(seed);
    const data = { train: LmDataset.fromDocuments(train, { seqLen }), eval: LmDataset.fromDocuments(heldOut, { seqLen }) };
    const p = size.pretrain;
    const curve: PretrainPoint[] = [];
    const cfg = { maxSteps: p.steps, batchSize: p.batchSize, lr: p.lr, warmupSteps: p.warmupSteps, evalEvery: p.evalEvery, evalBatches: 0, seed };
    for await (const m of trainLm(model, data, cfg)) {
      curve.push({ step: m.step, loss: m.loss, ...(m.evalLoss !== undefined ? { evalLoss: m.evalLoss } : {}) });
      progress?.({ phase: 'pretrain', done: m.step, total: p.steps, info: { loss: m.loss.toFixed(3), tps: Math.round(m.tokensPerSecond) } });
    }
    return { model, curve };
  } catch (err) {
    model.dispose();
    throw err;
  }
}

async function quietstar(qs: QuietStarModel, size: DemoSize, seed: number, train: number[][], heldOut: number[][], progress: DemoOptions['onProgress']): Promise<QuietStarPoint[]> {
  const data = { train: QuietStarDataset.fromDocuments(train), eval: QuietStarDataset.fromDocuments(heldOut) };
  const q = size.quietstar;
  const config = {
    maxSteps: q.steps,
    batchSize: q.batchSize,
    microBatchSize: q.microBatchSize,
    lr: q.lr,
    warmupSteps: q.warmupSteps,
    schedule: 'constant' as const,
    evalEvery: q.evalEvery,
    evalBatches: 0,
    seqLen: size.seqLen,
    seed,
  };
  const curve: QuietStarPoint[] = [];
  for await (const m of trainQuietStar(qs, data, config)) {
    curve.push({
      step: m.step,
      loss: m.loss,
      nllBase: m.nllBase,
      nllTalk: m.nllTalk,
      policyLoss: m.policyLoss,
      rewardMean: m.rewardMean,
      positiveShare: m.positiveShare,
      mixMean: m.mixMean,
      mixMin: m.mixMin,
      mixMax: m.mixMax,
      ...(m.evalNllBase !== undefined ? { evalNllBase: m.evalNllBase, evalNllTalk: m.evalNllTalk! } : {}),
    });
    progress?.({ phase: 'quietstar', done: m.step, total: q.steps, info: { loss: m.loss.toFixed(3), reward: m.rewardMean.toExponential(1), w: m.mixMean.toFixed(3) } });
  }
  return curve;
}

/** Greedy answers with thinking for the first `n` held-out problems, each token beside its thought. */
async function thoughtExamples(qs: QuietStarModel, corpus: ArithmeticCorpus, n: number, seed: number, progress: DemoOptions['onProgress']): Promise<ThoughtExample[]> {
  const tok = qs.tokenizer;
  const problems = corpus.heldOutProblems.slice(0, n);
  if (problems.length === 0) return [];
  const newline = tok.encode('\n');
  const prompts = problems.map((p) => tok.encode(problemPrompt(p)));
  const out = await generateWithThoughts(qs, prompts, { maxNewTokens: ANSWER_TOKENS, temperature: 0, stopTokens: newline, thoughtSeed: seed });
  progress?.({ phase: 'thoughts', done: problems.length, total: problems.length });
  return problems.map((p, i) => {
    const ids = out.ids[i]!;
    const generated = tok.decode(ids);
    const answer = lastNumber(generated);
    return {
      prompt: problemPrompt(p),
      gold: p.answer,
      generated,
      correct: answer !== undefined && Number(answer) === evaluateExpression(p.question),
      steps: ids.map((id, j) => {
        const thoughtIds = out.thoughts[i]![j] ?? [];
        return { thoughtIds, thought: tok.decode(thoughtIds), token: tok.decode([id]) };
      }),
    };
  });
}

function checkOptions(options: DemoOptions): { outDir: string; size: DemoSize; sizeName: string; seed: number } {
  if (typeof options !== 'object' || options === null) throw new QuietstarError('runDemo: options must be an object {outDir, size?, seed?}', 'INVALID_ARGUMENT');
  const { outDir, seed = 0 } = options;
  if (typeof outDir !== 'string' || outDir === '') throw new QuietstarError('runDemo: options.outDir must be a folder path', 'INVALID_ARGUMENT');
  if (!Number.isSafeInteger(seed) || seed < 0) throw new QuietstarError(`runDemo: options.seed must be an integer >= 0 (got ${String(seed)})`, 'INVALID_ARGUMENT');
  const sizeArg = options.size ?? 'default';
  const size = typeof sizeArg === 'string' ? demoSize(sizeArg) : sizeArg;
  return { outDir, size, sizeName: typeof sizeArg === 'string' ? sizeArg : 'custom', seed };
}

const encodeAll = (tok: Tokenizer, texts: string[]): number[][] => texts.map((t) => tok.encode(t));
const count = (docs: number[][]): number => docs.reduce((s, d) => s + d.length, 0);

/** Runs the demo (see the module comment) and returns what it wrote to metrics.json. */
export async function runDemo(engine: Engine, options: DemoOptions): Promise<DemoMetrics> {
  const { outDir, size, sizeName, seed } = checkOptions(options);
  const progress = options.onProgress;
  const clock = phaseClock();

  const corpus = arithmeticCorpus({ ...size.corpus, seed });
  const tokenizer = createByteTokenizer();
  const train = encodeAll(tokenizer, corpus.train.map((d) => d.text));
  const heldOut = encodeAll(tokenizer, corpus.heldOut.map((d) => d.text));
  const tCorpus = clock.lap();

  const { model: base, curve: lmCurve } = await pretrain(engine, size, seed, train, heldOut, progress);
  let qs: QuietStarModel;
  try {
    qs = await QuietStarModel.fromModel(base, tokenizer, { quietstar: size.options, seed });
  } finally {
    base.dispose();
  }
  try {
    const e = size.eval;
    const analyse = (phase: DemoPhase): Promise<HardTokenResult> =>
      hardTokenAnalysis(qs, heldOut, {
        seqLen: size.seqLen,
        batchSize: e.batchSize,
        seed,
        ...(e.windows > 0 ? { limit: e.windows } : {}),
        onProgress: (done, total) => progress?.({ phase, done, total }),
      });
    // Before Quiet-STaR the mixing weight is 0: the held-out NLL of the pretrained model.
    const before = await analyse('baseline');
    const tPretrain = clock.lap();
    const qsCurve = await quietstar(qs, size, seed, train, heldOut, progress);
    const tQuietstar = clock.lap();

    const hard = await analyse('hard-tokens');
    const tHard = clock.lap();
    // The answer is the line's last number: direct (" 66") or, if the model writes it out, worked (" 37+48=85, 85-19=66").
    const task = { ...gsm8kTask(qs.tokenizer, 'arithmetic'), extract: lastNumber, maxNewTokens: ANSWER_TOKENS };
    const examples = corpus.heldOutProblems.slice(0, e.problems).map((p, i) => ({ id: `held-out-${i}`, question: p.question, prompt: problemPrompt(p), answer: p.answer }));
    const answers = await evaluateAnswers(qs, task, examples, {
      batchSize: e.batchSize,
      seed,
      maxLen: size.seqLen,
      maxNewTokens: ANSWER_TOKENS,
      onProgress: (done, total) => progress?.({ phase: 'answers', done, total }),
    });
    const tAnswers = clock.lap();
    const thoughts = await thoughtExamples(qs, corpus, e.examples, seed, progress);
    const tThoughts = clock.lap();

    await fsp.mkdir(outDir, { recursive: true });
    const modelDir = join(outDir, 'model');
    await qs.save(modelDir);
    await fsp.writeFile(join(modelDir, 'tokenizer.json'), JSON.stringify(byteTokenizerJson()) + '\n');

    const { windows: _windows, ...hardTokens } = hard;
    const cpus = os.cpus();
    const figures: Omit<DemoMetrics, 'verdict'> = {
      size: sizeName,
      seed,
      config: { size, model: { ...qs.model.config }, quietstar: resolveQuietStarOptions(qs.options), parameters: qs.model.numParameters() },
      backend: { device: engine.device, threads: engine.threads, cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', platform: `${os.platform()} ${os.arch()}`, node: process.version },
      corpus: {
        trainDocuments: corpus.train.length,
        heldOutDocuments: corpus.heldOut.length,
        trainTokens: count(train),
        heldOutTokens: count(heldOut),
        heldOutProblems: corpus.heldOutProblems.length,
        sample: corpus.train[0]!.text,
      },
      timings: { corpus: tCorpus, pretrain: tPretrain, quietstar: tQuietstar, hardTokens: tHard, answers: tAnswers, thoughts: tThoughts, write: 0, total: 0 },
      pretrain: { curve: lmCurve, finalLoss: lmCurve.at(-1)!.loss, ...(lmCurve.at(-1)?.evalLoss !== undefined ? { finalEvalLoss: lmCurve.at(-1)!.evalLoss! } : {}) },
      quietstar: { curve: qsCurve },
      hardTokens,
      answerDigits: answerTokenNll(hard.windows),
      beforeQuietStar: { meanNll: before.meanNllBase, hardestPerplexity: before.hardest.perplexityBase, answerDigitNll: answerTokenNll(before.windows).meanNllBase },
      answers: { task: answers.task, examples: answers.examples, paperMetric: answers.paperMetric, ...(answers.exactMatch ? { exactMatch: answers.exactMatch } : {}) },
      thoughts,
    };
    const metrics: DemoMetrics = { ...figures, verdict: demoVerdict(figures) };
    const heatmap = hardTokenHeatmapHtml(hard, qs.tokenizer, { maxTokens: 1500, title: 'Held-out tokens: green = thinking helped, red = hurt' });
    metrics.timings.write = clock.lap();
    metrics.timings.total = clock.total();
    await fsp.writeFile(join(outDir, 'metrics.json'), JSON.stringify(metrics, null, 2) + '\n');
    await fsp.writeFile(join(outDir, 'report.html'), reportHtml(metrics, { heatmapHtml: heatmap }));
    return metrics;
  } finally {
    qs.dispose();
  }
}
