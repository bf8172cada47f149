/**
 * 4-bit block quantization as bitsandbytes: NF4 (QLoRA's NormalFloat) and FP4 (E2M1), with double
 * quantization of the block scales (peft-spec.md §2.1–2.3, §2.7).
 *
 * Layout: the input is flattened row-major and split into blocks of `blocksize` consecutive values
 * (64 by default; 32..4096, a power of two). Per block absmax = max|x| (fp32) and xn = fp32(x * fp32(1/absmax)).
 * NF4 code = number of the 15 float32 midpoints of the NF4 table strictly below xn (a tie goes to the lower
 * code). FP4 uses bitsandbytes' CUDA threshold tree on |xn| plus a sign bit from xn < 0. Two codes per
 * byte, the even-index element in the high nibble; an odd count pads the last low nibble with 0.
 * Dequantization: x' = fp32(code[q] * absmax[block]).
 * Edge cases as bitsandbytes' default (CPU) backend: the reciprocal's divisor is clamped to 1e-38, so an
 * all-zero block gets the code of 0.0 (absmax 0 stored); a partial last block stores max(absmax, 1e-38)
 * and scales by division.
 */
import { ABSMAX_FLOOR, dequantizeBlockwise8, quantizeBlockwise8 } from './blockwise8.js';
import { dynamicMap } from './dynamic-map.js';

const f32 = Math.fround;

export type QuantType4 = 'nf4' | 'fp4';

/** NF4 code table (index = 4-bit code), exact float32 values of bitsandbytes' `get_4bit_type("nf4")`. */
export const NF4_CODE: Readonly<Float32Array> = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

/** FP4 (E2M1, bias 2, no inf/nan) code table in bit-pattern order; bit 3 is the sign. */
export const FP4_CODE: Readonly<Float32Array> = Float32Array.from(
  [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) => v / 12),
);

/** float32 midpoints between adjacent NF4 codes: the quantization thresholds. */
export const NF4_THRESHOLDS: Readonly<Float32Array> = (() => {
  const t = new Float32Array(15);
  for (let k = 0; k < 15; k++) t[k] = f32(f32(NF4_CODE[k]! + NF4_CODE[k + 1]!) / 2);
  return t;
})();

/** The CUDA FP4 thresholds on |xn| (csrc/kernels.cu `dQuantizeFP4`, float literals). */
const FP4_T = [0.29166667, 0.583333, 0.8333333, 0.4166667, 0.0859375, 0.20833333, 0.00260417].map(f32);

/** A fresh copy of the code table of a 4-bit type. */
export function codeTable4(quantType: QuantType4): Float32Array {
  return Float32Array.from(quantType === 'nf4' ? NF4_CODE : FP4_CODE);
}

/** NF4 code of a scaled value: count of thresholds strictly below xn (4-level binary search). */
export function nf4Index(xn: number): number {
  const t = NF4_THRESHOLDS;
  let c = xn > t[7]! ? 8 : 0;
  if (xn > t[c + 3]!) c += 4;
  if (xn > t[c + 1]!) c += 2;
  if (xn > t[c]!) c += 1;
  return c;
}

/** FP4 code of a scaled value, as bitsandbytes' CUDA `dQuantizeFP4` (sign bit 8 from xn < 0). */
export function fp4Index(xn: number): number {
  const sign = xn < 0 ? 8 : 0;
  const a = Math.abs(xn);
  let c: number;
  if (a > FP4_T[0]!) {
    if (a > FP4_T[1]!) c = a > FP4_T[2]! ? 0b011 : 0b010;
    else c = a > FP4_T[3]! ? 0b101 : 0b100;
  } else if (a > FP4_T[4]!) c = a > FP4_T[5]! ? 0b111 : 0b110;
  else c = a > FP4_T[6]! ? 0b001 : 0b000;
  return c | sign;
}

/** Packed 4-bit values and their per-block fp32 scales (bitsandbytes' `quantize_4bit` output). */
export interface Quantized4bit {
  /** ceil(numel / 2) bytes; element 2i in the high nibble of byte i, 2i+1 in the low nibble. */
  packed: Uint8Array;
  /** fp32 absmax per block, ceil(numel / blocksize) of them. */
  absmax: Float32Array;
  quantType: QuantType4;
  blocksize: number;
  numel: number;
  /** The 16-entry table the codes index; defaults to the quantType's table. Set when read from a file. */
  code?: Float32Array;
}

export interface Quantize4bitOptions {
  quantType: QuantType4;
  /** Block size, a power of two in 32..4096; default 64 (bitsandbytes' Linear4bit default). */
  blocksize?: number;
}

