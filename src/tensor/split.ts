/** Splitting and joining along the last axis (differentiable). */
import { addGradOwned, needsGrad, record } from './autograd.js';
import { floatLike, Tensor } from './tensor.js';

/** Splits x [..., sum(sizes)] into tensors [..., sizes[i]] (copies). */
export function splitLast(x: Tensor, sizes: number[]): Tensor[] {
  const D = x.dim(-1);
  const total = sizes.reduce((a, b) => a + b, 0);
  if (total !== D) throw new Error(`splitLast: sizes [${sizes}] do not add up to the last axis of ${x.describe()}`);
  const rows = x.size / D;
  const X = x.f;
  let off = 0;
  return sizes.map((n) => {
    const o = off;
    off += n;
    const out = Tensor.empty([...x.shape.slice(0, -1), n], x.dtype);
    const Y = out.f;
    for (let r = 0; r < rows; r++) Y.set(X.subarray(r * D + o, r * D + o + n), r * n);
    if (needsGrad(x)) {
      record('splitLast', [x], out, (g) => {
        const gx = floatLike(g, x.size);
        for (let r = 0; r < rows; r++) gx.set(g.subarray(r * n, (r + 1) * n), r * D + o);
        addGradOwned(x, gx);
      });
    }
    return out;
  });
}

/** Concatenates tensors along their last axis. */
export function concatLast(xs: Tensor[]): Tensor {
  const rows = xs[0]!.size / xs[0]!.dim(-1);
  const sizes = xs.map((x) => x.dim(-1));
  const D = sizes.reduce((a, b) => a + b, 0);
  const out = Tensor.empty([...xs[0]!.shape.slice(0, -1), D], xs[0]!.dtype);
  const Y = out.f;
  const offs: number[] = [];
  let off = 0;
  for (const n of sizes) {
    offs.push(off);
    off += n;
  }
  xs.forEach((x, i) => {
    const n = sizes[i]!, o = offs[i]!, X = x.f;
    for (let r = 0; r < rows; r++) Y.set(X.subarray(r * n, (r + 1) * n), r * D + o);
  });
  if (needsGrad(...xs)) {
    record('concatLast', xs, out, (g) => {
      xs.forEach((x, i) => {
        if (!x.requiresGrad) return;
        const n = sizes[i]!, o = offs[i]!;
        const gx = floatLike(g, x.size, false);
        for (let r = 0; r < rows; r++) gx.set(g.subarray(r * D + o, r * D + o + n), r * n);
        addGradOwned(x, gx);
      });
    });
  }
  return out;
}
