/**
 * SentencePiece `tokenizer.model` (a ModelProto protobuf) for BPE models, as Llama and Mistral
 * ship. SentencePiece's BPE is the algorithm of llama2.c's run.c (highest-scoring merge first,
 * leftmost on ties, byte fallback), so the pieces feed a {@link ScoreBpeTokenizer} with `▁`
 * turned into spaces, exactly as llama2.c's tokenizer export does.
 *
 * Fields read (sentencepiece_model.proto): pieces (1: piece, 2: score, 3: type), trainer_spec
 * (3: model_type, 35: byte_fallback, 40-42: unk/bos/eos ids) and normalizer_spec (1: name,
 * 2: precompiled_charsmap, 3: add_dummy_prefix, 4: remove_extra_whitespaces,
 * 5: escape_whitespaces). Only the `identity` normalizer (no character map) is supported;
 * Unigram models are not (load their tokenizer.json instead).
 */
import { QuietstarError } from '../errors.js';
import { readTokenizerFile } from './files.js';
import { ScoreBpeTokenizer } from './score-bpe.js';

/** SentencePiece.Type */
const NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, BYTE = 6;

type Field = { field: number; wire: 0; value: bigint } | { field: number; wire: 2; value: Uint8Array } | { field: number; wire: 1 | 5; value: DataView };

/** The fields of one protobuf message, in file order. */
function* fields(buf: Uint8Array, bad: (why: string) => QuietstarError): Generator<Field> {
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (pos >= buf.length) throw bad('truncated varint');
      const b = buf[pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
    }
    throw bad('varint longer than 10 bytes');
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) yield { field, wire, value: varint() };
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw bad(`field ${field}: length ${len} runs past the end of its message`);
      yield { field, wire, value: buf.subarray(pos, pos + len) };
      pos += len;
    } else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      if (pos + n > buf.length) throw bad(`field ${field}: truncated fixed${n * 8}`);
      yield { field, wire, value: new DataView(buf.buffer, buf.byteOffset + pos, n) };
      pos += n;
    } else throw bad(`field ${field}: unsupported wire type ${wire}`);
  }
}

const int = (v: bigint): number => Number(BigInt.asIntN(64, v));

interface Piece { piece: string; score: number; type: number }

/** Parses the bytes of a SentencePiece BPE model; `file` names it in errors. */
export function parseSentencePieceModel(buf: Uint8Array, file: string): ScoreBpeTokenizer {
  const bad = (why: string): QuietstarError => new QuietstarError(`${file}: not a SentencePiece model: ${why}`, 'BAD_FILE');
  const text = new TextDecoder('utf-8', { fatal: true });
  const pieces: Piece[] = [];
  const trainer = { modelType: 1, byteFallback: false, unkId: 0, bosId: 1, eosId: 2 };
  const norm = { name: '', charsmap: 0, addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true };
  for (const f of fields(buf, bad)) {
    if (f.wire !== 2) continue;
    if (f.field === 1) {
      const p: Piece = { piece: '', score: 0, type: NORMAL };
      for (const g of fields(f.value, bad)) {
        if (g.field === 1 && g.wire === 2) {
          try {
            p.piece = text.decode(g.value);
          } catch {
            throw bad(`piece ${pieces.length} is not valid UTF-8`);
          }
        } else if (g.field === 2 && g.wire === 5) p.score = g.value.getFloat32(0, true);
        else if (g.field === 3 && g.wire === 0) p.type = int(g.value);
      }
      pieces.push(p);
    } else if (f.field === 2) {
      for (const g of fields(f.value, bad)) {
        if (g.wire !== 0) continue;
        if (g.field === 3) trainer.modelType = int(g.value);
        else if (g.field === 35) trainer.byteFallback = g.value !== 0n;
        else if (g.field === 40) trainer.unkId = int(g.value);
        else if (g.field === 41) trainer.bosId = int(g.value);
        else if (g.field === 42) trainer.eosId = int(g.value);
      }
    } else if (f.field === 3) {
      for (const g of fields(f.value, bad)) {
        if (g.field === 1 && g.wire === 2) norm.name = new TextDecoder().decode(g.value);
        else if (g.field === 2 && g.wire === 2) norm.charsmap = g.value.length;
        else if (g.field === 3 && g.wire === 0) norm.addDummyPrefix = g.value !== 0n;
        else if (g.field === 4 && g.wire === 0) norm.removeExtraWhitespaces = g.value !== 0n;
        else if (g.field === 5 && g.wire === 0) norm.escapeWhitespaces = g.value !== 0n;
      }
    }
  }
  if (pieces.length === 0) throw bad('no pieces');
  if (trainer.modelType !== 2) {
    const kind = ['?', 'Unigram', 'BPE', 'Word', 'Char'][trainer.modelType] ?? String(trainer.modelType);
    throw new QuietstarError(`${file}: SentencePiece ${kind} models are not supported (BPE only); load the model's tokenizer.json instead`, 'UNIMPLEMENTED');
  }
  if (norm.charsmap > 0 || (norm.name !== '' && norm.name !== 'identity')) {
    throw new QuietstarError(`${file}: SentencePiece normalizer '${norm.name}' is not supported (identity only); load the model's tokenizer.json instead`, 'UNIMPLEMENTED');
  }

  const enc = new TextEncoder();
  const space = (s: string): string => (norm.escapeWhitespaces ? s.replaceAll('\u2581', ' ') : s);
  const byteIds = new Int32Array(256).fill(-1);
  const specials: number[] = [];
  const userDefined: number[] = [];
  pieces.forEach((p, id) => {
    if (p.type === BYTE) {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p.piece);
      if (!m) throw bad(`byte piece ${id} is spelt '${p.piece}', expected <0xXX>`);
      if (trainer.byteFallback) byteIds[parseInt(m[1]!, 16)] = id;
    } else if (p.type === CONTROL || p.type === UNKNOWN) specials.push(id);
    else if (p.type === USER_DEFINED) userDefined.push(id);
  });
  const inRange = (id: number): number | undefined => (id >= 0 && id < pieces.length ? id : undefined);
  return new ScoreBpeTokenizer({
    pieces: pieces.map((p) => enc.encode(p.type === NORMAL || p.type === USER_DEFINED ? space(p.piece) : p.piece)),
    scores: pieces.map((p) => p.score),
    names: pieces.map((p) => p.piece),
    lookup: pieces.map((p) => p.type === NORMAL || p.type === USER_DEFINED),
    byteIds,
    ...(inRange(trainer.unkId) !== undefined ? { unkId: trainer.unkId } : {}),
    ...(inRange(trainer.bosId) !== undefined ? { bosId: trainer.bosId } : {}),
    ...(inRange(trainer.eosId) !== undefined ? { eosId: trainer.eosId } : {}),
    specials,
    userDefined,
    dummyPrefix: norm.addDummyPrefix,
    stripLeadingSpace: norm.addDummyPrefix,
    removeExtraWhitespaces: norm.removeExtraWhitespaces,
  });
}

/** Reads a SentencePiece BPE `tokenizer.model` (missing: NOT_FOUND; malformed: BAD_FILE). */
export async function loadSentencePieceModel(path: string): Promise<ScoreBpeTokenizer> {
  return parseSentencePieceModel(await readTokenizerFile(path), path);
}
