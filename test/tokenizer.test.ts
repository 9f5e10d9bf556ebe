/**
 * Tokenizers against independent references: llama2.c's own output (stories260K golden text),
 * a literal port of run.c's quadratic encode, a port of OpenAI's GPT-2 encoder.py, and
 * Mistral's SentencePiece tokenizer.model against its tokenizer.json (two files, two
 * algorithms). Plus added special tokens, round trips, loadTokenizer's dispatch and its errors.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { QuietstarError } from '../lib/errors.js';
import {
  createByteTokenizer,
  HfTokenizer,
  loadGpt2Files,
  loadTokenizer,
  parseLlama2cTokenizer,
  ScoreBpeTokenizer,
  type Tokenizer,
} from '../lib/tokenizer/index.js';
import { dataPath, missingData } from '../lib/util/data-path.js';

// ---------------------------------------------------------------------------------------------
// Data-dependent tests skip (visibly) when the shared data folder is absent.

const logged = new Set<string>();
function dataTest(title: string, needs: string[][], fn: (t: ExecutionContext) => Promise<void> | void): void {
  const reason = needs.map((parts) => missingData(...parts)).find((r) => r !== undefined);
  if (reason !== undefined && !logged.has(reason)) {
    logged.add(reason);
    console.log(`tokenizer tests skipped: ${reason}`);
  }
  (reason !== undefined ? test.skip : test)(title, fn);
}

const GPT2_HF = ['models', 'fake-gpt2-hf'];
const GPT2_FILES = ['tokenizers', 'gpt2'];
const MISTRAL = ['tokenizers', 'mistral-7b-v0.1'];
const TOK512 = ['models', 'stories260K-llama2c', 'tok512.bin'];
const GOLDEN = ['models', 'stories260K-hf', 'expected_greedy.json'];
const WIKI = ['wikitext2', 'wiki.test.raw'];
const SHAKESPEARE = ['tinyshakespeare', 'input.txt'];
const STORIES = ['tinystories_sample', 'tinystories_sample.txt'];
const MATH = ['math', 'math500_test.jsonl'];

/** Loads once per file; tests that add tokens load their own copy. */
const cache = new Map<string, Promise<Tokenizer>>();
function shared(...parts: string[]): Promise<Tokenizer> {
  const p = dataPath(...parts);
  if (!cache.has(p)) cache.set(p, loadTokenizer(p));
  return cache.get(p)!;
}

const read = (...parts: string[]): string => readFileSync(dataPath(...parts), 'utf8');

// Strings with what tends to break tokenizers: several spaces, tabs, newlines (CRLF too),
// digits, accents, CJK, emoji (4-byte UTF-8 and ZWJ sequences), punctuation and contractions.
const TRICKY = [
  'Hello world',
  'Hello  world\n\nfoo 123 ü 😀',
  "It's 3.14159 o'clock, isn't it? They're ready; we'll see.",
  'tabs\tand\r\nCRLF\nlines',
  '日本語のテキスト、中文文本 and 한국어',
  'emoji: 👩‍👩‍👧 🇫🇷 ✅',
  'x = f(y) + 2^10 - {a_b} // $\\frac{1}{2}$',
  'trailing spaces   ',
  'Ωμέγα café naïve ÅÄÖ',
];

function assertRoundTrip(t: ExecutionContext, tok: Tokenizer, texts: string[]): void {
  for (const text of texts) t.is(tok.decode(tok.encode(text)), text, JSON.stringify(text));
}

async function expectError(t: ExecutionContext, p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const err = await t.throwsAsync(p, { instanceOf: QuietstarError, message });
  t.is(err?.code, code as QuietstarError['code'], err?.message);
}

// ---------------------------------------------------------------------------------------------
// Byte tokenizer (no data needed)

