/**
 * `quietstar train`: Quiet-STaR training (lib/quietstar's trainQuietStar) of a base Hugging Face
 * model or a Quiet-STaR folder; a progress bar on stderr, one JSON object per optimizer step in
 * the metrics file, checkpoints in <out>/checkpoint-N, and the final Quiet-STaR model folder
 * (HF weights + thought tokens + mixing head + config + tokenizer) in <out>.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

import type { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { resolveCheckpointDir } from '../train/checkpoint.js';
import { checkConfigKeys, quietStarOptionsOf, resolveQuietStarConfig, type QuietStarConfig } from '../quietstar/config.js';
import { readQuietStarTrainerState } from '../quietstar/checkpoint.js';
import { loadQuietStarData } from '../quietstar/data.js';
import { QuietStarModel } from '../quietstar/model.js';
import { METRICS_FILE, maxSeqLenFor, trainQuietStar, type QuietStarTrainMetrics } from '../quietstar/train.js';
import {
  CORPUS_FLAGS,
  ENGINE_FLAGS,
  TRAIN_HELP_TAIL,
  TRAIN_IO_FLAGS,
  UsageError,
  corpusFlags,
  evalDataFlags,
  int,
  num,
  openEngine,
  parseFlags,
  readJsonFile,
  required,
  saveDtypeFlag,
  str,
  tokenizerHint,
  type FlagValues,
} from './common.js';
import { trainingProgress } from './progress.js';

export const TRAIN_HELP = `usage: quietstar train --model DIR --data FILE --out DIR [options]

Quiet-STaR training: at every position the model samples a thought between <|startthought|> and
<|endthought|>, a mixing head blends the prediction after the thought with the base prediction,
and REINFORCE rewards thoughts that make the following text more likely. Defaults are the
reference recipe (nAhead 12, nAheadTalk 4, nPasses 2, lr 1e-6 with 20 warm-up steps, AdamW weight
decay 0.001, clip 1, 8 documents per step as 4 x 2 accumulation, T 256, 100 steps, seed 42).
Shows a progress bar on stderr, appends one JSON object per step to OUT/metrics.jsonl (keys step,
loss, nll_base, nll_talk, policy_loss, reward_mean, ...), writes checkpoints to OUT/checkpoint-N
and saves the trained Quiet-STaR model folder in OUT.

model:
  --model DIR              a base Hugging Face folder (thought tokens are added) or a Quiet-STaR
                           folder written by this command (its config.json has a "quietstar" block)
  --tokenizer FILE         tokenizer of a base model (default: the one in --model)
  --resume                 continue exactly from the latest checkpoint in --out (its config is the
                           starting point; --model is then not needed)
data:
  --data FILE              text, JSONL with a text field, or pre-tokenised {"ids": [...]} lines;
                           one document per JSONL line (or per --separator part of a text file)
  --format F               text | jsonl | ids (default: by extension, .jsonl/.json = JSONL)
  --field NAME[,NAME...]   JSONL text field(s) (default text)
  --separator STR          split a text file into documents at STR
  --seq-len T              tokens per document row: longer ones are cropped, shorter padded
                           (default 256, or the model's maxSeqLen when smaller)
  --crop MODE              random | start: which window of a longer document (default random)
  --eval-data FILE         held-out corpus: Quiet-STaR loss without updates every --eval-every steps
  --eval-fraction F        or hold out this fraction of --data's documents (default 0)
  --eval-every N           (default 10; 0 = after the last step only)
  --eval-batches N         micro-batches per evaluation (default 4; 0 = all held-out documents)
training (flags override --config):
  --config FILE            JSON object with QuietStarConfig fields (nAhead, lr, batchSize, ...)
  --steps N                optimizer steps (default 100)
  --batch-size B           documents per optimizer step (default 8)
  --micro-batch-size M     documents per forward/backward; B/M are accumulated (default 4)
  --lr LR                  peak learning rate (default 1e-6)
  --warmup N               linear warm-up steps (default 20)
  --n-ahead N              thought schedule length: start, N-3 sampled tokens, end (default 12)
  --n-ahead-talk A         true tokens scored after each thought (default 4)
  --n-passes P             thoughts per position (default 2)
  --seed S                 document order, crop windows, thought noise, new parameters (default 42)
output:
  --out DIR                output folder (required)
  --metrics FILE           metrics JSON lines (default OUT/metrics.jsonl)
  --checkpoint-every N     checkpoint every N steps (default 100; 0 = after the last step only)
${TRAIN_HELP_TAIL}`;

const FLAGS = {
  ...ENGINE_FLAGS,
  ...CORPUS_FLAGS,
  ...TRAIN_IO_FLAGS,
  model: { type: 'string' },
  config: { type: 'string' },
  resume: { type: 'boolean' },
  crop: { type: 'string' },
  steps: { type: 'string' },
  'batch-size': { type: 'string' },
  'micro-batch-size': { type: 'string' },
  lr: { type: 'string' },
  warmup: { type: 'string' },
  'n-ahead': { type: 'string' },
  'n-ahead-talk': { type: 'string' },
  'n-passes': { type: 'string' },
  seed: { type: 'string' },
  metrics: { type: 'string' },
} as const;

/** The QuietStarConfig fields the flags set (validated; UsageErrors name the flag). */
function configFromFlags(values: FlagValues): QuietStarConfig {
  const c: QuietStarConfig = {};
  const has = (name: string): boolean => str(values, name) !== undefined;
  if (has('steps')) c.maxSteps = int(values, 'steps', 1, 1);
  if (has('seq-len')) c.seqLen = int(values, 'seq-len', 256, 2);
  if (has('batch-size')) c.batchSize = int(values, 'batch-size', 8, 1);
  if (has('micro-batch-size')) c.microBatchSize = int(values, 'micro-batch-size', 4, 1);
  if (has('lr')) c.lr = num(values, 'lr', 1e-6, (x) => x >= 0, 'a number >= 0');
  if (has('warmup')) c.warmupSteps = int(values, 'warmup', 20, 0);
  if (has('n-ahead')) {
    c.nAhead = int(values, 'n-ahead', 12, 1);
    if (c.nAhead === 2) throw new UsageError("--n-ahead must be 1 (no thought) or >= 3 (got '2')");
  }
  if (has('n-ahead-talk')) c.nAheadTalk = int(values, 'n-ahead-talk', 4, 1);
  if (has('n-passes')) c.nPasses = int(values, 'n-passes', 2, 1);
  if (has('seed')) c.seed = int(values, 'seed', 42, 0);
  if (has('eval-every')) c.evalEvery = int(values, 'eval-every', 10, 0);
  if (has('eval-batches')) c.evalBatches = int(values, 'eval-batches', 4, 0);
  if (has('checkpoint-every')) c.checkpointEvery = int(values, 'checkpoint-every', 100, 0);
  if (has('keep-checkpoints')) c.keepCheckpoints = int(values, 'keep-checkpoints', 0, 0);
  const crop = str(values, 'crop');
  if (crop !== undefined) {
    if (crop !== 'random' && crop !== 'start') throw new UsageError(`--crop must be random or start (got '${crop}')`);
    c.cropMode = crop;
  }
  const saveDtype = saveDtypeFlag(values);
  if (saveDtype !== undefined) c.saveDtype = saveDtype;
  const metrics = str(values, 'metrics');
  if (metrics !== undefined) {
    if (metrics === '') throw new UsageError('--metrics must be a file path');
    c.metricsFile = metrics;
  }
  return c;
}

