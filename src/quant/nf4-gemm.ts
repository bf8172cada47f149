/**
 * Reference GEMM with a 4-bit weight: dequantize the whole W, then the js gemm. The native addon's
 * `gemmNf4` (native/src/nf4.cc) has the same signature and never expands W; this is its oracle.
 */
import { gemm } from '../kernels/js/gemm.js';
import { dequantize4bit } from './nf4.js';

/**
 * C[M,N] = alpha * A[M,K] · op(W) + beta * C, with W a flat array of N*K 4-bit values
 * (`packed`, two per byte, high nibble first; scale absmax[i / blocksize]; value code[nibble] * scale).
 * - transB = true:  W is [N,K] row-major (a Linear weight [out,in]); op(W) = W^T. Forward y = x W^T
 *   with M tokens, K = in_features, N = out_features.
 * - transB = false: W is [K,N] row-major; op(W) = W. Input gradient dx = dy W with K = out_features,
 *   N = in_features.
 * A has row stride lda, C row stride ldc. When beta == 0, C is overwritten.
 */
export function gemmNf4(
  transB: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number,
  packed: Uint8Array, absmax: Float32Array, blocksize: number, code: Float32Array,
  beta: number, C: Float32Array, ldc: number,
): void {
  const W = dequantize4bit({ packed, absmax, blocksize, numel: N * K, quantType: 'nf4', code });
  gemm(false, transB, M, N, K, alpha, A, lda, W, transB ? K : N, beta, C, ldc);
}
