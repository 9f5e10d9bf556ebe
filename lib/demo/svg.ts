/**
 * A small SVG plotting module for the demo's report: line plots (several series, axes with
 * "nice" ticks, labels, a legend) and bar charts (values of either sign around a zero line).
 * Each function returns one self-contained `<svg>` element as a string: no scripts, no external
 * styles or fonts, every text escaped, so it can be inlined into HTML as is.
 *
 * ```ts
 * const svg = linePlot({ title: 'LM loss', xLabel: 'step', yLabel: 'nats/token',
 *   series: [{ name: 'train', points: [[1, 3.2], [2, 2.9]] }] });
 * const bars = barChart({ title: 'ΔNLL by decile', yLabel: 'Δ nats', bars: [{ label: '1', value: -0.01 }] });
 * ```
 */

/** Escapes text for HTML/SVG content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** One line of a {@link linePlot}: (x, y) points; non-finite y values break the line. */
export interface Series {
  name: string;
  points: ReadonlyArray<readonly [number, number]>;
  /** CSS colour. @defaultValue from a fixed palette, by series index */
  color?: string;
  /** Draw a dot at every point (for sparse series such as evaluations). @defaultValue false */
  dots?: boolean;
}

/** Options shared by the plots. */
export interface PlotFrame {
  title: string;
  /** Axis labels. @defaultValue none */
  xLabel?: string;
  yLabel?: string;
  /** Pixel size. @defaultValue 560 × 300 */
  width?: number;
  height?: number;
}

/** Options of {@link linePlot}. */
export interface LinePlotOptions extends PlotFrame {
  series: readonly Series[];
  /** Force the y range (e.g. to include 0). @defaultValue the data's range, padded 5 % */
  yMin?: number;
  yMax?: number;
  /** A dashed horizontal reference line (e.g. y = 0). @defaultValue none */
  referenceY?: number;
}

/** One bar of a {@link barChart}. */
export interface Bar {
  label: string;
  value: number;
  /** Tooltip text. @defaultValue label: value */
  title?: string;
}

/** Options of {@link barChart}. */
export interface BarChartOptions extends PlotFrame {
  bars: readonly Bar[];
  /** Colours of positive and negative bars. @defaultValue red (worse) and green (better), as for ΔNLL */
  positiveColor?: string;
  negativeColor?: string;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const MARGIN = { left: 64, right: 16, top: 32, bottom: 44 };
const FONT = 'font-family="sans-serif" font-size="11"';

/** Short text for a tick value: integers as they are, others with up to 4 significant digits. */
export function formatTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** About `count` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) return [];
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? 10 * p;
  // Multiples k·step, rounded to the step's decimals (so 0 is 0, not 3e-18).
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k <= Math.floor(hi / step + 1e-9); k++) out.push(Number((k * step).toFixed(decimals)));
  return out;
}

/** [lo, hi] of the finite values, padded; a single value gets a unit-wide range. */
function extent(values: number[], pad: number): [number, number] {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * pad;
  lo -= d;
  hi += d;
  return [lo, hi];
}

const px = (v: number): string => (Math.round(v * 10) / 10).toString();

interface Frame {
  width: number;
  height: number;
  /** Plot-area pixel bounds. */
  x0: number;
  x1: number;
  y0: number; // top
  y1: number; // bottom
}

function frameOf(o: PlotFrame): Frame {
  const width = o.width ?? 560;
  const height = o.height ?? 300;
  return { width, height, x0: MARGIN.left, x1: width - MARGIN.right, y0: MARGIN.top, y1: height - MARGIN.bottom };
}

/** The `<svg>` wrapper: background, title, axis labels and the given body. */
function svgDocument(o: PlotFrame, f: Frame, body: string[]): string {
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}" role="img" aria-label="${escapeXml(o.title)}">`,
    `<title>${escapeXml(o.title)}</title>`,
    `<rect x="0" y="0" width="${f.width}" height="${f.height}" fill="#ffffff"/>`,
    `<text x="${px(f.width / 2)}" y="18" text-anchor="middle" font-family="sans-serif" font-size="13" font-weight="bold">${escapeXml(o.title)}</text>`,
    ...body,
  ];
  if (o.xLabel) parts.push(`<text x="${px((f.x0 + f.x1) / 2)}" y="${px(f.height - 8)}" text-anchor="middle" ${FONT}>${escapeXml(o.xLabel)}</text>`);
  if (o.yLabel) {
    const cy = (f.y0 + f.y1) / 2;
    parts.push(`<text x="14" y="${px(cy)}" text-anchor="middle" transform="rotate(-90 14 ${px(cy)})" ${FONT}>${escapeXml(o.yLabel)}</text>`);
  }
  parts.push('</svg>');
  return parts.join('\n');
}

/** Horizontal grid lines and y tick labels for [lo, hi]. */
function yAxis(f: Frame, lo: number, hi: number, sy: (v: number) => number): string[] {
  const out = [`<line x1="${f.x0}" y1="${f.y0}" x2="${f.x0}" y2="${f.y1}" stroke="#333"/>`];
  for (const t of niceTicks(lo, hi)) {
    const y = px(sy(t));
    out.push(`<line x1="${f.x0}" y1="${y}" x2="${f.x1}" y2="${y}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${f.x0 - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" ${FONT}>${escapeXml(formatTick(t))}</text>`);
  }
  return out;
}

