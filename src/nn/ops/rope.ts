/**
 * Rotary position embedding as Hugging Face Llama applies it (the rotate_half convention): for
 * i < rotaryDim/2, the pair (x[i], x[i + rotaryDim/2]) is rotated by angle pos * invFreq[i].
 * Dimensions from rotaryDim on pass through (partial rotary). x is [B, T, heads, D].
 */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import { floatLike, Tensor } from '../../tensor/tensor.js';
import { kernels } from '../../kernels/index.js';
import { jsKernels } from '../../kernels/js/index.js';

export interface RopeTables {
  /** cos and sin of pos * invFreq[i] * attentionScaling, [positions, rotaryDim/2] (f32 values, as transformers). */
  cos: Float32Array;
  sin: Float32Array;
  half: number;
}

/** cos/sin tables for positions 0..maxPos-1, computed as transformers does (f32 angles). */
export function ropeTables(invFreq: Float64Array, maxPos: number, attentionScaling = 1): RopeTables {
  const half = invFreq.length;
  const cos = new Float32Array(maxPos * half);
  const sin = new Float32Array(maxPos * half);
  const f32 = new Float32Array(1);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      f32[0] = p * Math.fround(invFreq[i]!);
      const a = f32[0]!;
      cos[p * half + i] = Math.fround(Math.cos(a) * attentionScaling);
      sin[p * half + i] = Math.fround(Math.sin(a) * attentionScaling);
    }
  }
  return { cos, sin, half };
}

/** Applies RoPE to x [B, T, heads, D] with per-token positions [B*T]. */
export function rope(x: Tensor, positions: Int32Array, tables: RopeTables): Tensor {
  const D = x.dim(-1), heads = x.dim(-2);
  const tokens = x.size / (heads * D);
  if (positions.length !== tokens) throw new Error(`rope: ${positions.length} positions for ${tokens} tokens`);
  const { cos, sin, half } = tables;
  if (2 * half > D) throw new Error(`rope: rotary dim ${2 * half} exceeds head dim ${D}`);
  // f64 (gradient checks) runs on the js kernels, f32 on the active ones; the kernel types are f32.
  const K = x.f instanceof Float64Array ? jsKernels : kernels();
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  K.ropeApply(X as Float32Array, Y as Float32Array, positions, cos, sin, tokens, heads, D, half, 1);
  if (needsGrad(x)) {
    record('rope', [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      K.ropeApply(g as Float32Array, gx as Float32Array, positions, cos, sin, tokens, heads, D, half, -1);
      addGradOwned(x, gx);
    });
  }
  return out;
}
