/**
 * Cross-entropy with ignore_index -100, and the fused lm_head + cross-entropy that never holds the
 * whole [tokens x vocab] logits: tokens are processed in chunks, and each chunk's gradients are formed
 * during the forward (the loss is the end of the graph, so its upstream gradient is a single number).
 */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import { type FloatArray, floatLike, releaseFloat, Tensor } from '../../tensor/tensor.js';
import { gemmBf16For, gemmFor } from '../../tensor/ops.js';
import type { Kernels } from '../../kernels/backend.js';
import { kernels } from '../../kernels/index.js';
import { jsKernels } from '../../kernels/js/index.js';

export const IGNORE_INDEX = -100;

export interface LossOptions {
  /** 'mean' over non-ignored tokens (default), or 'sum' (divide later, e.g. across accumulation). */
  reduction?: 'mean' | 'sum';
}

/** Number of labels that are not IGNORE_INDEX. */
export function countTargets(labels: Int32Array): number {
  let n = 0;
  for (let i = 0; i < labels.length; i++) if (labels[i] !== IGNORE_INDEX) n++;
  return n;
}

/** The kernels for a buffer: f64 (gradient checks) runs on the js kernels, f32 on the active ones. */
function kernelsFor(buf: FloatArray): Kernels {
  return buf instanceof Float64Array ? jsKernels : kernels();
}

/**
 * Softmax cross-entropy of rows of `logits` against `labels`; writes d(loss_sum)/d(logits) into grad if given,
 * and each row's loss into rowLoss if given.
 */
function ceRows(
  logits: FloatArray, labels: Int32Array, rows: number, V: number, grad: FloatArray | null, labelOffset = 0, rowLoss: Float64Array | null = null,
): number {
  // The kernel types are f32; the js kernels (used for f64) are generic.
  return kernelsFor(logits).crossEntropyRows(logits as Float32Array, labels, labelOffset, rows, V, grad as Float32Array | null, rowLoss);
}

/** Cross-entropy of logits [N, V] against labels [N] (ignore_index -100). Returns a scalar. */
export function crossEntropy(logits: Tensor, labels: Int32Array, opts: LossOptions = {}): Tensor {
  const V = logits.dim(-1);
  const N = logits.size / V;
  if (labels.length !== N) throw new Error(`crossEntropy: ${labels.length} labels for ${N} rows of logits`);
  const count = countTargets(labels);
  const div = opts.reduction === 'sum' ? 1 : Math.max(count, 1);
  const track = needsGrad(logits);
  const grad = track ? floatLike(logits.f, logits.size, false) : null;
  const total = ceRows(logits.f, labels, N, V, grad);
  const out = Tensor.empty([], logits.dtype === 'f64' ? 'f64' : 'f32');
  out.f[0] = total / div;
  if (track && grad) {
    record('crossEntropy', [logits], out, (g) => {
      const k = g[0]! / div;
      for (let i = 0; i < grad.length; i++) grad[i]! *= k;
      addGradOwned(logits, grad);
    });
  }
  return out;
}

/**
 * Rows per chunk of linearCrossEntropy: about 16M logits (64 MB in f32) per chunk, far below [N x V],
 * and equal chunks (no small last one) of a multiple of 6 rows (the GEMM's micro-tile height). Fewer,
 * bigger chunks matter for the backward GEMM (rows x H x V), which packs all of W once per chunk:
 * for 1024 x 49152 logits, 3 chunks of 342 rows train 10% faster than 7 of 170 (and a last one of 4).
 */
export function lossChunkRows(N: number, V: number): number {
  const chunks = Math.max(1, Math.round((N * V) / (16 * 1024 * 1024)));
  return Math.ceil(Math.ceil(N / chunks) / 6) * 6;
}

/**
 * loss = CE(h · W^T, labels) without materialising all logits: h [N, H], W [V, H] (f32/f64, or bf16
 * frozen). Processes `chunkTokens` rows at a time (default: about 8M logits, 32 MB, per chunk).
 */