/** Throws unless blocksize is a power of two in 32..4096. */
export function checkBlocksize4(blocksize: number, where = 'quantize4bit'): void {
  if (!Number.isInteger(blocksize) || blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) !== 0) {
    throw new Error(`${where}: blocksize must be a power of two between 32 and 4096 (bitsandbytes' range), got ${blocksize}`);
  }
}

/** Blockwise 4-bit quantization of a flat float32 array (row-major flattening of the weight). */
export function quantize4bit(x: Float32Array, opts: Quantize4bitOptions): Quantized4bit {
  const quantType = opts.quantType;
  if (quantType !== 'nf4' && quantType !== 'fp4') {
    throw new Error(`quantize4bit: quantType must be 'nf4' or 'fp4', got ${String(quantType)}`);
  }
  const blocksize = opts.blocksize ?? 64;
  checkBlocksize4(blocksize);
  const n = x.length;
  const blocks = Math.ceil(n / blocksize);
  const fullBlocks = Math.floor(n / blocksize);
  const absmax = new Float32Array(blocks);
  const packed = new Uint8Array(Math.ceil(n / 2));
  const index = quantType === 'nf4' ? nf4Index : fp4Index;
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize;
    const end = Math.min(n, start + blocksize);
    let amax = 0;
    for (let i = start; i < end; i++) {
      const a = Math.abs(x[i]!);
      if (a > amax || Number.isNaN(a)) amax = a;
    }
    let inv = 0;
    let div = 0;
    if (b < fullBlocks) {
      absmax[b] = amax;
      inv = f32(1 / (Math.max(amax, ABSMAX_FLOOR)));
    } else {
      div = Math.max(amax, ABSMAX_FLOOR);
      absmax[b] = div;
    }
    // blocksize is even, so a block starts on a byte boundary.
    for (let i = start; i < end; i += 2) {
      const x0 = div === 0 ? f32(x[i]! * inv) : f32(x[i]! / div);
      let byte = index(x0) << 4;
      if (i + 1 < end) {
        const x1 = div === 0 ? f32(x[i + 1]! * inv) : f32(x[i + 1]! / div);
        byte |= index(x1);
      }
      packed[i >> 1] = byte;
    }
  }
  return { packed, absmax, quantType, blocksize, numel: n };
}

/**
 * x'[i] = fp32(code[q[i]] * absmax[i / blocksize]) with the table q.code (if set) or the quantType's.
 * Pass `absmax` to override q.absmax (e.g. the output of doubleDequantize); writes into `out` when given.
 */
export function dequantize4bit(q: Quantized4bit, out?: Float32Array, absmax: Float32Array = q.absmax): Float32Array {
  const { packed, blocksize, numel } = q;
  const code = q.code ?? (q.quantType === 'nf4' ? NF4_CODE : FP4_CODE);
  if (code.length !== 16) throw new Error(`dequantize4bit: the code table must have 16 entries, got ${code.length}`);
  if (!Number.isInteger(blocksize) || blocksize < 2 || blocksize % 2 !== 0) {
    throw new Error(`dequantize4bit: blocksize must be an even positive integer, got ${blocksize}`);
  }
  if (packed.length < Math.ceil(numel / 2)) throw new Error(`dequantize4bit: ${packed.length} packed bytes are too few for ${numel} values (need ${Math.ceil(numel / 2)})`);
  if (absmax.length < Math.ceil(numel / blocksize)) throw new Error(`dequantize4bit: ${absmax.length} absmax values are too few for ${numel} values at blocksize ${blocksize}`);
  const y = out ?? new Float32Array(numel);
  if (y.length < numel) throw new Error(`dequantize4bit: output has ${y.length} elements, need ${numel}`);
  for (let b = 0, start = 0; start < numel; b++, start += blocksize) {
    const s = absmax[b]!;
    const end = Math.min(numel, start + blocksize);
    for (let i = start; i < end; i += 2) {
      const byte = packed[i >> 1]!;
      y[i] = code[byte >> 4]! * s;
      if (i + 1 < end) y[i + 1] = code[byte & 15]! * s;
    }
  }
  return y;
}

/** The second level of double quantization: 8-bit codes for the mean-centred block absmax. */
export interface DoubleQuantized {
  /** u8 index into nestedQuantMap, one per 4-bit block (bitsandbytes' `weight.absmax` when DQ is on). */
  qabsmax: Uint8Array;
  /** fp32 mean of the block absmax, subtracted before quantizing (JSON `nested_offset`). */
  offset: number;
  /** fp32 max|absmax - offset| per 256 blocks (`weight.nested_absmax`). */
  nestedAbsmax: Float32Array;
  nestedBlocksize: 256;
  /** The 256-entry signed dynamic map (`weight.nested_quant_map`). */
  nestedQuantMap: Float32Array;
}

