/**
 * Score-based BPE: llama2.c's run.c `encode`/`decode`, which is also SentencePiece's BPE.
 *
 * encode: optional dummy-prefix space, split the text into UTF-8 characters, look each one up
 * (unknown characters fall back to byte tokens), then repeatedly merge the adjacent pair whose
 * concatenation is a vocabulary piece with the highest score, the leftmost on ties. run.c
 * rescans every pair per merge (quadratic); a heap with lazy invalidation picks the same pair
 * each time because merging keeps the symbols' left-to-right order.
 * decode: concatenate the pieces' bytes (`<0xXX>` pieces are raw bytes), dropping the leading
 * space of the first piece and of a piece that follows BOS, then decode UTF-8 once at the end.
 */
import { AddedTokens } from './added-tokens.js';
import { checkIds, checkNewTokens, checkText, type DecodeOptions, type EncodeOptions, type Tokenizer } from './tokenizer.js';

export interface ScoreBpeSpec {
  /** Each piece's bytes, spaces as 0x20 (SentencePiece's `▁` already replaced). */
  pieces: Uint8Array[];
  /** Merge priority of each piece (higher merges first). */
  scores: ArrayLike<number>;
  /** How idToToken/tokenToId spell each piece. */
  names: string[];
  /** Pieces encode() may produce by lookup; others (control, unused) only by id. @defaultValue all */
  lookup?: boolean[];
  /** Id for each byte value of a character not in the vocabulary; -1 = unknown (unkId). */
  byteIds: Int32Array;
  unkId?: number;
  bosId?: number;
  eosId?: number;
  /** Special ids (decoded as their name unless skipped; never matched in text). */
  specials: number[];
  /** Pieces matched whole in the text before BPE (SentencePiece user-defined symbols). */
  userDefined?: number[];
  /** Prepend a space to text that starts a sequence (SentencePiece's add_dummy_prefix). */
  dummyPrefix: boolean;
  /** Drop the leading space of the first decoded piece and of a piece after BOS. */
  stripLeadingSpace: boolean;
  /** SentencePiece remove_extra_whitespaces: trim spaces and collapse runs of them. @defaultValue false */
  removeExtraWhitespaces?: boolean;
}

const utf8 = new TextEncoder();
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!);
  return s;
}

/** A merge candidate: symbols `left` and `right` (adjacent) would become piece `id`. */
interface Candidate { score: number; left: number; right: number; id: number; verL: number; verR: number }

// Max-heap on score; ties go to the smaller left position (run.c keeps the first best pair).
function better(a: Candidate, b: Candidate): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

