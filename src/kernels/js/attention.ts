/** Reference causal grouped-query attention, forward and backward. See Kernels.attentionFwd. */
export function attentionFwd(
  _q: Float32Array, _k: Float32Array, _v: Float32Array, _out: Float32Array, _lse: Float32Array,
  _B: number, _T: number, _H: number, _Hkv: number, _D: number, _scale: number, _segIds: Int32Array | null,
): void {
  throw new Error('attentionFwd: not implemented yet');
}

export function attentionBwd(
  _dout: Float32Array, _q: Float32Array, _k: Float32Array, _v: Float32Array, _out: Float32Array,
  _lse: Float32Array, _dq: Float32Array, _dk: Float32Array, _dv: Float32Array,
  _B: number, _T: number, _H: number, _Hkv: number, _D: number, _scale: number, _segIds: Int32Array | null,
): void {
  throw new Error('attentionBwd: not implemented yet');
}
