/**
 * Reference causal grouped-query attention, forward and backward. See Kernels.attentionFwd.
 *
 * Plain loops, one query row at a time, O(T) scratch. The functions accept f32 or f64 buffers
 * (f64 for gradient checks); the Kernels interface only promises f32.
 */

type Floats = Float32Array | Float64Array;

function checkArgs(
  fn: string, B: number, T: number, H: number, Hkv: number, D: number, scale: number, segIds: Int32Array | null,
  bufs: [string, Floats, number][],
): void {
  for (const [name, n] of [['B', B], ['T', T], ['H', H], ['Hkv', Hkv], ['D', D]] as const) {
    if (!Number.isInteger(n) || n < 1) throw new Error(`${fn}: ${name} must be a positive integer, got ${n}`);
  }
  if (H % Hkv !== 0) throw new Error(`${fn}: H=${H} is not a multiple of Hkv=${Hkv}`);
  if (!Number.isFinite(scale)) throw new Error(`${fn}: scale must be finite, got ${scale}`);
  for (const [name, buf, need] of bufs) {
    if (buf.length < need) throw new Error(`${fn}: ${name} has ${buf.length} elements, needs ${need} (B=${B} T=${T} H=${H} Hkv=${Hkv} D=${D})`);
  }
  if (segIds && segIds.length < B * T) throw new Error(`${fn}: segIds has ${segIds.length} elements, needs B*T=${B * T}`);
}

/** True when query t may attend key s in batch row b. */
function allowed(segIds: Int32Array | null, b: number, T: number, s: number, t: number): boolean {
  return s <= t && (segIds === null || segIds[b * T + s] === segIds[b * T + t]);
}

export function attentionFwd(
  q: Floats, k: Floats, v: Floats, out: Floats, lse: Floats,
  B: number, T: number, H: number, Hkv: number, D: number, scale: number, segIds: Int32Array | null,
): void {
  const nq = B * T * H * D, nkv = B * T * Hkv * D;
  checkArgs('attentionFwd', B, T, H, Hkv, D, scale, segIds, [
    ['q', q, nq], ['k', k, nkv], ['v', v, nkv], ['out', out, nq], ['lse', lse, B * H * T],
  ]);
  const group = H / Hkv;
  const scores = new Float64Array(T);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * H + h) * D;
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          if (!allowed(segIds, b, T, s, t)) continue;
          const ko = ((b * T + s) * Hkv + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d]! * k[ko + d]!;
          scores[s] = dot * scale;
          if (scores[s]! > max) max = scores[s]!;
        }
        let sum = 0;
        acc.fill(0);
        for (let s = 0; s <= t; s++) {
          if (!allowed(segIds, b, T, s, t)) continue;
          const p = Math.exp(scores[s]! - max);
          sum += p;
          const vo = ((b * T + s) * Hkv + g) * D;
          for (let d = 0; d < D; d++) acc[d]! += p * v[vo + d]!;
        }
        for (let d = 0; d < D; d++) out[qo + d] = acc[d]! / sum;
        lse[(b * H + h) * T + t] = max + Math.log(sum);
      }
    }
  }
}

export function attentionBwd(
  dout: Floats, q: Floats, k: Floats, v: Floats, out: Floats,
  lse: Floats, dq: Floats, dk: Floats, dv: Floats,
  B: number, T: number, H: number, Hkv: number, D: number, scale: number, segIds: Int32Array | null,
): void {
  const nq = B * T * H * D, nkv = B * T * Hkv * D;
  checkArgs('attentionBwd', B, T, H, Hkv, D, scale, segIds, [
    ['dout', dout, nq], ['q', q, nq], ['k', k, nkv], ['v', v, nkv], ['out', out, nq], ['lse', lse, B * H * T],
    ['dq', dq, nq], ['dk', dk, nkv], ['dv', dv, nkv],
  ]);
  const group = H / Hkv;
  dq.fill(0, 0, nq);
  dk.fill(0, 0, nkv);
  dv.fill(0, 0, nkv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * H + h) * D;
        const rowLse = lse[(b * H + h) * T + t]!;
        // D_t = rowsum(dout * out) = sum_s p_s * (dout . v_s)
        let Dt = 0;
        for (let d = 0; d < D; d++) Dt += dout[qo + d]! * out[qo + d]!;
        for (let s = 0; s <= t; s++) {
          if (!allowed(segIds, b, T, s, t)) continue;
          const ko = ((b * T + s) * Hkv + g) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d]! * k[ko + d]!;
          const p = Math.exp(dot * scale - rowLse);
          let dp = 0;
          for (let d = 0; d < D; d++) dp += dout[qo + d]! * v[ko + d]!;
          const ds = p * (dp - Dt) * scale;
          for (let d = 0; d < D; d++) {
            dv[ko + d]! += p * dout[qo + d]!;
            dq[qo + d]! += ds * k[ko + d]!;
            dk[ko + d]! += ds * q[qo + d]!;
          }
        }
      }
    }
  }
}

/** See Kernels.attentionDecode. Scores and sums in f64. */
export function attentionDecode(
  q: Floats, keys: Floats, values: Floats, out: Floats,
  start: number, n: number, H: number, Hkv: number, D: number, scale: number,
): void {
  if (!Number.isInteger(start) || start < 0 || !Number.isInteger(n) || n < 0) {
    throw new Error(`attentionDecode: start and n must be integers >= 0, got ${start} and ${n}`);
  }
  checkArgs('attentionDecode', 1, Math.max(1, start + n), H, Hkv, D, scale, null, [
    ['q', q, n * H * D], ['keys', keys, (start + n) * Hkv * D], ['values', values, (start + n) * Hkv * D], ['out', out, n * H * D],
  ]);
  const group = H / Hkv;
  const scores = new Float64Array(start + n);
  const acc = new Float64Array(D);
  for (let i = 0; i < n; i++) {
    const len = start + i + 1;
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / group);
      const qo = (i * H + h) * D;
      let m = -Infinity;
      for (let s = 0; s < len; s++) {
        const ko = (s * Hkv + kh) * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qo + d]! * keys[ko + d]!;
        scores[s] = dot * scale;
        if (scores[s]! > m) m = scores[s]!;
      }
      let sum = 0;
      for (let s = 0; s < len; s++) sum += scores[s] = Math.exp(scores[s]! - m);
      acc.fill(0);
      for (let s = 0; s < len; s++) {
        const p = scores[s]!;
        const vo = (s * Hkv + kh) * D;
        for (let d = 0; d < D; d++) acc[d]! += p * values[vo + d]!;
      }
      for (let d = 0; d < D; d++) out[qo + d] = acc[d]! / sum;
    }
  }
}
