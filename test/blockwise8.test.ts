import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  codeMidpoints, createDynamicMap, dequantizeBlockwise8, dynamicMap, fmaF32, linspaceF32, quantizeBlockwise8,
  quantizeBlockwise8Into,
} from '../src/quant/index.js';
import { Rng } from '../src/tensor/rng.js';

// peft-spec.md Appendix A, verbatim: the maps torch 1.13 (Debian, AVX2) produces.
const A1_SIGNED = `
  0: -0.99296874, -0.9789062, -0.96484375, -0.9507812, -0.9367187, -0.92265624, -0.9085938, -0.89453125
  8: -0.8804687, -0.8664062, -0.85234374, -0.8382812, -0.82421875, -0.8101562, -0.7960937, -0.78203124
 16: -0.7679688, -0.75390625, -0.7398438, -0.72578126, -0.7117188, -0.6976563, -0.68359375, -0.6695313
 24: -0.65546876, -0.64140624, -0.6273438, -0.61328125, -0.5992187, -0.58515626, -0.5710938, -0.5570313
 32: -0.54296875, -0.5289062, -0.51484376, -0.50078124, -0.48671877, -0.47265625, -0.45859373, -0.44453126
 40: -0.43046874, -0.4164062, -0.40234375, -0.38828123, -0.37421876, -0.36015624, -0.3460937, -0.33203125
 48: -0.31796873, -0.30390626, -0.28984374, -0.27578127, -0.26171875, -0.24765626, -0.23359376, -0.21953125
 56: -0.20546874, -0.19140625, -0.17734374, -0.16328125, -0.14921875, -0.13515624, -0.12109375, -0.107031256
 64: -0.09859375, -0.095781244, -0.092968754, -0.09015625, -0.08734375, -0.08453125, -0.08171874, -0.07890625
 72: -0.07609375, -0.07328125, -0.070468746, -0.067656256, -0.06484375, -0.062031247, -0.059218753, -0.05640625
 80: -0.05359375, -0.05078125, -0.04796875, -0.04515625, -0.042343747, -0.03953125, -0.036718752, -0.033906247
 88: -0.03109375, -0.028281247, -0.02546875, -0.02265625, -0.01984375, -0.01703125, -0.01421875, -0.01140625
 96: -0.00971875, -0.009156249, -0.00859375, -0.00803125, -0.00746875, -0.00690625, -0.00634375, -0.00578125
104: -0.0052187503, -0.0046562497, -0.00409375, -0.0035312497, -0.00296875, -0.00240625, -0.00184375, -0.0012812499
112: -0.0009437501, -0.00083125, -0.00071875006, -0.0006062501, -0.00049375003, -0.00038125002, -0.00026875004, -0.00015625001
120: -8.875e-05, -6.625e-05, -4.375e-05, -2.1249998e-05, -7.75e-06, -3.2500002e-06, -5.5000004e-07, 0
128: 5.5000004e-07, 3.2500002e-06, 7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05, 0.00015625001
136: 0.00026875004, 0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501, 0.0012812499
144: 0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497, 0.0052187503, 0.00578125
152: 0.00634375, 0.00690625, 0.00746875, 0.00803125, 0.00859375, 0.009156249, 0.00971875, 0.01140625
160: 0.01421875, 0.01703125, 0.01984375, 0.02265625, 0.02546875, 0.028281247, 0.03109375, 0.033906247
168: 0.036718752, 0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625
176: 0.059218753, 0.062031247, 0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375, 0.07890625
184: 0.08171874, 0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.095781244, 0.09859375, 0.107031256
192: 0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734374, 0.19140625, 0.20546874, 0.21953125
200: 0.23359376, 0.24765626, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873, 0.33203125
208: 0.3460937, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.4164062, 0.43046874, 0.44453126
216: 0.45859373, 0.47265625, 0.48671877, 0.50078124, 0.51484376, 0.5289062, 0.54296875, 0.5570313
224: 0.5710938, 0.58515626, 0.5992187, 0.61328125, 0.6273438, 0.64140624, 0.65546876, 0.6695313
232: 0.68359375, 0.6976563, 0.7117188, 0.72578126, 0.7398438, 0.75390625, 0.7679688, 0.78203124
240: 0.7960937, 0.8101562, 0.82421875, 0.8382812, 0.85234374, 0.8664062, 0.8804687, 0.89453125
248: 0.9085938, 0.92265624, 0.9367187, 0.9507812, 0.96484375, 0.9789062, 0.99296874, 1`;
const A2_UNSIGNED = `
  0: 0, 3.2500003e-07, 7.75e-07, 2.1249998e-06, 4.3749997e-06, 6.625e-06, 8.874999e-06, 1.5624999e-05
  8: 2.6875001e-05, 3.8125e-05, 4.9374998e-05, 6.0625003e-05, 7.1875e-05, 8.312499e-05, 9.4375e-05, 0.000128125
 16: 0.000184375, 0.000240625, 0.00029687502, 0.00035312498, 0.000409375, 0.00046562502, 0.00052187504, 0.000578125
 24: 0.000634375, 0.00069062505, 0.000746875, 0.0008031251, 0.00085937505, 0.000915625, 0.00097187504, 0.001140625
 32: 0.001421875, 0.001703125, 0.0019843748, 0.002265625, 0.0025468748, 0.0028281247, 0.0031093748, 0.0033906247
 40: 0.003671875, 0.003953125, 0.0042343745, 0.004515625, 0.0047968747, 0.005078125, 0.005359375, 0.0056406246
 48: 0.005921875, 0.0062031243, 0.006484375, 0.0067656254, 0.0070468746, 0.007328125, 0.0076093744, 0.007890625
 56: 0.008171874, 0.008453124, 0.008734375, 0.009015624, 0.0092968745, 0.009578124, 0.009859375, 0.010703126
 64: 0.012109376, 0.013515624, 0.014921876, 0.016328124, 0.017734375, 0.019140625, 0.020546874, 0.021953126
 72: 0.023359377, 0.024765626, 0.026171876, 0.027578129, 0.028984373, 0.030390626, 0.031796873, 0.033203125
 80: 0.034609374, 0.036015626, 0.03742188, 0.038828123, 0.040234376, 0.04164062, 0.043046873, 0.044453125
 88: 0.045859374, 0.047265626, 0.04867188, 0.050078124, 0.051484376, 0.052890625, 0.054296877, 0.05570313
 96: 0.057109382, 0.058515627, 0.059921872, 0.061328124, 0.06273438, 0.064140625, 0.06554688, 0.06695313
104: 0.068359375, 0.06976563, 0.07117188, 0.072578125, 0.07398438, 0.07539063, 0.07679688, 0.07820313
112: 0.07960937, 0.081015624, 0.08242188, 0.08382812, 0.085234374, 0.08664062, 0.08804687, 0.08945312
120: 0.090859376, 0.09226563, 0.09367187, 0.095078126, 0.09648438, 0.09789062, 0.099296875, 0.103515625
128: 0.11054687, 0.11757813, 0.12460937, 0.13164061, 0.13867188, 0.14570314, 0.15273437, 0.15976563
136: 0.16679686, 0.17382812, 0.18085939, 0.18789062, 0.19492188, 0.20195311, 0.20898438, 0.21601564
144: 0.22304687, 0.23007813, 0.2371094, 0.24414062, 0.2511719, 0.25820312, 0.26523438, 0.27226564
152: 0.27929688, 0.28632814, 0.2933594, 0.30039063, 0.3074219, 0.31445312, 0.3214844, 0.32851562
160: 0.33554685, 0.3425781, 0.34960938, 0.3566406, 0.36367187, 0.3707031, 0.37773436, 0.38476562
168: 0.3917969, 0.39882812, 0.40585935, 0.4128906, 0.41992188, 0.4269531, 0.43398437, 0.44101563
176: 0.44804686, 0.45507812, 0.4621094, 0.46914062, 0.47617188, 0.4832031, 0.49023438, 0.4972656
184: 0.5042969, 0.5113281, 0.5183593, 0.5253906, 0.5324218, 0.53945315, 0.54648435, 0.5535157
192: 0.5605469, 0.56757814, 0.5746094, 0.5816406, 0.5886719, 0.5957031, 0.6027344, 0.60976565
200: 0.61679685, 0.6238281, 0.6308594, 0.6378906, 0.6449219, 0.6519531, 0.6589844, 0.6660156
208: 0.67304695, 0.68007815, 0.68710935, 0.6941407, 0.7011719, 0.7082032, 0.7152344, 0.7222656
216: 0.7292969, 0.7363281, 0.7433593, 0.75039065, 0.75742185, 0.7644532, 0.7714844, 0.7785156
224: 0.7855469, 0.7925781, 0.7996093, 0.8066406, 0.8136718, 0.82070315, 0.82773435, 0.8347657
232: 0.8417969, 0.84882814, 0.8558594, 0.8628906, 0.8699219, 0.8769531, 0.8839844, 0.89101565
240: 0.89804685, 0.9050781, 0.9121094, 0.9191406, 0.9261719, 0.9332031, 0.9402344, 0.9472656
248: 0.95429695, 0.96132815, 0.96835935, 0.9753907, 0.9824219, 0.9894532, 0.9964844, 1`;

