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
   * C[M,N] = alpha * A · B^T + beta * C with A [M,K] (row stride lda), B [N,K] (ldb), C [M,N] (ldc), for a
   * small M (decode: one token): y = x W^T with the weight as stored. Same result as gemm(false, true, ...);
   * streams B once, so it runs at memory speed. src/tensor/ops.ts sends M <= GEMV_MAX_ROWS here.
   * When beta == 0, C is overwritten.
   */
  gemv(
    M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number, B: Float32Array, ldb: number,
    beta: number, C: Float32Array, ldc: number,
  ): void;

  /** gemv with B in bf16 (widened to f32; the dot products are f32). */
  gemvBf16(
    M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number, B: Bf16Array, ldb: number,
    beta: number, C: Float32Array, ldc: number,
  ): void;

  /**
   * C[M,N] = alpha * A^T · B + beta * C with A [K,M] (row stride lda), B [K,N] (ldb), C [M,N] (ldc), for a
   * small M: LoRA's weight gradients gA = gu^T x and gB^T = u^T g (a reduction over the tokens into r
   * rows). Same result as gemm(true, false, ...), faster for M <= 16. When beta == 0, C is overwritten.
   */
  gemmAtB(
    M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number, B: Float32Array, ldb: number,
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
   * Attention of n new query rows over a KV cache (incremental decoding, batch 1, grouped-query, no
   * backward). q and out are [n, H, D]; keys and values are [capacity, Hkv, D] and already hold the
   * start + n tokens (the new ones at start .. start+n-1). Query row i sits at position start + i and
   * attends to keys 0 .. start + i; head h reads kv head floor(h / (H/Hkv)). Scores are scaled by scale.
   */
  attentionDecode(
    q: Float32Array, keys: Float32Array, values: Float32Array, out: Float32Array,
    start: number, n: number, H: number, Hkv: number, D: number, scale: number,
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

  /**
   * Softmax cross-entropy of `rows` rows of logits [rows, V] against labels[labelOffset + r].
   * A row whose label is -100 (ignore_index) adds nothing and, when grad is given, gets a zero grad row.
   * Otherwise the row adds logsumexp(row) - row[label] (a stable softmax: the row max is subtracted),
   * and grad [rows, V] receives d(row loss)/d(logits) = softmax(row) - onehot(label).
   * grad may be the logits buffer itself (the gradient is then written in place). Returns the summed
   * loss (accumulated in f64). Throws on a label outside [0, V) other than -100; rows that are not
   * finite (NaN or +-Infinity in the max) give a NaN loss. rowLoss, when given, receives each row's loss
   * (0 for an ignored row): the per-sequence log-probabilities of DPO are sums of them.
   */
  crossEntropyRows(
    logits: Float32Array, labels: Int32Array, labelOffset: number, rows: number, V: number, grad: Float32Array | null,
    rowLoss?: Float64Array | null,
  ): number;

  /**
   * Elementwise sum: out[i] = a[i] + b[i] for i < n (residual adds, gradient accumulation). out may be
   * a or b. Plain f32 additions, so every backend gives the same bits.
   */
  addVec(a: Float32Array, b: Float32Array, out: Float32Array, n: number): void;

  /** SwiGLU forward: out[i] = silu(gate[i]) * up[i] for i < n (silu(v) = v * sigmoid(v)). */
  swigluFwd(gate: Float32Array, up: Float32Array, out: Float32Array, n: number): void;

  /**
   * SwiGLU backward: given dout = dL/dout, overwrites dgate[i] = dout * up * silu'(gate) and
   * dup[i] = dout * silu(gate), for i < n. Either output may be null (not wanted).
   */
  swigluBwd(
    gate: Float32Array, up: Float32Array, dout: Float32Array, dgate: Float32Array | null, dup: Float32Array | null, n: number,
  ): void;

  /** SiLU forward: out[i] = x[i] * sigmoid(x[i]) for i < n. out may be x. */
  siluFwd(x: Float32Array, out: Float32Array, n: number): void;

  /** SiLU backward: dx[i] = dout[i] * silu'(x[i]) for i < n (overwrites dx). */
  siluBwd(x: Float32Array, dout: Float32Array, dx: Float32Array, n: number): void;

  /** GELU, tanh approximation: out[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) for i < n. */
  geluTanhFwd(x: Float32Array, out: Float32Array, n: number): void;

  /** Backward of geluTanhFwd: dx[i] = dout[i] * gelu'(x[i]) for i < n (overwrites dx). */
  geluTanhBwd(x: Float32Array, dout: Float32Array, dx: Float32Array, n: number): void;

  /**
   * RMSNorm forward over rows of x [rows, D]: rstd[r] = 1 / sqrt(mean(x[r]^2) + eps) (kept for the
   * backward) and out[r, j] = x[r, j] * rstd[r] * w[j].
   */
  rmsNormFwd(
    x: Float32Array, w: Float32Array, out: Float32Array, rstd: Float32Array, rows: number, D: number, eps: number,
  ): void;

  /**
   * Backward of rmsNormFwd given dout [rows, D] and the saved rstd [rows]. With xhat = x * rstd:
   * dx[r] = rstd[r] * (dout[r] * w - xhat[r] * mean_j(dout[r] * w * xhat[r])) (overwritten), and
   * dw[j] = sum over rows of dout[r, j] * xhat[r, j] (OVERWRITTEN with the sum, not added to dw).
   * Either output may be null.
   */
  rmsNormBwd(
    dout: Float32Array, x: Float32Array, w: Float32Array, rstd: Float32Array,
    dx: Float32Array | null, dw: Float32Array | null, rows: number, D: number,
  ): void;

  /**
   * Rotary embedding (rotate_half convention) of x [tokens, heads, D] into out (same shape; may be x):
   * for i < half, with c = cos[p*half + i], s = sign * sin[p*half + i] and p = positions[t],
   * out[i] = x[i] c - x[i+half] s and out[i+half] = x[i+half] c + x[i] s; dims from 2*half on are
   * copied. sign = 1 is the forward, -1 its backward (the inverse rotation). Throws on a position
   * outside the tables [cos.length / half, half].
   */
  ropeApply(
    x: Float32Array, out: Float32Array, positions: Int32Array, cos: Float32Array, sin: Float32Array,
    tokens: number, heads: number, D: number, half: number, sign: number,
  ): void;

  /**
   * One AdamW update of n elements, as torch.optim.AdamW (decoupled weight decay), computed in f64
   * and stored in f32:  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
   * w = w (1 - lr wd) - (lr / bc1) m / (sqrt(v) / bc2 + eps), with bc1 = 1 - b1^t and
   * bc2 = sqrt(1 - b2^t) passed in by the caller.
   */
  adamwStep(
    w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, n: number,
    lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
  ): void;
}
