// Pure logic of scripts/build-native.mjs (the install script): where nvcc is looked for and in
// which order, how QUIETSTAR_CUDA / QUIETSTAR_CUDA_ARCHS are read, when a build marker counts
// as up to date, how failures and the summary line are worded. Nothing here builds or spawns.
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import {
  DEFAULT_CUDA_ARCHS,
  MARKER_SCHEMA,
  compareVersions,
  describeNvccSearch,
  errorLines,
  explainBuildFailure,
  findNvcc,
  formatCudaArchs,
  formatSummary,
  hashSources,
  markerMatches,
  normalizeCudaArch,
  nvccCandidates,
  parseCudaArchs,
  parseCudaMode,
  parseNvccVersion,
  sortCudaDirs,
} from '../scripts/build-native.mjs'
import { listSources } from '../scripts/list-sources.mjs'

// ---------------------------------------------------------------------------------------------
// nvcc discovery

const NVCC_13 = `nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0
`

test('parseNvccVersion reads "release X.Y, VX.Y.Z"', (t) => {
  t.deepEqual(parseNvccVersion(NVCC_13), { version: '13.0', full: '13.0.88' })
  t.deepEqual(parseNvccVersion('Cuda compilation tools, release 12.4, V12.4.131'), { version: '12.4', full: '12.4.131' })
  t.deepEqual(parseNvccVersion('release 11.8'), { version: '11.8', full: '11.8' })
  t.is(parseNvccVersion('bash: nvcc: command not found'), null)
  t.is(parseNvccVersion(''), null)
  t.is(parseNvccVersion(undefined), null)
})

test('compareVersions and sortCudaDirs put the newest toolkit first', (t) => {
  t.is(compareVersions('12.4', '13.0'), -1)
  t.is(compareVersions('13.0', '13.0.0'), 0)
  t.is(compareVersions('12.10', '12.9'), 1)
  t.deepEqual(sortCudaDirs(['cuda-11.8', 'cuda', 'cuda-12.10', 'cuda-13.0', 'cuda-12.9', 'bin', 'cuda-beta']), [
    'cuda-13.0',
    'cuda-12.10',
    'cuda-12.9',
    'cuda-11.8',
    'cuda-beta',
  ])
})

test('nvccCandidates: CUDACXX, then PATH, then /usr/local/cuda, then /usr/local/cuda-* newest first', (t) => {
  const listDir = (dir: string) => (dir === '/usr/local' ? ['cuda-12.4', 'cuda', 'cuda-13.0', 'lib'] : [])
  const got = nvccCandidates({
    env: { CUDACXX: '/opt/nv/bin/nvcc', PATH: '/usr/bin::/home/me/bin' },
    listDir,
    platform: 'linux',
  })
  t.deepEqual(
    got.map((c) => [c.path, c.source]),
    [
      ['/opt/nv/bin/nvcc', 'CUDACXX'],
      ['/usr/bin/nvcc', 'PATH'],
      ['/home/me/bin/nvcc', 'PATH'],
      ['/usr/local/cuda/bin/nvcc', '/usr/local/cuda'],
      ['/usr/local/cuda-13.0/bin/nvcc', '/usr/local/cuda-*'],
      ['/usr/local/cuda-12.4/bin/nvcc', '/usr/local/cuda-*'],
    ],
  )
})

test('nvccCandidates drops duplicates and works without CUDACXX or PATH', (t) => {
  const got = nvccCandidates({ env: { PATH: '/usr/local/cuda/bin' }, listDir: () => [], platform: 'linux' })
  t.deepEqual(
    got.map((c) => c.path),
    ['/usr/local/cuda/bin/nvcc'],
  )
  t.is(got[0]?.source, 'PATH')
  t.deepEqual(
    nvccCandidates({ env: {}, listDir: () => [], platform: 'linux' }).map((c) => c.path),
    ['/usr/local/cuda/bin/nvcc'],
  )
})

