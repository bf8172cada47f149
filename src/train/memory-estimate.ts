/**
 * The memory a training run needs, computed before it starts: parameters by precision, weights,
 * gradients, optimizer states, activations of one training step, and the Node runtime.
 *
 * Activations are not a rule of thumb: `simulateStep` replays the forward and backward of ajuste's own
 * ops (tensor/ops.ts, nn/ops/*.ts, peft/lora-op.ts, the chunked loss in nn/ops/loss.ts) on sizes only,
 * allocating and freeing exactly where the real code calls `allocate` / `release` (tensor/memory.ts),
 * so its peak is the `memoryStats().peakBytes` growth of a real step (checked in
 * test/memory-estimate.test.ts). Bytes are decimal: 1 GB = 1e9 B, 1 MB = 1e6 B.
 */
import { UserError } from '../errors.js';
import { isConv1dWeight, weightShapes } from '../models/build.js';
import type { ModelConfig } from '../models/config.js';
import { DEFAULT_TARGETS } from '../peft/config.js';
import { lossChunkRows } from '../nn/ops/loss.js';
import { bytesPerParam, type Precision, quantizedLinearBytes } from '../quant/memory.js';

export type TrainMethod = 'full' | 'lora' | 'qlora';
export type OptimName = 'adamw_torch' | 'adamw_8bit' | 'paged_adamw_32bit' | 'paged_adamw_8bit' | 'sgd';
export const OPTIMIZERS: readonly OptimName[] = ['adamw_torch', 'adamw_8bit', 'paged_adamw_32bit', 'paged_adamw_8bit', 'sgd'];

export interface MemoryOptions {
  method: TrainMethod;
  /** LoRA rank (8). */
  r?: number;
  /** LoRA targets: module names (exact or '.'-suffix match, as PEFT) or 'all-linear'; default PEFT's per-architecture list. */
  targets?: 'all-linear' | string[];
  /** LoRA dropout (0): with dropout the op keeps a dropped copy of its input for backward. */
  loraDropout?: number;
  /** Sequences per micro-batch (4). */
  batch?: number;
  /** Tokens per sequence (512); batches are assumed padded to this length. */
  maxLength?: number;
  /** Optimizer: adamw_torch (full, lora) or paged_adamw_32bit (qlora, as the QLoRA recipe) by default. */
  optim?: OptimName;
  gradientCheckpointing?: boolean;
  /**
   * In-memory dtype of frozen linear weights and embeddings; default as the sft recipe loads them:
   * bfloat16 when config.json's torch_dtype is bfloat16, else float32. Full fine-tuning trains f32 weights.
   */
  weightDtype?: 'float32' | 'bfloat16';
  /** QLoRA double quantization of the 4-bit absmax (true). */
  doubleQuant?: boolean;
  /**
   * Bottleneck adapters instead of LoRA (with method lora: a frozen base in its dtype): the element count of
   * every adapter tensor (f32, trainable; their gradients and optimizer states are counted). Activations are
   * the frozen base's with gradients flowing back through every layer; the adapters' own are not counted.
   */
  bottleneck?: number[];
}

export interface PrecisionRow {
  precision: Precision;
  params: number;
  bytes: number;
}

/** The bitsandbytes 4-bit storage of all quantized linear weights (peft-spec.md §2.5-2.6). */
export interface QuantBreakdown {
  params: number;
  tensors: number;
  /** Packed 4-bit codes. */
  data: number;
  /** Block absmax: u8 with double quantization, else f32. */
  absmax: number;
  nestedAbsmax: number;
  /** quant_map (16 x f32) and nested_quant_map (256 x f32) of every tensor. */
  quantMaps: number;
  total: number;
}

export interface ActivationBreakdown {
  /** Tokens per micro-batch (batch x maxLength). */
  tokens: number;
  /** Bytes one decoder layer's forward leaves alive until backward (with checkpointing: its output only). */
  perLayer: number;
  /** Bytes alive when the forward (including the loss) has finished. */
  afterForward: number;
  /** Chunked cross-entropy: the logits chunk (freed after the forward) and the loss-input gradient (kept). */
  lossScratch: number;
  /** How far backward's temporary gradient buffers (and a checkpointed layer's recomputation) rise above afterForward. */
  backwardExtra: number;
  /** Peak bytes of the step: the activations figure of the total. */
  peak: number;
}

export interface OptimizerBytes {
  name: OptimName;
  /** All optimizer state. */
  bytes: number;
  /** State that stays in memory; paged optimizers may evict the rest (states of tensors >= 1e5 elements). */
  resident: number;
  pageable: number;
}

export interface MemoryEstimate {
  method: TrainMethod;
  /** The options after defaults. */
  settings: {
    r: number | null;
    targets: string[] | 'all-linear' | null;
    batch: number | null;
    maxLength: number | null;
    optim: OptimName;
    gradientCheckpointing: boolean;
    weightDtype: 'float32' | 'bfloat16';
    doubleQuant: boolean | null;
  };
  model: { modelType: string; layers: number; hidden: number; intermediate: number; heads: number; kvHeads: number; vocab: number } | null;
  params: { total: number; trainable: number; frozen: number; byPrecision: PrecisionRow[] };
  quantized: QuantBreakdown | null;
  /** Bytes of every parameter (frozen and trainable) in its in-memory precision. */
  weights: number;
  /** f32 gradient buffers of the trainable parameters (frozen ones get none). */
  gradients: number;
  optimizer: OptimizerBytes;
  activations: ActivationBreakdown | null;
  /** Node itself with ajuste and its addon loaded. */
  runtime: number;
  /** weights + gradients + resident optimizer state + activation peak + runtime. */
  total: number;
  notes: string[];
}

/**
 * Resident set of Node 20 with ajuste's compiled library and the native addon loaded, before any model:
 * measured 68.4 MB (`node -e` importing dist/index.js and calling kernels(), three runs 68.2-68.5; it was
 * 54.6 MB before the tokenizer, chat-template and data modules grew; bare `node -e` with only the addon
 * loaded: 41.9 MB). The V8 heap a run adds (tokenizer, records while tokenizing) is not counted.
 */
