import { describe, expect, it } from 'vitest';
import { gemm } from '../src/kernels/js/gemm.js';
import { Rng } from '../src/tensor/rng.js';

function naive(tA: boolean, tB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array): Float64Array {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let p = 0; p < K; p++) s += (tA ? A[p * M + i]! : A[i * K + p]!) * (tB ? B[j * K + p]! : B[p * N + j]!);
      C[i * N + j] = s;
    }
  return C;
}

describe('js gemm', () => {
  it('matches a naive triple loop for every transpose combination', () => {
    const rng = new Rng(1);
    const [M, N, K] = [7, 13, 5];
    const A = rng.fillNormal(new Float32Array(M * K));
    const B = rng.fillNormal(new Float32Array(K * N));
    for (const tA of [false, true])
      for (const tB of [false, true]) {
        const C = new Float32Array(M * N).fill(Number.NaN);
        gemm(tA, tB, M, N, K, 1, A, tA ? M : K, B, tB ? K : N, 0, C, N);
        const ref = naive(tA, tB, M, N, K, A, B);
        for (let i = 0; i < M * N; i++) expect(C[i]).toBeCloseTo(ref[i]!, 4);
      }
  });
});
