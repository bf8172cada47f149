/** The layers models are built from: Linear, Embedding, RMSNorm, LayerNorm. */
import { layerNorm, rmsNorm } from './ops/norm.js';
import { embedding, linear } from '../tensor/ops.js';
import type { Tensor } from '../tensor/tensor.js';
import { Module } from './module.js';

/** Anything that maps [..., in] to [..., out]; LoRA and other PEFT wrappers implement this too. */
export interface LinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;
  forward(x: Tensor): Tensor;
}

/** y = x W^T + b with W [out, in] (f32, or bf16 when frozen). */
export class Linear extends Module implements LinearLike {
  constructor(
    public weight: Tensor,
    public bias: Tensor | null = null,
  ) {
    super();
    this.params = { weight, bias };
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
  /** Re-reads weight/bias after the params map changed (e.g. a dtype conversion). */
  setWeight(w: Tensor, b: Tensor | null = this.bias): void {
    this.weight = w;
    this.bias = b;
    this.params = { weight: w, bias: b };
  }
}

export class Embedding extends Module {
  constructor(public weight: Tensor) {
    super();
    this.params = { weight };
  }
  forward(ids: Int32Array, shape: readonly number[]): Tensor {
    return embedding(ids, this.weight, shape);
  }
}

export class RMSNorm extends Module {
  constructor(
    public weight: Tensor,
    public eps: number,
  ) {
    super();
    this.params = { weight };
  }
  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

export class LayerNorm extends Module {
  constructor(
    public weight: Tensor,
    public bias: Tensor | null,
    public eps: number,
  ) {
    super();
    this.params = { weight, bias };
  }
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}
