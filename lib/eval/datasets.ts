/**
 * The zero-shot question sets of the paper's evaluation (spec §4.1) and their prompt formats.
 *
 * ```ts
 * const gsm8k = await loadGsm8k('../shared/data/gsm8k/test.jsonl');          // 1,319 examples
 * const csqa = await loadCommonsenseQa('../shared/data/commonsenseqa/dev_rand_split.jsonl');
 * gsm8k[0].prompt;  // "Q: Janet’s ducks lay 16 eggs per day. …\nA:"
 * gsm8k[0].answer;  // "18"
 * ```
 *
 * GSM8K lines are `{"question", "answer"}` with the gold number after the last `"#### "` (commas removed, as
 * the reference's `answer.split("####")[-1]` followed by the metric, which skips commas). CommonsenseQA comes
 * in two layouts, detected per line: the original `{"id", "question": {"stem", "choices": [{label, text}]},
 * "answerKey"}` and Hugging Face's `{"id", "question", "choices": {"label": [...], "text": [...]}, "answerKey"}`.
 */
import { promises as fsp } from 'node:fs';

import { QuietstarError } from '../errors.js';

/** One zero-shot question. */
export interface QaExample {
  /** The dataset's id (CommonsenseQA), or `gsm8k-<line>` (GSM8K has none; 1-based line number). */
  id: string;
  /** The question as the dataset gives it (CommonsenseQA: the stem). */
  question: string;
  /** The model's input: `"Q: " + question (+ choices) + "\nA:"` (spec §4.1). */
  prompt: string;
  /** The gold answer: a number without commas (`"18"`, `"-3"`, `"0.5"`) or a letter (`"A"`..`"E"`). */
  answer: string;
}

/** Spec §4.1 GSM8K prompt: `"Q: " + question + "\nA:"`. */
export function gsm8kPrompt(question: string): string {
  return `Q: ${question}\nA:`;
}

/** Spec §4.1 CommonsenseQA prompt: `"Q: " + stem + "\n(A) text\n(B) text…" + "\nA:"`. */
export function csqaPrompt(stem: string, choices: ReadonlyArray<{ label: string; text: string }>): string {
  return `Q: ${stem}${choices.map((c) => `\n(${c.label}) ${c.text}`).join('')}\nA:`;
}

type Fail = (why: string) => never;

/** Reads a JSONL file, calling `parse` on each non-blank line with a BAD_FILE thrower naming `file:line`. */
async function readJsonl<T>(file: string, parse: (json: unknown, line: number, fail: Fail) => T): Promise<T[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    throw new QuietstarError(`${file}: file not found`, 'NOT_FOUND');
  }
  const out: T[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const fail: Fail = (why) => {
      throw new QuietstarError(`${file}:${i + 1}: ${why}`, 'BAD_FILE');
    };
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch (err) {
      fail(`invalid JSON (${(err as Error).message})`);
    }
    out.push(parse(json, i + 1, fail));
  }
  if (out.length === 0) throw new QuietstarError(`${file}: no examples (empty file)`, 'BAD_FILE');
  return out;
}

function record(json: unknown, fail: Fail): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('each line must be a JSON object');
  return json as Record<string, unknown>;
}

/** A non-empty string field; `path` is how the message names it (default the field). */
function text(r: Record<string, unknown>, field: string, fail: Fail, path = field): string {
  const v = r[field];
  if (typeof v !== 'string' || v.trim() === '') fail(`"${path}" must be a non-empty string (got ${JSON.stringify(v)})`);
  return v as string;
}

/** The gold number of a GSM8K answer: the text after the last `"#### "`, commas removed. */
export function gsm8kGold(answer: string): string | undefined {
  const at = answer.lastIndexOf('####');
  if (at < 0) return undefined;
  const gold = answer.slice(at + 4).trim().replace(/,/g, '');
  return /^-?\d+(\.\d+)?$/.test(gold) ? gold : undefined;
}

/**
 * GSM8K (`{"question", "answer"}` per line).
 * @throws QuietstarError `NOT_FOUND` for a missing file, `BAD_FILE` naming `file:line` and the field for a line
 *   that is not JSON, lacks a field, or whose answer has no number after `"#### "`.
 */
export function loadGsm8k(file: string): Promise<QaExample[]> {
  return readJsonl(file, (json, line, fail) => {
    const r = record(json, fail);
    const question = text(r, 'question', fail);
    const answer = gsm8kGold(text(r, 'answer', fail));
    if (answer === undefined) fail('"answer" has no number after "#### "');
    return { id: `gsm8k-${line}`, question, prompt: gsm8kPrompt(question), answer: answer! };
  });
}

/** The choices of either CommonsenseQA layout, checked. */
function csqaChoices(v: unknown, where: string, fail: Fail): { label: string; text: string }[] {
  let pairs: [unknown, unknown][];
  if (Array.isArray(v)) {
    pairs = v.map((c: unknown) => (typeof c === 'object' && c !== null ? [(c as Record<string, unknown>).label, (c as Record<string, unknown>).text] : [undefined, undefined]));
  } else if (typeof v === 'object' && v !== null && Array.isArray((v as Record<string, unknown>).label) && Array.isArray((v as Record<string, unknown>).text)) {
    const { label, text: texts } = v as { label: unknown[]; text: unknown[] };
    if (label.length !== texts.length) fail(`${where}: "label" has ${label.length} entries and "text" ${texts.length}`);
    pairs = label.map((l, i) => [l, texts[i]]);
  } else {
    fail(`${where} must be a list of {label, text} or {"label": [...], "text": [...]}`);
  }
  if (pairs!.length === 0) fail(`${where} is empty`);
  return pairs!.map(([label, t], i) => {
    if (typeof label !== 'string' || !/^[A-Z]$/.test(label) || typeof t !== 'string') {
      fail(`${where}[${i}] must have a letter "label" and a string "text" (got ${JSON.stringify(label)}, ${JSON.stringify(t)})`);
    }
    return { label: label as string, text: t as string };
  });
}

/**
 * CommonsenseQA in the original layout (`dev_rand_split.jsonl`: `question.stem`, `question.choices`) or Hugging
 * Face's (`question` a string, `choices.label` / `choices.text`), detected per line.
 * @throws QuietstarError `NOT_FOUND` for a missing file, `BAD_FILE` naming `file:line` and the field when a line
 *   fits neither layout or its `answerKey` is not one of its labels.
 */
export function loadCommonsenseQa(file: string): Promise<QaExample[]> {
  return readJsonl(file, (json, _line, fail) => {
    const r = record(json, fail);
    const id = text(r, 'id', fail);
    let stem: string;
    let choices: { label: string; text: string }[];
    if (typeof r.question === 'object' && r.question !== null && !Array.isArray(r.question)) {
      const q = r.question as Record<string, unknown>;
      stem = text(q, 'stem', fail, 'question.stem');
      choices = csqaChoices(q.choices, '"question.choices"', fail);
    } else {
      stem = text(r, 'question', fail);
      choices = csqaChoices(r.choices, '"choices"', fail);
    }
    const answer = text(r, 'answerKey', fail);
    if (!choices.some((c) => c.label === answer)) {
      fail(`"answerKey" ${JSON.stringify(answer)} is not one of the labels ${choices.map((c) => c.label).join(', ')}`);
    }
    return { id, question: stem, prompt: csqaPrompt(stem, choices), answer };
  });
}
