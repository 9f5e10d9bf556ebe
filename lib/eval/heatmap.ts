/**
 * The hard-token heat map (spec §4.3, after the reference's highlighted PDF): the evaluated text with every
 * predicted token coloured green where thinking lowered its NLL and red where it raised it, with opacity
 * growing with |ΔNLL| from the 50th to the 95th percentile, and a tooltip with both NLLs. One self-contained
 * HTML file (inline CSS, no scripts).
 */
import type { Tokenizer } from '../tokenizer/index.js';
import { quantile } from './deciles.js';

/** The per-window NLLs the heat map draws (a subset of `HardTokenResult`). */
export interface HeatmapInput {
  /** baseNll[j] / thinkNll[j] are the NLLs of ids[j + 1] (the first token is context only). */
  windows: ReadonlyArray<{ ids: readonly number[]; baseNll: readonly number[]; thinkNll: readonly number[] }>;
}

/** Options of {@link hardTokenHeatmapHtml}. */
export interface HeatmapOptions {
  /** Tokens drawn at most (whole windows, in order). @defaultValue 2000 */
  maxTokens?: number;
  /** The page's heading. @defaultValue 'Where thinking helps' */
  title?: string;
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** `text` safe inside HTML text and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** Tokens of left context decoded with each token (enough for leading spaces and multi-byte characters). */
const CONTEXT = 6;

/**
 * The text of each token as it reads in context: how decoding grows when the token is added to the few tokens
 * before it (keeps the leading spaces that decoding a lone SentencePiece token drops). A token that ends inside
 * a multi-byte character shows nothing; the character goes to the token that completes it.
 */
export function tokenPieces(tokenizer: Tokenizer, ids: readonly number[]): string[] {
  const out: string[] = [];
  let pending = 0; // tokens before k still inside an unfinished character
  for (let k = 0; k < ids.length; k++) {
    const from = Math.max(0, k - CONTEXT - pending);
    const head = tokenizer.decode(ids.slice(from, k - pending), { skipSpecialTokens: true });
    const text = tokenizer.decode(ids.slice(from, k + 1), { skipSpecialTokens: true });
    if (text.endsWith('\uFFFD') && k < ids.length - 1 && pending < 3) {
      out.push('');
      pending++;
      continue;
    }
    pending = 0;
    out.push(text.startsWith(head) ? text.slice(head.length) : tokenizer.decode([ids[k]!], { skipSpecialTokens: true }));
  }
  return out;
}

const fmt = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : String(x));

/**
 * The heat map as one HTML page. Green = thinking helped (ΔNLL = think − base < 0), red = hurt; opacity
 * (|ΔNLL| − p50) / (p95 − p50) clamped to [0, 1], percentiles over the drawn tokens. Newlines in the text are
 * kept (`white-space: pre-wrap`); every token and the title are HTML-escaped.
 */
export function hardTokenHeatmapHtml(result: HeatmapInput, tokenizer: Tokenizer, opts: HeatmapOptions = {}): string {
  const maxTokens = opts.maxTokens ?? 2000;
  const title = opts.title ?? 'Where thinking helps';
  const shown: HeatmapInput['windows'][number][] = [];
  let count = 0;
  for (const w of result.windows) {
    if (count > 0 && count + w.ids.length > maxTokens) break;
    shown.push(w);
    count += w.ids.length;
  }
  const deltas: number[] = [];
  for (const w of shown) for (let j = 0; j < w.baseNll.length; j++) deltas.push(Math.abs(w.thinkNll[j]! - w.baseNll[j]!));
  const p50 = quantile(deltas, 0.5);
  const p95 = quantile(deltas, 0.95);
  const span = p95 - p50;

  const body: string[] = [];
  for (const w of shown) {
    const pieces = tokenPieces(tokenizer, w.ids);
    const spans = pieces.map((piece, k) => {
      const text = escapeHtml(piece);
      if (k === 0) return `<span class="ctx">${text}</span>`;
      const base = w.baseNll[k - 1]!;
      const think = w.thinkNll[k - 1]!;
      const delta = think - base;
      const a = span > 0 ? Math.min(1, Math.max(0, (Math.abs(delta) - p50) / span)) : Math.abs(delta) > 0 ? 1 : 0;
      const rgb = delta < 0 ? '40,170,60' : '220,50,40';
      const tip = `NLL without thinking ${fmt(base)}, with thinking ${fmt(think)}, Δ ${fmt(delta)}`;
      return `<span style="background:rgba(${rgb},${a.toFixed(3)})" title="${escapeHtml(tip)}">${text}</span>`;
    });
    body.push(`<div class="win">${spans.join('')}</div>`);
  }
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;line-height:1.5}
.win{font-family:ui-monospace,monospace;white-space:pre-wrap;border-top:1px solid #ccc;padding:.5em 0}
.ctx{color:#777}.key span{padding:0 .4em}
</style></head><body>
<h1>${escapeHtml(title)}</h1>
<p class="key"><span style="background:rgba(40,170,60,.8)">thinking helped</span> <span style="background:rgba(220,50,40,.8)">thinking hurt</span>
opacity: |ΔNLL| from ${fmt(p50)} (50th percentile) to ${fmt(p95)} nats (95th); hover a token for its NLLs.
${count} tokens in ${shown.length} window${shown.length === 1 ? '' : 's'}; the first token of a window is context (grey).</p>
${body.join('\n')}
</body></html>
`;
}