export const NODE_RUNTIME_BYTES = 68e6;

/** bitsandbytes 8-bit optimizers keep f32 states for tensors smaller than this (min_8bit_size). */
const MIN_8BIT_SIZE = 4096;
/** bitsandbytes pages optimizer state only for tensors with at least this many elements. */
const MIN_PAGED_SIZE = 1e5;
/** Block size of 8-bit optimizer states (bitsandbytes >= 0.44). */
const OPT8_BLOCK = 256;

// ---------------------------------------------------------------- parameters

interface ParamTensor {
  name: string;
  numel: number;
  kind: 'linear' | 'lm_head' | 'embedding' | 'vector' | 'lora' | 'adapter';
  trainable: boolean;
  precision: Precision;
}

interface LinearInfo {
  /** Module path (weight name without `.weight`). */
  path: string;
  inF: number;
  outF: number;
}

function linearsOf(c: ModelConfig): LinearInfo[] {
  const out: LinearInfo[] = [];
  for (const [name, shape] of weightShapes(c)) {
    if (shape.length !== 2 || !name.endsWith('.weight') || /embed_tokens|wte|wpe/.test(name)) continue;
    const [a, b] = [shape[0]!, shape[1]!];
    const [outF, inF] = isConv1dWeight(c, name) ? [b, a] : [a, b];
    out.push({ path: name.slice(0, -'.weight'.length), inF, outF });
  }
  return out;
}

/** The module paths LoRA wraps, with PEFT's matching (exact name or '.'-suffix; all-linear = all but lm_head). */
export function loraTargets(c: ModelConfig, targets?: 'all-linear' | string[]): string[] {
  const linears = linearsOf(c).map((l) => l.path);
  const t = targets ?? DEFAULT_TARGETS[c.modelType] ?? DEFAULT_TARGETS[c.arch];
  if (!t) throw new UserError(`no default LoRA targets for model_type '${c.modelType}'`, 'pass --targets (e.g. q_proj,v_proj or all-linear)');
  const chosen = t === 'all-linear' ? linears.filter((p) => p !== 'lm_head') : linears.filter((p) => t.some((n) => p === n || p.endsWith(`.${n}`)));
  if (chosen.length === 0) {
    const names = [...new Set(linears.map((p) => p.split('.').pop()))].join(', ');
    throw new UserError(`LoRA targets ${JSON.stringify(t)} match no Linear module of this ${c.modelType} model`, `its Linear modules are named: ${names}`);
  }
  return chosen;
}

function paramInventory(c: ModelConfig, method: TrainMethod, r: number, targets: string[], weightDtype: 'float32' | 'bfloat16', doubleQuant: boolean): ParamTensor[] {
  const frozen16: Precision = weightDtype === 'bfloat16' ? 'bf16' : 'fp32';
  const out: ParamTensor[] = [];
  for (const [name, shape] of weightShapes(c)) {
    const numel = shape.reduce((a, b) => a * b, 1);
    const isEmbedding = /embed_tokens|wte|wpe/.test(name);
    const kind: ParamTensor['kind'] = shape.length === 1 ? 'vector' : isEmbedding ? 'embedding' : name === 'lm_head.weight' ? 'lm_head' : 'linear';
    let precision: Precision;
    if (method === 'full' || kind === 'vector') precision = 'fp32'; // norms and biases are always f32 in ajuste
    else if (method === 'qlora' && kind === 'linear') precision = doubleQuant ? 'nf4-dq' : 'nf4';
    else precision = frozen16;
    out.push({ name, numel, kind, trainable: method === 'full', precision });
  }
  if (method !== 'full') {
    const byPath = new Map(linearsOf(c).map((l) => [l.path, l]));
    for (const path of targets) {
      const l = byPath.get(path)!;
      out.push({ name: `${path}.lora_A.weight`, numel: r * l.inF, kind: 'lora', trainable: true, precision: 'fp32' });
      out.push({ name: `${path}.lora_B.weight`, numel: l.outF * r, kind: 'lora', trainable: true, precision: 'fp32' });
    }
  }
  return out;
}

function quantBreakdown(tensors: ParamTensor[], doubleQuant: boolean): QuantBreakdown | null {
  const q = tensors.filter((t) => t.precision === 'nf4' || t.precision === 'nf4-dq');
  if (q.length === 0) return null;
  const b: QuantBreakdown = { params: 0, tensors: q.length, data: 0, absmax: 0, nestedAbsmax: 0, quantMaps: 0, total: 0 };
  for (const t of q) {
    const x = quantizedLinearBytes(t.numel, { doubleQuant });
    b.params += t.numel;
    b.data += x.data;
    b.absmax += x.absmax;
    b.nestedAbsmax += x.nestedAbsmax;
    b.quantMaps += x.quantMap + x.nestedQuantMap;
    b.total += x.total;
  }
  return b;
}

function tensorBytes(t: ParamTensor, doubleQuant: boolean): number {
  if (t.precision === 'nf4' || t.precision === 'nf4-dq') return quantizedLinearBytes(t.numel, { doubleQuant }).total;
  return t.numel * bytesPerParam(t.precision);
}

const PRECISION_ORDER: Precision[] = ['fp32', 'bf16', 'fp16', 'int8', 'nf4-dq', 'nf4', 'fp4'];

function byPrecision(tensors: ParamTensor[], doubleQuant: boolean): PrecisionRow[] {
  const rows = new Map<Precision, PrecisionRow>();
  for (const t of tensors) {
    const row = rows.get(t.precision) ?? { precision: t.precision, params: 0, bytes: 0 };
    row.params += t.numel;
    row.bytes += tensorBytes(t, doubleQuant);
    rows.set(t.precision, row);
  }
  return PRECISION_ORDER.filter((p) => rows.has(p)).map((p) => rows.get(p)!);
}

// ---------------------------------------------------------------- optimizer

