#!/usr/bin/env node
/**
 * The `quietstar` command line.
 *
 *   quietstar info [--json]     backends built and active, CUDA, GPUs, GEMM path, cuBLAS
 */
import { parseArgs } from 'node:util';

import { QuietstarError } from './errors.js';
import { backendInfo, formatBackendInfo } from './info.js';

const USAGE = `usage: quietstar <command> [options]

commands:
  info [--json]    what was built, what runs here (CUDA, GPUs, GEMM path, cuBLAS, threads)
`;

function info(argv: string[]): void {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean', default: false } }, strict: true });
  const data = backendInfo();
  process.stdout.write(values.json ? `${JSON.stringify(data, null, 2)}\n` : `${formatBackendInfo(data)}\n`);
}

export function main(argv: string[]): number {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'info':
        info(rest);
        return 0;
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return command === undefined ? 1 : 0;
      default:
        process.stderr.write(`quietstar: unknown command '${command}'\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    const code = err instanceof QuietstarError ? ` [${err.code}]` : '';
    process.stderr.write(`quietstar ${command}: ${err instanceof Error ? err.message : String(err)}${code}\n`);
    return 1;
  }
}

process.exitCode = main(process.argv.slice(2));