export function linearCrossEntropy(
  h: Tensor, W: Tensor, labels: Int32Array, opts: LossOptions & { chunkTokens?: number } = {},
): Tensor {
  const [V, Hd] = [W.dim(0), W.dim(1)];
  const N = h.size / Hd;
  if (labels.length !== N) throw new Error(`linearCrossEntropy: ${labels.length} labels for ${N} rows`);
  const count = countTargets(labels);
  const div = opts.reduction === 'sum' ? 1 : Math.max(count, 1);
  const chunk = Math.max(1, Math.min(N, opts.chunkTokens ?? lossChunkRows(N, V)));
  const wantH = needsGrad(h), wantW = needsGrad(W);
  const H = h.f;
  const gh = wantH ? floatLike(H, h.size) : null;
  const gw = wantW ? floatLike(H, W.size) : null;
  const logits = floatLike(H, chunk * V, false);
  const gemm = gemmFor(H);
  const gemmB = gemmBf16For(H);
  const bf = W.dtype === 'bf16';
  let total = 0;
  for (let r0 = 0; r0 < N; r0 += chunk) {
    const rows = Math.min(chunk, N - r0);
    // Skip chunks where every label is ignored.
    let any = false;
    for (let r = 0; r < rows; r++) if (labels[r0 + r] !== IGNORE_INDEX) any = true;
    if (!any) continue;
    const hc = H.subarray(r0 * Hd, (r0 + rows) * Hd);
    const lc = logits.subarray(0, rows * V);
    if (bf) gemmB(false, true, rows, V, Hd, 1, hc, Hd, W.data as Uint16Array, Hd, 0, lc, V);
    else gemm(false, true, rows, V, Hd, 1, hc, Hd, W.f, Hd, 0, lc, V);
    total += ceRows(lc, labels, rows, V, gh || gw ? lc : null, r0);
    if (gh) {
      const ghc = gh.subarray(r0 * Hd, (r0 + rows) * Hd);
      if (bf) gemmB(false, false, rows, Hd, V, 1, lc, V, W.data as Uint16Array, Hd, 0, ghc, Hd);
      else gemm(false, false, rows, Hd, V, 1, lc, V, W.f, Hd, 0, ghc, Hd);
    }
    if (gw) gemm(true, false, V, Hd, rows, 1, lc, V, hc, Hd, 1, gw, Hd);
  }
  releaseFloat(logits);
  const out = Tensor.empty([], h.dtype === 'f64' ? 'f64' : 'f32');
  out.f[0] = total / div;
  if (wantH || wantW) {
    record('linearCrossEntropy', [h, W], out, (g) => {
      const k = g[0]! / div;
      if (gh) {
        for (let i = 0; i < gh.length; i++) gh[i]! *= k;
        addGradOwned(h, gh);
      }
      if (gw) {
        for (let i = 0; i < gw.length; i++) gw[i]! *= k;
        addGradOwned(W, gw);
      }
    });
  }
  return out;
}

/**
 * Per-sequence log-probabilities (DPO's log pi(y|x)): out[s] = sum of log softmax(h_i W^T)[labels_i] over the
 * rows i with seq[i] = s whose label is not -100. h [N, H], W [V, H] (f32/f64, or bf16 frozen), labels [N]
 * already shifted (row i predicts labels[i]), seq [N] in [0, S). The logits are formed chunk by chunk as in
 * linearCrossEntropy, and the gradient for h with them (each row's softmax - onehot, times W); backward scales
 * row i by -g[seq[i]]. A W that trains (full fine-tuning of a tied embedding) gets its gradient in backward
 * from recomputed logits: a per-row scale cannot be applied to a gradient already summed over rows.
 */
