/**
 * Reference row-wise and pointwise kernels of a training step: cross-entropy rows, SwiGLU, SiLU,
 * GELU (tanh), RMSNorm, RoPE and the AdamW update. See the Kernels interface for the contracts.
 *
 * Plain loops in double precision. The functions accept f32 or f64 buffers (f64 for gradient
 * checks); the Kernels interface only promises f32.
 */

type Floats = Float32Array | Float64Array;

const IGNORE_INDEX = -100;

function need(fn: string, name: string, buf: { length: number } | null, n: number): void {
  if (buf && buf.length < n) throw new Error(`${fn}: ${name} has ${buf.length} elements, needs ${n}`);
}

function count(fn: string, name: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`${fn}: ${name} must be a non-negative integer, got ${n}`);
}

/** See Kernels.crossEntropyRows. */
export function crossEntropyRows(
  logits: Floats, labels: Int32Array, labelOffset: number, rows: number, V: number, grad: Floats | null,
  rowLoss: Float64Array | null = null,
): number {
  const fn = 'crossEntropyRows';
  count(fn, 'rows', rows);
  count(fn, 'labelOffset', labelOffset);
  if (!Number.isInteger(V) || V < 1) throw new Error(`${fn}: V must be a positive integer, got ${V}`);
  need(fn, 'logits', logits, rows * V);
  need(fn, 'labels', labels, labelOffset + rows);
  need(fn, 'grad', grad, rows * V);
  need(fn, 'rowLoss', rowLoss, rows);
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const y = labels[labelOffset + r]!;
    const o = r * V;
    if (rowLoss) rowLoss[r] = 0;
    if (y === IGNORE_INDEX) {
      if (grad) grad.fill(0, o, o + V);
      continue;
    }
    if (y < 0 || y >= V) throw new Error(`cross-entropy: label ${y} at position ${labelOffset + r} is outside the vocabulary (size ${V})`);
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[o + j]!);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(logits[o + j]! - m);
    const lse = m + Math.log(s);
    total += lse - logits[o + y]!;
    if (rowLoss) rowLoss[r] = lse - logits[o + y]!;
    if (grad) {
      for (let j = 0; j < V; j++) grad[o + j] = Math.exp(logits[o + j]! - lse);
      grad[o + y]! -= 1;
    }
  }
  return total;
}

const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));

/** See Kernels.swigluFwd. */
export function swigluFwd(gate: Floats, up: Floats, out: Floats, n: number): void {
  count('swigluFwd', 'n', n);
  need('swigluFwd', 'gate', gate, n);
  need('swigluFwd', 'up', up, n);
  need('swigluFwd', 'out', out, n);
  for (let i = 0; i < n; i++) {
    const v = gate[i]!;
    out[i] = (v / (1 + Math.exp(-v))) * up[i]!;
  }
}

/** See Kernels.swigluBwd. */
export function swigluBwd(gate: Floats, up: Floats, dout: Floats, dgate: Floats | null, dup: Floats | null, n: number): void {
  const fn = 'swigluBwd';
  count(fn, 'n', n);
  need(fn, 'gate', gate, n);
  need(fn, 'up', up, n);
  need(fn, 'dout', dout, n);
  need(fn, 'dgate', dgate, n);
  need(fn, 'dup', dup, n);
  for (let i = 0; i < n; i++) {
    const v = gate[i]!;
    const s = 1 / (1 + Math.exp(-v));
    if (dgate) dgate[i] = dout[i]! * up[i]! * s * (1 + v * (1 - s));
    if (dup) dup[i] = dout[i]! * v * s;
  }
}

/** See Kernels.siluFwd. */
export function siluFwd(x: Floats, out: Floats, n: number): void {
  count('siluFwd', 'n', n);
  need('siluFwd', 'x', x, n);
  need('siluFwd', 'out', out, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    out[i] = v * sigmoid(v);
  }
}

/** See Kernels.siluBwd. */
export function siluBwd(x: Floats, dout: Floats, dx: Floats, n: number): void {
  count('siluBwd', 'n', n);
  need('siluBwd', 'x', x, n);
  need('siluBwd', 'dout', dout, n);
  need('siluBwd', 'dx', dx, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const s = sigmoid(v);
    dx[i] = dout[i]! * (s * (1 + v * (1 - s)));
  }
}

const GELU_C = Math.sqrt(2 / Math.PI);

/** See Kernels.geluTanhFwd. */
export function geluTanhFwd(x: Floats, out: Floats, n: number): void {
  count('geluTanhFwd', 'n', n);
  need('geluTanhFwd', 'x', x, n);
  need('geluTanhFwd', 'out', out, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    out[i] = 0.5 * v * (1 + Math.tanh(GELU_C * (v + 0.044715 * v * v * v)));
  }
}

/** See Kernels.geluTanhBwd. */
export function geluTanhBwd(x: Floats, dout: Floats, dx: Floats, n: number): void {
  count('geluTanhBwd', 'n', n);
  need('geluTanhBwd', 'x', x, n);
  need('geluTanhBwd', 'dout', dout, n);
  need('geluTanhBwd', 'dx', dx, n);
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const u = GELU_C * (v + 0.044715 * v * v * v);
    const t = Math.tanh(u);
    dx[i] = dout[i]! * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * v * v));
  }
}

