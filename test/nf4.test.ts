import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  bytesPerParam, codeTable4, dequantize4bit, dequantize4bitState, doubleDequantize, doubleQuantize, FP4_CODE,
  fp4Index, fromBnbTensors, NF4_CODE, NF4_THRESHOLDS, nf4Index, pythonFloatRepr, type QuantType4, quantize4bit,
  quantize4bitState, quantizedLinearBytes, quantStateJson, stateAbsmax, toBnbTensors,
} from '../src/quant/index.js';
import { Rng } from '../src/tensor/rng.js';

const hex = (u: Uint8Array): string => Buffer.from(u.buffer, u.byteOffset, u.byteLength).toString('hex');
const f = Math.fround;

function bitsEqual(a: Float32Array, b: ArrayLike<number>, what: string): void {
  expect(a.length, what).toBe(b.length);
  const bad: string[] = [];
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], f(b[i]!))) bad.push(`${i}: ${a[i]} vs ${b[i]}`);
  expect(bad.slice(0, 10), what).toEqual([]);
}

function unpack(packed: Uint8Array, n: number): number[] {
  const q: number[] = [];
  for (let i = 0; i < n; i++) q.push(i % 2 === 0 ? packed[i >> 1]! >> 4 : packed[i >> 1]! & 15);
  return q;
}

/** The oracle's input generator (tools/fixtures/nf4.py make_input), exact in float32. */
function hashInput(n: number, blocksize: number, seed: number, zeroBlocks: number[]): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const h = Number((BigInt(i) * 2654435761n + BigInt(seed) * 40503n) % 4294967296n);
    x[i] = ((Math.floor(h / 256) - 2 ** 23) / 2 ** 23) * 2 ** ((Math.floor(i / blocksize) % 5) - 2);
  }
  for (const b of zeroBlocks) x.fill(0, b * blocksize, Math.min(n, (b + 1) * blocksize));
  return x;
}

describe('4-bit code tables', () => {
  it('NF4 table and midpoint thresholds are the spec literals', () => {
    bitsEqual(Float32Array.from(NF4_CODE), [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], 'nf4');
    bitsEqual(Float32Array.from(NF4_THRESHOLDS), [-0.8480964, -0.6106329, -0.45999527, -0.33967942, -0.2346074, -0.13791174, -0.045525018, 0.03979015, 0.12025525, 0.20352125, 0.29201376, 0.38931254, 0.50166345, 0.6427869, 0.86147845], 'thresholds');
  });

  it('FP4 table is the spec literals (bit 3 = sign)', () => {
    bitsEqual(Float32Array.from(FP4_CODE), [0, 0.0052083335, 0.6666667, 1, 0.33333334, 0.5, 0.16666667, 0.25, -0, -0.0052083335, -0.6666667, -1, -0.33333334, -0.5, -0.16666667, -0.25], 'fp4');
  });

  it('NF4: a value exactly on a threshold takes the lower code, the next float up the higher one', () => {
    for (let k = 0; k < 15; k++) {
      const t = NF4_THRESHOLDS[k]!;
      expect(nf4Index(t), `threshold ${k}`).toBe(k);
      expect(nf4Index(nextUp(t)), `above threshold ${k}`).toBe(k + 1);
      expect(nf4Index(NF4_CODE[k]!)).toBe(k);
    }
    expect(nf4Index(1)).toBe(15);
    expect(nf4Index(-1)).toBe(0);
  });

  it('FP4: picks the nearest magnitude with the CUDA thresholds; sign from x < 0', () => {
    for (let i = 0; i < 16; i++) expect(fp4Index(FP4_CODE[i]!), `code ${i}`).toBe(i === 8 ? 0 : i); // -0 is not < 0
    expect(fp4Index(-1e-9)).toBe(8);
    expect(fp4Index(f(0.29166667))).toBe(0b110 | 1); // on the threshold: stays in the lower branch (0.25)
    expect(fp4Index(nextUp(f(0.29166667)))).toBe(0b100);
    const rng = new Rng(3);
    for (let i = 0; i < 2000; i++) {
      const x = f(rng.uniform() * 2 - 1);
      const c = fp4Index(x);
      let best = Infinity;
      for (let k = 0; k < 8; k++) best = Math.min(best, Math.abs(Math.abs(x) - FP4_CODE[k]!));
      expect(Math.abs(Math.abs(x) - Math.abs(FP4_CODE[c]!))).toBeCloseTo(best, 6);
    }
  });
});