/**
 * Double quantization (bitsandbytes `compress_statistics=True`): offset = fp32 mean(absmax);
 * (absmax - offset) is quantized blockwise (256) to 8 bits with the signed dynamic map.
 * The mean is summed in float64 and rounded once; torch's float32 reduction may differ by an ulp on
 * large tensors (the offset is stored in the file, so files stay self-consistent either way).
 */
export function doubleQuantize(absmax: Float32Array, nestedQuantMap: Float32Array = dynamicMap(true)): DoubleQuantized {
  let sum = 0;
  for (let i = 0; i < absmax.length; i++) sum += absmax[i]!;
  const offset = absmax.length ? f32(sum / absmax.length) : 0;
  const centred = new Float32Array(absmax.length);
  for (let i = 0; i < absmax.length; i++) centred[i] = absmax[i]! - offset;
  const q = quantizeBlockwise8(centred, nestedQuantMap, 256);
  return { qabsmax: q.codes, offset, nestedAbsmax: q.absmax, nestedBlocksize: 256, nestedQuantMap };
}

/** Inverse of doubleQuantize: absmax'[j] = fp32(fp32(map[q[j]] * nested[j / 256]) + offset). */
export function doubleDequantize(dq: DoubleQuantized, out?: Float32Array): Float32Array {
  const n = dq.qabsmax.length;
  const y = dequantizeBlockwise8(
    { codes: dq.qabsmax, absmax: dq.nestedAbsmax, blocksize: dq.nestedBlocksize, numel: n, code: dq.nestedQuantMap },
    out,
  );
  const off = f32(dq.offset);
  for (let i = 0; i < n; i++) y[i] = y[i]! + off;
  return y;
}

/** torch dtype name of the original weight, as bitsandbytes writes it in the quant-state JSON. */
export type TorchFloatDtype = 'float32' | 'bfloat16' | 'float16';

/**
 * A 4-bit weight with everything bitsandbytes serializes (maps 1:1 to its safetensors keys, see
 * bnb-format.ts): packed codes, the 16-entry quant map, and either fp32 absmax or the double-quantized one.
 */
export interface Quant4State {
  quantType: QuantType4;
  blocksize: number;
  numel: number;
  /** Original weight shape (e.g. [out_features, in_features]); product = numel. */
  shape: number[];
  /** Original weight dtype (JSON `dtype`); dequantized values are cast to it by bitsandbytes. */
  dtype: TorchFloatDtype;
  packed: Uint8Array;
  /** The 16-entry code table (`weight.quant_map`). */
  quantMap: Float32Array;
  /** fp32 block absmax when not double-quantized, else null. */
  absmax: Float32Array | null;
  /** Double-quantized absmax, or null. */
  dq: DoubleQuantized | null;
}

export interface Quantize4bitStateOptions extends Quantize4bitOptions {
  /** Double-quantize the absmax (QLoRA: true; bitsandbytes Params4bit default true). Default true. */
  doubleQuant?: boolean;
  /** Original dtype to record; default 'float32'. */
  dtype?: TorchFloatDtype;
}

/** Quantizes a weight of the given shape into a full 4-bit state (what Linear4bit stores). */
export function quantize4bitState(x: Float32Array, shape: readonly number[], opts: Quantize4bitStateOptions): Quant4State {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (numel !== x.length) throw new Error(`quantize4bitState: shape [${shape.join(', ')}] has ${numel} elements but the data has ${x.length}`);
  const q = quantize4bit(x, opts);
  const doubleQuant = opts.doubleQuant ?? true;
  return {
    quantType: q.quantType,
    blocksize: q.blocksize,
    numel,
    shape: [...shape],
    dtype: opts.dtype ?? 'float32',
    packed: q.packed,
    quantMap: codeTable4(q.quantType),
    absmax: doubleQuant ? null : q.absmax,
    dq: doubleQuant ? doubleQuantize(q.absmax) : null,
  };
}

/** The fp32 per-block scales of a state (double-dequantized if needed). */
export function stateAbsmax(state: Quant4State): Float32Array {
  if (state.dq) return doubleDequantize(state.dq);
  if (!state.absmax) throw new Error('quant: a 4-bit state has neither absmax nor double-quantized absmax');
  return state.absmax;
}

/** Dequantizes a 4-bit state to fp32 (values not yet cast to state.dtype). */
export function dequantize4bitState(state: Quant4State, out?: Float32Array): Float32Array {
  return dequantize4bit(
    { packed: state.packed, absmax: stateAbsmax(state), quantType: state.quantType, blocksize: state.blocksize, numel: state.numel, code: state.quantMap },
    out,
  );
}