function parseAppendix(text: string): Float32Array {
  const vals: number[] = [];
  for (const line of text.trim().split('\n')) {
    const [idx, rest] = line.split(':') as [string, string];
    expect(Number(idx)).toBe(vals.length);
    for (const v of rest.split(',')) vals.push(Math.fround(Number(v.trim())));
  }
  expect(vals.length).toBe(256);
  return Float32Array.from(vals);
}

function bitsEqual(a: Float32Array, b: Float32Array, what: string): void {
  expect(a.length, what).toBe(b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  const bad: string[] = [];
  for (let i = 0; i < a.length; i++) if (ua[i] !== ub[i]) bad.push(`${i}: ${a[i]} vs ${b[i]}`);
  expect(bad, what).toEqual([]);
}

/** The oracle's input generator (tools/fixtures/nf4.py make_input), exact in float32. */
function hashInput(n: number, blocksize: number, seed: number, zeroBlocks: number[]): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const h = Number((BigInt(i) * 2654435761n + BigInt(seed) * 40503n) % 4294967296n);
    const u = (Math.floor(h / 256) - 2 ** 23) / 2 ** 23;
    x[i] = u * 2 ** ((Math.floor(i / blocksize) % 5) - 2);
  }
  for (const b of zeroBlocks) x.fill(0, b * blocksize, Math.min(n, (b + 1) * blocksize));
  return x;
}