describe('NF4 golden vector (peft-spec Appendix B)', () => {
  const w = new Float32Array(512);
  for (let i = 0; i < 512; i++) w[i] = (((((i * 37) % 101) - 50) / 64) * (Math.floor(i / 64) + 1)) / 8;
  const q = quantize4bit(w, { quantType: 'nf4', blocksize: 64 });

  it('inputs, absmax, codes and packed bytes', () => {
    bitsEqual(w.subarray(0, 16), [-0.09765625, -0.025390625, 0.046875, -0.078125, -0.005859375, 0.06640625, -0.05859375, 0.013671875, 0.0859375, -0.0390625, 0.033203125, -0.091796875, -0.01953125, 0.052734375, -0.072265625, 0.0], 'inputs');
    bitsEqual(q.absmax, [0.09765625, 0.1953125, 0.29296875, 0.390625, 0.48828125, 0.5859375, 0.68359375, 0.78125], 'absmax');
    expect(unpack(q.packed, 16)).toEqual([0, 4, 12, 1, 6, 14, 2, 9, 15, 3, 11, 0, 5, 13, 1, 7]);
    const golden = `
04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c1
6d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18
e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af
4c06d18e2a04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05
d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e
29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3
b05d17e2af4c06d18e2a04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d
17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e2`.replace(/\s/g, '');
    expect(q.packed.length).toBe(256);
    expect(hex(q.packed)).toBe(golden);
  });

  it('dequantized values and max error', () => {
    const y = dequantize4bit(q);
    bitsEqual(y.subarray(0, 16), [-0.09765625, -0.027777478098869324, 0.04303807020187378, -0.06798757612705231, -0.008891604840755463, 0.07060125470161438, -0.051276665180921555, 0.015715839341282845, 0.09765625, -0.03856616094708443, 0.03299953415989876, -0.09765625, -0.018044279888272285, 0.05494306609034538, -0.06798757612705231, 0.0], 'dequant');
    let maxErr = 0;
    for (let i = 0; i < 512; i++) maxErr = Math.max(maxErr, Math.abs(w[i]! - y[i]!));
    expect(maxErr).toBe(0.11234939098358154);
  });

  it('double quantization: offset, qabsmax, nested absmax, dequantized absmax and values', () => {
    const dq = doubleQuantize(q.absmax);
    expect(dq.offset).toBe(0.439453125);
    expect([...dq.qabsmax]).toEqual([0, 20, 40, 60, 194, 214, 234, 255]);
    bitsEqual(dq.nestedAbsmax, [0.341796875], 'nested absmax');
    expect(dq.nestedBlocksize).toBe(256);
    const a = doubleDequantize(dq);
    bitsEqual(a, [0.10005950927734375, 0.19618986546993256, 0.29232025146484375, 0.38845062255859375, 0.49045562744140625, 0.5865859985351562, 0.6827163696289062, 0.78125], 'dq absmax');
    const y = dequantize4bit(q, undefined, a);
    bitsEqual(y.subarray(0, 16), [-0.10005950927734375, -0.028461065143346786, 0.044097207486629486, -0.06966070830821991, -0.009110421873629093, 0.07233870774507523, -0.05253855139017105, 0.01610259711742401, 0.10005950927734375, -0.03951524943113327, 0.03381163254380226, -0.10005950927734375, -0.018488338217139244, 0.056295182555913925, -0.06966070830821991, 0.0], 'dq dequant');
  });

  it('bitsandbytes tensors and quant-state JSON', () => {
    const state = quantize4bitState(w, [8, 64], { quantType: 'nf4', blocksize: 64, doubleQuant: true, dtype: 'float32' });
    expect(quantStateJson(state)).toBe('{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [8, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.439453125}');
    const t = toBnbTensors('model.layers.0.mlp.down_proj.weight', state);
    const P = 'model.layers.0.mlp.down_proj.weight';
    expect(Object.keys(t)).toEqual([P, `${P}.absmax`, `${P}.quant_map`, `${P}.nested_absmax`, `${P}.nested_quant_map`, `${P}.quant_state.bitsandbytes__nf4`]);
    expect(t[P]!.dtype).toBe('U8');
    expect(t[P]!.shape).toEqual([256, 1]);
    expect(t[`${P}.absmax`]).toMatchObject({ dtype: 'U8', shape: [8] });
    expect(t[`${P}.quant_map`]).toMatchObject({ dtype: 'F32', shape: [16] });
    expect(t[`${P}.nested_absmax`]).toMatchObject({ dtype: 'F32', shape: [1] });
    expect(t[`${P}.nested_quant_map`]).toMatchObject({ dtype: 'F32', shape: [256] });
    const js = t[`${P}.quant_state.bitsandbytes__nf4`]!;
    expect(new TextDecoder().decode(js.data)).toBe(quantStateJson(state));
    expect(js.shape).toEqual([js.data.length]);
  });
});

