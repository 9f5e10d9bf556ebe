/**
 * Learning-rate schedules: linear warm-up from 0, then cosine or linear decay to `minLr`, or
 * constant. Same shape as Hugging Face's `get_cosine_schedule_with_warmup` /
 * `get_linear_schedule_with_warmup` (with a floor at minLr):
 *
 *   step < warmup:  lr · step / warmup
 *   then p = (step − warmup) / (maxSteps − warmup), clamped to [0, 1]:
 *     cosine:   minLr + (lr − minLr) · ½ (1 + cos(π p))
 *     linear:   lr − (lr − minLr) · p
 *     constant: lr
 *
 * `step` is the 0-based index of the optimizer update the rate is used for, so the first
 * update of a warm-up runs at 0 and the last of `maxSteps` updates just above minLr.
 */
import { QuietstarError } from '../errors.js';

export type ScheduleKind = 'cosine' | 'linear' | 'constant';

export interface ScheduleOptions {
  /** Peak learning rate. */
  lr: number;
  /** Floor of the decay. @defaultValue 0 */
  minLr?: number;
  /** Linear warm-up steps from 0 to lr. @defaultValue 0 */
  warmupSteps?: number;
  /** @defaultValue 'cosine' */
  schedule?: ScheduleKind;
  /** Steps over which the decay runs (training length). */
  maxSteps: number;
}

/** A pure function from step to learning rate (validated once). */
export function lrSchedule(options: ScheduleOptions): (step: number) => number {
  const { lr, minLr = 0, warmupSteps = 0, schedule = 'cosine', maxSteps } = options;
  const fail = (field: string, want: string, got: unknown): never => {
    throw new QuietstarError(`config.${field} must be ${want} (got ${JSON.stringify(got)})`, 'INVALID_ARGUMENT');
  };
  if (!(typeof lr === 'number' && Number.isFinite(lr) && lr >= 0)) fail('lr', 'a finite number >= 0', lr);
  if (!(typeof minLr === 'number' && Number.isFinite(minLr) && minLr >= 0 && minLr <= lr)) fail('minLr', `a number in [0, lr = ${lr}]`, minLr);
  if (!Number.isInteger(maxSteps) || maxSteps < 1) fail('maxSteps', 'an integer >= 1', maxSteps);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0) fail('warmupSteps', 'an integer >= 0', warmupSteps);
  if (!['cosine', 'linear', 'constant'].includes(schedule)) fail('schedule', "'cosine', 'linear' or 'constant'", schedule);

  return (step: number): number => {
    if (step < warmupSteps) return (lr * step) / warmupSteps;
    if (schedule === 'constant') return lr;
    const span = maxSteps - warmupSteps;
    const p = span <= 0 ? 1 : Math.min(1, Math.max(0, (step - warmupSteps) / span));
    if (schedule === 'linear') return lr - (lr - minLr) * p;
    return minLr + (lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * p));
  };
}

/** The learning rate at `step` (see {@link lrSchedule}). */
export function lrAt(step: number, options: ScheduleOptions): number {
  return lrSchedule(options)(step);
}
