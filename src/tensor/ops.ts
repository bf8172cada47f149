/**
 * Basic differentiable ops: elementwise with broadcasting, reductions, matmul and linear, embedding.
 * Each op's backward is written next to its forward. Float ops run in f32, or in f64 on the js
 * kernels (used by the finite-difference tests).
 */
import { gemm as jsGemm, gemmAtB as jsGemmAtB, gemmBf16 as jsGemmBf16 } from '../kernels/js/gemm.js';
import { kernels } from '../kernels/index.js';
import { addGrad, addGradOwned, needsGrad, passGrad, record } from './autograd.js';
import { type FloatArray, floatLike, numel, releaseFloat, Tensor } from './tensor.js';

type Gemm = (
  tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number,
  A: FloatArray, lda: number, B: FloatArray, ldb: number, beta: number, C: FloatArray, ldc: number,
) => void;
type GemmBf16 = (
  tA: boolean, tB: boolean, M: number, N: number, K: number, alpha: number,
  A: FloatArray, lda: number, B: Uint16Array, ldb: number, beta: number, C: FloatArray, ldc: number,
) => void;

/**
 * Products y = x W^T with at most this many rows of x go to the gemv kernels (decode: one token per step),
 * which stream the weight once instead of packing it for a tiled GEMM.
 */
export const GEMV_MAX_ROWS = 4;

/** The GEMM for buffers of this float type: native for f32 (gemv for few rows times B^T), js for f64. */
export function gemmFor(x: FloatArray): Gemm {
  if (x instanceof Float64Array) return jsGemm;
  const k = kernels();
  return (tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) => {
    if (!tA && tB && M <= GEMV_MAX_ROWS) k.gemv(M, N, K, alpha, A as Float32Array, lda, B as Float32Array, ldb, beta, C as Float32Array, ldc);
    else k.gemm(tA, tB, M, N, K, alpha, A as Float32Array, lda, B as Float32Array, ldb, beta, C as Float32Array, ldc);
  };
}

type GemmAtB = (
  M: number, N: number, K: number, alpha: number, A: FloatArray, lda: number, B: FloatArray, ldb: number,
  beta: number, C: FloatArray, ldc: number,
) => void;

/** C = alpha A^T B + beta C for a small M (LoRA's weight gradients): the kernel for f32, js for f64. */
export function gemmAtBFor(x: FloatArray): GemmAtB {
  return x instanceof Float64Array ? jsGemmAtB : (kernels().gemmAtB as GemmAtB);
}

/** gemmFor with B in bf16. */
export function gemmBf16For(x: FloatArray): GemmBf16 {
  if (x instanceof Float64Array) return jsGemmBf16;
  const k = kernels();
  return (tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) => {
    if (!tA && tB && M <= GEMV_MAX_ROWS) k.gemvBf16(M, N, K, alpha, A as Float32Array, lda, B, ldb, beta, C as Float32Array, ldc);
    else k.gemmBf16(tA, tB, M, N, K, alpha, A as Float32Array, lda, B, ldb, beta, C as Float32Array, ldc);
  };
}

function floatOut(like: Tensor, shape: readonly number[]): Tensor {
  return Tensor.empty(shape, like.dtype === 'f64' ? 'f64' : 'f32');
}

function assertFloat(t: Tensor, op: string): void {
  if (t.dtype !== 'f32' && t.dtype !== 'f64') throw new Error(`${op}: expected an f32/f64 tensor, got ${t.describe()}`);
}

// ---------------------------------------------------------------- broadcasting

function broadcastShape(a: readonly number[], b: readonly number[], op: string): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`${op}: shapes [${a}] and [${b}] do not broadcast`);
    out.push(Math.max(x, y));
  }
  return out;
}

/** For each output element, the index of the source element under broadcasting. */
function broadcastIndex(src: readonly number[], out: readonly number[]): Int32Array | null {
  if (src.length === out.length && src.every((s, i) => s === out[i])) return null;
  const n = numel(out);
  const idx = new Int32Array(n);
  const nd = out.length;
  const srcStrides = new Array<number>(nd).fill(0);
  let stride = 1;
  for (let i = nd - 1; i >= 0; i--) {
    const s = src[src.length - nd + i] ?? 1;
    srcStrides[i] = s === 1 ? 0 : stride;
    stride *= s;
  }
  const pos = new Array<number>(nd).fill(0);
  let off = 0;
  for (let k = 0; k < n; k++) {
    idx[k] = off;
    for (let d = nd - 1; d >= 0; d--) {
      pos[d]!++;
      off += srcStrides[d]!;
      if (pos[d]! < out[d]!) break;
      off -= srcStrides[d]! * pos[d]!;
      pos[d] = 0;
    }
  }
  return idx;
}