test('bytes: UTF-8 bytes as ids, specials after 256, BOS/EOS, verbatim decode', (t) => {
  const tok = createByteTokenizer({ specialTokens: ['<|pad|>'], bosToken: '<s>', eosToken: '</s>' });
  t.is(tok.vocabSize, 259);
  t.is(tok.bosId, 257);
  t.is(tok.eosId, 258);
  t.deepEqual(tok.specialTokens, [256, 257, 258]);
  t.deepEqual(tok.encode('hé'), [0x68, 0xc3, 0xa9]);
  t.deepEqual(tok.encode('hi', { addSpecialTokens: true }), [257, 0x68, 0x69]);
  t.deepEqual(tok.encode('a</s><|pad|>b'), [0x61, 258, 256, 0x62]);
  t.is(tok.decode([257, 0x68, 0x69, 258]), '<s>hi</s>');
  t.is(tok.decode([257, 0x68, 0x69, 258], { skipSpecialTokens: true }), 'hi');
  assertRoundTrip(t, tok, TRICKY);

  t.is(tok.idToToken(0x61), 'a');
  t.is(tok.idToToken(0x20), '<0x20>');
  t.is(tok.idToToken(258), '</s>');
  t.is(tok.idToToken(259), undefined);
  t.is(tok.tokenToId('<0xFF>'), 255);
  t.is(tok.tokenToId(' '), 0x20);
  t.is(tok.tokenToId('<|pad|>'), 256);

  const [sot, eot] = tok.addSpecialTokens(['<|startofthought|>', '<|endofthought|>']);
  t.deepEqual([sot, eot], [259, 260]);
  t.deepEqual(tok.addSpecialTokens(['<|endofthought|>']), [260]);
  t.is(tok.vocabSize, 261);
  const ids = tok.encode('ab<|startofthought|>c<|endofthought|>');
  t.deepEqual(ids, [0x61, 0x62, 259, 0x63, 260]);
  t.is(tok.decode(ids), 'ab<|startofthought|>c<|endofthought|>');
  t.is(tok.decode(ids, { skipSpecialTokens: true }), 'abc');
});

test('bytes: invalid arguments are named', (t) => {
  const tok = createByteTokenizer();
  t.is(tok.vocabSize, 256);
  t.is(tok.bosId, undefined);
  t.deepEqual(tok.encode('x', { addSpecialTokens: true }), [0x78]);
  t.throws(() => tok.decode([1, 256]), { instanceOf: QuietstarError, message: /ids\[1\] = 256/ });
  t.throws(() => tok.decode([1.5]), { instanceOf: QuietstarError, message: /ids\[0\]/ });
  t.throws(() => tok.encode(5 as unknown as string), { instanceOf: QuietstarError, message: /text must be a string/ });
  t.throws(() => tok.addSpecialTokens(['ok', '']), { instanceOf: QuietstarError, message: /tokens\[1\]/ });
  t.throws(() => createByteTokenizer({ bosToken: '' }), { instanceOf: QuietstarError, message: /bosToken/ });
  t.is(tok.decode([]), '');
});

// ---------------------------------------------------------------------------------------------
// Score BPE (llama2.c run.c) against a literal port of run.c's quadratic encode

/** A llama2.c tokenizer file from pieces (latin1 strings of their bytes) and scores. */
function tokBin(pieces: string[], scores: number[]): Uint8Array {
  const parts: Buffer[] = [Buffer.from(new Int32Array([Math.max(...pieces.map((p) => p.length))]).buffer)];
  pieces.forEach((p, i) => {
    const head = Buffer.alloc(8);
    head.writeFloatLE(scores[i]!, 0);
    head.writeInt32LE(p.length, 4);
    parts.push(head, Buffer.from(p, 'latin1'));
  });
  return Buffer.concat(parts);
}

