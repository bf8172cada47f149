/**
 * safetensors reader and writer (format: huggingface/safetensors, spec in reference/peft-spec.md §1.5).
 *
 * Reading is hardened like the Rust crate: the header length, the JSON, every dtype, shape and offset
 * are checked, tensors may not overlap and must cover the data area exactly; a bad file gives an Error
 * naming the file, the tensor and what is wrong, never an out-of-bounds read.
 *
 * Memory: by default the file is memory-mapped through the native addon (read-only, MAP_PRIVATE) and
 * each tensor is a zero-copy view over the mapping; nothing is read from disk until it is touched.
 * THOSE VIEWS ARE READ-ONLY: writing into one kills the process with SIGSEGV (and truncating the file
 * while it is mapped gives SIGBUS on the next read). Pass `{copy: true}` for writable arrays (the file is
 * read into private memory). Without the addon the file is read into memory (writable) either way.
 * A tensor whose offset is not aligned for its element size is copied (only that tensor).
 * Files over 4 GiB (Node 20's largest buffer) are mapped or read in ranges of at most 4 GiB; one
 * tensor must fit in one range.
 *
 * Writing is byte-identical to the Rust/Python serializer: compact JSON header with `__metadata__` first,
 * tensors in data order (dtype enum order descending, then name ascending by UTF-8 bytes), contiguous
 * offsets, header padded with spaces to a multiple of 8, written atomically.
 * (With more than one metadata key the Rust crate writes them in HashMap order, i.e. unspecified; this
 * writer keeps the caller's insertion order.)
 */
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { basename, join } from 'node:path';
import { UserError } from '../errors.js';
import { loadAddon } from './addon.js';
import { writeFileAtomic } from './atomic.js';
import { DTYPES, isSafetensorsDtype, SAFETENSORS_DTYPES, type SafetensorsDtype, type TypedArray } from './dtypes.js';

/** The Rust crate's limit on the JSON header. */
export const MAX_HEADER_SIZE = 100_000_000;

export interface SafetensorsTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Typed view (see dtypes.ts: bf16/f16 as Uint16Array bits). Read-only if the file is memory-mapped. */
  data: TypedArray;
}

export interface SafetensorsFile {
  /** The file read (or the name given to parseSafetensors). */
  path: string;
  /** Tensors in header order. */
  tensors: Map<string, SafetensorsTensor>;
  metadata: Record<string, string> | undefined;
  /** True when the tensors are views over a read-only memory mapping. */
  mapped: boolean;
  /** Byte length of the JSON header (N); the data area starts at 8 + N. */
  headerLength: number;
}

export interface ReadSafetensorsOptions {
  /** Read into private, writable memory instead of memory-mapping the file. Default false. */
  copy?: boolean;
}

/** What the writer accepts per tensor: any typed array / view whose byte length matches dtype x shape. */
export interface TensorToWrite {
  dtype: string;
  shape: readonly number[];
  data: ArrayBufferView;
}

export type TensorsToWrite = Record<string, TensorToWrite> | Map<string, TensorToWrite>;

/** Tensor entry of a parsed header (no data). */
export interface HeaderEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** [begin, end) relative to the data area. */
  offsets: [number, number];
}

export interface SafetensorsHeader {
  headerLength: number;
  /** Size of the data area in bytes. */
  dataLength: number;
  entries: Map<string, HeaderEntry>;
  metadata: Record<string, string> | undefined;
}

const HINT = 'the file is damaged, truncated or not a safetensors file: download or save it again';

