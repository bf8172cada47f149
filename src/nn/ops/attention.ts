/** Fused causal grouped-query attention (the kernel never forms a whole [B,H,T,T] score tensor). */
import { jsKernels } from '../../kernels/js/index.js';
import { kernels } from '../../kernels/index.js';
import type { Kernels } from '../../kernels/backend.js';
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import { floatLike, releaseFloat, Tensor } from '../../tensor/tensor.js';

export interface AttentionShape {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  D: number;
  /** [B, T] segment ids for packed rows (tokens attend only within their segment), or null. */
  segIds?: Int32Array | null;
  /** Score scale, 1/sqrt(D) by default. */
  scale?: number;
}

/** q [B,T,H,D], k/v [B,T,Hkv,D] -> out [B,T,H,D]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, s: AttentionShape): Tensor {
  const { B, T, H, Hkv, D } = s;
  const scale = s.scale ?? 1 / Math.sqrt(D);
  const seg = s.segIds ?? null;
  if (q.size !== B * T * H * D || k.size !== B * T * Hkv * D || v.size !== k.size) {
    throw new Error(`attention: shapes ${q.describe()}, ${k.describe()}, ${v.describe()} do not match B=${B} T=${T} H=${H} Hkv=${Hkv} D=${D}`);
  }
  // f64 runs on the js kernels (gradient checks); the kernel types are f32, the js code is generic.
  const K = (q.dtype === 'f64' ? jsKernels : kernels()) as Kernels;
  const out = Tensor.empty([B, T, H, D], q.dtype);
  const lse = floatLike(q.f, B * H * T, false);
  K.attentionFwd(q.f as Float32Array, k.f as Float32Array, v.f as Float32Array, out.f as Float32Array, lse as Float32Array, B, T, H, Hkv, D, scale, seg);
  if (needsGrad(q, k, v)) {
    record('attention', [q, k, v], out, (g) => {
      const dq = floatLike(g, q.size, false);
      const dk = floatLike(g, k.size, false);
      const dv = floatLike(g, v.size, false);
      K.attentionBwd(g as Float32Array, q.f as Float32Array, k.f as Float32Array, v.f as Float32Array, out.f as Float32Array, lse as Float32Array, dq as Float32Array, dk as Float32Array, dv as Float32Array, B, T, H, Hkv, D, scale, seg);
      addGradOwned(q, dq);
      addGradOwned(k, dk);
      addGradOwned(v, dv);
    }, () => releaseFloat(lse));
  } else releaseFloat(lse);
  return out;
}

/**
 * Inference attention of n new tokens against a KV cache (batch 1, no autograd).
 * q [n, H, D]; keys/values [capacity, Hkv, D] already hold the new tokens at start..start+n-1.
 * Token i (absolute position start+i) attends to cache positions 0..start+i.
 */
export function attentionCached(
  q: Float32Array, keys: Float32Array, values: Float32Array, start: number, n: number,
  H: number, Hkv: number, D: number, out: Float32Array,
): void {
  kernels().attentionDecode(q, keys, values, out, start, n, H, Hkv, D, 1 / Math.sqrt(D));
}
