/**
 * Linear4bit: a frozen Linear whose weight W [out, in] is stored as bitsandbytes stores it (NF4 or FP4
 * codes, two per byte, plus the block absmax — double-quantized to 8 bits when requested), so a linear
 * base weight costs ~0.516 bytes/parameter with double quantization at blocksize 64 (4 bits + 8/64 bits
 * + 32/(64·256) bits), 0.5625 without.
 *
 * Products go through gemmNf4 (the native addon's when the native kernels are active, else the js
 * reference in nf4-gemm.ts), which dequantizes W tile by tile: y = x W^T (mulWt, transB = true) and
 * dx = dy W (mulW, transB = false). The double-quantized absmax is decoded into a shared f32 scratch on
 * each call (nblocks values: cheap next to the GEMM), so no per-layer f32 copy stays alive.
 * Compute is f32: bnb_4bit_compute_dtype 'bfloat16' / 'float16' is accepted and recorded, and the
 * products still run in f32 (more precise than bitsandbytes' bf16 matmul; say so to the user).
 *
 * Module params follow bitsandbytes' state-dict keys, so namedParameters() of a quantized model gives
 * `...q_proj.weight` (U8 [ceil(n/2), 1]), `.weight.absmax`, `.weight.quant_map`, `.weight.nested_absmax`,
 * `.weight.nested_quant_map`, `.weight.quant_state.bitsandbytes__nf4` (and `.bias`, f32).
 */
import { gemm as jsGemm } from '../kernels/js/gemm.js';
import { kernels } from '../kernels/index.js';
import { loadAddon } from '../kernels/native/index.js';
import type { FrozenWeight, LinearLike } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import { addGradOwned, needsGrad, record } from '../tensor/autograd.js';
import { type FloatArray, floatLike, Tensor } from '../tensor/tensor.js';
import { type BnbTensor, type BnbTensorRecord, fromBnbTensors, toBnbTensors } from './bnb-format.js';
import { dequantizeBlockwise8 } from './blockwise8.js';
import { gemmNf4 as jsGemmNf4 } from './nf4-gemm.js';
import { dequantize4bitState, type Quant4State, type QuantType4, quantize4bitState, type TorchFloatDtype } from './nf4.js';

type GemmNf4 = typeof jsGemmNf4;

/** The gemmNf4 in use: native when the active kernels are native and the addon exports it, else the js reference. */
export function activeGemmNf4(): GemmNf4 {
  if (kernels().name === 'native') {
    const addon = loadAddon();
    if (addon && typeof addon.gemmNf4 === 'function') return addon.gemmNf4 as GemmNf4;
  }
  return jsGemmNf4;
}

/** transformers' BitsAndBytesConfig 4-bit fields, as ajuste reads them. */
export interface Quant4Options {
  quantType: QuantType4;
  /** Default 64. */
  blocksize?: number;
  /** Double quantization of the absmax (bnb_4bit_use_double_quant). Default true. */
  doubleQuant?: boolean;
  /** bnb_4bit_compute_dtype: products run in f32 whatever this says (recorded for the config). */
  computeDtype?: 'float32' | 'bfloat16' | 'float16';
  /** Dtype of the original weights (the quant-state JSON `dtype`). Default 'float32'. */
  storageDtype?: TorchFloatDtype;
}

// One scratch for decoded absmax, shared by every layer (JS runs one product at a time).
let absmaxScratch = new Float32Array(0);

export class Linear4bit extends Module implements LinearLike, FrozenWeight {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly state: Quant4State;
  readonly computeDtype: 'float32' | 'bfloat16' | 'float16';
  bias: Tensor | null;

  constructor(state: Quant4State, bias: Tensor | null = null, computeDtype: 'float32' | 'bfloat16' | 'float16' = 'float32') {
    super();
    if (state.shape.length !== 2) throw new Error(`Linear4bit: the 4-bit weight must be 2-D [out, in], got shape [${state.shape.join(', ')}]`);
    const [outF, inF] = state.shape as [number, number];
    if (bias && (bias.ndim !== 1 || bias.dim(0) !== outF)) throw new Error(`Linear4bit: bias ${bias.describe()} does not match ${outF} output features`);
    this.outFeatures = outF;
    this.inFeatures = inF;
    this.state = state;
    this.bias = bias;
    this.computeDtype = computeDtype;
    const params: Record<string, Tensor | null> = {};
    for (const [key, rec] of Object.entries(toBnbTensors('weight', state))) {
      params[key] = Tensor.from(rec.data, [...rec.shape]).keep();
    }
    params.bias = bias;
    this.params = params;
  }

  /** Quantizes an f32 weight [out, in] (row-major) as bitsandbytes' Params4bit would. */
  static fromWeight(weight: Float32Array, outF: number, inF: number, bias: Tensor | null, opts: Quant4Options): Linear4bit {
    const state = quantize4bitState(weight, [outF, inF], {
      quantType: opts.quantType,
      blocksize: opts.blocksize ?? 64,
      doubleQuant: opts.doubleQuant ?? true,
      dtype: opts.storageDtype ?? 'float32',
    });
    return new Linear4bit(state, bias, opts.computeDtype ?? 'float32');
  }

