/**
 * The fused LoRA linear op, forward and backward side by side:
 *
 *   y = x W^T + b + s * (drop(x) A^T) B^T                     (LoRA, rsLoRA: s = alpha/r or alpha/sqrt(r))
 *   y = x W^T + b + (c - 1) * (drop(x) W^T) + c * s * (drop(x) A^T) B^T,  c = m / ||W + s B A||_row
 *                                                               (DoRA, as PEFT; the norm is detached)
 *
 * W [out,in] is frozen (f32 or bf16) and never gets a gradient buffer; A [r,in], B [out,r], m [out] train.
 * Only u = drop(x) A^T [rows, r] is kept for backward besides the inputs.
 */
import type { FrozenWeight } from '../nn/layers.js';
import { addGradOwned, needsGrad, record } from '../tensor/autograd.js';
import { gemmAtBFor, gemmFor } from '../tensor/ops.js';
import type { Rng } from '../tensor/rng.js';
import { type FloatArray, floatLike, releaseFloat, Tensor } from '../tensor/tensor.js';

export interface LoraOpArgs {
  /** The frozen base layer (plain or 4-bit) and its bias (trainable when bias = all / lora_only). */
  base: FrozenWeight;
  bias: Tensor | null;
  A: Tensor;
  B: Tensor;
  scaling: number;
  dropout: number;
  rng: Rng | null;
  /** DoRA magnitude vector [out], or null for plain LoRA. */
  magnitude: Tensor | null;
}

/** Row norms of W + s·B·A (f64 accumulation), for DoRA. */
export function doraWeightNorm(W: FrozenWeight | Float32Array | Float64Array, A: Tensor, B: Tensor, s: number): Float64Array {
  const r = A.dim(0);
  const [o, i] = [B.dim(0), A.dim(1)];
  const w = W instanceof Float32Array || W instanceof Float64Array ? W : W.denseWeight();
  const Af = A.f, Bf = B.f;
  const norms = new Float64Array(o);
  const row = new Float64Array(i);
  for (let j = 0; j < o; j++) {
    for (let k = 0; k < i; k++) row[k] = w[j * i + k]!;
    for (let q = 0; q < r; q++) {
      const b = s * Bf[j * r + q]!;
      if (b === 0) continue;
      for (let k = 0; k < i; k++) row[k]! += b * Af[q * i + k]!;
    }
    let ss = 0;
    for (let k = 0; k < i; k++) ss += row[k]! * row[k]!;
    norms[j] = Math.sqrt(ss);
  }
  return norms;
}

