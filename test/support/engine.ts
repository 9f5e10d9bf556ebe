/**
 * Shared helpers for the ava suites: an engine per test file and tolerance checks that print
 * the worst error (engineering notes §5: |a - b| <= atol + rtol·|b|, never exact equality).
 */
import type { ExecutionContext } from 'ava';

import { Engine } from '../../lib/index.js';

/** A CPU engine: the binding tests pin the device so they mean the same thing everywhere. */
export function cpuEngine(threads = 0): Engine {
  return Engine.create({ device: 'cpu', threads });
}

export function assertClose(
  t: ExecutionContext,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  { rtol = 1e-5, atol = 1e-6, label = 'values' }: { rtol?: number; atol?: number; label?: string } = {},
): void {
  t.is(got.length, want.length, `${label}: length`);
  let worst = 0;
  let worstAt = -1;
  let bad = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i] as number;
    const w = want[i] as number;
    const err = Math.abs(g - w);
    const allowed = atol + rtol * Math.abs(w);
    if (!(err <= allowed)) bad++;
    if (!(err <= worst)) {
      worst = err;
      worstAt = i;
    }
  }
  t.log(`${label}: n=${want.length} max_abs=${worst.toExponential(2)}`);
  t.is(bad, 0, `${label}: ${bad} elements out of tolerance; worst at ${worstAt}: got ${got[worstAt]} want ${want[worstAt]}`);
}

/** Deterministic pseudo-random numbers (mulberry32) for test inputs. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomArray(n: number, seed: number, scale = 1): Float64Array {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}
