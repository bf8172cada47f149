import { describe, expect, it } from 'vitest';
import { loadAddon } from '../src/kernels/native/index.js';
import { codeTable4, dequantize4bit, gemmNf4 as gemmNf4Js, quantize4bit } from '../src/quant/index.js';
import { Rng } from '../src/tensor/rng.js';
import { gemm } from '../src/kernels/js/gemm.js';

type GemmNf4 = typeof gemmNf4Js;
interface Nf4Addon {
  gemmNf4: GemmNf4;
  gemmNf4Isa(): string;
  gemmNf4ForceScalar(on: boolean): void;
}

function addon(): Nf4Addon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.gemmNf4, 'the addon exports gemmNf4 (native/src/nf4.cc, registered in addon.cc)').toBe('function');
  return a as unknown as Nf4Addon;
}

interface Case {
  M: number; N: number; K: number; bs: number; transB: boolean;
  alpha?: number; beta?: number; lda?: number; ldc?: number; quantType?: 'nf4' | 'fp4';
}

function run(c: Case, seed: number, native: GemmNf4): void {
  const rng = new Rng(seed);
  const { M, N, K, bs, transB } = c;
  const alpha = c.alpha ?? 1, beta = c.beta ?? 0;
  const lda = c.lda ?? K, ldc = c.ldc ?? N;
  const W = rng.fillNormal(new Float32Array(N * K));
  const q = quantize4bit(W, { quantType: c.quantType ?? 'nf4', blocksize: bs });
  const code = codeTable4(c.quantType ?? 'nf4');
  const A = rng.fillNormal(new Float32Array(Math.max(0, (M - 1) * lda + K)));
  const C0 = rng.fillNormal(new Float32Array(Math.max(0, (M - 1) * ldc + N)));
  if (beta === 0) C0.fill(Number.NaN); // must be ignored
  const Cjs = C0.slice(), Cn = C0.slice();
  gemmNf4Js(transB, M, N, K, alpha, A, lda, q.packed, q.absmax, bs, code, beta, Cjs, ldc);
  native(transB, M, N, K, alpha, A, lda, q.packed, q.absmax, bs, code, beta, Cn, ldc);
  // padding columns between rows (ldc > N) are untouched
  for (let i = 0; i < M; i++) for (let j = N; j < ldc && i * ldc + j < Cn.length; j++) expect(Object.is(Cn[i * ldc + j], C0[i * ldc + j])).toBe(true);
  // relative error against the magnitude of what was summed: |alpha| * |A|·|op(W)| + |beta * C0|
  const absA = A.map(Math.abs);
  const absW = dequantize4bit({ ...q, code }).map(Math.abs);
  const scale = new Float32Array(C0.length);
  gemm(false, transB, M, N, K, Math.abs(alpha), absA, lda, absW, transB ? K : N, 0, scale, ldc);
  let worst = 0, at = -1;
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      const o = i * ldc + j;
      const e = Math.abs(Cn[o]! - Cjs[o]!) / Math.max(1e-30, scale[o]! + (beta === 0 ? 0 : Math.abs(beta * C0[o]!)));
      if (!(e <= worst)) [worst, at] = [e, o];
    }
  if (!(worst <= 1e-5)) expect.fail(`gemmNf4 ${JSON.stringify(c)}: relative error ${worst} at ${at} (${Cn[at]} vs ${Cjs[at]})`);
}

