/**
 * `quietstar generate`: continue a prompt with a Hugging Face model folder; with --think, a Quiet-STaR folder
 * thinks before every token (spec §5) and --show-thoughts prints the thoughts.
 */
import { join } from 'node:path';

import { generateStream, type GenerateOptions } from '../generate.js';
import { loadPretrained } from '../hf/checkpoint.js';
import { readJsonFile } from '../hf/config.js';
import type { Model } from '../model/model.js';
import { END_THOUGHT, QuietStarModel, START_THOUGHT } from '../quietstar/model.js';
import { generateWithThoughtsStream } from '../think-generate.js';
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
  --think                  think before every token (spec §5): --model must be a Quiet-STaR folder
                           (written by 'quietstar train'); each token gets a thought of nAhead - 3
                           sampled tokens, mixed in by the mixing head, then discarded
  --show-thoughts          with --think: print each thought before its token, between the
                           <|startthought|> and <|endthought|> markers
  --json                   print {"ids": [...generated ids...], "text": "..."} once done; "text" is
                           null when there is no tokenizer; with --think also "thoughts" (ids per
                           token) and "thought_texts"
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
  think: { type: 'boolean' },
  'show-thoughts': { type: 'boolean' },
  json: { type: 'boolean' },
} as const;

/** One generated token and, when thinking, the thought behind it. */
interface Produced {
  token: number;
  thought?: number[];
}

/** The new tokens of one prompt, plain or thinking (the thinking stream also yields the thoughts). */
async function* produce(
  model: Model,
  qs: QuietStarModel | undefined,
  prompt: number[],
  options: GenerateOptions,
): AsyncGenerator<Produced, void, undefined> {
  if (qs) {
    for await (const step of generateWithThoughtsStream(qs, [prompt], options)) {
      const t = step.tokens[0];
      if (t !== null && t !== undefined) yield { token: t, thought: step.thoughts[0]! };
    }
    return;
  }
  for await (const step of generateStream(model, [prompt], options)) {
    const t = step.tokens[0];
    if (t !== null && t !== undefined) yield { token: t };
  }
}

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
  const think = values.think === true;
  const showThoughts = values['show-thoughts'] === true;
  if (showThoughts && !think) throw new UsageError('--show-thoughts needs --think');

  using engine = openEngine(values);
  const tokenizerFlag = str(values, 'tokenizer');
  // --think: a Quiet-STaR folder (its tokenizer has the markers); otherwise any model folder.
  using qs = think
    ? await QuietStarModel.load(engine, modelDir, { optimizer: false, ...(tokenizerFlag !== undefined ? { tokenizer: tokenizerFlag } : {}) })
    : undefined;
  const tok = qs ? qs.tokenizer : await findTokenizer(tokenizerFlag, modelDir);
  if (promptText !== undefined && tok === undefined) {
    throw new UsageError(`--prompt needs a tokenizer and ${modelDir} has none: pass --tokenizer FILE, or give --prompt-ids`);
  }
  using plain = qs ? undefined : await loadPretrained(engine, modelDir, { optimizer: false });
  const model = qs ? qs.model : plain!;
  const prompt = promptIds ?? tok!.encode(promptText!, { addSpecialTokens: true });
  if (prompt.length === 0) throw new UsageError('--prompt encodes to no tokens');
  const eos = model.config.eosTokenId;
  const stopTokens = stopFlag ?? (values['ignore-eos'] || eos === undefined ? [] : Array.isArray(eos) ? [...eos] : [eos]);

  // Without --think a Quiet-STaR folder generates as its language model; with or without, its
  // thought markers are never emitted (the reference's README pitfall: mask them).
  const suppressTokens = await quietstarMarkers(modelDir);
  const options = { maxNewTokens, temperature, topK, topP, seed, stopTokens, suppressTokens };
  const ids: number[] = [];
  const thoughts: number[][] = [];
  // Text mode decodes prompt + continuation, so the first new token keeps its leading space.
  const text = tok && !values.json ? new TextStream(tok) : undefined;
  if (text) process.stdout.write(text.update(prompt));
  for await (const { token: t, thought } of produce(model, qs, prompt, options)) {
    ids.push(t);
    if (thought) thoughts.push(thought);
    if (values.json) continue;
    if (showThoughts && thought) process.stdout.write(`${START_THOUGHT}${thoughtText(tok, thought)}${END_THOUGHT}`);
    process.stdout.write(text ? text.update([...prompt, ...ids]) : `${ids.length > 1 ? ' ' : ''}${t}`);
  }
  if (values.json) {
    const out = {
      ids,
      text: tok ? tok.decode(ids, { skipSpecialTokens: true }) : null,
      ...(think ? { thoughts, thought_texts: thoughts.map((x) => thoughtText(tok, x)) } : {}),
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else {
    process.stdout.write(`${text ? text.update([...prompt, ...ids], true) : ''}\n`);
  }
  return 0;
}

/** A thought as text (its ids when there is no tokenizer). */
function thoughtText(tok: Tokenizer | undefined, thought: number[]): string {
  return tok ? tok.decode(thought, { skipSpecialTokens: true }) : thought.join(' ');
}

/** The thought-marker ids of a Quiet-STaR folder (config.json's "quietstar" block), else []. */
async function quietstarMarkers(dir: string): Promise<number[]> {
  const json = await readJsonFile(join(dir, 'config.json'));
  const block = typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as Record<string, unknown>).quietstar : undefined;
  if (typeof block !== 'object' || block === null) return [];
  const { startId, endId } = block as { startId?: unknown; endId?: unknown };
  return [startId, endId].filter((id): id is number => Number.isInteger(id));
}
