/**
 * Tensor: a dtype, a shape and a contiguous row-major storage, plus the autograd fields.
 *
 * Views: `reshape` and `narrow0` (a range of the first axis) share storage; other layout changes copy.
 * Storage comes from tensor/memory.ts and goes back to its pool on `dispose()`; tensors created inside
 * a `scope()` are disposed when the scope ends unless returned or kept (see autograd.ts).
 */
import { allocate, release, type Storage, type StorageKind } from './memory.js';

export type DType = 'f32' | 'f64' | 'bf16' | 'i32' | 'u8';
export type FloatArray = Float32Array | Float64Array;

const STORAGE: Record<DType, StorageKind> = { f32: 'f32', f64: 'f64', bf16: 'u16', i32: 'i32', u8: 'u8' };

/** A node of the autograd tape: the op that produced `output` and how to push gradients to its inputs. */
export interface TapeNode {
  readonly op: string;
  readonly inputs: readonly Tensor[];
  readonly output: Tensor;
  /** Receives d(loss)/d(output) and accumulates into its inputs with `addGrad`. */
  backward(gradOut: FloatArray): void;
  /** Frees what the forward saved for backward (called right after backward). */
  release?(): void;
}

/** Hooks installed by autograd.ts (kept here to avoid an import cycle). */
export const hooks = {
  onCreate: (_t: Tensor): void => {},
};

let nextId = 1;

export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly dtype: DType;
  requiresGrad = false;
  /** Accumulated gradient (parameters only; f32, or f64 for f64 tensors). */
  grad: Tensor | null = null;
  /** The op that produced this tensor, when it is on the tape. */
  node: TapeNode | null = null;
  /** Gradient being accumulated during backward for a non-leaf tensor. */
  gradBuf: FloatArray | null = null;
  name = '';
  /** Parameters and other long-lived tensors are never disposed by scopes or backward. */
  persistent = false;
  /**
   * The storage is a view over memory that must not be written (a read-only memory-mapped checkpoint).
   * `parameter()` gives such a tensor a private copy before it can train.
   */
  readOnly = false;
  private storage: Storage | null;
  /** Whether the storage came from memory.ts (and goes back there on dispose). */
  private readonly owned: boolean;
  /** A view keeps its base alive and never frees the storage itself. */
  private readonly base: Tensor | null;

  constructor(data: Storage, shape: readonly number[], dtype: DType, opts: { owned?: boolean; base?: Tensor } = {}) {
    const n = numel(shape);
    if (data.length !== n) {
      throw new Error(`Tensor: storage has ${data.length} elements but shape [${shape.join(', ')}] needs ${n}`);
    }
    this.storage = data;
    this.shape = shape;
    this.dtype = dtype;
    this.owned = opts.owned ?? false;
    this.base = opts.base ?? null;
    hooks.onCreate(this);
  }

  /** A new zero-filled tensor. */
  static zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return new Tensor(allocate(STORAGE[dtype], numel(shape)), shape, dtype, { owned: true });
  }

  /** A new tensor whose contents the caller will overwrite entirely. */
  static empty(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return new Tensor(allocate(STORAGE[dtype], numel(shape), false), shape, dtype, { owned: true });
  }

  /** Wraps existing data (not copied, not pooled). */
  static from(data: Storage | number[], shape: readonly number[], dtype?: DType): Tensor {
    if (Array.isArray(data)) return new Tensor(dtype === 'f64' ? Float64Array.from(data) : Float32Array.from(data), shape, dtype ?? 'f32');
    return new Tensor(data, shape, dtype ?? dtypeOf(data));
  }

  static scalar(v: number, dtype: DType = 'f32'): Tensor {
    const t = Tensor.empty([], dtype);
    t.data[0] = v;
    return t;
  }

  get data(): Storage {
    if (!this.storage) throw new Error(`tensor ${this.describe()} was used after it was freed`);
    return this.storage;
  }

  /** The storage as floats (f32 or f64 tensors only). */
  get f(): FloatArray {
    if (this.dtype !== 'f32' && this.dtype !== 'f64') throw new Error(`tensor ${this.describe()} is not f32/f64`);
    return this.data as FloatArray;
  }

  get size(): number {
    return this.data.length;
  }

  get ndim(): number {
    return this.shape.length;
  }

  get disposed(): boolean {
    return this.storage === null;
  }

  /** Size of axis `d` (negative counts from the end). */
  dim(d: number): number {
    const s = this.shape[d < 0 ? this.shape.length + d : d];
    if (s === undefined) throw new Error(`tensor ${this.describe()} has no axis ${d}`);
    return s;
  }

  describe(): string {
    return `${this.name ? this.name + ' ' : ''}${this.dtype}[${this.shape.join(', ')}]`;
  }

  item(): number {
    if (this.size !== 1) throw new Error(`item() needs a single element, got ${this.describe()}`);
    return Number(this.data[0]);
  }

  toArray(): number[] {
    return Array.from(this.data as ArrayLike<number>);
  }

  /** Frees the storage now (back to the pool). Views only drop their reference. */
  dispose(): void {
    if (!this.storage) return;
    if (this.owned && !this.base) release(STORAGE[this.dtype], this.storage);
    this.storage = null;
    this.node = null;
    this.gradBuf = null;
  }

  /** Replaces a read-only storage by a private, writable copy (no-op otherwise). */
  makeWritable(): this {
    if (!this.readOnly) return this;
    this.storage = this.data.slice() as Storage;
    this.readOnly = false;
    return this;
  }

  /** Marks the tensor long-lived: scopes and backward will not free it. */
  keep(): this {
    this.persistent = true;
    return this;
  }

  /** A copy with its own storage (not on the tape). */
  clone(): Tensor {
    const t = Tensor.empty(this.shape, this.dtype);
    t.data.set(this.data as never);
    return t;
  }

  /** A view with the same storage and a new shape (one axis may be -1). Differentiable. */
  reshape(shape: readonly number[]): Tensor {
    const resolved = resolveShape(shape, this.size, this.describe());
    const out = new Tensor(this.data, resolved, this.dtype, { base: this.base ?? this });
    recordView(this, out, 'reshape', (g) => g);
    return out;
  }

  /** A view of rows [start, start+length) of the first axis. Differentiable. */
  narrow0(start: number, length: number): Tensor {
    const rows = this.dim(0);
    if (start < 0 || length < 0 || start + length > rows) {
      throw new Error(`narrow0(${start}, ${length}) is out of range for ${this.describe()}`);
    }
    const inner = this.size / rows;
    const data = this.data.subarray(start * inner, (start + length) * inner);
    const out = new Tensor(data, [length, ...this.shape.slice(1)], this.dtype, { base: this.base ?? this });
    recordView(this, out, 'narrow0', (g) => {
      const full = new (g.constructor as Float32ArrayConstructor)(this.size);
      full.set(g, start * inner);
      return full;
    });
    return out;
  }
}