/** Sums a gradient of the broadcast output shape back to the source's shape. */
function reduceTo(g: FloatArray, idx: Int32Array | null, srcSize: number): FloatArray {
  if (!idx) return g;
  const out = floatLike(g, srcSize);
  for (let k = 0; k < g.length; k++) out[idx[k]!]! += g[k]!;
  return out;
}

function binary(
  a: Tensor, b: Tensor, op: 'add' | 'sub' | 'mul',
): Tensor {
  assertFloat(a, op);
  assertFloat(b, op);
  const shape = broadcastShape(a.shape, b.shape, op);
  const ia = broadcastIndex(a.shape, shape);
  const ib = broadcastIndex(b.shape, shape);
  const out = floatOut(a, shape);
  const x = a.f, y = b.f, o = out.f;
  const n = o.length;
  if (op === 'add' && !ia && !ib && x instanceof Float32Array && y instanceof Float32Array) {
    kernels().addVec(x, y, o as Float32Array, n); // residual adds: same shapes, f32
  } else {
    for (let k = 0; k < n; k++) {
      const u = x[ia ? ia[k]! : k]!, v = y[ib ? ib[k]! : k]!;
      o[k] = op === 'add' ? u + v : op === 'sub' ? u - v : u * v;
    }
  }
  if (needsGrad(a, b)) {
    record(op, [a, b], out, (g) => {
      if (op === 'add' && !ia && !ib) {
        // The sum passes its gradient through unchanged: hand the buffer itself to one input.
        if (a.requiresGrad) passGrad(out, a, g);
        if (b.requiresGrad) passGrad(out, b, g);
        return;
      }
      if (a.requiresGrad) {
        let ga: FloatArray = g;
        if (op === 'mul') {
          ga = floatLike(g, n, false);
          for (let k = 0; k < n; k++) ga[k] = g[k]! * y[ib ? ib[k]! : k]!;
        }
        const r = reduceTo(ga, ia, a.size);
        if (r !== ga && ga !== g) releaseFloat(ga);
        if (r === g) addGrad(a, r);
        else addGradOwned(a, r);
      }
      if (b.requiresGrad) {
        let gb: FloatArray = g;
        if (op === 'mul') {
          gb = floatLike(g, n, false);
          for (let k = 0; k < n; k++) gb[k] = g[k]! * x[ia ? ia[k]! : k]!;
        } else if (op === 'sub') {
          gb = floatLike(g, n, false);
          for (let k = 0; k < n; k++) gb[k] = -g[k]!;
        }
        const r = reduceTo(gb, ib, b.size);
        if (r !== gb && gb !== g) releaseFloat(gb);
        if (r === g) addGrad(b, r);
        else addGradOwned(b, r);
      }
    });
  }
  return out;
}

/** a + b with numpy broadcasting. */
export function add(a: Tensor, b: Tensor): Tensor {
  return binary(a, b, 'add');
}

/** a - b with numpy broadcasting. */
export function sub(a: Tensor, b: Tensor): Tensor {
  return binary(a, b, 'sub');
}

/** a * b (elementwise) with numpy broadcasting. */
export function mul(a: Tensor, b: Tensor): Tensor {
  return binary(a, b, 'mul');
}

/** a * s for a number s. */
export function scale(a: Tensor, s: number): Tensor {
  assertFloat(a, 'scale');
  const out = floatOut(a, a.shape);
  const x = a.f, o = out.f;
  for (let i = 0; i < o.length; i++) o[i] = x[i]! * s;
  if (needsGrad(a)) {
    record('scale', [a], out, (g) => {
      const ga = floatLike(g, g.length, false);
      for (let i = 0; i < g.length; i++) ga[i] = g[i]! * s;
      addGradOwned(a, ga);
    });
  }
  return out;
}

/** Sum of all elements (a scalar tensor). */
export function sum(a: Tensor): Tensor {
  assertFloat(a, 'sum');
  const out = floatOut(a, []);
  let s = 0;
  const x = a.f;
  for (let i = 0; i < x.length; i++) s += x[i]!;
  out.f[0] = s;
  if (needsGrad(a)) {
    record('sum', [a], out, (g) => {
      const ga = floatLike(g, a.size, false);
      ga.fill(g[0]!);
      addGradOwned(a, ga);
    });
  }
  return out;
}

/** Mean of all elements (a scalar tensor). */
export function mean(a: Tensor): Tensor {
  return scale(sum(a), 1 / a.size);
}

/** Swaps two axes (copies). */
export function transpose(a: Tensor, d0: number, d1: number): Tensor {
  const nd = a.ndim;
  d0 = d0 < 0 ? nd + d0 : d0;
  d1 = d1 < 0 ? nd + d1 : d1;
  const perm = [...Array(nd).keys()];
  perm[d0] = d1;
  perm[d1] = d0;
  return permute(a, perm);
}

