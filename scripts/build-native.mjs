#!/usr/bin/env node
// build-native.mjs: builds the quietstar addon (build/Release/quietstar.node). It is the
// package's `install` script and `npm run build:native` (= --force).
//
// Flow (engineering notes §3):
//   1. QUIETSTAR_SKIP_BUILD=1 -> exit 0.
//   2. Resolve the inputs: CUDA mode (QUIETSTAR_CUDA=auto|on|off), nvcc (found by us: CUDACXX,
//      PATH, /usr/local/cuda/bin/nvcc, /usr/local/cuda-*/bin/nvcc newest first -- CMake's
//      check_language(CUDA) only looks at CUDACXX and PATH, which gives silent CPU builds),
//      architectures (QUIETSTAR_CUDA_ARCHS or a fixed list, sm_90 always in, never "native"),
//      cmake version, and a hash of native/, bench/*.cpp, CMakeLists.txt and binding.gyp.
//   3. If build/Release/quietstar.build.json records the same inputs and the .node exists and
//      loads, stop ("up to date"). --force skips this check; --clean also wipes build/.
//   4. cmake-js (the project-local copy, never npx): configure + build with CUDA when nvcc was
//      found. A failed CUDA build is retried CPU-only in a wiped build dir (a stale CMake cache
//      remembers the CUDA compiler). No cmake, or a CPU configure that fails -> node-gyp
//      (CPU only, same output path, only with local Node headers: nothing is downloaded).
//   5. Each built binary is loaded in a child process (backendInfo()) before it is accepted,
//      so a bad binary crashes the child, not the install. Then the marker is written.
//   6. One summary line on stdout; the full log is build/build-native.log (its tail is printed
//      on failure). Exit status is non-zero only when not even a CPU build could be made (or
//      when the user forced CUDA with QUIETSTAR_CUDA=on and it could not be built).
//
// The pure helpers are exported for test/build-script.test.ts; main() runs only when this file
// is executed directly. Node 20 builtins only.

import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const NAPI_VERSION = 8
/** Real cubins for Ampere, Ada and Hopper plus Hopper PTX for newer GPUs to JIT. */
export const DEFAULT_CUDA_ARCHS = Object.freeze(['80-real', '86-real', '89-real', '90-real', '90-virtual'])
/** Bump when the meaning of the marker or of the build changes, to invalidate old markers. */
export const MARKER_SCHEMA = 1
export const MARKER_NAME = 'quietstar.build.json'
export const ADDON_NAME = 'quietstar.node'
export const LOG_NAME = 'build-native.log'
const CONFIGURE_STAMP = 'quietstar.configure.json'

// ---------------------------------------------------------------------------------------------
// Pure helpers (exported for tests)

/**
 * Parses `nvcc --version` output ("Cuda compilation tools, release 13.0, V13.0.88").
 * @returns {{version: string, full: string} | null} version is "major.minor".
 */
export function parseNvccVersion(text) {
  if (typeof text !== 'string') return null
  const m = /release\s+(\d+)\.(\d+)(?:\s*,\s*V(\d+(?:\.\d+)*))?/i.exec(text)
  if (!m) return null
  const version = `${Number(m[1])}.${Number(m[2])}`
  return { version, full: m[3] ?? version }
}

/** Compares dotted numeric versions ("12.4" < "13.0" < "13.0.1"); non-numbers sort as 0. */
export function compareVersions(a, b) {
  const pa = String(a).split('.').map((x) => Number.parseInt(x, 10) || 0)
  const pb = String(b).split('.').map((x) => Number.parseInt(x, 10) || 0)
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0)
    if (d !== 0) return d < 0 ? -1 : 1
  }
  return 0
}

/**
 * Sorts `cuda-<version>` directory names newest first; names without a version go last.
 * Other names are dropped.
 */
export function sortCudaDirs(names) {
  const withVersion = []
  const without = []
  for (const name of names) {
    const m = /^cuda-(\d+(?:\.\d+)*)$/.exec(name)
    if (m) withVersion.push({ name, version: m[1] })
    else if (name.startsWith('cuda-')) without.push(name)
  }
  withVersion.sort((x, y) => compareVersions(y.version, x.version) || x.name.localeCompare(y.name))
  without.sort()
  return [...withVersion.map((x) => x.name), ...without]
}

/**
 * The places nvcc is looked for, in order: $CUDACXX, each $PATH entry, <root>/cuda/bin/nvcc,
 * then <root>/cuda-*\/bin/nvcc newest version first (root is /usr/local).
 * @returns {{path: string, source: string}[]}
 */
export function nvccCandidates({
  env = process.env,
  listDir = safeReaddir,
  cudaRoot = '/usr/local',
  platform = process.platform,
} = {}) {
  const exe = platform === 'win32' ? 'nvcc.exe' : 'nvcc'
  const delimiter = platform === 'win32' ? ';' : ':'
  const out = []
  if (env.CUDACXX) out.push({ path: env.CUDACXX, source: 'CUDACXX' })
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir) out.push({ path: path.join(dir, exe), source: 'PATH' })
  }
  out.push({ path: path.join(cudaRoot, 'cuda', 'bin', exe), source: path.join(cudaRoot, 'cuda') })
  for (const name of sortCudaDirs(listDir(cudaRoot))) {
    out.push({ path: path.join(cudaRoot, name, 'bin', exe), source: path.join(cudaRoot, 'cuda-*') })
  }
  // The same file can appear twice (PATH and /usr/local/cuda); keep the first.
  const seen = new Set()
  return out.filter((c) => (seen.has(c.path) ? false : (seen.add(c.path), true)))
}

