/**
 * Hugging Face `tokenizer.json` through @huggingface/tokenizers: GPT-2 byte-level BPE,
 * Llama/Mistral BPE with byte fallback (Metaspace), and anything else that library runs.
 *
 * What this wrapper adds: the ids of BOS/EOS and the `add_bos_token`/`add_eos_token` switches of
 * tokenizer_config.json (as transformers' LlamaTokenizerFast applies them to the post-processor),
 * added special tokens (the library fixes its added tokens at construction, so adding one
 * rebuilds it from the JSON), id checks, and verbatim decoding: clean_up_tokenization_spaces
 * is always off, so decode(encode(x)) gives x back.
 */
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';

import { QuietstarError } from '../errors.js';
import { isRecord, readJsonFile } from './files.js';
import { checkIds, checkNewTokens, checkText, type DecodeOptions, type EncodeOptions, type Tokenizer } from './tokenizer.js';

/** An entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  special?: boolean;
}

/** The parts of tokenizer.json read here; the rest goes to @huggingface/tokenizers as is. */
export interface TokenizerJson {
  added_tokens: AddedTokenJson[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: Record<string, unknown>;
  [key: string]: unknown;
}

/** A special-token setting of tokenizer_config.json: a string, or an AddedToken dict. */
function tokenContent(x: unknown): string | null | undefined {
  if (typeof x === 'string') return x;
  if (x === null) return null;
  if (isRecord(x) && typeof x.content === 'string') return x.content;
  return undefined;
}

/** tokenizer_config.json with special tokens as plain strings (the library expects strings). */
function normaliseConfig(config: unknown, file: string): Record<string, unknown> {
  if (config === undefined || config === null) return {};
  if (!isRecord(config)) throw new QuietstarError(`${file}: tokenizer config must be a JSON object`, 'BAD_FILE');
  const out: Record<string, unknown> = { ...config };
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
    if (key in out) out[key] = tokenContent(out[key]) ?? null;
  }
  if (Array.isArray(out.additional_special_tokens)) {
    out.additional_special_tokens = out.additional_special_tokens.map(tokenContent).filter((t): t is string => typeof t === 'string');
  }
  return out;
}

function validateJson(json: unknown, file: string): TokenizerJson {
  const bad = (why: string): QuietstarError => new QuietstarError(`${file}: not a tokenizer.json: ${why}`, 'BAD_FILE');
  if (!isRecord(json)) throw bad('the top level is not a JSON object');
  if (!isRecord(json.model)) throw bad('"model" is missing or not an object');
  const vocab = json.model.vocab;
  if (!isRecord(vocab) && !Array.isArray(vocab)) throw bad('"model.vocab" is missing');
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw bad('"added_tokens" is not an array');
  const addedTokens = added.map((a: unknown, i): AddedTokenJson => {
    if (!isRecord(a) || typeof a.content !== 'string' || !Number.isInteger(a.id) || (a.id as number) < 0) {
      throw bad(`added_tokens[${i}] needs an integer "id" >= 0 and a string "content"`);
    }
    return { ...(a as unknown as AddedTokenJson) };
  });
  return {
    ...json,
    added_tokens: addedTokens,
    normalizer: json.normalizer ?? null,
    pre_tokenizer: json.pre_tokenizer ?? null,
    post_processor: json.post_processor ?? null,
    decoder: json.decoder ?? null,
    model: json.model,
  };
}

/** Number of ids of the model's vocabulary (max id + 1). */
function modelVocabSize(model: Record<string, unknown>): number {
  const vocab = model.vocab;
  if (Array.isArray(vocab)) return vocab.length; // Unigram: [piece, score] pairs
  let n = 0;
  for (const id of Object.values(vocab as Record<string, unknown>)) if (typeof id === 'number' && id + 1 > n) n = id + 1;
  return n;
}

/**
 * transformers' LlamaTokenizerFast.update_post_processor: with add_bos_token / add_eos_token
 * set in the config, the single-sequence template is `[BOS] $A [EOS]`. Applied only where the
 * post-processor is absent or a template, never to GPT-2's ByteLevel one.
 */
function applyBosEosSwitches(json: TokenizerJson, config: Record<string, unknown>, bos?: string, eos?: string): void {
  const addBos = config.add_bos_token;
  const addEos = config.add_eos_token;
  if (typeof addBos !== 'boolean' && typeof addEos !== 'boolean') return;
  const pp = json.post_processor;
  if (pp !== null && !(isRecord(pp) && pp.type === 'TemplateProcessing')) return;
  const template = isRecord(pp) && Array.isArray(pp.single) ? (pp.single as unknown[]) : [];
  const had = (tok?: string): boolean => template.some((x) => isRecord(x) && isRecord(x.SpecialToken) && x.SpecialToken.id === tok);
  const withBos = (typeof addBos === 'boolean' ? addBos : had(bos)) && bos !== undefined;
  const withEos = (typeof addEos === 'boolean' ? addEos : had(eos)) && eos !== undefined;
  if (pp === null && !withBos && !withEos) return;
  const special = (id: string, typeId: number): unknown => ({ SpecialToken: { id, type_id: typeId } });
  const seq = (id: string, typeId: number): unknown => ({ Sequence: { id, type_id: typeId } });
  const single = [...(withBos ? [special(bos!, 0)] : []), seq('A', 0), ...(withEos ? [special(eos!, 0)] : [])];
  const pair = [...single, ...(withBos ? [special(bos!, 1)] : []), seq('B', 1), ...(withEos ? [special(eos!, 1)] : [])];
  json.post_processor = { type: 'TemplateProcessing', single, pair, special_tokens: {} };
}

