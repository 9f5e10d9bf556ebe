#!/usr/bin/env node
// list-sources.mjs: prints the C++ sources of the CPU-only node-gyp build, one per line,
// relative to the package root with forward slashes. binding.gyp expands it with
// `<!@(node scripts/list-sources.mjs)`, so the gyp list is globbed at configure time exactly
// like CMakeLists.txt's globs (native/core/*.cpp, native/cpu/*.cpp, native/addon/*.cpp) and
// the two builds cannot drift apart. native/cuda is never listed: node-gyp builds CPU only.
//
//   node scripts/list-sources.mjs          the list (exit 1 if it is empty)
//   node scripts/list-sources.mjs --json   the list as a JSON array
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The directories globbed for *.cpp, in CMake's order: core library first, then the addon. */
export const SOURCE_DIRS = Object.freeze(['native/core', 'native/cpu', 'native/addon'])

export function listSources(root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')) {
  const out = []
  for (const dir of SOURCE_DIRS) {
    let names = []
    try {
      names = fs.readdirSync(path.join(root, dir), { withFileTypes: true })
        .filter((e) => (e.isFile() || e.isSymbolicLink()) && e.name.endsWith('.cpp'))
        .map((e) => e.name)
    } catch {
      // a missing directory contributes nothing, as an empty CMake glob would
    }
    names.sort()
    for (const name of names) out.push(`${dir}/${name}`)
  }
  return out
}

const isMain = process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url))
if (isMain) {
  const sources = listSources()
  if (process.argv.includes('--json')) {
    process.stdout.write(`${JSON.stringify(sources)}\n`)
  } else {
    const bad = sources.filter((s) => /\s/.test(s))
    if (bad.length) {
      // gyp splits <!@(...) output on whitespace
      process.stderr.write(`list-sources: file names with spaces are not supported: ${bad.join(', ')}\n`)
      process.exitCode = 1
    }
    process.stdout.write(sources.map((s) => `${s}\n`).join(''))
  }
  if (sources.length === 0) {
    process.stderr.write('list-sources: no C++ sources under native/{core,cpu,addon}\n')
    process.exitCode = 1
  }
}
