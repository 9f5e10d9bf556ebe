/**
 * `npm run bench [-- --json] [-- --quick] [-- --only gemm]`: runs the native benchmark
 * programs built beside the addon (build/bench_*) and prints one table, or with --json one
 * object per line: {"name", "value", "unit", "baseline"?, "ratio"?}, where baseline and ratio
 * are present when a reference was measured in the same run (OpenBLAS, copy bandwidth, a
 * dense attention). Benchmarks are never part of the test gate.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface Row {
  name: string;
  value: number;
  unit: string;
  baseline?: number;
  ratio?: number;
  [extra: string]: unknown;
}

const root = fileURLToPath(new URL('..', import.meta.url));
const PROGRAMS = [
  'gemm_bench', 'kernels_bench', 'attention_xent_bench', 'thought_attention_bench', 'train_bench', 'quietstar_bench', 'think_bench',
  // GPU: each prints one "skipped" row without a usable CUDA device
  'cuda_gemm_bench', 'cuda_attention_bench', 'cuda_quietstar_bench',
];

function findBinary(name: string): string | undefined {
  for (const dir of [process.env.QUIETSTAR_BENCH_DIR, join(root, 'build'), join(root, 'build', 'Release')]) {
    if (!dir) continue;
    const p = join(dir, `bench_${name}`);
    if (existsSync(p)) return p;
  }
  return undefined;
}

function runProgram(path: string, args: string[]): Promise<Row[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const rows = out
        .split('\n')
        .filter((l) => l.trim().startsWith('{'))
        .map((l) => JSON.parse(l) as Row);
      if (code !== 0) process.stderr.write(`bench: ${path} exited with ${code}\n`);
      resolve(rows);
    });
  });
}

function fmt(x: number | undefined, digits = 2): string {
  if (x === undefined || !Number.isFinite(x)) return '';
  return Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(digits);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
    },
  });
  const rows: Row[] = [];
  let missing = 0;
  for (const program of PROGRAMS) {
    if (values.only && !program.includes(values.only)) continue;
    const bin = findBinary(program);
    if (!bin) {
      process.stderr.write(`bench: build/bench_${program} not found; build it with \`npm run build:native\`\n`);
      missing++;
      continue;
    }
    const got = await runProgram(bin, values.quick ? ['--quick'] : []);
    for (const row of got) {
      rows.push(row);
      if (values.json) process.stdout.write(`${JSON.stringify(row)}\n`);
    }
  }
  if (!values.json) {
    const cpu = cpus()[0]?.model ?? 'unknown CPU';
    process.stdout.write(`quietstar benchmarks on ${cpu} (${cpus().length} threads)\n\n`);
    const nameWidth = Math.max(20, ...rows.map((r) => r.name.length));
    process.stdout.write(`${'benchmark'.padEnd(nameWidth)}  ${'value'.padStart(10)}  ${'unit'.padEnd(9)}  ${'baseline'.padStart(10)}  ${'ratio'.padStart(6)}\n`);
    for (const r of rows) {
      if (r.skipped === true) {
        process.stdout.write(`${r.name}\n`);
        continue;
      }
      process.stdout.write(
        `${r.name.padEnd(nameWidth)}  ${fmt(r.value).padStart(10)}  ${r.unit.padEnd(9)}  ${fmt(r.baseline).padStart(10)}  ${fmt(r.ratio).padStart(6)}\n`,
      );
    }
  }
  return missing === PROGRAMS.length ? 1 : 0;
}

process.exitCode = await main();