/** run.c's encode, transcribed literally (rescans every pair for each merge). */
function runcEncode(pieces: string[], scores: number[], text: string, bos: boolean): number[] {
  const lookup = new Map<string, number>();
  pieces.forEach((p, i) => {
    if (!lookup.has(p)) lookup.set(p, i);
  });
  const bytes = Buffer.from(text, 'utf8');
  const tokens: number[] = [];
  if (bos) tokens.push(1);
  if (bytes.length > 0) tokens.push(lookup.get(' ')!);
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i]!;
    if ((c & 0xc0) !== 0x80) buf = [];
    buf.push(c);
    const next = i + 1 < bytes.length ? bytes[i + 1]! : 0;
    if ((next & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup.get(Buffer.from(buf).toString('latin1'));
    if (id !== undefined) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i + 1 < tokens.length; i++) {
      const id = lookup.get(pieces[tokens[i]!]! + pieces[tokens[i + 1]!]!);
      if (id !== undefined && scores[id]! > best) {
        best = scores[id]!;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens[bestIdx] = bestId;
    tokens.splice(bestIdx + 1, 1);
  }
  return tokens;
}

/** Deterministic pseudo-random generator (tests must not flake). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('score BPE: same ids as run.c on a vocabulary full of score ties', (t) => {
  const bytes = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const merges = ['ab', 'ba', 'aa', 'bb', 'aba', 'bab', 'abab', ' a', ' b', '  ', 'c', 'ac', 'ca', 'cab', 'abc'];
  const pieces = ['<unk>', '\n<s>\n', '\n</s>\n', ...bytes, 'a', 'b', ' ', ...merges];
  // Scores with many ties, so the leftmost-on-ties rule decides.
  const scores = pieces.map((_, i) => (i < 262 ? 0 : -((i * 7) % 4)));
  const tok = parseLlama2cTokenizer(tokBin(pieces, scores), 'synthetic.bin');
  t.true(tok instanceof ScoreBpeTokenizer);
  const rand = lcg(1234);
  const alphabet = ['a', 'b', 'c', ' ', 'é', '😀'];
  for (let n = 0; n < 400; n++) {
    const len = Math.floor(rand() * 30);
    let text = '';
    for (let i = 0; i < len; i++) text += alphabet[Math.floor(rand() * (rand() < 0.9 ? 4 : alphabet.length))]!;
    t.deepEqual(tok.encode(text, { addSpecialTokens: true }), runcEncode(pieces, scores, text, true), JSON.stringify(text));
    t.is(tok.decode(tok.encode(text)), text, JSON.stringify(text));
  }
});

// ---------------------------------------------------------------------------------------------
// llama2.c tok512.bin: the stories260K golden output

dataTest('llama2c tok512.bin: decoding the golden greedy ids gives llama2.c\'s text exactly', [TOK512, GOLDEN], async (t) => {
  const tok = await shared(...TOK512);
  const golden = JSON.parse(read(...GOLDEN)) as { prompt_ids: number[]; generated_ids: number[]; text: string };
  t.is(tok.vocabSize, 512);
  t.is(tok.bosId, 1);
  t.is(tok.eosId, 2);
  t.deepEqual(golden.prompt_ids, [1]);
  // The text is what run.c prints after the BOS prompt: the first piece's leading space is
  // dropped (it follows BOS), and no BOS is written.
  t.is(tok.decode(golden.generated_ids), golden.text);
  t.is(tok.decode([...golden.prompt_ids, ...golden.generated_ids], { skipSpecialTokens: true }), golden.text);
  t.is(tok.decode([1, ...golden.generated_ids]), '<s>' + golden.text);
  // And encoding that text with BOS gives back the very ids the model generated.
  t.deepEqual(tok.encode(golden.text, { addSpecialTokens: true }), [1, ...golden.generated_ids]);
});

dataTest('llama2c tok512.bin: encode equals run.c\'s encode; byte fallback; round trips', [TOK512, STORIES], async (t) => {
  const tok = await shared(...TOK512);
  const buf = readFileSync(dataPath(...TOK512));
  const pieces: string[] = [];
  const scores: number[] = [];
  for (let off = 4; off < buf.length; ) {
    const len = buf.readInt32LE(off + 4);
    scores.push(buf.readFloatLE(off));
    pieces.push(buf.subarray(off + 8, off + 8 + len).toString('latin1'));
    off += 8 + len;
  }
  const stories = read(...STORIES);
  const lines = stories.split('\n').filter((l) => l.length > 0);
  for (const text of [...lines, ...TRICKY, '', ' leading space', '“curly quotes”']) {
    t.deepEqual(tok.encode(text, { addSpecialTokens: true }), runcEncode(pieces, scores, text, true), JSON.stringify(text));
  }
  // Characters outside the 512-token vocabulary become their UTF-8 bytes (byte b = id b + 3).
  t.deepEqual(tok.encode('😀'), [410, 0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3]);
  t.is(tok.idToToken(3 + 0x0a), '<0x0A>');
  t.is(tok.tokenToId('<s>'), 1);
  t.deepEqual(tok.encode(''), []);
  assertRoundTrip(t, tok, [stories, ...TRICKY, ' leading space', '  two leading spaces']);
});

dataTest('llama2c tok512.bin: added special tokens', [TOK512], async (t) => {
  const tok = await loadTokenizer(dataPath(...TOK512));
  const [sot, eot] = tok.addSpecialTokens(['<|startofthought|>', '<|endofthought|>']);
  t.deepEqual([sot, eot], [512, 513]);
  t.is(tok.vocabSize, 514);
  t.true(tok.specialTokens.includes(513));
  const plain = tok.encode('Once upon a time');
  const ids = tok.encode('Once<|startofthought|> upon<|endofthought|> a time');
  t.true(ids.includes(sot!) && ids.includes(eot!));
  t.is(ids.filter((id) => id !== sot && id !== eot).length, plain.length);
  t.is(tok.decode(ids), 'Once<|startofthought|> upon<|endofthought|> a time');
  t.is(tok.decode(ids, { skipSpecialTokens: true }), 'Once upon a time');
});

// ---------------------------------------------------------------------------------------------
// GPT-2: tokenizer.json, the original files, and OpenAI's encoder.py as the reference

/** GPT-2's bytes_to_unicode (encoder.py). */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const out: string[] = new Array(256);
  for (const b of bs) out[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) out[b] = String.fromCharCode(256 + n++);
  return out;
}