const hex = (u: Uint8Array): string => Buffer.from(u.buffer, u.byteOffset, u.byteLength).toString('hex');

describe('dynamic 8-bit map', () => {
  it('reproduces Appendix A.1 (signed) bit for bit', () => {
    const m = createDynamicMap(true);
    bitsEqual(m, parseAppendix(A1_SIGNED), 'signed map');
    expect(m[127]).toBe(0);
    expect(m[255]).toBe(1);
    expect(m[0]).toBe(Math.fround(-0.99296874));
  });

  it('reproduces Appendix A.2 (unsigned) bit for bit', () => {
    const m = createDynamicMap(false);
    bitsEqual(m, parseAppendix(A2_UNSIGNED), 'unsigned map');
    expect(m[0]).toBe(0);
    expect(m[255]).toBe(1);
  });

  it('dynamicMap returns independent copies', () => {
    const a = dynamicMap(true);
    a[0] = 5;
    expect(dynamicMap(true)[0]).toBe(Math.fround(-0.99296874));
  });

  it('linspaceF32 matches torch.linspace(0.1, 1, n) values checked against torch 1.13', () => {
    // torch.linspace(0.1, 1, 17)[6] and [7] and (…, 33)[15]: entries where a plain float32 evaluation differs
    const l17 = linspaceF32(0.1, 1, 17);
    expect(l17[6]).toBe(Math.fround(0.4374999701976776));
    expect(l17[7]).toBe(Math.fround(0.4937499761581421));
    expect(l17[16]).toBe(1);
    expect(linspaceF32(0.1, 1, 33)[15]).toBe(Math.fround(0.5218749642372131));
    expect(linspaceF32(0.1, 1, 65)[10]).toBe(Math.fround(0.24062500894069672));
  });

  it('fmaF32 rounds once', () => {
    const a = Math.fround(1 + 2 ** -12);
    // a*a = 1 + 2^-11 + 2^-24: the 2^-24 term is lost by multiply-then-add but kept by a fused multiply-add
    expect(fmaF32(a, a, -1)).toBe(2 ** -11 + 2 ** -24);
    expect(Math.fround(Math.fround(a * a) - 1)).toBe(2 ** -11);
    // tie case: exact sum 1 + 2^-24 + 2^-60 must round up, although the double sum is the midpoint 1 + 2^-24
    expect(fmaF32(Math.fround(1 + 2 ** -23), Math.fround(2 ** -37), 1 + 2 ** -24 - 2 ** -37)).toBe(Math.fround(1 + 2 ** -23));
  });
});