/**
 * Finds the first usable nvcc: it must exist, be executable and answer `--version`.
 * @returns {{nvcc: {path: string, source: string, version: string, full: string} | null,
 *            searched: {path: string, source: string, status: string}[]}}
 */
export function findNvcc({
  env = process.env,
  listDir = safeReaddir,
  isExecutable = isExecutableFile,
  getVersion = nvccVersionOf,
  cudaRoot = '/usr/local',
  platform = process.platform,
} = {}) {
  const searched = []
  for (const c of nvccCandidates({ env, listDir, cudaRoot, platform })) {
    if (!isExecutable(c.path)) {
      searched.push({ ...c, status: 'not found' })
      continue
    }
    const v = getVersion(c.path)
    if (!v) {
      searched.push({ ...c, status: 'did not answer --version' })
      continue
    }
    searched.push({ ...c, status: `nvcc ${v.version}` })
    return { nvcc: { ...c, version: v.version, full: v.full }, searched }
  }
  return { nvcc: null, searched }
}

/** Human-readable account of a findNvcc() search, one line per place (PATH misses summed up). */
export function describeNvccSearch(searched, env = process.env) {
  const lines = []
  const cudacxx = searched.find((s) => s.source === 'CUDACXX')
  lines.push(cudacxx ? `  $CUDACXX=${cudacxx.path}: ${cudacxx.status}` : '  $CUDACXX: not set')
  const onPath = searched.filter((s) => s.source === 'PATH')
  const pathHits = onPath.filter((s) => s.status !== 'not found')
  lines.push(`  $PATH (${onPath.length} directories): ${pathHits.length ? '' : 'no nvcc'}`.trimEnd())
  for (const s of pathHits) lines.push(`    ${s.path}: ${s.status}`)
  const rest = searched.filter((s) => s.source !== 'CUDACXX' && s.source !== 'PATH')
  for (const s of rest) lines.push(`  ${s.path}: ${s.status}`)
  if (!rest.some((s) => s.source.endsWith('cuda-*'))) lines.push('  /usr/local/cuda-*/bin/nvcc: no such directories')
  return lines.join('\n')
}

/** QUIETSTAR_CUDA: auto (default) | on | off; also 1/0, true/false, yes/no. Throws otherwise. */
export function parseCudaMode(value) {
  const v = String(value ?? '').trim().toLowerCase()
  if (v === '' || v === 'auto') return 'auto'
  if (['on', '1', 'true', 'yes', 'force'].includes(v)) return 'on'
  if (['off', '0', 'false', 'no', 'cpu'].includes(v)) return 'off'
  throw new Error(`QUIETSTAR_CUDA must be auto, on or off (got ${JSON.stringify(value)})`)
}

/**
 * Normalises one architecture entry to CMake's CMAKE_CUDA_ARCHITECTURES syntax:
 * "90" (real + PTX), "90-real", "90-virtual", "90a"; also accepts sm_90 (-> 90-real),
 * compute_90 (-> 90-virtual), "9.0" and "9.0+PTX" (-> 90). Throws on anything else.
 */
export function normalizeCudaArch(entry) {
  const raw = String(entry).trim()
  const s = raw.toLowerCase()
  if (s === 'native' || s === 'all' || s === 'all-major') {
    throw new Error(
      `QUIETSTAR_CUDA_ARCHS: "${raw}" is not allowed; give explicit architectures such as 90 or 80;90 ` +
        '("native" fails on machines without a GPU, which is where packages are built)',
    )
  }
  let m
  if ((m = /^sm_(\d{2,3}[af]?)$/.exec(s))) return `${m[1]}-real`
  if ((m = /^compute_(\d{2,3}[af]?)$/.exec(s))) return `${m[1]}-virtual`
  if ((m = /^(\d{1,2})\.(\d)(\+ptx)?$/.exec(s))) return `${Number(m[1]) * 10 + Number(m[2])}`
  if ((m = /^(\d{2,3}[af]?)(-real|-virtual)?$/.exec(s))) return m[1] + (m[2] ?? '')
  throw new Error(
    `QUIETSTAR_CUDA_ARCHS: cannot understand "${raw}" (expected entries like 90, 80-real, 90-virtual, 90a, sm_90)`,
  )
}

function archNumber(a) {
  return Number.parseInt(a, 10)
}

/**
 * Parses QUIETSTAR_CUDA_ARCHS ("90", "80;90", "80,90", "80 90", "90a", ...) or returns the
 * default list when unset/empty. sm_90 is always built: "90-real" is appended when no entry
 * produces a generic sm_90 cubin ("90" or "90-real"; "90a" and "90-virtual" do not count).
 * @returns {{archs: string[], added: string | null, source: 'default' | 'QUIETSTAR_CUDA_ARCHS'}}
 */
export function parseCudaArchs(value) {
  const text = value == null ? '' : String(value).trim()
  const archs = []
  if (text === '') {
    archs.push(...DEFAULT_CUDA_ARCHS)
  } else {
    for (const part of text.split(/[;,\s]+/)) {
      if (!part) continue
      const a = normalizeCudaArch(part)
      if (!archs.includes(a)) archs.push(a)
    }
    if (archs.length === 0) throw new Error(`QUIETSTAR_CUDA_ARCHS: no architectures in ${JSON.stringify(value)}`)
  }
  let added = null
  if (!archs.some((a) => a === '90' || a === '90-real')) {
    added = '90-real'
    archs.push(added)
  }
  const kindRank = (a) => (a.endsWith('-virtual') ? 2 : a.endsWith('-real') ? 1 : 0)
  archs.sort((x, y) => archNumber(x) - archNumber(y) || x.localeCompare(y) || kindRank(x) - kindRank(y))
  return { archs, added, source: text === '' ? 'default' : 'QUIETSTAR_CUDA_ARCHS' }
}