/** Whether `dir` is a Quiet-STaR folder: its config.json has a "quietstar" block. */
async function isQuietStarFolder(dir: string): Promise<boolean> {
  const file = join(dir, 'config.json');
  const exists = await fsp.stat(file).then(() => true, () => false);
  if (!exists) return false;
  const json = await readJsonFile(file, file);
  return typeof json === 'object' && json !== null && 'quietstar' in json;
}

/** The model to train: the checkpoint's (resume), a Quiet-STaR folder's, or a base model's with thought tokens added. */
async function openModel(engine: Engine, values: FlagValues, config: QuietStarConfig, resumeDir: string | undefined): Promise<QuietStarModel> {
  const quietstar = quietStarOptionsOf(config);
  if (resumeDir !== undefined) return QuietStarModel.load(engine, resumeDir, { quietstar });
  const modelDir = str(values, 'model');
  if (modelDir === undefined || modelDir === '') throw new UsageError('--model is required (or --resume with a checkpoint in --out)');
  const tokenizer = str(values, 'tokenizer');
  if (await isQuietStarFolder(modelDir)) {
    if (tokenizer !== undefined) throw new UsageError(`--tokenizer: ${modelDir} is a Quiet-STaR folder, which brings its own tokenizer`);
    return QuietStarModel.load(engine, modelDir, { quietstar });
  }
  return QuietStarModel.fromPretrained(engine, modelDir, {
    quietstar,
    seed: config.seed ?? 42,
    ...(tokenizer !== undefined ? { tokenizer } : {}),
  });
}

const fix = (x: number | undefined, digits = 4): string => (x === undefined || !Number.isFinite(x) ? String(x) : x.toFixed(digits));
/** Small figures (rewards, mixing weights early on) in exponent form, so they do not read as 0. */
const small = (x: number): string => (x === 0 || !Number.isFinite(x) || Math.abs(x) >= 1e-3 ? fix(x) : x.toExponential(2));