  /** Reads the 4-bit weight saved under `${prefix}.weight` (bitsandbytes keys) from safetensors records. */
  static fromBnb(prefix: string, tensors: Map<string, BnbTensor>, bias: Tensor | null, computeDtype: 'float32' | 'bfloat16' | 'float16' = 'float32'): Linear4bit {
    return new Linear4bit(fromBnbTensors(`${prefix}.weight`, tensors), bias, computeDtype);
  }

  /** The safetensors records bitsandbytes writes for this layer's weight (keys `${prefix}.weight...`). */
  bnbTensors(prefix: string): Record<string, BnbTensorRecord> {
    return toBnbTensors(`${prefix}.weight`, this.state);
  }

  /**
   * Bytes of the stored weight: packed codes, absmax, nested absmax, and (unless `tables` is false) the
   * per-tensor code tables (quant_map 64 B, nested_quant_map 1 KiB); the quant-state JSON is not counted.
   */
  weightBytes(tables = true): number {
    const s = this.state;
    let n = s.packed.byteLength + (tables ? s.quantMap.byteLength : 0);
    if (s.dq) n += s.dq.qabsmax.byteLength + s.dq.nestedAbsmax.byteLength + (tables ? s.dq.nestedQuantMap.byteLength : 0);
    else if (s.absmax) n += s.absmax.byteLength;
    return n;
  }

  /** The f32 block absmax (decoded into the shared scratch when double-quantized; valid until the next call). */
  private absmax(): Float32Array {
    const s = this.state;
    if (!s.dq) {
      if (!s.absmax) throw new Error('Linear4bit: the 4-bit state has neither absmax nor double-quantized absmax');
      return s.absmax;
    }
    const n = s.dq.qabsmax.length;
    if (absmaxScratch.length < n) absmaxScratch = new Float32Array(n);
    const out = absmaxScratch.subarray(0, n);
    dequantizeBlockwise8({ codes: s.dq.qabsmax, absmax: s.dq.nestedAbsmax, blocksize: s.dq.nestedBlocksize, numel: n, code: s.dq.nestedQuantMap }, out);
    const off = Math.fround(s.dq.offset);
    for (let i = 0; i < n; i++) out[i] = out[i]! + off;
    return out;
  }

  mulWt(X: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void {
    const [o, i] = [this.outFeatures, this.inFeatures];
    if (rows === 0) return;
    if (X instanceof Float64Array || out instanceof Float64Array) {
      jsGemm(false, true, rows, o, i, 1, X, i, this.denseWeight(), i, beta, out, o);
      return;
    }
    activeGemmNf4()(true, rows, o, i, 1, X, i, this.state.packed, this.absmax(), this.state.blocksize, this.state.quantMap, beta, out, o);
  }

  mulW(G: FloatArray, rows: number, out: FloatArray, beta: 0 | 1): void {
    const [o, i] = [this.outFeatures, this.inFeatures];
    if (rows === 0) return;
    if (G instanceof Float64Array || out instanceof Float64Array) {
      jsGemm(false, false, rows, i, o, 1, G, o, this.denseWeight(), i, beta, out, i);
      return;
    }
    activeGemmNf4()(false, rows, i, o, 1, G, o, this.state.packed, this.absmax(), this.state.blocksize, this.state.quantMap, beta, out, i);
  }

  /** W dequantized to f32 [out, in] (a fresh array). */
  denseWeight(): Float32Array {
    return dequantize4bitState(this.state);
  }

  /** y = x W^T + b; backward gives dx (and the bias gradient when the bias trains); W never has a gradient. */
  forward(x: Tensor): Tensor {
    if (x.dtype !== 'f32' && x.dtype !== 'f64') throw new Error(`Linear4bit: expected an f32/f64 input, got ${x.describe()}`);
    const [outF, inF] = [this.outFeatures, this.inFeatures];
    if (x.dim(-1) !== inF) throw new Error(`Linear4bit: input ${x.describe()} does not match a [${outF}, ${inF}] weight`);
    const rows = x.size / inF;
    const out = Tensor.empty([...x.shape.slice(0, -1), outF], x.dtype);
    const Y = out.f;
    this.mulWt(x.f, rows, Y, 0);
    const bias = this.bias;
    if (bias) {
      const b = bias.f;
      for (let r = 0; r < rows; r++) for (let j = 0; j < outF; j++) Y[r * outF + j]! += b[j]!;
    }
    if (needsGrad(x, bias)) {
      record('linear4bit', [x, bias], out, (g) => {
        if (x.requiresGrad) {
          const gx = floatLike(g, x.size, false);
          this.mulW(g, rows, gx, 0);
          addGradOwned(x, gx);
        }
        if (bias?.requiresGrad) {
          const gb = floatLike(g, outF);
          for (let r = 0; r < rows; r++) for (let j = 0; j < outF; j++) gb[j]! += g[r * outF + j]!;
          addGradOwned(bias, gb);
        }
      });
    }
    return out;
  }
}

/** Number of weights a module's parameters stand for: a Linear4bit's packed weight counts as its numel. */
export function logicalParameterCount(root: Module): number {
  let n = 0;
  const quantized = new Set<Tensor>();
  for (const [, m] of root.namedModules()) {
    if (!(m instanceof Linear4bit)) continue;
    n += m.state.numel + (m.bias?.size ?? 0);
    for (const p of m.parameters()) quantized.add(p);
  }
  for (const p of root.parameters()) if (!quantized.has(p)) n += p.size;
  return n;
}
