/**
 * 8-bit AdamW as bitsandbytes' `AdamW8bit` (transformers optim `adamw_8bit` / `adamw_bnb_8bit`), on the CPU.
 *
 * States (bitsandbytes/optim/optimizer.py Optimizer2State, blockwise mode, peft-spec.md §2.9): per parameter
 * `state1` (exp_avg) as u8 codes into the signed dynamic map, `state2` (exp_avg_sq) as u8 codes into the
 * unsigned dynamic map, and an f32 absmax per block of 256 values for each (`absmax1`, `absmax2`).
 * Parameters with fewer than `minSize8bit` (4096) values keep f32 states, as bitsandbytes does.
 *
 * One step, per block of 256 (csrc/kernels.cu kOptimizerStatic8bit2StateBlockwise, ADAM):
 *   m = map1[c1]·absmax1,  v = map2[c2]·absmax2                      (dequantize)
 *   m = β1 m + (1−β1) g,   v = β2 v + (1−β2) g²                       (f32)
 *   p = p − lr·(√(1−β2^t)/(1−β1^t)) · m / (√v + √(1−β2^t)·eps)       (= lr·m̂/(√v̂ + eps))
 *   p = p·(1 − lr·wd)                                                 (decoupled decay, after the update)
 *   absmax = max|m| (max v) of the block; codes = nearest map entry of m/absmax (midpoint rule, as
 *   quant/blockwise8.ts), then a code whose value has the wrong sign moves one step toward m's sign.
 * The f32-state path of small parameters uses the same formula.
 */
import type { Tensor } from '../tensor/tensor.js';
import { codeMidpoints, quantizeBlockwise8Into } from '../quant/blockwise8.js';
import { dynamicMap } from '../quant/dynamic-map.js';
import type { AdamWOptions, Optimizer, ParamGroup } from './adamw.js';

/** bitsandbytes' blocksize for 8-bit optimizer states (since 0.44). */
export const OPTIM_BLOCKSIZE = 256;
/** Parameters smaller than this keep f32 states (bitsandbytes `min_8bit_size`). */
export const MIN_8BIT_SIZE = 4096;

export interface AdamHyper {
  lr: number;
  b1: number;
  b2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number. */
  step: number;
}

/** The two dynamic maps (signed for exp_avg, unsigned for exp_avg_sq) and their midpoints. */
export interface OptimMaps {
  qmap1: Float32Array;
  qmap2: Float32Array;
  mid1: Float32Array;
  mid2: Float32Array;
}

export function optimMaps(qmap1: Float32Array = dynamicMap(true), qmap2: Float32Array = dynamicMap(false)): OptimMaps {
  if (qmap1.length !== 256 || qmap2.length !== 256) throw new Error(`adamw_8bit: qmap1/qmap2 must have 256 entries, got ${qmap1.length}/${qmap2.length}`);
  return { qmap1, qmap2, mid1: codeMidpoints(qmap1), mid2: codeMidpoints(qmap2) };
}

/** Bytes of the 8-bit state of n values: two codes each plus two f32 absmax per block. */
export function state8bitBytes(n: number): number {
  return 2 * n + 8 * Math.ceil(n / OPTIM_BLOCKSIZE);
}

/**
 * AdamW update of w (a parameter or a slice starting at a multiple of 256) with f32 states, bitsandbytes'
 * formula and order (decay after the update).
 */
export function adamUpdate32Bnb(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, h: AdamHyper): void {
  const { b1, b2, eps, lr } = h;
  const c1 = 1 - b1 ** h.step;
  const c2 = Math.sqrt(1 - b2 ** h.step);
  const stepSize = (-lr * c2) / c1;
  const decay = 1 - lr * h.weightDecay;
  const epsC = c2 * eps;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i]!;
    const mi = (m[i] = m[i]! * b1 + (1 - b1) * gi);
    const vi = (v[i] = v[i]! * b2 + (1 - b2) * gi * gi);
    let p = w[i]! + stepSize * (mi / (Math.sqrt(vi) + epsC));
    if (h.weightDecay > 0) p *= decay;
    w[i] = p;
  }
}

