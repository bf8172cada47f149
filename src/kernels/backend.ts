/**
 * The kernel interface: every hot loop in ajuste goes through one of these functions.
 *
 * All buffers are flat, row-major typed arrays (use `subarray` to pass an offset view).
 * Two implementations exist: `kernels/js` (plain TypeScript, the oracle and fallback) and
 * `kernels/native` (the C++ addon). The native backend overrides whichever functions the addon
 * exports and inherits the rest from js, so a kernel can be ported one function at a time.
 */

/** bf16 stored as the upper 16 bits of an f32, in a Uint16Array. */
export type Bf16Array = Uint16Array;

export interface Kernels {
  /** Which implementation runs these kernels. */
  readonly name: 'js' | 'native';

  /**
   * Row-major SGEMM: C[M,N] = alpha * op(A) · op(B) + beta * C.
   * op(A) is A [M,K] (row stride lda) or, when transA, the transpose of A stored [K,M].
   * op(B) is B [K,N] (row stride ldb) or, when transB, the transpose of B stored [N,K].
   * When beta == 0, C is overwritten (its old contents, even NaN, are ignored).
   */
  gemm(
    transA: boolean, transB: boolean, M: number, N: number, K: number,
    alpha: number, A: Float32Array, lda: number, B: Float32Array, ldb: number,
    beta: number, C: Float32Array, ldc: number,
  ): void;

  /** Same as gemm, with B in bf16 (usually a frozen weight). Accumulates in f32. */
  gemmBf16(
    transA: boolean, transB: boolean, M: number, N: number, K: number,
    alpha: number, A: Float32Array, lda: number, B: Bf16Array, ldb: number,
    beta: number, C: Float32Array, ldc: number,
  ): void;

  /**
   * Causal self-attention forward, grouped-query.
   * q [B,T,H,D], k and v [B,T,Hkv,D] (H % Hkv == 0; head h reads kv head floor(h / (H/Hkv))).
   * out [B,T,H,D]; lse [B,H,T] receives each row's log-sum-exp of the scaled scores (kept for backward).
   * segIds, when given, is [B,T]: a query attends only to keys at positions <= its own with the same
   * segment id (packed sequences). Scores are formed per query block, never as a whole [B,H,T,T] tensor.
   */
  attentionFwd(
    q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array,
    B: number, T: number, H: number, Hkv: number, D: number, scale: number, segIds: Int32Array | null,
  ): void;

  /**
   * Backward of attentionFwd. Writes (overwrites) dq [B,T,H,D], dk and dv [B,T,Hkv,D]
   * (gradients of the kv heads summed over the query heads that share them).
   */
  attentionBwd(
    dout: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array,
    lse: Float32Array, dq: Float32Array, dk: Float32Array, dv: Float32Array,
    B: number, T: number, H: number, Hkv: number, D: number, scale: number, segIds: Int32Array | null,
  ): void;
}