/**
 * "80-real;86-real;89-real;90-real;90-virtual" -> "80,86,89,90+ptx"; "90" -> "90+ptx";
 * "80-real;90-real" -> "80,90"; "80;90-real" -> "80,90+ptx 80". Accepts an array or a string
 * separated by ; or , (as backendInfo().cudaArchs may be). null when an entry is not an arch.
 */
export function formatCudaArchs(archs) {
  const list = Array.isArray(archs) ? archs : String(archs ?? '').split(/[;,\s]+/).filter(Boolean)
  const real = []
  const virt = []
  for (const a of list) {
    const m = /^(?:sm_|compute_)?(\d+[af]?)(-real|-virtual)?$/i.exec(a.trim())
    if (!m) return null
    const n = m[1]
    const isCompute = /^compute_/i.test(a)
    const isSm = /^sm_/i.test(a)
    if ((m[2] !== '-virtual' && !isCompute) && !real.includes(n)) real.push(n)
    if ((m[2] !== '-real' && !isSm) && !virt.includes(n)) virt.push(n)
  }
  const byNum = (x, y) => archNumber(x) - archNumber(y) || x.localeCompare(y)
  real.sort(byNum)
  virt.sort(byNum)
  if (real.length === 0) return virt.length ? `ptx ${virt.join(',')}` : ''
  let s = real.join(',')
  if (virt.length === 1 && virt[0] === real[real.length - 1]) s += '+ptx'
  else if (virt.length) s += `+ptx ${virt.join(',')}`
  return s
}

/** JSON with object keys sorted, for order-independent comparison. */
export function stableStringify(value) {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v,
  )
}

/** True when a marker (parsed quietstar.build.json) was written for exactly these inputs. */
export function markerMatches(marker, inputs) {
  if (!marker || typeof marker !== 'object') return false
  if (marker.schema !== MARKER_SCHEMA) return false
  if (!marker.inputs || typeof marker.inputs !== 'object') return false
  return stableStringify(marker.inputs) === stableStringify(inputs)
}

/**
 * The one-line reason a (CUDA) build failed, from its log text: known nvcc/CMake messages
 * first, then the first compiler error, then the last non-empty line.
 */
export function explainBuildFailure(text, root = null) {
  let s = String(text ?? '')
  if (root) s = s.split(root.endsWith(path.sep) ? root : root + path.sep).join('')
  const clip = (x) => {
    const t = x.replace(/\s+/g, ' ').trim()
    return t.length > 200 ? `${t.slice(0, 197)}...` : t
  }
  let m
  if ((m = /nvcc fatal\s*:\s*([^\n]*)/i.exec(s))) return clip(`nvcc fatal: ${m[1]}`)
  if ((m = /Unsupported gpu architecture\s*'?([^'\n]*)'?/i.exec(s))) return clip(`unsupported GPU architecture ${m[1]}`)
  if (/no GPU was detected/i.test(s)) return 'CMake: CUDA architecture "native" but no GPU was detected'
  if ((m = /(CMAKE_CUDA_ARCHITECTURES[^\n]*\n(?:\s*\n)*\s*([^\n]+)\n(?:\s*\n)*\s*(is not[^\n]*))/i.exec(s))) {
    return clip(`CMAKE_CUDA_ARCHITECTURES: ${m[2]} ${m[3]}`)
  }
  if ((m = /The CUDA compiler\s*\n?\s*("[^"\n]*")?\s*\n?\s*is not able to compile a simple test program/i.exec(s))) {
    return clip(`the CUDA compiler ${m[1] ?? ''} is not able to compile a simple test program`)
  }
  if (/is not able to compile a simple test program/i.test(s)) return 'the compiler is not able to compile a simple test program'
  if ((m = /No CMAKE_CUDA_COMPILER could be found[^\n]*/i.exec(s))) return clip(m[0])
  if ((m = /^CMake Error(?: at ([^\n]*?)(?: \([^)\n]*\))?)?:?[ \t]*\n(?:[ \t]*\n)?([^\n]*)/m.exec(s))) {
    return clip(`CMake${m[1] ? ` (${m[1]})` : ''}: ${m[2] ?? ''}`)
  }
  if ((m = /^[^\n]*\berror\b[^\n]*:[^\n]*$/im.exec(s))) return clip(m[0])
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean)
  return clip(lines.at(-1) ?? 'unknown error (see the log)')
}

/**
 * The lines of a build log worth showing when a step failed: compiler/CMake errors (at most
 * `max`, the last ones), or the last lines when nothing looks like an error.
 */
export function errorLines(text, max = 8) {
  const lines = String(text ?? '').split('\n').map((l) => l.trimEnd()).filter((l) => l.trim())
  const noise = /ERROR OMG|Configuring incomplete|build stopped|See also "|Call Stack|^\s*CMakeLists\.txt:\d+ \(/
  const hits = []
  lines.forEach((l, i) => {
    if (!/error|fatal|not able to|unsupported|undefined reference|cannot find/i.test(l) || noise.test(l)) return
    hits.push(l)
    // CMake puts the message on the line after "CMake Error at file:line (command):"
    if (/^CMake Error/.test(l) && lines[i + 1] && !noise.test(lines[i + 1])) hits.push(lines[i + 1])
  })
  const picked = (hits.length ? [...new Set(hits)] : lines).slice(-max)
  return picked.map((l) => (l.length > 300 ? `${l.slice(0, 297)}...` : l))
}

function shorten(text, max = 70) {
  const t = String(text).replace(/\s+/g, ' ').trim()
  return t.length > max ? `${t.slice(0, max - 3)}...` : t
}

/**
 * The one summary line. `info` is backendInfo() (any field may be missing), `build` says what
 * happened: {upToDate, tool, built, nvccVersion, archs, fallbacks}.
 */
