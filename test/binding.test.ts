/**
 * The binding: tensors in and out, error mapping (codes, names of the bad argument), dispose
 * semantics, memory accounting, job ordering and the event loop during long native calls.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

import { Engine, QuietstarError, backendInfo, opNames } from '../lib/index.js';
import { cpuEngine } from './support/engine.js';

const root = fileURLToPath(new URL('..', import.meta.url));

// Child processes run asynchronously: spawnSync would block this file's event loop, which the
// event-loop test below measures.
async function runChild(code: string, env: Record<string, string>): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import=tsx', '-e', code], {
      cwd: root,
      env: { ...process.env, ...env },
      encoding: 'utf8',
    });
    return { status: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { status: e.code ?? 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

test('tensors round-trip for every dtype', async (t) => {
  using e = cpuEngine();
  const f32 = e.tensor(new Float32Array([1.5, -2, 3.25]), [3]);
  t.deepEqual(Array.from(await f32.data()), [1.5, -2, 3.25]);
  t.deepEqual(Array.from(f32.dataSync()), [1.5, -2, 3.25]);
  const f64 = e.tensor([Math.PI, Math.E], [2, 1], 'f64');
  t.deepEqual(Array.from(await f64.data()), [Math.PI, Math.E]);
  t.deepEqual(f64.shape, [2, 1]);
  const ids = e.tensor(new Int32Array([7, -1, 2147483647]));
  t.is(ids.dtype, 'i32');
  t.deepEqual(Array.from(await ids.data()), [7, -1, 2147483647]);
  const mask = e.tensor(new Uint8Array([0, 1, 255]));
  t.deepEqual(Array.from(await mask.data()), [0, 1, 255]);
  const bf = e.tensor(new Uint16Array([0x3f80, 0xc000]), [2], 'bf16'); // 1.0, -2.0
  t.is(bf.dtype, 'bf16');
  const { y } = await e.ops.convert({ x: bf, dtype: 'f32' });
  t.deepEqual(Array.from(await y.data()), [1, -2]);
  const h = e.tensor(new Uint16Array([0x3c00, 0x7bff]), [2], 'f16'); // 1.0, 65504
  t.deepEqual(Array.from(await (await e.ops.convert({ x: h, dtype: 'f32' })).y.data()), [1, 65504]);
  const zeros = e.zeros([2, 3], 'f64');
  t.deepEqual(Array.from(await zeros.data()), [0, 0, 0, 0, 0, 0]);
});

test('bf16 and f16 conversion rounds to nearest even, as torch does', async (t) => {
  using e = cpuEngine();
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1.0);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
  const x = e.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, 65520, 2 ** -24, -0.1], [5]);
  const bf = await (await e.ops.convert({ x: (await e.ops.convert({ x, dtype: 'bf16' })).y, dtype: 'f32' })).y.array();
  t.deepEqual(bf.slice(0, 2), [1, 1 + 2 ** -6]);
  const f16 = await (await e.ops.convert({ x: (await e.ops.convert({ x, dtype: 'f16' })).y, dtype: 'f32' })).y.array();
  t.is(f16[2], Infinity); // 65520 rounds up past the largest half
  t.is(f16[3], 2 ** -24); // the smallest subnormal survives
  t.true(Math.abs((f16[4] as number) + 0.1) < 5e-5);
});

test('bad shapes and dtypes are INVALID_ARGUMENT errors naming the argument', async (t) => {
  using e = cpuEngine();
  const x = e.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const w = e.tensor([1, 2, 3, 4], [4]);
  const err = await t.throwsAsync(e.ops.layerNormForward({ inp: x, weight: w }), { instanceOf: QuietstarError });
  t.is(err?.code, 'INVALID_ARGUMENT');
  t.regex(err?.message ?? '', /layernorm_forward: 'weight' must have shape \[C\], where C = 3/);
  const ids = e.tensor([0, 1], [2]); // f32, not i32
  const table = e.tensor(new Float32Array(6), [3, 2]);
  const err2 = await t.throwsAsync(e.ops.embeddingForward({ ids, table }), { instanceOf: QuietstarError });
  t.regex(err2?.message ?? '', /'ids' must be i32/);
  const badIds = e.tensor(new Int32Array([0, 3]));
  const err3 = await t.throwsAsync(e.ops.embeddingForward({ ids: badIds, table }));
  t.regex(err3?.message ?? '', /'ids'\[1\] = 3 is out of range \[0, 3\)/);
  const mixed = e.tensor([1, 2, 3], [3], 'f64');
  const err4 = await t.throwsAsync(e.ops.residualForward({ a: e.tensor([1, 2, 3]), b: mixed }));
  t.regex(err4?.message ?? '', /'b' is f64 but the other float arguments are f32/);
  t.throws(() => e.tensor(new Float32Array(5), [2, 3]), { message: /data has 5 elements but shape \[2, 3\] needs 6/ });
  t.throws(() => e.zeros([2, -1]), { message: /shape\[1\] must be a non-negative integer/ });
  const err5 = await t.throwsAsync(e.run('no_such_op', {}));
  t.regex(err5?.message ?? '', /unknown op 'no_such_op' \(known: .*layernorm_forward/);
  t.throws(() => Engine.create({ threads: -1 }), { message: /engine.threads must be an integer >= 0/ });
  t.throws(() => Engine.create({ device: 'tpu' as 'cpu' }), { message: /engine.device must be/ });
});

test('use after dispose throws DISPOSED; dispose is idempotent and frees memory', async (t) => {
  const e = cpuEngine();
  const before = e.memory().hostBytes;
  const x = e.tensor(new Float32Array(1000), [1000]);
  t.is(e.memory().hostBytes, before + 4000);
  x.dispose();
  x.dispose();
  t.true(x.disposed);
  await e.synchronize(); // the release runs after jobs already queued
  t.is(e.memory().hostBytes, before);
  t.is(e.releaseCachedMemory(), 0); // the CPU caches no device memory
  t.is(e.memory().deviceCachedBytes ?? 0, 0);
  t.throws(() => x.dataSync(), { instanceOf: QuietstarError, message: /disposed/ });
  const err = await t.throwsAsync(e.ops.geluForward({ inp: x }));
  t.is((err as QuietstarError).code, 'DISPOSED');
  const p = await e.createParameters([{ name: 'w', shape: [4] }]);
  p.dispose();
  p.dispose();
  t.throws(() => p.buffer('params'), { message: /disposed/ });
  e.dispose();
  e.dispose();
  t.true(e.disposed);
  t.throws(() => e.zeros([1]), { instanceOf: QuietstarError, message: /this Engine was disposed/ });
});

test('disposing a tensor while a job reads it defers the free until the job ran', async (t) => {
  using e = cpuEngine();
  const x = e.tensor([1, 2, 3]);
  const slow = e.native.debugSleep(100);
  const pending = e.ops.residualForward({ a: x, b: x });
  x.dispose(); // queued after the op: the op still sees the data
  await slow;
  const { out } = await pending;
  t.deepEqual(await out.array(), [2, 4, 6]);
});

test('tensors of another engine are refused', async (t) => {
  using a = cpuEngine();
  using b = cpuEngine();
  const x = a.tensor([1, 2]);
  const err = await t.throwsAsync(b.ops.geluForward({ inp: x }));
  t.regex(err?.message ?? '', /belongs to another Engine/);
});

test.serial('jobs resolve in submission order and the event loop keeps ticking during long calls', async (t) => {
  using e = cpuEngine();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 10);
  const order: number[] = [];
  const n = 768;
  const a = e.zeros([n, n]);
  const started = Date.now();
  const jobs = [
    e.native.debugSleep(200).then(() => order.push(0)),
    e.ops.gemm({ a, b: a }).then(() => order.push(1)),
    e.ops.gemm({ a, b: a }).then(() => order.push(2)),
  ];
  t.true(e.pending >= 3);
  await Promise.all(jobs);
  clearInterval(timer);
  const elapsed = Date.now() - started;
  t.deepEqual(order, [0, 1, 2]);
  t.log(`${ticks} timer ticks during ${elapsed} ms of native work`);
  t.true(ticks >= Math.floor(elapsed / 10 / 3), `timer ticked ${ticks} times in ${elapsed} ms`);
  t.is(e.pending, 0);
});

test('parameters live in one flat buffer with aligned named views', async (t) => {
  using e = cpuEngine();
  using p = await e.createParameters([
    { name: 'ln.weight', shape: [5], decay: false },
    { name: 'fc.weight', shape: [3, 5] },
    { name: 'fc.bias', shape: [3], decay: false },
  ]);
  // decayed views first, each aligned to 16 elements (64 bytes)
  t.deepEqual(
    p.entries.map((x) => [x.name, x.offset]),
    [['fc.weight', 0], ['ln.weight', 16], ['fc.bias', 32]],
  );
  t.deepEqual(p.buffer('params').shape, [48]);
  t.deepEqual(p.view('fc.weight').shape, [3, 5]);
  await e.ops.copy({ src: e.tensor(new Float32Array(15).fill(2), [3, 5]), dst: p.view('fc.weight', 'grads') });
  await e.ops.copy({ src: e.tensor(new Float32Array(5).fill(1), [5]), dst: p.view('ln.weight', 'params') });
  const norm = await p.clipGradNorm(0);
  t.true(Math.abs(norm - Math.sqrt(15 * 4)) < 1e-9);
  const clipped = await p.clipGradNorm(1);
  t.true(Math.abs(clipped - Math.sqrt(60)) < 1e-9);
  t.true(Math.abs((await p.clipGradNorm(0)) - 1) < 1e-5);
  t.is(await p.adamwStep({ lr: 0.1, weightDecay: 0.5 }), 1);
  // ln.weight had no gradient and no decay: unchanged; fc.weight moved by -lr·sign(g) (t = 1)
  t.deepEqual(await p.view('ln.weight').array(), [1, 1, 1, 1, 1]);
  const w = await p.view('fc.weight').array();
  t.true(w.every((v) => Math.abs(v + 0.1) < 1e-6));
  await p.zeroGrad();
  t.is(await p.clipGradNorm(0), 0);
  t.throws(() => p.view('nope'), { message: /no parameter named 'nope'/ });
});

test('backendInfo and opNames describe the build', (t) => {
  const info = backendInfo();
  t.true(info.built.includes('cpu'));
  t.true(['cpu', 'cuda'].includes(info.active));
  t.is(info.cudaCompiled, info.built.includes('cuda'));
  t.true(info.cpuThreads >= 1);
  t.true(['avx512', 'avx2', 'generic'].includes(info.gemm.cpu));
  if (!info.cudaUsable) t.truthy(info.cudaUnavailableReason);
  t.is(typeof info.cublas.found, 'boolean');
  const names = opNames();
  for (const op of ['gemm', 'linear_forward', 'attention_backward', 'lmhead_xent_forward', 'adamw_update']) {
    t.true(names.includes(op), op);
  }
});

test('an explicit cuda device that cannot be honoured throws UNAVAILABLE with the reason', (t) => {
  const info = backendInfo();
  if (info.cudaUsable) {
    t.pass('a usable GPU is present');
    return;
  }
  const err = t.throws(() => Engine.create({ device: 'cuda' }), { instanceOf: QuietstarError });
  t.is(err?.code, 'UNAVAILABLE');
  t.true(err?.message.includes(info.cudaUnavailableReason ?? '<none>'));
});

test('QUIETSTAR_DEVICE=cpu forces the CPU for auto engines', async (t) => {
  const r = await runChild(
    `import('./lib/index.js').then(({ Engine }) => { const e = Engine.create(); console.log(e.device); e.dispose(); });`,
    { QUIETSTAR_DEVICE: 'cpu' },
  );
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), 'cpu');
});

test('a missing addon is an ADDON_NOT_BUILT error naming the build command', async (t) => {
  const r = await runChild(
    `import('./lib/index.js').then(({ Engine }) => {
      try { Engine.create(); } catch (e) { console.log(e.code + ' ' + e.message); }
    });`,
    { QUIETSTAR_ADDON: '/nonexistent/quietstar.node' },
  );
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^ADDON_NOT_BUILT/);
  t.regex(r.stdout, /npm rebuild quietstar/);
});

test('scope() disposes what it created except its result; Scope works across await', async (t) => {
  const { scope, Scope } = await import('../lib/index.js');
  using e = cpuEngine();
  let inner: import('../lib/index.js').Tensor | undefined;
  const kept = scope(() => {
    inner = e.tensor([1, 2]);
    return { keep: e.tensor([3]) };
  });
  t.true(inner?.disposed);
  t.false(kept.keep.disposed);
  t.throws(() => scope(async () => 1), { message: /scope\(fn\) is synchronous/ });
  const x = e.tensor([1, -1]);
  {
    using s = new Scope();
    const { out } = s.track(await e.ops.geluForward({ inp: x }));
    const { out: y } = await e.ops.geluForward({ inp: out });
    s.keep(s.track(y));
    t.false(out.disposed);
    inner = out;
    kept.keep = y;
  }
  t.true(inner.disposed);
  t.false(kept.keep.disposed);
});

test('clipGradNorm and adamwUpdate ops match the Parameters methods', async (t) => {
  using e = cpuEngine();
  const g = e.tensor([3, 4], [2], 'f64');
  const { norm } = await e.ops.clipGradNorm({ grads: g, maxNorm: 1 });
  t.deepEqual(await norm.array(), [5]);
  const clipped = await g.array();
  t.true(Math.abs(Math.hypot(clipped[0]!, clipped[1]!) - 1) < 1e-6);
  const p = e.tensor([1, 1], [2], 'f64');
  const err = await t.throwsAsync(e.ops.adamwUpdate({ params: p, grads: g, m: e.zeros([2], 'f64'), v: e.zeros([2], 'f64'), lr: 0.1, step: 1, beta1: 1 }));
  t.regex(err?.message ?? '', /adamw_update: 'beta1' must be in \[0, 1\) \(got 1\)/);
});
