/**
 * A SentencePiece model file (tokenizer.model) read without the sentencepiece library: the ModelProto protobuf of
 * sentencepiece_model.proto, of which this reads the pieces (field 1: piece = 1, score = 2, type = 3), the
 * trainer spec's model_type (2.3) and byte_fallback (2.35), and the normalizer spec's add_dummy_prefix (3.3).
 * Every other field is skipped by its wire type.
 */
import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';

/** sentencepiece's ModelProto.SentencePiece.Type (the same numbers as llama.cpp's token types). */
export const SP_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;
/** TrainerSpec.ModelType. */
export const SP_MODEL_TYPE: Record<number, string> = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' };

export interface SentencePiece {
  piece: string;
  score: number;
  type: number;
}

export interface SentencePieceModel {
  pieces: SentencePiece[];
  /** TrainerSpec.model_type: 'unigram' (the proto's default), 'bpe', 'word' or 'char'. */
  modelType: string;
  byteFallback: boolean;
  /** NormalizerSpec.add_dummy_prefix (default true). */
  addDummyPrefix: boolean;
}

class Reader {
  pos = 0;
  constructor(
    readonly b: Uint8Array,
    readonly end: number,
    readonly what: string,
  ) {}
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new UserError(`${this.what}: truncated protobuf varint`);
      const x = this.b[this.pos++]!;
      v += (x & 0x7f) * mul;
      mul *= 128;
      if (!(x & 0x80)) return v;
    }
    throw new UserError(`${this.what}: malformed protobuf varint`);
  }
  /** The bounds of a length-delimited field's bytes; the reader moves past them. */
  bytes(): [number, number] {
    const n = this.varint();
    const start = this.pos;
    if (start + n > this.end) throw new UserError(`${this.what}: a protobuf field runs past the end of its message`);
    this.pos += n;
    return [start, start + n];
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new UserError(`${this.what}: unsupported protobuf wire type ${wire} (is this a SentencePiece model?)`);
    if (this.pos > this.end) throw new UserError(`${this.what}: a protobuf field runs past the end of its message`);
  }
}

/** Parses the bytes of a tokenizer.model; `what` names it in errors. */
export function parseSentencePieceModel(b: Uint8Array, what = 'tokenizer.model'): SentencePieceModel {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const out: SentencePieceModel = { pieces: [], modelType: 'unigram', byteFallback: false, addDummyPrefix: true };
  const top = new Reader(b, b.length, what);
  while (top.pos < top.end) {
    const tag = top.varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire !== 2 || (field !== 1 && field !== 2 && field !== 3)) {
      top.skip(wire);
      continue;
    }
    const [start, end] = top.bytes();
    const m = new Reader(b, end, what);
    m.pos = start;
    if (field === 1) {
      const p: SentencePiece = { piece: '', score: 0, type: SP_TYPE.NORMAL };
      while (m.pos < m.end) {
        const t = m.varint();
        const f = Math.floor(t / 8);
        const w = t & 7;
        if (f === 1 && w === 2) {
          const [s, e] = m.bytes();
          try {
            p.piece = utf8.decode(b.subarray(s, e));
          } catch {
            throw new UserError(`${what}: piece ${out.pieces.length} is not valid UTF-8`);
          }
        } else if (f === 2 && w === 5) {
          p.score = dv.getFloat32(m.pos, true);
          m.pos += 4;
        } else if (f === 3 && w === 0) p.type = m.varint();
        else m.skip(w);
      }
      out.pieces.push(p);
    } else {
      // TrainerSpec (2): model_type = 3, byte_fallback = 35; NormalizerSpec (3): add_dummy_prefix = 3
      while (m.pos < m.end) {
        const t = m.varint();
        const f = Math.floor(t / 8);
        const w = t & 7;
        if (w !== 0) {
          m.skip(w);
          continue;
        }
        const v = m.varint();
        if (field === 2 && f === 3) out.modelType = SP_MODEL_TYPE[v] ?? `type ${v}`;
        else if (field === 2 && f === 35) out.byteFallback = v !== 0;
        else if (field === 3 && f === 3) out.addDummyPrefix = v !== 0;
      }
    }
  }
  if (out.pieces.length === 0) throw new UserError(`${what} has no pieces: not a SentencePiece model`);
  return out;
}

export function readSentencePieceModel(path: string): SentencePieceModel {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    throw new UserError(`cannot read ${path}: ${(e as Error).message}`);
  }
  return parseSentencePieceModel(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), path);
}