export function formatSummary(info, build) {
  const inf = info && typeof info === 'object' ? info : {}
  const order = ['cuda', 'cpu']
  const builtRaw = Array.isArray(inf.built) ? inf.built.map(String) : (build.built ?? [])
  const built = [...builtRaw].sort((a, b) => {
    const ia = order.indexOf(a) < 0 ? 99 : order.indexOf(a)
    const ib = order.indexOf(b) < 0 ? 99 : order.indexOf(b)
    return ia - ib || a.localeCompare(b)
  })
  const parts = []
  let head = `${build.upToDate ? 'up to date:' : 'built'} ${built.join('+') || 'unknown backends'}`
  const details = []
  if (built.includes('cuda')) {
    const nv = inf.nvccVersion ?? build.nvccVersion
    if (nv) details.push(`nvcc ${nv}`)
    const archs =
      (inf.cudaArchs && formatCudaArchs(inf.cudaArchs)) ||
      (build.archs && formatCudaArchs(build.archs)) ||
      (typeof inf.cudaArchs === 'string' ? shorten(inf.cudaArchs, 40) : '')
    if (archs) details.push(`sm ${archs}`)
  }
  if (!built.includes('cuda') && build.cudaSkipped) details.push(build.cudaSkipped)
  if (build.tool === 'node-gyp') details.push('node-gyp')
  if (details.length) head += ` (${details.join(', ')})`
  parts.push(head)

  if (!info || typeof info !== 'object') {
    parts.push('now: unknown (no backendInfo())')
  } else {
    let now = `now: ${inf.active ?? 'unknown'}`
    if (inf.active !== 'cuda' && built.includes('cuda')) {
      now += ` (${inf.cudaUnavailableReason ? shorten(inf.cudaUnavailableReason) : 'no CUDA device'})`
    }
    parts.push(now)
  }

  if (!built.includes('cuda')) parts.push('cublas: n/a')
  else if (!inf.cublas || typeof inf.cublas !== 'object') parts.push('cublas: unknown')
  else if (inf.cublas.found) parts.push(`cublas: ${inf.cublas.path ? shorten(inf.cublas.path, 80) : 'found'}`)
  else parts.push('cublas: not found, own kernels')

  const fb = build.fallbacks ?? []
  parts.push(`fallbacks: ${fb.length ? fb.map((f) => shorten(f, 140)).join('; ') : 'none'}`)
  return `quietstar: ${parts.join(' · ')}`
}

// ---------------------------------------------------------------------------------------------
// Small impure helpers

function safeReaddir(dir) {
  try {
    return fs.readdirSync(dir)
  } catch {
    return []
  }
}

function isExecutableFile(file) {
  try {
    if (!fs.statSync(file).isFile()) return false
    fs.accessSync(file, fs.constants.X_OK)
    return true
  } catch {
    return false
  }
}

function nvccVersionOf(nvcc) {
  const r = spawnSync(nvcc, ['--version'], { encoding: 'utf8', timeout: 60_000 })
  if (r.error || r.status !== 0) return null
  return parseNvccVersion(r.stdout)
}

function cmakeVersion() {
  const r = spawnSync('cmake', ['--version'], { encoding: 'utf8', timeout: 60_000 })
  if (r.error || r.status !== 0) return null
  const m = /cmake version\s+(\S+)/i.exec(r.stdout)
  return m ? m[1] : 'unknown'
}

function whichSync(name, envPath = process.env.PATH ?? '') {
  for (const dir of envPath.split(path.delimiter)) {
    if (dir && isExecutableFile(path.join(dir, name))) return path.join(dir, name)
  }
  return null
}

function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch {
    return null
  }
}