function bad(file: string, what: string): UserError {
  return new UserError(`${file}: invalid safetensors file: ${what}`, HINT);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads the u64 LE header length and checks it against the limit and the file size. */
function headerLengthOf(file: string, first8: Uint8Array, fileSize: number): number {
  if (fileSize < 8) throw bad(file, `it is ${fileSize} bytes, shorter than the 8-byte header length`);
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE)) throw bad(file, `the header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit`);
  const len = Number(n);
  if (len > fileSize - 8) throw bad(file, `the header length ${len} exceeds the file size (${fileSize} bytes, ${fileSize - 8} after the length)`);
  if (len < 2) throw bad(file, `the header length ${len} is too short for a JSON object`);
  return len;
}

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Parses and validates the JSON header; `dataLength` is the size of the data area after it. */
function parseHeaderJson(file: string, bytes: Uint8Array, headerLength: number, dataLength: number): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw bad(file, 'the header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw bad(file, `the header does not start with "{" (starts with ${describe(text.slice(0, 16))})`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad(file, `the header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) throw bad(file, 'the header is not a JSON object');

  let metadata: Record<string, string> | undefined;
  const entries = new Map<string, HeaderEntry>();
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (v === null) continue;
      if (!isPlainObject(v)) throw bad(file, `"__metadata__" must be an object of strings, got ${describe(v)}`);
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw bad(file, `"__metadata__" key "${k}" must be a string, got ${describe(s)}`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const where = `tensor "${name}"`;
    if (!isPlainObject(v)) throw bad(file, `${where}: expected {dtype, shape, data_offsets}, got ${describe(v)}`);
    const { dtype, shape, data_offsets: offs } = v;
    if (!isSafetensorsDtype(dtype)) throw bad(file, `${where}: unknown dtype ${describe(dtype)} (known: ${SAFETENSORS_DTYPES.join(', ')})`);
    if (!Array.isArray(shape)) throw bad(file, `${where}: "shape" must be an array of non-negative integers, got ${describe(shape)}`);
    let numel = 1;
    for (const d of shape) {
      if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
        throw bad(file, `${where}: shape ${describe(shape)} has ${describe(d)}, not a non-negative integer`);
      }
      numel *= d;
      if (!Number.isSafeInteger(numel)) throw bad(file, `${where}: shape ${describe(shape)} has too many elements`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
      throw bad(file, `${where}: "data_offsets" must be [begin, end] with non-negative integers, got ${describe(offs)}`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) throw bad(file, `${where}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataLength) {
      throw bad(file, `${where}: data_offsets [${begin}, ${end}] run past the end of the data area (${dataLength} bytes); the file is probably truncated`);
    }
    const nbytes = numel * DTYPES[dtype].size;
    if (end - begin !== nbytes) {
      throw bad(file, `${where}: ${dtype} shape [${shape.join(', ')}] needs ${nbytes} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
    }
    entries.set(name, { dtype, shape: shape as number[], offsets: [begin, end] });
  }

  // No overlaps, no gaps: sorted by offsets the tensors must tile [0, dataLength) exactly (as the Rust crate).
  const sorted = [...entries].sort((a, b) => a[1].offsets[0] - b[1].offsets[0] || a[1].offsets[1] - b[1].offsets[1]);
  let pos = 0;
  let prev = '';
  for (const [name, e] of sorted) {
    const [begin, end] = e.offsets;
    if (begin < pos) throw bad(file, `tensor "${name}" (data_offsets [${begin}, ${end}]) overlaps tensor "${prev}" (which ends at ${pos})`);
    if (begin > pos) throw bad(file, `gap in the data area: bytes ${pos}..${begin} belong to no tensor (before tensor "${name}")`);
    pos = end;
    prev = name;
  }
  if (pos !== dataLength) throw bad(file, `the tensors cover ${pos} bytes of the ${dataLength}-byte data area; bytes ${pos}..${dataLength} belong to no tensor`);
  return { headerLength, dataLength, entries, metadata };
}

/** Validates and parses the header of a whole file held in `bytes`. */
export function parseSafetensorsHeader(bytes: Uint8Array, file = '<buffer>'): SafetensorsHeader {
  const n = headerLengthOf(file, bytes.subarray(0, 8), bytes.byteLength);
  return parseHeaderJson(file, bytes.subarray(8, 8 + n), n, bytes.byteLength - 8 - n);
}

/** Reads and validates only the header of a file (reads 8 + N bytes; no mapping). */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const fd = openFile(path);
  try {
    const size = fstatSync(fd).size;
    const first = new Uint8Array(8);
    readFully(fd, first, 0, Math.min(8, size));
    const n = headerLengthOf(path, first, size);
    const header = new Uint8Array(n);
    readFully(fd, header, 8, n);
    return parseHeaderJson(path, header, n, size - 8 - n);
  } finally {
    closeSync(fd);
  }
}