export async function trainCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(TRAIN_HELP);
    return 0;
  }
  const dataFile = required(values, 'data');
  const outDir = required(values, 'out');
  const corpusOptions = corpusFlags(values);
  const evalOptions = evalDataFlags(values);
  const flagConfig = configFromFlags(values);
  const resume = values.resume === true;

  // Config: the checkpoint's (on --resume) < --config FILE < flags.
  let resumeDir: string | undefined;
  let config: QuietStarConfig = {};
  if (resume) {
    try {
      resumeDir = await resolveCheckpointDir(outDir);
    } catch (err) {
      if (err instanceof QuietstarError && err.code === 'NOT_FOUND') throw new UsageError(`--resume: no checkpoint in --out ${outDir} (${err.message})`);
      throw err;
    }
    const { outDir: _o, ...saved } = (await readQuietStarTrainerState(resumeDir)).config;
    config = { ...saved };
  }
  const configFile = str(values, 'config');
  if (configFile !== undefined) {
    const json = await readJsonFile(configFile, `--config ${configFile}`);
    try {
      checkConfigKeys(json, 'config');
    } catch (err) {
      throw new QuietstarError(`--config ${configFile}: ${(err as Error).message}`, 'BAD_FILE');
    }
    for (const k of ['outDir', 'resumeFrom'] as const) {
      if (k in (json as object)) throw new QuietstarError(`--config ${configFile}: config.${k} is set by --out / --resume, not in the file`, 'BAD_FILE');
    }
    config = { ...config, ...(json as QuietStarConfig) };
  }
  config = { ...config, ...flagConfig, outDir };
  if (resumeDir !== undefined) config.resumeFrom = resumeDir;
  try {
    resolveQuietStarConfig(config); // every value checked before the model loads
  } catch (err) {
    if (configFile !== undefined && err instanceof QuietstarError) throw new QuietstarError(`${err.message} (--config ${configFile} or flags)`, err.code);
    throw err;
  }

  using engine = openEngine(values);
  using qs = await openModel(engine, values, config, resumeDir);
  // Default T: the reference's 256, or less when the model takes less.
  if (config.seqLen === undefined) config.seqLen = Math.max(2, Math.min(256, maxSeqLenFor(qs)));
  const resolved = resolveQuietStarConfig({ ...config, ...qs.options });
  const data = await loadQuietStarData({
    file: dataFile,
    tokenizer: qs.tokenizer,
    ...corpusOptions,
    ...evalOptions,
  }).catch(tokenizerHint(qs.tokenizer));
  if (data.train.rows === 0) throw new UsageError(`--data ${dataFile}: no document of 2 tokens or more`);

  const progress = trainingProgress(
    'step {value}/{total} |{bar}| loss {loss} | nll base {base} talk {talk} | policy {policy} | reward {reward} | {tps} tok/s | ETA {eta_formatted}',
    10,
    resolved.maxSteps,
  );
  const o = qs.options;
  process.stderr.write(
    `train: ${qs.model.numParameters()} parameters (thought embeddings and mixing head included), ${data.train.rows} training documents` +
      `${data.eval ? `, ${data.eval.rows} held-out` : ''}; ${resolved.maxSteps} steps of ${resolved.batchSize} documents ` +
      `(${resolved.batchSize / resolved.microBatchSize} x ${resolved.microBatchSize}) of ${resolved.seqLen} tokens; ` +
      `nAhead ${o.nAhead} (${Math.max(0, o.nAhead - 3)} thought tokens), nAheadTalk ${o.nAheadTalk}, nPasses ${o.nPasses}\n`,
  );
  let last: QuietStarTrainMetrics | undefined;
  try {
    for await (const m of trainQuietStar(qs, data, config, { signal: progress.signal })) {
      last = m;
      const payload = {
        loss: fix(m.loss),
        base: fix(m.nllBase),
        talk: fix(m.nllTalk),
        policy: m.policyLoss.toExponential(2),
        reward: small(m.rewardMean),
        tps: Math.round(m.tokensPerSecond),
      };
      if (!progress.show(m.step, payload) && progress.logDue(m.step, m.evalLoss !== undefined)) {
        const ev = m.evalLoss !== undefined ? ` | eval loss ${fix(m.evalLoss)} base ${fix(m.evalNllBase)} talk ${fix(m.evalNllTalk)}` : '';
        process.stderr.write(
          `step ${m.step}/${resolved.maxSteps} loss ${payload.loss} | nll base ${payload.base} talk ${payload.talk} | policy ${payload.policy}` +
            ` | reward ${payload.reward} (${(m.positiveShare * 100).toFixed(1)}% positive) | w ${small(m.mixMean)} | ${payload.tps} tok/s${ev}\n`,
        );
      }
    }
  } finally {
    progress.close();
  }
  await qs.save(outDir, { dtype: resolved.saveDtype });
  const metricsFile = resolved.metricsFile ?? join(outDir, METRICS_FILE);
  const summary = last
    ? `${progress.signal.aborted ? 'interrupted at' : 'finished'} step ${last.step}, loss ${fix(last.loss)} (nll base ${fix(last.nllBase)}, talk ${fix(last.nllTalk)})` +
      (last.evalLoss !== undefined ? `, eval loss ${fix(last.evalLoss)}` : '')
    : `nothing to do: the checkpoint is already at step ${resolved.maxSteps}`;
  process.stderr.write(`train: ${summary}; Quiet-STaR model saved to ${outDir}, metrics in ${metricsFile}\n`);
  return 0;
}