/**
 * AdamW update with 8-bit blockwise states. w, g, s1, s2 cover the same n values; a1, a2 their
 * ceil(n/256) block absmax. A slice of a bigger parameter must start at a multiple of 256.
 */
export function adamUpdate8bit(
  w: Float32Array, g: Float32Array, s1: Uint8Array, s2: Uint8Array, a1: Float32Array, a2: Float32Array, h: AdamHyper, maps: OptimMaps,
): void {
  const { b1, b2, eps, lr } = h;
  const { qmap1, qmap2, mid1, mid2 } = maps;
  const c1 = 1 - b1 ** h.step;
  const c2 = Math.sqrt(1 - b2 ** h.step);
  const stepSize = (-lr * c2) / c1;
  const decay = 1 - lr * h.weightDecay;
  const epsC = c2 * eps;
  const n = w.length;
  const m = scratchM, v = scratchV;
  for (let b = 0, start = 0; start < n; b++, start += OPTIM_BLOCKSIZE) {
    const len = Math.min(OPTIM_BLOCKSIZE, n - start);
    const am1 = a1[b]!, am2 = a2[b]!;
    for (let j = 0; j < len; j++) {
      const i = start + j;
      const gi = g[i]!;
      const mi = qmap1[s1[i]!]! * am1 * b1 + (1 - b1) * gi;
      const vi = qmap2[s2[i]!]! * am2 * b2 + (1 - b2) * gi * gi;
      m[j] = mi;
      v[j] = vi;
      let p = w[i]! + stepSize * (Math.fround(mi) / (Math.sqrt(Math.fround(vi)) + epsC));
      if (h.weightDecay > 0) p *= decay;
      w[i] = p;
    }
    const mb = m.subarray(0, len), vb = v.subarray(0, len);
    const c1s = s1.subarray(start, start + len), c2s = s2.subarray(start, start + len);
    quantizeBlockwise8Into(mb, qmap1, OPTIM_BLOCKSIZE, c1s, a1.subarray(b, b + 1), mid1);
    quantizeBlockwise8Into(vb, qmap2, OPTIM_BLOCKSIZE, c2s, a2.subarray(b, b + 1), mid2);
    // Keep the sign of the first moment (bitsandbytes: a code of the wrong sign moves one step).
    for (let j = 0; j < len; j++) {
      const x = mb[j]!, q = qmap1[c1s[j]!]!;
      if (x > 0 && q < 0) c1s[j]! += 1;
      else if (x < 0 && q >= 0) c1s[j]! -= 1;
    }
  }
}
const scratchM = new Float32Array(OPTIM_BLOCKSIZE);
const scratchV = new Float32Array(OPTIM_BLOCKSIZE);

interface ParamState8 {
  /** 8-bit codes (8-bit mode) or f32 values (small parameters). */
  s1: Uint8Array | Float32Array;
  s2: Uint8Array | Float32Array;
  a1: Float32Array | null;
  a2: Float32Array | null;
}

export interface AdamW8bitOptions extends AdamWOptions {
  /** Parameters with fewer values keep f32 states (default 4096, bitsandbytes' min_8bit_size). */
  minSize8bit?: number;
}

function checkNames(groups: ParamGroup[], who: string): void {
  const seen = new Set<string>();
  for (const g of groups) for (const p of g.params) {
    if (!p.name) throw new Error(`${who}: every parameter needs a name (set by parameter(t, name)) for its checkpointed state`);
    if (seen.has(p.name)) throw new Error(`${who}: two parameters are named '${p.name}'`);
    seen.add(p.name);
  }
}

/** bitsandbytes-style AdamW with blockwise 8-bit states, resident in memory. */
export class AdamW8bit implements Optimizer {
  lr: number;
  private readonly b1: number;
  private readonly b2: number;
  private readonly eps: number;
  private t = 0;
  private maps: OptimMaps;
  private readonly states = new Map<Tensor, ParamState8>();
  readonly minSize8bit: number;