/** Views (or, when misaligned, copies) the tensors of a validated file held in `bytes`. */
function tensorsOf(bytes: Uint8Array, h: SafetensorsHeader): Map<string, SafetensorsTensor> {
  const base = bytes.byteOffset + 8 + h.headerLength;
  const out = new Map<string, SafetensorsTensor>();
  for (const [name, e] of h.entries) {
    const info = DTYPES[e.dtype];
    const numel = (e.offsets[1] - e.offsets[0]) / info.size;
    const off = base + e.offsets[0];
    let data: TypedArray;
    if (off % info.size === 0) {
      data = new info.array(bytes.buffer, off, numel);
    } else {
      data = new info.array(numel);
      new Uint8Array(data.buffer).set(bytes.subarray(off - bytes.byteOffset, off - bytes.byteOffset + numel * info.size));
    }
    out.set(name, { dtype: e.dtype, shape: e.shape, data });
  }
  return out;
}

/**
 * Parses a whole safetensors file already in memory; tensors are views over `bytes` (copies where
 * misaligned). `file` names it in error messages.
 */
export function parseSafetensors(bytes: Uint8Array, file = '<buffer>'): SafetensorsFile {
  const h = parseSafetensorsHeader(bytes, file);
  return { path: file, tensors: tensorsOf(bytes, h), metadata: h.metadata, mapped: false, headerLength: h.headerLength };
}

/** Opens a file for reading; a missing or unreadable file is a UserError naming it (also used by gguf.ts). */
export function openFile(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UserError(`${path}: no such file`, 'check the path');
    throw new UserError(`${path}: cannot open: ${(e as Error).message}`);
  }
}

function readFully(fd: number, into: Uint8Array, position: number, length: number): void {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, into, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw new Error(`unexpected end of file after ${position + done} bytes (the file shrank while being read?)`);
    done += n;
  }
}

/** Reads a whole file into a fresh (private, unpooled, writable) Uint8Array. */
function readPrivate(path: string): Uint8Array {
  const fd = openFile(path);
  try {
    const size = fstatSync(fd).size;
    const bytes = new Uint8Array(size);
    readFully(fd, bytes, 0, size);
    return bytes;
  } finally {
    closeSync(fd);
  }
}

type MmapFn = (path: string, offset?: number, length?: number) => ArrayBuffer;

function mmapFn(): MmapFn | null {
  const addon = loadAddon();
  return addon && typeof addon.mmapFile === 'function' ? (addon.mmapFile as MmapFn) : null;
}

/**
 * Largest single buffer used for one file (or one range of it): 2^32 bytes, the limit of Node 20 for
 * external buffers and typed arrays. Bigger files (e.g. 5 GB shards) are mapped or read in ranges.
 */
export const MAX_SEGMENT = Math.min(2 ** 32, bufferConstants.MAX_LENGTH);

/**
 * Reads a safetensors file. Memory-maps it when the native addon is available and `copy` is not set
 * (views are then READ-ONLY; see the file comment), otherwise reads it into writable memory.
 */
export function readSafetensors(path: string, opts: ReadSafetensorsOptions = {}): SafetensorsFile {
  const mmap = opts.copy ? null : mmapFn();
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    size = 0; // openFile below reports it
  }
  if (size > MAX_SEGMENT) return readLarge(path, mmap);
  let bytes: Uint8Array | undefined;
  if (mmap) {
    try {
      bytes = new Uint8Array(mmap(path));
    } catch {
      bytes = undefined; // fall back to reading, which reports a missing file or a permission problem clearly
    }
  }
  const mapped = bytes !== undefined;
  bytes ??= readPrivate(path);
  const h = parseSafetensorsHeader(bytes, path);
  return { path, tensors: tensorsOf(bytes, h), metadata: h.metadata, mapped, headerLength: h.headerLength };
}

