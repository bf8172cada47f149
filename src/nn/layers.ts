/** The layers models are built from: Linear, Embedding, RMSNorm, LayerNorm. */
import { layerNorm, rmsNorm } from './ops/norm.js';
import { bf16ToF32 } from '../io/dtypes.js';
import { embedding, gemmBf16For, gemmFor, linear } from '../tensor/ops.js';
import type { FloatArray, Tensor } from '../tensor/tensor.js';
import { Module } from './module.js';

/** Anything that maps [..., in] to [..., out]; LoRA and other PEFT wrappers implement this too. */
export interface LinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;
  forward(x: Tensor): Tensor;
}

/**
 * A frozen weight W [out, in] as the fused PEFT ops use it: plain (f32/bf16, Linear) or 4-bit
 * (quant/linear4bit.ts). The weight is never materialised in f32 for these products.
 */
export interface FrozenWeight {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly bias: Tensor | null;
  /** out = X W^T (beta 0) or out += X W^T (beta 1); X [rows, in], out [rows, out]. */
  mulWt(X: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void;
  /** out = G W (beta 0) or out += G W (beta 1); G [rows, out], out [rows, in]. */
  mulW(G: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void;
  /** W widened to floats [out, in] (f64 for f64 weights), for merging and DoRA's weight norm. */
  denseWeight(): FloatArray;
}

/** y = x W^T + b with W [out, in] (f32, or bf16 when frozen). */
export class Linear extends Module implements LinearLike, FrozenWeight {
  constructor(weight: Tensor, bias: Tensor | null = null) {
    super();
    this.params = { weight, bias };
  }
  get weight(): Tensor {
    return this.params.weight!;
  }
  get bias(): Tensor | null {
    return this.params.bias ?? null;
  }
  get inFeatures(): number {
    return this.weight.dim(1);
  }
  get outFeatures(): number {
    return this.weight.dim(0);
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
  mulWt(X: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void {
    const W = this.weight;
    const [o, i] = [W.dim(0), W.dim(1)];
    if (W.dtype === 'bf16') gemmBf16For(X)(false, true, rows, o, i, 1, X, i, W.data as Uint16Array, i, beta, out, o);
    else gemmFor(X)(false, true, rows, o, i, 1, X, i, W.f, i, beta, out, o);
  }
  mulW(G: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void {
    const W = this.weight;
    const [o, i] = [W.dim(0), W.dim(1)];
    if (W.dtype === 'bf16') gemmBf16For(G)(false, false, rows, i, o, 1, G, o, W.data as Uint16Array, i, beta, out, i);
    else gemmFor(G)(false, false, rows, i, o, 1, G, o, W.f, i, beta, out, i);
  }
  denseWeight(): FloatArray {
    const W = this.weight;
    return W.dtype === 'bf16' ? bf16ToF32(W.data as Uint16Array) : W.f.slice();
  }
  /** Re-reads weight/bias after the params map changed (e.g. a dtype conversion). */
  setWeight(w: Tensor, b: Tensor | null = this.bias): void {
    this.params = { weight: w, bias: b };
  }
}

export class Embedding extends Module {
  constructor(weight: Tensor) {
    super();
    this.params = { weight };
  }
  get weight(): Tensor {
    return this.params.weight!;
  }
  forward(ids: Int32Array, shape: readonly number[]): Tensor {
    return embedding(ids, this.weight, shape);
  }
}

export class RMSNorm extends Module {
  constructor(
    weight: Tensor,
    public eps: number,
  ) {
    super();
    this.params = { weight };
  }
  get weight(): Tensor {
    return this.params.weight!;
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

export class LayerNorm extends Module {
  constructor(
    weight: Tensor,
    bias: Tensor | null,
    public eps: number,
  ) {
    super();
    this.params = { weight, bias };
  }
  get weight(): Tensor {
    return this.params.weight!;
  }
  get bias(): Tensor | null {
    return this.params.bias ?? null;
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}
