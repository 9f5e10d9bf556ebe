/**
 * The demo's corpus: multi-step arithmetic written as text, generated in code from a seed, where
 * extra computation before the answer should help (spec §4.3's "difficult tokens" are the answer
 * digits: a tiny model cannot compute `37+48-19` in one forward pass as easily as it copies the
 * format).
 *
 * ```ts
 * const c = arithmeticCorpus({ seed: 1, trainDocuments: 2000, heldOutDocuments: 100 });
 * c.train[0]!.text;       // "Q: 37+48-19=?\nA: 66\nQ: 5+71=?\nA: 76\n..."
 * c.heldOutProblems[0];   // { question: '12+9-4=?', answer: '17' }
 * ```
 *
 * A problem is `Q: <expression>=?\nA: <value>\n`: two or three operands in [1, maxOperand] joined
 * by + and −, chosen so that every partial result stays in [0, 2·maxOperand] (no negative
 * numbers). A document is `problemsPerDocument` problems back to back. Held-out problems never
 * occur among the training problems (their questions are disjoint sets), so the held-out answers
 * measure computation rather than recall. Everything is a pure function of the options.
 */
import { Xoshiro128 } from '../data/prng.js';
import { QuietstarError } from '../errors.js';

/** One problem: the question without the `Q: ` prefix, and its answer as decimal digits. */
export interface ArithmeticProblem {
  /** E.g. `"37+48-19=?"`. */
  question: string;
  /** E.g. `"66"`. */
  answer: string;
  /** Written out step by step in the corpus (`A: 37+48=85, 85-19=66`) rather than answered directly. */
  worked?: boolean;
}

/** A document: its problems and its text. */
export interface ArithmeticDocument {
  problems: ArithmeticProblem[];
  /** The problems, each formatted by {@link formatProblem}, concatenated. */
  text: string;
}

/** Options of {@link arithmeticCorpus}. */
export interface ArithmeticCorpusOptions {
  /** Seed of every draw. @defaultValue 0 */
  seed?: number;
  /** Training documents. @defaultValue 2000 */
  trainDocuments?: number;
  /** Held-out documents. @defaultValue 100 */
  heldOutDocuments?: number;
  /** Problems per document. @defaultValue 6 */
  problemsPerDocument?: number;
  /** Largest operand. @defaultValue 50 */
  maxOperand?: number;
  /** Share of problems with three operands (two steps); the rest have two. @defaultValue 0.5 */
  threeOperandShare?: number;
  /**
   * Share of TRAINING problems whose answer is written out step by step (`A: 37+48=85, 85-19=66`);
   * the rest, and every held-out problem, are answered directly (`A: 66`). A model that has seen
   * worked solutions can sample them as thoughts before a direct answer. @defaultValue 0
   */
  workedShare?: number;
}

/** The generated corpus and its held-out split. */
export interface ArithmeticCorpus {
  train: ArithmeticDocument[];
  heldOut: ArithmeticDocument[];
  /** Every held-out problem, in document order. */
  heldOutProblems: ArithmeticProblem[];
  /** The options in effect. */
  options: Required<ArithmeticCorpusOptions>;
}

/** The prompt of a problem as the zero-shot evaluation feeds it: `"Q: 37+48-19=?\nA:"`. */
export function problemPrompt(p: ArithmeticProblem): string {
  return `Q: ${p.question}\nA:`;
}

/** The steps of a worked answer: `"37+48-19=?"` → `"37+48=85, 85-19=66"`. */
export function workedSteps(question: string): string {
  const terms = question.replace(/=\?$/, '').match(/[+-]?\d+/g) ?? [];
  const steps: string[] = [];
  let value = Number(terms[0]);
  for (const t of terms.slice(1)) {
    const next = value + Number(t);
    steps.push(`${value}${t}=${next}`);
    value = next;
  }
  return steps.join(', ');
}

/** A problem as it appears in the corpus: `"Q: 37+48-19=?\nA: 66\n"`, or worked: `"...\nA: 37+48=85, 85-19=66\n"`. */
export function formatProblem(p: ArithmeticProblem): string {
  return `${problemPrompt(p)} ${p.worked ? workedSteps(p.question) : p.answer}\n`;
}

/** The answer of a generated line: its last number (the result of a worked answer, or the direct answer). */
export function lastNumber(text: string): string | undefined {
  const line = text.split('\n')[0] ?? '';
  return line.match(/\d+/g)?.at(-1);
}

/**
 * The value of an expression such as `"37+48-19=?"` (the `=?` is optional), or undefined when it
 * is not a chain of non-negative integers joined by + and −. Checks answers independently of the
 * generator.
 */
