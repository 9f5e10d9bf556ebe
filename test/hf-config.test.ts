/**
 * config.json <-> ModelConfig: each model_type's fields and transformers' defaults, the values
 * the native core cannot honour (named errors), and the round trip through modelConfigToHF.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError, type ErrorCode } from '../lib/errors.js';
import { generationConfigToHF, modelConfigFromHF, modelConfigToHF, readModelConfig } from '../lib/hf/config.js';
import { createModelConfig, type ModelConfig, type ModelConfigInput, type ModelType } from '../lib/model/config.js';
import { dataPath, missingData } from '../lib/util/data-path.js';

function throwsCode(t: ExecutionContext, fn: () => unknown, code: ErrorCode, message: RegExp): QuietstarError | undefined {
  const err = t.throws(fn, { instanceOf: QuietstarError, message });
  t.is(err?.code, code);
  return err;
}

function badConfig(t: ExecutionContext, json: unknown, message: RegExp): void {
  const err = throwsCode(t, () => modelConfigFromHF(json, 'dir/config.json'), 'BAD_FILE', message);
  t.true(err!.message.startsWith('dir/config.json: '), err!.message);
}

const gpt2 = { model_type: 'gpt2', vocab_size: 100, n_embd: 16, n_layer: 2, n_head: 4, n_positions: 32 };
const llama = {
  model_type: 'llama',
  vocab_size: 64,
  hidden_size: 32,
  intermediate_size: 48,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
};
// What LlamaConfig gives when config.json leaves these out: no biases, no window, BOS 1, EOS 2.
const LLAMA_DEFAULTS = { qkvBias: false, oBias: false, mlpBias: false, slidingWindow: 0, bosTokenId: 1, eosTokenId: 2 };

test('gpt2: fields, defaults (n_inner 4·n_embd, tied, eps, bos/eos 50256 only when in the vocabulary)', (t) => {
  const c = modelConfigFromHF(gpt2);
  t.like(c, {
    modelType: 'gpt2',
    vocabSize: 100,
    dModel: 16,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 4,
    headDim: 4,
    dFF: 64,
    maxSeqLen: 32,
    normEps: 1e-5,
    tieEmbeddings: true,
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    slidingWindow: 0,
  });
  t.is(c.bosTokenId, undefined);
  const full = modelConfigFromHF({
    ...gpt2,
    vocab_size: 50257,
    n_inner: 40,
    layer_norm_epsilon: 1e-6,
    activation_function: 'gelu_pytorch_tanh',
    tie_word_embeddings: false,
  });
  t.like(full, { dFF: 40, normEps: 1e-6, tieEmbeddings: false, bosTokenId: 50256, eosTokenId: 50256 });
  t.is(modelConfigFromHF({ ...gpt2, n_inner: null }).dFF, 64, 'n_inner null = 4·n_embd');
});

test('gpt2: unsupported activation and attention scaling name the field', (t) => {
  badConfig(t, { ...gpt2, activation_function: 'relu' }, /activation_function: unsupported value "relu" \(supported: gelu_new, gelu_pytorch_tanh\)/);
  badConfig(t, { ...gpt2, scale_attn_by_inverse_layer_idx: true }, /scale_attn_by_inverse_layer_idx: unsupported/);
  badConfig(t, { ...gpt2, n_head: 3 }, /n_head: 3 does not divide n_embd 16/);
  badConfig(t, { ...gpt2, n_layer: 2.5 }, /n_layer: must be an integer/);
  badConfig(t, { ...gpt2, n_embd: '16' }, /n_embd: must be an integer/);
});

test('llama: fields, GQA, head_dim default, untied by default, bos 1 / eos 2 defaults, biases', (t) => {
  const c = modelConfigFromHF(llama);
  t.like(c, {
    modelType: 'llama',
    vocabSize: 64,
    dModel: 32,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    headDim: 8,
    dFF: 48,
    maxSeqLen: 128,
    normEps: 1e-5,
    ropeTheta: 500000,
    tieEmbeddings: false,
    ...LLAMA_DEFAULTS,
  });
  t.like(modelConfigFromHF({ ...llama, attention_bias: true, mlp_bias: true, head_dim: 16, tie_word_embeddings: true }), {
    qkvBias: true,
    oBias: true,
    mlpBias: true,
    headDim: 16,
    tieEmbeddings: true,
  });
  t.is(modelConfigFromHF({ ...llama, num_key_value_heads: null }).nKvHeads, 4, 'null kv heads = heads');
  const ids = modelConfigFromHF({ ...llama, bos_token_id: 5, eos_token_id: [6, 7], pad_token_id: 0 });
  t.like(ids, { bosTokenId: 5, eosTokenId: [6, 7], padTokenId: 0 });
  const none = modelConfigFromHF({ ...llama, bos_token_id: null, eos_token_id: null });
  t.is(none.bosTokenId, undefined, 'explicit null = no BOS');
  t.is(none.eosTokenId, undefined);
  t.is(modelConfigFromHF({ ...llama, rope_scaling: { rope_type: 'default' } }).ropeTheta, 500000);
  t.is(modelConfigFromHF({ ...llama, rope_theta: undefined, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }).ropeTheta, 1e6);
});

test('llama: rope_scaling, other activations, bad head counts, out-of-vocabulary ids are named errors', (t) => {
  badConfig(t, { ...llama, rope_scaling: { type: 'linear', factor: 2 } }, /rope_scaling: unsupported \(.*"linear".*\); only plain RoPE/);
  badConfig(t, { ...llama, rope_scaling: { rope_type: 'llama3', factor: 8 } }, /rope_scaling: unsupported/);
  badConfig(t, { ...llama, hidden_act: 'gelu' }, /hidden_act: unsupported value "gelu" \(supported: silu\)/);
  badConfig(t, { ...llama, num_key_value_heads: 3 }, /num_key_value_heads: 3 does not divide num_attention_heads 4/);
  badConfig(t, { ...llama, num_attention_heads: 5, num_key_value_heads: 5 }, /num_attention_heads: 5 does not divide hidden_size 32/);
  badConfig(t, { ...llama, eos_token_id: 64 }, /eos_token_id: 64 is outside the vocabulary \(vocab_size 64\)/);
  badConfig(t, { ...llama, eos_token_id: [2, 99] }, /eos_token_id: 99 is outside/);
  badConfig(t, { ...llama, head_dim: 7 }, /headDim: RoPE needs an even head width/);
});

test('model_type: missing or unknown names the field and lists the supported ones', (t) => {
  badConfig(t, { ...llama, model_type: 'falcon' }, /model_type: "falcon" is not supported \(supported: gpt2, llama, mistral, qwen2\)/);
  badConfig(t, { hidden_size: 4 }, /model_type: undefined is not supported/);
  badConfig(t, [1], /not a JSON object/);
});

test('mistral: sliding_window (default 4096, null = none), no biases', (t) => {
  const m = { ...llama, model_type: 'mistral' };
  t.is(modelConfigFromHF({ ...m, sliding_window: 16 }).slidingWindow, 16);
  t.is(modelConfigFromHF({ ...m, sliding_window: null }).slidingWindow, 0);
  t.is(modelConfigFromHF(m).slidingWindow, 4096);
  t.like(modelConfigFromHF({ ...m, attention_bias: true }), { qkvBias: false, oBias: false, mlpBias: false });
  badConfig(t, { ...m, sliding_window: 0 }, /sliding_window: must be an integer >= 1 or null/);
});

test('qwen2: q/k/v biases; a window only with use_sliding_window on every layer', (t) => {
  const q = { ...llama, model_type: 'qwen2', sliding_window: 64, max_window_layers: 2 };
  const c = modelConfigFromHF(q);
  t.like(c, { qkvBias: true, oBias: false, mlpBias: false, slidingWindow: 0, tieEmbeddings: false });
  t.is(c.bosTokenId, undefined, 'Qwen2Config has no BOS default');
  // transformers: layer i slides iff use_sliding_window and i >= max_window_layers.
  t.is(modelConfigFromHF({ ...q, use_sliding_window: true, max_window_layers: 0 }).slidingWindow, 64);
  t.is(modelConfigFromHF({ ...q, use_sliding_window: true, max_window_layers: 2 }).slidingWindow, 0, 'no layer reaches max_window_layers');
  badConfig(t, { ...q, use_sliding_window: true, max_window_layers: 1 }, /max_window_layers: 1 gives a sliding window to only some of the 2 layers: unsupported/);
  badConfig(t, { ...q, layer_types: ['full_attention', 'sliding_attention'] }, /layer_types: mixes full and sliding attention: unsupported/);
  t.is(modelConfigFromHF({ ...q, layer_types: ['sliding_attention', 'sliding_attention'] }).slidingWindow, 64);
});

/** A small valid configuration of `modelType`, with `extra` fields on top. */
const tiny = (modelType: ModelType, extra: Partial<ModelConfigInput> = {}): ModelConfig =>
  createModelConfig({ modelType, vocabSize: 50, dModel: 8, nLayers: 1, nHeads: 2, ...extra });