const CASES: Case[] = [
  { M: 7, N: 130, K: 192, bs: 64, transB: true },
  { M: 7, N: 130, K: 192, bs: 64, transB: false },
  // K not a multiple of the block size: blocks straddle rows of W
  { M: 5, N: 33, K: 100, bs: 64, transB: true },
  { M: 5, N: 33, K: 100, bs: 64, transB: false },
  // K > the 256-wide panel with a tail, N with a partial strip and chunk, alpha/beta, strided A and C
  { M: 13, N: 300, K: 520, bs: 32, transB: true, alpha: 0.5, beta: 0.75, lda: 531, ldc: 307 },
  { M: 13, N: 300, K: 520, bs: 128, transB: false, alpha: -2, beta: 1, lda: 521, ldc: 301 },
  // odd N*K (a padded low nibble, a partial last block), one row, FP4 table
  { M: 1, N: 3, K: 7, bs: 32, transB: true, quantType: 'fp4' },
  { M: 2, N: 7, K: 3, bs: 32, transB: false, quantType: 'fp4', beta: 2 },
  // few rows (the gemv path: M <= 4), a block straddling rows, strides
  { M: 1, N: 200, K: 300, bs: 64, transB: true },
  { M: 4, N: 200, K: 300, bs: 64, transB: false, beta: 0.5, ldc: 203 },
  { M: 3, N: 1100, K: 70, bs: 32, transB: false, alpha: 1.5, lda: 75 },
  { M: 2, N: 45, K: 530, bs: 256, transB: true, beta: 1, ldc: 50 },
  // many rows (the row split across threads) and a large block size
  { M: 70, N: 40, K: 4100, bs: 4096, transB: true },
  { M: 70, N: 40, K: 4100, bs: 4096, transB: false },
];

describe('native gemmNf4 vs dequantize-then-gemm', () => {
  it(`matches on odd shapes, both transB (dispatch: ${loadAddon()?.gemmNf4Isa ? (loadAddon() as unknown as Nf4Addon).gemmNf4Isa() : 'n/a'})`, () => {
    const a = addon();
    CASES.forEach((c, i) => {
        run(c, 100 + i, a.gemmNf4);
      });
  });

  it('the scalar fallback matches too', () => {
    const a = addon();
    a.gemmNf4ForceScalar(true);
    try {
      expect(a.gemmNf4Isa()).toBe('scalar');
      CASES.forEach((c, i) => {
        run(c, 200 + i, a.gemmNf4);
      });
    } finally {
      a.gemmNf4ForceScalar(false);
    }
  });

  it('K = 0 leaves beta * C; alpha = 0 ignores W', () => {
    const a = addon();
    const C = Float32Array.from([1, 2, 3, 4]);
    a.gemmNf4(true, 2, 2, 0, 1, new Float32Array(0), 0, new Uint8Array(0), new Float32Array(0), 64, codeTable4('nf4'), 3, C, 2);
    expect([...C]).toEqual([3, 6, 9, 12]);
    const q = quantize4bit(new Float32Array(4).fill(1), { quantType: 'nf4' });
    a.gemmNf4(true, 2, 2, 2, 0, new Float32Array(4).fill(Number.NaN), 2, q.packed, q.absmax, 64, codeTable4('nf4'), 0.5, C, 2);
    expect([...C]).toEqual([1.5, 3, 4.5, 6]);
  });

  it('rejects buffers that are too small, naming the argument', () => {
    const a = addon();
    const q = quantize4bit(new Float32Array(64), { quantType: 'nf4' });
    const code = codeTable4('nf4');
    const C = new Float32Array(8 * 8);
    expect(() => a.gemmNf4(true, 8, 8, 8, 1, new Float32Array(63), 8, q.packed, q.absmax, 64, code, 0, C, 8)).toThrow(/A is too small/);
    expect(() => a.gemmNf4(true, 8, 8, 8, 1, new Float32Array(64), 8, q.packed.subarray(1), q.absmax, 64, code, 0, C, 8)).toThrow(/packed has 31 bytes, need 32/);
    expect(() => a.gemmNf4(true, 8, 8, 8, 1, new Float32Array(64), 8, q.packed, q.absmax, 32, code, 0, C, 8)).toThrow(/absmax has 1 values, need 2/);
    expect(() => a.gemmNf4(true, 8, 8, 8, 1, new Float32Array(64), 8, q.packed, q.absmax, 64, code.subarray(1), 0, C, 8)).toThrow(/code must have 16 entries/);
    expect(() => a.gemmNf4(true, 8, 8, 8, 1, new Float32Array(64), 8, q.packed, q.absmax, 64, code, 0, C.subarray(1), 8)).toThrow(/C is too small/);
  });
});
