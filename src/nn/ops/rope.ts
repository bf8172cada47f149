/**
 * Rotary position embedding as Hugging Face Llama applies it (the rotate_half convention): for
 * i < rotaryDim/2, the pair (x[i], x[i + rotaryDim/2]) is rotated by angle pos * invFreq[i].
 * Dimensions from rotaryDim on pass through (partial rotary). x is [B, T, heads, D].
 */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import { floatLike, Tensor } from '../../tensor/tensor.js';

export interface RopeTables {
  /** cos and sin of pos * invFreq[i] * attentionScaling, [positions, rotaryDim/2]. */
  cos: Float64Array;
  sin: Float64Array;
  half: number;
}

/** cos/sin tables for positions 0..maxPos-1, computed as transformers does (f32 angles). */
export function ropeTables(invFreq: Float64Array, maxPos: number, attentionScaling = 1): RopeTables {
  const half = invFreq.length;
  const cos = new Float64Array(maxPos * half);
  const sin = new Float64Array(maxPos * half);
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
  const maxPos = cos.length / half;
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  Y.set(X);
  const rotate = (src: Float32Array | Float64Array, dst: Float32Array | Float64Array, sign: number): void => {
    for (let t = 0; t < tokens; t++) {
      const p = positions[t]!;
      if (p < 0 || p >= maxPos) throw new Error(`rope: position ${p} is outside the table (max ${maxPos - 1})`);
      const c0 = p * half;
      for (let h = 0; h < heads; h++) {
        const o = (t * heads + h) * D;
        for (let i = 0; i < half; i++) {
          const c = cos[c0 + i]!, s = sign * sin[c0 + i]!;
          const a = src[o + i]!, b = src[o + i + half]!;
          dst[o + i] = a * c - b * s;
          dst[o + i + half] = b * c + a * s;
        }
      }
    }
  };
  rotate(X, Y, 1);
  if (needsGrad(x)) {
    record('rope', [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      gx.set(g);
      rotate(g, gx, -1);
      addGradOwned(x, gx);
    });
  }
  return out;
}