export function evaluateExpression(question: string): number | undefined {
  const m = /^(\d+(?:[+-]\d+)*)(?:=\?)?$/.exec(question.trim());
  if (!m) return undefined;
  const terms = m[1]!.match(/[+-]?\d+/g)!;
  return terms.reduce((s, t) => s + Number(t), 0);
}

function invalid(message: string): QuietstarError {
  return new QuietstarError(message, 'INVALID_ARGUMENT');
}

function intOption(name: string, v: number, min: number): number {
  if (!Number.isSafeInteger(v) || v < min) throw invalid(`corpus.${name} must be an integer >= ${min} (got ${String(v)})`);
  return v;
}

function resolve(o: ArithmeticCorpusOptions): Required<ArithmeticCorpusOptions> {
  if (typeof o !== 'object' || o === null) throw invalid('corpus options must be an object');
  const share = (name: string, v: number): number => {
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw invalid(`corpus.${name} must be a number in [0, 1] (got ${String(v)})`);
    return v;
  };
  return {
    seed: intOption('seed', o.seed ?? 0, 0),
    trainDocuments: intOption('trainDocuments', o.trainDocuments ?? 2000, 1),
    heldOutDocuments: intOption('heldOutDocuments', o.heldOutDocuments ?? 100, 1),
    problemsPerDocument: intOption('problemsPerDocument', o.problemsPerDocument ?? 6, 1),
    maxOperand: intOption('maxOperand', o.maxOperand ?? 50, 2),
    threeOperandShare: share('threeOperandShare', o.threeOperandShare ?? 0.5),
    workedShare: share('workedShare', o.workedShare ?? 0),
  };
}

/** One random problem: a + b, or a ± b ± c with every partial result in [0, 2·maxOperand]. */
function drawProblem(rng: Xoshiro128, maxOperand: number, threeShare: number): ArithmeticProblem {
  const operand = (): number => 1 + rng.below(maxOperand);
  const steps = rng.nextFloat() < threeShare ? 2 : 1;
  let value = operand();
  let question = String(value);
  for (let s = 0; s < steps; s++) {
    const x = operand();
    // Subtract when the result stays >= 0 and a coin says so; otherwise add if it stays in range.
    const minus = x <= value && (value + x > 2 * maxOperand || rng.below(2) === 0);
    value = minus ? value - x : value + x;
    question += `${minus ? '-' : '+'}${x}`;
  }
  return { question: `${question}=?`, answer: String(value) };
}

function document(problems: ArithmeticProblem[]): ArithmeticDocument {
  return { problems, text: problems.map(formatProblem).join('') };
}

// Keys separating the training and held-out streams of one seed ('TRAN', 'HELD').
const TRAIN_KEY = 0x5452414e;
const HELD_KEY = 0x48454c44;

/** Generates the corpus (see the module comment). INVALID_ARGUMENT naming a bad option. */
export function arithmeticCorpus(options: ArithmeticCorpusOptions = {}): ArithmeticCorpus {
  const o = resolve(options);
  const { seed, problemsPerDocument: k, maxOperand, threeOperandShare, workedShare } = o;
  const trainRng = new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296) >>> 0, TRAIN_KEY);
  const seen = new Set<string>();
  const train: ArithmeticDocument[] = [];
  for (let d = 0; d < o.trainDocuments; d++) {
    const problems = Array.from({ length: k }, () => {
      const p = drawProblem(trainRng, maxOperand, threeOperandShare);
      return trainRng.nextFloat() < workedShare ? { ...p, worked: true } : p;
    });
    for (const p of problems) seen.add(p.question);
    train.push(document(problems));
  }
  const heldRng = new Xoshiro128(seed >>> 0, Math.floor(seed / 4294967296) >>> 0, HELD_KEY);
  const heldOut: ArithmeticDocument[] = [];
  const heldOutProblems: ArithmeticProblem[] = [];
  // Redraw a held-out problem seen in training; bounded, since a tiny operand range may run out.
  const maxDraws = 1000 * o.heldOutDocuments * k;
  let draws = 0;
  for (let d = 0; d < o.heldOutDocuments; d++) {
    const problems: ArithmeticProblem[] = [];
    while (problems.length < k) {
      if (++draws > maxDraws) throw invalid(`corpus.maxOperand ${maxOperand} leaves too few problems outside the training set for ${o.heldOutDocuments} held-out documents`);
      const p = drawProblem(heldRng, maxOperand, threeOperandShare);
      if (!seen.has(p.question)) problems.push(p);
    }
    heldOutProblems.push(...problems);
    heldOut.push(document(problems));
  }
  return { train, heldOut, heldOutProblems, options: o };
}