describe('blockwise 8-bit quantization', () => {
  const oracle = JSON.parse(readFileSync(new URL('./fixtures/quant/nf4_oracle.json', import.meta.url), 'utf8')) as {
    blockwise8: { name: string; signed: boolean; n: number; seed: number; zero_blocks: number[]; square: boolean; codes: string; absmax: number[]; dequant_sum: number }[];
  };

  for (const c of oracle.blockwise8) {
    it(`matches the torch oracle: ${c.name}`, () => {
      let x = hashInput(c.n, 256, c.seed, c.zero_blocks);
      if (c.square) x = x.map((v) => v * v);
      const q = quantizeBlockwise8(x, dynamicMap(c.signed), 256);
      expect(hex(q.codes)).toBe(c.codes);
      bitsEqual(q.absmax, Float32Array.from(c.absmax), 'absmax');
      const y = dequantizeBlockwise8(q);
      let s = 0;
      for (const v of y) s += v;
      expect(s).toBeCloseTo(c.dequant_sum, 6);
    });
  }

  it('rounds to the nearest map entry; ties go to the lower code', () => {
    const code = dynamicMap(true);
    const mid = codeMidpoints(code);
    // block absmax 1 (the 1.0 entry makes xn = x exactly)
    const x = new Float32Array(256);
    x[0] = 1;
    const picks = [100, 127, 128, 200, 254];
    picks.forEach((k, j) => {
      x[1 + 3 * j] = mid[k]!; // exactly the midpoint -> lower code k
      x[2 + 3 * j] = nextUp(mid[k]!); // just above -> k + 1
      x[3 + 3 * j] = code[k]!; // an entry -> itself
    });
    const q = quantizeBlockwise8(x, code, 256);
    picks.forEach((k, j) => {
      expect(q.codes[1 + 3 * j], `midpoint ${k}`).toBe(k);
      expect(q.codes[2 + 3 * j], `above midpoint ${k}`).toBe(k + 1);
      expect(q.codes[3 + 3 * j], `entry ${k}`).toBe(k);
    });
    expect(q.codes[0]).toBe(255);
  });

  it('handles an all-zero block, a partial last block and reuses buffers', () => {
    const x = new Float32Array(256 + 10);
    x[256] = -3;
    x[257] = 1.5;
    const codes = new Uint8Array(x.length);
    const absmax = new Float32Array(2);
    quantizeBlockwise8Into(x, dynamicMap(true), 256, codes, absmax);
    expect(absmax[0]).toBe(0);
    expect(codes[0]).toBe(127); // 0 -> the 0 entry of the signed map
    expect(absmax[1]).toBe(3);
    expect(codes[256]).toBe(0); // -1 clamps to the lowest entry (-0.99296874)
    const zeroTail = quantizeBlockwise8(new Float32Array(5), dynamicMap(false), 256);
    expect(zeroTail.absmax[0]).toBe(Math.fround(1e-38)); // the default backend clamps a partial block's absmax
    expect([...zeroTail.codes]).toEqual([0, 0, 0, 0, 0]);
  });

  it('error <= absmax * max half-gap of the map (or the end gap), and re-quantizing the dequantized values is stable', () => {
    const rng = new Rng(5);
    for (const signed of [true, false]) {
      const code = dynamicMap(signed);
      let halfGap = 0;
      for (let k = 0; k + 1 < 256; k++) halfGap = Math.max(halfGap, (code[k + 1]! - code[k]!) / 2);
      // the signed map has no -1: values near -absmax round to its lowest entry (-0.99296874)
      halfGap = Math.max(halfGap, code[0]! - (signed ? -1 : 0), 1 - code[255]!);
      const x = new Float32Array(256 * 7 + 13);
      for (let i = 0; i < x.length; i++) x[i] = signed ? rng.normal() * 0.01 : rng.normal() ** 2 * 1e-4;
      const q = quantizeBlockwise8(x, code, 256);
      const y = dequantizeBlockwise8(q);
      for (let i = 0; i < x.length; i++) {
        const a = q.absmax[Math.floor(i / 256)]!;
        if (!(Math.abs(x[i]! - y[i]!) <= a * (halfGap + 2 ** -23))) expect.fail(`element ${i}: |${x[i]} - ${y[i]}| > ${a} * ${halfGap}`);
      }
      const q2 = quantizeBlockwise8(y, code, 256);
      expect(hex(q2.codes)).toBe(hex(q.codes));
    }
  });
});

function nextUp(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  if (x > 0) u[0]! += 1;
  else if (x < 0) u[0]! -= 1;
  else return 1.401298464324817e-45;
  return f[0]!;
}