export class HfTokenizer implements Tokenizer {
  readonly bosId?: number;
  readonly eosId?: number;
  private readonly json: TokenizerJson;
  private readonly config: Record<string, unknown>;
  private readonly file: string;
  private inner: HFTokenizer;
  private size: number;

  /**
   * @param json tokenizer.json's content.
   * @param config tokenizer_config.json's content (BOS/EOS names, add_bos_token, ...), if any.
   * @param file names the source in errors.
   */
  constructor(json: unknown, config?: unknown, file = 'tokenizer.json') {
    this.file = file;
    this.json = validateJson(json, file);
    this.config = normaliseConfig(config, file);
    this.inner = this.build();
    this.size = Math.max(modelVocabSize(this.json.model), ...this.json.added_tokens.map((a) => a.id + 1));

    const has = (tok: string): boolean => this.inner.token_to_id(tok) !== undefined;
    let bos: string | undefined;
    let eos: string | undefined;
    if ('bos_token' in this.config || 'eos_token' in this.config) {
      bos = tokenContent(this.config.bos_token) ?? undefined;
      eos = tokenContent(this.config.eos_token) ?? undefined;
    } else if (has('<s>') || has('</s>')) {
      bos = '<s>';
      eos = '</s>';
    } else if (has('<|endoftext|>')) {
      bos = eos = '<|endoftext|>'; // GPT-2's one special token is both
    }
    const bosId = bos === undefined ? undefined : this.inner.token_to_id(bos);
    const eosId = eos === undefined ? undefined : this.inner.token_to_id(eos);
    if (bosId !== undefined) this.bosId = bosId;
    if (eosId !== undefined) this.eosId = eosId;

    const before = JSON.stringify(this.json.post_processor);
    applyBosEosSwitches(this.json, this.config, bosId === undefined ? undefined : bos, eosId === undefined ? undefined : eos);
    if (JSON.stringify(this.json.post_processor) !== before) this.inner = this.build();
  }

  private build(): HFTokenizer {
    try {
      return new HFTokenizer(this.json, this.config);
    } catch (err) {
      throw new QuietstarError(`${this.file}: @huggingface/tokenizers cannot load it: ${(err as Error).message}`, 'BAD_FILE');
    }
  }

  get vocabSize(): number {
    return this.size;
  }

  get specialTokens(): readonly number[] {
    const ids = new Set(this.json.added_tokens.filter((a) => a.special).map((a) => a.id));
    for (const tok of (this.config.additional_special_tokens as string[] | undefined) ?? []) {
      const id = this.inner.token_to_id(tok);
      if (id !== undefined) ids.add(id);
    }
    return [...ids].sort((a, b) => a - b);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    checkText(text);
    const ids: number[] = this.inner.encode(text, { add_special_tokens: options.addSpecialTokens ?? false }).ids;
    const bad = ids.findIndex((id) => !Number.isInteger(id));
    if (bad >= 0) {
      throw new QuietstarError(`${this.file}: cannot encode the text: a piece has no id and the model has no unknown token`, 'INVALID_ARGUMENT');
    }
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkIds(ids, this.size, (id) => this.inner.id_to_token(id) !== undefined);
    if (ids.length === 0) return '';
    return this.inner.decode([...ids], {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: false,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.inner.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.size ? this.inner.id_to_token(id) : undefined;
  }

  addSpecialTokens(tokens: string[]): number[] {
    checkNewTokens(tokens);
    let changed = false;
    const ids = tokens.map((tok) => {
      const added = this.json.added_tokens.find((a) => a.content === tok);
      if (added !== undefined) {
        if (!added.special) {
          added.special = true;
          changed = true;
        }
        return added.id;
      }
      const id = this.inner.token_to_id(tok) ?? this.size++;
      this.json.added_tokens.push({ id, content: tok, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
      changed = true;
      return id;
    });
    if (changed) this.inner = this.build();
    return ids;
  }
}

/** Reads tokenizer.json and, beside it, tokenizer_config.json / special_tokens_map.json when present. */
export async function loadHfTokenizer(path: string): Promise<HfTokenizer> {
  const json = await readJsonFile(path);
  const dir = dirname(path);
  const configPath = join(dir, 'tokenizer_config.json');
  const mapPath = join(dir, 'special_tokens_map.json');
  const config: Record<string, unknown> = {};
  if (existsSync(mapPath)) {
    const map = await readJsonFile(mapPath);
    if (!isRecord(map)) throw new QuietstarError(`${mapPath}: must be a JSON object`, 'BAD_FILE');
    Object.assign(config, map);
  }
  if (existsSync(configPath)) {
    const cfg = await readJsonFile(configPath);
    if (!isRecord(cfg)) throw new QuietstarError(`${configPath}: must be a JSON object`, 'BAD_FILE');
    for (const [k, v] of Object.entries(cfg)) if (v !== undefined && !(v === null && k in config)) config[k] = v;
  }
  return new HfTokenizer(json, config, path);
}
