/**
 * Reverse-mode autograd on a tape, and memory scopes.
 *
 * An op that has an input with requiresGrad (and grad mode on) records one TapeNode whose backward
 * sits next to its forward (see ops/). `backward(loss)` walks the tape in reverse; right after a node's
 * backward has run, the activations it saved and its output's gradient are freed, so peak memory is
 * set by the forward, not by forward + backward. Only parameters (leaves with requiresGrad) get `.grad`.
 */
import { kernels } from '../kernels/index.js';
import { floatLike, hooks, releaseFloat, type FloatArray, type TapeNode, Tensor, viewRecorder } from './tensor.js';

let gradEnabled = true;
let tape: TapeNode[] = [];
const scopes: Set<Tensor>[] = [];

hooks.onCreate = (t) => {
  const s = scopes[scopes.length - 1];
  if (s) s.add(t);
};

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn with gradient recording off (inference, evaluation, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/**
 * Runs fn and frees every tensor created inside it, except those reachable from its return value
 * (a Tensor, or an array/object of Tensors, one level deep) and persistent tensors.
 */
export function scope<T>(fn: () => T): T {
  const created = new Set<Tensor>();
  scopes.push(created);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  const keep = new Set<Tensor>();
  collectTensors(result, keep);
  const parent = scopes[scopes.length - 1];
  for (const t of created) {
    if (keep.has(t) || t.persistent) {
      parent?.add(t);
      continue;
    }
    if (t.node && tape.includes(t.node)) {
      // Still needed by a pending backward: hand it to the enclosing scope.
      parent?.add(t);
      continue;
    }
    t.dispose();
  }
  return result;
}

function collectTensors(v: unknown, into: Set<Tensor>): void {
  if (v instanceof Tensor) {
    into.add(v);
    return;
  }
  // A typed array holds no tensors (and Object.values of generate's 49152 logits cost ~1.7 ms a token).
  if (ArrayBuffer.isView(v)) return;
  const items = Array.isArray(v) ? v : v && typeof v === 'object' ? Object.values(v) : [];
  for (const x of items) if (x instanceof Tensor) into.add(x);
}

/** Should an op with these inputs record a tape node? */
export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t?.requiresGrad) return true;
  return false;
}

/** Records an op on the tape; marks the output as requiring grad. */
export function record(
  op: string,
  inputs: (Tensor | null | undefined)[],
  output: Tensor,
  backward: (gradOut: FloatArray) => void,
  release?: () => void,
): void {
  const ins = inputs.filter((t): t is Tensor => t != null);
  output.requiresGrad = true;
  const node: TapeNode = { op, inputs: ins, output, backward, release };
  output.node = node;
  tape.push(node);
}

/** Adds `g` (same length as t) into t's gradient: .grad for parameters, a temporary buffer otherwise. */
export function addGrad(t: Tensor, g: FloatArray): void {
  if (!t.requiresGrad) return;
  if (!t.node) {
    // A leaf: a parameter.
    if (!t.grad) {
      t.grad = Tensor.zeros(t.shape, t.dtype === 'f64' ? 'f64' : 'f32').keep();
      t.grad.name = t.name ? t.name + '.grad' : '';
    }
    accumulate(t.grad.f, g);
    return;
  }
  if (!t.gradBuf) {
    t.gradBuf = floatLike(g, g.length, false);
    t.gradBuf.set(g);
  } else accumulate(t.gradBuf, g);
}

/** acc += g (the native kernel for f32, a loop for f64). */
function accumulate(acc: FloatArray, g: FloatArray): void {
  if (acc instanceof Float32Array && g instanceof Float32Array) kernels().addVec(acc, g, acc, acc.length);
  else for (let i = 0; i < acc.length; i++) acc[i]! += g[i]!;
}

/**
 * Gives `g`, the gradient buffer of `output` that a backward received, to `input` (an op whose
 * gradient passes through unchanged: a view, a sum). No copy when the input has no gradient yet; the
 * buffer then belongs to the input and runBackward does not free it. Otherwise adds g in.
 */
