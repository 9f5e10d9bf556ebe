/**
 * Tokens matched as a whole before the model's own algorithm sees the text (special tokens,
 * SentencePiece user-defined pieces), for the tokenizers implemented here. The tokenizer.json
 * path uses @huggingface/tokenizers' own added-token handling instead.
 */

/** A piece of text: either plain text for the model, or one whole added token. */
export type Segment = { text: string; start: number; id?: undefined } | { text: string; start: number; id: number };

export class AddedTokens {
  private readonly byContent = new Map<string, number>();
  // First UTF-16 unit -> candidate contents, longest first (leftmost-longest matching).
  private readonly byFirst = new Map<string, string[]>();

  get size(): number {
    return this.byContent.size;
  }

  get(content: string): number | undefined {
    return this.byContent.get(content);
  }

  add(content: string, id: number): void {
    if (this.byContent.has(content)) return;
    this.byContent.set(content, id);
    const first = content[0]!;
    const list = this.byFirst.get(first) ?? [];
    list.push(content);
    list.sort((a, b) => b.length - a.length);
    this.byFirst.set(first, list);
  }

  /** Splits `text` at each added token, scanning left to right and taking the longest match. */
  split(text: string): Segment[] {
    if (this.byContent.size === 0) return text.length > 0 ? [{ text, start: 0 }] : [];
    const out: Segment[] = [];
    let plainStart = 0;
    let i = 0;
    while (i < text.length) {
      const candidates = this.byFirst.get(text[i]!);
      const match = candidates?.find((c) => text.startsWith(c, i));
      if (match === undefined) {
        i++;
        continue;
      }
      if (i > plainStart) out.push({ text: text.slice(plainStart, i), start: plainStart });
      out.push({ text: match, start: i, id: this.byContent.get(match)! });
      i += match.length;
      plainStart = i;
    }
    if (plainStart < text.length) out.push({ text: text.slice(plainStart), start: plainStart });
    return out;
  }

  /**
   * Token ids of `text`: `bosId` first when given, each added token as its id, and the plain
   * text between them through the tokenizer's own `plain` (`atStart`: the piece opens the text).
   */
  encode(text: string, bosId: number | undefined, plain: (text: string, atStart: boolean) => Iterable<number>): number[] {
    const ids: number[] = [];
    if (bosId !== undefined) ids.push(bosId);
    for (const seg of this.split(text)) {
      if (seg.id !== undefined) ids.push(seg.id);
      // A loop, not push(...spread): a long text would overflow the call stack.
      else for (const id of plain(seg.text, seg.start === 0)) ids.push(id);
    }
    return ids;
  }
}