/** Optimizer state bytes of trainable tensors with these element counts. */
export function optimizerBytes(name: OptimName, trainableNumels: number[]): OptimizerBytes {
  let bytes = 0, pageable = 0;
  const paged = name.startsWith('paged_');
  for (const n of trainableNumels) {
    let s: number;
    switch (name) {
      case 'adamw_torch':
      case 'paged_adamw_32bit':
        s = 8 * n; // exp_avg + exp_avg_sq in f32
        break;
      case 'adamw_8bit':
      case 'paged_adamw_8bit':
        // two u8 states + one f32 absmax per 256-block each; small tensors keep f32 states.
        s = n < MIN_8BIT_SIZE ? 8 * n : 2 * n + 2 * 4 * Math.ceil(n / OPT8_BLOCK);
        break;
      case 'sgd':
        s = 0; // ajuste's SGD defaults to no momentum
        break;
      default:
        throw new UserError(`unknown optimizer '${String(name)}'`, `use one of ${OPTIMIZERS.join(', ')}`);
    }
    bytes += s;
    if (paged && n >= MIN_PAGED_SIZE) pageable += s;
  }
  return { name, bytes, resident: bytes - pageable, pageable };
}

// ---------------------------------------------------------------- the step simulator

interface STensor {
  size: number;
  /** requiresGrad */
  rg: boolean;
  /** 'param': a parameter whose .grad exists already (steady state); 'leaf': a leaf whose .grad is created on first use. */
  kind: 'param' | 'leaf' | 'node';
  /** Elements of the gradient being accumulated (gradBuf for nodes, .grad for leaves), 0 = none. */
  gb: number;
  /** Whether this tensor owns storage from memory.ts (views and parameters do not). */
  owned: boolean;
  node: SNode | null;
}

interface SNode {
  out: STensor;
  bw: (g: number) => void;
  release?: () => void;
}

/**
 * Replays tensor/autograd.ts on element counts: every `allocate` adds, every `release` subtracts,
 * and `peak` is the high-water mark. Buffers that the real ops allocate and never release (e.g. the
 * rstd of rmsNorm, the lse of attention) are allocated and never freed here too.
 */
class StepSim {
  alive = 0;
  peak = 0;
  private gradMode = true;
  private tape: SNode[] = [];
  private scopes: STensor[][] = [[]];

  alloc(n: number): void {
    this.alive += n;
    if (this.alive > this.peak) this.peak = this.alive;
  }

  free(n: number): void {
    this.alive -= n;
  }

  /** Allocates n elements and returns n (a buffer handed to addGradOwned). */
  fresh(n: number): number {
    this.alloc(n);
    return n;
  }

  /** A new tensor (Tensor.empty / zeros), or a view sharing storage (owned = false). */
  tensor(size: number, owned = true): STensor {
    if (owned) this.alloc(size);
    const t: STensor = { size, rg: false, kind: 'node', gb: 0, owned, node: null };
    this.scopes[this.scopes.length - 1]!.push(t);
    return t;
  }

  param(size: number, trainable: boolean): STensor {
    return { size, rg: trainable, kind: 'param', gb: 0, owned: false, node: null };
  }

  needs(...ts: (STensor | null)[]): boolean {
    return this.gradMode && ts.some((t) => t?.rg);
  }

  record(out: STensor, bw: (g: number) => void, release?: () => void): void {
    out.rg = true;
    const node: SNode = { out, bw, release };
    out.node = node;
    this.tape.push(node);
  }

  addGrad(t: STensor, n: number): void {
    if (!t.rg) return;
    if (t.kind === 'param') return; // accumulates into the existing .grad
    if (t.kind === 'leaf') {
      if (!t.gb) {
        this.alloc(t.size); // Tensor.zeros(...).keep()
        t.gb = t.size;
      }
      return;
    }
    if (!t.gb) {
      this.alloc(n); // floatLike copy
      t.gb = n;
    }
  }

  addGradOwned(t: STensor, n: number): void {
    if (t.rg && t.kind === 'node' && !t.gb) {
      t.gb = n;
      return;
    }
    this.addGrad(t, n);
    this.free(n);
  }

  private runBackward(end: number, start: number): void {
    for (let i = end; i >= start; i--) {
      const node = this.tape[i]!;
      const g = node.out.gb;
      if (g) {
        node.bw(g);
        node.out.gb = 0;
        this.free(g);
      }
      node.release?.();
      node.out.node = null;
    }
  }

  backward(loss: STensor): void {
    this.alloc(1); // the seed gradient copied into loss.gradBuf
    loss.gb = 1;
    const end = this.tape.indexOf(loss.node!);
    this.runBackward(end, 0);
    this.tape = this.tape.slice(end + 1);
  }

  noGrad<T>(fn: () => T): T {
    const prev = this.gradMode;
    this.gradMode = false;
    try {
      return fn();
    } finally {
      this.gradMode = prev;
    }
  }

  /** autograd.scope: frees the storage of tensors created inside except `keep`. */
  scope(fn: () => STensor): STensor {
    this.scopes.push([]);
    const out = fn();
    const created = this.scopes.pop()!;
    for (const t of created) {
      if (t === out || (t.node && this.tape.includes(t.node))) this.scopes[this.scopes.length - 1]!.push(t);
      else this.dispose(t);
    }
    return out;
  }

  dispose(t: STensor): void {
    if (t.owned) this.free(t.size);
    t.owned = false;
    t.size = 0;
  }

  /**
   * Gradient checkpointing of one layer as designed (DESIGN.md "Memory is explicit"): the no-grad
   * forward keeps only its output; backward recomputes the layer with recording on inside a scope.
   */
  checkpoint(x: STensor, fn: (x: STensor) => STensor): STensor {
    if (!this.gradMode) return fn(x);
    const out = this.scope(() => this.noGrad(() => fn(x)));
    this.record(out, (g) => {
      const start = this.tape.length;
      const xIn: STensor = { size: x.size, rg: x.rg, kind: 'leaf', gb: 0, owned: false, node: null };
      const y = this.scope(() => {
        const y = fn(xIn);
        if (!y.node) return y;
        this.addGrad(y, g);
        this.runBackward(this.tape.indexOf(y.node), start);
        this.tape.length = start;
        return y;
      });
      this.dispose(y);
      if (xIn.gb) {
        this.addGrad(x, xIn.size);
        this.free(xIn.gb);
      }
    });
    out.rg = true;
    return out;
  }

