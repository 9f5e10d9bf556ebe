/**
 * `quietstar train-lm`: plain next-token training (lib/train's trainLm) from a pretrained
 * folder, a fresh configuration, or a checkpoint; a progress bar on stderr, metrics as JSON
 * lines in <out>/metrics.jsonl, checkpoints in <out>/checkpoint-N, and the final weights as a
 * Hugging Face folder in <out> (with the tokenizer files copied beside them).
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';

import { loadLmData } from '../data/index.js';
import type { Engine } from '../engine.js';
import { loadPretrained, savePretrained } from '../hf/checkpoint.js';
import { modelConfigFromHF } from '../hf/config.js';
import { createModelConfig, type ModelConfigInput } from '../model/config.js';
import { Model } from '../model/model.js';
import { resolveCheckpointDir } from '../train/checkpoint.js';
import { METRICS_FILE, trainLm, type TrainLmConfig, type TrainLmMetrics } from '../train/index.js';
import {
  CORPUS_FLAGS,
  ENGINE_FLAGS,
  TRAIN_HELP_TAIL,
  TRAIN_IO_FLAGS,
  UsageError,
  corpusFlags,
  evalDataFlags,
  findTokenizer,
  int,
  num,
  openEngine,
  parseFlags,
  readJsonFile,
  required,
  saveDtypeFlag,
  seqLenFor,
  str,
  tokenizerHint,
  type FlagValues,
} from './common.js';
import { trainingProgress } from './progress.js';

export const TRAIN_LM_HELP = `usage: quietstar train-lm (--model DIR | --config FILE | --resume DIR) --data FILE --out DIR [options]

Trains a language model on next-token prediction (AdamW, warm-up then cosine/linear/constant decay,
gradient accumulation and clipping). Shows a progress bar on stderr, appends one JSON object per step
to OUT/metrics.jsonl, writes checkpoints (weights, optimizer, data position) to OUT/checkpoint-N, and
saves the final model as a Hugging Face folder in OUT.

model (one of):
  --model DIR              start from a Hugging Face folder
  --config FILE            start from random weights: an HF config.json (with model_type) or a JSON
                           object of quietstar ModelConfig fields (modelType, vocabSize, dModel, ...)
  --resume DIR             continue exactly from a checkpoint folder, or from OUT (its latest checkpoint)
data:
  --data FILE              text, JSONL with a text field, or pre-tokenised {"ids": [...]} lines
  --format F               text | jsonl | ids (default: by extension, .jsonl/.json = JSONL)
  --field NAME[,NAME...]   JSONL text field(s) (default text)
  --separator STR          split a text file into documents at STR
  --tokenizer FILE         tokenizer (default: the one in --model / --resume); not needed for ids data
  --seq-len T              tokens per row (default: min(the model's maxSeqLen, 256))
  --eval-data FILE         held-out corpus for evaluation loss and perplexity
  --eval-fraction F        or hold out this fraction of --data (default 0)
  --eval-every N           evaluate every N steps (default 0 = after the last step only)
  --eval-batches N         batches per evaluation (default 20; 0 = all held-out rows)
optimisation:
  --steps N                optimizer steps (default: one pass over the training rows)
  --lr LR                  peak learning rate (default 3e-4)
  --min-lr LR              learning rate at the end of the decay (default lr/10)
  --warmup N               linear warm-up steps (default 0)
  --schedule S             cosine | linear | constant (default cosine)
  --batch-size B           rows per micro-batch (default 8)
  --grad-accum N           micro-batches per step (default 1)
  --weight-decay W         AdamW weight decay (default 0.1)
  --clip C                 gradient-norm clipping, 0 = off (default 1)
  --seed S                 data order, and the initial weights with --config (default 0)
output:
  --out DIR                output folder (required)
  --checkpoint-every N     checkpoint every N steps (default 0 = after the last step only)
${TRAIN_HELP_TAIL}`;

const FLAGS = {
  ...ENGINE_FLAGS,
  ...CORPUS_FLAGS,
  ...TRAIN_IO_FLAGS,
  model: { type: 'string' },
  config: { type: 'string' },
  resume: { type: 'string' },
  steps: { type: 'string' },
  lr: { type: 'string' },
  'min-lr': { type: 'string' },
  warmup: { type: 'string' },
  schedule: { type: 'string' },
  'batch-size': { type: 'string' },
  'grad-accum': { type: 'string' },
  'weight-decay': { type: 'string' },
  clip: { type: 'string' },
  seed: { type: 'string' },
} as const;

// Tokenizer files copied beside the saved weights, so `--model OUT` finds its tokenizer.
const TOKENIZER_FILES = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'encoder.json',
  'vocab.bpe', 'tokenizer.model',
];

/** The files that make up the tokenizer at `path` (a folder or one file). */
async function tokenizerFiles(path: string): Promise<string[]> {
  const isDir = (await fsp.stat(path)).isDirectory();
  const dir = isDir ? path : dirname(path);
  const names = await fsp.readdir(dir);
  const wanted = (n: string): boolean => TOKENIZER_FILES.includes(n) || /^tok.*\.bin$/.test(n);
  if (isDir) return names.filter(wanted).map((n) => join(dir, n));
  // one file: itself, plus the companions its format reads
  const name = basename(path);
  const companions: Record<string, string[]> = {
    'tokenizer.json': ['tokenizer_config.json', 'special_tokens_map.json'],
    'vocab.json': ['merges.txt'],
    'encoder.json': ['vocab.bpe'],
    'merges.txt': ['vocab.json'],
    'vocab.bpe': ['encoder.json'],
  };
  return [path, ...(companions[name] ?? []).filter((n) => names.includes(n)).map((n) => join(dir, n))];
}

