/**
 * Source layout rules that keep the backends honest:
 *  - every CUDA kernel file native/cuda/X.cu has its CPU twin native/cpu/X.cpp (the oracle);
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
