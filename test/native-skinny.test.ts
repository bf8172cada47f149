// gemmAtB (native/src/skinny.cc): C = alpha A^T B + beta C with a small M, against the js gemm, in both
// native flavours (avx2 where the CPU has it, and scalar): odd sizes, column tails, strides, beta 0 over NaN.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gemm as gemmJs } from '../src/kernels/js/gemm.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';
import { expectGemmResult } from './helpers.js';

interface SkinnyAddon {
  skinnyForceScalar(on: boolean): string;
}

function addon(): SkinnyAddon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.gemmAtB, 'the addon exports gemmAtB (native/src/skinny.cc)').toBe('function');
  return a as unknown as SkinnyAddon;
}

function randn(n: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a, 0, 1);
  return a;
}

// Child process: gemmAtB on shapes that split over threads (narrow and wide column ranges, tails), hashed.
const CHILD = `
const crypto = require('node:crypto');
const a = require(process.argv[1]);
let s = 12345;
const rnd = (n) => { const x = new Float32Array(n); for (let i = 0; i < n; i++) { s = (s * 1103515245 + 12345) >>> 0; x[i] = s / 2 ** 32 - 0.5; } return x; };
const h = crypto.createHash('sha256');
for (const [M, N, K, beta] of [[8, 576, 1024, 0], [8, 2100, 333, 1], [5, 4000, 67, 0], [8, 192, 1024, 0.5]]) {
  const A = rnd(K * M), B = rnd(K * N), C = rnd(M * N);
  a.gemmAtB(M, N, K, 0.75, A, M, B, N, beta, C, N);
  h.update(Buffer.from(C.buffer));
}
console.log(JSON.stringify({ threads: a.info().threads, hash: h.digest('hex') }));
`;

afterAll(() => {
  (loadAddon() as unknown as SkinnyAddon | null)?.skinnyForceScalar(false);
});

describe('native gemmAtB', () => {
  for (const scalar of [false, true]) {
    it(`matches the js gemm(true, false, ...) (${scalar ? 'scalar' : 'best'} flavour)`, () => {
      expect(addon().skinnyForceScalar(scalar)).toBe(scalar ? 'scalar' : process.env.AJUSTE_ISA === 'scalar' ? 'scalar' : 'avx2');
      const k = nativeKernels()!;
      const rng = new Rng(5);
      const cases: [number, number, number][] = [
        [8, 576, 1024], [8, 37, 300], [1, 1, 1], [3, 17, 5], [5, 16, 33], [16, 200, 70], [7, 1, 9], [4, 40, 0], [8, 1536, 257],
        // wide column ranges (8-row sweeps, prefetch ahead), column tails (N % 24), K % 8 != 0
        [8, 2100, 45], [6, 1100, 19], [2, 49, 3],
      ];
      for (const [M, N, K] of cases) {
        for (const [alpha, beta, pad] of [[1, 0, 0], [0.7, 0.5, 3], [-2, 1, 1]] as const) {
          const lda = M + pad, ldb = N + pad, ldc = N + 2 * pad;
          const A = randn(Math.max(1, K * lda), rng), B = randn(Math.max(1, K * ldb), rng);
          const C0 = randn(M * ldc, rng);
          if (beta === 0) C0.fill(Number.NaN);
          const ref = Float32Array.from(C0);
          const got = Float32Array.from(C0);
          gemmJs(true, false, M, N, K, alpha, A, lda, B, ldb, beta, ref, ldc);
          k.gemmAtB(M, N, K, alpha, A, lda, B, ldb, beta, got, ldc);
          expectGemmResult(got, ref, C0, M, N, K, ldc, `M=${M} N=${N} K=${K} alpha=${alpha} beta=${beta}`);
        }
      }
    });
  }

  it('AJUSTE_THREADS=1 and =2 give bitwise identical results', () => {
    addon();
    const file = join(process.cwd(), 'build', 'Release', 'ajuste_native.node');
    const out = ['1', '2'].map((t) => {
      const r = spawnSync(process.execPath, ['-e', CHILD, file], { env: { ...process.env, AJUSTE_THREADS: t }, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout.trim()) as { threads: number; hash: string };
    });
    expect(out.map((o) => o.threads)).toEqual([1, 2]);
    expect(out[0]!.hash).toBe(out[1]!.hash);
  });

  it('checks its arguments', () => {
    const k = nativeKernels()!;
    addon();
    const f = (n: number) => new Float32Array(n);
    expect(() => k.gemmAtB(2, 3, 4, 1, f(7), 2, f(12), 3, 0, f(6), 3)).toThrow(/A has 7 elements/);
    expect(() => k.gemmAtB(2, 3, 4, 1, f(8), 1, f(12), 3, 0, f(6), 3)).toThrow(/row stride of A/);
    expect(() => k.gemmAtB(2, 3, 4, 1, f(8), 2, f(12), 3, 0, f(5), 3)).toThrow(/C has 5 elements/);
  });
});
