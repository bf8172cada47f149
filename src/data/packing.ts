/**
 * Packing and batching of tokenized examples.
 * - packSequences: best-fit-decreasing (TRL packing_strategy="bfd"): longest first, each into the row with
 *   the least room that still fits it; a sequence is never split (longer ones are cut to maxLength first).
 *   Position ids restart at 0 for each sequence and segment ids say which sequence a token belongs to,
 *   so attention and the shifted loss stay within a sequence (no cross-contamination).
 * - collateRows: pads rows to the longest in the batch (pad label -100, pad positions 0, and pads get a
 *   segment id of their own).
 * - BatchLoader / batches(): epochs of shuffled rows, deterministic from a seed, resumable from {epoch, offset}.
 */
import { Rng } from '../tensor/rng.js';
import { IGNORE_INDEX, type TokenizedExample } from './dataset.js';

/** A training row: one example, or several packed ones. */
export interface PackedRow {
  inputIds: Int32Array;
  labels: Int32Array;
  positionIds: Int32Array;
  /** Which sequence of the row each token belongs to: 0, 1, 2, ... */
  segIds: Int32Array;
  seqLengths: number[];
}

export interface PackResult {
  rows: PackedRow[];
  /** Sequences cut to maxLength before packing. */
  truncated: number;
}

/** Finds the smallest capacity >= x that has a row with that much room left, in O(log maxLength). */
class CapacityIndex {
  private readonly size: number;
  private readonly tree: Int32Array; // count of rows per capacity, summed over subtrees
  private readonly rowsAt: number[][];

  constructor(maxCapacity: number) {
    let size = 1;
    while (size < maxCapacity + 1) size *= 2;
    this.size = size;
    this.tree = new Int32Array(2 * size);
    this.rowsAt = Array.from({ length: maxCapacity + 1 }, () => []);
  }

  add(capacity: number, row: number): void {
    this.rowsAt[capacity]!.push(row);
    for (let i = capacity + this.size; i >= 1; i >>= 1) this.tree[i]!++;
  }

  /** Removes and returns a row whose room is the smallest >= x, or -1. */
  takeAtLeast(x: number): [row: number, capacity: number] | null {
    const c = this.first(1, 0, this.size, x);
    if (c < 0) return null;
    const row = this.rowsAt[c]!.pop()!;
    for (let i = c + this.size; i >= 1; i >>= 1) this.tree[i]!--;
    return [row, c];
  }

  private first(node: number, lo: number, hi: number, x: number): number {
    if (hi <= x || this.tree[node] === 0) return -1;
    if (hi - lo === 1) return lo;
    const mid = (lo + hi) >> 1;
    const l = this.first(2 * node, lo, mid, x);
    return l >= 0 ? l : this.first(2 * node + 1, mid, hi, x);
  }
}

/**
 * Best-fit-decreasing packing into rows of at most maxLength tokens, as lists of example indices (the
 * plan only: a BatchLoader builds each row's arrays when it batches it). Deterministic (stable on ties).
 */
export function packPlan(examples: readonly TokenizedExample[], maxLength: number): { members: number[][]; truncated: number } {
  if (!(maxLength > 0)) throw new Error(`packing needs a positive maxLength, got ${maxLength}`);
  let truncated = 0;
  const order = examples
    .map((e, i) => {
      const len = Math.min(e.inputIds.length, maxLength);
      if (e.inputIds.length > maxLength) truncated++;
      return { i, len };
    })
    .filter((o) => o.len > 0)
    .sort((a, b) => b.len - a.len || a.i - b.i);
  const members: number[][] = [];
  const index = new CapacityIndex(maxLength);
  for (const { i, len } of order) {
    const hit = index.takeAtLeast(len);
    let row: number;
    let room: number;
    if (hit) {
      [row, room] = hit;
    } else {
      row = members.length;
      members.push([]);
      room = maxLength;
    }
    members[row]!.push(i);
    if (room - len > 0) index.add(room - len, row);
  }
  return { members, truncated };
}

