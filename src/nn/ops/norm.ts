/** RMSNorm and LayerNorm over the last axis, forward and backward side by side. */
import { addGradOwned, needsGrad, record } from '../../tensor/autograd.js';
import { type FloatArray, floatLike, releaseFloat, Tensor } from '../../tensor/tensor.js';
import { kernels } from '../../kernels/index.js';
import { jsKernels } from '../../kernels/js/index.js';

type F32 = Float32Array;

/** y = x / sqrt(mean(x^2) + eps) * w  (Llama's RMSNorm; the normalisation is computed in f32 or f64). */
export function rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor {
  const D = x.dim(-1);
  const rows = x.size / D;
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f, W = w.f;
  // f64 (gradient checks) runs on the js kernels, f32 on the active ones; the kernel types are f32.
  const K = X instanceof Float64Array ? jsKernels : kernels();
  const rstd = floatLike(X, rows, false);
  K.rmsNormFwd(X as F32, W as F32, Y as F32, rstd as F32, rows, D, eps);
  if (needsGrad(x, w)) {
    record('rmsNorm', [x, w], out, (g) => {
      // xhat = x*s; y = xhat*w.  dx = s * (g*w - xhat * mean(g*w*xhat)),  dw = sum_rows g*xhat
      const gx = x.requiresGrad ? floatLike(g, x.size, false) : null;
      const gw = w.requiresGrad ? floatLike(g, D, false) : null;
      K.rmsNormBwd(g as F32, X as F32, W as F32, rstd as F32, gx as F32 | null, gw as F32 | null, rows, D);
      if (gx) addGradOwned(x, gx);
      if (gw) addGradOwned(w, gw);
    }, () => releaseFloat(rstd));
  } else releaseFloat(rstd);
  return out;
}

/** y = (x - mean) / sqrt(var + eps) * w + b  (biased variance, as torch.nn.LayerNorm). */
export function layerNorm(x: Tensor, w: Tensor, b: Tensor | null, eps: number): Tensor {
  const D = x.dim(-1);
  const rows = x.size / D;
  const out = Tensor.empty(x.shape, x.dtype);
  const X = x.f, Y = out.f, W = w.f, B = b?.f;
  const rstd = floatLike(X, rows, false);
  const mu = floatLike(X, rows, false);
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let m = 0;
    for (let j = 0; j < D; j++) m += X[o + j]!;
    m /= D;
    let v = 0;
    for (let j = 0; j < D; j++) v += (X[o + j]! - m) ** 2;
    const s = 1 / Math.sqrt(v / D + eps);
    mu[r] = m;
    rstd[r] = s;
    for (let j = 0; j < D; j++) Y[o + j] = (X[o + j]! - m) * s * W[j]! + (B ? B[j]! : 0);
  }
  if (needsGrad(x, w, b)) {
    record('layerNorm', [x, w, b], out, (g: FloatArray) => {
      const gx = x.requiresGrad ? floatLike(g, x.size, false) : null;
      const gw = w.requiresGrad ? floatLike(g, D) : null;
      const gb = b?.requiresGrad ? floatLike(g, D) : null;
      for (let r = 0; r < rows; r++) {
        const o = r * D, s = rstd[r]!, m = mu[r]!;
        let sumG = 0, sumGX = 0;
        for (let j = 0; j < D; j++) {
          const gh = g[o + j]! * W[j]!;
          const xhat = (X[o + j]! - m) * s;
          sumG += gh;
          sumGX += gh * xhat;
          if (gw) gw[j]! += g[o + j]! * xhat;
          if (gb) gb[j]! += g[o + j]!;
        }
        if (gx) {
          for (let j = 0; j < D; j++) {
            const xhat = (X[o + j]! - m) * s;
            gx[o + j] = (s / D) * (D * g[o + j]! * W[j]! - sumG - xhat * sumGX);
          }
        }
      }
      if (gx) addGradOwned(x, gx);
      if (gw) addGradOwned(w, gw);
      if (gb && b) addGradOwned(b, gb);
    }, () => {
      releaseFloat(rstd);
      releaseFloat(mu);
    });
  } else {
    releaseFloat(rstd);
    releaseFloat(mu);
  }
  return out;
}