  // ------------------------------------------------------------ ops (mirrors of the real ones)

  /** tensor/ops.ts embedding. */
  embedding(tokens: number, W: STensor, dim: number): STensor {
    const out = this.tensor(tokens * dim);
    if (this.needs(W)) this.record(out, () => this.addGradOwned(W, this.fresh(W.size)));
    return out;
  }

  /** tensor/ops.ts gatherRows: a copy of `rows` rows; backward scatters into a gradient of x's size. */
  gatherRows(x: STensor, rows: number, dim: number): STensor {
    const out = this.tensor(rows * dim);
    if (this.needs(x)) this.record(out, () => this.addGradOwned(x, this.fresh(x.size)));
    return out;
  }

  /** Tensor.reshape: a view; backward copies the gradient into the base's buffer. */
  view(x: STensor): STensor {
    const out = this.tensor(x.size, false);
    if (this.needs(x)) this.record(out, (g) => this.addGrad(x, g));
    return out;
  }

  /** nn/ops/norm.ts rmsNorm (rstd is never released). */
  rmsNorm(x: STensor, w: STensor, dim: number): STensor {
    const out = this.tensor(x.size);
    this.alloc(x.size / dim);
    if (this.needs(x, w)) {
      this.record(out, () => {
        if (x.rg) this.alloc(x.size);
        if (w.rg) this.alloc(dim);
        if (x.rg) this.addGradOwned(x, x.size);
        if (w.rg) this.addGradOwned(w, dim);
      });
    }
    return out;
  }

  /** nn/ops/norm.ts layerNorm (rstd and mean are never released). */
  layerNorm(x: STensor, w: STensor, b: STensor, dim: number): STensor {
    const out = this.tensor(x.size);
    this.alloc((2 * x.size) / dim);
    if (this.needs(x, w, b)) {
      this.record(out, () => {
        if (x.rg) this.alloc(x.size);
        if (w.rg) this.alloc(dim);
        if (b.rg) this.alloc(dim);
        if (x.rg) this.addGradOwned(x, x.size);
        if (w.rg) this.addGradOwned(w, dim);
        if (b.rg) this.addGradOwned(b, dim);
      });
    }
    return out;
  }

  /** tensor/ops.ts linear. */
  linear(x: STensor, W: STensor, bias: STensor | null, inF: number, outF: number): STensor {
    const rows = x.size / inF;
    const out = this.tensor(rows * outF);
    if (this.needs(x, W, bias)) {
      this.record(out, () => {
        if (x.rg) this.addGradOwned(x, this.fresh(x.size));
        if (W.rg) this.addGradOwned(W, this.fresh(W.size));
        if (bias?.rg) this.addGradOwned(bias, this.fresh(outF));
      });
    }
    return out;
  }

  /** peft/lora-op.ts loraLinear (plain LoRA; u = drop(x) A^T and the dropped input are kept for backward). */
  lora(x: STensor, A: STensor, B: STensor, r: number, inF: number, outF: number, dropout: boolean): STensor {
    const rows = x.size / inF;
    const out = this.tensor(rows * outF);
    const xd = dropout ? x.size : 0;
    this.alloc(xd);
    this.alloc(rows * r);
    const release = () => {
      this.free(rows * r);
      this.free(xd);
    };
    if (!this.needs(x, A, B)) {
      release();
      return out;
    }
    this.record(
      out,
      () => {
        if (B.rg) this.addGradOwned(B, this.fresh(outF * r));
        this.alloc(rows * r); // gu
        if (A.rg) this.addGradOwned(A, this.fresh(r * inF));
        if (x.rg) {
          this.alloc(x.size); // gx
          if (dropout) {
            this.alloc(x.size); // branch
            this.free(x.size);
          }
          this.addGradOwned(x, x.size);
        }
        this.free(rows * r);
      },
      release,
    );
    return out;
  }

  /** nn/ops/rope.ts rope. */
  rope(x: STensor): STensor {
    const out = this.tensor(x.size);
    if (this.needs(x)) this.record(out, () => this.addGradOwned(x, this.fresh(x.size)));
    return out;
  }

  /** nn/ops/attention.ts attention (lse [B*H*T] is never released). */
  attention(q: STensor, k: STensor, v: STensor, lse: number): STensor {
    const out = this.tensor(q.size);
    this.alloc(lse);
    if (this.needs(q, k, v)) {
      this.record(out, () => {
        this.alloc(q.size + k.size + v.size);
        this.addGradOwned(q, q.size);
        this.addGradOwned(k, k.size);
        this.addGradOwned(v, v.size);
      });
    }
    return out;
  }

  /** tensor/ops.ts add (same shapes): backward copies the gradient into each input. */
  add(a: STensor, b: STensor): STensor {
    const out = this.tensor(a.size);
    if (this.needs(a, b)) {
      this.record(out, (g) => {
        this.addGrad(a, g);
        this.addGrad(b, g);
      });
    }
    return out;
  }

  /** tensor/ops.ts mul (same shapes): backward's product buffers are never released. */
  mul(a: STensor, b: STensor): STensor {
    const out = this.tensor(a.size);
    if (this.needs(a, b)) {
      this.record(out, (g) => {
        if (a.rg) this.addGrad(a, this.fresh(g));
        if (b.rg) this.addGrad(b, this.fresh(g));
      });
    }
    return out;
  }

  /** nn/ops/activations.ts pointwise activations (gelu). */
  pointwise(x: STensor): STensor {
    const out = this.tensor(x.size);
    if (this.needs(x)) this.record(out, () => this.addGradOwned(x, this.fresh(x.size)));
    return out;
  }

  /** nn/ops/activations.ts swiglu. */
  swiglu(gate: STensor, up: STensor): STensor {
    const out = this.tensor(gate.size);
    if (this.needs(gate, up)) {
      this.record(out, (g) => {
        if (gate.rg) this.alloc(g);
        if (up.rg) this.alloc(g);
        if (gate.rg) this.addGradOwned(gate, g);
        if (up.rg) this.addGradOwned(up, g);
      });
    }
    return out;
  }