const roundTrip = (c: ModelConfig): ModelConfig => modelConfigFromHF(JSON.parse(JSON.stringify(modelConfigToHF(c))));

test('modelConfigToHF -> modelConfigFromHF is the identity for every model type', (t) => {
  const configs: ModelConfig[] = [
    tiny('gpt2', { dFF: 20, maxSeqLen: 64, tieEmbeddings: false, bosTokenId: 3, eosTokenId: 4 }),
    tiny('llama', { nLayers: 3, nKvHeads: 1, headDim: 6, dFF: 20, qkvBias: true, oBias: true, mlpBias: true, normEps: 1e-6 }),
    tiny('mistral', { slidingWindow: 7, eosTokenId: [1, 2], padTokenId: 0 }),
    tiny('mistral'),
    tiny('qwen2', { nLayers: 2, slidingWindow: 5, tieEmbeddings: true }),
    tiny('qwen2', { nLayers: 2, eosTokenId: 7 }),
  ];
  for (const c of configs) t.deepEqual(roundTrip(c), c, c.modelType);
});

test('modelConfigToHF: the fields transformers reads, and combinations it cannot express', (t) => {
  const g = modelConfigToHF(tiny('gpt2'), { torchDtype: 'bfloat16' });
  t.like(g, { architectures: ['GPT2LMHeadModel'], model_type: 'gpt2', n_embd: 8, n_inner: 32, activation_function: 'gelu_new', torch_dtype: 'bfloat16' });
  const l = modelConfigToHF(tiny('llama'));
  t.like(l, { architectures: ['LlamaForCausalLM'], hidden_act: 'silu', rope_scaling: null, attention_bias: false, torch_dtype: 'float32' });
  t.like(modelConfigToHF(tiny('qwen2')), {
    architectures: ['Qwen2ForCausalLM'],
    use_sliding_window: false,
  });
  const bad = (c: ModelConfig, message: RegExp): void => void throwsCode(t, () => modelConfigToHF(c), 'INVALID_ARGUMENT', message);
  bad(tiny('llama', { qkvBias: true }), /config.qkvBias: Llama's attention_bias covers q, k, v and o together/);
  bad(tiny('llama', { slidingWindow: 4 }), /config.slidingWindow/);
  bad(tiny('mistral', { mlpBias: true }), /config.mlpBias: Mistral has no biases/);
  bad(tiny('qwen2', { qkvBias: false }), /config.qkvBias: Qwen2 always has/);
  t.is(generationConfigToHF(tiny('qwen2')), undefined);
  t.deepEqual(generationConfigToHF(tiny('llama', { bosTokenId: 1, eosTokenId: 2 })), {
    _from_model_config: true,
    bos_token_id: 1,
    eos_token_id: 2,
  });
});

test('readModelConfig: NOT_FOUND for a folder without config.json, BAD_FILE for broken JSON', async (t) => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'qs-hfconfig-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const e1 = await t.throwsAsync(readModelConfig(dir), { instanceOf: QuietstarError, message: /config.json: no such file/ });
  t.is(e1?.code, 'NOT_FOUND');
  await fsp.writeFile(join(dir, 'config.json'), '{"model_type": "llama",');
  const e2 = await t.throwsAsync(readModelConfig(dir), { instanceOf: QuietstarError, message: /config.json: not valid JSON/ });
  t.is(e2?.code, 'BAD_FILE');
});

