/**
 * Scopes: dispose every tensor created inside a block, except what the block keeps.
 *
 * `scope(fn)` is synchronous, like tf.tidy: tensors wrapped while `fn` runs are disposed when
 * it returns, except the tensors in its result. Since such a scope cannot span `await` (other
 * work interleaves there), async code uses a `Scope` object explicitly:
 *
 * ```ts
 * using s = new Scope();
 * const h = s.track((await engine.ops.geluForward({ inp: x })).out);
 * ...                                   // everything tracked is disposed when `s` goes
 * ```
 */
import type { Tensor } from './tensor.js';

type Collector = (t: Tensor) => void;
const collectors: Collector[] = [];

/** @internal Called for every newly wrapped tensor. */
export function noteNewTensor(t: Tensor): void {
  const top = collectors[collectors.length - 1];
  if (top) top(t);
}

function collectKept(value: unknown, kept: Set<Tensor>, seen = new Set<unknown>()): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (typeof (value as Tensor).dispose === 'function' && 'native' in (value as object)) {
    kept.add(value as Tensor);
    return;
  }
  for (const v of Array.isArray(value) ? value : Object.values(value as object)) collectKept(v, kept, seen);
}

/** Runs `fn` and disposes the tensors it created, except those reachable from its result. */
export function scope<R>(fn: () => R): R {
  const created: Tensor[] = [];
  collectors.push((t) => created.push(t));
  let result: R;
  try {
    result = fn();
  } finally {
    collectors.pop();
  }
  if (result instanceof Promise) {
    throw new TypeError('scope(fn) is synchronous; for async code use `using s = new Scope()` and s.track()');
  }
  const kept = new Set<Tensor>();
  collectKept(result, kept);
  for (const t of created) if (!kept.has(t)) t.dispose();
  return result;
}

/** An explicit collection of tensors disposed together (works across `await`). */
export class Scope {
  private readonly tensors = new Set<Tensor>();

  /** Adds tensors (or any object/array holding them) to the scope; returns the argument. */
  track<T>(value: T): T {
    const found = new Set<Tensor>();
    collectKept(value, found);
    for (const t of found) this.tensors.add(t);
    return value;
  }

  /** Removes a tensor from the scope so it survives `dispose()`. */
  keep<T extends Tensor>(t: T): T {
    this.tensors.delete(t);
    return t;
  }

  dispose(): void {
    for (const t of this.tensors) t.dispose();
    this.tensors.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
