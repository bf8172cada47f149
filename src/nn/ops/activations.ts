/** Pointwise activations, SwiGLU, softmax and dropout, forward and backward side by side. */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import type { Rng } from '../../tensor/rng.js';
import { floatLike, Tensor } from '../../tensor/tensor.js';

function pointwise(x: Tensor, op: string, f: (v: number) => number, df: (v: number) => number): Tensor {
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  for (let i = 0; i < Y.length; i++) Y[i] = f(X[i]!);
  if (needsGrad(x)) {
    record(op, [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      for (let i = 0; i < g.length; i++) gx[i] = g[i]! * df(X[i]!);
      addGradOwned(x, gx);
    });
  }
  return out;
}

const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

export function silu(x: Tensor): Tensor {
  return pointwise(x, 'silu', (v) => v * sigmoid(v), (v) => {
    const s = sigmoid(v);
    return s * (1 + v * (1 - s));
  });
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** GELU, tanh approximation ('gelu_new', 'gelu_pytorch_tanh'). */
export function geluTanh(x: Tensor): Tensor {
  return pointwise(
    x,
    'geluTanh',
    (v) => 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v))),
    (v) => {
      const u = GELU_C * (v + 0.044715 * v * v * v);
      const t = Math.tanh(u);
      return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * v * v);
    },
  );
}

/** GELU with the exact erf ('gelu'). */
export function geluErf(x: Tensor): Tensor {
  return pointwise(
    x,
    'geluErf',
    (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
    (v) => 0.5 * (1 + erf(v / Math.SQRT2)) + (v * Math.exp(-0.5 * v * v)) / Math.sqrt(2 * Math.PI),
  );
}

/** SwiGLU: silu(gate) * up, fused (one pass, no silu(gate) tensor kept). */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  if (gate.size !== up.size) throw new Error(`swiglu: ${gate.describe()} and ${up.describe()} differ in size`);
  const out = Tensor.empty(gate.shape, gate.dtype);
  const G = gate.f, U = up.f, Y = out.f;
  for (let i = 0; i < Y.length; i++) {
    const v = G[i]!;
    Y[i] = (v / (1 + Math.exp(-v))) * U[i]!;
  }
  if (needsGrad(gate, up)) {
    record('swiglu', [gate, up], out, (g) => {
      const gg = gate.requiresGrad ? floatLike(g, g.length, false) : null;
      const gu = up.requiresGrad ? floatLike(g, g.length, false) : null;
      for (let i = 0; i < g.length; i++) {
        const v = G[i]!;
        const s = 1 / (1 + Math.exp(-v));
        if (gg) gg[i] = g[i]! * U[i]! * s * (1 + v * (1 - s));
        if (gu) gu[i] = g[i]! * v * s;
      }
      if (gg) addGradOwned(gate, gg);
      if (gu) addGradOwned(up, gu);
    });
  }
  return out;
}

/** Softmax over the last axis. */
export function softmax(x: Tensor): Tensor {
  const D = x.dim(-1);
  const rows = x.size / D;
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let m = -Infinity;
    for (let j = 0; j < D; j++) m = Math.max(m, X[o + j]!);
    let s = 0;
    for (let j = 0; j < D; j++) s += Y[o + j] = Math.exp(X[o + j]! - m);
    for (let j = 0; j < D; j++) Y[o + j]! /= s;
  }
  if (needsGrad(x)) {
    record('softmax', [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      for (let r = 0; r < rows; r++) {
        const o = r * D;
        let dot = 0;
        for (let j = 0; j < D; j++) dot += g[o + j]! * Y[o + j]!;
        for (let j = 0; j < D; j++) gx[o + j] = Y[o + j]! * (g[o + j]! - dot);
      }
      addGradOwned(x, gx);
    });
  }
  return out;
}

/** Inverted dropout with probability p, drawing its mask from `rng` (identity when p == 0). */
export function dropout(x: Tensor, p: number, rng: Rng): Tensor {
  if (p <= 0) return x;
  if (p >= 1) throw new Error(`dropout: p must be < 1, got ${p}`);
  const keep = 1 / (1 - p);
  const mask = new Uint8Array(x.size);
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f;
  for (let i = 0; i < Y.length; i++) {
    const k = rng.uniform() >= p ? 1 : 0;
    mask[i] = k;
    Y[i] = k ? X[i]! * keep : 0;
  }
  if (needsGrad(x)) {
    record('dropout', [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      for (let i = 0; i < g.length; i++) gx[i] = mask[i] ? g[i]! * keep : 0;
      addGradOwned(x, gx);
    });
  }
  return out;
}

/**
 * erf to double precision: erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)),
 * a series of positive terms (no cancellation); |x| >= 6 gives +-1 (erfc(6) < 3e-17).
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  if (z >= 6) return Math.sign(x);
  let term = z;
  let total = z;
  for (let n = 0; n < 400; n++) {
    term *= (2 * z * z) / (2 * n + 3);
    total += term;
    if (term < total * 1e-17) break;
  }
  const r = (2 / Math.sqrt(Math.PI)) * Math.exp(-z * z) * total;
  return x < 0 ? -r : r;
}
