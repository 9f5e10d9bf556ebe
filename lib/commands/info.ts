/**
 * `quietstar info`: what was built and what runs here.
 */
import { backendInfo, formatBackendInfo } from '../info.js';
import { parseFlags } from './common.js';

export const INFO_HELP = `usage: quietstar info [--json]

Backends built and active, CUDA runtime and driver, GPUs, GEMM path, cuBLAS, CPU threads.

  --json       print the same as JSON
  -h, --help   this help
`;

export function infoCommand(argv: string[]): number {
  const values = parseFlags(argv, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } });
  if (values.help) {
    process.stdout.write(INFO_HELP);
    return 0;
  }
  const data = backendInfo();
  process.stdout.write(values.json ? `${JSON.stringify(data, null, 2)}\n` : `${formatBackendInfo(data)}\n`);
  return 0;
}
