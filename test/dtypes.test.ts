import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bf16ToF32, DTYPES, dtypeSize, f16ToF32, f32ToBf16, f32ToF16, SAFETENSORS_DTYPES } from '../src/io/dtypes.js';
import { parseSafetensors } from '../src/io/safetensors.js';

const GOLDEN = new URL('./fixtures/safetensors/golden.safetensors', import.meta.url);

function fromBits(bits: number[]): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}
function bitsOf(a: Float32Array): number[] {
  return [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
}
const hex = (xs: ArrayLike<number>): string[] => Array.from(xs, (x) => `0x${x.toString(16)}`);

/** Independent f16 decoder (arithmetic, no bit tricks). */
function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

describe('dtype table', () => {
  it('has every safetensors dtype with its size and view', () => {
    expect(SAFETENSORS_DTYPES).toEqual(['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'F64', 'I64', 'U64']);
    const sizes = Object.fromEntries(SAFETENSORS_DTYPES.map((d) => [d, DTYPES[d].size]));
    expect(sizes).toEqual({ BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8 });
    expect(DTYPES.BF16.array).toBe(Uint16Array);
    expect(DTYPES.F16.array).toBe(Uint16Array);
    expect(DTYPES.F8_E4M3.array).toBe(Uint8Array);
    expect(DTYPES.BOOL.array).toBe(Uint8Array);
    expect(DTYPES.I64.array).toBe(BigInt64Array);
    expect(DTYPES.U64.array).toBe(BigUint64Array);
    expect(DTYPES.I8.array).toBe(Int8Array);
    expect(DTYPES.F64.rank).toBeGreaterThan(DTYPES.F32.rank);
    expect(DTYPES.F32.rank).toBeGreaterThan(DTYPES.BF16.rank);
    expect(DTYPES.BF16.rank).toBeGreaterThan(DTYPES.F16.rank);
    expect(() => dtypeSize('F4')).toThrow(/unknown safetensors dtype "F4"/);
    expect(() => dtypeSize('toString')).toThrow(/unknown/);
  });
});

describe('bf16', () => {
  it('rounds to nearest even (hand-computed, agrees with torch)', () => {
    const src = [0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x7f7fffff, 0x7f800000, 0xff800000, 0x80000000, 0x3f7fffff, 0x00000001, 0x0000ffff];
    expect(hex(f32ToBf16(fromBits(src)))).toEqual(['0x3f80', '0x3f80', '0x3f82', '0x3f81', '0x7f80', '0x7f80', '0xff80', '0x8000', '0x3f80', '0x0', '0x1']);
  });
  it('keeps NaN a NaN (sign and payload kept, quiet bit set)', () => {
    const out = f32ToBf16(fromBits([0x7fc00000, 0xffc00001, 0x7f800001, 0x7fa00000]));
    expect(hex(out)).toEqual(['0x7fc0', '0xffc0', '0x7fc0', '0x7fe0']);
    expect(bf16ToF32(out).every(Number.isNaN)).toBe(true);
  });
  it('bf16 -> f32 -> bf16 is the identity on all 65536 patterns (NaN stays NaN)', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f = bf16ToF32(all);
    expect(bitsOf(f.subarray(0x3f80, 0x3f81))).toEqual([0x3f800000]);
    const back = f32ToBf16(f);
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(f[i]!)) expect(Number.isNaN(bf16ToF32(back.subarray(i, i + 1))[0]!)).toBe(true);
      else if (back[i] !== i) expect(hex([back[i]!])).toEqual(hex([i]));
    }
  });
  it('uses and checks the out argument', () => {
    const out = new Uint16Array(2);
    expect(f32ToBf16(new Float32Array([1, -2]), out)).toBe(out);
    expect(hex(out)).toEqual(['0x3f80', '0xc000']);
    expect(() => f32ToBf16(new Float32Array(3), out)).toThrow(/out has 2 elements, the source has 3/);
    const o32 = new Float32Array(2);
    expect(bf16ToF32(out, o32)).toBe(o32);
    expect([...o32]).toEqual([1, -2]);
  });
  it('works on views with a byte offset', () => {
    const buf = new Float32Array([9, 1, 2]);
    expect(hex(f32ToBf16(buf.subarray(1)))).toEqual(['0x3f80', '0x4000']);
  });
});