/** A file over MAX_SEGMENT bytes: header first, then the tensors in ranges of at most MAX_SEGMENT bytes. */
function readLarge(path: string, mmap: MmapFn | null, maxSegment = MAX_SEGMENT): SafetensorsFile {
  const h = readSafetensorsHeader(path);
  const dataStart = 8 + h.headerLength;
  const sorted = [...h.entries].sort((a, b) => a[1].offsets[0] - b[1].offsets[0]);
  // group consecutive tensors into segments starting at a multiple of 8 in the file
  const segments: { start: number; end: number; names: string[] }[] = [];
  for (const [name, e] of sorted) {
    const begin = dataStart + e.offsets[0];
    const end = dataStart + e.offsets[1];
    const last = segments[segments.length - 1];
    if (last && end - last.start <= maxSegment) {
      last.end = end;
      last.names.push(name);
      continue;
    }
    const start = begin - (begin % 8);
    if (end - start > maxSegment) {
      throw new UserError(`${path}: tensor "${name}" is ${e.offsets[1] - e.offsets[0]} bytes, more than one ArrayBuffer can hold (${maxSegment})`, 'split the tensor or use a runtime with larger buffers');
    }
    segments.push({ start, end, names: [name] });
  }
  let mapped = mmap !== null;
  const tensors = new Map<string, SafetensorsTensor>();
  const fd = openFile(path);
  try {
    for (const seg of segments) {
      let buf: ArrayBuffer | undefined;
      if (mapped && mmap) {
        try {
          buf = mmap(path, seg.start, seg.end - seg.start);
        } catch {
          mapped = false;
        }
      }
      if (!buf) {
        buf = new ArrayBuffer(seg.end - seg.start);
        readFully(fd, new Uint8Array(buf), seg.start, seg.end - seg.start);
      }
      for (const name of seg.names) {
        const e = h.entries.get(name)!;
        const info = DTYPES[e.dtype];
        const off = dataStart + e.offsets[0] - seg.start;
        const numel = (e.offsets[1] - e.offsets[0]) / info.size;
        let data: TypedArray;
        if (off % info.size === 0) data = new info.array(buf, off, numel);
        else {
          data = new info.array(numel);
          new Uint8Array(data.buffer).set(new Uint8Array(buf, off, numel * info.size));
        }
        tensors.set(name, { dtype: e.dtype, shape: e.shape, data });
      }
    }
  } finally {
    closeSync(fd);
  }
  // header order, as for small files
  const ordered = new Map<string, SafetensorsTensor>();
  for (const name of h.entries.keys()) ordered.set(name, tensors.get(name)!);
  return { path, tensors: ordered, metadata: h.metadata, mapped, headerLength: h.headerLength };
}

/** For tests: the ranged reader with a small segment limit. */
export const readSafetensorsInRangesForTest = (path: string, opts: ReadSafetensorsOptions & { maxSegment: number }): SafetensorsFile =>
  readLarge(path, opts.copy ? null : mmapFn(), opts.maxSegment);

// ---------------------------------------------------------------------------------------------------------
// Writing

