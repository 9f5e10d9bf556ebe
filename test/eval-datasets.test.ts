/**
 * The zero-shot datasets and tasks (spec §4.1): GSM8K and both CommonsenseQA layouts load (hand-built files and,
 * with the shared data, the real ones), prompts in the paper's format, errors naming file:line and the field;
 * the answer whitelists derived from a tokenizer equal the reference's hard-coded Mistral ids; answers are read
 * back from generated text.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import test from 'ava';

import { createByteTokenizer, loadTokenizer } from '../lib/index.js';
import { csqaPrompt, gsm8kGold, gsm8kPrompt, loadCommonsenseQa, loadGsm8k } from '../lib/eval/datasets.js';
import { csqaTask, digitTokenIds, firstChoice, firstNumber, gsm8kTask, newlineId } from '../lib/eval/tasks.js';
import { dataPath, missingData } from '../lib/util/data-path.js';
import { rejectsWith } from './support/errors.js';

const GSM8K = ['gsm8k', 'test.jsonl'];
const CSQA_ORIG = ['commonsenseqa', 'dev_rand_split.jsonl'];
const CSQA_HF = ['commonsenseqa', 'dev_hf_validation.jsonl'];
const MISTRAL = ['tokenizers', 'mistral-7b-v0.1'];
const dataMissing = missingData(...GSM8K) ?? missingData(...CSQA_ORIG) ?? missingData(...CSQA_HF);
const mistralMissing = missingData(...MISTRAL, 'tokenizer.json');
for (const reason of new Set([dataMissing, mistralMissing])) if (reason) console.log(`eval-datasets: skipping the shared-data tests: ${reason}`);
const withData = dataMissing ? test.skip : test;
const withMistral = mistralMissing ? test.skip : test;

async function tmpFile(name: string, lines: string[]): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'qs-eval-'));
  const file = join(dir, name);
  await fsp.writeFile(file, lines.join('\n') + '\n');
  return file;
}

const ORIG_LINE = {
  answerKey: 'B',
  id: 'q1',
  question: { question_concept: 'c', choices: [{ label: 'A', text: 'bank' }, { label: 'B', text: 'library' }], stem: 'Where are books?' },
};
const HF_LINE = { id: 'q1', question: 'Where are books?', choices: { label: ['A', 'B'], text: ['bank', 'library'] }, answerKey: 'B' };

// ---- prompts and loaders on hand-built files ------------------------------------------------

test('prompts: the paper formats', (t) => {
  t.is(gsm8kPrompt('How many?'), 'Q: How many?\nA:');
  t.is(csqaPrompt('Where?', [{ label: 'A', text: 'x' }, { label: 'B', text: 'y z' }]), 'Q: Where?\n(A) x\n(B) y z\nA:');
  t.is(gsm8kGold('a\nb 2,000 c\n#### 1,000'), '1000');
  t.is(gsm8kGold('#### -3'), '-3');
  t.is(gsm8kGold('#### 2.5'), '2.5');
  t.is(gsm8kGold('no marker 12'), undefined);
  t.is(gsm8kGold('#### twelve'), undefined);
});

test('loadGsm8k: gold after "#### " without commas, ids by line, blank lines skipped', async (t) => {
  const file = await tmpFile('g.jsonl', [
    JSON.stringify({ question: 'Q one?', answer: 'x = <<1+1=2>>2\n#### 1,234' }),
    '',
    JSON.stringify({ question: 'Q two?', answer: 'so\n#### 7' }),
  ]);
  const ex = await loadGsm8k(file);
  t.deepEqual(ex, [
    { id: 'gsm8k-1', question: 'Q one?', prompt: 'Q: Q one?\nA:', answer: '1234' },
    { id: 'gsm8k-3', question: 'Q two?', prompt: 'Q: Q two?\nA:', answer: '7' },
  ]);
});

test('loadGsm8k: errors name file:line and the field', async (t) => {
  const noMarker = await tmpFile('a.jsonl', [JSON.stringify({ question: 'q', answer: '#### 1' }), JSON.stringify({ question: 'q', answer: 'no number' })]);
  await rejectsWith(t, loadGsm8k(noMarker), 'BAD_FILE', /a\.jsonl:2: "answer" has no number after "#### "/);
  const noQuestion = await tmpFile('b.jsonl', [JSON.stringify({ answer: '#### 1' })]);
  await rejectsWith(t, loadGsm8k(noQuestion), 'BAD_FILE', /b\.jsonl:1: "question" must be a non-empty string/);
  const notJson = await tmpFile('c.jsonl', ['{"question": ']);
  await rejectsWith(t, loadGsm8k(notJson), 'BAD_FILE', /c\.jsonl:1: invalid JSON/);
  const empty = await tmpFile('d.jsonl', ['']);
  await rejectsWith(t, loadGsm8k(empty), 'BAD_FILE', /d\.jsonl: no examples/);
  await rejectsWith(t, loadGsm8k(join(tmpdir(), 'no-such-dir-qs', 'x.jsonl')), 'NOT_FOUND', /x\.jsonl: file not found/);
});

test('loadCommonsenseQa: both layouts, detected per line, give the same example', async (t) => {
  const file = await tmpFile('c.jsonl', [JSON.stringify(ORIG_LINE), JSON.stringify(HF_LINE)]);
  const [a, b] = await loadCommonsenseQa(file);
  const want = { id: 'q1', question: 'Where are books?', prompt: 'Q: Where are books?\n(A) bank\n(B) library\nA:', answer: 'B' };
  t.deepEqual(a, want);
  t.deepEqual(b, want);
});

test('loadCommonsenseQa: errors name file:line and the field', async (t) => {
  const badKey = await tmpFile('k.jsonl', [JSON.stringify({ ...HF_LINE, answerKey: 'E' })]);
  await rejectsWith(t, loadCommonsenseQa(badKey), 'BAD_FILE', /k\.jsonl:1: "answerKey" "E" is not one of the labels A, B/);
  const badChoices = await tmpFile('h.jsonl', [JSON.stringify(HF_LINE), JSON.stringify({ ...HF_LINE, choices: { label: ['A'], text: ['x', 'y'] } })]);
  await rejectsWith(t, loadCommonsenseQa(badChoices), 'BAD_FILE', /h\.jsonl:2: "choices": "label" has 1 entries and "text" 2/);
  const noStem = await tmpFile('s.jsonl', [JSON.stringify({ ...ORIG_LINE, question: { choices: ORIG_LINE.question.choices } })]);
  await rejectsWith(t, loadCommonsenseQa(noStem), 'BAD_FILE', /s\.jsonl:1: "question\.stem" must be a non-empty string/);
  const badLabel = await tmpFile('l.jsonl', [JSON.stringify({ ...ORIG_LINE, question: { ...ORIG_LINE.question, choices: [{ label: 'a', text: 'x' }] } })]);
  await rejectsWith(t, loadCommonsenseQa(badLabel), 'BAD_FILE', /l\.jsonl:1: "question\.choices"\[0\] must have a letter "label"/);
});

// ---- the shared data ------------------------------------------------------------------------

withData('GSM8K test and both CommonsenseQA dev layouts load; the two CSQA files agree', async (t) => {
  const gsm = await loadGsm8k(dataPath(...GSM8K));
  t.is(gsm.length, 1319);
  t.is(gsm[0]!.answer, '18');
  t.true(gsm[0]!.prompt.startsWith('Q: Janet'));
  t.true(gsm[0]!.prompt.endsWith('farmers\' market?\nA:'));
  t.true(gsm.every((e) => /^-?\d+(\.\d+)?$/.test(e.answer)));
  const orig = await loadCommonsenseQa(dataPath(...CSQA_ORIG));
  const hf = await loadCommonsenseQa(dataPath(...CSQA_HF));
  t.is(orig.length, 1221);
  t.deepEqual(hf, orig);
  t.is(orig[0]!.prompt, 'Q: A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?\n(A) bank\n(B) library\n(C) department store\n(D) mall\n(E) new york\nA:');
  t.is(orig[0]!.answer, 'A');
});

// ---- tasks --------------------------------------------------------------------------------

withMistral('tasks: the whitelists derived from the Mistral tokenizer are the reference ids (spec §4.1)', async (t) => {
  const tok = await loadTokenizer(dataPath(...MISTRAL));
  const gsm = gsm8kTask(tok);
  t.deepEqual([...gsm.whitelist].sort((a, b) => a - b), [13, 28734, 28740, 28750, 28770, 28774, 28781, 28782, 28783, 28784, 28787]);
  t.is(gsm.whitelist[gsm.whitelist.length - 1], 13);
  const csqa = csqaTask(tok);
  t.deepEqual(csqa.whitelist, [330, 365, 334, 384, 413, 13]);
  t.is(newlineId(tok), 13);
  // The byte-fallback pieces <0x30>..<0x39> decode to digits too but are not the model's digit tokens.
  t.false(digitTokenIds(tok).some((id) => id < 100));
  // The answer text after the prompt tokenises as the reference's: space piece, digits, newline.
  const ids = tok.encode(gsm8kPrompt('x') + gsm.answerText('18'));
  t.deepEqual(ids.slice(-4), [28705, 28740, 28783, 13]);
  t.deepEqual(tok.encode(csqaPrompt('x', [{ label: 'A', text: 'y' }]) + csqa.answerText('C')).slice(-2), [334, 13]);
});

test('tasks: a byte tokenizer gets the digit bytes and newline; answers and extraction', (t) => {
  const tok = createByteTokenizer({ bosToken: '<s>', eosToken: '</s>' });
  const gsm = gsm8kTask(tok, 'arith');
  t.is(gsm.name, 'arith');
  t.deepEqual(gsm.whitelist, [48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 10]);
  t.is(gsm.answerText('18'), ' 18\n');
  t.is(gsm.maxNewTokens, 16);
  t.deepEqual(csqaTask(tok).whitelist, [65, 66, 67, 68, 69, 10]);
  t.is(csqaTask(tok).maxNewTokens, 4);
  t.is(firstNumber(' 1,800 eggs\n'), '1800');
  t.is(firstNumber('It is -3.'), '-3');
  t.is(firstNumber('about 2.5 kg'), '2.5');
  t.is(firstNumber('none'), undefined);
  t.is(gsm.extract(' 42\n'), '42');
  t.is(firstChoice(' B\n'), 'B');
  t.is(firstChoice('(C) mall'), 'C');
  t.is(firstChoice('A bank'), 'A');
  t.is(firstChoice('Because'), undefined);
  t.is(firstChoice('the answer is D'), 'D');
});