/** See Kernels.rmsNormFwd. */
export function rmsNormFwd(x: Floats, w: Floats, out: Floats, rstd: Floats, rows: number, D: number, eps: number): void {
  const fn = 'rmsNormFwd';
  count(fn, 'rows', rows);
  count(fn, 'D', D);
  need(fn, 'x', x, rows * D);
  need(fn, 'w', w, D);
  need(fn, 'out', out, rows * D);
  need(fn, 'rstd', rstd, rows);
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[o + j]! * x[o + j]!;
    const s = 1 / Math.sqrt(ss / D + eps);
    rstd[r] = s;
    for (let j = 0; j < D; j++) out[o + j] = x[o + j]! * s * w[j]!;
  }
}

/** See Kernels.rmsNormBwd. */
export function rmsNormBwd(
  dout: Floats, x: Floats, w: Floats, rstd: Floats, dx: Floats | null, dw: Floats | null, rows: number, D: number,
): void {
  const fn = 'rmsNormBwd';
  count(fn, 'rows', rows);
  count(fn, 'D', D);
  need(fn, 'dout', dout, rows * D);
  need(fn, 'x', x, rows * D);
  need(fn, 'w', w, D);
  need(fn, 'rstd', rstd, rows);
  need(fn, 'dx', dx, rows * D);
  need(fn, 'dw', dw, D);
  // xhat = x*s; y = xhat*w.  dx = s * (g*w - xhat * mean(g*w*xhat)),  dw = sum_rows g*xhat
  if (dw) dw.fill(0, 0, D);
  for (let r = 0; r < rows; r++) {
    const o = r * D, s = rstd[r]!;
    let dot = 0;
    for (let j = 0; j < D; j++) dot += dout[o + j]! * w[j]! * x[o + j]! * s;
    dot /= D;
    for (let j = 0; j < D; j++) {
      const xhat = x[o + j]! * s;
      if (dx) dx[o + j] = s * (dout[o + j]! * w[j]! - xhat * dot);
      if (dw) dw[j]! += dout[o + j]! * xhat;
    }
  }
}

/** See Kernels.ropeApply. */
export function ropeApply(
  x: Floats, out: Floats, positions: Int32Array, cos: Floats, sin: Floats,
  tokens: number, heads: number, D: number, half: number, sign: number,
): void {
  const fn = 'ropeApply';
  count(fn, 'tokens', tokens);
  count(fn, 'heads', heads);
  count(fn, 'D', D);
  count(fn, 'half', half);
  if (2 * half > D) throw new Error(`rope: rotary dim ${2 * half} exceeds head dim ${D}`);
  need(fn, 'x', x, tokens * heads * D);
  need(fn, 'out', out, tokens * heads * D);
  need(fn, 'positions', positions, tokens);
  if (sin.length !== cos.length) throw new Error(`${fn}: cos has ${cos.length} elements but sin has ${sin.length}`);
  const maxPos = half > 0 ? Math.floor(cos.length / half) : Number.POSITIVE_INFINITY;
  for (let t = 0; t < tokens; t++) {
    const p = positions[t]!;
    if (p < 0 || p >= maxPos) throw new Error(`rope: position ${p} is outside the table (max ${maxPos - 1})`);
    const c0 = p * half;
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * D;
      for (let i = 0; i < half; i++) {
        const c = cos[c0 + i]!, s = sign * sin[c0 + i]!;
        const a = x[o + i]!, b = x[o + i + half]!;
        out[o + i] = a * c - b * s;
        out[o + i + half] = b * c + a * s;
      }
      for (let j = 2 * half; j < D; j++) out[o + j] = x[o + j]!;
    }
  }
}

/** See Kernels.addVec. */
export function addVec(a: Floats, b: Floats, out: Floats, n: number): void {
  const fn = 'addVec';
  count(fn, 'n', n);
  need(fn, 'a', a, n);
  need(fn, 'b', b, n);
  need(fn, 'out', out, n);
  for (let i = 0; i < n; i++) out[i] = a[i]! + b[i]!;
}

/** See Kernels.adamwStep. */
export function adamwStep(
  w: Floats, g: Floats, m: Floats, v: Floats, n: number,
  lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, bc1: number, bc2: number,
): void {
  const fn = 'adamwStep';
  count(fn, 'n', n);
  need(fn, 'w', w, n);
  need(fn, 'g', g, n);
  need(fn, 'm', m, n);
  need(fn, 'v', v, n);
  const decay = 1 - lr * weightDecay;
  const stepSize = lr / bc1;
  for (let i = 0; i < n; i++) {
    const gi = g[i]!;
    const mi = (m[i] = beta1 * m[i]! + (1 - beta1) * gi);
    const vi = (v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi);
    w[i] = w[i]! * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2 + eps);
  }
}
