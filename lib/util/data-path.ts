/**
 * Where the shared offline data lives (datasets, tokenizers, model fixtures).
 *
 * Never copied into the package: read at run time from `QUIETSTAR_DATA`, or by default
 * `../shared/data` relative to the package root (the layout of this project's workspace).
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const packageRoot = fileURLToPath(new URL('../..', import.meta.url));

/** The data folder: `$QUIETSTAR_DATA`, else `<package>/../shared/data`. */
export function dataRoot(): string {
  return process.env.QUIETSTAR_DATA ? resolve(process.env.QUIETSTAR_DATA) : resolve(packageRoot, '..', 'shared', 'data');
}

/** A path inside the data folder. */
export function dataPath(...parts: string[]): string {
  return join(dataRoot(), ...parts);
}

/** Undefined when `parts` exists, else a sentence saying why a test or demo must skip. */
export function missingData(...parts: string[]): string | undefined {
  const p = dataPath(...parts);
  return existsSync(p)
    ? undefined
    : `shared data not found at ${p} (set QUIETSTAR_DATA to the folder holding the offline datasets and models)`;
}
