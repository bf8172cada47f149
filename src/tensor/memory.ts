/**
 * Explicit memory accounting for tensor storage. Every tensor buffer is allocated here; disposing a
 * tensor returns its buffer to a pool keyed by (type, length), so a training step with fixed shapes
 * allocates nothing after its first iteration. `bytesAlive` and `peakBytes` are what ajuste reports.
 */
export type Storage = Float32Array | Float64Array | Uint16Array | Int32Array | Uint8Array;
export type StorageKind = 'f32' | 'f64' | 'u16' | 'i32' | 'u8';

const ctors = {
  f32: Float32Array,
  f64: Float64Array,
  u16: Uint16Array,
  i32: Int32Array,
  u8: Uint8Array,
} as const;

const pools = new Map<string, Storage[]>();
let alive = 0;
let peak = 0;
let pooled = 0;
/** Buffers smaller than this are left to the GC (pooling tiny arrays costs more than it saves). */
const POOL_MIN_ELEMENTS = 256;
/** Upper bound on bytes kept in the pool. */
const POOL_MAX_BYTES = 4 * 1024 ** 3;

export function allocate(kind: StorageKind, length: number, zero = true): Storage {
  const bytes = length * ctors[kind].BYTES_PER_ELEMENT;
  alive += bytes;
  if (alive > peak) peak = alive;
  if (length >= POOL_MIN_ELEMENTS) {
    const list = pools.get(kind + length);
    const buf = list?.pop();
    if (buf) {
      pooled -= bytes;
      if (zero) buf.fill(0);
      return buf;
    }
  }
  return new ctors[kind](length);
}

/** Returns a buffer obtained from `allocate` to the pool. The caller must not use it again. */
export function release(kind: StorageKind, buf: Storage): void {
  const bytes = buf.byteLength;
  alive -= bytes;
  if (buf.length < POOL_MIN_ELEMENTS || pooled + bytes > POOL_MAX_BYTES) return;
  // Only whole, pool-owned buffers are reused; views into a larger buffer (e.g. an mmap) are not.
  if (buf.byteOffset !== 0 || buf.buffer.byteLength !== bytes || buf.buffer instanceof SharedArrayBuffer) return;
  const key = kind + buf.length;
  let list = pools.get(key);
  if (!list) pools.set(key, (list = []));
  list.push(buf);
  pooled += bytes;
}

/** Accounts for storage that was not allocated here (memory-mapped or loaded weights). */
export function track(bytes: number): void {
  alive += bytes;
  if (alive > peak) peak = alive;
}

export function memoryStats(): { bytesAlive: number; peakBytes: number; pooledBytes: number } {
  return { bytesAlive: alive, peakBytes: peak, pooledBytes: pooled };
}

export function resetPeak(): void {
  peak = alive;
}

/** Drops every pooled buffer (after a run, before measuring). */
export function clearPool(): void {
  pools.clear();
  pooled = 0;
}
