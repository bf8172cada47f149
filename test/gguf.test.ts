// GGUF format: Q8_0 bit-identical to gguf-py, the reader against a file gguf-py wrote (test/fixtures/gguf, made by
// tools/fixtures/gguf.py), the writer byte-identical to gguf-py's GGUFWriter, and the reader's hardening.
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UserError } from '../src/errors.js';
import {
  dequantizeQ8_0,
  type GgufValue,
  ggufTensorBytes,
  ggufTensorF32,
  gv,
  parseGguf,
  quantizeQ8_0,
  readGguf,
  serializeGgufHeader,
  writeGguf,
} from '../src/io/gguf.js';
import { readSafetensors } from '../src/io/safetensors.js';

const DIR = 'test/fixtures/gguf';
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('Q8_0 matches gguf-py bit for bit', () => {
  const st = readSafetensors(`${DIR}/q8_0.safetensors`, { copy: true });
  const meta = JSON.parse(readFileSync(`${DIR}/q8_0.json`, 'utf8')) as { cases: Record<string, { shape: number[] }>; refused_row_lengths: number[] };
  for (const name of Object.keys(meta.cases)) {
    it(name, () => {
      const x = st.tensors.get(`x.${name}`)!.data as Float32Array;
      const want = st.tensors.get(`q.${name}`)!.data as Uint8Array;
      const got = quantizeQ8_0(x);
      expect(got.length).toBe(want.length);
      const diff = got.findIndex((b, i) => b !== want[i]);
      expect(diff, `first differing byte ${diff} (block ${Math.floor(diff / 34)})`).toBe(-1);
      const deq = st.tensors.get(`deq.${name}`)!.data as Float32Array;
      expect(Array.from(dequantizeQ8_0(want))).toEqual(Array.from(deq));
    });
  }
  it('refuses rows that are not whole 32-value blocks, as gguf-py does', () => {
    expect(meta.refused_row_lengths).toEqual([16, 33, 48, 100]);
    for (const n of meta.refused_row_lengths) {
      expect(() => quantizeQ8_0(new Float32Array(n))).toThrow(/32-value blocks/);
      expect(() => serializeGgufHeader([], [{ name: 'q', type: 'Q8_0', shape: [2, n], data: new Uint8Array(0) }])).toThrow(/not whole Q8_0 blocks of 32/);
    }
  });
  it('an all-zero block has d = 0 and q = 0', () => {
    expect(Array.from(quantizeQ8_0(new Float32Array(32)))).toEqual(new Array(34).fill(0));
  });
});

interface KvView {
  type: string;
  itemType?: string;
  value?: unknown;
  count?: number;
}

/** A metadata value as tools/fixtures/gguf.py writes GGUFReader's view (64-bit ints as strings). */
function jsonView(v: GgufValue): KvView {
  const one = (x: unknown) => (typeof x === 'bigint' ? x.toString() : x);
  if (v.type !== 'array') return { type: v.type, value: one(v.value) };
  return { type: 'array', itemType: v.itemType, count: v.value.length, value: Array.from(v.value as ArrayLike<unknown>, one) };
}

describe('reading a file gguf-py wrote', () => {
  const want = JSON.parse(readFileSync(`${DIR}/reader.json`, 'utf8')) as {
    file_size: number;
    alignment: number;
    kv: [string, KvView][];
    tensors: { name: string; type: string; ne: number[]; offset: number; nbytes: number; sha256: string }[];
    values: Record<string, number[]>;
  };
  const f = readGguf(`${DIR}/reader.gguf`);

  it('header: version, alignment, size', () => {
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(want.alignment);
    expect(f.size).toBe(want.file_size);
  });
  it('every key, in order, with its type and value', () => {
    expect([...f.kv.keys()]).toEqual(want.kv.map(([k]) => k));
    for (const [k, w] of want.kv) {
      const got = jsonView(f.kv.get(k)!);
      expect(got.type, k).toBe(w.type);
      if (w.type === 'f32') expect(got.value, k).toBe(Math.fround(w.value as number));
      else if (w.type === 'array' && w.itemType === 'f32') expect(got.value, k).toEqual((w.value as number[]).map(Math.fround));
      else if (w.type === 'array') {
        expect(got.itemType, k).toBe(w.itemType);
        expect(got.value, k).toEqual(w.value);
      } else expect(got.value, k).toEqual(w.value);
    }
  });
  it('every tensor: name, type, ne, offset, bytes and values', () => {
    expect(f.tensors.map((t) => t.name)).toEqual(want.tensors.map((t) => t.name));
    for (const w of want.tensors) {
      const t = f.tensors.find((x) => x.name === w.name)!;
      expect(t.type.name, w.name).toBe(w.type);
      expect(t.ne, w.name).toEqual(w.ne);
      expect(t.shape, w.name).toEqual([...w.ne].reverse());
      expect(t.fileOffset, w.name).toBe(w.offset);
      expect(t.nbytes, w.name).toBe(w.nbytes);
      expect(sha(ggufTensorBytes(f, t)), w.name).toBe(w.sha256);
      expect(Array.from(ggufTensorF32(f, w.name)), w.name).toEqual(want.values[w.name]!.map(Math.fround));
    }
  });
  it('writing the same metadata and tensors gives gguf-py’s bytes exactly', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'ajuste-gguf-')), 'same.gguf');
    const size = writeGguf(
      out,
      f.kv,
      f.tensors.map((t) => ({ name: t.name, type: t.type.name, shape: t.shape, data: () => ggufTensorBytes(f, t) })),
    );
    const a = readFileSync(out);
    const b = readFileSync(`${DIR}/reader.gguf`);
    expect(size).toBe(b.length);
    expect(sha(a)).toBe(sha(b));
  });
});

