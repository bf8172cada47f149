/**
 * GGUF (llama.cpp's model file) reader and writer, version 3, little-endian, as ggml/src/gguf.cpp reads it and
 * gguf-py's GGUFWriter writes it:
 *
 *   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x (string key | u32 value type | value)          string = u64 byte length + UTF-8 bytes (no NUL)
 *   n_tensors x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
 *   zero padding to `general.alignment` (32 when absent), then the data section: each tensor's bytes at its
 *   offset, padded with zeros to the alignment, in the order of the tensor infos.
 *
 * Shapes: GGUF stores ggml's `ne`, fastest-varying dimension first. This module's `shape` is the row-major
 * order (outermost first, as numpy/PyTorch write it: a Linear weight is [out, in]); `ne` is its reverse.
 *
 * Reading is hardened: every count, length and offset is checked against the bytes left in the file before it
 * is used, and the rules llama.cpp enforces (known value and tensor types, no nested arrays, unique keys and
 * tensor names, names under 64 bytes, at most 4 dimensions, rows a whole number of blocks, `general.alignment`
 * a u32 power of two, tensors contiguous in info order) are errors that name the file, the key or the tensor.
 * Only the header is read by readGguf; tensor data is read on request.
 *
 * Writing streams: the header is computed from names, types and shapes, then each tensor's bytes are asked for
 * in turn (a tensor may be a function that produces them), written, and dropped; the file is written to a
 * temporary name and renamed (src/io/atomic.ts).
 *
 * Q8_0 (blocks of 32 values: f16 scale d = max|x| / 127, then 32 int8 q = round(x / d), halves away from zero)
 * is computed bit for bit as gguf-py's `quants.quantize` (test/fixtures/gguf/q8_0.json is its output).
 */
import { closeSync, fstatSync, readSync } from 'node:fs';
import { UserError } from '../errors.js';
import { writeFileAtomicWith } from './atomic.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './dtypes.js';
import { openFile } from './safetensors.js';

export const GGUF_MAGIC = 'GGUF';
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME: a tensor name must be shorter (in bytes). */
export const GGUF_MAX_NAME = 64;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;

// ---------------------------------------------------------------------------------------------------------
// Metadata values

/** GGUF value types, in the order of their ids (gguf_type / GGUFValueType). */
export const GGUF_VALUE_TYPES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];
export type GgufItemType = Exclude<GgufValueType, 'array'>;

export type GgufScalar =
  | { type: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64'; value: number }
  | { type: 'u64' | 'i64'; value: bigint }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string };

type NumberArray = Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array | Float64Array;

export interface GgufArray {
  type: 'array';
  itemType: GgufItemType;
  /** Read back as: string[] / boolean[] for strings and bools, a typed array for numbers (BigInt64Array etc. for 64-bit ints). */
  value: readonly string[] | readonly boolean[] | readonly number[] | readonly bigint[] | NumberArray | BigInt64Array | BigUint64Array;
}

export type GgufValue = GgufScalar | GgufArray;

