#!/usr/bin/env node
// build-ts.mjs: compiles lib/ to dist/ during `npm install`, when it can.
//
// In a clone, TypeScript is a devDependency and dist/ must be (re)built. An installed package
// ships dist/ already and has no TypeScript: then there is nothing to do. Only a package with
// neither is an error, and it says how to fix it.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)

let tsc
try {
  tsc = require.resolve('typescript/bin/tsc')
} catch {
  tsc = null
}

if (!tsc) {
  if (existsSync(path.join(root, 'dist', 'index.js'))) process.exit(0)
  console.error('quietstar: dist/ is missing and TypeScript is not installed; run `npm install --include=dev` then `npm run build`')
  process.exit(1)
}
const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json')], { stdio: 'inherit' })
process.exit(r.status ?? 1)
