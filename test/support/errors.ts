/**
 * Checks that a call fails the documented way: a QuietstarError with the given code and a
 * message matching the pattern (the message is what a user reads, so its wording is tested).
 */
import type { ExecutionContext } from 'ava';

import { QuietstarError, type ErrorCode } from '../../lib/index.js';

export async function rejectsWith(t: ExecutionContext, p: Promise<unknown>, code: ErrorCode, pattern: RegExp): Promise<void> {
  const err = await t.throwsAsync(p, { instanceOf: QuietstarError });
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', pattern);
}

export function throwsWith(t: ExecutionContext, fn: () => unknown, code: ErrorCode, pattern: RegExp): void {
  const err = t.throws(fn, { instanceOf: QuietstarError });
  t.is(err?.code, code, err?.message);
  t.regex(err?.message ?? '', pattern);
}