export function linearSequenceLogProbs(
  h: Tensor, W: Tensor, labels: Int32Array, seq: Int32Array, S: number, opts: { chunkTokens?: number } = {},
): Tensor {
  const [V, Hd] = [W.dim(0), W.dim(1)];
  const N = h.size / Hd;
  if (labels.length !== N || seq.length !== N) throw new Error(`linearSequenceLogProbs: ${labels.length} labels and ${seq.length} sequence ids for ${N} rows`);
  for (let i = 0; i < N; i++) {
    if (labels[i] !== IGNORE_INDEX && !(seq[i]! >= 0 && seq[i]! < S)) throw new Error(`linearSequenceLogProbs: row ${i} has sequence id ${seq[i]} outside [0, ${S})`);
  }
  const chunk = Math.max(1, Math.min(N, opts.chunkTokens ?? lossChunkRows(N, V)));
  const wantH = needsGrad(h), wantW = needsGrad(W);
  const H = h.f;
  const gh = wantH ? floatLike(H, h.size) : null;
  const logits = floatLike(H, chunk * V, false);
  const rowLoss = new Float64Array(chunk);
  const gemm = gemmFor(H);
  const gemmB = gemmBf16For(H);
  const bf = W.dtype === 'bf16';
  const sums = new Float64Array(S);
  const chunks: number[] = [];  // first rows of the chunks that have a label
  const logitsOf = (r0: number, rows: number, lc: FloatArray) => {
    const hc = H.subarray(r0 * Hd, (r0 + rows) * Hd);
    if (bf) gemmB(false, true, rows, V, Hd, 1, hc, Hd, W.data as Uint16Array, Hd, 0, lc, V);
    else gemm(false, true, rows, V, Hd, 1, hc, Hd, W.f, Hd, 0, lc, V);
  };
  for (let r0 = 0; r0 < N; r0 += chunk) {
    const rows = Math.min(chunk, N - r0);
    let any = false;
    for (let r = 0; r < rows; r++) if (labels[r0 + r] !== IGNORE_INDEX) any = true;
    if (!any) continue;
    chunks.push(r0);
    const lc = logits.subarray(0, rows * V);
    logitsOf(r0, rows, lc);
    ceRows(lc, labels, rows, V, gh ? lc : null, r0, rowLoss);
    for (let r = 0; r < rows; r++) if (labels[r0 + r] !== IGNORE_INDEX) sums[seq[r0 + r]!]! -= rowLoss[r]!;
    if (gh) {
      const ghc = gh.subarray(r0 * Hd, (r0 + rows) * Hd);
      if (bf) gemmB(false, false, rows, Hd, V, 1, lc, V, W.data as Uint16Array, Hd, 0, ghc, Hd);
      else gemm(false, false, rows, Hd, V, 1, lc, V, W.f, Hd, 0, ghc, Hd);
    }
  }
  releaseFloat(logits);
  const out = Tensor.empty([S], h.dtype === 'f64' ? 'f64' : 'f32');
  out.f.set(sums);
  if (wantH || wantW) {
    const scale = (g: FloatArray, i: number) => (labels[i] === IGNORE_INDEX ? 0 : -g[seq[i]!]!);
    record('linearSequenceLogProbs', [h, W], out, (g) => {
      if (gh) {
        for (let i = 0; i < N; i++) {
          const k = scale(g, i);
          for (let j = i * Hd; j < (i + 1) * Hd; j++) gh[j]! *= k;
        }
        addGradOwned(h, gh);
      }
      if (wantW) {
        const gw = floatLike(H, W.size);
        const buf = floatLike(H, chunk * V, false);
        for (const r0 of chunks) {
          const rows = Math.min(chunk, N - r0);
          const lc = buf.subarray(0, rows * V);
          logitsOf(r0, rows, lc);
          ceRows(lc, labels, rows, V, lc, r0);
          for (let r = 0; r < rows; r++) {
            const k = scale(g, r0 + r);
            for (let j = r * V; j < (r + 1) * V; j++) lc[j]! *= k;
          }
          gemm(true, false, V, Hd, rows, 1, lc, V, H.subarray(r0 * Hd, (r0 + rows) * Hd), Hd, 1, gw, Hd);
        }
        releaseFloat(buf);
        addGradOwned(W, gw);
      }
    });
  }
  return out;
}
