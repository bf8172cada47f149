/**
 * Safetensors dtypes (byte size, the TypedArray that views each) and the 16-bit float conversions:
 * f32 <-> bf16 and f32 <-> f16 (IEEE binary16, subnormals, inf and NaN), whole arrays at a time.
 *
 * Rounding is round-to-nearest-even everywhere, as torch's CPU `.to(torch.bfloat16)` / `.half()`.
 * NaN stays NaN: bf16 keeps the sign and the top payload bits and sets the quiet bit (torch 1.13 on CPU
 * writes 0xFFFF for every NaN instead); f16 gives sign | 0x7E00, as torch does.
 * All conversions assume a little-endian host (x86-64, arm64), as safetensors files are little-endian.
 */

/** The dtype strings of a safetensors header, in the Rust crate's enum order (used to sort on write). */
export const SAFETENSORS_DTYPES = [
  'BOOL',
  'U8',
  'I8',
  'F8_E5M2',
  'F8_E4M3',
  'I16',
  'U16',
  'F16',
  'BF16',
  'I32',
  'U32',
  'F32',
  'F64',
  'I64',
  'U64',
] as const;

export type SafetensorsDtype = (typeof SAFETENSORS_DTYPES)[number];

export type TypedArray =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

export interface TypedArrayConstructor<T extends TypedArray = TypedArray> {
  new (buffer: ArrayBufferLike, byteOffset?: number, length?: number): T;
  new (length: number): T;
  readonly BYTES_PER_ELEMENT: number;
}

export interface DtypeInfo {
  /** Bytes per element. */
  size: number;
  /** The TypedArray a tensor of this dtype is viewed as (bf16/f16 as raw Uint16Array bits, f8/bool as Uint8Array). */
  array: TypedArrayConstructor;
  /** Position in the Rust enum; the serializer writes higher ranks first. */
  rank: number;
}

const ARRAYS: Record<SafetensorsDtype, TypedArrayConstructor> = {
  BOOL: Uint8Array,
  U8: Uint8Array,
  I8: Int8Array,
  F8_E5M2: Uint8Array,
  F8_E4M3: Uint8Array,
  I16: Int16Array,
  U16: Uint16Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I32: Int32Array,
  U32: Uint32Array,
  F32: Float32Array,
  F64: Float64Array,
  I64: BigInt64Array,
  U64: BigUint64Array,
};

/** dtype -> {size, array, rank}. */
export const DTYPES: Readonly<Record<SafetensorsDtype, DtypeInfo>> = Object.fromEntries(
  SAFETENSORS_DTYPES.map((d, rank) => [d, { size: ARRAYS[d].BYTES_PER_ELEMENT, array: ARRAYS[d], rank }]),
) as Record<SafetensorsDtype, DtypeInfo>;

export function isSafetensorsDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === 'string' && Object.hasOwn(DTYPES, s);
}

/** Bytes per element of a safetensors dtype; throws on an unknown one. */
export function dtypeSize(dtype: string): number {
  if (!isSafetensorsDtype(dtype)) throw new Error(`unknown safetensors dtype "${dtype}" (known: ${SAFETENSORS_DTYPES.join(', ')})`);
  return DTYPES[dtype].size;
}

function u32View(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

function checkOut<T extends { length: number }>(out: T, n: number, fn: string): T {
  if (out.length !== n) throw new Error(`${fn}: out has ${out.length} elements, the source has ${n}`);
  return out;
}

/** One f32 (as its bits) to bf16 bits, round-to-nearest-even; NaN keeps sign and payload top bits, made quiet. */
export function f32BitsToBf16(v: number): number {
  if ((v & 0x7fffffff) >>> 0 > 0x7f800000) return ((v >>> 16) | 0x40) & 0xffff;
  return ((v >>> 0) + 0x7fff + ((v >>> 16) & 1)) >>> 16;
}

/** One f32 (as its bits) to IEEE half bits, round-to-nearest-even (exact incl. subnormals, overflow to inf). */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const a = x & 0x7fffffff;
  if (a >= 0x7f800000) return a > 0x7f800000 ? sign | 0x7e00 : sign | 0x7c00;
  if (a >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to inf (65504 has an odd mantissa)
  if (a < 0x38800000) {
    // below 2^-14: a half subnormal m * 2^-24 (or zero; 2^-25 exactly is a tie that rounds to 0)
    if (a <= 0x33000000) return sign;
    const e = a >>> 23;
    const m = (a & 0x7fffff) | 0x800000;
    const shift = 126 - e; // 14..24
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && q & 1)) q++;
    return sign | q; // q == 0x400 is the smallest normal, encoded the same way
  }
  let h = (((a >>> 23) - 112) << 10) | ((a >>> 13) & 0x3ff);
  const rem = a & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // a carry into the exponent is right
  return sign | h;
}

/** One IEEE half (bits) to f32 bits. */
export function f16BitsToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  // subnormal: normalise
  let exp = 113;
  while ((m & 0x400) === 0) {
    m <<= 1;
    exp--;
  }
  return (sign | (exp << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** f32 -> bf16 bits (round-to-nearest-even). `out` may be given to avoid an allocation. */
export function f32ToBf16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const o = out ? checkOut(out, n, 'f32ToBf16') : new Uint16Array(n);
  const u = u32View(src);
  for (let i = 0; i < n; i++) {
    const v = u[i]!;
    o[i] = (v & 0x7fffffff) >>> 0 > 0x7f800000 ? (v >>> 16) | 0x40 : (v + 0x7fff + ((v >>> 16) & 1)) >>> 16;
  }
  return o;
}

/** bf16 bits -> f32 (exact). */
export function bf16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const o = out ? checkOut(out, n, 'bf16ToF32') : new Float32Array(n);
  const u = u32View(o);
  for (let i = 0; i < n; i++) u[i] = src[i]! << 16;
  return o;
}

/** f32 -> IEEE half bits (round-to-nearest-even, subnormals, overflow to inf, NaN -> sign|0x7E00). */
export function f32ToF16(src: Float32Array, out?: Uint16Array): Uint16Array {
  const n = src.length;
  const o = out ? checkOut(out, n, 'f32ToF16') : new Uint16Array(n);
  const u = u32View(src);
  for (let i = 0; i < n; i++) o[i] = f32BitsToF16(u[i]!);
  return o;
}

let f16Table: Uint32Array | undefined;

/** IEEE half bits -> f32 (exact). */
export function f16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const n = src.length;
  const o = out ? checkOut(out, n, 'f16ToF32') : new Float32Array(n);
  const u = u32View(o);
  if (n < 4096) {
    for (let i = 0; i < n; i++) u[i] = f16BitsToF32(src[i]!);
    return o;
  }
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  const t = f16Table;
  for (let i = 0; i < n; i++) u[i] = t[src[i]!]!;
  return o;
}
