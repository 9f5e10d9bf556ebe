/**
 * Hugging Face checkpoints end to end: stories260K (a real pretrained Llama) loads and gives
 * llama2.c's first-step logits; fake-gpt2-hf loads (Conv1D layout, and with OpenAI's original
 * names); save then load gives identical logits (single file, shards, tied and untied heads);
 * BF16/F16 saves round to the storage dtype; a bad file is an error naming file and tensor.
 */
import test from 'ava';
import { promises as fsp, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError, type ErrorCode } from '../lib/errors.js';
import type { Engine } from '../lib/engine.js';
import { loadPretrained, loadWeights, matchCheckpointTensors, savePretrained } from '../lib/hf/checkpoint.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../lib/hf/dtype.js';
import { SafetensorsReader, writeSafetensors, type SafetensorsEntry, type SafetensorsTensor } from '../lib/hf/safetensors.js';
import { INDEX_FILE } from '../lib/hf/sharded.js';
import { createModelConfig, type ModelConfig, type ModelConfigInput } from '../lib/model/config.js';
import { Model } from '../lib/model/model.js';
import { dataPath, missingData } from '../lib/util/data-path.js';
import { assertClose, cpuEngine, randomArray } from './support/engine.js';

const tmp = await fsp.mkdtemp(join(tmpdir(), 'qs-checkpoint-'));
test.after.always(() => fsp.rm(tmp, { recursive: true, force: true }));
let dirs = 0;
const freshDir = (): string => join(tmp, `d${dirs++}`);

const engine = cpuEngine();
test.after.always(() => engine.dispose());

const STORIES = ['models', 'stories260K-hf'];
const GPT2 = ['models', 'fake-gpt2-hf'];
const storiesMissing = missingData(...STORIES, 'model.safetensors');
const gpt2Missing = missingData(...GPT2, 'model.safetensors');
for (const reason of new Set([storiesMissing, gpt2Missing])) if (reason) console.log(`checkpoint: skipping the fixture tests: ${reason}`);
const withStories = storiesMissing ? test.skip : test;
const withGpt2 = gpt2Missing ? test.skip : test;

/** Logits of one row of ids, all positions (Float64Array for an f64 model). */
async function logitsOf(model: Model, ids: number[]): Promise<Float32Array> {
  using out = await model.logits({ ids: Int32Array.from(ids), B: 1, T: ids.length });
  return (await out.data()) as Float32Array;
}

async function paramData(model: Model, name: string): Promise<Float32Array> {
  using v = model.params.view(name);
  return (await v.data()) as Float32Array;
}

/** A tiny model with deterministic random weights. */
async function tinyModel(e: Engine, input: ModelConfigInput, seed = 7): Promise<Model> {
  const model = await Model.create(e, input, { optimizer: false });
  await model.initWeights(seed);
  return model;
}

/** Copies a fixture folder into a fresh temporary one. */
async function copyOf(parts: string[]): Promise<string> {
  const dir = freshDir();
  await fsp.cp(dataPath(...parts), dir, { recursive: true });
  return dir;
}

/** Rewrites `<dir>/model.safetensors` through `edit` (a list of tensors in, a list out). */
async function rewrite(dir: string, edit: (ts: SafetensorsTensor[]) => SafetensorsTensor[]): Promise<void> {
  const path = join(dir, 'model.safetensors');
  const r = await SafetensorsReader.open(path);
  const tensors: SafetensorsTensor[] = [];
  for (const e of r.entries.values()) tensors.push({ name: e.name, dtype: e.dtype, shape: e.shape, data: await r.read(e.name) });
  await r.close();
  await writeSafetensors(path, edit(tensors));
}

async function loadFails(t: import('ava').ExecutionContext, dir: string, code: ErrorCode, message: RegExp): Promise<QuietstarError | undefined> {
  const err = await t.throwsAsync(loadPretrained(engine, dir, { optimizer: false }), { instanceOf: QuietstarError, message });
  t.is(err?.code, code, err?.message);
  return err;
}

// ---- name matching (no weights needed) ---------------------------------------------------