test('findNvcc takes the first candidate that exists and answers --version', (t) => {
  const exists = new Set(['/usr/local/cuda/bin/nvcc', '/usr/local/cuda-12.4/bin/nvcc', '/broken/bin/nvcc'])
  const { nvcc, searched } = findNvcc({
    env: { CUDACXX: '/nope/nvcc', PATH: '/usr/bin:/broken/bin' },
    listDir: () => ['cuda-12.4', 'cuda'],
    isExecutable: (f) => exists.has(f),
    getVersion: (f) => (f === '/broken/bin/nvcc' ? null : parseNvccVersion(NVCC_13)),
    platform: 'linux',
  })
  t.truthy(nvcc)
  t.is(nvcc?.path, '/usr/local/cuda/bin/nvcc')
  t.is(nvcc?.source, '/usr/local/cuda')
  t.is(nvcc?.version, '13.0')
  t.deepEqual(
    searched.map((s) => `${s.path}: ${s.status}`),
    [
      '/nope/nvcc: not found',
      '/usr/bin/nvcc: not found',
      '/broken/bin/nvcc: did not answer --version',
      '/usr/local/cuda/bin/nvcc: nvcc 13.0',
    ],
  )
})

test('findNvcc prefers CUDACXX over PATH when both work', (t) => {
  const { nvcc } = findNvcc({
    env: { CUDACXX: '/opt/cuda-13/bin/nvcc', PATH: '/usr/local/bin' },
    listDir: () => [],
    isExecutable: () => true,
    getVersion: () => ({ version: '13.0', full: '13.0.88' }),
    platform: 'linux',
  })
  t.is(nvcc?.path, '/opt/cuda-13/bin/nvcc')
  t.is(nvcc?.source, 'CUDACXX')
})

test('findNvcc reports everything it searched when nothing is found', (t) => {
  const { nvcc, searched } = findNvcc({
    env: { CUDACXX: '/nope/nvcc', PATH: '/a:/b' },
    listDir: () => ['cuda-12.0'],
    isExecutable: () => false,
    getVersion: () => null,
    platform: 'linux',
  })
  t.is(nvcc, null)
  t.is(searched.length, 5)
  const text = describeNvccSearch(searched)
  t.regex(text, /\$CUDACXX=\/nope\/nvcc: not found/)
  t.regex(text, /\$PATH \(2 directories\): no nvcc/)
  t.regex(text, /\/usr\/local\/cuda\/bin\/nvcc: not found/)
  t.regex(text, /\/usr\/local\/cuda-12\.0\/bin\/nvcc: not found/)
})

// ---------------------------------------------------------------------------------------------
// QUIETSTAR_CUDA and QUIETSTAR_CUDA_ARCHS

test('parseCudaMode accepts auto/on/off (and 1/0) and rejects typos', (t) => {
  t.is(parseCudaMode(undefined), 'auto')
  t.is(parseCudaMode(''), 'auto')
  t.is(parseCudaMode('AUTO'), 'auto')
  t.is(parseCudaMode('on'), 'on')
  t.is(parseCudaMode('1'), 'on')
  t.is(parseCudaMode('Off'), 'off')
  t.is(parseCudaMode('0'), 'off')
  t.throws(() => parseCudaMode('of'), { message: /QUIETSTAR_CUDA must be auto, on or off/ })
})

test('parseCudaArchs: the default list, with sm_90 and PTX, never native', (t) => {
  for (const unset of [undefined, null, '', '  ']) {
    const r = parseCudaArchs(unset)
    t.deepEqual(r.archs, [...DEFAULT_CUDA_ARCHS])
    t.is(r.added, null)
    t.is(r.source, 'default')
  }
  t.deepEqual([...DEFAULT_CUDA_ARCHS], ['80-real', '86-real', '89-real', '90-real', '90-virtual'])
  t.false(DEFAULT_CUDA_ARCHS.includes('native'))
})

test('parseCudaArchs accepts ";", "," and space separated lists', (t) => {
  t.deepEqual(parseCudaArchs('90').archs, ['90'])
  t.deepEqual(parseCudaArchs('80;90').archs, ['80', '90'])
  t.deepEqual(parseCudaArchs('80,90').archs, ['80', '90'])
  t.deepEqual(parseCudaArchs(' 90 , 80 ').archs, ['80', '90'])
  t.deepEqual(parseCudaArchs('80-real;90-real;90-virtual').archs, ['80-real', '90-real', '90-virtual'])
  t.deepEqual(parseCudaArchs('90;90').archs, ['90'])
  t.is(parseCudaArchs('90').source, 'QUIETSTAR_CUDA_ARCHS')
})

