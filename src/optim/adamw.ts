/**
 * AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction), and plain SGD.
 * States are f32 arrays per parameter; `stateDict()` / `loadStateDict()` serve checkpoints.
 */
import { kernels } from '../kernels/index.js';
import { jsKernels } from '../kernels/js/index.js';
import type { Tensor } from '../tensor/tensor.js';

export interface ParamGroup {
  params: Tensor[];
  weightDecay: number;
}

export interface Optimizer {
  readonly groups: ParamGroup[];
  lr: number;
  step(): void;
  zeroGrad(): void;
  /** Named state arrays for checkpoints (keys are stable across runs of the same model). */
  stateDict(): { step: number; tensors: Map<string, Float32Array | Uint8Array> };
  loadStateDict(s: { step: number; tensors: Map<string, Float32Array | Uint8Array> }): void;
  /** Bytes held by the optimizer state. */
  stateBytes(): number;
}

export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
}

export class AdamW implements Optimizer {
  lr: number;
  private readonly b1: number;
  private readonly b2: number;
  private readonly eps: number;
  private t = 0;
  private readonly m = new Map<Tensor, Float32Array>();
  private readonly v = new Map<Tensor, Float32Array>();

  constructor(
    readonly groups: ParamGroup[],
    o: AdamWOptions,
  ) {
    this.lr = o.lr;
    [this.b1, this.b2] = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    for (const g of groups) for (const p of g.params) {
      this.m.set(p, new Float32Array(p.size));
      this.v.set(p, new Float32Array(p.size));
    }
  }

  step(): void {
    this.t++;
    const { b1, b2, eps, lr } = this;
    const bc1 = 1 - b1 ** this.t;
    const bc2 = Math.sqrt(1 - b2 ** this.t);
    const K = kernels();
    for (const group of this.groups) {
      for (const p of group.params) {
        if (!p.grad) continue;
        const w = p.f, g = p.grad.f;
        const m = this.m.get(p)!, v = this.v.get(p)!;
        // f64 parameters (gradient checks) take the generic js kernel; the kernel types are f32.
        const k = w instanceof Float64Array || g instanceof Float64Array ? jsKernels : K;
        k.adamwStep(w as Float32Array, g as Float32Array, m, v, w.length, lr, b1, b2, eps, group.weightDecay, bc1, bc2);
      }
    }
  }

  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad?.f.fill(0);
  }

  stateDict(): { step: number; tensors: Map<string, Float32Array> } {
    const tensors = new Map<string, Float32Array>();
    for (const g of this.groups) for (const p of g.params) {
      tensors.set(`${p.name}.exp_avg`, this.m.get(p)!);
      tensors.set(`${p.name}.exp_avg_sq`, this.v.get(p)!);
    }
    return { step: this.t, tensors };
  }

  loadStateDict(s: { step: number; tensors: Map<string, Float32Array | Uint8Array> }): void {
    this.t = s.step;
    for (const g of this.groups) for (const p of g.params) {
      for (const [key, target] of [[`${p.name}.exp_avg`, this.m.get(p)!], [`${p.name}.exp_avg_sq`, this.v.get(p)!]] as const) {
        const src = s.tensors.get(key);
        if (!(src instanceof Float32Array) || src.length !== target.length) throw new Error(`optimizer state: '${key}' is missing or has the wrong size`);
        target.set(src);
      }
    }
  }

  stateBytes(): number {
    let n = 0;
    for (const a of this.m.values()) n += a.byteLength * 2;
    return n;
  }
}

/** SGD with optional momentum and (coupled, torch-style) weight decay. */
export class Sgd implements Optimizer {
  lr: number;
  private t = 0;
  private readonly buf = new Map<Tensor, Float32Array>();
  constructor(
    readonly groups: ParamGroup[],
    o: { lr: number; momentum?: number },
  ) {
    this.lr = o.lr;
    this.momentum = o.momentum ?? 0;
    if (this.momentum) for (const g of groups) for (const p of g.params) this.buf.set(p, new Float32Array(p.size));
  }
  private readonly momentum: number;

  step(): void {
    this.t++;
    for (const group of this.groups)
      for (const p of group.params) {
        if (!p.grad) continue;
        const w = p.f, g = p.grad.f, b = this.buf.get(p);
        for (let i = 0; i < w.length; i++) {
          let d = g[i]! + group.weightDecay * w[i]!;
          if (b) d = b[i] = this.momentum * b[i]! + d;
          w[i]! -= this.lr * d;
        }
      }
  }
  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad?.f.fill(0);
  }
  stateDict(): { step: number; tensors: Map<string, Float32Array> } {
    const tensors = new Map<string, Float32Array>();
    for (const g of this.groups) for (const p of g.params) if (this.buf.has(p)) tensors.set(`${p.name}.momentum_buffer`, this.buf.get(p)!);
    return { step: this.t, tensors };
  }
  loadStateDict(s: { step: number; tensors: Map<string, Float32Array | Uint8Array> }): void {
    this.t = s.step;
    for (const [p, b] of this.buf) {
      const src = s.tensors.get(`${p.name}.momentum_buffer`);
      if (!(src instanceof Float32Array) || src.length !== b.length) throw new Error(`optimizer state for ${p.name} is missing`);
      b.set(src);
    }
  }
  stateBytes(): number {
    let n = 0;
    for (const a of this.buf.values()) n += a.byteLength;
    return n;
  }
}

/**
 * Splits parameters into decay / no-decay groups as transformers' Trainer does: biases and
 * normalisation weights get no weight decay.
 */
export function decayGroups(named: [string, Tensor][], weightDecay: number): ParamGroup[] {
  const noDecay = (n: string) => /(^|\.)bias$|norm|ln_\d|ln_f|layernorm/i.test(n);
  const decay = named.filter(([n]) => !noDecay(n)).map(([, p]) => p);
  const rest = named.filter(([n]) => noDecay(n)).map(([, p]) => p);
  return [
    { params: decay, weightDecay },
    { params: rest, weightDecay: 0 },
  ].filter((g) => g.params.length > 0);
}

/** Scales gradients so their global L2 norm is at most maxNorm (torch clip_grad_norm_); returns the norm before clipping. */
export function clipGradNorm(params: Tensor[], maxNorm: number): number {
  let ss = 0;
  for (const p of params) {
    if (!p.grad) continue;
    const g = p.grad.f;
    for (let i = 0; i < g.length; i++) ss += g[i]! * g[i]!;
  }
  const norm = Math.sqrt(ss);
  if (maxNorm > 0 && Number.isFinite(norm)) {
    const coef = maxNorm / (norm + 1e-6);
    if (coef < 1) for (const p of params) if (p.grad) {
      const g = p.grad.f;
      for (let i = 0; i < g.length; i++) g[i]! *= coef;
    }
  }
  return norm;
}
