/**
 * Blockwise dynamic 8-bit quantization as bitsandbytes (`quantize_blockwise` / `dequantize_blockwise`),
 * used for 8-bit optimizer states (blocksize 256; signed map for Adam's first moment, unsigned for the
 * second) and for the second level of NF4 double quantization (peft-spec.md §2.3, §2.9).
 *
 * Per block of `blocksize` consecutive values: absmax = max|x| (fp32); the value is scaled to
 * xn = clamp(x * fp32(1/absmax), -1, 1) and its code is the index of the nearest map entry, by the
 * midpoint rule: code = number of float32 midpoints m_k = fp32(fp32(map[k] + map[k+1]) / 2) with
 * xn > m_k (strict, so a tie goes to the lower code, as torch `bucketize(right=False)`).
 * Edge cases follow bitsandbytes' default (CPU) backend (§2.7): the reciprocal's divisor is clamped
 * to 1e-38 (an all-zero block maps to the code of 0), and a partial last block stores
 * max(absmax, 1e-38) and scales by division instead of reciprocal-multiply.
 * Dequantization: x' = fp32(map[code] * absmax[block]).
 */

const f32 = Math.fround;
/** torch's `clamp(min=1e-38)` on a float32 tensor: 1e-38 rounded to float32 (a subnormal). */
export const ABSMAX_FLOOR = f32(1e-38);

export interface Blockwise8 {
  /** One code (map index) per value. */
  codes: Uint8Array;
  /** fp32 absmax per block, ceil(numel / blocksize) of them. */
  absmax: Float32Array;
  blocksize: number;
  numel: number;
  /** The 256-entry sorted map the codes index. */
  code: Float32Array;
}

/** float32 midpoints of adjacent entries of a sorted code table (length code.length - 1). */
export function codeMidpoints(code: Float32Array): Float32Array {
  const m = new Float32Array(code.length - 1);
  for (let k = 0; k + 1 < code.length; k++) {
    if (!(code[k + 1]! >= code[k]!)) {
      throw new Error(`quant: code table is not sorted ascending at index ${k} (${code[k]} > ${code[k + 1]}); pass a sorted map such as createDynamicMap()`);
    }
    m[k] = f32(f32(code[k]! + code[k + 1]!) / 2);
  }
  return m;
}

/** Number of midpoints strictly below xn (binary search over the sorted midpoints). */
function nearestIndex(mid: Float32Array, xn: number): number {
  let lo = 0;
  let hi = mid.length;
  // invariant: mid[j] < xn for j < lo, mid[j] >= xn (or NaN compare false) for j >= hi
  while (lo < hi) {
    const m = (lo + hi) >>> 1;
    if (xn > mid[m]!) lo = m + 1;
    else hi = m;
  }
  return lo;
}

function checkBlocksize(blocksize: number, where: string): void {
  if (!Number.isInteger(blocksize) || blocksize < 1) {
    throw new Error(`${where}: blocksize must be a positive integer, got ${blocksize}`);
  }
}

/**
 * Quantizes x into `codesOut` / `absmaxOut` (reused buffers, e.g. an optimizer state updated in place).
 * codesOut.length must be >= x.length and absmaxOut.length >= ceil(x.length / blocksize).
 * `mid` may be passed to avoid recomputing codeMidpoints(code) on every call.
 */
export function quantizeBlockwise8Into(
  x: Float32Array, code: Float32Array, blocksize: number, codesOut: Uint8Array, absmaxOut: Float32Array,
  mid: Float32Array = codeMidpoints(code),
): void {
  checkBlocksize(blocksize, 'quantizeBlockwise8');
  if (code.length !== 256) throw new Error(`quantizeBlockwise8: the code map must have 256 entries, got ${code.length}`);
  const n = x.length;
  const blocks = Math.ceil(n / blocksize);
  if (codesOut.length < n || absmaxOut.length < blocks) {
    throw new Error(`quantizeBlockwise8: output buffers too small for ${n} values (${codesOut.length} codes, ${absmaxOut.length} absmax; need ${n}, ${blocks})`);
  }
  const fullBlocks = Math.floor(n / blocksize);
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize;
    const end = Math.min(n, start + blocksize);
    let amax = 0;
    for (let i = start; i < end; i++) {
      const a = Math.abs(x[i]!);
      if (a > amax || Number.isNaN(a)) amax = a;
    }
    const partial = b >= fullBlocks;
    if (partial) {
      const stored = Math.max(amax, ABSMAX_FLOOR);
      absmaxOut[b] = stored;
      for (let i = start; i < end; i++) {
        let xn = f32(x[i]! / stored);
        xn = Math.min(1, Math.max(-1, xn));
        codesOut[i] = nearestIndex(mid, xn);
      }
    } else {
      absmaxOut[b] = amax;
      const inv = f32(1 / (Math.max(amax, ABSMAX_FLOOR)));
      for (let i = start; i < end; i++) {
        let xn = f32(x[i]! * inv);
        xn = Math.min(1, Math.max(-1, xn));
        codesOut[i] = nearestIndex(mid, xn);
      }
    }
  }
}

/** Blockwise 8-bit quantization of x with a 256-entry sorted map (blocksize 256 for optimizer states). */
export function quantizeBlockwise8(x: Float32Array, code: Float32Array, blocksize = 256): Blockwise8 {
  const codes = new Uint8Array(x.length);
  const absmax = new Float32Array(Math.ceil(x.length / blocksize));
  quantizeBlockwise8Into(x, code, blocksize, codes, absmax);
  return { codes, absmax, blocksize, numel: x.length, code };
}

/** x'[i] = fp32(code[codes[i]] * absmax[i / blocksize]); writes into `out` when given. */
export function dequantizeBlockwise8(q: Blockwise8, out?: Float32Array): Float32Array {
  checkBlocksize(q.blocksize, 'dequantizeBlockwise8');
  const { codes, absmax, blocksize, numel, code } = q;
  const y = out ?? new Float32Array(numel);
  if (y.length < numel) throw new Error(`dequantizeBlockwise8: output has ${y.length} elements, need ${numel}`);
  if (codes.length < numel || absmax.length < Math.ceil(numel / blocksize)) {
    throw new Error(`dequantizeBlockwise8: ${codes.length} codes / ${absmax.length} absmax are too few for ${numel} values at blocksize ${blocksize}`);
  }
  for (let b = 0, start = 0; start < numel; b++, start += blocksize) {
    const s = absmax[b]!;
    const end = Math.min(numel, start + blocksize);
    for (let i = start; i < end; i++) y[i] = code[codes[i]!]! * s;
  }
  return y;
}