  /** tensor/split.ts splitLast into equal parts (each backward's full-size buffer is never released). */
  splitLast(x: STensor, parts: number): STensor[] {
    const outs: STensor[] = [];
    for (let i = 0; i < parts; i++) {
      const out = this.tensor(x.size / parts);
      if (this.needs(x)) this.record(out, () => this.addGrad(x, this.fresh(x.size)));
      outs.push(out);
    }
    return outs;
  }

  /** nn/ops/loss.ts linearCrossEntropy: dh (and dW) are formed during the forward; one logits chunk at a time. */
  linearCrossEntropy(h: STensor, W: STensor, tokens: number, vocab: number): { out: STensor; scratch: number } {
    const chunk = Math.min(tokens, lossChunkRows(tokens, vocab));
    const gh = this.needs(h) ? h.size : 0;
    const gw = this.needs(W) ? W.size : 0;
    this.alloc(gh + gw);
    this.alloc(chunk * vocab);
    this.free(chunk * vocab);
    const out = this.tensor(1);
    if (gh || gw) {
      this.record(out, () => {
        if (gh) this.addGradOwned(h, gh);
        if (gw) this.addGradOwned(W, gw);
      });
    }
    return { out, scratch: chunk * vocab + gh + gw };
  }
}

interface SimResult {
  perLayer: number;
  afterForward: number;
  lossScratch: number;
  peak: number;
}

/**
 * One training step of `c` (forward, chunked loss, backward) on element counts; returns bytes.
 * Trainable parameter gradients are assumed to exist already (every step after the first), so they are
 * not part of the result (see MemoryEstimate.gradients).
 */
export function simulateStep(
  c: ModelConfig,
  o: {
    method: TrainMethod; r: number; targets: string[]; batch: number; maxLength: number; gradientCheckpointing: boolean; loraDropout: number;
    /** The hidden state needs a gradient from the first layer on (adapters inside every layer, the base frozen). */
    gradThroughBase?: boolean;
    /** lm: the chunked loss over the vocabulary; score: a value head (one output) on `scoreRows` gathered rows. */
    head?: 'lm' | 'score';
    scoreRows?: number;
    /** A no-grad forward only (PPO's rollout): nothing is recorded, nothing freed before the end. */
    forwardOnly?: boolean;
  },
): SimResult {
  const sim = new StepSim();
  return o.forwardOnly ? sim.noGrad(() => runSim(sim, c, o)) : runSim(sim, c, o);
}

function runSim(sim: StepSim, c: ModelConfig, o: Parameters<typeof simulateStep>[1]): SimResult {
  const N = o.batch * o.maxLength;
  const C = c.hidden, I = c.intermediate, H = c.heads, Hkv = c.kvHeads, D = c.headDim;
  const full = o.method === 'full';
  const targets = new Set(o.targets);
  const shapes = new Map(weightShapes(c));
  const numel = (name: string) => (shapes.get(name) ?? []).reduce((a, b) => a * b, 1);
  const p = (name: string): STensor | null => (shapes.has(name) ? sim.param(numel(name), full) : null);
  const proj = (path: string, x: STensor, inF: number, outF: number): STensor => {
    if (!full && targets.has(path)) {
      return sim.lora(x, sim.param(o.r * inF, true), sim.param(outF * o.r, true), o.r, inF, outF, o.loraDropout > 0);
    }
    return sim.linear(x, sim.param(outF * inF, full), p(`${path}.bias`), inF, outF);
  };

  const llamaLayer = (i: number) => (h: STensor): STensor => {
    const pre = `model.layers.${i}`;
    const x = sim.rmsNorm(h, p(`${pre}.input_layernorm.weight`)!, C);
    const q = sim.view(proj(`${pre}.self_attn.q_proj`, x, C, H * D));
    const k = sim.view(proj(`${pre}.self_attn.k_proj`, x, C, Hkv * D));
    const v = sim.view(proj(`${pre}.self_attn.v_proj`, x, C, Hkv * D));
    const a = sim.attention(sim.rope(q), sim.rope(k), v, N * H);
    h = sim.add(h, proj(`${pre}.self_attn.o_proj`, sim.view(a), H * D, C));
    const x2 = sim.rmsNorm(h, p(`${pre}.post_attention_layernorm.weight`)!, C);
    const gate = proj(`${pre}.mlp.gate_proj`, x2, C, I);
    const up = proj(`${pre}.mlp.up_proj`, x2, C, I);
    const act = c.activation === 'silu' ? sim.swiglu(gate, up) : sim.mul(sim.pointwise(gate), up);
    return sim.add(h, proj(`${pre}.mlp.down_proj`, act, I, C));
  };

  const gpt2Layer = (i: number) => (h: STensor): STensor => {
    const pre = `transformer.h.${i}`;
    const x = sim.layerNorm(h, p(`${pre}.ln_1.weight`)!, p(`${pre}.ln_1.bias`)!, C);
    const [q, k, v] = sim.splitLast(proj(`${pre}.attn.c_attn`, x, C, 3 * C), 3) as [STensor, STensor, STensor];
    const a = sim.attention(sim.view(q), sim.view(k), sim.view(v), N * H);
    h = sim.add(h, proj(`${pre}.attn.c_proj`, sim.view(a), C, C));
    const x2 = sim.layerNorm(h, p(`${pre}.ln_2.weight`)!, p(`${pre}.ln_2.bias`)!, C);
    const f = sim.pointwise(proj(`${pre}.mlp.c_fc`, x2, C, I));
    return sim.add(h, proj(`${pre}.mlp.c_proj`, f, I, C));
  };

  const embedName = c.arch === 'gpt2' ? 'transformer.wte.weight' : 'model.embed_tokens.weight';
  const embed = p(embedName)!;
  let h = sim.embedding(N, embed, C);
  if (c.arch === 'gpt2') h = sim.add(h, sim.embedding(N, p('transformer.wpe.weight')!, C));
  if (o.gradThroughBase && !o.forwardOnly) h.rg = true; // as if an adapter sat on the embedding output: every layer records its backward
  let perLayer = 0;
  for (let i = 0; i < c.layers; i++) {
    const layer = c.arch === 'gpt2' ? gpt2Layer(i) : llamaLayer(i);
    const before = sim.alive;
    h = o.gradientCheckpointing ? sim.checkpoint(h, layer) : layer(h);
    if (i === Math.min(1, c.layers - 1)) perLayer = sim.alive - before; // layer 0 differs when the embedding is frozen
  }
  h = c.arch === 'gpt2' ? sim.layerNorm(h, p('transformer.ln_f.weight')!, p('transformer.ln_f.bias')!, C) : sim.rmsNorm(h, p('model.norm.weight')!, C);
  let loss: STensor;
  let scratch = 0;
  if (o.head === 'score') {
    // ppo.ts responseValues: gatherRows of the response positions, then the [1, C] score head.
    const rows = o.scoreRows ?? N;
    loss = sim.linear(sim.gatherRows(sim.view(h), rows, C), sim.param(C, !o.forwardOnly), null, C, 1);
  } else {
    const head = c.tieEmbeddings ? embed : p('lm_head.weight')!;
    ({ out: loss, scratch } = sim.linearCrossEntropy(sim.view(h), head, N, c.vocabSize));
  }
  const afterForward = sim.alive;
  if (!o.forwardOnly) sim.backward(loss);
  return { perLayer: perLayer * 4, afterForward: afterForward * 4, lossScratch: scratch * 4, peak: sim.peak * 4 };
}