/** The row of the packed examples `ids` (in order), each cut to maxLength. */
export function packedRow(examples: readonly TokenizedExample[], ids: readonly number[], maxLength: number): PackedRow {
  const lens = ids.map((i) => Math.min(examples[i]!.inputIds.length, maxLength));
  const n = lens.reduce((a, b) => a + b, 0);
  const row: PackedRow = { inputIds: new Int32Array(n), labels: new Int32Array(n), positionIds: new Int32Array(n), segIds: new Int32Array(n), seqLengths: lens };
  let o = 0;
  ids.forEach((i, seg) => {
    const e = examples[i]!;
    const len = lens[seg]!;
    row.inputIds.set(e.inputIds.subarray(0, len), o);
    row.labels.set(e.labels.subarray(0, len), o);
    for (let t = 0; t < len; t++) row.positionIds[o + t] = t;
    row.segIds.fill(seg, o, o + len);
    o += len;
  });
  return row;
}

/** Best-fit-decreasing packing into rows of at most maxLength tokens (packPlan, with every row built). */
export function packSequences(examples: readonly TokenizedExample[], maxLength: number): PackResult {
  const { members, truncated } = packPlan(examples, maxLength);
  return { rows: members.map((ids) => packedRow(examples, ids, maxLength)), truncated };
}

/** One example as an unpacked row (cut to maxLength when given). */
export function exampleRow(e: TokenizedExample, maxLength?: number): PackedRow {
  const len = maxLength === undefined ? e.inputIds.length : Math.min(maxLength, e.inputIds.length);
  return {
    inputIds: e.inputIds.subarray(0, len),
    labels: e.labels.subarray(0, len),
    positionIds: Int32Array.from({ length: len }, (_, t) => t),
    segIds: new Int32Array(len),
    seqLengths: [len],
  };
}

export interface DataBatch {
  /** [B*T] row-major. */
  inputIds: Int32Array;
  labels: Int32Array;
  positionIds: Int32Array;
  /** [B*T] sequence id per token (pads have their own), or null when every row is one unpadded sequence. */
  segIds: Int32Array | null;
  B: number;
  T: number;
  /** Non-pad tokens in the batch. */
  tokens: number;
}

/** Pads rows to the longest (rounded up to padToMultipleOf): pad id, label -100, position 0, a segment of its own. */
export function collateRows(rows: readonly PackedRow[], padId: number, padToMultipleOf = 1): DataBatch {
  const B = rows.length;
  let T = 0;
  for (const r of rows) T = Math.max(T, r.inputIds.length);
  T = Math.ceil(T / padToMultipleOf) * padToMultipleOf;
  const inputIds = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const positionIds = new Int32Array(B * T);
  const segIds = new Int32Array(B * T);
  let tokens = 0;
  let needSeg = false;
  rows.forEach((r, b) => {
    const o = b * T;
    const n = r.inputIds.length;
    inputIds.set(r.inputIds, o);
    labels.set(r.labels, o);
    positionIds.set(r.positionIds, o);
    segIds.set(r.segIds, o);
    if (r.seqLengths.length > 1 || n < T) needSeg = true;
    segIds.fill(r.seqLengths.length, o + n, o + T);
    tokens += n;
  });
  return { inputIds, labels, positionIds, segIds: needSeg ? segIds : null, B, T, tokens };
}

export interface BatchOptions {
  batchSize: number;
  /** Longest row; with packing, the row length examples are packed into. */
  maxLength: number;
  packing?: boolean;
  /** Token id written into padding (never trained; default 0). Use the tokenizer's pad id (or eos). */
  padId?: number;
  /** An Rng (one seed is drawn from it) or a seed: rows are shuffled each epoch. false: keep the order. */
  shuffle?: Rng | number | false;
  /** Drop the last, smaller batch of an epoch (default false). */
  dropLast?: boolean;
  padToMultipleOf?: number;
}

/** Where a loader stands: saved in checkpoints, given back to restore(). */
export interface LoaderPosition {
  epoch: number;
  /** Batches already taken in this epoch. */
  offset: number;
  /** The shuffle seed (null: no shuffling). */
  seed: number | null;
}

