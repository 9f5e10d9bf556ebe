/**
 * Field checks of the training configs (lib/train/config.ts, lib/quietstar/config.ts): each
 * returns the value or throws INVALID_ARGUMENT naming `config.<field>`, what it must be and
 * what it got.
 */
import { QuietstarError } from '../errors.js';

export function fail(field: string, want: string, got: unknown): never {
  throw new QuietstarError(`config.${field} must be ${want} (got ${JSON.stringify(got) ?? String(got)})`, 'INVALID_ARGUMENT');
}

export function int(field: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) fail(field, `an integer >= ${min}`, v);
  return v;
}

export function num(field: string, v: unknown, ok: (x: number) => boolean, want: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) fail(field, want, v);
  return v;
}

export function bool(field: string, v: unknown): boolean {
  if (typeof v !== 'boolean') fail(field, 'a boolean', v);
  return v;
}

export function oneOf<T extends string>(field: string, v: unknown, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) fail(field, allowed.map((a) => `'${a}'`).join(', ').replace(/, ([^,]*)$/, ' or $1'), v);
  return v as T;
}

/** The path fields of `c` that are set must be non-empty strings. */
export function checkPaths<K extends string>(c: Partial<Record<K, unknown>>, fields: readonly K[]): void {
  for (const f of fields) {
    if (c[f] !== undefined && (typeof c[f] !== 'string' || c[f] === '')) fail(f, 'a path', c[f]);
  }
}