// ---------------------------------------------------------------- estimates

function positiveInt(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 1) throw new UserError(`${what} must be a positive integer, got ${v}`);
  return v;
}

/** What a training run of `config` needs, in bytes. */
export function estimateMemory(config: ModelConfig, o: MemoryOptions): MemoryEstimate {
  const method = o.method;
  if (method !== 'full' && method !== 'lora' && method !== 'qlora') throw new UserError(`unknown method '${String(method)}'`, 'use full, lora or qlora');
  const r = positiveInt(o.r ?? 8, 'r');
  const batch = positiveInt(o.batch ?? 4, 'batch');
  const maxLength = positiveInt(o.maxLength ?? 512, 'max length');
  const loraDropout = o.loraDropout ?? 0;
  if (!(loraDropout >= 0 && loraDropout < 1)) throw new UserError(`LoRA dropout must be in [0, 1), got ${loraDropout}`);
  const optim = o.optim ?? (method === 'qlora' ? 'paged_adamw_32bit' : 'adamw_torch');
  if (!OPTIMIZERS.includes(optim)) throw new UserError(`unknown optimizer '${optim}'`, `use one of ${OPTIMIZERS.join(', ')}`);
  // As the sft recipe loads (dtype 'auto'): bf16 checkpoints stay bf16, f16 and f32 ones become f32.
  const weightDtype = o.weightDtype ?? (method !== 'full' && config.torchDtype === 'bfloat16' ? 'bfloat16' : 'float32');
  if (method === 'full' && weightDtype !== 'float32') {
    throw new UserError('full fine-tuning trains f32 weights in ajuste; weight dtype bfloat16 applies to frozen weights (lora, qlora) only');
  }
  const doubleQuant = o.doubleQuant ?? true;
  const gradientCheckpointing = o.gradientCheckpointing ?? false;
  const bottleneck = o.bottleneck ?? null;
  if (bottleneck && method === 'full') throw new UserError('bottleneck adapters train on a frozen base: use them with method lora (or qlora) here');
  const targets = method === 'full' || bottleneck ? [] : loraTargets(config, o.targets);

  const tensors = paramInventory(config, method, r, targets, weightDtype, doubleQuant);
  bottleneck?.forEach((numel, i) => {
    tensors.push({ name: `adapter.${i}`, numel, kind: 'adapter', trainable: true, precision: 'fp32' });
  });
  const rows = byPrecision(tensors, doubleQuant);
  const total = tensors.reduce((s, t) => s + t.numel, 0);
  const trainableTensors = tensors.filter((t) => t.trainable);
  const trainable = trainableTensors.reduce((s, t) => s + t.numel, 0);
  const weights = rows.reduce((s, row) => s + row.bytes, 0);
  const gradients = 4 * trainable;
  const optimizer = optimizerBytes(optim, trainableTensors.map((t) => t.numel));
  const sim = simulateStep(config, { method, r, targets, batch, maxLength, gradientCheckpointing, loraDropout, gradThroughBase: bottleneck !== null });
  const activations: ActivationBreakdown = {
    tokens: batch * maxLength,
    perLayer: sim.perLayer,
    afterForward: sim.afterForward,
    lossScratch: sim.lossScratch,
    backwardExtra: Math.max(0, sim.peak - sim.afterForward),
    peak: sim.peak,
  };
  const notes: string[] = [];
  if (optimizer.pageable > 0) notes.push(`paged optimizer: ${formatMB(optimizer.pageable)} MB of state may be paged out and is not in the total`);
  if (method === 'qlora') notes.push('qlora: every Linear except lm_head is 4-bit NF4; embeddings and lm_head stay ' + weightDtype);
  if (bottleneck) notes.push("bottleneck: activations are the frozen base's with gradients flowing through every layer; the adapters' own (a few per layer) are not counted");
  notes.push('activations assume every sequence is padded to max length');
  return {
    method,
    settings: {
      r: method === 'full' || bottleneck ? null : r,
      targets: method === 'full' || bottleneck ? null : (o.targets ?? targets.map((t) => t.split('.').pop()!).filter((t, i, a) => a.indexOf(t) === i)),
      batch,
      maxLength,
      optim,
      gradientCheckpointing,
      weightDtype,
      doubleQuant: method === 'qlora' ? doubleQuant : null,
    },
    model: {
      modelType: config.modelType,
      layers: config.layers,
      hidden: config.hidden,
      intermediate: config.intermediate,
      heads: config.heads,
      kvHeads: config.kvHeads,
      vocab: config.vocabSize,
    },
    params: { total, trainable, frozen: total - trainable, byPrecision: rows },
    quantized: quantBreakdown(tensors, doubleQuant),
    weights,
    gradients,
    optimizer,
    activations,
    runtime: NODE_RUNTIME_BYTES,
    total: weights + gradients + optimizer.resident + activations.peak + NODE_RUNTIME_BYTES,
    notes,
  };
}