/** Constructors for metadata values: `gv.u32(32)`, `gv.str('llama')`, `gv.array('string', tokens)`. */
export const gv = {
  u8: (value: number): GgufValue => ({ type: 'u8', value }),
  i8: (value: number): GgufValue => ({ type: 'i8', value }),
  u16: (value: number): GgufValue => ({ type: 'u16', value }),
  i16: (value: number): GgufValue => ({ type: 'i16', value }),
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  f64: (value: number): GgufValue => ({ type: 'f64', value }),
  u64: (value: bigint): GgufValue => ({ type: 'u64', value }),
  i64: (value: bigint): GgufValue => ({ type: 'i64', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  str: (value: string): GgufValue => ({ type: 'string', value }),
  array: (itemType: GgufItemType, value: GgufArray['value']): GgufValue => ({ type: 'array', itemType, value }),
};

const ITEM_SIZE: Record<Exclude<GgufItemType, 'string'>, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8 };

const INT_RANGE: Partial<Record<GgufItemType, [number, number]>> = {
  u8: [0, 0xff],
  i8: [-0x80, 0x7f],
  u16: [0, 0xffff],
  i16: [-0x8000, 0x7fff],
  u32: [0, 0xffffffff],
  i32: [-0x80000000, 0x7fffffff],
};

// ---------------------------------------------------------------------------------------------------------
// Tensor types

export interface GgmlType {
  id: number;
  name: string;
  /** Values per block (1 for plain types). */
  blockSize: number;
  /** Bytes per block. */
  typeSize: number;
}

/** Every ggml type gguf-py 0.19 knows (GGML_QUANT_SIZES), so a reader can size any tensor. */
export const GGML_TYPES: readonly GgmlType[] = (
  [
    [0, 'F32', 1, 4], [1, 'F16', 1, 2], [2, 'Q4_0', 32, 18], [3, 'Q4_1', 32, 20], [6, 'Q5_0', 32, 22], [7, 'Q5_1', 32, 24],
    [8, 'Q8_0', 32, 34], [9, 'Q8_1', 32, 40], [10, 'Q2_K', 256, 84], [11, 'Q3_K', 256, 110], [12, 'Q4_K', 256, 144],
    [13, 'Q5_K', 256, 176], [14, 'Q6_K', 256, 210], [15, 'Q8_K', 256, 292], [16, 'IQ2_XXS', 256, 66], [17, 'IQ2_XS', 256, 74],
    [18, 'IQ3_XXS', 256, 98], [19, 'IQ1_S', 256, 50], [20, 'IQ4_NL', 32, 18], [21, 'IQ3_S', 256, 110], [22, 'IQ2_S', 256, 82],
    [23, 'IQ4_XS', 256, 136], [24, 'I8', 1, 1], [25, 'I16', 1, 2], [26, 'I32', 1, 4], [27, 'I64', 1, 8], [28, 'F64', 1, 8],
    [29, 'IQ1_M', 256, 56], [30, 'BF16', 1, 2], [34, 'TQ1_0', 256, 54], [35, 'TQ2_0', 256, 66], [39, 'MXFP4', 32, 17],
    [40, 'NVFP4', 64, 36], [41, 'Q1_0', 128, 18],
  ] as const
).map(([id, name, blockSize, typeSize]) => ({ id, name, blockSize, typeSize }));

const TYPE_BY_ID = new Map(GGML_TYPES.map((t) => [t.id, t]));
const TYPE_BY_NAME = new Map(GGML_TYPES.map((t) => [t.name, t]));

/** The types ajuste writes and decodes. */
export type GgufTensorType = 'F32' | 'F16' | 'BF16' | 'Q8_0';

export function ggmlType(name: string): GgmlType {
  const t = TYPE_BY_NAME.get(name);
  if (!t) throw new Error(`unknown ggml type '${name}' (known: ${GGML_TYPES.map((x) => x.name).join(', ')})`);
  return t;
}

/** Bytes of a tensor of `numel` values (a whole number of blocks). */
export function ggmlNbytes(type: GgmlType, numel: number): number {
  return (numel / type.blockSize) * type.typeSize;
}

const pad = (n: number, align: number): number => Math.ceil(n / align) * align;

// ---------------------------------------------------------------------------------------------------------
// Q8_0

export const Q8_0_BLOCK = 32;

/**
 * Q8_0 blocks of `x` (length a multiple of 32): per block 2 bytes f16 d = max|x| / 127, then 32 int8
 * q = round(x * (1/d)) with halves away from zero (0 when d = 0). Bit-identical to gguf-py's Q8_0.quantize_blocks
 * (numpy float32 arithmetic; float32 products and quotients are exact to compute in doubles and round once).
 */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % Q8_0_BLOCK !== 0) throw new Error(`quantizeQ8_0: ${x.length} values is not a whole number of 32-value blocks`);
  const nb = x.length / Q8_0_BLOCK;
  const out = new Uint8Array(nb * 34);
  const scales = new Float32Array(nb);
  const q = new Int8Array(out.buffer);
  for (let b = 0; b < nb; b++) {
    const o = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(x[o + j]!));
    const d = Math.fround(amax / 127);
    const id = d === 0 ? 0 : Math.fround(1 / d);
    scales[b] = d;
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const v = Math.fround(x[o + j]! * id);
      const a = Math.abs(v);
      const f = Math.floor(a);
      const r = f + Math.floor(2 * (a - f)); // numpy's np_roundf: round half away from zero
      q[b * 34 + 2 + j] = v < 0 ? -r : r;
    }
  }
  const d16 = f32ToF16(scales);
  for (let b = 0; b < nb; b++) {
    out[b * 34] = d16[b]! & 0xff;
    out[b * 34 + 1] = d16[b]! >>> 8;
  }
  return out;
}

