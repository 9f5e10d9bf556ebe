/**
 * safetensors: the reader's header validation (every malformed case a clear BAD_FILE naming
 * the file and tensor), reading one tensor at its offset, the atomic streaming writer, and
 * sharded folders (model.safetensors.index.json) as HF's save_pretrained lays them out.
 */
import test from 'ava';
import { promises as fsp, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError } from '../lib/errors.js';
import { SafetensorsReader, writeSafetensors, type SafetensorsTensor } from '../lib/hf/safetensors.js';
import { CheckpointWeights, INDEX_FILE, writeCheckpointWeights } from '../lib/hf/sharded.js';
import { dataPath, missingData } from '../lib/util/data-path.js';

const tmp = await fsp.mkdtemp(join(tmpdir(), 'qs-safetensors-'));
test.after.always(() => fsp.rm(tmp, { recursive: true, force: true }));
let files = 0;
const fresh = (name = 'x.safetensors'): string => join(tmp, `${files++}-${name}`);

/** A file from a header object and a data section, exactly as given (no validation). */
async function rawFile(header: unknown, data: Uint8Array, headerText?: string): Promise<string> {
  const path = fresh();
  const json = Buffer.from(headerText ?? JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await fsp.writeFile(path, Buffer.concat([len, json, data]));
  return path;
}

async function badFile(t: import('ava').ExecutionContext, path: string, message: RegExp): Promise<void> {
  const err = await t.throwsAsync(SafetensorsReader.open(path), { instanceOf: QuietstarError, message });
  t.is(err?.code, 'BAD_FILE');
  t.true(err!.message.includes(path), `message names the file: ${err!.message}`);
}

const sample = (): SafetensorsTensor[] => [
  { name: 'b.bf16', dtype: 'BF16', shape: [2, 2], data: new Uint16Array([0x3f80, 0xc000, 0, 0x7f80]) },
  { name: 'a.f32', dtype: 'F32', shape: [3], data: new Float32Array([1.5, -2, 3.25]) },
  { name: 'c.i64', dtype: 'I64', shape: [2], data: new BigInt64Array([1n, -5n]) },
  { name: 'd.u8', dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) },
  { name: 'e.empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
  { name: 'f.scalar', dtype: 'F16', shape: [], data: async () => new Uint16Array([0x3c00]) },
];

/** Temporary files left in a folder by the atomic writer (none, once a write has settled). */
const leftovers = async (dir: string): Promise<string[]> => (await fsp.readdir(dir)).filter((f) => f.includes('.tmp-'));

test('write then read: every tensor, dtype, shape and byte comes back; header as HF writes it', async (t) => {
  const dir = await fsp.mkdtemp(join(tmp, 'rt-'));
  const path = join(dir, 'x.safetensors');
  await writeSafetensors(path, sample());
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  t.is(n % 8, 0, 'header padded to 8 bytes');
  const headerText = bytes.subarray(8, 8 + n).toString('utf8');
  t.regex(headerText, /^\{"__metadata__":\{"format":"pt"\},/);
  t.regex(headerText, / *$/);
  // HF order: wider dtypes first, then by name.
  t.deepEqual(Object.keys(JSON.parse(headerText)), ['__metadata__', 'c.i64', 'a.f32', 'e.empty', 'b.bf16', 'f.scalar', 'd.u8']);

  await using r = await SafetensorsReader.open(path);
  t.deepEqual(r.metadata, { format: 'pt' });
  t.is(r.entries.size, 6);
  t.deepEqual(r.entry('b.bf16').shape, [2, 2]);
  t.is(r.entry('b.bf16').dtype, 'BF16');
  t.deepEqual(Array.from(new Float32Array((await r.read('a.f32')).buffer)), [1.5, -2, 3.25]);
  t.deepEqual(Array.from(new Uint16Array((await r.read('b.bf16')).buffer)), [0x3f80, 0xc000, 0, 0x7f80]);
  t.deepEqual(Array.from(new BigInt64Array((await r.read('c.i64')).buffer)), [1n, -5n]);
  t.deepEqual(Array.from(await r.read('d.u8')), [1, 2, 3]);
  t.is((await r.read('e.empty')).length, 0);
  t.deepEqual(r.entry('f.scalar').shape, []);
  t.deepEqual(Array.from(new Uint16Array((await r.read('f.scalar')).buffer)), [0x3c00]);
  t.throws(() => r.entry('nope'), { instanceOf: QuietstarError, message: /no tensor named 'nope'/ });
  t.deepEqual(await leftovers(dir), [], 'no temporary file left');
});

test('writer: custom metadata, and data from a typed-array view with an offset', async (t) => {
  const path = fresh();
  const backing = new Float32Array([9, 9, 1, 2, 9]);
  await writeSafetensors(path, [{ name: 'w', dtype: 'F32', shape: [2], data: backing.subarray(2, 4) }], { format: 'pt', note: 'hi' });
  await using r = await SafetensorsReader.open(path);
  t.deepEqual(r.metadata, { format: 'pt', note: 'hi' });
  t.deepEqual(Array.from(new Float32Array((await r.read('w')).buffer)), [1, 2]);
});

test('writer: bad input is refused and a failed write leaves nothing behind', async (t) => {
  const dir = await fsp.mkdtemp(join(tmp, 'fail-'));
  const path = join(dir, 'x.safetensors');
  await t.throwsAsync(writeSafetensors(path, [{ name: 'w', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), {
    message: /tensor 'w': 8 bytes of data but F32\[3\] needs 12/,
  });
  await t.throwsAsync(writeSafetensors(path, [...sample(), sample()[0]!]), { instanceOf: QuietstarError, message: /tensor 'b.bf16': duplicate name/ });
  await t.throwsAsync(writeSafetensors(path, [{ name: 'w', dtype: 'Q4' as 'F32', shape: [1], data: new Uint8Array(1) }]), {
    message: /unknown dtype "Q4"/,
  });
  await t.throwsAsync(writeSafetensors(path, [{ name: 'w', dtype: 'F32', shape: [-1], data: new Uint8Array(0) }]), { instanceOf: QuietstarError, message: /shape/ });
  const failing: SafetensorsTensor = { name: 'z', dtype: 'F32', shape: [1], data: () => Promise.reject(new Error('engine died')) };
  await t.throwsAsync(writeSafetensors(path, [...sample(), failing]), { message: 'engine died' });
  t.deepEqual(await fsp.readdir(dir), [], 'no file and no temporary file left');
});

test('a write replaces an existing file atomically', async (t) => {
  const path = fresh();
  await writeSafetensors(path, [{ name: 'old', dtype: 'U8', shape: [1], data: new Uint8Array([1]) }]);
  await writeSafetensors(path, [{ name: 'new', dtype: 'U8', shape: [1], data: new Uint8Array([2]) }]);
  await using r = await SafetensorsReader.open(path);
  t.deepEqual([...r.entries.keys()], ['new']);
});

test('missing file: NOT_FOUND naming it', async (t) => {
  const path = join(tmp, 'absent.safetensors');
  const err = await t.throwsAsync(SafetensorsReader.open(path), { instanceOf: QuietstarError });
  t.is(err?.code, 'NOT_FOUND');
  t.true(err!.message.includes(path));
});

test('truncated files: shorter than the length field, header past the end, data cut short', async (t) => {
  const tiny = fresh();
  await fsp.writeFile(tiny, Buffer.from([1, 2, 3]));
  await badFile(t, tiny, /truncated file: 3 bytes/);

  const header = { w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } };
  await badFile(t, await rawFile(header, new Uint8Array(0), JSON.stringify(header) + ' '.repeat(4)).then(async (p) => {
    // Claim a header far longer than the file.
    const b = readFileSync(p);
    b.writeBigUInt64LE(10_000n, 0);
    await fsp.writeFile(p, b);
    return p;
  }), /header length 10000 runs past the end of the file/);

  // A valid file cut in the middle of its last tensor names that tensor.
  const path = fresh();
  await writeSafetensors(path, [
    { name: 'first', dtype: 'F32', shape: [4], data: new Float32Array(4) },
    { name: 'second', dtype: 'F32', shape: [4], data: new Float32Array(4) },
  ]);
  const size = (await fsp.stat(path)).size;
  await fsp.truncate(path, size - 5);
  await badFile(t, path, /tensor 'second': data_offsets \[16, 32\] run past the end of the file .*truncated/);
});

test('malformed headers: invalid JSON, not an object, unknown dtype, bad shape, bad offsets', async (t) => {
  await badFile(t, await rawFile(null, new Uint8Array(0), '{"w": {"dtype": "F32",'), /header is not valid JSON/);
  await badFile(t, await rawFile([1, 2], new Uint8Array(0)), /header is not a JSON object/);
  await badFile(t, await rawFile({ w: { dtype: 'Q4_K', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2)), /tensor 'w': unknown dtype "Q4_K"/);
  await badFile(t, await rawFile({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, new Uint8Array(0)), /tensor 'w': shape \[-1\]/);
  await badFile(t, await rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [4] } }, new Uint8Array(4)), /tensor 'w': data_offsets \[4\] is not \[begin, end\]/);
  await badFile(t, await rawFile({ w: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, new Uint8Array(4)), /tensor 'w': .*end before they begin/);
  await badFile(t, await rawFile({ __metadata__: { format: 1 } }, new Uint8Array(0)), /__metadata__.format is not a string/);
});

test('inconsistent data: size mismatch, overlap, trailing bytes', async (t) => {
  await badFile(
    t,
    await rawFile({ w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } }, new Uint8Array(20)),
    /tensor 'w': 20 bytes of data but F32\[2,3\] needs 24/,
  );
  await badFile(
    t,
    await rawFile(
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
      new Uint8Array(12),
    ),
    /tensor 'b' overlaps tensor 'a'/,
  );
  await badFile(t, await rawFile({ a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(6)), /4 bytes after the last tensor/);
});

// ---- sharded folders ----------------------------------------------------------------------

const many = (): SafetensorsTensor[] =>
  Array.from({ length: 5 }, (_, i) => ({ name: `layer.${i}.w`, dtype: 'F32' as const, shape: [10], data: new Float32Array(10).fill(i) }));

test('weights below the shard size: one model.safetensors, no index', async (t) => {
  const dir = await fsp.mkdtemp(join(tmp, 'single-'));
  t.deepEqual(await writeCheckpointWeights(dir, many()), ['model.safetensors']);
  await using w = await CheckpointWeights.open(dir);
  t.is(w.entries.size, 5);
  t.deepEqual(Array.from(new Float32Array((await w.read('layer.3.w')).buffer)), new Array(10).fill(3));
});

test('sharded save: HF file names, index with total_size and a sorted weight_map, reads back', async (t) => {
  const dir = await fsp.mkdtemp(join(tmp, 'sharded-'));
  // 40 bytes per tensor, 100 per shard: two tensors per shard -> 3 shards.
  const files = await writeCheckpointWeights(dir, many(), { maxShardBytes: 100 });
  t.deepEqual(files, ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors', INDEX_FILE]);
  const index = JSON.parse(await fsp.readFile(join(dir, INDEX_FILE), 'utf8'));
  t.deepEqual(index.metadata, { total_size: 200 });
  t.deepEqual(Object.keys(index.weight_map), many().map((x) => x.name));
  t.is(index.weight_map['layer.4.w'], 'model-00003-of-00003.safetensors');
  await using w = await CheckpointWeights.open(dir);
  t.is(w.source, join(dir, INDEX_FILE));
  t.is(w.entries.size, 5);
  for (let i = 0; i < 5; i++) t.deepEqual(Array.from(new Float32Array((await w.read(`layer.${i}.w`)).buffer)), new Array(10).fill(i));
  t.true(w.entries.get('layer.0.w')!.file.endsWith('model-00001-of-00003.safetensors'));
});

test('a tensor larger than the shard size gets a shard of its own', async (t) => {
  const dir = await fsp.mkdtemp(join(tmp, 'big-'));
  const files = await writeCheckpointWeights(
    dir,
    [
      { name: 'small', dtype: 'U8', shape: [4], data: new Uint8Array(4) },
      { name: 'big', dtype: 'U8', shape: [64], data: new Uint8Array(64) },
    ],
    { maxShardBytes: 16 },
  );
  t.is(files.length, 3);
  await using w = await CheckpointWeights.open(dir);
  t.not(w.entries.get('big')!.file, w.entries.get('small')!.file);
});

test('folder errors: no weights, a missing shard, a weight_map that lies, a duplicate tensor', async (t) => {
  const empty = await fsp.mkdtemp(join(tmp, 'empty-'));
  const e1 = await t.throwsAsync(CheckpointWeights.open(empty), { instanceOf: QuietstarError, message: /no model.safetensors or model.safetensors.index.json/ });
  t.is(e1?.code, 'NOT_FOUND');

  const dir = await fsp.mkdtemp(join(tmp, 'broken-'));
  await writeCheckpointWeights(dir, many(), { maxShardBytes: 100 });
  await fsp.rm(join(dir, 'model-00002-of-00003.safetensors'));
  const e2 = await t.throwsAsync(CheckpointWeights.open(dir), { instanceOf: QuietstarError, message: /shard model-00002-of-00003.safetensors is missing/ });
  t.is(e2?.code, 'NOT_FOUND');

  const lying = await fsp.mkdtemp(join(tmp, 'lying-'));
  await writeCheckpointWeights(lying, many(), { maxShardBytes: 100 });
  const indexPath = join(lying, INDEX_FILE);
  const index = JSON.parse(await fsp.readFile(indexPath, 'utf8'));
  index.weight_map['layer.0.w'] = 'model-00002-of-00003.safetensors';
  index.weight_map['ghost'] = 'model-00001-of-00003.safetensors';
  await fsp.writeFile(indexPath, JSON.stringify(index));
  const e3 = await t.throwsAsync(CheckpointWeights.open(lying), {
    instanceOf: QuietstarError,
    message: /tensor 'layer.0.w' is in model-00002-of-00003.safetensors, but/,
  });
  t.is(e3?.code, 'BAD_FILE');

  index.weight_map['layer.0.w'] = '../escape.safetensors';
  await fsp.writeFile(indexPath, JSON.stringify(index));
  await t.throwsAsync(CheckpointWeights.open(lying), { instanceOf: QuietstarError, message: /weight_map\['layer.0.w'\]: .* not a file name inside the folder/ });

  await fsp.writeFile(indexPath, '{"weight_map": ');
  const e4 = await t.throwsAsync(CheckpointWeights.open(lying), { instanceOf: QuietstarError, message: /model.safetensors.index.json: not valid JSON/ });
  t.is(e4?.code, 'BAD_FILE');

  const dup = await fsp.mkdtemp(join(tmp, 'dup-'));
  await writeSafetensors(join(dup, 'a.safetensors'), [many()[0]!]);
  await writeSafetensors(join(dup, 'b.safetensors'), [many()[0]!]);
  await fsp.writeFile(join(dup, INDEX_FILE), JSON.stringify({ weight_map: { 'layer.0.w': 'a.safetensors', other: 'b.safetensors' } }));
  await t.throwsAsync(CheckpointWeights.open(dup), { instanceOf: QuietstarError, message: /tensor 'layer.0.w' is also in/ });
});

// ---- the real fixtures ---------------------------------------------------------------------

const storiesMissing = missingData('models', 'stories260K-hf', 'model.safetensors');
if (storiesMissing) console.log(`safetensors: skipping the fixture tests: ${storiesMissing}`);

(storiesMissing ? test.skip : test)('stories260K-hf/model.safetensors: 47 F32 tensors, each read at its own offset', async (t) => {
  const path = dataPath('models', 'stories260K-hf', 'model.safetensors');
  await using r = await SafetensorsReader.open(path);
  t.is(r.entries.size, 47);
  t.deepEqual(r.metadata, { format: 'pt' });
  t.deepEqual(r.entry('model.embed_tokens.weight').shape, [512, 64]);
  t.deepEqual(r.entry('model.layers.4.self_attn.k_proj.weight').shape, [32, 64]);
  const whole = readFileSync(path);
  for (const name of ['model.norm.weight', 'model.layers.2.mlp.down_proj.weight']) {
    const e = r.entry(name);
    t.deepEqual(await r.read(name), new Uint8Array(whole.subarray(e.begin, e.end)), name);
  }
});

const gpt2Missing = missingData('models', 'fake-gpt2-hf', 'model.safetensors');
(gpt2Missing ? test.skip : test)('fake-gpt2-hf/model.safetensors: GPT-2 names and Conv1D shapes', async (t) => {
  await using r = await SafetensorsReader.open(dataPath('models', 'fake-gpt2-hf', 'model.safetensors'));
  t.is(r.entries.size, 16);
  t.deepEqual(r.entry('transformer.h.0.attn.c_attn.weight').shape, [2, 6]);
  t.deepEqual(r.entry('transformer.wte.weight').shape, [50257, 2]);
});

(storiesMissing || gpt2Missing ? test.skip : test)('rewriting the HF-written fixtures reproduces them byte for byte', async (t) => {
  for (const model of ['stories260K-hf', 'fake-gpt2-hf']) {
    const path = dataPath('models', model, 'model.safetensors');
    await using r = await SafetensorsReader.open(path);
    const out = fresh();
    const tensors = [...r.entries.values()].map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape, data: () => r.read(e.name) }));
    await writeSafetensors(out, tensors, { ...r.metadata });
    t.true(readFileSync(out).equals(readFileSync(path)), model);
  }
});