/** sha256 over the files that determine the binary: native/**, bench/*.cpp, CMakeLists.txt, binding.gyp. */
export function hashSources(root) {
  const files = []
  const walk = (rel) => {
    let entries
    try {
      entries = fs.readdirSync(path.join(root, rel), { withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      const r = path.posix.join(rel, e.name)
      if (e.isDirectory()) walk(r)
      else if (e.isFile()) files.push(r)
    }
  }
  walk('native')
  for (const name of safeReaddir(path.join(root, 'bench'))) {
    if (/\.(cpp|h|hpp|cu|cuh)$/.test(name)) files.push(`bench/${name}`)
  }
  for (const f of ['CMakeLists.txt', 'binding.gyp']) if (fs.existsSync(path.join(root, f))) files.push(f)
  files.sort()
  const h = createHash('sha256')
  for (const f of files) {
    h.update(f)
    h.update('\0')
    h.update(fs.readFileSync(path.join(root, f)))
    h.update('\0')
  }
  return { hash: h.digest('hex'), files: files.length }
}

// ---------------------------------------------------------------------------------------------
// The build

const SMOKE_SCRIPT = `
const file = process.argv[1];
const m = { exports: {} };
process.dlopen(m, file);
const fn = m.exports && m.exports.backendInfo;
const info = typeof fn === 'function' ? fn.call(m.exports) : null;
const json = JSON.stringify({ hasBackendInfo: typeof fn === 'function', info },
  (k, v) => (typeof v === 'bigint' ? Number(v) : v));
process.stdout.write('\\nQS_SMOKE ' + json + '\\n');
`

class Builder {
  constructor(root, opts) {
    this.root = root
    this.opts = opts
    this.buildDir = path.join(root, 'build')
    this.releaseDir = path.join(this.buildDir, 'Release')
    this.addon = path.join(this.releaseDir, ADDON_NAME)
    this.markerFile = path.join(this.releaseDir, MARKER_NAME)
    this.logFile = path.join(this.buildDir, LOG_NAME)
    this.jobs = opts.jobs
  }

  warn(line) {
    process.stderr.write(`${line}\n`)
    this.log(line)
  }

  startLog() {
    fs.mkdirSync(this.buildDir, { recursive: true })
    fs.writeFileSync(this.logFile, `quietstar build-native log, ${new Date().toISOString()}\n`)
    this.logging = true
  }

  log(text) {
    if (!this.logging) return
    try {
      fs.mkdirSync(this.buildDir, { recursive: true })
      fs.appendFileSync(this.logFile, text.endsWith('\n') ? text : `${text}\n`)
    } catch {
      // a log that cannot be written must not fail the build
    }
  }

  logTail(n = 30) {
    try {
      const lines = fs.readFileSync(this.logFile, 'utf8').split('\n')
      return lines.slice(-n - 1).join('\n')
    } catch {
      return '(no log)'
    }
  }

  /** Removes everything under build/ except the log. */
  wipeBuildDir() {
    for (const name of safeReaddir(this.buildDir)) {
      if (name === LOG_NAME) continue
      fs.rmSync(path.join(this.buildDir, name), { recursive: true, force: true })
    }
    this.log('(wiped build/)')
  }

  /** Runs a command, output to the log (and stderr with --verbose). Resolves {ok, code, signal, output}. */
  run(cmd, args, { env = process.env, cwd = this.root } = {}) {
    this.log(`\n$ ${[cmd, ...args].map((a) => (/[\s;"'$]/.test(a) ? JSON.stringify(a) : a)).join(' ')}`)
    return new Promise((resolve) => {
      let output = ''
      const keep = (chunk) => {
        const text = chunk.toString()
        this.log(text.endsWith('\n') ? text : `${text}\n`)
        if (this.opts.verbose) process.stderr.write(text)
        output += text
        if (output.length > 4_000_000) output = output.slice(-2_000_000)
      }
      let child
      try {
        child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
      } catch (err) {
        resolve({ ok: false, code: null, signal: null, output: String(err) })
        return
      }
      child.stdout.on('data', keep)
      child.stderr.on('data', keep)
      child.on('error', (err) => {
        output += `\n${err.message}\n`
        this.log(err.message)
      })
      child.on('close', (code, signal) => {
        this.log(`(exit ${code ?? signal})`)
        resolve({ ok: code === 0, code, signal, output })
      })
    })
  }

  /** Loads the addon in a child process and calls backendInfo(). */
  smokeTest() {
    const r = spawnSync(process.execPath, ['-e', SMOKE_SCRIPT, this.addon], {
      encoding: 'utf8',
      timeout: 120_000,
      env: process.env,
    })
    this.log(`\n$ node -e <load ${this.addon} and call backendInfo()>\n${r.stdout ?? ''}${r.stderr ?? ''}`)
    const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('QS_SMOKE '))
    if (r.status === 0 && line) {
      try {
        const parsed = JSON.parse(line.slice('QS_SMOKE '.length))
        return { ok: true, info: parsed.info, hasBackendInfo: parsed.hasBackendInfo }
      } catch (err) {
        return { ok: false, reason: `unreadable backendInfo() output: ${err.message}` }
      }
    }
    let reason
    if (r.error) reason = r.error.code === 'ETIMEDOUT' ? 'timed out after 120 s' : r.error.message
    else if (r.signal) reason = `the loading process crashed (${r.signal})`
    else {
      const err = (r.stderr ?? '').split('\n').map((l) => l.trim()).filter(Boolean)
      const msg = err.find((l) => /Error:/.test(l)) ?? err.at(-1) ?? `exit ${r.status}`
      reason = shorten(msg, 200)
    }
    return { ok: false, reason }
  }

  cmakeJsBin() {
    try {
      const pkg = createRequire(import.meta.url).resolve('cmake-js/package.json')
      const bin = path.join(path.dirname(pkg), 'bin', 'cmake-js')
      return fs.existsSync(bin) ? bin : null
    } catch {
      return null
    }
  }

  /**
   * One cmake-js configure + build. Reuses a configured build dir only when it was configured
   * with exactly these options (stamp file), otherwise wipes it first.
   * @returns {Promise<{ok: boolean, stage?: 'configure' | 'build' | 'output', output?: string}>}
   */
  async cmakeBuild(cuda) {
    const cmakeJs = this.cmakeJsBin()
    const cfg = {
      napiVersion: NAPI_VERSION,
      cuda: cuda ? { nvcc: cuda.nvcc.path, version: cuda.nvcc.version, archs: cuda.archs } : null,
      cc: process.env.CC ?? null,
      cxx: process.env.CXX ?? null,
    }
    const defs = [`--CDQUIETSTAR_CUDA=${cuda ? 'ON' : 'OFF'}`, `--CDnapi_build_version=${NAPI_VERSION}`]
    if (cuda) {
      defs.push(
        `--CDCMAKE_CUDA_COMPILER=${cuda.nvcc.path}`,
        `--CDCMAKE_CUDA_ARCHITECTURES=${cuda.archs.join(';')}`,
        `--CDQUIETSTAR_NVCC_VERSION=${cuda.nvcc.version}`,
      )
    }
    const common = ['--directory', this.root, '--out', this.buildDir, '--config', 'Release', ...defs]
    const env = { ...process.env }
    if (cuda) env.CUDACXX = cuda.nvcc.path
    else delete env.CUDACXX

    const stampFile = path.join(this.buildDir, CONFIGURE_STAMP)
    const configured =
      !this.opts.clean &&
      fs.existsSync(path.join(this.buildDir, 'CMakeCache.txt')) &&
      stableStringify(readJson(stampFile)) === stableStringify(cfg)
    if (configured) {
      this.log('(build/ is already configured with these options: incremental build)')
    } else {
      this.wipeBuildDir()
      const r = await this.run(process.execPath, [cmakeJs, 'configure', ...common], { env })
      if (!r.ok) return { ok: false, stage: 'configure', output: r.output }
      fs.writeFileSync(stampFile, `${JSON.stringify(cfg, null, 2)}\n`)
    }
    this.opts.clean = false
    const r = await this.run(process.execPath, [cmakeJs, 'build', ...common, '--parallel', String(this.jobs)], { env })
    if (!r.ok) return { ok: false, stage: 'build', output: r.output }
    if (!fs.existsSync(this.addon)) {
      return { ok: false, stage: 'output', output: `the build succeeded but ${this.addon} was not produced` }
    }
    return { ok: true }
  }

  /** How to run node-gyp: npm's lifecycle variable, PATH, a local install, or npm's bundled copy. */
  findNodeGyp() {
    const asCmd = (file) => (file.endsWith('.js') ? [process.execPath, file] : [file])
    const env = process.env
    if (env.npm_config_node_gyp && fs.existsSync(env.npm_config_node_gyp)) return asCmd(env.npm_config_node_gyp)
    const onPath = whichSync('node-gyp')
    if (onPath) return [onPath]
    const candidates = []
    try {
      candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'))
    } catch {
      // not a local dependency
    }
    if (env.npm_execpath) candidates.push(path.resolve(path.dirname(env.npm_execpath), '../node_modules/node-gyp/bin/node-gyp.js'))
    const npm = whichSync('npm')
    if (npm) {
      try {
        candidates.push(path.resolve(path.dirname(fs.realpathSync(npm)), '../node_modules/node-gyp/bin/node-gyp.js'))
      } catch {
        // broken link
      }
      candidates.push(path.resolve(path.dirname(npm), '../lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'))
    }
    const found = candidates.find((c) => fs.existsSync(c))
    return found ? asCmd(found) : null
  }

  /**
   * Where node-gyp can take Node's headers without downloading: npm's nodedir setting, the
   * prefix of this node binary, or node-gyp's own cache. Returns {nodedir, where} or {missing}.
   */
  nodeHeaders() {
    const hasHeaders = (dir) => dir && fs.existsSync(path.join(dir, 'include', 'node', 'node_api.h'))
    let nodedir = process.env.npm_config_nodedir
    if (!nodedir) {
      const r = spawnSync('npm', ['config', 'get', 'nodedir'], { encoding: 'utf8', timeout: 60_000 })
      const v = (r.stdout ?? '').trim()
      if (r.status === 0 && v && v !== 'undefined' && v !== 'null') nodedir = v
    }
    if (hasHeaders(nodedir)) return { nodedir, where: nodedir }
    const prefix = path.resolve(path.dirname(process.execPath), '..')
    if (hasHeaders(prefix)) return { nodedir: prefix, where: prefix }
    const version = process.version.slice(1)
    const cacheRoots = [
      process.env.npm_config_devdir,
      process.env.XDG_CACHE_HOME && path.join(process.env.XDG_CACHE_HOME, 'node-gyp'),
      path.join(os.homedir(), '.cache', 'node-gyp'),
      path.join(os.homedir(), 'Library', 'Caches', 'node-gyp'),
    ].filter(Boolean)
    for (const root of cacheRoots) {
      if (hasHeaders(path.join(root, version)) && fs.existsSync(path.join(root, version, 'installVersion'))) {
        return { nodedir: null, where: path.join(root, version) }
      }
    }
    return { missing: `no local Node ${process.version} headers (npm config nodedir, ${prefix}/include/node, node-gyp cache)` }
  }

  /** The CPU-only node-gyp build into the same build/Release/quietstar.node. */
  async gypBuild() {
    const gyp = this.findNodeGyp()
    if (!gyp) return { ok: false, stage: 'unavailable', output: 'node-gyp not found (neither on PATH nor bundled with npm)' }
    const headers = this.nodeHeaders()
    if (headers.missing) return { ok: false, stage: 'unavailable', output: `${headers.missing}; node-gyp would download them` }
    this.log(`(node-gyp: ${gyp.join(' ')}; Node headers from ${headers.where})`)
    this.wipeBuildDir()
    const [cmd, ...pre] = gyp
    // node-gyp lets npm_config_* variables override its command line, so the nodedir goes in
    // both places (an empty npm_config_nodedir would otherwise make it download headers).
    const env = { ...process.env }
    const args = []
    if (headers.nodedir) {
      env.npm_config_nodedir = headers.nodedir
      args.push(`--nodedir=${headers.nodedir}`)
    } else {
      delete env.npm_config_nodedir
    }
    // configure + build rather than rebuild: `rebuild` starts by deleting build/ (and our log).
    let r = await this.run(cmd, [...pre, 'configure', ...args], { env })
    if (!r.ok) return { ok: false, stage: 'configure', output: r.output }
    r = await this.run(cmd, [...pre, 'build', ...args, '--jobs', String(this.jobs)], { env })
    if (!r.ok) return { ok: false, stage: 'build', output: r.output }
    if (!fs.existsSync(this.addon)) {
      return { ok: false, stage: 'output', output: `node-gyp succeeded but ${this.addon} was not produced` }
    }
    return { ok: true }
  }

  removeStaleDebug() {
    const debug = path.join(this.buildDir, 'Debug', ADDON_NAME)
    if (fs.existsSync(debug)) {
      fs.rmSync(debug, { force: true })
      this.warn(`quietstar: removed stale ${path.relative(this.root, debug)} (bindings would load it before Release)`)
    }
  }
}

function usage() {
  return `usage: node scripts/build-native.mjs [--force] [--clean] [--verbose]
  --force    build even when build/Release/${MARKER_NAME} says the binary is up to date
  --clean    wipe build/ first (implies --force)
  --verbose  echo the build output (it always goes to build/${LOG_NAME})
environment:
  QUIETSTAR_SKIP_BUILD=1        do nothing
  QUIETSTAR_CUDA=auto|on|off    CUDA backend: if nvcc is found (default) | required | never
  QUIETSTAR_CUDA_ARCHS=90       CUDA architectures, e.g. "90", "80;90", "80,90-real", "90a"
                                (default ${DEFAULT_CUDA_ARCHS.join(';')}; 90 is always added)
  CUDACXX=/path/to/nvcc         nvcc to use (else PATH, /usr/local/cuda, /usr/local/cuda-*)
  QUIETSTAR_BUILD_JOBS=n        parallel compile jobs (default: available CPUs)
  QUIETSTAR_BUILD_VERBOSE=1     same as --verbose`
}

function parseJobs(value) {
  const n = Number.parseInt(String(value ?? ''), 10)
  return Number.isFinite(n) && n >= 1 ? n : Math.max(1, os.availableParallelism?.() ?? os.cpus().length)
}

export async function main(argv = process.argv.slice(2)) {
  const flags = new Set(argv)
  if (flags.has('--help') || flags.has('-h')) {
    process.stdout.write(`${usage()}\n`)
    return 0
  }
  for (const f of flags) {
    if (!['--force', '--clean', '--verbose'].includes(f)) {
      process.stderr.write(`quietstar: unknown option ${f}\n${usage()}\n`)
      return 2
    }
  }
  if (/^(1|true|yes|on)$/i.test(process.env.QUIETSTAR_SKIP_BUILD ?? '')) {
    process.stdout.write('quietstar: QUIETSTAR_SKIP_BUILD is set, not building the native addon\n')
    return 0
  }

  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
  const opts = {
    force: flags.has('--force') || flags.has('--clean'),
    clean: flags.has('--clean'),
    verbose: flags.has('--verbose') || /^(1|true|yes|on)$/i.test(process.env.QUIETSTAR_BUILD_VERBOSE ?? ''),
    jobs: parseJobs(process.env.QUIETSTAR_BUILD_JOBS),
  }
  const b = new Builder(root, opts)

  const addonSources = safeReaddir(path.join(root, 'native', 'addon')).filter((f) => f.endsWith('.cpp'))
  if (addonSources.length === 0) {
    process.stdout.write('quietstar: no addon sources in native/addon/*.cpp yet, nothing to build\n')
    return 0
  }

  // ---- inputs
  let mode
  try {
    mode = parseCudaMode(process.env.QUIETSTAR_CUDA)
  } catch (err) {
    process.stderr.write(`quietstar: ${err.message}\n`)
    return 1
  }
  let cuda = null
  if (mode !== 'off') {
    const { nvcc, searched } = findNvcc()
    const badCudacxx = process.env.CUDACXX && searched.find((s) => s.source === 'CUDACXX' && !s.status.startsWith('nvcc'))
    if (badCudacxx) {
      process.stderr.write(`quietstar: warning: CUDACXX=${process.env.CUDACXX} is not a working nvcc (${badCudacxx.status}); searching elsewhere\n`)
    }
    if (!nvcc && mode === 'on') {
      process.stderr.write(
        `quietstar: QUIETSTAR_CUDA=on but no working nvcc was found. Searched:\n${describeNvccSearch(searched, process.env)}\n` +
          'Install the CUDA toolkit, set CUDACXX=/path/to/nvcc, or use QUIETSTAR_CUDA=auto (or off).\n',
      )
      return 1
    }
    if (nvcc) {
      let archs
      try {
        archs = parseCudaArchs(process.env.QUIETSTAR_CUDA_ARCHS)
      } catch (err) {
        process.stderr.write(`quietstar: ${err.message}\n`)
        return 1
      }
      if (archs.added && archs.source !== 'default') {
        process.stderr.write(`quietstar: note: added ${archs.added} to QUIETSTAR_CUDA_ARCHS (sm_90 is always built)\n`)
      }
      cuda = { nvcc, archs: archs.archs }
    }
  }
  const cmake = cmakeVersion()
  const sources = hashSources(root)
  const inputs = {
    napiVersion: NAPI_VERSION,
    platform: process.platform,
    arch: process.arch,
    cudaMode: mode,
    nvcc: cuda ? { path: cuda.nvcc.path, version: cuda.nvcc.version } : null,
    cudaArchs: cuda ? cuda.archs : null,
    cmake,
    cc: process.env.CC ?? null,
    cxx: process.env.CXX ?? null,
    sourceHash: sources.hash,
  }

  // ---- up to date?
  const marker = readJson(b.markerFile)
  if (!opts.force && fs.existsSync(b.addon) && markerMatches(marker, inputs)) {
    const smoke = b.smokeTest()
    if (smoke.ok) {
      b.removeStaleDebug()
      process.stdout.write(`${formatSummary(smoke.info, { ...marker.outputs?.build, upToDate: true })}\n`)
      return 0
    }
    process.stderr.write(`quietstar: the existing build does not load (${smoke.reason}); rebuilding\n`)
  }

  // ---- build
  const cmakeJs = b.cmakeJsBin()
  if (mode === 'on' && (!cmake || !cmakeJs)) {
    const why = !cmake ? 'cmake was not found' : 'cmake-js is not installed'
    process.stderr.write(`quietstar: QUIETSTAR_CUDA=on needs CMake, but ${why} (node-gyp builds CPU only)\n`)
    return 1
  }
  b.startLog()
  fs.rmSync(b.markerFile, { force: true }) // no marker while the binary is being replaced
  b.log(`inputs: ${JSON.stringify(inputs, null, 2)}\njobs: ${opts.jobs}`)
  if (opts.clean) b.wipeBuildDir()
  const how = !cmake || !cmakeJs
    ? `node-gyp, CPU only (${!cmake ? 'cmake not found' : 'cmake-js not installed'})`
    : cuda ? `cmake-js, CUDA with nvcc ${cuda.nvcc.version} for ${cuda.archs.join(';')}` : 'cmake-js, CPU only'
  process.stdout.write(
    `quietstar: building the native addon (${how}, ${opts.jobs} jobs); log: ${path.relative(process.cwd(), b.logFile) || b.logFile}\n`,
  )
  const fallbacks = []
  const fail = (what, output) => {
    process.stderr.write(
      `quietstar: ${what}\n  reason: ${explainBuildFailure(output, root)}\n` +
        `--- last lines of ${b.logFile} ---\n${b.logTail(40)}\n---\n`,
    )
    return 1
  }

  const failLoad = (what, reason) => {
    // Never leave a binary behind that is known to crash or throw on load.
    fs.rmSync(b.addon, { force: true })
    return fail(`${what} (removed ${path.relative(root, b.addon)})`, reason)
  }

  let result = null // {tool, built, smoke}
  let useGyp = false
  if (!cmake || !cmakeJs) {
    const why = !cmake ? 'cmake not found' : 'cmake-js not installed'
    fallbacks.push(`${why} → node-gyp`)
    useGyp = true
  } else {
    if (cuda) {
      const r = await b.cmakeBuild(cuda)
      let reason = null
      if (r.ok) {
        const smoke = b.smokeTest()
        if (smoke.ok) result = { tool: 'cmake-js', built: ['cpu', 'cuda'], smoke }
        else reason = `the CUDA build does not load: ${smoke.reason}`
      } else {
        reason = `CUDA ${r.stage} failed: ${explainBuildFailure(r.output, root)}`
      }
      if (!result) {
        if (mode === 'on') return fail('QUIETSTAR_CUDA=on and the CUDA build failed', r.output ?? reason)
        process.stderr.write(`quietstar: ${reason}\n  retrying without CUDA (log: ${b.logFile})\n`)
        b.log(`\n=== CUDA build failed (${reason}); retrying CPU-only in a clean build dir ===\n`)
        const lines = errorLines(r.output)
        if (lines.length) process.stderr.write(`${lines.map((l) => `  | ${l}`).join('\n')}\n`)
        fallbacks.push(`${reason} → cpu`)
        b.opts.clean = true // a stale CMake cache remembers the CUDA compiler
      }
    }
    if (!result) {
      const r = await b.cmakeBuild(null)
      if (r.ok) {
        const smoke = b.smokeTest()
        if (!smoke.ok) return failLoad(`the CPU build does not load: ${smoke.reason}`, smoke.reason)
        result = { tool: 'cmake-js', built: ['cpu'], smoke }
      } else if (r.stage === 'configure') {
        const reason = explainBuildFailure(r.output, root)
        process.stderr.write(`quietstar: cmake-js could not configure (${reason}); trying node-gyp\n`)
        fallbacks.push(`cmake configure failed (${reason}) → node-gyp`)
        useGyp = true
      } else {
        return fail('the CPU build failed', r.output)
      }
    }
  }
  if (useGyp) {
    const r = await b.gypBuild()
    if (!r.ok) {
      if (r.stage === 'unavailable') {
        process.stderr.write(
          `quietstar: cannot build: ${fallbacks.join('; ')}, and ${r.output}.\n` +
            '  Install CMake >= 3.18 (or Node\'s development headers), then run `npm rebuild quietstar`.\n',
        )
        return 1
      }
      return fail(`the node-gyp (CPU) build failed at ${r.stage}`, r.output)
    }
    const smoke = b.smokeTest()
    if (!smoke.ok) return failLoad(`the node-gyp build does not load: ${smoke.reason}`, smoke.reason)
    result = { tool: 'node-gyp', built: ['cpu'], smoke }
  }

  if (!result.smoke.hasBackendInfo) {
    process.stderr.write('quietstar: warning: the addon loads but exports no backendInfo()\n')
  }
  const reported = result.smoke.info?.built
  if (result.built.includes('cuda') && Array.isArray(reported) && !reported.includes('cuda')) {
    // CMake was asked for CUDA but the binary says otherwise: never let that pass silently.
    process.stderr.write(`quietstar: warning: CUDA was requested but the addon reports built=${JSON.stringify(reported)}\n`)
    fallbacks.push('CUDA requested but not in the binary')
  }
  const build = {
    tool: result.tool,
    built: result.built,
    nvccVersion: result.built.includes('cuda') ? cuda.nvcc.version : null,
    archs: result.built.includes('cuda') ? cuda.archs : null,
    cudaSkipped: mode === 'off' ? 'QUIETSTAR_CUDA=off' : cuda ? null : 'no nvcc found',
    fallbacks,
  }
  const newMarker = {
    schema: MARKER_SCHEMA,
    inputs,
    outputs: { build, backendInfo: result.smoke.info ?? null, sourceFiles: sources.files },
    builtAt: new Date().toISOString(),
  }
  fs.writeFileSync(b.markerFile, `${JSON.stringify(newMarker, null, 2)}\n`)
  b.removeStaleDebug()
  const summary = formatSummary(result.smoke.info, build)
  b.log(summary)
  process.stdout.write(`${summary}\n`)
  return 0
}

function isMain() {
  if (!process.argv[1]) return false
  try {
    return fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isMain()) {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (err) => {
      process.stderr.write(`quietstar: build script error: ${err?.stack ?? err}\n`)
      process.exitCode = 1
    },
  )
}
