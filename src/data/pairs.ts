/**
 * Preference pairs for DPO and reward modelling (TRL's DataCollatorForPreference): each batch of P pairs is one
 * DataBatch of 2P right-padded rows, [chosen_0 .. chosen_P-1, rejected_0 .. rejected_P-1], with the labels on
 * the completion tokens only (tokenizePreference). The batch carries the pairs' indices, the reference model's
 * log-probabilities of its rows, computed once before training (referenceLogProbs in train/dpo.ts; DPO only),
 * and the pairs' margins when the data has them (reward modelling).
 */
import { type DataBatch, type LoaderPosition, BatchLoader, collateRows, exampleRow } from './packing.js';
import type { TokenizedPreference } from './dataset.js';
import type { Rng } from '../tensor/rng.js';
import { IGNORE_INDEX } from '../nn/ops/loss.js';

export interface PairBatch extends DataBatch {
  /** P: the batch has 2P rows. */
  pairs: number;
  /** Index of each pair in the dataset. */
  indices: number[];
  /** [2P] reference log-probabilities of the rows (chosen then rejected); zeros until the reference is set. */
  ref: Float64Array;
  /** [2P] completion tokens (labels that are not -100) of each row. */
  completionTokens: Int32Array;
  /** [P] the pairs' margins, when the pairs have them (TRL's `margin` column, reward modelling). */
  margin?: Float64Array;
}

export interface PairLoaderOptions {
  /** Pairs per batch (per_device_train_batch_size, as TRL counts it: 2 x that many rows). */
  batchSize: number;
  maxLength: number;
  padId: number;
  shuffle?: Rng | number | false;
  dropLast?: boolean;
}

export class PairLoader {
  /** Keeps the order, the epochs and the resume position; its rows are the pairs. */
  private readonly order: BatchLoader;
  /** [2 * pairs]: pair i's chosen row at 2i, rejected at 2i + 1. */
  private ref: Float64Array;

  constructor(
    private readonly pairs: readonly TokenizedPreference[],
    private readonly opts: PairLoaderOptions,
  ) {
    if (pairs.length === 0) throw new Error('no preference pairs (after tokenization)');
    this.order = new BatchLoader(
      pairs.map((p) => p.chosen),
      { batchSize: opts.batchSize, maxLength: opts.maxLength, padId: opts.padId, shuffle: opts.shuffle, dropLast: opts.dropLast },
    );
    this.ref = new Float64Array(2 * pairs.length);
  }

  get size(): number {
    return this.pairs.length;
  }

  /** Sets the reference log-probabilities, [2 * pairs] as chosen_i at 2i and rejected_i at 2i + 1. */
  setReference(ref: Float64Array): void {
    if (ref.length !== 2 * this.pairs.length) throw new Error(`setReference: ${ref.length} values for ${this.pairs.length} pairs`);
    this.ref = ref;
  }

  get batchesPerEpoch(): number {
    return this.order.batchesPerEpoch;
  }

  get position(): LoaderPosition {
    return this.order.position;
  }

  restore(p: LoaderPosition): void {
    this.order.restore(p);
  }

  next(): PairBatch {
    return this.batch(this.order.nextRows());
  }

  /** The batch of the given pairs, in that order. */
  batch(indices: number[]): PairBatch {
    const { pairs, opts } = this;
    const P = indices.length;
    const rows = [...indices.map((i) => exampleRow(pairs[i]!.chosen, opts.maxLength)), ...indices.map((i) => exampleRow(pairs[i]!.rejected, opts.maxLength))];
    const b = collateRows(rows, opts.padId);
    const ref = new Float64Array(2 * P);
    const completionTokens = new Int32Array(2 * P);
    rows.forEach((r, k) => {
      for (const y of r.labels) if (y !== IGNORE_INDEX) completionTokens[k]!++;
    });
    indices.forEach((i, p) => {
      ref[p] = this.ref[2 * i]!;
      ref[P + p] = this.ref[2 * i + 1]!;
    });
    const out: PairBatch = { ...b, pairs: P, indices, ref, completionTokens };
    if (P > 0 && pairs[indices[0]!]!.margin !== undefined) out.margin = Float64Array.from(indices, (i) => pairs[i]!.margin ?? Number.NaN);
    return out;
  }
}