test('parseCudaArchs always includes a real sm_90 cubin', (t) => {
  t.deepEqual(parseCudaArchs('80').archs, ['80', '90-real'])
  t.is(parseCudaArchs('80').added, '90-real')
  t.deepEqual(parseCudaArchs('86-real').archs, ['86-real', '90-real'])
  // arch-specific 90a and PTX-only 90-virtual do not count as a generic sm_90 build
  t.deepEqual(parseCudaArchs('90a').archs, ['90-real', '90a'])
  t.deepEqual(parseCudaArchs('90-virtual').archs, ['90-real', '90-virtual'])
  t.is(parseCudaArchs('90-real').added, null)
  t.is(parseCudaArchs('80;90').added, null)
})

test('normalizeCudaArch understands sm_/compute_/dotted spellings and rejects native', (t) => {
  t.is(normalizeCudaArch('sm_90'), '90-real')
  t.is(normalizeCudaArch('compute_90'), '90-virtual')
  t.is(normalizeCudaArch('sm_90a'), '90a-real')
  t.is(normalizeCudaArch('9.0'), '90')
  t.is(normalizeCudaArch('8.6+PTX'), '86')
  t.is(normalizeCudaArch('90A'), '90a')
  t.is(normalizeCudaArch('100f'), '100f')
  for (const bad of ['native', 'all', 'all-major']) {
    t.throws(() => normalizeCudaArch(bad), { message: /not allowed/ })
    t.throws(() => parseCudaArchs(`80;${bad}`), { message: /not allowed/ })
  }
  t.throws(() => normalizeCudaArch('hopper'), { message: /cannot understand "hopper"/ })
  t.throws(() => parseCudaArchs(';;'), { message: /no architectures/ })
})

test('formatCudaArchs writes the summary form', (t) => {
  t.is(formatCudaArchs([...DEFAULT_CUDA_ARCHS]), '80,86,89,90+ptx')
  t.is(formatCudaArchs(['90']), '90+ptx')
  t.is(formatCudaArchs('90-real;90-virtual'), '90+ptx')
  t.is(formatCudaArchs('80-real,90-real,90-virtual'), '80,90+ptx')
  t.is(formatCudaArchs(['80-real', '90-real']), '80,90')
  t.is(formatCudaArchs(['80', '90-real']), '80,90+ptx 80')
  t.is(formatCudaArchs(['90-virtual']), 'ptx 90')
  t.is(formatCudaArchs('sm_90'), '90')
  t.is(formatCudaArchs('something else'), null)
})

// ---------------------------------------------------------------------------------------------
// The build marker

const inputs = {
  napiVersion: 8,
  platform: 'linux',
  arch: 'x64',
  cudaMode: 'auto',
  nvcc: { path: '/usr/local/cuda/bin/nvcc', version: '13.0' },
  cudaArchs: ['90'],
  cmake: '3.25.1',
  cc: null,
  cxx: null,
  sourceHash: 'abc',
}

test('markerMatches: same inputs in any key order match', (t) => {
  const reordered = Object.fromEntries(Object.entries(inputs).reverse())
  t.true(markerMatches({ schema: MARKER_SCHEMA, inputs: reordered, outputs: {} }, inputs))
  t.true(
    markerMatches(
      { schema: MARKER_SCHEMA, inputs: { ...inputs, nvcc: { version: '13.0', path: '/usr/local/cuda/bin/nvcc' } } },
      inputs,
    ),
  )
})

