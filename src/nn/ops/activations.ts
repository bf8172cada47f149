/** Pointwise activations, SwiGLU, softmax and dropout, forward and backward side by side. */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import type { Rng } from '../../tensor/rng.js';
import { type FloatArray, floatLike, Tensor } from '../../tensor/tensor.js';
import type { Kernels } from '../../kernels/backend.js';
import { kernels } from '../../kernels/index.js';
import { jsKernels } from '../../kernels/js/index.js';

/** The kernels for a buffer: f64 (gradient checks) runs on the js kernels, f32 on the active ones. */
function kernelsFor(buf: FloatArray): Kernels {
  return buf instanceof Float64Array ? jsKernels : kernels();
}

type F32 = Float32Array;

/** A pointwise op whose forward and backward are kernels (the kernel types are f32; the js ones are generic). */
function pointwiseKernel(
  x: Tensor, op: string,
  fwd: (k: Kernels, x: F32, out: F32, n: number) => void,
  bwd: (k: Kernels, x: F32, dout: F32, dx: F32, n: number) => void,
): Tensor {
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f;
  const K = kernelsFor(X);
  fwd(K, X as F32, out.f as F32, out.f.length);
  if (needsGrad(x)) {
    record(op, [x], out, (g) => {
      const gx = floatLike(g, g.length, false);
      bwd(K, X as F32, g as F32, gx as F32, g.length);
      addGradOwned(x, gx);
    });
  }
  return out;
}

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

export function silu(x: Tensor): Tensor {
  return pointwiseKernel(x, 'silu', (k, X, Y, n) => k.siluFwd(X, Y, n), (k, X, g, gx, n) => k.siluBwd(X, g, gx, n));
}

/** ReLU: max(x, 0); the gradient at 0 is 0, as torch's. */
export function relu(x: Tensor): Tensor {
  return pointwise(x, 'relu', (v) => Math.max(v, 0), (v) => (v > 0 ? 1 : 0));
}

/** GELU, tanh approximation ('gelu_new', 'gelu_pytorch_tanh'). */
export function geluTanh(x: Tensor): Tensor {
  return pointwiseKernel(x, 'geluTanh', (k, X, Y, n) => k.geluTanhFwd(X, Y, n), (k, X, g, gx, n) => k.geluTanhBwd(X, g, gx, n));
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
  const G = gate.f, U = up.f;
  // The kernel types are f32; the js kernels (used for f64) are generic.
  const K = kernelsFor(G);
  K.swigluFwd(G as F32, U as F32, out.f as F32, out.f.length);
  if (needsGrad(gate, up)) {
    record('swiglu', [gate, up], out, (g) => {
      const gg = gate.requiresGrad ? floatLike(g, g.length, false) : null;
      const gu = up.requiresGrad ? floatLike(g, g.length, false) : null;
      K.swigluBwd(G as F32, U as F32, g as F32, gg as F32 | null, gu as F32 | null, g.length);
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