const entry = (name: string, shape: number[], file = 'f.safetensors'): [string, SafetensorsEntry] => [
  name,
  { name, dtype: 'F32', shape, begin: 0, end: 0, file },
];

test('names: GPT-2 files without the transformer. prefix and with mask buffers; tied lm_head ignored', (t) => {
  const config = createModelConfig({ modelType: 'gpt2', vocabSize: 10, dModel: 4, nLayers: 1, nHeads: 1, maxSeqLen: 8 });
  const params = [
    { name: 'transformer.wte.weight', shape: [10, 4] },
    { name: 'transformer.h.0.attn.c_attn.bias', shape: [12] },
  ];
  const files = new Map([
    entry('wte.weight', [10, 4]),
    entry('h.0.attn.c_attn.bias', [12]),
    entry('h.0.attn.bias', [1, 1, 8, 8]),
    entry('h.0.attn.masked_bias', []),
    entry('lm_head.weight', [10, 4]),
  ]);
  const m = matchCheckpointTensors(files, params, config, 'dir');
  t.is(m.get('transformer.wte.weight')?.name, 'wte.weight');
  t.is(m.get('transformer.h.0.attn.c_attn.bias')?.name, 'h.0.attn.c_attn.bias');
  t.is(m.size, 2);

  const dup = new Map([entry('wte.weight', [10, 4]), entry('transformer.wte.weight', [10, 4]), entry('transformer.h.0.attn.c_attn.bias', [12])]);
  t.throws(() => matchCheckpointTensors(dup, params, config, 'dir'), {
    instanceOf: QuietstarError,
    message: /tensors '(transformer\.)?wte.weight' and '(transformer\.)?wte.weight' both hold parameter 'transformer.wte.weight'/,
  });
});