describe('writer', () => {
  const tmp = () => join(mkdtempSync(join(tmpdir(), 'ajuste-gguf-')), 'x.gguf');
  it('round-trips every value type', () => {
    const kv: [string, GgufValue][] = [
      ['a.u8', gv.u8(7)],
      ['a.i8', gv.i8(-7)],
      ['a.u16', gv.u16(700)],
      ['a.i16', gv.i16(-700)],
      ['a.u32', gv.u32(70000)],
      ['a.i32', gv.i32(-70000)],
      ['a.f32', gv.f32(0.1)],
      ['a.f64', gv.f64(0.1)],
      ['a.u64', gv.u64(2n ** 64n - 1n)],
      ['a.i64', gv.i64(-(2n ** 63n))],
      ['a.bool', gv.bool(true)],
      ['a.str', gv.str('ção 🦙')],
      ['a.strs', gv.array('string', ['x', '', 'ção'])],
      ['a.i32s', gv.array('i32', Int32Array.from([1, -1]))],
      ['a.bools', gv.array('bool', [false, true])],
    ];
    const p = tmp();
    writeGguf(p, kv, [{ name: 'w', type: 'F32', shape: [2, 3], data: bytesOf(Float32Array.from([1, 2, 3, 4, 5, 6])) }]);
    const f = readGguf(p);
    expect([...f.kv.keys()]).toEqual(kv.map(([k]) => k));
    expect(jsonView(f.kv.get('a.f32')!).value).toBe(Math.fround(0.1));
    expect(jsonView(f.kv.get('a.f64')!).value).toBe(0.1);
    expect(jsonView(f.kv.get('a.u64')!).value).toBe((2n ** 64n - 1n).toString());
    expect(jsonView(f.kv.get('a.strs')!).value).toEqual(['x', '', 'ção']);
    expect(jsonView(f.kv.get('a.str')!).value).toBe('ção 🦙');
    expect(f.tensors[0]!.ne).toEqual([3, 2]);
    expect(Array.from(ggufTensorF32(f, 'w'))).toEqual([1, 2, 3, 4, 5, 6]);
  });
  it('refuses what llama.cpp would refuse, naming the key or tensor', () => {
    const w = (kv: [string, GgufValue][], t: Parameters<typeof writeGguf>[2] = []) => () => writeGguf(tmp(), kv, t);
    expect(w([['a', gv.u8(256)]])).toThrow(/key 'a'.*not an integer in \[0, 255\]/);
    expect(w([['a', gv.u32(1)], ['a', gv.u32(2)]])).toThrow(/duplicate metadata key 'a'/);
    expect(w([['a', gv.array('u32', [])]])).toThrow(/key 'a': empty array/);
    expect(w([['general.alignment', gv.u32(48)]])).toThrow(/power of two/);
    const f32 = (n: number) => bytesOf(new Float32Array(n));
    expect(w([], [{ name: 'x'.repeat(64), type: 'F32', shape: [1], data: f32(1) }])).toThrow(/1 to 63 bytes/);
    expect(w([], [{ name: 'a', type: 'F32', shape: [1], data: f32(1) }, { name: 'a', type: 'F32', shape: [1], data: f32(1) }])).toThrow(/'a': duplicate/);
    expect(w([], [{ name: 'q', type: 'Q8_0', shape: [2, 33], data: new Uint8Array(0) }])).toThrow(/rows of 33 values are not whole Q8_0 blocks of 32/);
    expect(w([], [{ name: 'a', type: 'F32', shape: [2, 2], data: f32(3) }])).toThrow(/'a': F32 shape \[2, 2\] needs 16 bytes, got 12/);
    expect(w([], [{ name: 'a', type: 'F32', shape: [1, 1, 1, 1, 1], data: f32(1) }])).toThrow(/at most 4/);
  });
  it('a failed write leaves no file and no temp file behind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ajuste-gguf-'));
    expect(() =>
      writeGguf(join(dir, 'x.gguf'), [], [
        {
          name: 'a',
          type: 'F32',
          shape: [1],
          data: () => {
            throw new UserError('producer failed');
          },
        },
      ]),
    ).toThrow(UserError);
    expect(readdirSync(dir)).toEqual([]);
  });
  it('pads the data section and each tensor to the alignment', () => {
    const { header } = serializeGgufHeader([['general.alignment', gv.u32(64)]], [
      { name: 'a', type: 'F32', shape: [3], data: new Uint8Array(12) },
      { name: 'b', type: 'F32', shape: [1], data: new Uint8Array(4) },
    ]);
    const p = tmp();
    const size = writeGguf(p, [['general.alignment', gv.u32(64)]], [
      { name: 'a', type: 'F32', shape: [3], data: bytesOf(Float32Array.from([1, 2, 3])) },
      { name: 'b', type: 'F32', shape: [1], data: bytesOf(Float32Array.from([4])) },
    ]);
    const f = readGguf(p);
    expect(f.dataOffset).toBe(Math.ceil(header.length / 64) * 64);
    expect(f.tensors.map((t) => t.offset)).toEqual([0, 64]);
    expect(size).toBe(f.dataOffset + 128);
    expect(readFileSync(p).length).toBe(size);
  });
});