describe('4-bit quantization edge cases and the torch oracle', () => {
  it('all-zero full block: absmax 0, code of 0.0 (nibbles 7 for NF4, 0 for FP4)', () => {
    const x = new Float32Array(128);
    x.fill(0.5, 64);
    for (const qt of ['nf4', 'fp4'] as const) {
      const q = quantize4bit(x, { quantType: qt, blocksize: 64 });
      expect(q.absmax[0]).toBe(0);
      expect(hex(q.packed.subarray(0, 32))).toBe((qt === 'nf4' ? '77' : '00').repeat(32));
      expect(Array.from(dequantize4bit(q).subarray(0, 64)).every((v) => v === 0)).toBe(true);
    }
  });

  it('partial last block: absmax clamped to >= 1e-38, scaled by division; odd numel pads a low nibble of 0', () => {
    const x = new Float32Array(64 + 5);
    x[64] = 0.3;
    x[65] = -0.3;
    x[68] = 0.1;
    const q = quantize4bit(x, { quantType: 'nf4', blocksize: 64 });
    expect(q.absmax.length).toBe(2);
    expect(q.packed.length).toBe(35);
    expect(q.absmax[1]).toBe(f(0.3));
    // 0.1 / 0.3 = 0.33333334 -> code 11 (0.3379), padded low nibble 0
    expect(q.packed[34]).toBe(11 << 4);
    expect(unpack(q.packed, 69).slice(64)).toEqual([15, 0, 7, 7, 11]);
    const z = quantize4bit(new Float32Array(3), { quantType: 'nf4', blocksize: 64 });
    expect(z.absmax[0]).toBe(f(1e-38));
    expect(hex(z.packed)).toBe('7770');
  });

  it('rejects bad block sizes and quant types', () => {
    expect(() => quantize4bit(new Float32Array(4), { quantType: 'nf4', blocksize: 48 })).toThrow(/power of two between 32 and 4096/);
    expect(() => quantize4bit(new Float32Array(4), { quantType: 'nf4', blocksize: 8192 })).toThrow(/blocksize/);
    expect(() => quantize4bit(new Float32Array(4), { quantType: 'int4' as QuantType4 })).toThrow(/quantType/);
  });

  const oracle = JSON.parse(readFileSync(new URL('./fixtures/quant/nf4_oracle.json', import.meta.url), 'utf8')) as {
    cases: { name: string; quant_type: QuantType4; blocksize: number; n: number; seed: number; zero_blocks: number[]; packed: string; absmax: number[]; offset: number; qabsmax: string; nested_absmax: number[]; dequant_absmax: number[] }[];
  };
  for (const c of oracle.cases) {
    it(`matches the torch oracle (tools/fixtures/nf4.py): ${c.name}`, () => {
      const x = hashInput(c.n, c.blocksize, c.seed, c.zero_blocks);
      const q = quantize4bit(x, { quantType: c.quant_type, blocksize: c.blocksize });
      expect(hex(q.packed)).toBe(c.packed);
      bitsEqual(q.absmax, c.absmax, 'absmax');
      const dq = doubleQuantize(q.absmax);
      // torch sums the mean in float32, ours in float64 rounded once; on these inputs they agree exactly
      // (on large tensors they may differ by an ulp; the offset is stored in the file either way)
      expect(dq.offset).toBe(f(c.offset));
      expect(hex(dq.qabsmax)).toBe(c.qabsmax);
      bitsEqual(dq.nestedAbsmax, c.nested_absmax, 'nested absmax');
      bitsEqual(doubleDequantize(dq), c.dequant_absmax, 'dequantized absmax');
    });
  }

  it('error of dequantize(quantize(x)) <= absmax * max half-gap, blocksizes 32..4096, NF4 and FP4', () => {
    const rng = new Rng(11);
    for (const qt of ['nf4', 'fp4'] as const) {
      const code = Array.from(codeTable4(qt)).sort((a, b) => a - b);
      let halfGap = 0;
      for (let k = 0; k + 1 < code.length; k++) halfGap = Math.max(halfGap, (code[k + 1]! - code[k]!) / 2);
      for (let bs = 32; bs <= 4096; bs *= 2) {
        const n = bs * 3 + 17;
        const x = new Float32Array(n);
        for (let i = 0; i < n; i++) x[i] = rng.normal() * (1 + (i % 7));
        const q = quantize4bit(x, { quantType: qt, blocksize: bs });
        expect(q.absmax.length).toBe(4);
        const y = dequantize4bit(q);
        for (let i = 0; i < n; i++) {
          const a = q.absmax[Math.floor(i / bs)]!;
          if (!(Math.abs(x[i]! - y[i]!) <= a * (halfGap + 2 ** -22))) expect.fail(`${qt} bs ${bs} element ${i}: |${x[i]} - ${y[i]}| > ${a} * ${halfGap}`);
        }
        // block maxima are exact (code ±1)
        for (let b = 0; b < 3; b++) {
          let at = b * bs;
          for (let i = b * bs; i < (b + 1) * bs; i++) if (Math.abs(x[i]!) > Math.abs(x[at]!)) at = i;
          expect(y[at]).toBe(x[at]);
        }
      }
    }
  });
});

