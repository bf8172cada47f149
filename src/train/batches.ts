/**
 * A resumable stream of training batches: epochs of a fixed list of examples, shuffled with a seed
 * per epoch, grouped into rows (padded, or packed by the caller beforehand). Its position is two
 * numbers, so a checkpoint restores exactly where the data stood.
 */
import { IGNORE_INDEX } from '../nn/ops/loss.js';
import type { Batch } from '../models/causal-lm.js';
import { Rng } from '../tensor/rng.js';

export interface TrainBatch extends Batch {
  labels: Int32Array;
  /** Tokens whose next-token prediction is scored in this batch. */
  targets: number;
}

/** One training row: a single sequence, or several packed ones (with positions and segment ids). */
export interface Row {
  inputIds: number[];
  labels: number[];
  positionIds?: number[];
  segIds?: number[];
}

export interface BatchPosition {
  epoch: number;
  index: number;
}

export class BatchStream {
  private order: number[] = [];
  private pos: BatchPosition = { epoch: 0, index: 0 };

  constructor(
    private readonly rows: Row[],
    private readonly batchSize: number,
    private readonly seed: number,
    private readonly padId: number,
    private readonly shuffle = true,
    private readonly dropLast = false,
  ) {
    if (rows.length === 0) throw new Error('the training set is empty');
    this.reorder();
  }

  /** Optimizer-independent number of batches per epoch. */
  get batchesPerEpoch(): number {
    return this.dropLast ? Math.floor(this.rows.length / this.batchSize) || 1 : Math.ceil(this.rows.length / this.batchSize);
  }

  get position(): BatchPosition {
    return { ...this.pos };
  }

  restore(p: BatchPosition): void {
    this.pos = { ...p };
    this.reorder();
  }

  private reorder(): void {
    this.order = [...this.rows.keys()];
    if (this.shuffle) new Rng(this.seed * 1000003 + this.pos.epoch).shuffle(this.order);
  }

  next(): TrainBatch {
    if (this.pos.index >= this.batchesPerEpoch) {
      this.pos = { epoch: this.pos.epoch + 1, index: 0 };
      this.reorder();
    }
    const start = this.pos.index * this.batchSize;
    const picked = this.order.slice(start, start + this.batchSize).map((i) => this.rows[i]!);
    this.pos.index++;
    return collate(picked, this.padId);
  }
}

/** Pads rows to the longest one; pads get label -100 and a segment id of their own. */
export function collate(rows: Row[], padId: number): TrainBatch {
  const B = rows.length;
  const T = Math.max(...rows.map((r) => r.inputIds.length));
  const inputIds = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const positionIds = new Int32Array(B * T);
  const segIds = new Int32Array(B * T);
  let packed = false;
  let targets = 0;
  rows.forEach((r, b) => {
    const n = r.inputIds.length;
    const o = b * T;
    let maxSeg = 0;
    for (let t = 0; t < n; t++) {
      inputIds[o + t] = r.inputIds[t]!;
      labels[o + t] = r.labels[t]!;
      positionIds[o + t] = r.positionIds ? r.positionIds[t]! : t;
      segIds[o + t] = r.segIds ? r.segIds[t]! : 0;
      maxSeg = Math.max(maxSeg, segIds[o + t]!);
    }
    if (r.segIds) packed = true;
    for (let t = n; t < T; t++) {
      positionIds[o + t] = t - n;
      segIds[o + t] = maxSeg + 1;
    }
    if (n < T) packed = true;
    for (let t = 0; t + 1 < n; t++) if (r.labels[t + 1] !== IGNORE_INDEX && segIds[o + t] === segIds[o + t + 1]) targets++;
  });
  return { inputIds, labels, positionIds, segIds: packed ? segIds : null, B, T, targets };
}