export interface PpoMemoryOptions {
  /** The policy's method: lora or qlora (ppo.ts refuses the others). */
  method: 'lora' | 'qlora';
  r?: number;
  targets?: 'all-linear' | string[];
  loraDropout?: number;
  /** per_device_train_batch_size: rows of one update micro-batch. */
  micro: number;
  /** per_device_train_batch_size × gradient_accumulation_steps: rows of one rollout batch. */
  rollout: number;
  /** Row length: the longest prompt + response_length (ppo.ts pads every row to it). */
  seqLength: number;
  responseLength: number;
  optim?: OptimName;
  gradientCheckpointing?: boolean;
  doubleQuant?: boolean;
}

export interface PpoMemoryEstimate {
  /** The policy alone as estimateMemory gives it (weights, its LoRA states, one update micro-batch). */
  policy: MemoryEstimate;
  /** The reward model's frozen weights (base + score head) and again for the value model's copy. */
  rewardWeights: number;
  valueWeights: number;
  /** The value model's trainable parameters: LoRA on its body (the run's lora settings) + the score head. */
  valueTrainable: number;
  weights: number;
  gradients: number;
  optimizer: OptimizerBytes;
  activations: {
    /** The largest of the four no-grad forwards over the rollout batch (policy, reference, value, reward). */
    rollout: number;
    /** One update micro-batch: the policy's and the value model's forward graphs are alive together in backward. */
    update: number;
    peak: number;
  };
  runtime: number;
  total: number;
  notes: string[];
}

/**
 * trainer ppo (ppo.ts): the policy (the run's model with LoRA / QLoRA; the reference is the same weights with
 * the adapters off), the reward model and a second copy of it as the value model (frozen body + LoRA + score
 * head, trained), the optimizer over the policy's and the value model's trainable tensors, and the larger of
 * the rollout's and an update's activations.
 */
export function estimatePpoMemory(policyConfig: ModelConfig, rewardConfig: ModelConfig, o: PpoMemoryOptions): PpoMemoryEstimate {
  const micro = positiveInt(o.micro, 'batch');
  const rollout = positiveInt(o.rollout, 'rollout batch');
  const T = positiveInt(o.seqLength, 'sequence length');
  const R = positiveInt(o.responseLength, 'response length');
  const r = positiveInt(o.r ?? 8, 'r');
  const optim = o.optim ?? (o.method === 'qlora' ? 'paged_adamw_32bit' : 'adamw_torch');
  const gradientCheckpointing = o.gradientCheckpointing ?? false;
  const loraDropout = o.loraDropout ?? 0;
  const policy = estimateMemory(policyConfig, { method: o.method, r, targets: o.targets, loraDropout, batch: micro, maxLength: T, optim, gradientCheckpointing, doubleQuant: o.doubleQuant });
  // The reward and value models load as stored (dtype auto), never 4-bit; the value model gets the run's LoRA.
  const rm = estimateMemory(rewardConfig, { method: 'lora', r, targets: o.targets, batch: micro, maxLength: T, optim });
  const loraBytes = rm.params.trainable * 4;
  const score = rewardConfig.hidden; // score.weight [1, hidden], f32
  const rewardWeights = rm.weights - loraBytes + 4 * score;
  const valueTrainable = rm.params.trainable + score;
  const valueWeights = rewardWeights + loraBytes; // the same base and head, plus its LoRA tensors
  const weights = policy.weights + rewardWeights + valueWeights;
  const gradients = policy.gradients + 4 * valueTrainable;
  const valueNumels: number[] = [];
  for (const path of loraTargets(rewardConfig, o.targets)) {
    const l = linearsOf(rewardConfig).find((x) => x.path === path)!;
    valueNumels.push(r * l.inF, l.outF * r);
  }
  valueNumels.push(score);
  const policyNumels = paramInventory(policyConfig, o.method, r, loraTargets(policyConfig, o.targets), policy.settings.weightDtype, o.doubleQuant ?? true)
    .filter((t) => t.trainable)
    .map((t) => t.numel);
  const optimizer = optimizerBytes(optim, [...policyNumels, ...valueNumels]);
  const base = { r, targets: loraTargets(policyConfig, o.targets), gradientCheckpointing: false, loraDropout, forwardOnly: true } as const;
  const rolloutPeak = Math.max(
    simulateStep(policyConfig, { ...base, method: o.method, batch: rollout, maxLength: T }).peak, // policy and reference log-probabilities
    simulateStep(rewardConfig, { ...base, targets: loraTargets(rewardConfig, o.targets), method: 'lora', batch: rollout, maxLength: T, head: 'score', scoreRows: rollout * R }).peak, // values
    simulateStep(rewardConfig, { ...base, targets: [], method: 'lora', batch: rollout, maxLength: T, head: 'score', scoreRows: rollout }).peak, // scores
  );
  const valueStep = simulateStep(rewardConfig, {
    method: 'lora', r, targets: loraTargets(rewardConfig, o.targets), batch: micro, maxLength: T, gradientCheckpointing, loraDropout: 0, head: 'score', scoreRows: micro * R,
  });
  // ppo.ts: both forwards, then one backward; the value model's graph (recorded last) is released first.
  const update = (policy.activations?.afterForward ?? 0) + valueStep.peak;
  const peak = Math.max(rolloutPeak, update, policy.activations?.peak ?? 0);
  const notes = [
    'ppo: policy + reward model + value model (a second copy of the reward model with LoRA and its score head trained); the reference is the policy with its adapters off (no copy)',
    'ppo: not counted: the KV cache of sampling (one prompt at a time) and the rollout buffers (a few floats per response token); the reward model is counted as its full architecture (a headless reward folder has no lm_head: an overcount)',
    "ppo: the value model's LoRA is counted with the run's lora settings (a SEQ_CLS reward adapter brings its own r and targets)",
  ];
  if (optimizer.pageable > 0) notes.push(`paged optimizer: ${formatMB(optimizer.pageable)} MB of state may be paged out and is not in the total`);
  return {
    policy,
    rewardWeights,
    valueWeights,
    valueTrainable,
    weights,
    gradients,
    optimizer,
    activations: { rollout: rolloutPeak, update, peak },
    runtime: NODE_RUNTIME_BYTES,
    total: weights + gradients + optimizer.resident + peak + NODE_RUNTIME_BYTES,
    notes,
  };
}