/** Q8_0 bytes back to f32: q * d, as gguf-py's dequantize (float32 product). */
export function dequantizeQ8_0(bytes: Uint8Array): Float32Array {
  if (bytes.length % 34 !== 0) throw new Error(`dequantizeQ8_0: ${bytes.length} bytes is not a whole number of 34-byte blocks`);
  const nb = bytes.length / 34;
  const out = new Float32Array(nb * Q8_0_BLOCK);
  const d16 = new Uint16Array(nb);
  for (let b = 0; b < nb; b++) d16[b] = bytes[b * 34]! | (bytes[b * 34 + 1]! << 8);
  const d = f16ToF32(d16);
  const q = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let b = 0; b < nb; b++) for (let j = 0; j < Q8_0_BLOCK; j++) out[b * Q8_0_BLOCK + j] = Math.fround(q[b * 34 + 2 + j]! * d[b]!);
  return out;
}

/** f32 values as the bytes of a tensor of `type` (F32, F16, BF16 or Q8_0). */
export function encodeTensor(values: Float32Array, type: GgufTensorType): Uint8Array {
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (type) {
    case 'F32':
      return bytes(values);
    case 'F16':
      return bytes(f32ToF16(values));
    case 'BF16':
      return bytes(f32ToBf16(values)); // RNE, NaN made quiet: the same bits as gguf-py (ggml_compute_fp32_to_bf16)
    case 'Q8_0':
      return quantizeQ8_0(values);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing

export interface GgufTensorSpec {
  name: string;
  type: string;
  /** Row-major shape, outermost first (a Linear weight is [out, in]); the file stores its reverse as ne. */
  shape: readonly number[];
  /** The bytes, or a function that makes them when the writer gets to this tensor (called once). */
  data: Uint8Array | (() => Uint8Array);
}

interface PlannedTensor {
  spec: GgufTensorSpec;
  type: GgmlType;
  nbytes: number;
  offset: number;
  nameBytes: Uint8Array;
}

const utf8 = new TextEncoder();

class HeaderWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.room(1);
    this.view.setUint8(this.length, v);
    this.length += 1;
  }
  u32(v: number): void {
    this.room(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.room(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  raw(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  string(s: string | Uint8Array): void {
    const b = typeof s === 'string' ? utf8.encode(s) : s;
    this.u64(b.length);
    this.raw(b);
  }
  item(type: GgufItemType, v: unknown, where: string): void {
    const bad = (what: string) => new Error(`writeGguf: ${where}: ${what}`);
    switch (type) {
      case 'string':
        if (typeof v !== 'string') throw bad(`expected a string, got ${typeof v}`);
        this.string(v);
        return;
      case 'bool':
        if (typeof v !== 'boolean') throw bad(`expected a boolean, got ${typeof v}`);
        this.u8(v ? 1 : 0);
        return;
      case 'u64':
      case 'i64': {
        if (typeof v !== 'bigint') throw bad(`expected a bigint for ${type}, got ${typeof v}`);
        const ok = type === 'u64' ? v >= 0n && v < 1n << 64n : v >= -(1n << 63n) && v < 1n << 63n;
        if (!ok) throw bad(`${v} is out of range for ${type}`);
        this.room(8);
        if (type === 'u64') this.view.setBigUint64(this.length, v, true);
        else this.view.setBigInt64(this.length, v, true);
        this.length += 8;
        return;
      }
      case 'f32':
      case 'f64':
        if (typeof v !== 'number') throw bad(`expected a number, got ${typeof v}`);
        this.room(8);
        if (type === 'f32') this.view.setFloat32(this.length, v, true);
        else this.view.setFloat64(this.length, v, true);
        this.length += ITEM_SIZE[type];
        return;
      default: {
        const [lo, hi] = INT_RANGE[type]!;
        if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) throw bad(`${String(v)} is not an integer in [${lo}, ${hi}] (${type})`);
        this.room(4);
        if (type === 'u8') this.view.setUint8(this.length, v);
        else if (type === 'i8') this.view.setInt8(this.length, v);
        else if (type === 'u16') this.view.setUint16(this.length, v, true);
        else if (type === 'i16') this.view.setInt16(this.length, v, true);
        else if (type === 'u32') this.view.setUint32(this.length, v, true);
        else this.view.setInt32(this.length, v, true);
        this.length += ITEM_SIZE[type];
      }
    }
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

function valueTypeId(t: GgufValueType): number {
  return GGUF_VALUE_TYPES.indexOf(t);
}

/** The alignment a metadata set asks for (`general.alignment`, a u32 power of two), or 32. */
function alignmentOf(kv: Map<string, GgufValue>, where: string): number {
  const a = kv.get('general.alignment');
  if (a === undefined) return GGUF_DEFAULT_ALIGNMENT;
  if (a.type !== 'u32' || a.value === 0 || (a.value & (a.value - 1)) !== 0) {
    throw new Error(`${where}: general.alignment must be a u32 power of two, got ${a.type} ${String(a.value)}`);
  }
  return a.value;
}

/** Checks a tensor list and lays out its data section. */
function planTensors(tensors: readonly GgufTensorSpec[], alignment: number): { planned: PlannedTensor[]; dataBytes: number } {
  const names = new Set<string>();
  const planned: PlannedTensor[] = [];
  let offset = 0;
  for (const spec of tensors) {
    const where = `writeGguf: tensor '${spec.name}'`;
    const nameBytes = utf8.encode(spec.name);
    if (nameBytes.length === 0 || nameBytes.length >= GGUF_MAX_NAME) throw new Error(`${where}: names must be 1 to ${GGUF_MAX_NAME - 1} bytes (llama.cpp's limit)`);
    if (names.has(spec.name)) throw new Error(`${where}: duplicate tensor name`);
    names.add(spec.name);
    const type = ggmlType(spec.type);
    if (spec.shape.length > GGUF_MAX_DIMS) throw new Error(`${where}: ${spec.shape.length} dimensions; llama.cpp allows at most ${GGUF_MAX_DIMS}`);
    let numel = 1;
    for (const d of spec.shape) {
      if (!Number.isSafeInteger(d) || d < 0) throw new Error(`${where}: shape [${spec.shape.join(', ')}] must hold non-negative integers`);
      numel *= d;
    }
    const row = spec.shape.length ? spec.shape[spec.shape.length - 1]! : 1;
    if (row % type.blockSize !== 0) throw new Error(`${where}: rows of ${row} values are not whole ${type.name} blocks of ${type.blockSize}`);
    const nbytes = ggmlNbytes(type, numel);
    planned.push({ spec, type, nbytes, offset, nameBytes });
    offset += pad(nbytes, alignment);
  }
  return { planned, dataBytes: offset };
}

/** The header (magic through tensor infos, not padded) of a GGUF file with this metadata and these tensors. */
export function serializeGgufHeader(kv: Iterable<readonly [string, GgufValue]>, tensors: readonly GgufTensorSpec[]): { header: Uint8Array; alignment: number; dataBytes: number; planned: PlannedTensor[] } {
  const map = new Map<string, GgufValue>();
  for (const [k, v] of kv) {
    if (k.length === 0) throw new Error('writeGguf: empty metadata key');
    if (map.has(k)) throw new Error(`writeGguf: duplicate metadata key '${k}'`);
    map.set(k, v);
  }
  const alignment = alignmentOf(map, 'writeGguf');
  const { planned, dataBytes } = planTensors(tensors, alignment);
  const w = new HeaderWriter();
  w.raw(utf8.encode(GGUF_MAGIC));
  w.u32(GGUF_VERSION);
  w.u64(planned.length);
  w.u64(map.size);
  for (const [k, v] of map) {
    w.string(k);
    w.u32(valueTypeId(v.type));
    if (v.type !== 'array') {
      w.item(v.type, v.value, `key '${k}'`);
      continue;
    }
    if ((v.itemType as string) === 'array') throw new Error(`writeGguf: key '${k}': nested arrays are not supported by llama.cpp`);
    if (!GGUF_VALUE_TYPES.includes(v.itemType)) throw new Error(`writeGguf: key '${k}': unknown array item type '${v.itemType}'`);
    if (v.value.length === 0) throw new Error(`writeGguf: key '${k}': empty array (gguf-py refuses them; leave the key out)`);
    w.u32(valueTypeId(v.itemType));
    w.u64(v.value.length);
    for (let i = 0; i < v.value.length; i++) w.item(v.itemType, v.value[i], `key '${k}'[${i}]`);
  }
  for (const t of planned) {
    w.string(t.nameBytes);
    w.u32(t.spec.shape.length);
    for (let j = t.spec.shape.length - 1; j >= 0; j--) w.u64(t.spec.shape[j]!);
    w.u32(t.type.id);
    w.u64(t.offset);
  }
  return { header: w.bytes(), alignment, dataBytes, planned };
}

/**
 * Writes a GGUF v3 file atomically. Metadata is written in the order given (keys must be unique; arrays must
 * not be empty); `general.alignment`, when given, sets the alignment. Tensor data is asked for one tensor at a
 * time and must have exactly the size its type and shape imply. Returns the file size.
 */
export function writeGguf(path: string, kv: Iterable<readonly [string, GgufValue]>, tensors: readonly GgufTensorSpec[]): number {
  const { header, alignment, dataBytes, planned } = serializeGgufHeader(kv, tensors);
  const start = pad(header.length, alignment);
  writeFileAtomicWith(path, (write) => {
    write(header);
    write(new Uint8Array(start - header.length));
    for (const t of planned) {
      const data = typeof t.spec.data === 'function' ? t.spec.data() : t.spec.data;
      if (data.byteLength !== t.nbytes) {
        throw new Error(`writeGguf: tensor '${t.spec.name}': ${t.type.name} shape [${t.spec.shape.join(', ')}] needs ${t.nbytes} bytes, got ${data.byteLength}`);
      }
      write(data);
      const fill = pad(t.nbytes, alignment) - t.nbytes;
      if (fill) write(new Uint8Array(fill));
    }
  });
  return start + dataBytes;
}

// ---------------------------------------------------------------------------------------------------------
// Reading

export interface GgufTensorInfo {
  name: string;
  type: GgmlType;
  /** As stored: ne[0] is the fastest-varying dimension. */
  ne: number[];
  /** Row-major (the reverse of ne): a Linear weight reads [out, in]. */
  shape: number[];
  numel: number;
  nbytes: number;
  /** Offset in the data section (as stored). */
  offset: number;
  /** Absolute offset in the file. */
  fileOffset: number;
}

export interface GgufFile {
  path: string;
  version: number;
  alignment: number;
  /** File offset of the data section. */
  dataOffset: number;
  size: number;
  /** Metadata in file order. */
  kv: Map<string, GgufValue>;
  /** Tensor infos in file order. */
  tensors: GgufTensorInfo[];
}

const HINT = 'the file is damaged, truncated or not a GGUF file: export or download it again';

function bad(file: string, what: string): UserError {
  return new UserError(`${file}: invalid GGUF file: ${what}`, HINT);
}

/** Random access to the bytes of a file or buffer; `read` is only called for ranges inside [0, size). */
interface ByteSource {
  readonly size: number;
  read(pos: number, len: number): Uint8Array;
}

function bufferSource(bytes: Uint8Array): ByteSource {
  return { size: bytes.byteLength, read: (pos, len) => bytes.subarray(pos, pos + len) };
}

const WINDOW = 1 << 20;

/** A file read through a 1 MiB window (the header is parsed in small steps; big items get their own read). */
function fileSource(fd: number, size: number): ByteSource {
  let win = new Uint8Array(0);
  let winStart = 0;
  const readAt = (into: Uint8Array, pos: number) => {
    let done = 0;
    while (done < into.length) {
      const n = readSync(fd, into, done, into.length - done, pos + done);
      if (n === 0) throw new Error(`unexpected end of file at ${pos + done} (the file shrank while being read?)`);
      done += n;
    }
  };
  return {
    size,
    read(pos, len) {
      if (pos >= winStart && pos + len <= winStart + win.length) return win.subarray(pos - winStart, pos - winStart + len);
      if (len > WINDOW / 2) {
        const out = new Uint8Array(len);
        readAt(out, pos);
        return out;
      }
      win = new Uint8Array(Math.min(WINDOW, size - pos));
      winStart = pos;
      readAt(win, pos);
      return win.subarray(0, len);
    },
  };
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });
const lenientUtf8 = new TextDecoder('utf-8');

class Cursor {
  pos = 0;
  constructor(
    readonly src: ByteSource,
    readonly file: string,
  ) {}

  get left(): number {
    return this.src.size - this.pos;
  }
  take(n: number, what: string): Uint8Array {
    if (n > this.left) {
      throw bad(this.file, `${what} needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.src.size} (${this.left} bytes left): the file is truncated`);
    }
    const b = this.src.read(this.pos, n);
    this.pos += n;
    return b;
  }
  private view(n: number, what: string): DataView {
    const b = this.take(n, what);
    return new DataView(b.buffer, b.byteOffset, n);
  }
  u32(what: string): number {
    return this.view(4, what).getUint32(0, true);
  }
  /** A u64 that must fit a JS number (a count, a length, an offset). */
  size(what: string): number {
    const v = this.view(8, what).getBigUint64(0, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(this.file, `${what} is ${v}, far beyond the file size (${this.src.size} bytes)`);
    return Number(v);
  }
  string(what: string, strict: boolean): string {
    const n = this.size(`the length of ${what}`);
    if (n > this.left) throw bad(this.file, `${what} is ${n} bytes long but only ${this.left} bytes are left in the file: the file is truncated`);
    const b = this.take(n, what);
    if (!strict) return lenientUtf8.decode(b);
    try {
      return strictUtf8.decode(b);
    } catch {
      throw bad(this.file, `${what} is not valid UTF-8`);
    }
  }
  item(type: GgufItemType, what: string): string | number | bigint | boolean {
    switch (type) {
      case 'string':
        return this.string(what, false);
      case 'bool': {
        const b = this.take(1, what)[0]!;
        if (b > 1) throw bad(this.file, `${what} is a bool with byte value ${b} (must be 0 or 1)`);
        return b === 1;
      }
      default: {
        const dv = this.view(ITEM_SIZE[type], what);
        switch (type) {
          case 'u8':
            return dv.getUint8(0);
          case 'i8':
            return dv.getInt8(0);
          case 'u16':
            return dv.getUint16(0, true);
          case 'i16':
            return dv.getInt16(0, true);
          case 'u32':
            return dv.getUint32(0, true);
          case 'i32':
            return dv.getInt32(0, true);
          case 'f32':
            return dv.getFloat32(0, true);
          case 'f64':
            return dv.getFloat64(0, true);
          case 'u64':
            return dv.getBigUint64(0, true);
          case 'i64':
            return dv.getBigInt64(0, true);
        }
      }
    }
  }
}

const ARRAY_CTORS = {
  u8: Uint8Array,
  i8: Int8Array,
  u16: Uint16Array,
  i16: Int16Array,
  u32: Uint32Array,
  i32: Int32Array,
  f32: Float32Array,
  f64: Float64Array,
  u64: BigUint64Array,
  i64: BigInt64Array,
} as const;

function valueType(c: Cursor, what: string): GgufValueType {
  const id = c.u32(`the value type of ${what}`);
  const t = GGUF_VALUE_TYPES[id];
  if (t === undefined) throw bad(c.file, `${what} has unknown value type ${id} (known: 0..${GGUF_VALUE_TYPES.length - 1})`);
  return t;
}

function readValue(c: Cursor, key: string): GgufValue {
  const where = `key '${key}'`;
  const type = valueType(c, where);
  if (type !== 'array') return { type, value: c.item(type, `the value of ${where}`) } as GgufValue;
  const itemType = valueType(c, `the items of ${where}`);
  if (itemType === 'array') throw bad(c.file, `${where} is an array of arrays, which llama.cpp does not read`);
  const n = c.size(`the length of array ${where}`);
  const minItem = itemType === 'string' ? 8 : ITEM_SIZE[itemType];
  if (n > c.left / minItem) {
    throw bad(c.file, `${where} claims ${n} ${itemType} items (at least ${n * minItem} bytes) but only ${c.left} bytes are left: the file is truncated or the count is corrupt`);
  }
  if (itemType === 'string') {
    const out: string[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = c.string(`${where}[${i}]`, false);
    return { type, itemType, value: out };
  }
  if (itemType === 'bool') {
    const out: boolean[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = c.item('bool', `${where}[${i}]`) as boolean;
    return { type, itemType, value: out };
  }
  const Ctor = ARRAY_CTORS[itemType];
  const bytes = c.take(n * Ctor.BYTES_PER_ELEMENT, `the items of ${where}`);
  const arr = new Ctor(n);
  new Uint8Array(arr.buffer).set(bytes); // a copy: aligned, and independent of the read window
  return { type, itemType, value: arr };
}

function parse(src: ByteSource, file: string): GgufFile {
  const c = new Cursor(src, file);
  if (src.size < 4) throw bad(file, `it is ${src.size} bytes, too short for the "GGUF" magic`);
  const magic = c.take(4, 'the magic');
  const magicText = String.fromCharCode(...magic);
  if (magicText !== GGUF_MAGIC) {
    const shown = [...magic].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
    throw bad(file, `it starts with '${shown}', not the magic 'GGUF'${magicText === 'FUGG' ? ' (a big-endian GGUF? ajuste reads little-endian files only)' : ''}`);
  }
  const version = c.u32('the version');
  if ((version & 0xffff) === 0 && version !== 0) throw bad(file, `version ${version} (0x${version.toString(16)}) looks byte-swapped: a big-endian GGUF? ajuste reads little-endian files only`);
  if (version < 2 || version > GGUF_VERSION) {
    throw bad(file, `GGUF version ${version} is not supported (ajuste reads versions 2 and 3${version === 1 ? '; version 1 is obsolete, convert the model again' : ''})`);
  }
  const nTensors = c.size('the tensor count');
  const nKv = c.size('the metadata count');
  // smallest possible entries: a KV is a 1-byte key + type + 1-byte value; a tensor info a 1-byte name + n_dims + type + offset
  if (nKv > c.left / 14) throw bad(file, `the header claims ${nKv} metadata entries, more than the ${c.left} bytes after it can hold: the file is truncated or the count is corrupt`);
  if (nTensors > (c.left - nKv * 14) / 25) {
    throw bad(file, `the header claims ${nTensors} tensors, more than the bytes after it can hold (${c.left} bytes, ${nKv} metadata entries): the file is truncated or the count is corrupt`);
  }
  const kv = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.string(`metadata key #${i}`, true);
    if (key.length === 0) throw bad(file, `metadata key #${i} is empty`);
    if (kv.has(key)) throw bad(file, `metadata key '${key}' appears twice`);
    kv.set(key, readValue(c, key));
  }
  let alignment: number;
  try {
    alignment = alignmentOf(kv, `${file}: invalid GGUF file`);
  } catch (e) {
    throw new UserError((e as Error).message, HINT);
  }
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  let expected = 0;
  for (let i = 0; i < nTensors; i++) {
    const name = c.string(`the name of tensor #${i}`, true);
    const where = `tensor '${name}'`;
    if (name.length === 0) throw bad(file, `tensor #${i} has an empty name`);
    if (utf8.encode(name).length >= GGUF_MAX_NAME) throw bad(file, `${where}: the name is ${utf8.encode(name).length} bytes; llama.cpp allows at most ${GGUF_MAX_NAME - 1}`);
    if (names.has(name)) throw bad(file, `${where} appears twice`);
    names.add(name);
    const nDims = c.u32(`the dimension count of ${where}`);
    if (nDims > GGUF_MAX_DIMS) throw bad(file, `${where} has ${nDims} dimensions; llama.cpp allows at most ${GGUF_MAX_DIMS}`);
    const ne: number[] = [];
    let numel = 1;
    for (let j = 0; j < nDims; j++) {
      const d = c.size(`dimension ${j} of ${where}`);
      ne.push(d);
      numel *= d;
      if (!Number.isSafeInteger(numel)) throw bad(file, `${where} has shape ne=[${ne.join(', ')}...], too many elements`);
    }
    const typeId = c.u32(`the type of ${where}`);
    const type = TYPE_BY_ID.get(typeId);
    if (!type) throw bad(file, `${where} has unknown ggml type ${typeId}`);
    if ((ne[0] ?? 1) % type.blockSize !== 0) throw bad(file, `${where}: ${type.name} rows must be whole blocks of ${type.blockSize} values, but ne[0] = ${ne[0]}`);
    const offset = c.size(`the data offset of ${where}`);
    const nbytes = ggmlNbytes(type, numel);
    if (offset !== expected) {
      throw bad(file, `${where} has data offset ${offset}, expected ${expected} (tensors must follow each other in info order, each padded to ${alignment} bytes, as llama.cpp requires)`);
    }
    expected += pad(nbytes, alignment);
    tensors.push({ name, type, ne, shape: [...ne].reverse(), numel, nbytes, offset, fileOffset: 0 });
  }
  const dataOffset = pad(c.pos, alignment);
  for (const t of tensors) {
    t.fileOffset = dataOffset + t.offset;
    if (t.fileOffset + t.nbytes > src.size) {
      throw bad(file, `tensor '${t.name}' (${t.type.name} ne=[${t.ne.join(', ')}], bytes ${t.fileOffset}..${t.fileOffset + t.nbytes}) runs past the end of the file (${src.size} bytes): the file is truncated`);
    }
  }
  return { path: file, version, alignment, dataOffset, size: src.size, kv, tensors };
}

/** Parses a whole GGUF file held in memory; `file` names it in errors. */
export function parseGguf(bytes: Uint8Array, file = '<buffer>'): GgufFile {
  return parse(bufferSource(bytes), file);
}

/** Reads and checks the header of a GGUF file (metadata and tensor infos); tensor data stays on disk. */
export function readGguf(path: string): GgufFile {
  const fd = openFile(path);
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new UserError(`${path} is a folder, not a GGUF file`, 'pass the .gguf file');
    return parse(fileSource(fd, st.size), path);
  } finally {
    closeSync(fd);
  }
}

/** The bytes of one tensor (read from disk for a file from readGguf, a view for one from parseGguf + bytes). */
export function ggufTensorBytes(f: GgufFile, t: GgufTensorInfo, bytes?: Uint8Array): Uint8Array {
  if (bytes) return bytes.subarray(t.fileOffset, t.fileOffset + t.nbytes);
  const fd = openFile(f.path);
  try {
    if (fstatSync(fd).size < t.fileOffset + t.nbytes) throw bad(f.path, `tensor '${t.name}' runs past the end of the file (it changed since it was read?)`);
    return fileSource(fd, t.fileOffset + t.nbytes).read(t.fileOffset, t.nbytes).slice();
  } finally {
    closeSync(fd);
  }
}

/** A tensor's values as f32 (F32, F16, BF16, Q8_0; F64 and the integer types are converted). */
export function ggufTensorF32(f: GgufFile, name: string, bytes?: Uint8Array): Float32Array {
  const t = f.tensors.find((x) => x.name === name);
  if (!t) throw new UserError(`${f.path} has no tensor '${name}'`);
  const raw = ggufTensorBytes(f, t, bytes).slice(); // aligned copy
  const n = t.numel;
  switch (t.type.name) {
    case 'F32':
      return new Float32Array(raw.buffer, 0, n);
    case 'F16':
      return f16ToF32(new Uint16Array(raw.buffer, 0, n));
    case 'BF16':
      return bf16ToF32(new Uint16Array(raw.buffer, 0, n));
    case 'Q8_0':
      return dequantizeQ8_0(raw);
    case 'F64':
      return Float32Array.from(new Float64Array(raw.buffer, 0, n));
    case 'I8':
      return Float32Array.from(new Int8Array(raw.buffer, 0, n));
    case 'I16':
      return Float32Array.from(new Int16Array(raw.buffer, 0, n));
    case 'I32':
      return Float32Array.from(new Int32Array(raw.buffer, 0, n));
    default:
      throw new UserError(`${f.path}: tensor '${name}' is ${t.type.name}; ajuste decodes F32, F16, BF16, Q8_0, F64 and I8/I16/I32 only`);
  }
}

/** A short printable form of a metadata value (long arrays abbreviated), for `ajuste export --inspect`. */
export function describeGgufValue(v: GgufValue, maxItems = 8): string {
  const one = (x: unknown) => (typeof x === 'string' ? JSON.stringify(x.length > 80 ? `${x.slice(0, 77)}...` : x) : String(x));
  if (v.type === 'f32') return `f32 ${Number(v.value.toPrecision(9))}`; // the float32, without its double's tail
  if (v.type !== 'array') return `${v.type} ${one(v.value)}`;
  const items = Array.from(v.value as ArrayLike<unknown>).slice(0, maxItems).map(one);
  return `[${v.itemType} x ${v.value.length}] ${items.join(', ')}${v.value.length > maxItems ? ', ...' : ''}`;
}