export function loraLinear(x: Tensor, a: LoraOpArgs): Tensor {
  const { base: W, bias, A, B, scaling: s, magnitude: m } = a;
  const [outF, inF] = [W.outFeatures, W.inFeatures];
  const r = A.dim(0);
  if (x.dim(-1) !== inF) throw new Error(`lora: input ${x.describe()} does not match a [${outF}, ${inF}] weight`);
  const rows = x.size / inF;
  const X = x.f;
  const gemm = gemmFor(X);
  const atb = gemmAtBFor(X);
  const out = Tensor.empty([...x.shape.slice(0, -1), outF], x.dtype);
  const Y = out.f;

  // Dropout on the LoRA branch input only.
  let mask: Uint8Array | null = null;
  let Xd: FloatArray = X;
  const keep = a.dropout > 0 ? 1 / (1 - a.dropout) : 1;
  if (a.dropout > 0 && a.rng) {
    mask = new Uint8Array(x.size);
    Xd = floatLike(X, x.size, false);
    for (let k = 0; k < x.size; k++) {
      const kept = a.rng.uniform() >= a.dropout;
      mask[k] = kept ? 1 : 0;
      Xd[k] = kept ? X[k]! * keep : 0;
    }
  }

  // u = Xd A^T  [rows, r]
  const u = floatLike(X, rows * r, false);
  gemm(false, true, rows, r, inF, 1, Xd, inF, A.f, inF, 0, u, r);

  let c: Float64Array | null = null;
  let norms: Float64Array | null = null;
  let baseD: FloatArray | null = null; // Xd W^T when DoRA with dropout
  if (!m) {
    W.mulWt(X, rows, Y, 0);
    gemm(false, true, rows, outF, r, s, u, r, B.f, r, 1, Y, outF);
  } else {
    norms = doraWeightNorm(W, A, B, s);
    c = new Float64Array(outF);
    for (let j = 0; j < outF; j++) c[j] = m.f[j]! / norms[j]!;
    // lora = u B^T (unscaled) into a scratch, then combine per column.
    const lora = floatLike(X, rows * outF, false);
    gemm(false, true, rows, outF, r, 1, u, r, B.f, r, 0, lora, outF);
    W.mulWt(X, rows, Y, 0);
    if (mask) {
      baseD = floatLike(X, rows * outF, false);
      W.mulWt(Xd, rows, baseD, 0);
    }
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < outF; j++) {
        const k = i * outF + j, cj = c[j]!;
        const bd = baseD ? baseD[k]! : Y[k]!;
        Y[k] = Y[k]! + (cj - 1) * bd + cj * s * lora[k]!;
        lora[k] = bd + s * lora[k]!; // kept for dm: (Xd W^T + s·lora)
      }
    if (baseD) releaseFloat(baseD);
    baseD = lora;
  }
  if (bias) {
    const b = bias.f;
    for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) Y[i * outF + j]! += b[j]!;
  }

  if (!needsGrad(x, A, B, bias, m)) {
    releaseFloat(u);
    if (Xd !== X) releaseFloat(Xd);
    if (baseD) releaseFloat(baseD);
    return out;
  }
  record(
    m ? 'dora' : 'lora',
    [x, A, B, bias, m],
    out,
    (g) => {
      // gl = g scaled per column by c (DoRA) — the gradient reaching the LoRA product.
      let gl: FloatArray = g;
      if (c) {
        gl = floatLike(g, g.length, false);
        for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gl[i * outF + j] = g[i * outF + j]! * c[j]!;
      }
      if (m?.requiresGrad && baseD) {
        const gm = floatLike(g, outF);
        for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gm[j]! += g[i * outF + j]! * baseD[i * outF + j]!;
        for (let j = 0; j < outF; j++) gm[j]! /= norms![j]!; // dc/dm = 1/norm (the norm is detached)
        addGradOwned(m, gm);
      }
      if (B.requiresGrad) {
        // gB = s gl^T u [out, r], formed as its transpose u^T gl [r, out] (a reduction over the rows into r rows).
        const gBt = floatLike(g, r * outF, false);
        atb(r, outF, rows, s, u, r, gl, outF, 0, gBt, outF);
        const gB = floatLike(g, outF * r, false);
        for (let q = 0; q < r; q++) for (let j = 0; j < outF; j++) gB[j * r + q] = gBt[q * outF + j]!;
        releaseFloat(gBt);
        addGradOwned(B, gB);
      }
      const gu = floatLike(g, rows * r, false);
      gemm(false, false, rows, r, outF, s, gl, outF, B.f, r, 0, gu, r);
      if (A.requiresGrad) {
        const gA = floatLike(g, r * inF, false);
        atb(r, inF, rows, 1, gu, r, Xd, inF, 0, gA, inF); // gA = gu^T Xd
        addGradOwned(A, gA);
      }
      if (x.requiresGrad) {
        const gx = floatLike(g, x.size, false);
        if (!mask) {
          // gx = (c ⊙ g) W + gu A   (c = 1 for plain LoRA)
          W.mulW(gl, rows, gx, 0);
          gemm(false, false, rows, inF, r, 1, gu, r, A.f, inF, 1, gx, inF);
        } else {
          // gx = g W + mask·keep ⊙ ( ((c-1) ⊙ g) W + gu A )
          const branch = floatLike(g, x.size, false);
          gemm(false, false, rows, inF, r, 1, gu, r, A.f, inF, 0, branch, inF);
          if (c) {
            const gc = floatLike(g, g.length, false);
            for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gc[i * outF + j] = g[i * outF + j]! * (c[j]! - 1);
            W.mulW(gc, rows, branch, 1);
            releaseFloat(gc);
          }
          W.mulW(g, rows, gx, 0);
          for (let k = 0; k < x.size; k++) if (mask[k]) gx[k]! += branch[k]! * keep;
          releaseFloat(branch);
        }
        addGradOwned(x, gx);
      }
      releaseFloat(gu);
      if (gl !== g) releaseFloat(gl);
      if (bias?.requiresGrad) {
        const gb = floatLike(g, outF);
        for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gb[j]! += g[i * outF + j]!;
        addGradOwned(bias, gb);
      }
    },
    () => {
      releaseFloat(u);
      if (Xd !== X) releaseFloat(Xd);
      if (baseD) releaseFloat(baseD);
    },
  );
  return out;
}
