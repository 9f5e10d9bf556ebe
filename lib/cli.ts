#!/usr/bin/env node
/**
 * The `quietstar` command line: one file per command under lib/commands.
 *
 *   quietstar info [--json]                       backends built and active, CUDA, GPUs, GEMM path, cuBLAS
 *   quietstar generate --model DIR ...            continue a prompt
 *   quietstar perplexity --model DIR --data FILE  mean NLL and perplexity of a corpus
 *   quietstar train-lm ... --data FILE --out DIR  next-token training with a progress bar
 *   quietstar train --model DIR --data FILE --out DIR  Quiet-STaR training with a progress bar
 *   quietstar eval --model DIR --task T --data FILE    zero-shot GSM8K / CSQA and hard tokens, with and without thinking
 *   quietstar demo --out DIR                      the embedded end-to-end demo and its report
 *
 * Exit status: 0 done, 1 failed (the message names the file, tensor or value at fault),
 * 2 a mistake on the command line (the message names the flag).
 */
import { QuietstarError } from './errors.js';
import { UsageError } from './commands/common.js';
import { demoCommand } from './commands/demo.js';
import { evalCommand } from './commands/eval.js';
import { generateCommand } from './commands/generate.js';
import { infoCommand } from './commands/info.js';
import { perplexityCommand } from './commands/perplexity.js';
import { trainLmCommand } from './commands/train-lm.js';
import { trainCommand } from './commands/train.js';

const USAGE = `usage: quietstar <command> [options]

commands:
  info         what was built, what runs here (CUDA, GPUs, GEMM path, cuBLAS, threads)
  generate     continue a prompt with a Hugging Face model folder (greedy, temperature, top-k, top-p;
               --think: a Quiet-STaR model thinks before every token)
  perplexity   loss and perplexity of a model on a text, JSONL or pre-tokenised corpus
  train-lm     train a language model (progress bar, JSONL metrics, checkpoints, HF output)
  train        Quiet-STaR: teach a model to think before each token (thoughts, mixing head, REINFORCE)
  eval         zero-shot GSM8K / CommonsenseQA (paper metric and exact match) and hard-token
               analysis, with and without thinking
  demo         the end-to-end demo on a generated corpus: train, evaluate, write an HTML report

Run 'quietstar <command> --help' for a command's options.
`;

const COMMANDS: Record<string, (argv: string[]) => number | Promise<number>> = {
  info: infoCommand,
  generate: generateCommand,
  perplexity: perplexityCommand,
  'train-lm': trainLmCommand,
  train: trainCommand,
  eval: evalCommand,
  demo: demoCommand,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 1 : 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    process.stderr.write(`quietstar: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  try {
    return await run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`quietstar ${command}: ${err.message}\n(see 'quietstar ${command} --help')\n`);
      return 2;
    }
    const code = err instanceof QuietstarError ? ` [${err.code}]` : '';
    process.stderr.write(`quietstar ${command}: ${err instanceof Error ? err.message : String(err)}${code}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