test('markerMatches: any changed input, schema or a missing marker means rebuild', (t) => {
  const marker = { schema: MARKER_SCHEMA, inputs }
  t.false(markerMatches({ ...marker, inputs: { ...inputs, sourceHash: 'abd' } }, inputs))
  t.false(markerMatches({ ...marker, inputs: { ...inputs, cudaArchs: ['80', '90'] } }, inputs))
  t.false(markerMatches({ ...marker, inputs: { ...inputs, cudaMode: 'off', nvcc: null, cudaArchs: null } }, inputs))
  t.false(markerMatches({ ...marker, inputs: { ...inputs, nvcc: { ...inputs.nvcc, version: '12.4' } } }, inputs))
  t.false(markerMatches({ ...marker, inputs: { ...inputs, cmake: null } }, inputs))
  t.false(markerMatches({ ...marker, inputs: { ...inputs, napiVersion: 9 } }, inputs))
  t.false(markerMatches({ ...marker, schema: MARKER_SCHEMA + 1 }, inputs))
  const { sourceHash: _dropped, ...partial } = inputs
  t.false(markerMatches({ ...marker, inputs: partial }, inputs))
  t.false(markerMatches(null, inputs))
  t.false(markerMatches('{}', inputs))
  t.false(markerMatches({ schema: MARKER_SCHEMA }, inputs))
})