/** A port of OpenAI's GPT-2 encoder.py (regex split, byte encoding, lowest-rank merges). */
function referenceGpt2(encoder: Record<string, number>, mergesText: string): (text: string) => number[] {
  const ranks = new Map<string, number>();
  mergesText
    .split('\n')
    .slice(1)
    .filter((l) => l.length > 0)
    .forEach((l, i) => ranks.set(l, i));
  const byteEncoder = bytesToUnicode();
  const pat = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const bpe = (token: string): string[] => {
    let word = [...token];
    while (word.length > 1) {
      let best: [string, string] | undefined;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) [bestRank, best] = [r, [word[i]!, word[i + 1]!]];
      }
      if (best === undefined) break;
      const merged: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (word[i] === best[0] && i + 1 < word.length && word[i + 1] === best[1]) {
          merged.push(best[0] + best[1]);
          i += 2;
        } else merged.push(word[i++]!);
      }
      word = merged;
    }
    return word;
  };
  return (text) =>
    [...text.matchAll(pat)].flatMap((m) => {
      const token = [...Buffer.from(m[0], 'utf8')].map((b) => byteEncoder[b]!).join('');
      return bpe(token).map((piece) => encoder[piece]!);
    });
}

dataTest('gpt2: "Hello world" is [15496, 995] from tokenizer.json, the original files and vocab.json', [GPT2_HF, GPT2_FILES], async (t) => {
  const fromJson = await shared(...GPT2_HF, 'tokenizer.json');
  const fromFolder = await shared(...GPT2_FILES);
  const fromVocab = await loadTokenizer(dataPath(...GPT2_HF, 'vocab.json'));
  for (const tok of [fromJson, fromFolder, fromVocab]) {
    t.true(tok instanceof HfTokenizer);
    t.deepEqual(tok.encode('Hello world'), [15496, 995]);
    t.deepEqual(tok.encode('Hello world', { addSpecialTokens: true }), [15496, 995]); // GPT-2 adds nothing
    t.is(tok.vocabSize, 50257);
    t.is(tok.bosId, 50256);
    t.is(tok.eosId, 50256);
    t.deepEqual(tok.specialTokens, [50256]);
    t.is(tok.idToToken(995), 'Ġworld');
    t.is(tok.tokenToId('Ġworld'), 995);
    t.deepEqual(tok.encode('a<|endoftext|>b'), [64, 50256, 65]);
    t.is(tok.decode([64, 50256, 65], { skipSpecialTokens: true }), 'ab');
  }
});