class CandidateHeap {
  private readonly items: Candidate[] = [];
  get size(): number {
    return this.items.length;
  }
  push(c: Candidate): void {
    const h = this.items;
    h.push(c);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!better(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): Candidate {
    const h = this.items;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && better(h[l]!, h[m]!)) m = l;
        if (r < h.length && better(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

export class ScoreBpeTokenizer implements Tokenizer {
  readonly bosId?: number;
  readonly eosId?: number;
  private readonly spec: ScoreBpeSpec;
  private readonly pieceStr: string[]; // latin1 strings of the pieces' bytes, for concatenation
  private readonly byPiece = new Map<string, number>(); // piece bytes (latin1) -> id, lookup pieces only
  private readonly byName = new Map<string, number>();
  private readonly byteOf: Int16Array; // id -> byte value of a `<0xXX>` piece, else -1
  private readonly special = new Set<number>();
  private readonly added = new AddedTokens();
  private readonly addedContent = new Map<number, string>(); // ids past the pieces, and atomic pieces
  private size: number;

  constructor(spec: ScoreBpeSpec) {
    this.spec = spec;
    if (spec.bosId !== undefined) this.bosId = spec.bosId;
    if (spec.eosId !== undefined) this.eosId = spec.eosId;
    const n = spec.pieces.length;
    this.size = n;
    this.pieceStr = spec.pieces.map(latin1);
    this.byteOf = new Int16Array(n).fill(-1);
    for (let id = 0; id < n; id++) {
      // run.c's str_lookup is a binary search over the sorted vocabulary; with duplicates the
      // first id wins here.
      if (spec.lookup === undefined || spec.lookup[id]) {
        if (!this.byPiece.has(this.pieceStr[id]!)) this.byPiece.set(this.pieceStr[id]!, id);
      }
      const name = spec.names[id]!;
      if (!this.byName.has(name)) this.byName.set(name, id);
      const m = BYTE_PIECE.exec(this.pieceStr[id]!);
      if (m) this.byteOf[id] = parseInt(m[1]!, 16);
    }
    for (const id of spec.specials) this.special.add(id);
    for (const id of spec.userDefined ?? []) {
      this.added.add(spec.names[id]!, id);
      this.addedContent.set(id, spec.names[id]!);
    }
  }

  get vocabSize(): number {
    return this.size;
  }

  get specialTokens(): readonly number[] {
    return [...this.special].sort((a, b) => a - b);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    checkText(text);
    return this.added.encode(text, options.addSpecialTokens ? this.bosId : undefined, (plain, atStart) => this.encodePlain(plain, atStart));
  }

  /** run.c's encode on text without special tokens. `atStart`: the text begins the sequence. */
  private encodePlain(text: string, atStart: boolean): number[] {
    if (this.spec.removeExtraWhitespaces) text = text.replace(/ +/g, ' ').replace(/^ | $/g, '');
    if (text.length === 0) return [];
    if (atStart && this.spec.dummyPrefix) text = ' ' + text;
    const bytes = utf8.encode(text);

    // Initial symbols: one per UTF-8 character (at most 4 bytes, as run.c), else bytes.
    const sym: number[] = [];
    for (let i = 0; i < bytes.length; ) {
      let j = i + 1;
      while (j < bytes.length && (bytes[j]! & 0xc0) === 0x80 && j - i < 4) j++;
      const id = this.byPiece.get(latin1(bytes.subarray(i, j)));
      if (id !== undefined) sym.push(id);
      else for (let k = i; k < j; k++) sym.push(this.byteId(bytes[k]!));
      i = j;
    }

    // Greedy merges over a linked list of symbols.
    const n = sym.length;
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const ver = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new CandidateHeap();
    const consider = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const id = this.byPiece.get(this.pieceStr[sym[l]!]! + this.pieceStr[sym[r]!]!);
      if (id === undefined) return;
      const score = this.spec.scores[id]!;
      if (!(score > -1e10)) return; // run.c's best_score starts at -1e10
      heap.push({ score, left: l, right: r, id, verL: ver[l]!, verR: ver[r]! });
    };
    for (let i = 0; i + 1 < n; i++) consider(i, i + 1);
    while (heap.size > 0) {
      const c = heap.pop();
      const { left: l, right: r } = c;
      if (!alive[l] || !alive[r] || next[l] !== r || ver[l] !== c.verL || ver[r] !== c.verR) continue;
      sym[l] = c.id;
      ver[l]!++;
      alive[r] = 0;
      next[l] = next[r]!;
      if (next[r]! >= 0) prev[next[r]!] = l;
      consider(prev[l]!, l);
      consider(l, next[l]!);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]!) out.push(sym[i]!);
    return out;
  }

  private byteId(b: number): number {
    const id = this.spec.byteIds[b]!;
    return id >= 0 ? id : (this.spec.unkId ?? 0);
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkIds(ids, this.size, (id) => id < this.spec.pieces.length || this.addedContent.has(id));
    const out: number[] = [];
    const push = (b: ArrayLike<number>): void => {
      for (let i = 0; i < b.length; i++) out.push(b[i]!);
    };
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (this.special.has(id)) {
        if (!options.skipSpecialTokens) push(utf8.encode(this.nameOf(id)));
        continue;
      }
      const content = this.addedContent.get(id);
      if (content !== undefined) {
        push(utf8.encode(content));
        continue;
      }
      let piece = this.spec.pieces[id]!;
      const afterBos = i > 0 && ids[i - 1] === this.bosId;
      if (this.spec.stripLeadingSpace && (i === 0 || afterBos) && piece[0] === 0x20) piece = piece.subarray(1);
      const byte = this.byteOf[id]!;
      if (byte >= 0) out.push(byte);
      else push(piece);
    }
    return new TextDecoder().decode(Uint8Array.from(out));
  }

  private nameOf(id: number): string {
    return this.addedContent.get(id) ?? this.spec.names[id]!;
  }

  tokenToId(token: string): number | undefined {
    return this.added.get(token) ?? this.byName.get(token);
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.size) return undefined;
    return this.nameOf(id);
  }

  addSpecialTokens(tokens: string[]): number[] {
    checkNewTokens(tokens);
    return tokens.map((tok) => {
      let id = this.tokenToId(tok);
      if (id === undefined) {
        id = this.size++;
        this.addedContent.set(id, tok);
      }
      this.added.add(tok, id);
      this.special.add(id);
      return id;
    });
  }
}