function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * Serializes tensors as the Rust crate does; returns the chunks to write in order (the header, then a
 * view of each tensor's bytes: nothing is copied) and the total size.
 */
export function serializeSafetensors(tensors: TensorsToWrite, metadata?: Record<string, string>): { chunks: Uint8Array[]; size: number } {
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  for (const [name, t] of list) {
    const where = `writeSafetensors: tensor "${name}"`;
    if (name === '__metadata__') throw new Error(`${where}: the name is reserved for the metadata`);
    if (!isSafetensorsDtype(t.dtype)) throw new Error(`${where}: unknown dtype "${t.dtype}" (known: ${SAFETENSORS_DTYPES.join(', ')})`);
    let numel = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) throw new Error(`${where}: shape [${t.shape.join(', ')}] must hold non-negative integers`);
      numel *= d;
    }
    const want = numel * DTYPES[t.dtype].size;
    if (!ArrayBuffer.isView(t.data)) throw new Error(`${where}: data must be a typed array`);
    if (t.data.byteLength !== want) {
      throw new Error(`${where}: ${t.dtype} shape [${t.shape.join(', ')}] needs ${want} bytes, data has ${t.data.byteLength}`);
    }
  }
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new Error(`writeSafetensors: metadata "${k}" must be a string, got ${typeof v}`);
    }
  }
  list.sort((a, b) => DTYPES[b[1].dtype as SafetensorsDtype].rank - DTYPES[a[1].dtype as SafetensorsDtype].rank || compareUtf8(a[0], b[0]));

  const parts: string[] = [];
  if (metadata !== undefined) {
    parts.push(`"__metadata__":{${Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`);
  }
  let offset = 0;
  const chunks: Uint8Array[] = [];
  for (const [name, t] of list) {
    const end = offset + t.data.byteLength;
    parts.push(`${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    offset = end;
    chunks.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const n = Math.ceil(json.length / 8) * 8;
  if (n > MAX_HEADER_SIZE) throw new Error(`writeSafetensors: the header would be ${n} bytes, over the ${MAX_HEADER_SIZE}-byte limit readers enforce`);
  const head = new Uint8Array(8 + n).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(n), true);
  head.set(json, 8);
  return { chunks: [head, ...chunks], size: 8 + n + offset };
}

/**
 * Writes a safetensors file atomically (temp file in the same directory, fsync, rename), byte-identical
 * to the Rust/Python serializer. Tensor data may be any typed array whose byte length is right.
 */
export function writeSafetensors(path: string, tensors: TensorsToWrite, metadata?: Record<string, string>): void {
  writeFileAtomic(path, serializeSafetensors(tensors, metadata).chunks);
}

// ---------------------------------------------------------------------------------------------------------
// Model folders (single file or sharded)

export interface SafetensorsFolder {
  tensors: Map<string, SafetensorsTensor>;
  /** `__metadata__` of model.safetensors, or of the first shard. */
  metadata: Record<string, string> | undefined;
  /** The index's own "metadata" (e.g. total_size), when sharded. */
  indexMetadata?: Record<string, unknown>;
  /** The safetensors files read, in order. */
  files: string[];
  /** True when every file was memory-mapped. */
  mapped: boolean;
}

const PICKLED = /\.(bin|pt|pth|ckpt|pkl)$/;

function convertHint(dir: string): string {
  const d = JSON.stringify(dir).slice(1, -1).replace(/'/g, "\\'");
  return (
    `convert it once, with a Python you trust: python -c "from transformers import AutoModelForCausalLM; ` +
    `m=AutoModelForCausalLM.from_pretrained('${d}'); m.save_pretrained('${d}', safe_serialization=True)"`
  );
}

/** A shard name from an index: a plain file name, no path components. */
function checkShardName(indexFile: string, key: string, shard: unknown): string {
  if (typeof shard !== 'string' || shard === '' || shard !== basename(shard) || shard === '.' || shard === '..' || shard.includes('\\')) {
    throw new UserError(`${indexFile}: weight_map["${key}"] must be a file name in the same folder, got ${describe(shard)}`, HINT);
  }
  return shard;
}

