/**
 * Source layout rules that keep the backends honest:
 *  - every CUDA kernel file native/cuda/X.cu has its CPU twin native/cpu/X.cpp (the oracle);
 *  - every CPU kernel file has its CUDA twin, but for the CPU-only pieces listed with a reason;
 *  - every CUDA kernel file is named by a native test (native/tests/test_cuda_*.cpp) that runs it
 *    against its twin;
 *  - native/addon is the only Node-API code: no napi.h anywhere else under native/.
 */
import test from 'ava';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const native = fileURLToPath(new URL('../native/', import.meta.url));

// Infrastructure, not kernels: the runtime probe and the cuBLAS loader have no CPU counterpart.
const CUDA_INFRASTRUCTURE = new Set(['device.cu', 'blas_dyn.cpp']);

test('every CUDA kernel file has a CPU twin with the same name', (t) => {
  const cudaFiles = readdirSync(join(native, 'cuda')).filter((f) => /\.(cu|cpp)$/.test(f) && !CUDA_INFRASTRUCTURE.has(f));
  t.true(cudaFiles.length > 0);
  const orphans = cudaFiles.filter((f) => !existsSync(join(native, 'cpu', f.replace(/\.(cu|cpp)$/, '.cpp'))));
  t.deepEqual(orphans, [], `CUDA files without a CPU twin in native/cpu: ${orphans.join(', ')}`);
});

// CPU files with no CUDA twin of their own, and why.
const CPU_ONLY: Record<string, string> = {
  'isa.cpp': 'CPU instruction-set detection',
  'matmul_small.cpp': "the CPU decoder's few-row product; on the GPU gemm.cu serves every shape",
  'attention_gemm.cpp': "a second CPU schedule of attention.h's contract; on the GPU attention.cu is that contract",
};

test('every CPU kernel file has a CUDA twin, or a reason it is CPU-only', (t) => {
  const cpuFiles = readdirSync(join(native, 'cpu')).filter((f) => f.endsWith('.cpp') && !(f in CPU_ONLY));
  const missing = cpuFiles.filter((f) => !existsSync(join(native, 'cuda', f.replace(/\.cpp$/, '.cu'))));
  t.deepEqual(missing, [], `CPU kernels without a CUDA twin in native/cuda: ${missing.join(', ')}`);
  for (const f of Object.keys(CPU_ONLY)) t.true(existsSync(join(native, 'cpu', f)), `CPU_ONLY lists a missing file ${f}`);
});

test('every CUDA kernel file is run against its CPU twin by a native test', (t) => {
  const tests = readdirSync(join(native, 'tests'))
    .filter((f) => /^test_cuda_.*\.cpp$/.test(f))
    .map((f) => readFileSync(join(native, 'tests', f), 'utf8'))
    .join('\n');
  const kernels = readdirSync(join(native, 'cuda')).filter((f) => f.endsWith('.cu') && !CUDA_INFRASTRUCTURE.has(f));
  const untested = kernels.filter((f) => !tests.includes(f));
  t.deepEqual(untested, [], `CUDA kernel files no test_cuda_*.cpp names: ${untested.join(', ')}`);
});

test('native/addon is the only Node-API code', (t) => {
  const offenders: string[] = [];
  for (const dir of ['core', 'cpu', 'cuda', 'include/quietstar', 'tests']) {
    for (const f of readdirSync(join(native, dir))) {
      const text = readFileSync(join(native, dir, f), 'utf8');
      if (/#include\s*[<"](napi|node_api)\.h[>"]/.test(text)) offenders.push(`${dir}/${f}`);
    }
  }
  t.deepEqual(offenders, []);
});