describe('f16', () => {
  it('converts hand-computed cases (agree with numpy and torch)', () => {
    const src = [
      0x3f800000, 0x477fe000, 0x477fefff, 0x477ff000, 0x33800000, 0x33000000, 0x33000001, 0x38800000, 0x3dcccccd, 0x3eaaaaab, 0xc0000000, 0x7f800000,
      0xff800000, 0x387fc000, 0x387fe000, 0x80000000, 0x3f801000, 0x3f803000, 0x3f801001, 0x34c00000,
    ];
    expect(hex(f32ToF16(fromBits(src)))).toEqual([
      '0x3c00', '0x7bff', '0x7bff', '0x7c00', '0x1', '0x0', '0x1', '0x400', '0x2e66', '0x3555', '0xc000', '0x7c00',
      '0xfc00', '0x3ff', '0x400', '0x8000', '0x3c00', '0x3c02', '0x3c01', '0x6',
    ]);
  });
  it('maps NaN to sign | 0x7e00 like torch', () => {
    expect(hex(f32ToF16(fromBits([0x7fc00000, 0xffc00000, 0x7f800001])))).toEqual(['0x7e00', '0xfe00', '0x7e00']);
  });
  it('f16 -> f32 is exact for all 65536 patterns', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    for (const f of [f16ToF32(all), f16ToF32(all.subarray(0, 100))]) {
      for (let h = 0; h < f.length; h++) {
        const want = f16Value(h);
        if (Number.isNaN(want)) expect(Number.isNaN(f[h]!)).toBe(true);
        else if (!Object.is(f[h], want)) expect([h, f[h]]).toEqual([h, want]);
      }
    }
  });
  it('f32 -> f16 round-trips every f16 and rounds every midpoint to even', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f = f16ToF32(all);
    const back = f32ToF16(f);
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(f[h]!)) expect(back[h]! & 0x7fff).toBe(0x7e00);
      else if (back[h] !== h) expect(hex([back[h]!])).toEqual(hex([h]));
    }
    // midpoints between consecutive positive finite halves h, h+1 (exact in f32), and one f32 ulp either side
    const mids: number[] = [];
    const want: number[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const mid = (f16Value(h) + f16Value(h + 1)) / 2;
      const m = fromBits([0])!;
      m[0] = mid;
      expect(m[0]).toBe(mid);
      const b = new Uint32Array(m.buffer)[0]!;
      mids.push(b, b - 1, b + 1, (b | 0x80000000) >>> 0);
      const even = h & 1 ? h + 1 : h;
      want.push(even, h, h + 1, even | 0x8000);
    }
    const got = f32ToF16(fromBits(mids));
    let bad = 0;
    for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) bad++;
    expect(bad).toBe(0);
  });
});

describe('torch 1.13 conversions (golden file from tools/fixtures/safetensors.py)', () => {
  const f = parseSafetensors(new Uint8Array(readFileSync(GOLDEN)), 'golden.safetensors');
  const src = f.tensors.get('conv.src')!.data as Float32Array;
  it('f32 -> bf16 matches torch bit for bit', () => {
    expect(src.length).toBeGreaterThan(900);
    const want = f.tensors.get('conv.bf16')!.data as Uint16Array;
    const got = f32ToBf16(src);
    const diff = [...got.keys()].filter((i) => got[i] !== want[i]);
    expect(diff.map((i) => [bitsOf(src.subarray(i, i + 1))[0]!.toString(16), got[i]!.toString(16), want[i]!.toString(16)])).toEqual([]);
  });
  it('f32 -> f16 matches torch bit for bit, and f16 -> f32 -> f16 returns it', () => {
    const want = f.tensors.get('conv.f16')!.data as Uint16Array;
    const got = f32ToF16(src);
    const diff = [...got.keys()].filter((i) => got[i] !== want[i]);
    expect(diff.map((i) => [bitsOf(src.subarray(i, i + 1))[0]!.toString(16), got[i]!.toString(16), want[i]!.toString(16)])).toEqual([]);
    expect([...f32ToF16(f16ToF32(want))]).toEqual([...want]);
  });
});
