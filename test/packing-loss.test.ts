// Packed rows never attend across sequences and restart positions: per-sequence losses equal the unpacked ones.
import { describe, expect, it } from 'vitest';
import { collateRows, exampleRow, packSequences } from '../src/data/packing.js';
import { loadModelFolder } from '../src/models/load.js';
import { noGrad, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';

describe('packing', () => {
  it('a packed batch gives the same per-sequence losses as the sequences alone', () => {
    const { model } = loadModelFolder('test/fixtures/models/llama-gqa');
    const rng = new Rng(4);
    const examples = [9, 5, 13, 7, 4].map((n) => {
      const ids = Int32Array.from({ length: n }, () => 3 + rng.int(120));
      return { inputIds: ids, labels: ids.map((id, i) => (i < 2 ? -100 : id)), truncated: false };
    });
    const lossOf = (batch: ReturnType<typeof collateRows>) => noGrad(() => scope(() => model.loss(model.forwardHidden(batch), batch.labels, batch, 'sum').item()));
    const alone = examples.map((e) => lossOf(collateRows([exampleRow(e)], 0)));
    const packed = packSequences(examples, 24);
    expect(packed.rows.length).toBeLessThan(examples.length);
    const batch = collateRows(packed.rows, 0);
    expect(batch.segIds).not.toBeNull();
    const total = lossOf(batch);
    expect(total).toBeCloseTo(alone.reduce((a, b) => a + b, 0), 3);
    // And row by row: each packed row's loss is the sum of its sequences' losses.
    for (const row of packed.rows) {
      const rowLoss = lossOf(collateRows([row], 0));
      let expected = 0;
      let start = 0;
      for (const len of row.seqLengths) {
        const e = examples.find((x) => x.inputIds.length === len && x.inputIds.every((v, i) => v === row.inputIds[start + i]))!;
        expected += alone[examples.indexOf(e)]!;
        start += len;
      }
      expect(rowLoss).toBeCloseTo(expected, 3);
    }
  });
});