/**
 * Epochs of batches over fixed rows (packed once). The order of epoch e is a function of (seed, e) only,
 * so a run restored from {epoch, offset, seed} yields exactly the batches the original run would have.
 * Rows are kept as example indices and built when batched, so the loader adds nothing per token to the
 * examples' own 8 bytes.
 */
export class BatchLoader implements Iterable<DataBatch> {
  /** Number of rows: examples, or packed rows of several examples. */
  readonly rowCount: number;
  /** Packed rows as example indices; null: row i is example i. */
  private readonly members: number[][] | null;
  /** Examples cut to maxLength. */
  readonly truncated: number;
  private readonly seed: number | null;
  private epoch = 0;
  private offset = 0;
  private order: number[] = [];

  constructor(
    private readonly examples: readonly TokenizedExample[],
    private readonly opts: BatchOptions,
  ) {
    if (!(opts.batchSize >= 1)) throw new Error(`batchSize must be >= 1, got ${opts.batchSize}`);
    if (examples.length === 0) throw new Error('no training examples (after tokenization and filtering)');
    if (opts.packing) {
      const p = packPlan(examples, opts.maxLength);
      this.members = p.members;
      this.truncated = p.truncated;
    } else {
      this.members = null;
      this.truncated = examples.filter((e) => e.inputIds.length > opts.maxLength).length;
    }
    this.rowCount = this.members ? this.members.length : examples.length;
    const s = opts.shuffle;
    this.seed = s === undefined || s === false ? null : typeof s === 'number' ? s >>> 0 : s.nextU32();
    this.reorder();
  }

  get batchesPerEpoch(): number {
    const n = this.rowCount / this.opts.batchSize;
    return this.opts.dropLast ? Math.max(1, Math.floor(n)) : Math.ceil(n);
  }

  get position(): LoaderPosition {
    return { epoch: this.epoch, offset: this.offset, seed: this.seed };
  }

  restore(p: LoaderPosition): void {
    if (p.seed !== this.seed) {
      throw new Error(`the checkpoint's data seed ${p.seed} differs from this loader's ${this.seed}; resume with the same shuffle seed`);
    }
    this.epoch = p.epoch;
    this.offset = p.offset;
    this.reorder();
  }

  private reorder(): void {
    this.order = Array.from({ length: this.rowCount }, (_, i) => i);
    if (this.seed !== null) new Rng((this.seed ^ Math.imul(this.epoch + 1, 0x9e3779b1)) >>> 0).shuffle(this.order);
  }

  /** The next batch; moves to the next epoch (reshuffled) when this one is done. */
  next(): DataBatch {
    return collateRows(this.nextRows().map((i) => this.row(i)), this.opts.padId ?? 0, this.opts.padToMultipleOf ?? 1);
  }

  /** The row indices of the next batch (what next() collates), advancing the position the same way. */
  nextRows(): number[] {
    if (this.offset >= this.batchesPerEpoch) {
      this.epoch++;
      this.offset = 0;
      this.reorder();
    }
    const bs = this.opts.batchSize;
    const picked = this.order.slice(this.offset * bs, (this.offset + 1) * bs);
    this.offset++;
    return picked;
  }

  private row(i: number): PackedRow {
    const { examples, members, opts } = this;
    return members ? packedRow(examples, members[i]!, opts.maxLength) : exampleRow(examples[i]!, opts.maxLength);
  }

  /** The rest of the current epoch (a fresh epoch when the current one is finished). */
  *[Symbol.iterator](): Iterator<DataBatch> {
    if (this.offset >= this.batchesPerEpoch) {
      this.epoch++;
      this.offset = 0;
      this.reorder();
    }
    const epoch = this.epoch;
    while (this.epoch === epoch && this.offset < this.batchesPerEpoch) yield this.next();
  }
}

export function batches(examples: readonly TokenizedExample[], opts: BatchOptions): BatchLoader {
  return new BatchLoader(examples, opts);
}
