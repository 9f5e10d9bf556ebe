/**
 * The training commands' progress: Ctrl-C asks the trainer to stop after the current step (it
 * then checkpoints), and each step shows on a progress bar when stderr is a terminal; otherwise
 * the command writes a log line on the steps `logDue` picks (about 20 per run, and every
 * evaluation), since a bar would only garble a log file.
 */
import cliProgress from 'cli-progress';

export interface TrainingProgress<P extends object> {
  /** Aborted on Ctrl-C. */
  readonly signal: AbortSignal;
  /** Shows `step` on the bar; false without a terminal, where the caller logs instead. */
  show(step: number, payload: P): boolean;
  /** Whether a step without a bar deserves a log line. */
  logDue(step: number, evaluated: boolean): boolean;
  /** Stops the bar and the Ctrl-C handler. */
  close(): void;
}

export function trainingProgress<P extends object>(format: string, etaBuffer: number, totalSteps: number): TrainingProgress<P> {
  const abort = new AbortController();
  const onSigint = (): void => abort.abort();
  process.once('SIGINT', onSigint);
  const tty = process.stderr.isTTY === true;
  const bar = new cliProgress.SingleBar({ stream: process.stderr, format, etaBuffer, hideCursor: true }, cliProgress.Presets.shades_classic);
  const logEvery = Math.max(1, Math.floor(totalSteps / 20));
  let started = false;
  return {
    signal: abort.signal,
    show(step, payload) {
      if (!tty) return false;
      // A resumed run starts the bar at its checkpoint's step.
      if (!started) bar.start(totalSteps, step - 1, payload);
      started = true;
      bar.update(step, payload);
      return true;
    },
    logDue: (step, evaluated) => step % logEvery === 0 || step === totalSteps || evaluated,
    close() {
      if (tty) bar.stop();
      process.removeListener('SIGINT', onSigint);
    },
  };
}
