/**
 * The README's "Language models" example, run as written (paths pointed at the shared data),
 * so the documented API cannot drift from the code.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import {
  Engine,
  Model,
  QuietStarModel,
  evaluateAnswers,
  generate,
  generateWithThoughts,
  gsm8kTask,
  hardTokenAnalysis,
  hardTokenHeatmapHtml,
  loadGsm8k,
  loadPretrained,
  loadQuietStarData,
  loadTokenizer,
  runDemo,
  savePretrained,
  trainQuietStar,
} from '../lib/index.js';
import { dataPath, missingData } from '../lib/util/data-path.js';

const reason = missingData('models', 'stories260K-hf') ?? missingData('models', 'stories260K-llama2c', 'tok512.bin');
if (reason) console.log(`readme-api: skipped: ${reason}`);

(reason ? test.skip : test)('the README language-model example runs as documented', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'qs-readme-'));
  const engine = Engine.create({ device: 'cpu' });
  try {
    const model = await loadPretrained(engine, dataPath('models', 'stories260K-hf'));
    const tok = await loadTokenizer(dataPath('models', 'stories260K-llama2c', 'tok512.bin'));

    const { ids } = await generate(model, [[1], tok.encode('Once upon a time', { addSpecialTokens: true })], {
      maxNewTokens: 100,
      temperature: 0.8,
      topP: 0.95,
      seed: 1,
      stopTokens: [2],
    });
    t.is(ids.length, 2);
    t.true(ids[1]!.length > 0 && ids[1]!.length <= 100);
    t.true(tok.decode(ids[1]!).length > 0);

    const B = 4;
    const T = 64;
    const { loss } = await model.forward({ ids: new Int32Array(B * T), targets: new Int32Array(B * T), B, T });
    t.true(Number.isFinite(loss) && loss > 0);
    await model.backward();
    const norm = await model.params.clipGradNorm(1.0);
    t.true(norm > 0);
    await model.params.adamwStep({ lr: 3e-4, weightDecay: 0.1 });
    await model.params.zeroGrad();

    await savePretrained(model, join(out, 'my-model'), { dtype: 'BF16' });
    model.dispose();
    const back = await loadPretrained(engine, join(out, 'my-model'));
    t.is(back.config.modelType, 'llama');
    back.dispose();

    const tiny = await Model.create(engine, {
      modelType: 'llama',
      vocabSize: 512,
      dModel: 64,
      nLayers: 4,
      nHeads: 8,
      nKvHeads: 4,
      dFF: 172,
      maxSeqLen: 256,
    });
    await tiny.initWeights(42);
    t.is(tiny.config.headDim, 8);
    tiny.dispose();
  } finally {
    engine.dispose();
    rmSync(out, { recursive: true, force: true });
  }
});

(reason ? test.skip : test)('the README Quiet-STaR example runs as documented', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'qs-readme-qs-'));
  const engine = Engine.create({ device: 'cpu' });
  try {
    const tokenizer = dataPath('models', 'stories260K-llama2c', 'tok512.bin');
    // The README's values, made small (nAhead 6, 2 steps of 2 documents of 32 tokens) for the test.
    const qs = await QuietStarModel.fromPretrained(engine, dataPath('models', 'stories260K-hf'), {
      tokenizer,
      quietstar: { nAhead: 6, nAheadTalk: 2, nPasses: 2 },
    });
    const data = await loadQuietStarData({
      file: dataPath('tinystories_sample', 'tinystories_sample.txt'),
      tokenizer: qs.tokenizer,
      documentSeparator: '<|endoftext|>',
    });
    const controller = new AbortController();
    const steps = [];
    for await (const m of trainQuietStar(
      qs,
      data,
      { maxSteps: 2, seqLen: 32, batchSize: 2, microBatchSize: 2, evalEvery: 0, outDir: join(out, 'qs') },
      { signal: controller.signal },
    )) {
      t.true(Number.isFinite(m.loss) && Number.isFinite(m.nllBase) && Number.isFinite(m.nllTalk));
      t.true(Number.isFinite(m.policyLoss) && Number.isFinite(m.rewardMean) && Number.isFinite(m.mixMean));
      steps.push(m.step);
    }
    t.deepEqual(steps, [1, 2]);
    await qs.save(join(out, 'qs', 'final'));
    qs.dispose();
    const back = await QuietStarModel.load(engine, join(out, 'qs', 'final'));
    t.is(back.endId, back.startId + 1);
    back.dispose();
  } finally {
    engine.dispose();
    rmSync(out, { recursive: true, force: true });
  }
});

const evalReason = missingData('gsm8k', 'test.jsonl');
(evalReason ? test.skip : test)('the README evaluation example runs as documented (on the tiny demo model)', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'qs-readme-eval-'));
  try {
    {
      using demoEngine = Engine.create({ device: 'cpu' });
      await runDemo(demoEngine, { outDir: out, size: 'tiny' });
    }
    using engine = Engine.create({ device: 'cpu' });
    using qs = await QuietStarModel.load(engine, join(out, 'model'));
    const gsm8k = await loadGsm8k(dataPath('gsm8k', 'test.jsonl'));
    // The README's call with limit 4 (not 100) for the test.
    const r = await evaluateAnswers(qs, gsm8kTask(qs.tokenizer), gsm8k, { limit: 4, batchSize: 8, jsonl: join(out, 'gsm8k.jsonl') });
    t.is(r.examples, 4);
    for (const v of [r.paperMetric.withThinking, r.paperMetric.withoutThinking]) t.true(v >= 0 && v <= 1);
    t.truthy(r.exactMatch);

    const docs = [qs.tokenizer.encode('Q: 12+35-7=?\nA: 40\nQ: 3+4=?\nA: 7\n', { addSpecialTokens: true })];
    const h = await hardTokenAnalysis(qs, docs, { seqLen: 16 });
    t.true(h.deciles.length > 0 && h.tokens > 0);
    t.regex(hardTokenHeatmapHtml(h, qs.tokenizer), /<html/i);

    const prompt = qs.tokenizer.encode('Q: 12+35-7=?\nA:', { addSpecialTokens: true });
    const g = await generateWithThoughts(qs, [prompt], { maxNewTokens: 8, temperature: 0 });
    t.true(g.ids[0]!.length >= 1 && g.ids[0]!.length <= 8);
    t.is(g.thoughts[0]!.length, g.ids[0]!.length);
    t.false(g.ids[0]!.includes(qs.startId) || g.ids[0]!.includes(qs.endId));
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
