/**
 * `quietstar generate`: continue a prompt with a Hugging Face model folder.
 */
import { join } from 'node:path';

import { generateStream } from '../generate.js';
import { loadPretrained } from '../hf/checkpoint.js';
import { readJsonFile } from '../hf/config.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { ENGINE_FLAGS, ENGINE_HELP, UsageError, findTokenizer, idList, int, num, openEngine, parseFlags, required, str } from './common.js';

export const GENERATE_HELP = `usage: quietstar generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) --max-new-tokens N [options]

Continues one prompt with the model in DIR (config.json + model.safetensors) and prints the prompt
and its continuation as they are generated (the new token ids when there is no tokenizer).

  --model DIR              Hugging Face model folder
  --tokenizer FILE         tokenizer file or folder (tokenizer.json, vocab.json + merges.txt, llama2.c
                           tok*.bin, tokenizer.model); default: the one in --model, if any
  --prompt TEXT            the prompt as text (needs a tokenizer; BOS is added where the tokenizer does)
  --prompt-ids LIST        the prompt as token ids, e.g. 1,403,407 (no tokenizer needed)
  --max-new-tokens N       tokens to generate at most
  --temperature T          sampling temperature; 0 = greedy (default 1)
  --top-k K                keep the K most likely tokens; 0 = off (default 0)
  --top-p P                nucleus sampling mass in (0, 1]; 1 = off (default 1)
  --seed S                 sampling seed; the same seed gives the same text (default 0)
  --stop-ids LIST          stop at any of these ids (included in the output); default: the model's EOS
  --ignore-eos             do not stop at the model's EOS
  --json                   print {"ids": [...generated ids...], "text": "..."} once done; "text" is
                           null when there is no tokenizer
${ENGINE_HELP}
`;

const FLAGS = {
  ...ENGINE_FLAGS,
  model: { type: 'string' },
  tokenizer: { type: 'string' },
  prompt: { type: 'string' },
  'prompt-ids': { type: 'string' },
  'max-new-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  seed: { type: 'string' },
  'stop-ids': { type: 'string' },
  'ignore-eos': { type: 'boolean' },
  json: { type: 'boolean' },
} as const;

/** Text of the ids so far, written as it becomes stable (a multi-byte character may span tokens). */
class TextStream {
  private printed = '';
  constructor(private readonly tok: Tokenizer) {}
  update(ids: number[], final = false): string {
    const text = this.tok.decode(ids, { skipSpecialTokens: true });
    if (!text.startsWith(this.printed) || (!final && text.endsWith('\uFFFD'))) return '';
    const out = text.slice(this.printed.length);
    this.printed = text;
    return out;
  }
}

export async function generateCommand(argv: string[]): Promise<number> {
  const values = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(GENERATE_HELP);
    return 0;
  }
  const modelDir = required(values, 'model');
  const maxNewTokens = int(values, 'max-new-tokens', NaN, 0);
  if (Number.isNaN(maxNewTokens)) throw new UsageError('--max-new-tokens is required');
  const temperature = num(values, 'temperature', 1, (x) => x >= 0, 'a number >= 0 (0 = greedy)');
  const topK = int(values, 'top-k', 0, 0, 0x7fffffff);
  const topP = num(values, 'top-p', 1, (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  const seed = int(values, 'seed', 0, 0);
  const promptText = str(values, 'prompt');
  const promptIds = idList(values, 'prompt-ids');
  if ((promptText === undefined) === (promptIds === undefined)) throw new UsageError('give exactly one of --prompt TEXT and --prompt-ids LIST');
  if (promptIds !== undefined && promptIds.length === 0) throw new UsageError('--prompt-ids is empty');
  const stopFlag = idList(values, 'stop-ids');

  const tok = await findTokenizer(str(values, 'tokenizer'), modelDir);
  if (promptText !== undefined && tok === undefined) {
    throw new UsageError(`--prompt needs a tokenizer and ${modelDir} has none: pass --tokenizer FILE, or give --prompt-ids`);
  }
  using engine = openEngine(values);
  using model = await loadPretrained(engine, modelDir, { optimizer: false });
  const prompt = promptIds ?? tok!.encode(promptText!, { addSpecialTokens: true });
  if (prompt.length === 0) throw new UsageError('--prompt encodes to no tokens');
  const eos = model.config.eosTokenId;
  const stopTokens = stopFlag ?? (values['ignore-eos'] || eos === undefined ? [] : Array.isArray(eos) ? [...eos] : [eos]);

  // A Quiet-STaR folder generates as its language model (thinking at inference is separate);
  // its thought markers are never emitted (the reference's README pitfall: mask them).
  const suppressTokens = await quietstarMarkers(modelDir);
  const stream = generateStream(model, [prompt], { maxNewTokens, temperature, topK, topP, seed, stopTokens, suppressTokens });
  const ids: number[] = [];
  // Text mode decodes prompt + continuation, so the first new token keeps its leading space.
  const text = tok && !values.json ? new TextStream(tok) : undefined;
  if (text) process.stdout.write(text.update(prompt));
  for (;;) {
    const r = await stream.next();
    if (r.done) break;
    const t = r.value.tokens[0];
    if (t === null || t === undefined) continue;
    ids.push(t);
    if (values.json) continue;
    process.stdout.write(text ? text.update([...prompt, ...ids]) : `${ids.length > 1 ? ' ' : ''}${t}`);
  }
  if (values.json) {
    const out = { ids, text: tok ? tok.decode(ids, { skipSpecialTokens: true }) : null };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else {
    process.stdout.write(`${text ? text.update([...prompt, ...ids], true) : ''}\n`);
  }
  return 0;
}

/** The thought-marker ids of a Quiet-STaR folder (config.json's "quietstar" block), else []. */
async function quietstarMarkers(dir: string): Promise<number[]> {
  const json = await readJsonFile(join(dir, 'config.json'));
  const block = typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as Record<string, unknown>).quietstar : undefined;
  if (typeof block !== 'object' || block === null) return [];
  const { startId, endId } = block as { startId?: unknown; endId?: unknown };
  return [startId, endId].filter((id): id is number => Number.isInteger(id));
}