async function copyFiles(files: string[], dir: string): Promise<void> {
  for (const f of files) await fsp.copyFile(f, join(dir, basename(f)));
}

/** The model to train and the folder its tokenizer may live in. */
async function createModel(engine: Engine, values: FlagValues, seed: number): Promise<{ model: Model; dir?: string }> {
  const modelDir = str(values, 'model');
  const configFile = str(values, 'config');
  const resume = str(values, 'resume');
  if (modelDir !== undefined && configFile !== undefined) throw new UsageError('give only one of --model DIR and --config FILE');
  if (modelDir !== undefined) return { model: await loadPretrained(engine, modelDir), dir: modelDir };
  if (configFile !== undefined) {
    const json = await readJsonFile(configFile, `--config ${configFile}`);
    const rec = (typeof json === 'object' && json !== null ? json : {}) as Record<string, unknown>;
    let config;
    if ('model_type' in rec) config = modelConfigFromHF(json, configFile);
    else if ('modelType' in rec) config = createModelConfig(rec as unknown as ModelConfigInput);
    else throw new UsageError(`--config ${configFile}: needs "model_type" (an HF config.json) or "modelType" (quietstar ModelConfig fields)`);
    const model = await Model.create(engine, config);
    await model.initWeights(seed);
    return { model };
  }
  if (resume !== undefined) {
    const dir = await resolveCheckpointDir(resume);
    return { model: await loadPretrained(engine, dir), dir };
  }
  throw new UsageError('give --model DIR, --config FILE or --resume DIR');
}

const fmtLr = (lr: number): string => lr.toExponential(2);

