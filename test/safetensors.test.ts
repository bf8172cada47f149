import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../src/io/atomic.js';
import { f32ToBf16, f32ToF16 } from '../src/io/dtypes.js';
import {
  parseSafetensors,
  readSafetensors,
  readSafetensorsFolder,
  readSafetensorsHeader,
  readSafetensorsInRangesForTest,
  type TensorToWrite,
  writeSafetensors,
} from '../src/io/safetensors.js';
import { loadAddon } from '../src/kernels/native/index.js';

const GOLDEN = new URL('./fixtures/safetensors/golden.safetensors', import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), 'ajuste-st-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const tmpFile = (name = 'f.safetensors'): string => join(tmp, `${counter++}-${name}`);

/** A raw file: u64 header length, header text (padded to 8 unless told), data bytes. */
function rawFile(header: string | object | Buffer, data: Uint8Array | number = 0, opts: { len?: bigint; pad?: boolean } = {}): string {
  let h = Buffer.isBuffer(header) ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  if (opts.pad !== false && h.length % 8) h = Buffer.concat([h, Buffer.alloc(8 - (h.length % 8), 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.len ?? BigInt(h.length));
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const p = tmpFile();
  writeFileSync(p, Buffer.concat([len, h, d]));
  return p;
}

/** The golden file's tensors, rebuilt here from the same formulas as tools/fixtures/safetensors.py. */
function goldenTensors(): Map<string, TensorToWrite> {
  const src = parseSafetensors(new Uint8Array(readFileSync(GOLDEN))).tensors.get('conv.src')!.data as Float32Array;
  const m = new Map<string, TensorToWrite>();
  // insertion order deliberately unlike the file's order
  m.set('mask', { dtype: 'BOOL', shape: [4], data: Uint8Array.from([1, 0, 1, 1]) });
  m.set('ñame.weight', { dtype: 'F32', shape: [2], data: Float32Array.from([1, -2]) });
  m.set('conv.f16', { dtype: 'F16', shape: [src.length], data: f32ToF16(src) });
  m.set('b.f64', { dtype: 'F64', shape: [2, 3], data: Float64Array.from({ length: 6 }, (_, i) => (i - 2.5) / 3) });
  m.set('conv.bf16', { dtype: 'BF16', shape: [src.length], data: f32ToBf16(src) });
  m.set('a.i64', { dtype: 'I64', shape: [3], data: BigInt64Array.from([-1n, 2n ** 40n, 7n]) });
  m.set('z.i32', { dtype: 'I32', shape: [2, 2], data: Int32Array.from([-5, 0, 6, 2 ** 31 - 1]) });
  m.set('m.i16', { dtype: 'I16', shape: [3], data: Int16Array.from([-300, 0, 300]) });
  m.set('l.u8', { dtype: 'U8', shape: [5], data: Uint8Array.from([0, 1, 2, 254, 255]) });
  m.set('k.i8', { dtype: 'I8', shape: [3], data: Int8Array.from([-128, 0, 127]) });
  m.set('u.u16', { dtype: 'U16', shape: [2], data: Uint16Array.from([1, 65535]) });
  m.set('u.u32', { dtype: 'U32', shape: [2], data: Uint32Array.from([1, 2 ** 32 - 1]) });
  m.set('u.u64', { dtype: 'U64', shape: [2], data: BigUint64Array.from([1n, 2n ** 64n - 1n]) });
  m.set('f8', { dtype: 'F8_E4M3', shape: [4], data: Uint8Array.from([0x38, 0xb8, 0x7e, 0x00]) });
  m.set('empty', { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) });
  m.set('scalar', { dtype: 'F32', shape: [], data: Float32Array.from([3.5]) });
  m.set('conv.src', { dtype: 'F32', shape: [src.length], data: src });
  return m;
}

describe('writeSafetensors', () => {
  it('is byte-identical to the Python/Rust serializer (golden file)', () => {
    const p = tmpFile();
    writeSafetensors(p, goldenTensors(), { format: 'pt' });
    const got = readFileSync(p);
    const want = readFileSync(GOLDEN);
    expect(got.subarray(0, 8 + Number(want.readBigUInt64LE(0))).toString()).toBe(want.subarray(0, 8 + Number(want.readBigUInt64LE(0))).toString());
    expect(got.equals(want)).toBe(true);
  });
  it('accepts a Record, pads the header with spaces to 8, writes no __metadata__ when none is given', () => {
    const p = tmpFile();
    writeSafetensors(p, { x: { dtype: 'F32', shape: [1], data: Float32Array.from([2]) } });
    const b = readFileSync(p);
    const n = Number(b.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const h = b.subarray(8, 8 + n).toString();
    expect(h).toBe('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.padEnd(n, ' '));
    expect(b.length).toBe(8 + n + 4);
  });
  it('rejects wrong sizes, unknown dtypes and the reserved name', () => {
    const p = tmpFile();
    expect(() => writeSafetensors(p, { w: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } })).toThrow(/tensor "w": F32 shape \[2, 2\] needs 16 bytes, data has 12/);
    expect(() => writeSafetensors(p, { w: { dtype: 'F12', shape: [1], data: new Float32Array(1) } })).toThrow(/tensor "w": unknown dtype "F12"/);
    expect(() => writeSafetensors(p, { __metadata__: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } })).toThrow(/reserved/);
    expect(() => writeSafetensors(p, { w: { dtype: 'U8', shape: [-1], data: new Uint8Array(1) } })).toThrow(/non-negative integers/);
    expect(readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
  it('writes views with a byte offset (only their own bytes)', () => {
    const p = tmpFile();
    const big = Float32Array.from([9, 1, 2, 9]);
    writeSafetensors(p, { v: { dtype: 'F32', shape: [2], data: big.subarray(1, 3) } });
    expect([...(readSafetensors(p, { copy: true }).tensors.get('v')!.data as Float32Array)]).toEqual([1, 2]);
  });
});

describe('readSafetensors', () => {
  for (const copy of [false, true]) {
    it(`reads every dtype of the golden file (copy: ${copy})`, () => {
      const f = readSafetensors(GOLDEN, { copy });
      expect(f.mapped).toBe(!copy);
      expect(f.metadata).toEqual({ format: 'pt' });
      const t = (k: string) => f.tensors.get(k)!;
      expect(t('b.f64')).toMatchObject({ dtype: 'F64', shape: [2, 3] });
      expect([...(t('b.f64').data as Float64Array)]).toEqual([0, 1, 2, 3, 4, 5].map((i) => (i - 2.5) / 3));
      expect([...(t('a.i64').data as BigInt64Array)]).toEqual([-1n, 2n ** 40n, 7n]);
      expect([...(t('u.u64').data as BigUint64Array)]).toEqual([1n, 2n ** 64n - 1n]);
      expect([...(t('z.i32').data as Int32Array)]).toEqual([-5, 0, 6, 2 ** 31 - 1]);
      expect([...(t('u.u32').data as Uint32Array)]).toEqual([1, 2 ** 32 - 1]);
      expect([...(t('m.i16').data as Int16Array)]).toEqual([-300, 0, 300]);
      expect([...(t('u.u16').data as Uint16Array)]).toEqual([1, 65535]);
      expect([...(t('k.i8').data as Int8Array)]).toEqual([-128, 0, 127]);
      expect([...(t('l.u8').data as Uint8Array)]).toEqual([0, 1, 2, 254, 255]);
      expect([...(t('mask').data as Uint8Array)]).toEqual([1, 0, 1, 1]);
      expect(t('f8')).toMatchObject({ dtype: 'F8_E4M3', shape: [4] });
      expect(t('empty')).toMatchObject({ dtype: 'F32', shape: [0, 3] });
      expect(t('empty').data.length).toBe(0);
      expect(t('scalar').shape).toEqual([]);
      expect([...(t('scalar').data as Float32Array)]).toEqual([3.5]);
      expect([...(t('ñame.weight').data as Float32Array)]).toEqual([1, -2]);
      expect(f.tensors.size).toBe(17);
      // all aligned: zero-copy views over one buffer
      expect(new Set([...f.tensors.values()].map((x) => x.data.buffer)).size).toBe(1);
    });
  }
  it('copies only the tensor whose offset is misaligned', () => {
    // U8 [1] first then F32 [2] at data offset 1: the F32 is misaligned for a zero-copy Float32Array
    const data = new Uint8Array(9);
    data[0] = 7;
    new DataView(data.buffer).setFloat32(1, 1.5, true);
    new DataView(data.buffer).setFloat32(5, -3, true);
    const p = rawFile({ b: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, f: { dtype: 'F32', shape: [2], data_offsets: [1, 9] } }, data);
    for (const copy of [false, true]) {
      const f = readSafetensors(p, { copy });
      const u = f.tensors.get('b')!.data;
      const x = f.tensors.get('f')!.data;
      expect([...u]).toEqual([7]);
      expect([...(x as Float32Array)]).toEqual([1.5, -3]);
      expect(x.buffer).not.toBe(u.buffer);
      expect(x.buffer.byteLength).toBe(8);
    }
  });
  it('gives writable arrays with {copy: true}', () => {
    const f = readSafetensors(GOLDEN, { copy: true });
    const d = f.tensors.get('scalar')!.data as Float32Array;
    d[0] = 4;
    expect(d[0]).toBe(4);
    expect(readSafetensors(GOLDEN).tensors.get('scalar')!.data[0]).toBe(3.5);
  });
  it('reads the header alone', () => {
    const h = readSafetensorsHeader(GOLDEN);
    expect(h.entries.get('conv.src')!.dtype).toBe('F32');
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.headerLength % 8).toBe(0);
  });
  it('says when the file does not exist', () => {
    expect(() => readSafetensors(join(tmp, 'nope.safetensors'))).toThrow(/nope\.safetensors: no such file/);
  });
});

describe('malformed files give clear errors', () => {
  const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const cases: [string, () => string, RegExp][] = [
    ['empty file', () => rawFile('', 0, { len: 0n, pad: false }), /invalid safetensors file: the header length 0 is too short/],
    ['shorter than 8 bytes', () => {
      const p = tmpFile();
      writeFileSync(p, Buffer.from([1, 2, 3]));
      return p;
    }, /it is 3 bytes, shorter than the 8-byte header length/],
    ['truncated file (data cut off)', () => rawFile(ok, 5), /tensor "w": data_offsets \[0, 8\] run past the end of the data area \(5 bytes\); the file is probably truncated/],
    ['header length > file', () => rawFile(ok, 8, { len: 5000n }), /the header length 5000 exceeds the file size/],
    ['header too long (>100 MB claimed)', () => rawFile(ok, 8, { len: 2n ** 63n }), /the header length 9223372036854775808 exceeds the 100000000-byte limit/],
    ['invalid JSON', () => rawFile('{"w": {"dtype": "F32",', 8), /the header is not valid JSON/],
    ['not an object', () => rawFile('[1,2,3]', 0), /does not start with "\{"/],
    ['JSON array value', () => rawFile('{"w": [1]}', 0), /tensor "w": expected \{dtype, shape, data_offsets\}/],
    ['invalid UTF-8', () => rawFile(Buffer.from([0x7b, 0xff, 0x7d]), 0), /the header is not valid UTF-8/],
    ['bad dtype', () => rawFile({ w: { dtype: 'F17', shape: [2], data_offsets: [0, 8] } }, 8), /tensor "w": unknown dtype "F17"/],
    ['shape/offset size mismatch', () => rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), /tensor "w": F32 shape \[3\] needs 12 bytes but data_offsets \[0, 8\] span 8/],
    ['offsets past the end', () => rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, 8), /tensor "w": data_offsets \[8, 16\] run past the end/],
    ['end before begin', () => rawFile({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, 8), /tensor "w": data_offsets \[8, 0\] end before they begin/],
    ['overlapping tensors', () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /tensor "b" \(data_offsets \[4, 12\]\) overlaps tensor "a"/],
    ['gap between tensors', () => rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12), /gap in the data area: bytes 4\.\.8 belong to no tensor \(before tensor "b"\)/],
    ['trailing bytes after the last tensor', () => rawFile(ok, 12), /the tensors cover 8 bytes of the 12-byte data area/],
    ['negative shape', () => rawFile({ w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, 8), /tensor "w": shape \[-2\] has -2, not a non-negative integer/],
    ['non-integer shape', () => rawFile({ w: { dtype: 'F32', shape: [2.5], data_offsets: [0, 10] } }, 10), /tensor "w": shape \[2\.5\] has 2\.5, not a non-negative integer/],
    ['string shape', () => rawFile({ w: { dtype: 'F32', shape: '2', data_offsets: [0, 8] } }, 8), /tensor "w": "shape" must be an array/],
    ['huge shape', () => rawFile({ w: { dtype: 'U8', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, 8), /tensor "w": shape .* has too many elements/],
    ['bad offsets', () => rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [0] } }, 8), /tensor "w": "data_offsets" must be \[begin, end\]/],
    ['non-string metadata', () => rawFile({ __metadata__: { step: 3 }, ...ok }, 8), /"__metadata__" key "step" must be a string/],
  ];
  for (const [name, make, re] of cases) {
    it(name, () => {
      const p = make();
      for (const copy of [false, true]) {
        let err: Error | undefined;
        try {
          readSafetensors(p, { copy });
        } catch (e) {
          err = e as Error;
        }
        expect(err, 'should throw').toBeInstanceOf(Error);
        expect(err!.message).toContain(p);
        expect(err!.message).toMatch(re);
      }
      expect(() => readSafetensorsHeader(p)).toThrow(re);
    });
  }
});

describe('memory mapping (native addon)', () => {
  it('the addon exports mmapFile and it maps files read-only', () => {
    const addon = loadAddon();
    expect(addon, 'build the addon: npm run build:native').not.toBeNull();
    const mmapFile = addon!.mmapFile as (p: string) => ArrayBuffer;
    const ab = mmapFile(GOLDEN);
    expect(ab.byteLength).toBe(readFileSync(GOLDEN).length);
    expect(Buffer.from(ab).equals(readFileSync(GOLDEN))).toBe(true);
    expect(() => mmapFile(join(tmp, 'missing'))).toThrow(/cannot open .*missing: No such file or directory/);
    expect(() => mmapFile(tmp)).toThrow(/is not a regular file/);
    const ranged = (addon!.mmapFile as (p: string, o: number, l: number) => ArrayBuffer)(GOLDEN, 5000, 100);
    expect(Buffer.from(ranged).equals(readFileSync(GOLDEN).subarray(5000, 5100))).toBe(true);
    expect(() => (addon!.mmapFile as (p: string, o: number, l: number) => ArrayBuffer)(GOLDEN, 8000, 1000)).toThrow(/past the end/);
  });
  it('maps a 100 MB file without reading it, values right once touched', () => {
    const n = 100_000_000;
    const p = tmpFile();
    const header = Buffer.from(JSON.stringify({ big: { dtype: 'U8', shape: [n], data_offsets: [0, n] } }).padEnd(64, ' '));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    const fd = openSync(p, 'w');
    writeSync(fd, Buffer.concat([len, header]));
    ftruncateSync(fd, 8 + header.length + n); // sparse: reads as zeros
    writeSync(fd, Buffer.from([42]), 0, 1, 8 + header.length + n - 1);
    closeSync(fd);

    const before = process.memoryUsage().rss;
    const f = readSafetensors(p);
    const afterMap = process.memoryUsage().rss;
    expect(f.mapped).toBe(true);
    const d = f.tensors.get('big')!.data as Uint8Array;
    expect(d.length).toBe(n);
    expect((afterMap - before) / 2 ** 20).toBeLessThan(40);
    let s = 0;
    for (let i = 0; i < n; i += 4096) s += d[i]!;
    s += d[n - 1]!;
    expect(s).toBe(42);
    const touched = process.memoryUsage().rss;
    expect((touched - before) / 2 ** 20).toBeGreaterThan(60); // the measurement itself works
  });
});

describe('files bigger than one ArrayBuffer (read in ranges)', () => {
  it('gives the same tensors when read in small ranges, mapped or copied', () => {
    const whole = readSafetensors(GOLDEN, { copy: true });
    for (const copy of [false, true]) {
      const f = readSafetensorsInRangesForTest(GOLDEN, { copy, maxSegment: 4000 });
      expect(f.mapped).toBe(!copy);
      expect([...f.tensors.keys()]).toEqual([...whole.tensors.keys()]);
      for (const [k, t] of whole.tensors) {
        expect(f.tensors.get(k)!.shape).toEqual(t.shape);
        expect([...f.tensors.get(k)!.data]).toEqual([...t.data]);
      }
      expect(new Set([...f.tensors.values()].map((x) => x.data.buffer)).size).toBeGreaterThan(1);
    }
    expect(() => readSafetensorsInRangesForTest(GOLDEN, { maxSegment: 1000 })).toThrow(/tensor "conv.src" is 3680 bytes, more than one ArrayBuffer can hold \(1000\)/);
  });
  it('maps a sparse 5 GB file (over Node 20\'s 4 GiB buffer limit)', () => {
    const n = 5 * 2 ** 30;
    const p = tmpFile();
    const header = Buffer.from(JSON.stringify({
        a: { dtype: 'U8', shape: [3 * 2 ** 30], data_offsets: [0, 3 * 2 ** 30] },
        c: { dtype: 'U8', shape: [2 * 2 ** 30 - 8], data_offsets: [3 * 2 ** 30, n - 8] },
        b: { dtype: 'F32', shape: [2], data_offsets: [n - 8, n] },
      }).padEnd(256, ' '));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    const fd = openSync(p, 'w');
    writeSync(fd, Buffer.concat([len, header]));
    ftruncateSync(fd, 8 + header.length + n);
    writeSync(fd, Buffer.from(Float32Array.from([1.5, -2]).buffer), 0, 8, 8 + header.length + n - 8);
    closeSync(fd);
    try {
      const f = readSafetensors(p);
      expect(f.mapped).toBe(true);
      expect([...(f.tensors.get('b')!.data as Float32Array)]).toEqual([1.5, -2]);
      expect(f.tensors.get('a')!.data.length).toBe(3 * 2 ** 30);
      expect(f.tensors.get('c')!.data.length).toBe(2 * 2 ** 30 - 8);
      expect(f.tensors.get('c')!.data[5]).toBe(0);
      expect(f.tensors.get('a')!.data.buffer).not.toBe(f.tensors.get('b')!.data.buffer);
    } finally {
      rmSync(p);
    }
  });
});

describe('readSafetensorsFolder', () => {
  const mk = (): string => {
    const d = join(tmp, `folder-${counter++}`);
    mkdirSync(d);
    return d;
  };
  const f32 = (...v: number[]): TensorToWrite => ({ dtype: 'F32', shape: [v.length], data: Float32Array.from(v) });
  const index = (weightMap: Record<string, string>) => JSON.stringify({ metadata: { total_size: 16 }, weight_map: weightMap });

  it('reads model.safetensors', () => {
    const d = mk();
    writeSafetensors(join(d, 'model.safetensors'), { a: f32(1, 2) }, { format: 'pt' });
    const r = readSafetensorsFolder(d);
    expect([...(r.tensors.get('a')!.data as Float32Array)]).toEqual([1, 2]);
    expect(r.metadata).toEqual({ format: 'pt' });
    expect(r.files).toEqual([join(d, 'model.safetensors')]);
  });
  it('reads a sharded checkpoint through its index', () => {
    const d = mk();
    writeSafetensors(join(d, 'model-00001-of-00002.safetensors'), { a: f32(1), b: f32(2) }, { format: 'pt' });
    writeSafetensors(join(d, 'model-00002-of-00002.safetensors'), { c: f32(3, 4) }, { format: 'pt' });
    writeFileSync(join(d, 'model.safetensors.index.json'), index({ a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' }));
    const r = readSafetensorsFolder(d, { copy: true });
    expect([...r.tensors.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect([...(r.tensors.get('c')!.data as Float32Array)]).toEqual([3, 4]);
    expect(r.indexMetadata).toEqual({ total_size: 16 });
    expect(r.files.length).toBe(2);
    expect(r.mapped).toBe(false);
  });
  it('checks the index against the shards', () => {
    const d = mk();
    writeSafetensors(join(d, 's1.safetensors'), { a: f32(1) });
    writeSafetensors(join(d, 's2.safetensors'), { a: f32(2), b: f32(3) });
    writeFileSync(join(d, 'model.safetensors.index.json'), index({ a: 's1.safetensors', x: 's1.safetensors' }));
    expect(() => readSafetensorsFolder(d)).toThrow(/1 tensor\(s\) of the weight_map are not in their shard: "x" \(index says s1.safetensors, found nowhere\)/);
    writeFileSync(join(d, 'model.safetensors.index.json'), index({ a: 's1.safetensors', b: 's2.safetensors' }));
    expect(() => readSafetensorsFolder(d)).toThrow(/tensor "a" is in two shards, s1.safetensors and s2.safetensors/);
    writeFileSync(join(d, 'model.safetensors.index.json'), index({ a: 's1.safetensors', b: 's3.safetensors' }));
    expect(() => readSafetensorsFolder(d)).toThrow(/shard s3.safetensors is missing/);
    writeFileSync(join(d, 'model.safetensors.index.json'), index({ a: '../s1.safetensors' }));
    expect(() => readSafetensorsFolder(d)).toThrow(/weight_map\["a"\] must be a file name in the same folder/);
    writeFileSync(join(d, 'model.safetensors.index.json'), '{"weight_map": ');
    expect(() => readSafetensorsFolder(d)).toThrow(/model.safetensors.index.json: not valid JSON/);
  });
  it('refuses pickled checkpoints and says how to convert', () => {
    const d = mk();
    writeFileSync(join(d, 'config.json'), '{}');
    writeFileSync(join(d, 'pytorch_model.bin'), 'PK');
    let err: (Error & { hint?: string }) | undefined;
    try {
      readSafetensorsFolder(d);
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message).toMatch(/only pickled PyTorch weights \(pytorch_model.bin\); ajuste refuses them because loading a pickle can run arbitrary code/);
    expect(err?.hint).toContain(`save_pretrained('${d}', safe_serialization=True)`);
  });
  it('says what is missing in a folder without weights', () => {
    const d = mk();
    expect(() => readSafetensorsFolder(d)).toThrow(/has no model.safetensors or model.safetensors.index.json/);
    expect(() => readSafetensorsFolder(join(d, 'nope'))).toThrow(/no such folder/);
    expect(() => readSafetensorsFolder(GOLDEN)).toThrow(/is a file, not a model folder/);
  });
});

describe('writeFileAtomic', () => {
  it('writes strings, bytes and chunk lists, replaces the old file and leaves no temp file', () => {
    const d = join(tmp, `atomic-${counter++}`, 'sub');
    const p = join(d, 'x.txt');
    writeFileAtomic(p, 'héllo');
    expect(readFileSync(p, 'utf8')).toBe('héllo');
    writeFileAtomic(p, [Uint8Array.from([97, 98]), new Uint8Array(0), Uint8Array.from([99])]);
    expect(readFileSync(p, 'utf8')).toBe('abc');
    writeFileAtomic(p, Uint8Array.from([100]));
    expect(readFileSync(p, 'utf8')).toBe('d');
    expect(readdirSync(d)).toEqual(['x.txt']);
  });
  it('leaves the target untouched and removes the temp file on failure', () => {
    const d = join(tmp, `atomic-${counter++}`);
    mkdirSync(join(d, 'target'), { recursive: true });
    writeFileSync(join(d, 'target', 'keep'), '1');
    expect(() => writeFileAtomic(join(d, 'target'), 'data')).toThrow(/cannot write .*target/);
    expect(readdirSync(d)).toEqual(['target']);
    expect(readdirSync(join(d, 'target'))).toEqual(['keep']);
  });
});