/** Installed by autograd.ts: records a view op on the tape. */
export const viewRecorder = {
  record: (_input: Tensor, _out: Tensor, _op: string, _map: (g: FloatArray) => FloatArray): void => {},
};

function recordView(input: Tensor, out: Tensor, op: string, map: (g: FloatArray) => FloatArray): void {
  viewRecorder.record(input, out, op, map);
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

function resolveShape(shape: readonly number[], size: number, what: string): number[] {
  const out = [...shape];
  const free = out.indexOf(-1);
  if (free >= 0) {
    const rest = numel(out.filter((_, i) => i !== free));
    out[free] = rest === 0 ? 0 : size / rest;
  }
  if (numel(out) !== size || out.some((s) => !Number.isInteger(s) || s < 0)) {
    throw new Error(`cannot reshape ${what} to [${shape.join(', ')}]`);
  }
  return out;
}

export function dtypeOf(data: Storage): DType {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Float64Array) return 'f64';
  if (data instanceof Uint16Array) return 'bf16';
  if (data instanceof Int32Array) return 'i32';
  return 'u8';
}

/** Allocates a float buffer of the same type as `like`. */
export function floatLike(like: FloatArray, length: number, zero = true): FloatArray {
  return allocate(like instanceof Float64Array ? 'f64' : 'f32', length, zero) as FloatArray;
}

export function releaseFloat(buf: FloatArray): void {
  release(buf instanceof Float64Array ? 'f64' : 'f32', buf);
}