dataTest('gpt2: original files == tokenizer.json == encoder.py on 20 KB of wikitext and of Shakespeare', [GPT2_HF, GPT2_FILES, WIKI, SHAKESPEARE], async (t) => {
  const fromJson = await shared(...GPT2_HF, 'tokenizer.json');
  const fromFiles = await loadGpt2Files(dataPath(...GPT2_FILES, 'encoder.json'), dataPath(...GPT2_FILES, 'vocab.bpe'));
  const reference = referenceGpt2(JSON.parse(read(...GPT2_FILES, 'encoder.json')) as Record<string, number>, read(...GPT2_FILES, 'vocab.bpe'));
  const samples = [read(...WIKI).slice(0, 20_000), read(...SHAKESPEARE).slice(0, 20_000), ...TRICKY];
  for (const text of samples) {
    const ids = fromJson.encode(text);
    t.deepEqual(fromFiles.encode(text), ids, JSON.stringify(text.slice(0, 40)));
    t.deepEqual(reference(text), ids, JSON.stringify(text.slice(0, 40)));
    t.is(fromJson.decode(ids), text);
  }
  t.true(fromJson.encode(samples[0]!).length > 4000);
});

dataTest('gpt2: decode is verbatim (no tokenization-space clean-up) and round-trips', [GPT2_HF], async (t) => {
  const tok = await shared(...GPT2_HF);
  // tokenizer_config.json says clean_up_tokenization_spaces: true, which would turn " ." into ".".
  assertRoundTrip(t, tok, [...TRICKY, 'Hello , world . I do n\'t know !', ' leading space', '\u0000\u0001 control']);
});

dataTest('gpt2: added thought tokens get ids 50257, 50258 and are matched atomically', [GPT2_HF], async (t) => {
  const tok = await loadTokenizer(dataPath(...GPT2_HF));
  const ids = tok.addSpecialTokens(['<|startofthought|>', '<|endofthought|>']);
  t.deepEqual(ids, [50257, 50258]);
  t.is(tok.vocabSize, 50259);
  t.deepEqual(tok.specialTokens, [50256, 50257, 50258]);
  t.deepEqual(tok.addSpecialTokens(['<|startofthought|>', '<|endoftext|>']), [50257, 50256]);
  t.is(tok.vocabSize, 50259);
  const text = 'Hello<|startofthought|> world<|endofthought|>';
  t.deepEqual(tok.encode(text), [15496, 50257, 995, 50258]);
  t.is(tok.decode([15496, 50257, 995, 50258]), text);
  t.is(tok.decode([15496, 50257, 995, 50258], { skipSpecialTokens: true }), 'Hello world');
  t.is(tok.idToToken(50258), '<|endofthought|>');
  t.is(tok.tokenToId('<|startofthought|>'), 50257);
  // A token already in the vocabulary keeps its id and becomes atomic.
  t.deepEqual(tok.addSpecialTokens(['Ġworld']), [995]);
  t.is(tok.vocabSize, 50259);
});

// ---------------------------------------------------------------------------------------------
// Mistral (Llama-style BPE with byte fallback): tokenizer.json vs SentencePiece tokenizer.model

dataTest('mistral: "Hello world" is [1, 22557, 1526] with BOS (add_bos_token), and those ids are ▁Hello, ▁world', [MISTRAL], async (t) => {
  const tok = await shared(...MISTRAL);
  t.true(tok instanceof HfTokenizer);
  t.is(tok.vocabSize, 32000);
  t.is(tok.bosId, 1);
  t.is(tok.eosId, 2);
  t.deepEqual(tok.specialTokens, [0, 1, 2]);
  t.deepEqual(tok.encode('Hello world', { addSpecialTokens: true }), [1, 22557, 1526]);
  t.deepEqual(tok.encode('Hello world'), [22557, 1526]);
  t.is(tok.idToToken(22557), '▁Hello');
  t.is(tok.idToToken(1526), '▁world');
  t.is(tok.tokenToId('<0x0A>'), 13);
  t.deepEqual(tok.encode('a\nb'), [264, 13, 28726]); // '\n' has no piece: byte fallback <0x0A>
  t.is(tok.idToToken(264), '▁a');
  t.is(tok.idToToken(28726), 'b');
  // Special tokens written in the text are matched (Hugging Face semantics).
  t.deepEqual(tok.encode('<s>Hello</s>'), [1, 16230, 2]);
  t.is(tok.idToToken(16230), 'Hello');
  t.is(tok.decode([1, 22557, 1526]), '<s> Hello world');
  t.is(tok.decode([1, 22557, 1526], { skipSpecialTokens: true }), 'Hello world');
});