test('hashSources changes when a native file or CMakeLists.txt changes, not otherwise', (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qs-hash-'))
  try {
    fs.mkdirSync(path.join(root, 'native', 'cpu'), { recursive: true })
    fs.mkdirSync(path.join(root, 'lib'))
    fs.writeFileSync(path.join(root, 'native', 'cpu', 'a.cpp'), 'int a;')
    fs.writeFileSync(path.join(root, 'CMakeLists.txt'), 'project(x)')
    const h1 = hashSources(root)
    t.is(h1.files, 2)
    t.is(hashSources(root).hash, h1.hash)
    fs.writeFileSync(path.join(root, 'lib', 'index.ts'), 'export {}')
    t.is(hashSources(root).hash, h1.hash, 'TypeScript does not affect the binary')
    fs.writeFileSync(path.join(root, 'native', 'cpu', 'a.cpp'), 'int a = 1;')
    const h2 = hashSources(root)
    t.not(h2.hash, h1.hash)
    fs.writeFileSync(path.join(root, 'binding.gyp'), '{}')
    t.not(hashSources(root).hash, h2.hash)
    fs.renameSync(path.join(root, 'native', 'cpu', 'a.cpp'), path.join(root, 'native', 'cpu', 'b.cpp'))
    t.not(hashSources(root).hash, h2.hash, 'a rename is a change')
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
})

// ---------------------------------------------------------------------------------------------
// Failure messages

test('explainBuildFailure finds the nvcc / CMake reason', (t) => {
  t.is(
    explainBuildFailure("  The CUDA compiler\n\n    \"/usr/local/bin/nvcc\"\n\n  is not able to compile a simple test program.\n\n  nvcc fatal   : Unsupported gpu architecture 'compute_10'\n"),
    "nvcc fatal: Unsupported gpu architecture 'compute_10'",
  )
  t.is(
    explainBuildFailure('CMake Error at CMakeLists.txt:17 (cmake_minimum_required):\n  CMake 99.0 or higher is required.  You are running version 3.25.1\n'),
    'CMake (CMakeLists.txt:17): CMake 99.0 or higher is required. You are running version 3.25.1',
  )
  t.is(
    explainBuildFailure('FAILED: x.o\n/repo/native/cuda/bad.cu(1): error: expected a ";"\nninja: build stopped\n', '/repo'),
    'native/cuda/bad.cu(1): error: expected a ";"',
  )
  t.regex(explainBuildFailure('CMAKE_CUDA_ARCHITECTURES:\n\n    native\n\n  is not one of'), /no GPU was detected|native/)
  t.is(explainBuildFailure('line one\nsomething odd happened\n\n'), 'something odd happened')
  t.is(explainBuildFailure(''), 'unknown error (see the log)')
})

test('errorLines keeps the errors and CMake messages, drops noise', (t) => {
  const log = [
    '[1/3] Building CXX object a.o',
    'FAILED: a.o',
    'a.cpp:1:5: error: expected ;',
    'ninja: build stopped: subcommand failed.',
    'ERROR OMG Process terminated: 1',
  ].join('\n')
  t.deepEqual(errorLines(log), ['a.cpp:1:5: error: expected ;'])
  t.deepEqual(errorLines('CMake Error at CMakeLists.txt:3 (project):\n  bad things\n-- Configuring incomplete, errors occurred!'), [
    'CMake Error at CMakeLists.txt:3 (project):',
    '  bad things',
  ])
  t.deepEqual(errorLines('a\nb\nc', 2), ['b', 'c'])
})

// ---------------------------------------------------------------------------------------------
// The summary line

test('formatSummary: CUDA build on a machine without a GPU', (t) => {
  const line = formatSummary(
    {
      built: ['cpu', 'cuda'],
      active: 'cpu',
      cudaArchs: '80-real,86-real,89-real,90-real,90-virtual',
      nvccVersion: '13.0',
      cudaUnavailableReason: 'no CUDA device',
      cublas: { found: false, path: null, reason: 'libcublasLt.so.13: not found' },
    },
    { tool: 'cmake-js', built: ['cpu', 'cuda'], nvccVersion: '13.0', archs: ['90'], fallbacks: [] },
  )
  t.is(line, 'quietstar: built cuda+cpu (nvcc 13.0, sm 80,86,89,90+ptx) · now: cpu (no CUDA device) · cublas: not found, own kernels · fallbacks: none')
  t.false(line.includes('\n'))
})

test('formatSummary tolerates a backendInfo() without the optional fields', (t) => {
  const line = formatSummary({}, { tool: 'cmake-js', built: ['cpu', 'cuda'], nvccVersion: '13.0', archs: ['90'], fallbacks: [] })
  t.is(line, 'quietstar: built cuda+cpu (nvcc 13.0, sm 90+ptx) · now: unknown (no CUDA device) · cublas: unknown · fallbacks: none')
  t.regex(formatSummary(null, { built: ['cpu'] }), /^quietstar: built cpu · now: unknown \(no backendInfo\(\)\) · cublas: n\/a · fallbacks: none$/)
})

test('formatSummary: GPU active, cuBLAS found, up to date', (t) => {
  const line = formatSummary(
    {
      built: ['cuda', 'cpu'],
      active: 'cuda',
      cudaArchs: '90',
      nvccVersion: '13.0',
      cudaUnavailableReason: null,
      cublas: { found: true, path: '/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13', reason: null },
    },
    { upToDate: true, tool: 'cmake-js', built: ['cpu', 'cuda'], fallbacks: [] },
  )
  t.regex(line, /^quietstar: up to date: cuda\+cpu \(nvcc 13\.0, sm 90\+ptx\) · now: cuda · cublas: \/venv\/.*libcublasLt\.so\.13 · fallbacks: none$/)
})

test('formatSummary: CPU fallbacks are listed', (t) => {
  const line = formatSummary(
    { built: ['cpu'], active: 'cpu' },
    {
      tool: 'node-gyp',
      built: ['cpu'],
      fallbacks: ["CUDA configure failed: nvcc fatal: Unsupported gpu architecture 'compute_10' → cpu", 'cmake not found → node-gyp'],
    },
  )
  t.is(
    line,
    "quietstar: built cpu (node-gyp) · now: cpu · cublas: n/a · fallbacks: CUDA configure failed: nvcc fatal: Unsupported gpu architecture 'compute_10' → cpu; cmake not found → node-gyp",
  )
  t.is(
    formatSummary({ built: ['cpu'], active: 'cpu' }, { tool: 'cmake-js', built: ['cpu'], cudaSkipped: 'no nvcc found', fallbacks: [] }),
    'quietstar: built cpu (no nvcc found) · now: cpu · cublas: n/a · fallbacks: none',
  )
})

// ---------------------------------------------------------------------------------------------
// binding.gyp's source list

test('list-sources matches the CMake globs (core, cpu, addon; no cuda)', (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qs-src-'))
  try {
    for (const d of ['core', 'cpu', 'addon', 'cuda', 'tests']) fs.mkdirSync(path.join(root, 'native', d), { recursive: true })
    for (const f of ['core/b.cpp', 'core/a.cpp', 'core/a.h', 'cpu/gemm.cpp', 'addon/addon.cpp', 'cuda/gemm.cu', 'cuda/device.cpp', 'tests/test_x.cpp']) {
      fs.writeFileSync(path.join(root, 'native', f), '')
    }
    t.deepEqual(listSources(root), ['native/core/a.cpp', 'native/core/b.cpp', 'native/cpu/gemm.cpp', 'native/addon/addon.cpp'])
  } finally {
    fs.rmSync(root, { recursive: true, force: true })
  }
})