describe('bitsandbytes serialization', () => {
  const rng = new Rng(21);
  const x = rng.fillNormal(new Float32Array(96 * 40));

  for (const doubleQuant of [true, false])
    for (const quantType of ['nf4', 'fp4'] as const) {
      it(`round-trips through toBnbTensors/fromBnbTensors (${quantType}, DQ ${doubleQuant})`, () => {
        const s = quantize4bitState(x, [96, 40], { quantType, blocksize: 128, doubleQuant, dtype: 'bfloat16' });
        const t = toBnbTensors('lin.weight', s);
        expect(t['lin.weight.absmax']!.dtype).toBe(doubleQuant ? 'U8' : 'F32');
        expect('lin.weight.nested_absmax' in t).toBe(doubleQuant);
        const json = JSON.parse(new TextDecoder().decode(t[`lin.weight.quant_state.bitsandbytes__${quantType}`]!.data as Uint8Array));
        expect(json).toMatchObject({ quant_type: quantType, blocksize: 128, dtype: 'bfloat16', shape: [96, 40] });
        const back = fromBnbTensors('lin.weight', new Map(Object.entries(t)));
        expect(back.shape).toEqual([96, 40]);
        expect(back.dtype).toBe('bfloat16');
        expect(hex(back.packed)).toBe(hex(s.packed));
        bitsEqual(stateAbsmax(back), stateAbsmax(s), 'absmax');
        bitsEqual(dequantize4bitState(back), dequantize4bitState(s), 'values');
      });
    }

  it('reads the code tables from the file, not from its own constants', () => {
    const s = quantize4bitState(x, [96, 40], { quantType: 'nf4', doubleQuant: true });
    const t = toBnbTensors('w', s);
    const ref = dequantize4bitState(s);
    const qm = (t['w.quant_map']!.data as Float32Array).map((v) => v * 2);
    const nqm = (t['w.nested_quant_map']!.data as Float32Array).map((v) => v * 0);
    const back = fromBnbTensors('w', { ...t, 'w.quant_map': { ...t['w.quant_map']!, data: qm }, 'w.nested_quant_map': { ...t['w.nested_quant_map']!, data: nqm } });
    // with the nested map zeroed every block scale is the offset; with the quant map doubled values double
    const off = f(s.dq!.offset);
    const y = dequantize4bitState(back);
    for (let i = 0; i < 200; i++) expect(y[i]).toBe(f(NF4_CODE[unpack(s.packed, 200)[i]!]! * 2 * off));
    expect(ref[0]).not.toBe(y[0]);
  });

  it('accepts a packed weight stored in another dtype (quant_storage) and a misaligned F32 buffer', () => {
    const s = quantize4bitState(x, [96, 40], { quantType: 'nf4', doubleQuant: false });
    const t = toBnbTensors('w', s);
    const raw = new Uint8Array(s.packed.length);
    raw.set(s.packed);
    const absBytes = new Uint8Array(s.absmax!.byteLength + 1);
    absBytes.set(new Uint8Array(s.absmax!.buffer), 1);
    const back = fromBnbTensors('w', {
      ...t,
      w: { dtype: 'BF16', shape: [raw.length / 2, 1], data: new Uint16Array(raw.buffer) },
      'w.absmax': { dtype: 'F32', shape: [s.absmax!.length], data: absBytes.subarray(1) },
    });
    bitsEqual(dequantize4bitState(back), dequantize4bitState(s), 'values');
  });

  it('says what is wrong with a bad file', () => {
    const s = quantize4bitState(x, [96, 40], { quantType: 'nf4' });
    const t = toBnbTensors('w', s);
    const { 'w.quant_state.bitsandbytes__nf4': js, ...noState } = t;
    expect(() => fromBnbTensors('w', noState)).toThrow(/expected exactly one 'w.quant_state.bitsandbytes__nf4'/);
    expect(() => fromBnbTensors('w', { ...noState, 'w.quant_state.bitsandbytes__fp4': js! })).toThrow(/says fp4 but its JSON says nf4/);
    const { 'w.nested_quant_map': _m, ...noMap } = t;
    expect(() => fromBnbTensors('w', noMap)).toThrow(/missing tensor 'w.nested_quant_map'/);
    expect(() => fromBnbTensors('w', { ...t, w: { dtype: 'U8', shape: [3, 1], data: new Uint8Array(3) } })).toThrow(/packed weight has 3 bytes, expected 1920/);
  });

  it('pythonFloatRepr prints floats as Python repr', () => {
    expect(pythonFloatRepr(0.439453125)).toBe('0.439453125');
    expect(pythonFloatRepr(0.013571286015212536)).toBe('0.013571286015212536');
    expect(pythonFloatRepr(f(0.013571286))).toBe('0.013571285642683506'); // float(torch.tensor(0.013571286))
    expect(pythonFloatRepr(5e-5)).toBe('5e-05');
    expect(pythonFloatRepr(1.5e-7)).toBe('1.5e-07');
    expect(pythonFloatRepr(0.0001)).toBe('0.0001');
    expect(pythonFloatRepr(2)).toBe('2.0');
    expect(pythonFloatRepr(1e16)).toBe('1e+16');
  });
});