dataTest('mistral: SentencePiece tokenizer.model and tokenizer.json give the same ids on varied text', [MISTRAL, WIKI, SHAKESPEARE, MATH], async (t) => {
  const json = await shared(...MISTRAL);
  const sp = await shared(...MISTRAL, 'tokenizer.model');
  t.true(sp instanceof ScoreBpeTokenizer);
  t.is(sp.vocabSize, 32000);
  t.deepEqual(sp.encode('Hello world', { addSpecialTokens: true }), [1, 22557, 1526]);
  t.is(sp.idToToken(22557), '▁Hello');
  const samples = [
    read(...WIKI).replace(/\r\n/g, '\n').slice(0, 20_000).trimStart(),
    read(...SHAKESPEARE).slice(0, 20_000),
    read(...MATH).slice(0, 20_000),
    ...TRICKY,
  ];
  for (const text of samples) {
    const ids = json.encode(text);
    t.deepEqual(sp.encode(text), ids, JSON.stringify(text.slice(0, 40)));
    t.is(json.decode(ids), text);
    t.is(sp.decode(ids), text);
  }
  // Where they differ, on purpose: text that starts with a space. SentencePiece always adds its
  // dummy prefix; tokenizer.json's Metaspace (prepend_scheme "first") adds none when the text
  // already starts with one (transformers' legacy=false layout).
  t.deepEqual(sp.encode(' x').map((id) => sp.idToToken(id)), ['▁', '▁x']);
  t.deepEqual(json.encode(' x').map((id) => json.idToToken(id)), ['▁x']);
});

dataTest('mistral: round trips and added thought tokens', [MISTRAL], async (t) => {
  const tok = await loadTokenizer(dataPath(...MISTRAL));
  assertRoundTrip(t, tok, TRICKY); // none starts with a space: see the test above
  const ids = tok.addSpecialTokens(['<|startofthought|>', '<|endofthought|>']);
  t.deepEqual(ids, [32000, 32001]);
  t.is(tok.vocabSize, 32002);
  const enc = tok.encode('Hello<|startofthought|> world<|endofthought|>!', { addSpecialTokens: true });
  t.deepEqual(enc.slice(0, 5), [1, 22557, 32000, 1526, 32001]);
  t.is(tok.decode(enc, { skipSpecialTokens: true }), 'Hello world!');
  t.is(tok.decode(enc.slice(1)), 'Hello<|startofthought|> world<|endofthought|>!');
});

// ---------------------------------------------------------------------------------------------
// loadTokenizer: dispatch and errors

dataTest('loadTokenizer picks the format of each model folder and file', [GPT2_HF, GPT2_FILES, MISTRAL, TOK512], async (t) => {
  const kinds: [string[], new (...args: never[]) => Tokenizer][] = [
    [GPT2_HF, HfTokenizer],
    [[...GPT2_FILES, 'vocab.bpe'], HfTokenizer],
    [['models', 'stories260K-llama2c'], ScoreBpeTokenizer],
    [[...MISTRAL, 'tokenizer.json'], HfTokenizer],
  ];
  for (const [parts, kind] of kinds) {
    const tok = await loadTokenizer(dataPath(...parts));
    t.true(tok instanceof kind, parts.join('/'));
  }
});

async function tmpDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'qs-tok-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

test('loadTokenizer: missing paths are NOT_FOUND naming what was tried', async (t) => {
  const dir = await tmpDir(t);
  await expectError(t, loadTokenizer(join(dir, 'nope')), 'NOT_FOUND', /nope/);
  await expectError(t, loadTokenizer(dir), 'NOT_FOUND', /tokenizer\.json.*vocab\.json.*merges\.txt.*tok\*\.bin.*tokenizer\.model/);
  await fsp.writeFile(join(dir, 'vocab.json'), '{"a": 0}');
  await expectError(t, loadTokenizer(join(dir, 'vocab.json')), 'NOT_FOUND', /merges\.txt/);
  await expectError(t, loadTokenizer(''), 'INVALID_ARGUMENT', /path/);
});