  constructor(
    readonly groups: ParamGroup[],
    o: AdamW8bitOptions,
  ) {
    this.lr = o.lr;
    [this.b1, this.b2] = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    this.minSize8bit = o.minSize8bit ?? MIN_8BIT_SIZE;
    this.maps = optimMaps();
    checkNames(groups, 'adamw_8bit');
    for (const g of groups) for (const p of g.params) {
      const n = p.size;
      if (n >= this.minSize8bit) {
        const nb = Math.ceil(n / OPTIM_BLOCKSIZE);
        this.states.set(p, { s1: new Uint8Array(n), s2: new Uint8Array(n), a1: new Float32Array(nb), a2: new Float32Array(nb) });
      } else this.states.set(p, { s1: new Float32Array(n), s2: new Float32Array(n), a1: null, a2: null });
    }
  }

  step(): void {
    this.t++;
    for (const group of this.groups) {
      const h: AdamHyper = { lr: this.lr, b1: this.b1, b2: this.b2, eps: this.eps, weightDecay: group.weightDecay, step: this.t };
      for (const p of group.params) {
        if (!p.grad) continue;
        const s = this.states.get(p)!;
        const w = p.f as Float32Array, g = p.grad.f as Float32Array;
        if (s.a1 && s.a2) adamUpdate8bit(w, g, s.s1 as Uint8Array, s.s2 as Uint8Array, s.a1, s.a2, h, this.maps);
        else adamUpdate32Bnb(w, g, s.s1 as Float32Array, s.s2 as Float32Array, h);
      }
    }
  }

  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad?.f.fill(0);
  }

  /** Keys `<param>.state1`, `.state2` (U8 codes, or F32 for small parameters), `.absmax1`, `.absmax2`, and the maps `qmap1`, `qmap2`. */
  stateDict(): { step: number; tensors: Map<string, Float32Array | Uint8Array> } {
    const tensors = new Map<string, Float32Array | Uint8Array>();
    tensors.set('qmap1', this.maps.qmap1);
    tensors.set('qmap2', this.maps.qmap2);
    for (const g of this.groups) for (const p of g.params) {
      const s = this.states.get(p)!;
      tensors.set(`${p.name}.state1`, s.s1);
      tensors.set(`${p.name}.state2`, s.s2);
      if (s.a1 && s.a2) {
        tensors.set(`${p.name}.absmax1`, s.a1);
        tensors.set(`${p.name}.absmax2`, s.a2);
      }
    }
    return { step: this.t, tensors };
  }

  loadStateDict(sd: { step: number; tensors: Map<string, Float32Array | Uint8Array> }): void {
    const q1 = sd.tensors.get('qmap1'), q2 = sd.tensors.get('qmap2');
    if (q1 instanceof Float32Array && q2 instanceof Float32Array) this.maps = optimMaps(q1.slice(), q2.slice()); // the stored maps, never regenerated
    for (const g of this.groups) for (const p of g.params) {
      const s = this.states.get(p)!;
      const pairs: [string, Float32Array | Uint8Array | null][] = [[`${p.name}.state1`, s.s1], [`${p.name}.state2`, s.s2], [`${p.name}.absmax1`, s.a1], [`${p.name}.absmax2`, s.a2]];
      for (const [key, target] of pairs) {
        if (!target) continue;
        const src = sd.tensors.get(key);
        if (!src || src.constructor !== target.constructor || src.length !== target.length) {
          throw new Error(`adamw_8bit state: '${key}' is missing or has the wrong type/size (expected ${target.constructor.name}[${target.length}]); was the checkpoint written by another optimizer?`);
        }
        target.set(src as never);
      }
    }
    this.t = sd.step;
  }

  stateBytes(): number {
    let n = 0;
    for (const s of this.states.values()) n += s.s1.byteLength + s.s2.byteLength + (s.a1?.byteLength ?? 0) + (s.a2?.byteLength ?? 0);
    return n;
  }
}