export function passGrad(output: Tensor, input: Tensor, g: FloatArray): void {
  if (input.requiresGrad && input.node && !input.gradBuf && output.gradBuf === g) {
    input.gradBuf = g;
    output.gradBuf = null;
    return;
  }
  addGrad(input, g);
}

/** Like addGrad, but hands over ownership of a buffer from floatLike (no copy when possible). */
export function addGradOwned(t: Tensor, g: FloatArray): void {
  if (t.requiresGrad && t.node && !t.gradBuf) {
    t.gradBuf = g;
    return;
  }
  addGrad(t, g);
  releaseFloat(g);
}

/**
 * Back-propagates from a scalar loss (or from `gradOut` for a non-scalar output) through the tape,
 * accumulating into the `.grad` of every parameter that contributed, then clears the tape.
 */
export function backward(loss: Tensor, gradOut?: FloatArray): void {
  if (!loss.node) throw new Error(`backward: ${loss.describe()} does not depend on any parameter with requiresGrad`);
  if (!gradOut && loss.size !== 1) throw new Error(`backward: ${loss.describe()} is not a scalar; pass gradOut`);
  const seed = gradOut ?? floatLike(loss.f, 1);
  if (!gradOut) seed[0] = 1;
  addGrad(loss, seed);
  const end = tape.indexOf(loss.node);
  runBackward(end, 0);
  tape = tape.slice(end + 1);
}

/** Runs the backward of tape nodes end..start (inclusive), in reverse order. */
function runBackward(end: number, start: number): void {
  for (let i = end; i >= start; i--) {
    const node = tape[i]!;
    const g = node.output.gradBuf;
    if (g) {
      node.backward(g);
      // Unless the backward passed the buffer on to an input (passGrad), it is free now.
      if (node.output.gradBuf === g) releaseFloat(g);
      node.output.gradBuf = null;
    }
    node.release?.();
    node.output.node = null;
  }
}

/**
 * Gradient checkpointing: runs fn(x) without recording its internals; in backward, runs it again with
 * recording on and back-propagates through that recomputation. Saves the activations inside fn at the
 * cost of a second forward. `beforeRecompute` restores anything random (dropout RNG state).
 */
export function checkpoint(x: Tensor, fn: (x: Tensor) => Tensor, beforeRecompute?: () => void): Tensor {
  if (!gradEnabled) return fn(x);
  // Inside a scope, so the layer's intermediates are freed right away; only its output is kept.
  const out = scope(() => noGrad(() => fn(x)));
  record('checkpoint', [x, ...[]], out, (g) => {
    beforeRecompute?.();
    const start = tape.length;
    const xIn = new Tensor(x.data, x.shape, x.dtype);
    xIn.requiresGrad = x.requiresGrad;
    const y = scope(() => {
      const y = fn(xIn);
      if (!y.node) return y;
      addGrad(y, g);
      runBackward(tape.indexOf(y.node), start);
      tape.length = start;
      return y;
    });
    y.dispose();
    if (xIn.grad) {
      addGrad(x, xIn.grad.f);
      xIn.grad.dispose();
    }
  });
  // Parameters inside fn receive gradients through the recomputation, so the node must run even when
  // x itself needs no gradient.
  out.requiresGrad = true;
  return out;
}

/** Drops the tape without back-propagating (e.g. after an evaluation forward with grad on). */
export function clearTape(): void {
  for (const n of tape) {
    n.release?.();
    n.output.node = null;
  }
  tape = [];
}

export function tapeLength(): number {
  return tape.length;
}

/** A trainable parameter: persistent, requiresGrad, named. */
export function parameter(t: Tensor, name = ''): Tensor {
  t.makeWritable();
  t.requiresGrad = true;
  t.persistent = true;
  t.name = name;
  return t;
}

viewRecorder.record = (input, out, op, map) => {
  if (!needsGrad(input)) return;
  record(op, [input], out, (g) => {
    const mapped = map(g);
    if (mapped === g) passGrad(out, input, g);
    else addGrad(input, mapped);
  });
};