test('loadTokenizer: malformed files are BAD_FILE naming the file', async (t) => {
  const dir = await tmpDir(t);
  const write = async (name: string, data: string | Uint8Array): Promise<string> => {
    const sub = await fsp.mkdtemp(join(dir, 'case-'));
    const p = join(sub, name);
    await fsp.writeFile(p, data);
    return p;
  };
  const f1 = await write('tokenizer.json', '{"model": ');
  await expectError(t, loadTokenizer(f1), 'BAD_FILE', new RegExp(`${f1.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: invalid JSON`));
  await expectError(t, loadTokenizer(await write('tokenizer.json', '{"added_tokens": []}')), 'BAD_FILE', /tokenizer\.json.*"model"/);
  await expectError(t, loadTokenizer(await write('tokenizer.json', '{"model": {"type": "BPE", "vocab": {"a": 0}}}')), 'BAD_FILE', /tokenizer\.json: @huggingface\/tokenizers cannot load it/);
  await expectError(t, loadTokenizer(await write('tokenizer.json', '{"model": {"vocab": {}}, "added_tokens": [{"id": -1}]}')), 'BAD_FILE', /added_tokens\[0\]/);
  await expectError(t, loadTokenizer(await write('tok.bin', new Uint8Array([7, 0]))), 'BAD_FILE', /tok\.bin: not a llama2\.c tokenizer/);
  await expectError(t, loadTokenizer(await write('tok.bin', tokBin(['a', 'b'], [0, 0]).subarray(0, 15))), 'BAD_FILE', /token 1: record header past the end/);
  await expectError(t, loadTokenizer(await write('tok.bin', tokBin(['a', 'b'], [0, 0]))), 'BAD_FILE', /2 tokens; llama2\.c needs at least 259/);
  await expectError(t, loadTokenizer(await write('tokenizer.model', Buffer.from([0x0a, 0x20, 0x0a]))), 'BAD_FILE', /tokenizer\.model: not a SentencePiece model: field 1: length 32/);
  await expectError(t, loadTokenizer(await write('tokenizer.json', '[1, 2]')), 'BAD_FILE', /neither a tokenizer\.json/);
  await expectError(t, loadTokenizer(await write('mystery', 'plain words')), 'BAD_FILE', /mystery: unknown tokenizer format/);

  // GPT-2 pair: a bad merges line, a merge of unknown tokens, a vocabulary that is not token -> id.
  const gdir = await fsp.mkdtemp(join(dir, 'gpt2-'));
  await fsp.writeFile(join(gdir, 'vocab.json'), JSON.stringify({ a: 0, b: 1, ab: 2 }));
  await fsp.writeFile(join(gdir, 'merges.txt'), '#version: 0.2\na b\nthree part line\n');
  await expectError(t, loadTokenizer(gdir), 'BAD_FILE', /merges\.txt: line 3 is not a merge/);
  await fsp.writeFile(join(gdir, 'merges.txt'), '#version: 0.2\na b\nb c\n');
  await expectError(t, loadTokenizer(gdir), 'BAD_FILE', /merges\.txt: merge 2 "b c" uses a token missing from .*vocab\.json/);
  await fsp.writeFile(join(gdir, 'merges.txt'), '#version: 0.2\na b\n');
  const tiny = await loadTokenizer(gdir);
  t.deepEqual(tiny.encode('ab'), [2]);
  await fsp.writeFile(join(gdir, 'vocab.json'), JSON.stringify({ a: 'zero' }));
  await expectError(t, loadTokenizer(gdir), 'BAD_FILE', /vocab\.json: token "a" has id "zero"/);
});

dataTest('loadTokenizer: a truncated real tokenizer is BAD_FILE, never a crash', [TOK512, MISTRAL], async (t) => {
  const dir = await tmpDir(t);
  const bin = readFileSync(dataPath(...TOK512));
  await fsp.writeFile(join(dir, 'tok512.bin'), bin.subarray(0, 3001));
  const err = await t.throwsAsync(loadTokenizer(join(dir, 'tok512.bin')), { instanceOf: QuietstarError });
  t.is(err?.code, 'BAD_FILE');
  t.regex(err!.message, /tok512\.bin: not a llama2\.c tokenizer: token \d+/);
  const model = readFileSync(dataPath(...MISTRAL, 'tokenizer.model'));
  await fsp.writeFile(join(dir, 'tokenizer.model'), model.subarray(0, 1000));
  await expectError(t, loadTokenizer(join(dir, 'tokenizer.model')), 'BAD_FILE', /tokenizer\.model: not a SentencePiece model/);
});