/** The weight files of a model folder: ['model.safetensors'] or the shards named by the index (sorted). */
export function safetensorsFolderFiles(dir: string): { index?: string; files: string[]; weightMap?: Record<string, string>; indexMetadata?: Record<string, unknown> } {
  const single = join(dir, 'model.safetensors');
  const indexFile = join(dir, 'model.safetensors.index.json');
  if (existsSync(indexFile)) {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(indexFile, 'utf8'));
    } catch (e) {
      throw new UserError(`${indexFile}: not valid JSON (${(e as Error).message})`, HINT);
    }
    if (!isPlainObject(json) || !isPlainObject(json.weight_map)) {
      throw new UserError(`${indexFile}: expected {"metadata": {...}, "weight_map": {"<tensor>": "<shard file>"}}`, HINT);
    }
    const weightMap: Record<string, string> = {};
    for (const [k, v] of Object.entries(json.weight_map)) weightMap[k] = checkShardName(indexFile, k, v);
    const files = [...new Set(Object.values(weightMap))].sort();
    if (files.length === 0) throw new UserError(`${indexFile}: weight_map is empty`, HINT);
    return { index: indexFile, files, weightMap, indexMetadata: isPlainObject(json.metadata) ? json.metadata : undefined };
  }
  if (existsSync(single)) return { files: ['model.safetensors'] };
  let listing: string[] = [];
  try {
    listing = readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UserError(`${dir}: no such folder`, 'pass a model folder (config.json + model.safetensors) or a Hugging Face id');
    if (code === 'ENOTDIR') throw new UserError(`${dir} is a file, not a model folder`, 'pass the folder that holds model.safetensors');
    throw new UserError(`${dir}: cannot list: ${(e as Error).message}`);
  }
  const pickled = listing.filter((f) => PICKLED.test(f));
  if (pickled.length > 0) {
    throw new UserError(
      `${dir} has only pickled PyTorch weights (${pickled.slice(0, 3).join(', ')}${pickled.length > 3 ? ', ...' : ''}); ajuste refuses them because loading a pickle can run arbitrary code`,
      convertHint(dir),
    );
  }
  const other = listing.filter((f) => f.endsWith('.safetensors'));
  throw new UserError(
    `${dir} has no model.safetensors or model.safetensors.index.json${other.length ? ` (it has ${other.slice(0, 3).join(', ')})` : ''}`,
    'pass a Hugging Face model folder saved with save_pretrained(..., safe_serialization=True)',
  );
}

/**
 * Reads the weights of a Hugging Face model folder: `model.safetensors`, or `model.safetensors.index.json`
 * plus its shards (every name in the index's weight_map must be in the shard it names; a tensor may not
 * be in two shards). Refuses folders with only pickled checkpoints (pytorch_model.bin). Memory-maps like
 * readSafetensors (read-only views unless `copy`).
 */
export function readSafetensorsFolder(dir: string, opts: ReadSafetensorsOptions = {}): SafetensorsFolder {
  if (existsSync(dir) && !statSync(dir).isDirectory()) throw new UserError(`${dir} is a file, not a model folder`, 'pass the folder that holds model.safetensors');
  const { index, files, weightMap, indexMetadata } = safetensorsFolderFiles(dir);
  const tensors = new Map<string, SafetensorsTensor>();
  const owner = new Map<string, string>();
  let metadata: Record<string, string> | undefined;
  let mapped = true;
  const paths: string[] = [];
  for (const f of files) {
    const p = join(dir, f);
    if (!existsSync(p)) {
      throw new UserError(`${index ?? dir}: shard ${f} is missing from ${dir}`, 'download the whole model again (all model-*.safetensors shards)');
    }
    const st = readSafetensors(p, opts);
    paths.push(p);
    mapped &&= st.mapped;
    metadata ??= st.metadata;
    for (const [name, t] of st.tensors) {
      const prev = owner.get(name);
      if (prev !== undefined) throw new UserError(`${dir}: tensor "${name}" is in two shards, ${prev} and ${f}`, HINT);
      owner.set(name, f);
      tensors.set(name, t);
    }
  }
  if (weightMap) {
    const missing = Object.entries(weightMap).filter(([name, f]) => owner.get(name) !== f);
    if (missing.length > 0) {
      const list = missing.slice(0, 5).map(([name, f]) => `"${name}" (index says ${f}${owner.has(name) ? `, found in ${owner.get(name)}` : ', found nowhere'})`);
      throw new UserError(`${index}: ${missing.length} tensor(s) of the weight_map are not in their shard: ${list.join('; ')}${missing.length > 5 ? '; ...' : ''}`, HINT);
    }
  }
  return { tensors, metadata, indexMetadata, files: paths, mapped };
}