test('names: Llama inv_freq ignored; missing, extra and misshapen tensors are named', (t) => {
  const config = createModelConfig({ modelType: 'llama', vocabSize: 10, dModel: 4, nLayers: 1, nHeads: 1 });
  const params = [
    { name: 'model.embed_tokens.weight', shape: [10, 4] },
    { name: 'model.norm.weight', shape: [4] },
    { name: 'lm_head.weight', shape: [10, 4] },
  ];
  const ok = new Map([
    entry('model.embed_tokens.weight', [10, 4]),
    entry('norm.weight', [4]), // a base-model (LlamaModel) name
    entry('lm_head.weight', [10, 4]),
    entry('model.layers.0.self_attn.rotary_emb.inv_freq', [2]),
  ]);
  t.is(matchCheckpointTensors(ok, params, config, 'dir').size, 3);

  const fails = (files: Map<string, SafetensorsEntry>, message: RegExp): void => {
    const err = t.throws(() => matchCheckpointTensors(files, params, config, 'dir/model.safetensors'), { instanceOf: QuietstarError, message });
    t.is(err?.code, 'BAD_FILE');
  };
  fails(new Map([entry('model.embed_tokens.weight', [10, 4]), entry('model.norm.weight', [4])]), /dir\/model.safetensors: missing tensor 'lm_head.weight'/);
  fails(new Map([...ok, entry('model.extra.weight', [3], 'shard2.safetensors')]), /shard2.safetensors: unexpected tensor 'model.extra.weight'/);
  fails(new Map([...ok, entry('norm.weight', [5])]), /f.safetensors: tensor 'norm.weight': shape \[5\] does not match the model's \[4\]/);
});

test('host bf16/f16 conversions agree bit for bit with the engine convert op', async (t) => {
  const special = [0, -0, 1, -2, 65504, 65519, 65520, 1e-8, 6e-8, 5.96e-8, 3e-5, 1e30, -1e-40, Infinity, -Infinity, 1 + 2 ** -8, 1 + 3 * 2 ** -9];
  const x = Float32Array.from([...special, ...randomArray(2000, 3, 100), ...randomArray(500, 4, 1e-5)]);
  using xt = engine.tensor(x);
  using bf = (await engine.ops.convert({ x: xt, dtype: 'bf16' })).y;
  using hf = (await engine.ops.convert({ x: xt, dtype: 'f16' })).y;
  const bfBits = (await bf.data()) as Uint16Array;
  const hfBits = (await hf.data()) as Uint16Array;
  t.deepEqual(Array.from(f32ToBf16(x)), Array.from(bfBits), 'f32 -> bf16');
  t.deepEqual(Array.from(f32ToF16(x)), Array.from(hfBits), 'f32 -> f16');
  using bfBack = (await engine.ops.convert({ x: bf, dtype: 'f32' })).y;
  using hfBack = (await engine.ops.convert({ x: hf, dtype: 'f32' })).y;
  t.deepEqual(Array.from(bf16ToF32(bfBits)), Array.from((await bfBack.data()) as Float32Array), 'bf16 -> f32');
  t.deepEqual(Array.from(f16ToF32(hfBits)), Array.from((await hfBack.data()) as Float32Array), 'f16 -> f32');
  t.true(Number.isNaN(bf16ToF32(f32ToBf16(Float32Array.of(NaN)))[0]!) && Number.isNaN(f16ToF32(f32ToF16(Float32Array.of(NaN)))[0]!), 'NaN stays NaN');
});

// ---- the fixtures --------------------------------------------------------------------------

withStories('stories260K-hf loads and its logits after BOS match llama2.c within 1e-4', async (t) => {
  using model = await loadPretrained(engine, dataPath(...STORIES), { optimizer: false });
  t.like(model.config, { modelType: 'llama', nKvHeads: 4, tieEmbeddings: true });
  const expected = JSON.parse(readFileSync(dataPath(...STORIES, 'expected_greedy.json'), 'utf8')) as { step0_logits: number[] };
  assertClose(t, await logitsOf(model, [1]), expected.step0_logits, { atol: 1e-4, rtol: 0, label: 'step0 logits' });
  // The same file into f64 parameters (F32 converted up on the engine).
  using f64 = await loadPretrained(engine, dataPath(...STORIES), { optimizer: false, dtype: 'f64' });
  assertClose(t, await logitsOf(f64, [1]), expected.step0_logits, { atol: 1e-4, rtol: 0, label: 'step0 logits (f64)' });
});

withGpt2('fake-gpt2-hf loads (Conv1D layout), its logits are finite, and OpenAI-style names load the same', async (t) => {
  using model = await loadPretrained(engine, dataPath(...GPT2), { optimizer: false });
  t.like(model.config, { modelType: 'gpt2', vocabSize: 50257, dModel: 2 });
  const reader = await SafetensorsReader.open(dataPath(...GPT2, 'model.safetensors'));
  const fileW = new Float32Array((await reader.read('transformer.h.0.mlp.c_fc.weight')).buffer);
  await reader.close();
  t.deepEqual(Array.from(await paramData(model, 'transformer.h.0.mlp.c_fc.weight')), Array.from(fileW), 'weights copied as stored ([in, out])');
  const logits = await logitsOf(model, [15496, 995]);
  t.is(logits.length, 2 * 50257);
  t.true(logits.every(Number.isFinite), 'finite logits');

  // The original OpenAI layout: no transformer. prefix, causal-mask buffers beside the weights.
  const dir = await copyOf(GPT2);
  await rewrite(dir, (ts) => [
    ...ts.map((x) => ({ ...x, name: x.name.replace(/^transformer\./, '') })),
    { name: 'h.0.attn.bias', dtype: 'F32', shape: [1, 1, 4, 4], data: new Float32Array(16) },
    { name: 'h.0.attn.masked_bias', dtype: 'F32', shape: [], data: Float32Array.of(-1e4) },
  ]);
  using openai = await loadPretrained(engine, dir, { optimizer: false });
  t.deepEqual(Array.from(await logitsOf(openai, [15496, 995])), Array.from(logits));
});

withStories('F16 and BF16 files load into f32 (converted exactly), on the engine', async (t) => {
  using ref = await loadPretrained(engine, dataPath(...STORIES), { optimizer: false });
  for (const [dtype, down, up] of [
    ['BF16', f32ToBf16, bf16ToF32],
    ['F16', f32ToF16, f16ToF32],
  ] as const) {
    const dir = await copyOf(STORIES);
    await rewrite(dir, (ts) => ts.map((x) => ({ ...x, dtype, data: down(new Float32Array((x.data as Uint8Array).buffer)) })));
    using model = await loadPretrained(engine, dir, { optimizer: false });
    for (const name of ['model.embed_tokens.weight', 'model.layers.3.mlp.down_proj.weight']) {
      const want = up(down(await paramData(ref, name)));
      t.deepEqual(Array.from(await paramData(model, name)), Array.from(want), `${dtype} ${name}`);
    }
  }
});

// ---- save then load ---------------------------------------------------------------------------

withStories('stories260K: save then load gives identical logits; a tied head writes no lm_head.weight', async (t) => {
  using model = await loadPretrained(engine, dataPath(...STORIES), { optimizer: false });
  const dir = freshDir();
  await savePretrained(model, dir);
  t.deepEqual((await fsp.readdir(dir)).sort(), ['config.json', 'generation_config.json', 'model.safetensors']);
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  t.like(config, { architectures: ['LlamaForCausalLM'], model_type: 'llama', num_key_value_heads: 4, tie_word_embeddings: true, torch_dtype: 'float32' });
  t.deepEqual(JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8')), { _from_model_config: true, bos_token_id: 1, eos_token_id: 2 });
  await using r = await SafetensorsReader.open(join(dir, 'model.safetensors'));
  t.false(r.entries.has('lm_head.weight'));
  t.is(r.entries.size, 47);
  t.deepEqual(r.metadata, { format: 'pt' });
  // Same tensors, bytes and order as the HF-written original.
  t.true(readFileSync(join(dir, 'model.safetensors')).equals(readFileSync(dataPath(...STORIES, 'model.safetensors'))), 'byte-identical weights file');

  using again = await loadPretrained(engine, dir, { optimizer: false });
  const ids = [1, 403, 407, 261, 378];
  t.deepEqual(Array.from(await logitsOf(again, ids)), Array.from(await logitsOf(model, ids)));
});

const configs: [string, ModelConfigInput][] = [
  ['gpt2 untied', { modelType: 'gpt2', vocabSize: 40, dModel: 16, nLayers: 2, nHeads: 2, maxSeqLen: 16, tieEmbeddings: false, bosTokenId: 0, eosTokenId: 0 }],
  ['llama, biases, GQA', { modelType: 'llama', vocabSize: 40, dModel: 16, nLayers: 2, nHeads: 4, nKvHeads: 2, dFF: 24, qkvBias: true, oBias: true, mlpBias: true }],
  ['qwen2 tied', { modelType: 'qwen2', vocabSize: 40, dModel: 16, nLayers: 2, nHeads: 2, nKvHeads: 1, dFF: 24, tieEmbeddings: true }],
  ['mistral window', { modelType: 'mistral', vocabSize: 40, dModel: 16, nLayers: 1, nHeads: 2, dFF: 24, slidingWindow: 3 }],
];

for (const [label, input] of configs) {
  test(`save then load (${label}): same config, identical logits, single file and shards`, async (t) => {
    using model = await tinyModel(engine, input);
    const ids = [3, 1, 4, 1, 5, 9, 2, 6];
    const want = Array.from(await logitsOf(model, ids));
    t.true(want.some((v) => v !== 0), 'the random model has non-zero logits');

    const single = freshDir();
    await savePretrained(model, single);
    using a = await loadPretrained(engine, single, { optimizer: false });
    t.deepEqual(a.config as ModelConfig, model.config as ModelConfig);
    t.deepEqual(Array.from(await logitsOf(a, ids)), want, 'single file');
    {
      await using r = await SafetensorsReader.open(join(single, 'model.safetensors'));
      t.is(r.entries.has('lm_head.weight'), !model.config.tieEmbeddings, 'lm_head.weight only when untied');
    }

    const sharded = freshDir();
    await savePretrained(model, sharded, { maxShardBytes: 2048 });
    const files = (await fsp.readdir(sharded)).sort();
    t.true(files.includes(INDEX_FILE));
    t.false(files.includes('model.safetensors'));
    t.true(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length >= 2, files.join(', '));
    using b = await loadPretrained(engine, sharded, { optimizer: false });
    t.deepEqual(Array.from(await logitsOf(b, ids)), want, 'shards');
  });
}

test('BF16 and F16 saves: weights rounded to the storage dtype, logits within its tolerance', async (t) => {
  using model = await tinyModel(engine, configs[1]![1]);
  const ids = [3, 1, 4, 1, 5, 9, 2, 6];
  const want = await logitsOf(model, ids);
  for (const [dtype, down, up, tol] of [
    ['BF16', f32ToBf16, bf16ToF32, 2e-2],
    ['F16', f32ToF16, f16ToF32, 2e-3],
  ] as const) {
    const dir = freshDir();
    await savePretrained(model, dir, { dtype });
    t.is(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).torch_dtype, dtype === 'BF16' ? 'bfloat16' : 'float16');
    await using r = await SafetensorsReader.open(join(dir, 'model.safetensors'));
    t.true([...r.entries.values()].every((e) => e.dtype === dtype));
    using loaded = await loadPretrained(engine, dir, { optimizer: false });
    const name = 'model.layers.1.self_attn.q_proj.weight';
    t.deepEqual(Array.from(await paramData(loaded, name)), Array.from(up(down(await paramData(model, name)))), `${dtype} weights`);
    assertClose(t, await logitsOf(loaded, ids), want, { atol: tol, rtol: tol, label: `${dtype} logits` });
  }
});

test('savePretrained replaces a folder atomically, keeping its other files; a failed save changes nothing', async (t) => {
  using big = await tinyModel(engine, configs[0]![1], 1);
  using small = await tinyModel(engine, configs[0]![1], 2);
  const parent = freshDir();
  const dir = join(parent, 'model');
  await savePretrained(big, dir, { maxShardBytes: 2048 });
  await fsp.writeFile(join(dir, 'tokenizer.json'), '{"kept": true}');
  await savePretrained(small, dir); // single file now: the old shards and index must go
  const files = (await fsp.readdir(dir)).sort();
  t.deepEqual(files, ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json']);
  t.is(readFileSync(join(dir, 'tokenizer.json'), 'utf8'), '{"kept": true}');
  using loaded = await loadPretrained(engine, dir, { optimizer: false });
  t.deepEqual(Array.from(await logitsOf(loaded, [1, 2])), Array.from(await logitsOf(small, [1, 2])));

  const before = readFileSync(join(dir, 'model.safetensors'));
  await t.throwsAsync(savePretrained(big, dir, { maxShardBytes: -1 }), { instanceOf: QuietstarError, message: /maxShardBytes must be a number > 0/ });
  await t.throwsAsync(savePretrained(big, dir, { dtype: 'F8' as 'F32' }), { instanceOf: QuietstarError, message: /dtype must be 'F32', 'BF16' or 'F16'/ });
  t.true(readFileSync(join(dir, 'model.safetensors')).equals(before), 'the previous save is intact');
  t.deepEqual(await fsp.readdir(parent), ['model'], 'no temporary folders left');
});

test('loadWeights into an existing model, and refusing a checkpoint of another shape', async (t) => {
  using src = await tinyModel(engine, configs[2]![1], 5);
  const dir = freshDir();
  await savePretrained(src, dir);
  using dst = await Model.create(engine, configs[2]![1], { optimizer: false });
  await loadWeights(dst, dir);
  t.deepEqual(Array.from(await logitsOf(dst, [7, 8])), Array.from(await logitsOf(src, [7, 8])));
  using wider = await Model.create(engine, { ...configs[2]![1], dFF: 32 }, { optimizer: false });
  await t.throwsAsync(loadWeights(wider, dir), {
    instanceOf: QuietstarError,
    message: /model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight': shape \[16, 24\] does not match the model's \[16, 32\]/,
  });
});

// ---- bad files --------------------------------------------------------------------------

withStories('bad checkpoints: truncated, header past the end, unknown dtype — BAD_FILE naming file and tensor', async (t) => {
  const truncated = await copyOf(STORIES);
  const file = join(truncated, 'model.safetensors');
  await fsp.truncate(file, (await fsp.stat(file)).size - 100);
  const e1 = await loadFails(t, truncated, 'BAD_FILE', /data_offsets .* run past the end of the file .*truncated/);
  t.true(e1!.message.includes(file) && e1!.message.includes("tensor 'model.norm.weight'"), e1!.message);

  const pastEnd = await copyOf(STORIES);
  const b = readFileSync(join(pastEnd, 'model.safetensors'));
  b.writeBigUInt64LE(BigInt(b.length), 0);
  await fsp.writeFile(join(pastEnd, 'model.safetensors'), b);
  await loadFails(t, pastEnd, 'BAD_FILE', /model.safetensors: header length \d+ runs past the end of the file/);

  const dtype = await copyOf(STORIES);
  const d = readFileSync(join(dtype, 'model.safetensors'));
  const at = d.indexOf('"dtype":"F32"', 8);
  d.write('"dtype":"F31"', at); // the first tensor after __metadata__: model.embed_tokens.weight
  await fsp.writeFile(join(dtype, 'model.safetensors'), d);
  await loadFails(t, dtype, 'BAD_FILE', /model.safetensors: tensor 'model.embed_tokens.weight': unknown dtype "F31"/);

  const ints = await copyOf(STORIES);
  await rewrite(ints, (ts) => ts.map((x) => (x.name === 'model.norm.weight' ? { ...x, dtype: 'I32' } : x)));
  await loadFails(t, ints, 'BAD_FILE', /tensor 'model.norm.weight': dtype I32 cannot be loaded as float weights/);
});

withStories('bad checkpoints: missing, extra and misshapen tensors; a bad config field; no weights', async (t) => {
  const missing = await copyOf(STORIES);
  await rewrite(missing, (ts) => ts.filter((x) => x.name !== 'model.layers.2.self_attn.v_proj.weight'));
  await loadFails(t, missing, 'BAD_FILE', /model.safetensors: missing tensor 'model.layers.2.self_attn.v_proj.weight'/);

  const extra = await copyOf(STORIES);
  await rewrite(extra, (ts) => [...ts, { name: 'model.layers.9.mlp.up_proj.weight', dtype: 'F32', shape: [2], data: new Float32Array(2) }]);
  await loadFails(t, extra, 'BAD_FILE', /model.safetensors: unexpected tensor 'model.layers.9.mlp.up_proj.weight'/);

  const shape = await copyOf(STORIES);
  await rewrite(shape, (ts) => ts.map((x) => (x.name === 'model.layers.0.mlp.gate_proj.weight' ? { ...x, shape: [64, 172] } : x)));
  await loadFails(t, shape, 'BAD_FILE', /tensor 'model.layers.0.mlp.gate_proj.weight': shape \[64, 172\] does not match the model's \[172, 64\]/);

  const config = await copyOf(STORIES);
  const json = JSON.parse(readFileSync(join(config, 'config.json'), 'utf8'));
  await fsp.writeFile(join(config, 'config.json'), JSON.stringify({ ...json, rope_scaling: { rope_type: 'yarn', factor: 4 } }));
  await loadFails(t, config, 'BAD_FILE', /config.json: rope_scaling: unsupported/);
  await fsp.writeFile(join(config, 'config.json'), JSON.stringify({ ...json, num_key_value_heads: 3 }));
  await loadFails(t, config, 'BAD_FILE', /config.json: num_key_value_heads: 3 does not divide num_attention_heads 8/);

  const noWeights = await copyOf(STORIES);
  await fsp.rm(join(noWeights, 'model.safetensors'));
  await loadFails(t, noWeights, 'NOT_FOUND', /no model.safetensors or model.safetensors.index.json/);
  await loadFails(t, join(tmp, 'nowhere'), 'NOT_FOUND', /nowhere\/config.json: no such file/);
});