/**
 * A what-if for a parameter count alone (`--params 1e9`): full = f32 weights + f32 gradients + optimizer
 * state for all of them; lora = bf16 weights; qlora = NF4 with double quantization. Without an
 * architecture neither activations nor the (small) LoRA parameters can be counted; the notes say so.
 */
export function estimateFromParams(nParams: number, method: TrainMethod, o: { optim?: OptimName } = {}): MemoryEstimate {
  if (!Number.isFinite(nParams) || nParams <= 0) throw new UserError(`--params must be a positive number, got ${nParams}`);
  if (method !== 'full' && method !== 'lora' && method !== 'qlora') throw new UserError(`unknown method '${String(method)}'`, 'use full, lora or qlora');
  const n = Math.round(nParams);
  const optim = o.optim ?? (method === 'qlora' ? 'paged_adamw_32bit' : 'adamw_torch');
  const precision: Precision = method === 'full' ? 'fp32' : method === 'lora' ? 'bf16' : 'nf4-dq';
  const weights = n * bytesPerParam(precision);
  const trainable = method === 'full' ? n : 0;
  // One tensor of n elements: paged optimizers would page it all.
  const optimizer = optimizerBytes(optim, trainable ? [trainable] : []);
  const notes = ['activations are not included: pass --model with a config.json to count them'];
  if (method !== 'full') notes.push('LoRA parameters, their gradients and optimizer state are not included (they need the architecture; usually < 1% of the model)');
  if (optimizer.pageable > 0) notes.push(`paged optimizer: ${formatMB(optimizer.pageable)} MB of state may be paged out and is not in the total`);
  const gradients = 4 * trainable;
  return {
    method,
    settings: { r: null, targets: null, batch: null, maxLength: null, optim, gradientCheckpointing: false, weightDtype: method === 'full' ? 'float32' : 'bfloat16', doubleQuant: method === 'qlora' ? true : null },
    model: null,
    params: { total: n, trainable, frozen: n - trainable, byPrecision: [{ precision, params: n, bytes: weights }] },
    quantized: null,
    weights,
    gradients,
    optimizer,
    activations: null,
    runtime: NODE_RUNTIME_BYTES,
    total: weights + gradients + optimizer.resident + NODE_RUNTIME_BYTES,
    notes,
  };
}

/** Bytes to hold n parameters in each precision ("1B parameters need 4 GB in fp32 just to load"). */
export function loadBytes(nParams: number): { precision: Precision; bytes: number }[] {
  return (['fp32', 'bf16', 'int8', 'nf4', 'nf4-dq'] as const).map((p) => ({ precision: p, bytes: nParams * bytesPerParam(p) }));
}

// ---------------------------------------------------------------- formatting

/** Decimal gigabytes with 3 significant digits ("3.24", "0.101"). */
export function formatGB(bytes: number): string {
  const gb = bytes / 1e9;
  if (gb === 0) return '0';
  if (Math.abs(gb) < 0.001) return '<0.001';
  return gb.toPrecision(3);
}

/** Decimal megabytes with one decimal ("101.2"). */
export function formatMB(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toPrecision(3)}B`;
  if (n >= 1e6) return `${(n / 1e6).toPrecision(3)}M`;
  if (n >= 1e3) return `${(n / 1e3).toPrecision(3)}K`;
  return String(n);
}

/** The estimate as a plain-text table (GB = 1e9 bytes, MB = 1e6 bytes). */
export function formatMemoryTable(e: MemoryEstimate): string {
  const rows: [string, string, number | null][] = [];
  for (const p of e.params.byPrecision) rows.push([`  ${p.precision}`, formatCount(p.params), p.bytes]);
  const q = e.quantized;
  if (q) {
    rows.push(['    4-bit data', '', q.data]);
    rows.push([`    absmax (${e.settings.doubleQuant ? 'u8' : 'f32'})`, '', q.absmax]);
    if (e.settings.doubleQuant) rows.push(['    nested absmax', '', q.nestedAbsmax]);
    rows.push(['    quant maps', '', q.quantMaps]);
  }
  rows.push(['weights', formatCount(e.params.total), e.weights]);
  rows.push(['gradients', formatCount(e.params.trainable), e.gradients]);
  rows.push([`optimizer (${e.optimizer.name})`, '', e.optimizer.resident]);
  if (e.optimizer.pageable > 0) rows.push(['  pageable (not in total)', '', e.optimizer.pageable]);
  const a = e.activations;
  if (a) {
    rows.push([`activations (${a.tokens} tokens)`, '', a.peak]);
    rows.push(['  per decoder layer', '', a.perLayer]);
    rows.push(['  alive after forward', '', a.afterForward]);
    rows.push(['  loss scratch', '', a.lossScratch]);
    rows.push(['  backward extra', '', a.backwardExtra]);
  } else rows.push(['activations', '', null]);
  rows.push(['runtime (node + addon)', '', e.runtime]);
  rows.push(['total', '', e.total]);

  const header = ['', 'params', 'GB', 'MB'];
  const cells = rows.map(([label, count, bytes]) => [label, count, bytes === null ? 'n/a' : formatGB(bytes), bytes === null ? 'n/a' : formatMB(bytes)]);
  const all = [header, ['parameters by precision', '', '', ''], ...cells];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const s = e.settings;
  const title = e.model
    ? `${e.model.modelType} (${e.model.layers} layers, hidden ${e.model.hidden}), ${e.method}` +
      (s.r === null ? '' : `, r=${s.r}`) +
      `, batch ${s.batch} x ${s.maxLength} tokens, ${s.optim}${s.gradientCheckpointing ? ', gradient checkpointing' : ''}`
    : `${formatCount(e.params.total)} parameters, ${e.method}, ${s.optim}`;
  const out = [title, line(header), ...all.slice(1).map(line)];
  for (const n of e.notes) out.push(`note: ${n}`);
  return out.join('\n');
}
