/**
 * Runs the CLI (lib/cli.ts through tsx) in a child process, for the suites that test commands
 * end to end; a failing command resolves with its exit status rather than throwing.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

/** The repository root (the CLI's working directory). */
export const root = fileURLToPath(new URL('../..', import.meta.url));

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
}

export async function cli(...args: string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import=tsx', 'lib/cli.ts', ...args], {
      cwd: root,
      encoding: 'utf8',
      maxBuffer: 16 << 20,
    });
    return { status: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { status: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