/** A line plot of one or more series (see {@link LinePlotOptions}). */
export function linePlot(o: LinePlotOptions): string {
  const f = frameOf(o);
  const xs = o.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = o.series.flatMap((s) => s.points.map((p) => p[1]));
  if (o.referenceY !== undefined) ys.push(o.referenceY);
  const [xlo, xhi] = extent(xs, 0);
  let [ylo, yhi] = extent(ys, 0.05);
  if (o.yMin !== undefined) ylo = o.yMin;
  if (o.yMax !== undefined) yhi = o.yMax;
  const sx = (v: number): number => f.x0 + ((v - xlo) / (xhi - xlo)) * (f.x1 - f.x0);
  const sy = (v: number): number => f.y1 - ((v - ylo) / (yhi - ylo)) * (f.y1 - f.y0);
  const body = yAxis(f, ylo, yhi, sy);
  body.push(`<line x1="${f.x0}" y1="${f.y1}" x2="${f.x1}" y2="${f.y1}" stroke="#333"/>`);
  for (const t of niceTicks(xlo, xhi, 6)) {
    const x = px(sx(t));
    body.push(`<line x1="${x}" y1="${f.y1}" x2="${x}" y2="${f.y1 + 4}" stroke="#333"/>`);
    body.push(`<text x="${x}" y="${f.y1 + 16}" text-anchor="middle" ${FONT}>${escapeXml(formatTick(t))}</text>`);
  }
  if (o.referenceY !== undefined && o.referenceY >= ylo && o.referenceY <= yhi) {
    const y = px(sy(o.referenceY));
    body.push(`<line x1="${f.x0}" y1="${y}" x2="${f.x1}" y2="${y}" stroke="#888" stroke-dasharray="4 3"/>`);
  }
  o.series.forEach((s, i) => {
    const color = escapeXml(s.color ?? PALETTE[i % PALETTE.length]!);
    // Non-finite y values split the polyline into runs.
    let run: string[] = [];
    const flush = (): void => {
      if (run.length > 1) body.push(`<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${run.join(' ')}"/>`);
      run = [];
    };
    for (const [x, y] of s.points) {
      if (!(Number.isFinite(x) && Number.isFinite(y))) {
        flush();
        continue;
      }
      run.push(`${px(sx(x))},${px(sy(Math.min(Math.max(y, ylo), yhi)))}`);
      if (s.dots) body.push(`<circle cx="${px(sx(x))}" cy="${px(sy(y))}" r="2.5" fill="${color}"><title>${escapeXml(`${s.name}: ${formatTick(x)}, ${formatTick(y)}`)}</title></circle>`);
    }
    flush();
    // Legend, top right, one line per series.
    const ly = f.y0 + 6 + 14 * i;
    body.push(`<line x1="${f.x1 - 120}" y1="${ly}" x2="${f.x1 - 104}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    body.push(`<text x="${f.x1 - 100}" y="${ly}" dominant-baseline="middle" ${FONT}>${escapeXml(s.name)}</text>`);
  });
  return svgDocument(o, f, body);
}

/** A bar chart around a zero line (see {@link BarChartOptions}); each bar shows its value. */
export function barChart(o: BarChartOptions): string {
  const f = frameOf(o);
  const values = o.bars.map((b) => b.value);
  let [lo, hi] = extent([...values, 0], 0.1);
  lo = Math.min(lo, 0);
  hi = Math.max(hi, 0);
  const sy = (v: number): number => f.y1 - ((v - lo) / (hi - lo)) * (f.y1 - f.y0);
  const body = yAxis(f, lo, hi, sy);
  const zero = sy(0);
  body.push(`<line x1="${f.x0}" y1="${px(zero)}" x2="${f.x1}" y2="${px(zero)}" stroke="#333"/>`);
  const n = Math.max(1, o.bars.length);
  const slot = (f.x1 - f.x0) / n;
  const pos = escapeXml(o.positiveColor ?? '#d62728');
  const neg = escapeXml(o.negativeColor ?? '#2ca02c');
  o.bars.forEach((b, i) => {
    const x = f.x0 + slot * i + slot * 0.15;
    const w = slot * 0.7;
    const v = Number.isFinite(b.value) ? b.value : 0;
    const y = sy(v);
    const top = Math.min(y, zero);
    const h = Math.max(Math.abs(y - zero), 0.5);
    const tip = escapeXml(b.title ?? `${b.label}: ${formatTick(b.value)}`);
    body.push(`<rect x="${px(x)}" y="${px(top)}" width="${px(w)}" height="${px(h)}" fill="${v > 0 ? pos : neg}"><title>${tip}</title></rect>`);
    const labelY = v >= 0 ? top - 4 : top + h + 11;
    body.push(`<text x="${px(x + w / 2)}" y="${px(labelY)}" text-anchor="middle" font-family="sans-serif" font-size="9">${escapeXml(formatTick(b.value))}</text>`);
    body.push(`<text x="${px(x + w / 2)}" y="${px(f.y1 + 16)}" text-anchor="middle" ${FONT}>${escapeXml(b.label)}</text>`);
  });
  return svgDocument(o, f, body);
}
