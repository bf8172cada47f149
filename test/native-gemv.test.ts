// gemv / gemvBf16 (native/src/gemv.cc): C = alpha A B^T + beta C for a small M, against the js gemm, in both
// native flavours (avx2 where the CPU has it, and scalar): odd sizes (row tails past 4, column tails past 16),
// strides, beta 0 over NaN, bf16 weights; and the dispatch of gemmFor / gemmBf16For to it.
import { afterAll, describe, expect, it } from 'vitest';
import { f32ToBf16 } from '../src/io/dtypes.js';
import { setKernels } from '../src/kernels/index.js';
import { gemm as gemmJs, gemmBf16 as gemmBf16Js } from '../src/kernels/js/gemm.js';
import { jsKernels } from '../src/kernels/js/index.js';
import { loadAddon, nativeKernels } from '../src/kernels/native/index.js';
import { Rng } from '../src/tensor/rng.js';
import { GEMV_MAX_ROWS, gemmBf16For, gemmFor } from '../src/tensor/ops.js';
import { expectGemmResult } from './helpers.js';

interface GemvAddon {
  gemvForceScalar(on: boolean): string;
}

function addon(): GemvAddon {
  const a = loadAddon();
  expect(a, 'the native addon did not load: run `npm run build:native`').not.toBeNull();
  expect(typeof a?.gemv, 'the addon exports gemv (native/src/gemv.cc)').toBe('function');
  return a as unknown as GemvAddon;
}

function randn(n: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a, 0, 1);
  return a;
}

afterAll(() => {
  (loadAddon() as unknown as GemvAddon | null)?.gemvForceScalar(false);
  setKernels(nativeKernels() ?? jsKernels);
});

describe('native gemv', () => {
  for (const scalar of [false, true]) {
    for (const bf16 of [false, true]) {
      it(`matches the js gemm(false, true, ...) (${bf16 ? 'bf16' : 'f32'} B, ${scalar ? 'scalar' : 'best'} flavour)`, () => {
        expect(addon().gemvForceScalar(scalar)).toBe(scalar || process.env.AJUSTE_ISA === 'scalar' ? 'scalar' : 'avx2');
        const k = nativeKernels()!;
        const rng = new Rng(11);
        const cases: [number, number, number][] = [
          [1, 576, 576], [1, 1537, 577], [1, 1, 1], [3, 17, 5], [2, 5, 33], [4, 200, 70], [1, 7, 16], [8, 9, 31], [4, 40, 0], [1, 0, 12],
          [1, 1024, 1024],
        ];
        for (const [M, N, K] of cases) {
          for (const [alpha, beta, pad] of [[1, 0, 0], [0.7, 0.5, 3], [-2, 1, 1]] as const) {
            const lda = Math.max(1, K + pad), ldb = Math.max(1, K + 2 * pad), ldc = Math.max(1, N + pad);
            const A = randn(Math.max(1, M * lda), rng);
            const Bf = randn(Math.max(1, N * ldb), rng);
            const Bh = f32ToBf16(Bf);
            const C0 = randn(Math.max(1, M * ldc), rng);
            if (beta === 0) C0.fill(Number.NaN);
            const ref = Float32Array.from(C0);
            const got = Float32Array.from(C0);
            if (bf16) {
              gemmBf16Js(false, true, M, N, K, alpha, A, lda, Bh, ldb, beta, ref, ldc);
              k.gemvBf16(M, N, K, alpha, A, lda, Bh, ldb, beta, got, ldc);
            } else {
              gemmJs(false, true, M, N, K, alpha, A, lda, Bf, ldb, beta, ref, ldc);
              k.gemv(M, N, K, alpha, A, lda, Bf, ldb, beta, got, ldc);
            }
            expectGemmResult(got, ref, C0, M, N, K, ldc, `M=${M} N=${N} K=${K} alpha=${alpha} beta=${beta}`);
          }
        }
      });
    }
  }

  it('checks its arguments', () => {
    const k = nativeKernels()!;
    addon();
    const f = (n: number) => new Float32Array(n);
    expect(() => k.gemv(2, 3, 4, 1, f(7), 4, f(12), 4, 0, f(6), 3)).toThrow(/A has 7 elements/);
    expect(() => k.gemv(2, 3, 4, 1, f(8), 3, f(12), 4, 0, f(6), 3)).toThrow(/row stride of A/);
    expect(() => k.gemv(2, 3, 4, 1, f(8), 4, f(12), 4, 0, f(5), 3)).toThrow(/C has 5 elements/);
    expect(() => k.gemvBf16(2, 3, 4, 1, f(8), 4, f(12) as unknown as Uint16Array, 4, 0, f(6), 3)).toThrow(/Uint16Array/);
  });

  it('gemmFor / gemmBf16For send few rows times B^T to gemv and give the gemm result', () => {
    const native = nativeKernels()!;
    addon();
    const calls: string[] = [];
    setKernels({
      ...native,
      gemv: (...a) => {
        calls.push('gemv');
        native.gemv(...a);
      },
      gemvBf16: (...a) => {
        calls.push('gemvBf16');
        native.gemvBf16(...a);
      },
      gemm: (...a) => {
        calls.push('gemm');
        native.gemm(...a);
      },
      gemmBf16: (...a) => {
        calls.push('gemmBf16');
        native.gemmBf16(...a);
      },
    });
    const rng = new Rng(3);
    const [N, K] = [33, 20];
    const B = randn(N * K, rng), Bh = f32ToBf16(B);
    for (const M of [1, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1]) {
      const A = randn(M * K, rng);
      const ref = new Float32Array(M * N), got = new Float32Array(M * N), gotH = new Float32Array(M * N), refH = new Float32Array(M * N);
      gemmJs(false, true, M, N, K, 1, A, K, B, K, 0, ref, N);
      gemmBf16Js(false, true, M, N, K, 1, A, K, Bh, K, 0, refH, N);
      calls.length = 0;
      gemmFor(A)(false, true, M, N, K, 1, A, K, B, K, 0, got, N);
      gemmBf16For(A)(false, true, M, N, K, 1, A, K, Bh, K, 0, gotH, N);
      expect(calls).toEqual(M <= GEMV_MAX_ROWS ? ['gemv', 'gemvBf16'] : ['gemm', 'gemmBf16']);
      for (let i = 0; i < M * N; i++) {
        expect(got[i]).toBeCloseTo(ref[i]!, 4);
        expect(gotH[i]).toBeCloseTo(refH[i]!, 4);
      }
    }
    calls.length = 0;
    const A = randn(N, rng), out = new Float32Array(K);
    gemmFor(A)(false, false, 1, K, N, 1, A, N, B, K, 0, out, K); // not A B^T: stays on gemm
    expect(calls).toEqual(['gemm']);
  });
});
