/**
 * What the CLI commands share: flag parsing with errors that name the flag, the engine, finding
 * a tokenizer, the corpus flags of the commands that read one, and the held-out data and output
 * flags of the training commands.
 */
import { promises as fsp } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';

import type { CorpusFormat } from '../data/corpus.js';
import { Engine } from '../engine.js';
import { QuietstarError } from '../errors.js';
import { loadTokenizer, type Tokenizer } from '../tokenizer/index.js';

/** A mistake on the command line: printed with a pointer to the command's help, exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;
export type FlagValues = Record<string, string | boolean | undefined>;

/** Flags every model command takes. */
export const ENGINE_FLAGS = {
  device: { type: 'string' },
  threads: { type: 'string' },
  precision: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies Options;

export const ENGINE_HELP = `  --device cpu|cuda|auto   where to compute (default cpu; auto = CUDA when usable)
  --threads N              CPU threads (default 0 = all cores)
  --precision P            CUDA matrix products: bf16 (default), tf32 or f32 (exact; the CPU is always f32)
  -h, --help               this help`;

/** parseArgs in strict mode; unknown flags, missing values and stray arguments are UsageErrors naming them. */
export function parseFlags(argv: string[], options: Options): FlagValues {
  try {
    const { values, positionals } = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    return values as FlagValues;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    // node's messages name the flag: "Unknown option '--foo'", "Option '--model <value>' argument missing"
    throw new UsageError((err as Error).message.split('. To specify')[0] ?? String(err));
  }
}

export function str(values: FlagValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function required(values: FlagValues, name: string): string {
  const v = str(values, name);
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

/** An integer flag in [min, max]. */
export function int(values: FlagValues, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = str(values, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new UsageError(`--${name} must be an integer ${range} (got '${v}')`);
  }
  return n;
}

/** A number flag accepted by `ok`. */
export function num(values: FlagValues, name: string, fallback: number, ok: (x: number) => boolean, want: string): number {
  const v = str(values, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new UsageError(`--${name} must be ${want} (got '${v}')`);
  return n;
}

/** A comma-separated list of integers, e.g. `--prompt-ids 1,2,3`. */
export function idList(values: FlagValues, name: string): number[] | undefined {
  const v = str(values, name);
  if (v === undefined) return undefined;
  const parts = v.split(',').map((s) => s.trim());
  return parts.map((p, i) => {
    const n = Number(p);
    if (p === '' || !Number.isSafeInteger(n) || n < 0) throw new UsageError(`--${name}: item ${i + 1} '${p}' is not a token id (want integers >= 0 separated by commas)`);
    return n;
  });
}

export function openEngine(values: FlagValues): Engine {
  const device = str(values, 'device') ?? 'cpu';
  if (!['cpu', 'cuda', 'auto'].includes(device)) throw new UsageError(`--device must be cpu, cuda or auto (got '${device}')`);
  const threads = int(values, 'threads', 0);
  const precision = str(values, 'precision') ?? 'auto';
  if (!['auto', 'bf16', 'tf32', 'f32'].includes(precision))
    throw new UsageError(`--precision must be bf16, tf32 or f32 (got '${precision}')`);
  return Engine.create({
    device: device as 'cpu' | 'cuda' | 'auto',
    threads,
    precision: precision as 'auto' | 'bf16' | 'tf32' | 'f32',
  });
}

/**
 * The tokenizer of `--tokenizer`, else the one in the model folder; undefined when the folder
 * has none (a bad or missing `--tokenizer` file is an error).
 */
export async function findTokenizer(flag: string | undefined, modelDir: string | undefined): Promise<Tokenizer | undefined> {
  if (flag !== undefined) return loadTokenizer(flag);
  if (modelDir === undefined) return undefined;
  try {
    return await loadTokenizer(modelDir);
  } catch (err) {
    if (err instanceof QuietstarError && err.code === 'NOT_FOUND') return undefined;
    throw err;
  }
}

/** Whether the tokenizer puts BOS in front of a sequence (Llama-style), as its encode() does. */
export function addsBos(tok: Tokenizer): boolean {
  if (tok.bosId === undefined) return false;
  const plain = tok.encode('a');
  const special = tok.encode('a', { addSpecialTokens: true });
  return special.length === plain.length + 1 && special[0] === tok.bosId;
}

/** Flags of the commands that read a corpus (perplexity, train-lm). */
export const CORPUS_FLAGS = {
  data: { type: 'string' },
  format: { type: 'string' },
  field: { type: 'string' },
  separator: { type: 'string' },
  tokenizer: { type: 'string' },
  'seq-len': { type: 'string' },
} as const satisfies Options;

/** How --format, --field and --separator ask readCorpus to read the file. */
export interface CorpusFlags {
  format: 'auto' | CorpusFormat;
  field?: string[];
  documentSeparator?: string;
}

function parseFormat(v: string | undefined): 'auto' | CorpusFormat {
  if (v === undefined) return 'auto';
  if (!['text', 'jsonl', 'ids'].includes(v)) throw new UsageError(`--format must be text, jsonl or ids (got '${v}')`);
  return v as CorpusFormat;
}

function parseField(v: string | undefined): string[] | undefined {
  if (v === undefined) return undefined;
  const fields = v.split(',').map((s) => s.trim());
  if (fields.some((f) => f === '')) throw new UsageError(`--field must be a name or names separated by commas (got '${v}')`);
  return fields;
}

/** The corpus flags, validated (UsageErrors name --format or --field). */
export function corpusFlags(values: FlagValues): CorpusFlags {
  const out: CorpusFlags = { format: parseFormat(str(values, 'format')) };
  const field = parseField(str(values, 'field'));
  if (field) out.field = field;
  const separator = str(values, 'separator');
  if (separator !== undefined) out.documentSeparator = separator;
  return out;
}

/** --seq-len, else the model's maxSeqLen capped at `cap`; a --seq-len beyond maxSeqLen is a UsageError. */
export function seqLenFor(flag: number, maxSeqLen: number, cap: number): number {
  const seqLen = flag || Math.min(maxSeqLen, cap);
  if (seqLen > maxSeqLen) throw new UsageError(`--seq-len ${seqLen} exceeds the model's maxSeqLen ${maxSeqLen}`);
  return seqLen;
}

/**
 * A catch handler for reading a corpus: its "needs a tokenizer" error (text data and no
 * tokenizer) becomes a UsageError that says which flag gives one; `where` names the folder
 * searched, if any.
 */
export function tokenizerHint(tok: Tokenizer | undefined, where?: string): (err: unknown) => never {
  return (err) => {
    if (!tok && err instanceof Error && /tokenizer/i.test(err.message)) {
      throw new UsageError(`${err.message} (no tokenizer found${where !== undefined ? ` in ${where}` : ''}: pass --tokenizer FILE)`);
    }
    throw err;
  };
}

/** Flags of the training commands (train, train-lm) for held-out data and their output folder. */
export const TRAIN_IO_FLAGS = {
  'eval-data': { type: 'string' },
  'eval-fraction': { type: 'string' },
  'eval-every': { type: 'string' },
  'eval-batches': { type: 'string' },
  out: { type: 'string' },
  'checkpoint-every': { type: 'string' },
  'keep-checkpoints': { type: 'string' },
  'save-dtype': { type: 'string' },
} as const satisfies Options;

/** The end of the training commands' help: checkpoint retention, weight dtype, engine flags, Ctrl-C. */
export const TRAIN_HELP_TAIL = `  --keep-checkpoints N     keep the newest N checkpoints, 0 = all (default 0)
  --save-dtype D           F32 | BF16 | F16 for the saved weights (default F32)
${ENGINE_HELP}

Ctrl-C stops after the current step, writes a checkpoint and saves the model.
`;

/** --eval-data FILE or --eval-fraction F (not both), as the data loaders take them. */
export function evalDataFlags(values: FlagValues): { evalFile?: string; evalFraction: number } {
  const evalFile = str(values, 'eval-data');
  const evalFraction = num(values, 'eval-fraction', 0, (x) => x >= 0 && x < 1, 'a number in [0, 1)');
  if (evalFile !== undefined && evalFraction > 0) throw new UsageError('give only one of --eval-data and --eval-fraction');
  return { ...(evalFile !== undefined ? { evalFile } : {}), evalFraction };
}

export type SaveDtype = 'F32' | 'BF16' | 'F16';

/** --save-dtype, validated; undefined when not given. */
export function saveDtypeFlag(values: FlagValues): SaveDtype | undefined {
  const v = str(values, 'save-dtype');
  if (v !== undefined && !['F32', 'BF16', 'F16'].includes(v)) throw new UsageError(`--save-dtype must be F32, BF16 or F16 (got '${v}')`);
  return v as SaveDtype | undefined;
}

/** A JSON file given on the command line; errors start with `what` (e.g. "--config FILE"). */
export async function readJsonFile(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    throw new QuietstarError(`${what}: file not found`, 'NOT_FOUND');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QuietstarError(`${what}: invalid JSON (${(err as Error).message})`, 'BAD_FILE');
  }
}