describe('memory arithmetic', () => {
  it('bits per parameter', () => {
    expect(bytesPerParam('fp32')).toBe(4);
    expect(bytesPerParam('bf16')).toBe(2);
    expect(bytesPerParam('nf4') * 8).toBe(4.5);
    expect(bytesPerParam('nf4-dq') * 8).toBeCloseTo(4.127, 3);
    expect(bytesPerParam('fp4', 128) * 8).toBe(4.25);
  });

  it("Llama-2-7B linear weights in NF4+DQ: the spec's 3.238 GB + 101.2 MB + 1.6 MB (decimal units)", () => {
    const tensors = [...Array(4).fill(4096 * 4096), ...Array(3).fill(4096 * 11008)] as number[];
    let params = 0, data = 0, absmax = 0, nested = 0, absmaxNoDq = 0;
    for (let layer = 0; layer < 32; layer++)
      for (const n of tensors) {
        const b = quantizedLinearBytes(n, { doubleQuant: true, blocksize: 64 });
        params += n;
        data += b.data;
        absmax += b.absmax;
        nested += b.nestedAbsmax;
        absmaxNoDq += quantizedLinearBytes(n, { doubleQuant: false }).absmax;
      }
    expect(params).toBe(6_476_005_376);
    expect((data / 1e9).toFixed(3)).toBe('3.238');
    expect((absmax / 1e6).toFixed(1)).toBe('101.2');
    expect((nested / 1e6).toFixed(1)).toBe('1.6');
    expect((absmaxNoDq / 1e6).toFixed(1)).toBe('404.8');
    expect(Math.abs(data / 3.238e9 - 1)).toBeLessThan(0.01);
    expect(Math.abs(absmax / 101.2e6 - 1)).toBeLessThan(0.01);
    const one = quantizedLinearBytes(4096 * 4096, { doubleQuant: true });
    expect(one).toEqual({ data: 8388608, absmax: 262144, nestedAbsmax: 4096, quantMap: 64, nestedQuantMap: 1024, total: 8388608 + 262144 + 4096 + 64 + 1024 });
  });
});

function nextUp(x: number): number {
  const a = new Float32Array([x]);
  const u = new Uint32Array(a.buffer);
  if (x > 0) u[0]! += 1;
  else if (x < 0) u[0]! -= 1;
  else return 1.401298464324817e-45;
  return a[0]!;
}