const storiesMissing = missingData('models', 'stories260K-hf', 'config.json');
const mistralMissing = missingData('tokenizers', 'mistral-7b-v0.1', 'config.json');
const gpt2Missing = missingData('models', 'fake-gpt2-hf', 'config.json');
for (const reason of new Set([storiesMissing, mistralMissing, gpt2Missing])) if (reason) console.log(`hf-config: skipping a fixture test: ${reason}`);

(storiesMissing ? test.skip : test)('stories260K-hf config.json', async (t) => {
  t.deepEqual(await readModelConfig(dataPath('models', 'stories260K-hf')), {
    modelType: 'llama',
    vocabSize: 512,
    dModel: 64,
    nLayers: 5,
    nHeads: 8,
    nKvHeads: 4,
    headDim: 8,
    dFF: 172,
    maxSeqLen: 512,
    normEps: 1e-5,
    ropeTheta: 10000,
    tieEmbeddings: true,
    ...LLAMA_DEFAULTS,
  });
});

(mistralMissing ? test.skip : test)('mistral-7b-v0.1 config.json (a real Mistral)', async (t) => {
  t.like(await readModelConfig(dataPath('tokenizers', 'mistral-7b-v0.1')), {
    modelType: 'mistral',
    vocabSize: 32000,
    dModel: 4096,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 128,
    dFF: 14336,
    maxSeqLen: 32768,
    slidingWindow: 4096,
    tieEmbeddings: false,
  });
});

(gpt2Missing ? test.skip : test)('fake-gpt2-hf config.json', async (t) => {
  t.like(await readModelConfig(dataPath('models', 'fake-gpt2-hf')), {
    modelType: 'gpt2',
    vocabSize: 50257,
    dModel: 2,
    nLayers: 1,
    nHeads: 1,
    dFF: 8,
    maxSeqLen: 1024,
    tieEmbeddings: true,
    bosTokenId: 50256,
    eosTokenId: 50256,
  });
});
