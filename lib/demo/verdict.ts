/**
 * Whether thinking helped, and by how much, stated from the demo's numbers (never assumed): one
 * row per headline figure, without and with thinking, and a one-sentence verdict. The primary
 * figure is the held-out per-token NLL (what Quiet-STaR trains for); the others are reported
 * beside it, and a verdict whose figures disagree says so. A change that rounds to zero as
 * printed counts as no change.
 */
import type { DemoMetrics } from './pipeline.js';

/** One headline figure without and with thinking. */
export interface VerdictRow {
  metric: string;
  /** Without thinking (base prediction) and with thinking (mixed prediction). */
  base: number;
  think: number;
  /** think − base. */
  change: number;
  /** Whether a smaller value is better (NLL, perplexity) or a larger one (accuracy). */
  lowerIsBetter: boolean;
  /** Whether thinking improved this figure by a printable amount (false when not, or not finite). */
  improved: boolean;
  /** The change rounds to zero as printed (3 decimals; 0.1 points for shares). */
  negligible: boolean;
  /** How to print the values: 'nats' (3 decimals), 'ppl' (3 decimals) or 'pct' (a share as %). */
  unit: 'nats' | 'ppl' | 'pct';
}

/** The verdict: the rows, whether the primary figure improved, a sentence saying so, and how the training moved it. */
export interface DemoVerdict {
  helped: boolean;
  headline: string;
  /** The held-out NLL before Quiet-STaR training against after it, without and with thinking. */
  context: string;
  rows: VerdictRow[];
}

/** A value as its row prints it. */
export function formatValue(v: number, unit: VerdictRow['unit']): string {
  if (!Number.isFinite(v)) return String(v);
  return unit === 'pct' ? `${(100 * v).toFixed(1)} %` : v.toFixed(3);
}

/** A change as its row prints it: signed, in the row's unit (percentage points for shares). */
export function formatChange(r: VerdictRow): string {
  if (!Number.isFinite(r.change)) return String(r.change);
  const sign = r.change > 0 ? '+' : r.change < 0 ? '−' : '±';
  const a = Math.abs(r.change);
  return r.unit === 'pct' ? `${sign}${(100 * a).toFixed(1)} pts` : `${sign}${a.toFixed(3)}`;
}

function row(metric: string, base: number, think: number, unit: VerdictRow['unit'], lowerIsBetter: boolean): VerdictRow {
  const change = think - base;
  const negligible = Number.isFinite(change) && Math.abs(change) < 5e-4;
  const improved = Number.isFinite(change) && !negligible && (lowerIsBetter ? change < 0 : change > 0);
  return { metric, base, think, change, lowerIsBetter, improved, negligible, unit };
}

/** The verdict of a run's figures. */
export function demoVerdict(m: Pick<DemoMetrics, 'hardTokens' | 'answerDigits' | 'answers' | 'beforeQuietStar'>): DemoVerdict {
  const h = m.hardTokens;
  const rows = [
    row('held-out NLL (nats/token)', h.meanNllBase, h.meanNllThink, 'nats', true),
    row('answer-digit NLL (nats/token)', m.answerDigits.meanNllBase, m.answerDigits.meanNllThink, 'nats', true),
    row('hardest-decile perplexity', h.hardest.perplexityBase, h.hardest.perplexityThink, 'ppl', true),
    row('answer score, paper metric', m.answers.paperMetric.withoutThinking, m.answers.paperMetric.withThinking, 'pct', false),
  ];
  if (m.answers.exactMatch) rows.push(row('answer exact match (greedy)', m.answers.exactMatch.withoutThinking, m.answers.exactMatch.withThinking, 'pct', false));
  const [nll, ...others] = rows as [VerdictRow, ...VerdictRow[]];
  const helped = nll.improved;
  const rel = nll.base !== 0 ? Math.abs(nll.change / nll.base) * 100 : NaN;
  let headline = nll.negligible
    ? `Thinking made no measurable difference to the held-out NLL (${formatValue(nll.base, 'nats')} → ${formatValue(nll.think, 'nats')} nats/token).`
    : `Thinking ${helped ? 'helped' : 'did not help'}: it ${helped ? 'lowered' : 'raised'} the held-out NLL from ` +
      `${formatValue(nll.base, 'nats')} to ${formatValue(nll.think, 'nats')} nats/token (${rel.toFixed(2)} %).`;
  const agree = others.filter((r) => !r.negligible && r.improved === helped).map((r) => r.metric);
  const disagree = others.filter((r) => !r.negligible && r.improved !== helped).map((r) => r.metric);
  const same = others.filter((r) => r.negligible).map((r) => r.metric);
  if (agree.length > 0) headline += ` ${helped ? 'Also better' : 'Also worse'}: ${agree.join(', ')}.`;
  if (disagree.length > 0) headline += ` ${helped ? 'But worse' : 'But better'}: ${disagree.join(', ')}.`;
  if (same.length > 0) headline += ` Unchanged: ${same.join(', ')}.`;
  const compare = (now: number, before: number): string => (now < before - 5e-4 ? 'better than' : now > before + 5e-4 ? 'worse than' : 'the same as');
  const b = m.beforeQuietStar;
  const digits = rows[1]!;
  const context =
    `Before Quiet-STaR training the pretrained model's held-out NLL was ${formatValue(b.meanNll, 'nats')} nats/token ` +
    `(answer digits ${formatValue(b.answerDigitNll, 'nats')}); after it, ${formatValue(nll.base, 'nats')} without thinking and ` +
    `${formatValue(nll.think, 'nats')} with thinking (${compare(nll.think, b.meanNll)} before; answer digits ` +
    `${formatValue(digits.base, 'nats')} and ${formatValue(digits.think, 'nats')}, ${compare(digits.think, b.answerDigitNll)} before).`;
  return { helped, headline, context, rows };
}