/** A GGUF file built by hand (so it can be wrong): header counts, raw KV bytes, raw tensor-info bytes, data. */
class Raw {
  parts: number[] = [];
  u32(v: number) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(...b);
    return this;
  }
  u64(v: number | bigint) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.parts.push(...b);
    return this;
  }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.parts.push(...b);
    return this;
  }
  bytes(b: ArrayLike<number>) {
    this.parts.push(...Array.from(b));
    return this;
  }
  pad(align = 32) {
    while (this.parts.length % align) this.parts.push(0);
    return this;
  }
  done() {
    return Uint8Array.from(this.parts);
  }
}

const header = (nTensors: number, nKv: number, version = 3) => new Raw().bytes(Buffer.from('GGUF')).u32(version).u64(nTensors).u64(nKv);

function expectBad(bytes: Uint8Array, pattern: RegExp): void {
  let err: unknown;
  try {
    parseGguf(bytes, 'bad.gguf');
  } catch (e) {
    err = e;
  }
  expect(err, 'no error').toBeInstanceOf(UserError);
  expect((err as Error).message).toMatch(/^bad\.gguf: invalid GGUF file: /);
  expect((err as Error).message).toMatch(pattern);
}

describe('reader hardening', () => {
  const good = readFileSync(`${DIR}/reader.gguf`);

  it('every truncation of a valid file is a clear error, never a crash', () => {
    const f = parseGguf(good, 'x');
    const lastTensorEnd = Math.max(...f.tensors.map((t) => t.fileOffset + t.nbytes));
    for (let n = 0; n < lastTensorEnd; n++) {
      let err: unknown;
      try {
        parseGguf(good.subarray(0, n), 'bad.gguf');
      } catch (e) {
        err = e;
      }
      expect(err, `cut at ${n}: no error`).toBeInstanceOf(UserError);
      expect((err as Error).message, `cut at ${n}`).toMatch(/truncated|too short/);
    }
    // padding after the last tensor is not needed (llama.cpp does not need it either)
    expect(parseGguf(good.subarray(0, lastTensorEnd), 'x').tensors.length).toBe(f.tensors.length);
  });
  it('bad magic', () => {
    expectBad(Uint8Array.from(Buffer.from('GGML\x03\x00\x00\x00')), /starts with 'GGML', not the magic 'GGUF'/);
    expectBad(Uint8Array.from([0x7b, 0x22, 0, 0, 1, 2, 3, 4]), /starts with '\{"\\x00\\x00'/);
    expectBad(Uint8Array.from(Buffer.from('FUGG')), /big-endian/);
  });
  it('bad version', () => {
    expectBad(header(0, 0, 1).done(), /version 1 is not supported.*obsolete/);
    expectBad(header(0, 0, 4).done(), /version 4 is not supported/);
    expectBad(header(0, 0, 0x03000000).done(), /byte-swapped/);
    expect(parseGguf(header(0, 0, 2).done(), 'v2').version).toBe(2);
  });
  it('counts past the end of the file', () => {
    expectBad(header(0, 1_000_000).done(), /claims 1000000 metadata entries.*count is corrupt/);
    expectBad(header(2 ** 40, 0).done(), /claims 1099511627776 tensors/);
    expectBad(header(0, 1).u64(2n ** 63n).bytes(new Uint8Array(16)).done(), /length of metadata key #0 is 9223372036854775808/);
    expectBad(header(0, 1).str('k').u32(9).u32(4).u64(1e9).bytes(new Uint8Array(16)).done(), /key 'k' claims 1000000000 u32 items/);
    expectBad(header(0, 1).str('k').u32(8).u64(1000).bytes(Buffer.from('short')).bytes(new Uint8Array(10)).done(), /value of key 'k' is 1000 bytes long but only 15 bytes are left/);
  });
  it('bad value types, nested arrays, duplicate keys, bad alignment', () => {
    expectBad(header(0, 1).str('k').u32(13).bytes(new Uint8Array(8)).done(), /key 'k' has unknown value type 13/);
    expectBad(header(0, 1).str('k').u32(9).u32(9).u64(1).bytes(new Uint8Array(8)).done(), /key 'k' is an array of arrays/);
    expectBad(header(0, 2).str('k').u32(0).bytes([1]).str('k').u32(0).bytes([2]).done(), /key 'k' appears twice/);
    expectBad(header(0, 1).str('k').u32(7).bytes([2]).bytes(new Uint8Array(20)).done(), /bool with byte value 2/);
    expectBad(header(0, 1).str('general.alignment').u32(4).u32(48).done(), /general\.alignment must be a u32 power of two, got u32 48/);
    expectBad(header(0, 1).str('general.alignment').u32(0).bytes([32]).bytes(new Uint8Array(20)).done(), /general\.alignment must be a u32 power of two, got u8 32/);
    expectBad(header(0, 1).str('').u32(0).bytes([1]).bytes(new Uint8Array(20)).done(), /metadata key #0 is empty/);
    expectBad(header(0, 1).u64(2).bytes([0xff, 0xfe]).u32(0).bytes([1]).bytes(new Uint8Array(20)).done(), /metadata key #0 is not valid UTF-8/);
  });
  const info = (r: Raw, name: string, ne: number[], type: number, offset: number) => {
    r.str(name).u32(ne.length);
    for (const d of ne) r.u64(d);
    return r.u32(type).u64(offset);
  };
  it('bad tensor type, dims, names, block size, offsets', () => {
    const t = (name: string, ne: number[], type: number, offset: number, data = 64) => info(header(1, 0), name, ne, type, offset).pad().bytes(new Uint8Array(data)).done();
    expectBad(t('w', [4], 4, 0), /tensor 'w' has unknown ggml type 4/);
    expectBad(t('w', [4], 99, 0), /tensor 'w' has unknown ggml type 99/);
    expectBad(t('w', [1, 1, 1, 1, 1], 0, 0), /tensor 'w' has 5 dimensions; llama.cpp allows at most 4/);
    expectBad(t('q', [33, 2], 8, 0), /tensor 'q': Q8_0 rows must be whole blocks of 32 values, but ne\[0\] = 33/);
    expectBad(t('x'.repeat(64), [1], 0, 0), /the name is 64 bytes; llama\.cpp allows at most 63/);
    expectBad(t('w', [4], 0, 32), /tensor 'w' has data offset 32, expected 0/);
    expectBad(t('w', [2 ** 20, 2 ** 20], 0, 0), /tensor 'w'.*runs past the end of the file/);
    expectBad(t('w', [2 ** 27, 2 ** 27, 2 ** 27], 0, 0), /tensor 'w' has shape ne=\[134217728, 134217728\.\.\.\], too many elements/);
    const two = info(info(header(2, 0), 'a', [4], 0, 0), 'a', [4], 0, 32).pad().bytes(new Uint8Array(64)).done();
    expectBad(two, /tensor 'a' appears twice/);
  });
  it('a tensor past the end of the file', () => {
    const bytes = info(header(1, 0), 'w', [16], 0, 0).pad().bytes(new Uint8Array(60)).done();
    expectBad(bytes, /tensor 'w' \(F32 ne=\[16\], bytes \d+\.\.\d+\) runs past the end of the file \(\d+ bytes\): the file is truncated/);
    const ok = info(header(1, 0), 'w', [16], 0, 0).pad().bytes(new Uint8Array(64)).done();
    expect(Array.from(ggufTensorF32(parseGguf(ok, 'x'), 'w', ok))).toEqual(new Array(16).fill(0));
  });
  it('names the file when it is missing or a folder', () => {
    expect(() => readGguf('/nonexistent/x.gguf')).toThrow(/no such file/);
    expect(() => readGguf(DIR)).toThrow(/folder, not a GGUF file/);
  });
  it('a file that is not GGUF (safetensors) is refused at the magic', () => {
    const p = join(mkdtempSync(join(tmpdir(), 'ajuste-gguf-')), 'm.gguf');
    writeFileSync(p, readFileSync('test/fixtures/models/llama-gqa/model.safetensors').subarray(0, 100));
    expect(() => readGguf(p)).toThrow(/not the magic 'GGUF'/);
  });
});