export async function trainLmCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(TRAIN_LM_HELP);
    return 0;
  }
  const dataFile = required(values, 'data');
  const outDir = required(values, 'out');
  const corpusOptions = corpusFlags(values);
  const evalOptions = evalDataFlags(values);
  const seed = int(values, 'seed', 0, 0);
  const batchSize = int(values, 'batch-size', 8, 1);
  const gradAccumulation = int(values, 'grad-accum', 1, 1);
  const schedule = str(values, 'schedule') ?? 'cosine';
  if (!['cosine', 'linear', 'constant'].includes(schedule)) throw new UsageError(`--schedule must be cosine, linear or constant (got '${schedule}')`);
  const saveDtype = saveDtypeFlag(values) ?? 'F32';
  const lr = num(values, 'lr', 3e-4, (x) => x >= 0, 'a number >= 0');
  const config: TrainLmConfig = {
    maxSteps: 1, // set below, once the data is known
    lr,
    minLr: num(values, 'min-lr', lr / 10, (x) => x >= 0 && x <= lr, `a number in [0, --lr ${lr}]`),
    warmupSteps: int(values, 'warmup', 0, 0),
    schedule: schedule as 'cosine' | 'linear' | 'constant',
    batchSize,
    gradAccumulation,
    weightDecay: num(values, 'weight-decay', 0.1, (x) => x >= 0, 'a number >= 0'),
    clip: num(values, 'clip', 1, (x) => x >= 0, 'a number >= 0 (0 = off)'),
    evalEvery: int(values, 'eval-every', 0, 0),
    evalBatches: int(values, 'eval-batches', 20, 0),
    checkpointEvery: int(values, 'checkpoint-every', 0, 0),
    keepCheckpoints: int(values, 'keep-checkpoints', 0, 0),
    seed,
    saveDtype,
    outDir,
  };
  const resume = str(values, 'resume');
  if (resume !== undefined) config.resumeFrom = resume;
  const stepsFlag = int(values, 'steps', 0, 1);
  const seqLenFlag = int(values, 'seq-len', 0, 1);

  using engine = openEngine(values);
  const { model, dir } = await createModel(engine, values, seed);
  using _model = model;
  const tokPath = str(values, 'tokenizer');
  const tok = await findTokenizer(tokPath, dir);
  const tokFiles = tokPath !== undefined ? await tokenizerFiles(tokPath) : tok && dir !== undefined ? await tokenizerFiles(dir) : [];
  const seqLen = seqLenFor(seqLenFlag, model.config.maxSeqLen, 256);

  const data = await loadLmData({
    file: dataFile,
    seqLen,
    ...corpusOptions,
    ...(tok ? { tokenizer: tok } : {}),
    vocabSize: model.config.vocabSize,
    ...evalOptions,
  }).catch(tokenizerHint(tok));
  if (data.train.rows === 0) throw new UsageError(`--data ${dataFile}: too short for one row of --seq-len ${seqLen} tokens`);
  config.maxSteps = stepsFlag || Math.max(1, Math.ceil(data.train.rows / (batchSize * gradAccumulation)));

  const progress = trainingProgress('step {value}/{total} |{bar}| loss {loss} | lr {lr} | {tps} tok/s | ETA {eta_formatted}', 20, config.maxSteps);
  process.stderr.write(
    `train-lm: ${model.numParameters()} parameters, ${data.train.rows} training rows of ${seqLen} tokens` +
      `${data.eval ? `, ${data.eval.rows} held-out rows` : ''}; ${config.maxSteps} steps of ${batchSize * gradAccumulation} rows\n`,
  );
  let last: TrainLmMetrics | undefined;
  let lastEval: TrainLmMetrics | undefined;
  try {
    for await (const m of trainLm(model, data, config, {
      signal: progress.signal,
      onCheckpoint: (d) => copyFiles(tokFiles, d),
    })) {
      last = m;
      if (m.evalLoss !== undefined) lastEval = m;
      const payload = { loss: m.loss.toFixed(4), lr: fmtLr(m.lr), tps: Math.round(m.tokensPerSecond) };
      if (!progress.show(m.step, payload) && progress.logDue(m.step, m.evalLoss !== undefined)) {
        const ev = m.evalLoss !== undefined ? ` eval ${m.evalLoss.toFixed(4)} (ppl ${m.evalPerplexity?.toFixed(2)})` : '';
        process.stderr.write(`step ${m.step}/${config.maxSteps} loss ${payload.loss} lr ${payload.lr} ${payload.tps} tok/s${ev}\n`);
      }
    }
  } finally {
    progress.close();
  }
  await savePretrained(model, outDir, { dtype: config.saveDtype ?? 'F32' });
  await copyFiles(tokFiles, outDir);
  const summary = last
    ? `${progress.signal.aborted ? 'interrupted at' : 'finished'} step ${last.step}, loss ${last.loss.toFixed(4)}` +
      (lastEval ? `, eval loss ${lastEval.evalLoss!.toFixed(4)} (perplexity ${lastEval.evalPerplexity!.toFixed(2)})` : '')
    : `nothing to do: the checkpoint is already at step ${config.maxSteps}`;
  process.stderr.write(`train-lm: ${summary}; model saved to ${outDir}, metrics in ${join(outDir, METRICS_FILE)}\n`);
  return 0;
}
