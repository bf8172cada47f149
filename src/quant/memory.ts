/**
 * Byte arithmetic users see before a run (peft-spec.md §2.6): storage per parameter by precision and
 * the exact bytes of a bitsandbytes 4-bit Linear weight.
 */

export type Precision = 'fp32' | 'bf16' | 'fp16' | 'int8' | 'nf4' | 'nf4-dq' | 'fp4';

/**
 * Bytes per parameter. 'int8' is the 1-byte code alone (blockwise/row-wise scales not counted);
 * 4-bit types count the data (4 bits) plus the absmax per block: fp32 (32/blocksize bits), or with
 * double quantization 8/blocksize + 32/(blocksize*256) bits. Per-tensor constants (code tables, JSON) are not counted.
 */
export function bytesPerParam(precision: Precision, blocksize = 64): number {
  switch (precision) {
    case 'fp32':
      return 4;
    case 'bf16':
    case 'fp16':
      return 2;
    case 'int8':
      return 1;
    case 'nf4':
    case 'fp4':
      return (4 + 32 / blocksize) / 8;
    case 'nf4-dq':
      return (4 + 8 / blocksize + 32 / (blocksize * 256)) / 8;
    default:
      throw new Error(`bytesPerParam: unknown precision '${String(precision)}' (use fp32, bf16, fp16, int8, nf4, nf4-dq or fp4)`);
  }
}

export interface QuantizedLinearBytes {
  /** Packed 4-bit codes: ceil(numel / 2). */
  data: number;
  /** Block absmax: 1 byte per block with double quantization, else 4. */
  absmax: number;
  /** fp32 absmax of the absmax, one per 256 blocks (double quantization only). */
  nestedAbsmax: number;
  /** The 16-entry fp32 code table. */
  quantMap: number;
  /** The 256-entry fp32 dynamic map (double quantization only). */
  nestedQuantMap: number;
  /** Everything above (the quant-state JSON, ~150-200 bytes, is not counted). */
  total: number;
}

/** Bytes bitsandbytes stores for one 4-bit weight of `numel` values. */
export function quantizedLinearBytes(numel: number, opts: { doubleQuant: boolean; blocksize?: number }): QuantizedLinearBytes {
  const blocksize = opts.blocksize ?? 64;
  if (!Number.isInteger(numel) || numel < 0) throw new Error(`quantizedLinearBytes: numel must be a non-negative integer, got ${numel}`);
  if (!Number.isInteger(blocksize) || blocksize < 1) throw new Error(`quantizedLinearBytes: blocksize must be a positive integer, got ${blocksize}`);
  const blocks = Math.ceil(numel / blocksize);
  const data = Math.ceil(numel / 2);
  const absmax = blocks * (opts.doubleQuant ? 1 : 4);
  const nestedAbsmax = opts.doubleQuant ? Math.ceil(blocks / 256) * 4 : 0;
  const quantMap = 16 * 4;
  const nestedQuantMap = opts.doubleQuant ? 256 * 4 : 0;
  return { data, absmax, nestedAbsmax, quantMap, nestedQuantMap, total: data + absmax + nestedAbsmax + quantMap + nestedQuantMap };
}