/** Reorders axes: out.shape[i] = a.shape[perm[i]] (copies). */
export function permute(a: Tensor, perm: readonly number[]): Tensor {
  assertFloat(a, 'permute');
  const shape = perm.map((p) => a.shape[p]!);
  const out = floatOut(a, shape);
  const src = permuteIndex(a.shape, perm);
  const x = a.f, o = out.f;
  for (let k = 0; k < o.length; k++) o[k] = x[src[k]!]!;
  if (needsGrad(a)) {
    record('permute', [a], out, (g) => {
      const ga = floatLike(g, g.length, false);
      for (let k = 0; k < g.length; k++) ga[src[k]!] = g[k]!;
      addGradOwned(a, ga);
    });
  }
  return out;
}

function permuteIndex(shape: readonly number[], perm: readonly number[]): Int32Array {
  const nd = shape.length;
  const strides = new Array<number>(nd);
  let s = 1;
  for (let i = nd - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  const outShape = perm.map((p) => shape[p]!);
  const outStrides = perm.map((p) => strides[p]!);
  const idx = new Int32Array(s);
  const pos = new Array<number>(nd).fill(0);
  let off = 0;
  for (let k = 0; k < s; k++) {
    idx[k] = off;
    for (let d = nd - 1; d >= 0; d--) {
      pos[d]!++;
      off += outStrides[d]!;
      if (pos[d]! < outShape[d]!) break;
      off -= outStrides[d]! * pos[d]!;
      pos[d] = 0;
    }
  }
  return idx;
}

/**
 * Batched matrix product: a [..., M, K] · b [..., K, N] (or their transposes with transA/transB).
 * b may also be 2-D and shared by every batch.
 */
export function matmul(a: Tensor, b: Tensor, opts: { transA?: boolean; transB?: boolean } = {}): Tensor {
  assertFloat(a, 'matmul');
  assertFloat(b, 'matmul');
  const tA = opts.transA ?? false, tB = opts.transB ?? false;
  if (a.ndim < 2 || b.ndim < 2) throw new Error(`matmul: need at least 2-D tensors, got ${a.describe()} and ${b.describe()}`);
  const [ar, ac] = [a.dim(-2), a.dim(-1)];
  const [br, bc] = [b.dim(-2), b.dim(-1)];
  const M = tA ? ac : ar, K = tA ? ar : ac;
  const Kb = tB ? bc : br, N = tB ? br : bc;
  if (K !== Kb) throw new Error(`matmul: inner sizes differ: ${a.describe()} and ${b.describe()}`);
  const batch = a.size / (ar * ac);
  const bBatch = b.size / (br * bc);
  if (bBatch !== 1 && bBatch !== batch) throw new Error(`matmul: batch sizes differ: ${a.describe()} and ${b.describe()}`);
  const out = floatOut(a, [...a.shape.slice(0, -2), M, N]);
  const gemm = gemmFor(a.f);
  const A = a.f, B = b.f, C = out.f;
  const sa = ar * ac, sb = bBatch === 1 ? 0 : br * bc, sc = M * N;
  for (let i = 0; i < batch; i++) {
    gemm(tA, tB, M, N, K, 1, A.subarray(i * sa, (i + 1) * sa), ac, B.subarray(i * sb, i * sb + br * bc), bc, 0, C.subarray(i * sc, (i + 1) * sc), N);
  }
  if (needsGrad(a, b)) {
    record('matmul', [a, b], out, (g) => {
      if (a.requiresGrad) {
        // dA = dC · op(B)^T (stored as op(A)'s layout)
        const ga = floatLike(g, a.size, false);
        for (let i = 0; i < batch; i++) {
          const gi = g.subarray(i * sc, (i + 1) * sc), bi = B.subarray(i * sb, i * sb + br * bc), out = ga.subarray(i * sa, (i + 1) * sa);
          if (!tA) gemm(false, !tB, M, K, N, 1, gi, N, bi, bc, 0, out, K);
          else gemm(tB, true, K, M, N, 1, bi, bc, gi, N, 0, out, M);
        }
        addGradOwned(a, ga);
      }
      if (b.requiresGrad) {
        const gb = floatLike(g, b.size);
        for (let i = 0; i < batch; i++) {
          const gi = g.subarray(i * sc, (i + 1) * sc), ai = A.subarray(i * sa, (i + 1) * sa), out = gb.subarray(i * sb, i * sb + br * bc);
          const beta = sb === 0 && i > 0 ? 1 : 0;
          if (!tB) gemm(!tA, false, K, N, M, 1, ai, ac, gi, N, beta, out, N);
          else gemm(true, tA, N, K, M, 1, gi, N, ai, ac, beta, out, K);
        }
        addGradOwned(b, gb);
      }
    });
  }
  return out;
}

/**
 * y = x · W^T (+ bias). x [..., in], W [out, in] in f32/f64 or bf16 (a frozen weight), bias [out].
 * Backward: dx = dy · W, dW = dy^T · x (only when W requires grad), dbias = column sums of dy.
 */
export function linear(x: Tensor, W: Tensor, bias: Tensor | null = null): Tensor {
  assertFloat(x, 'linear');
  const [outF, inF] = [W.dim(0), W.dim(1)];
  if (x.dim(-1) !== inF) throw new Error(`linear: input ${x.describe()} does not match weight ${W.describe()}`);
  const rows = x.size / inF;
  const out = floatOut(x, [...x.shape.slice(0, -1), outF]);
  const X = x.f, Y = out.f;
  if (W.dtype === 'bf16') gemmBf16For(X)(false, true, rows, outF, inF, 1, X, inF, W.data as Uint16Array, inF, 0, Y, outF);
  else gemmFor(X)(false, true, rows, outF, inF, 1, X, inF, W.f, inF, 0, Y, outF);
  if (bias) {
    const b = bias.f;
    for (let r = 0; r < rows; r++) for (let j = 0; j < outF; j++) Y[r * outF + j]! += b[j]!;
  }
  if (needsGrad(x, W, bias)) {
    record('linear', [x, W, bias], out, (g) => {
      if (x.requiresGrad) {
        const gx = floatLike(g, x.size, false);
        if (W.dtype === 'bf16') gemmBf16For(g)(false, false, rows, inF, outF, 1, g, outF, W.data as Uint16Array, inF, 0, gx, inF);
        else gemmFor(g)(false, false, rows, inF, outF, 1, g, outF, W.f, inF, 0, gx, inF);
        addGradOwned(x, gx);
      }
      if (W.requiresGrad) {
        const gw = floatLike(g, W.size, false);
        gemmFor(g)(true, false, outF, inF, rows, 1, g, outF, X, inF, 0, gw, inF);
        addGradOwned(W, gw);
      }
      if (bias?.requiresGrad) {
        const gb = floatLike(g, outF);
        for (let r = 0; r < rows; r++) for (let j = 0; j < outF; j++) gb[j]! += g[r * outF + j]!;
        addGradOwned(bias, gb);
      }
    });
  }
  return out;
}

/** Rows of W [vocab, dim] selected by ids; backward scatter-adds into dW. */
export function embedding(ids: Int32Array, W: Tensor, shape: readonly number[] = [ids.length]): Tensor {
  const [V, D] = [W.dim(0), W.dim(1)];
  const out = Tensor.empty([...shape, D], W.dtype === 'f64' ? 'f64' : 'f32');
  const o = out.f;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (id < 0 || id >= V) throw new Error(`embedding: token id ${id} at position ${i} is outside the vocabulary (size ${V})`);
    if (W.dtype === 'bf16') {
      const w = W.data as Uint16Array;
      const u = new Uint32Array(o.buffer, o.byteOffset, o.length);
      if (o instanceof Float64Array) for (let j = 0; j < D; j++) o[i * D + j] = bf16(w[id * D + j]!);
      else for (let j = 0; j < D; j++) u[i * D + j] = w[id * D + j]! << 16;
    } else {
      o.set(W.f.subarray(id * D, (id + 1) * D), i * D);
    }
  }
  if (needsGrad(W)) {
    record('embedding', [W], out, (g) => {
      const gw = floatLike(g, W.size);
      for (let i = 0; i < ids.length; i++) {
        const r = ids[i]! * D;
        for (let j = 0; j < D; j++) gw[r + j]! += g[i * D + j]!;
      }
      addGradOwned(W, gw);
    });
  }
  return out;
}

/**
 * Rows of x selected by index: x [..., D] seen as [N, D], out [rows.length, D] with out[i] = x[rows[i]]
 * (e.g. the hidden state of each sequence's last token). Backward scatter-adds into dx (rows may repeat).
 */
export function gatherRows(x: Tensor, rows: Int32Array): Tensor {
  assertFloat(x, 'gatherRows');
  const D = x.dim(-1);
  const N = x.size / D;
  const out = floatOut(x, [rows.length, D]);
  const X = x.f, o = out.f;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]!;
    if (!(r >= 0 && r < N)) throw new Error(`gatherRows: row ${r} at position ${i} is outside [0, ${N})`);
    o.set(X.subarray(r * D, (r + 1) * D), i * D);
  }
  if (needsGrad(x)) {
    record('gatherRows', [x], out, (g) => {
      const gx = floatLike(g, x.size);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i]! * D;
        for (let j = 0; j < D; j++) gx[r + j]! += g[i * D + j]!;
      }
      addGradOwned(x, gx);
    });
  }
  return out;
}

const bf16View = new Float32Array(1);
const bf16Bits = new Uint32Array(bf16View.buffer);
function bf16(h: number): number {
  bf16Bits[0] = h << 16;
  return bf16View[0]!;
}
