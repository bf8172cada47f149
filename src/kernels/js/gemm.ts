/** Reference GEMM in plain TypeScript: simple, blocked just enough to be usable as a fallback. */
import type { Bf16Array } from '../backend.js';

/** The js kernels also run in f64 (the gradient checks use that). */
export type Floats = Float32Array | Float64Array;

/** C[M,N] = alpha * op(A) · op(B) + beta * C, row-major. See Kernels.gemm. */
export function gemm(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  alpha: number, A: Floats, lda: number, B: Floats, ldb: number,
  beta: number, C: Floats, ldc: number,
): void {
  scaleC(M, N, beta, C, ldc);
  if (K === 0 || alpha === 0) return;
  const row = new Float64Array(N);
  // For each row i of C: C[i,:] += alpha * sum_p op(A)[i,p] * op(B)[p,:]
  for (let i = 0; i < M; i++) {
    row.fill(0);
    if (!transB) {
      for (let p = 0; p < K; p++) {
        const a = transA ? A[p * lda + i]! : A[i * lda + p]!;
        if (a === 0) continue;
        const bo = p * ldb;
        for (let j = 0; j < N; j++) row[j]! += a * B[bo + j]!;
      }
    } else {
      for (let j = 0; j < N; j++) {
        const bo = j * ldb;
        let s = 0;
        if (transA) for (let p = 0; p < K; p++) s += A[p * lda + i]! * B[bo + p]!;
        else {
          const ao = i * lda;
          for (let p = 0; p < K; p++) s += A[ao + p]! * B[bo + p]!;
        }
        row[j] = s;
      }
    }
    const co = i * ldc;
    for (let j = 0; j < N; j++) C[co + j]! += alpha * row[j]!;
  }
}

/** C[M,N] = alpha * A^T B + beta * C, A [K,M], B [K,N]. See Kernels.gemmAtB. */
export function gemmAtB(
  M: number, N: number, K: number, alpha: number, A: Floats, lda: number, B: Floats, ldb: number,
  beta: number, C: Floats, ldc: number,
): void {
  gemm(true, false, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/** C[M,N] = alpha * A B^T + beta * C, A [M,K], B [N,K]. See Kernels.gemv. */
export function gemv(
  M: number, N: number, K: number, alpha: number, A: Floats, lda: number, B: Floats, ldb: number,
  beta: number, C: Floats, ldc: number,
): void {
  gemm(false, true, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/** gemv with B in bf16. See Kernels.gemvBf16. */
export function gemvBf16(
  M: number, N: number, K: number, alpha: number, A: Floats, lda: number, B: Bf16Array, ldb: number,
  beta: number, C: Floats, ldc: number,
): void {
  gemmBf16(false, true, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/** gemm with B in bf16: B is widened to f32 one row at a time. */
export function gemmBf16(
  transA: boolean, transB: boolean, M: number, N: number, K: number,
  alpha: number, A: Floats, lda: number, B: Bf16Array, ldb: number,
  beta: number, C: Floats, ldc: number,
): void {
  const rows = transB ? N : K;
  const cols = transB ? K : N;
  const wide = new Float32Array(rows * cols);
  const w32 = new Uint32Array(wide.buffer);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) w32[r * cols + c] = B[r * ldb + c]! << 16;
  gemm(transA, transB, M, N, K, alpha, A, lda, wide, cols, beta, C, ldc);
}

function scaleC(M: number, N: number, beta: number, C: Floats, ldc: number): void {
  if (beta === 1) return;
  for (let i = 0; i < M; i++) {
    const o = i * ldc;
    if (beta === 0) C.fill(0, o, o + N);
    else for (let j = 0; j < N; j++) C[o + j]! *= beta;
  }
}
