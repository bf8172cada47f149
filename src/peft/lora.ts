/**
 * LoRA (Hu et al. 2021) as Hugging Face PEFT does it: a frozen base Linear W plus a trainable low-rank
 * update, y = x W^T + b + s * dropout(x) A^T B^T, with A [r, in] ~ kaiming-uniform(a=sqrt(5)) (or
 * N(0, 1/r) for init 'gaussian'), B [out, r] = 0, s = alpha/r (rsLoRA: alpha/sqrt(r)); DoRA adds a
 * magnitude vector. Module paths match PEFT's (q_proj.base_layer, q_proj.lora_A, q_proj.lora_B,
 * q_proj.lora_magnitude_vector), so state-dict keys are PEFT's.
 */
import { UserError } from '../errors.js';
import { bf16ToF32 } from '../io/dtypes.js';
import { Linear, type LinearLike } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import type { CausalLM } from '../models/causal-lm.js';
import { Linear4bit } from '../quant/linear4bit.js';
import { parameter } from '../tensor/autograd.js';
import type { Rng } from '../tensor/rng.js';
import { Tensor } from '../tensor/tensor.js';
import { DEFAULT_TARGETS, type LoraConfig, loraScaling, peftModulesToSave, SEQ_CLS_MODULES } from './config.js';
import { doraWeightNorm, loraLinear } from './lora-op.js';

export class LoraLinear extends Module implements LinearLike {
  readonly r: number;
  readonly alpha: number;
  scaling: number;
  merged = false;

  constructor(
    base: Linear | Linear4bit,
    opts: { r: number; alpha: number; rslora: boolean; dropout: number; dora: boolean; init: boolean | 'gaussian'; rng: Rng },
    readonly dropoutRng: Rng,
  ) {
    super();
    this.r = opts.r;
    this.alpha = opts.alpha;
    this.scaling = loraScaling(opts.alpha, opts.r, opts.rslora);
    this.dropout = opts.dropout;
    const { inFeatures: inF, outFeatures: outF } = base;
    const A = Tensor.zeros([opts.r, inF]);
    const B = Tensor.zeros([outF, opts.r]);
    if (opts.init === 'gaussian') opts.rng.fillNormal(A.f as Float32Array, 0, 1 / opts.r);
    else if (opts.init === true) {
      const bound = 1 / Math.sqrt(inF); // kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3/fan_in)
      opts.rng.fillUniform(A.f as Float32Array, -bound, bound);
    }
    // init false: A random as above would change the output; PEFT then leaves B random instead. Keep B = 0.
    this.addModule('base_layer', base);
    this.addModule('lora_A', new Linear(A));
    this.addModule('lora_B', new Linear(B));
    if (opts.dora) {
      const norms = doraWeightNorm(base, A, B, this.scaling);
      this.params.lora_magnitude_vector = Tensor.from(Float32Array.from(norms), [outF]);
    }
  }

  dropout: number;

  get base(): Linear | Linear4bit {
    return this.child<Linear | Linear4bit>('base_layer');
  }
  /** The 4-bit base layer (also while merged), or null for a plain base. */
  get base4bit(): Linear4bit | null {
    return this.original4bit ?? (this.base instanceof Linear4bit ? this.base : null);
  }
  get A(): Tensor {
    return this.child<Linear>('lora_A').weight;
  }
  get B(): Tensor {
    return this.child<Linear>('lora_B').weight;
  }
  get magnitude(): Tensor | null {
    return this.params.lora_magnitude_vector ?? null;
  }
  get inFeatures(): number {
    return this.base.inFeatures;
  }

  private original: Tensor | null = null;
  /** The 4-bit base while merged (the merged weight lives in a plain f32 Linear meanwhile). */
  private original4bit: Linear4bit | null = null;

  /**
   * Folds the update into the base weight (f32); forward then runs the plain base layer. A 4-bit base is
   * dequantized: base_layer becomes an f32 Linear with the merged weight (nothing is re-quantized).
   */
  merge(): void {
    if (this.merged) return;
    const base = this.base;
    if (base instanceof Linear4bit) {
      const w = Tensor.from(this.mergedWeight(), [base.outFeatures, base.inFeatures], 'f32').keep();
      this.original4bit = base;
      this.children.base_layer = new Linear(w, base.bias);
      this.merged = true;
      return;
    }
    this.original = base.weight;
    const w = Tensor.from(this.mergedWeight(), [...this.original.shape], 'f32').keep();
    base.setWeight(w);
    this.merged = true;
  }

  /** Restores the exact original base weight. */
  unmerge(): void {
    if (this.merged && this.original4bit) {
      this.children.base_layer = this.original4bit;
      this.original4bit = null;
      this.merged = false;
      return;
    }
    if (!this.merged || !this.original) return;
    (this.base as Linear).setWeight(this.original);
    this.original = null;
    this.merged = false;
  }
  get outFeatures(): number {
    return this.base.outFeatures;
  }

  forward(x: Tensor): Tensor {
    if (this.merged) return this.base.forward(x);
    return loraLinear(x, {
      base: this.base,
      bias: this.base.bias,
      A: this.A,
      B: this.B,
      scaling: this.scaling,
      dropout: this.training ? this.dropout : 0,
      rng: this.training ? this.dropoutRng : null,
      magnitude: this.magnitude,
    });
  }

  /** The effective weight W + s·B·A (DoRA: rescaled rows), in f32. */
  mergedWeight(): Float32Array {
    const [outF, inF] = [this.outFeatures, this.inFeatures];
    const src = this.original ? (this.original.dtype === 'bf16' ? bf16ToF32(this.original.data as Uint16Array) : this.original.f) : this.original4bit ? this.original4bit.denseWeight() : this.base.denseWeight();
    const out = new Float32Array(outF * inF);
    const A = this.A.f, B = this.B.f, r = this.r, s = this.scaling;
    const m = this.magnitude?.f;
    const norms = m ? doraWeightNorm(src, this.A, this.B, s) : null;
    const row = new Float64Array(inF);
    for (let j = 0; j < outF; j++) {
      for (let k = 0; k < inF; k++) row[k] = src[j * inF + k]!;
      for (let q = 0; q < r; q++) {
        const b = s * B[j * r + q]!;
        if (b !== 0) for (let k = 0; k < inF; k++) row[k]! += b * A[q * inF + k]!;
      }
      const c = m && norms ? m[j]! / norms[j]! : 1;
      for (let k = 0; k < inF; k++) out[j * inF + k] = row[k]! * c;
    }
    return out;
  }
}

/** The pattern key of rank_pattern/alpha_pattern that applies to a module path (PEFT's get_pattern_key). */
function patternValue(patterns: Record<string, number>, path: string): number | undefined {
  for (const [k, v] of Object.entries(patterns)) {
    if (new RegExp(`(.*\\.)?(${k})$`).test(path)) return v;
  }
  return undefined;
}

function matchesList(path: string, names: string[]): boolean {
  return names.some((t) => path === t || path.endsWith(`.${t}`));
}

/** Layer index of a module path (model.layers.3.mlp... -> 3), as PEFT finds it. */
function layerIndex(path: string, pattern: string | string[] | null): number | null {
  const pats = pattern === null ? ['[^.]*'] : Array.isArray(pattern) ? pattern : [pattern];
  for (const p of pats) {
    const m = new RegExp(`.*\\.${p}\\.(\\d+)\\.`).exec(path);
    if (m) return Number(m[1]);
  }
  return null;
}

/** Which Linear modules of the model a LoraConfig targets (PEFT's check_target_module_exists). */
export function selectTargets(model: CausalLM, c: LoraConfig): string[] {
  const linears = model.namedModules().filter(([, m]) => m instanceof Linear || m instanceof Linear4bit).map(([p]) => p);
  let targets: string[];
  const t = c.target_modules ?? DEFAULT_TARGETS[model.config.modelType] ?? DEFAULT_TARGETS[model.config.arch];
  if (!t) throw new UserError(`lora.target_modules is not set and there is no default for model_type '${model.config.modelType}'`);
  if (t === 'all-linear') targets = linears.filter((p) => p !== 'lm_head');
  else if (typeof t === 'string') {
    const re = new RegExp(`^(?:${t})$`);
    targets = linears.filter((p) => re.test(p));
  } else targets = linears.filter((p) => matchesList(p, t));
  if (c.exclude_modules) {
    const ex = c.exclude_modules;
    targets = targets.filter((p) => (typeof ex === 'string' ? !new RegExp(`^(?:${ex})$`).test(p) : !matchesList(p, ex)));
  }
  // A sequence classifier's head trains in full (modules_to_save), never as a LoRA target (PEFT guards it).
  if (c.task_type === 'SEQ_CLS') targets = targets.filter((p) => !matchesList(p, [...SEQ_CLS_MODULES]));
  if (c.layers_to_transform !== null) {
    const want = new Set(Array.isArray(c.layers_to_transform) ? c.layers_to_transform : [c.layers_to_transform]);
    targets = targets.filter((p) => {
      const i = layerIndex(p, c.layers_pattern);
      return i !== null && want.has(i);
    });
  }
  if (targets.length === 0) {
    const names = [...new Set(linears.map((p) => p.split('.').pop()))].join(', ');
    throw new UserError(`lora.target_modules ${JSON.stringify(t)} matches no Linear module of this model`, `its Linear modules are named: ${names}`);
  }
  return targets;
}

export interface LoraApplied {
  targets: string[];
  /** Trainable parameters with their PEFT state-dict names (without the base_model.model. prefix). */
  trainable: [string, Tensor][];
}

/**
 * Wraps the targeted Linears of `model` in LoraLinear, freezes everything else, and makes
 * modules_to_save and the selected biases trainable. With task_type SEQ_CLS the classifier head
 * (`score`, which models/reward.ts adds before) trains and is saved too, as PEFT does.
 */
export function applyLora(model: CausalLM, c: LoraConfig, rng: Rng, dropoutRng: Rng): LoraApplied {
  for (const p of model.parameters()) p.requiresGrad = false;
  const saved = peftModulesToSave(c);
  const targets = selectTargets(model, c);
  for (const path of targets) {
    const base = model.getModule(path) as Linear | Linear4bit;
    const r = patternValue(c.rank_pattern, path) ?? c.r;
    const alpha = patternValue(c.alpha_pattern, path) ?? c.lora_alpha;
    const lora = new LoraLinear(base, { r, alpha, rslora: c.use_rslora, dropout: c.lora_dropout, dora: c.use_dora, init: c.init_lora_weights, rng }, dropoutRng);
    model.replaceModule(path, lora);
  }
  const trainable: [string, Tensor][] = [];
  for (const [name, p] of model.namedParameters()) {
    const isLora = /\.lora_(A|B)\.weight$|\.lora_magnitude_vector$/.test(name);
    const isBias = name.endsWith('.bias') && (c.bias === 'all' || (c.bias === 'lora_only' && name.endsWith('.base_layer.bias')));
    const moduleName = name.replace(/\.(weight|bias)$/, '');
    const isSaved = saved !== null && matchesList(moduleName, saved);
    if (isLora || isBias || isSaved) {
      // Trainable copies are f32 (a bf16 base keeps its frozen weights in bf16).
      let t = p;
      if (p.dtype === 'bf16') {
        t = Tensor.from(bf16ToF32(p.data as Uint16Array), [...p.shape], 'f32');
        model.replaceParameter(name, t);
      }
      parameter(t, name);
      trainable.push([name, t]);
    }
  }
  // The names the user gave must exist; of PEFT's SEQ_CLS heads, the one the model has (score) is enough.
  const has = (m: string) => trainable.some(([n]) => n.replace(/\.(weight|bias)$/, '').endsWith(m));
  for (const m of c.modules_to_save ?? []) if (!has(m)) throw new UserError(`lora.modules_to_save: no module named '${m}' in this model`);
  if (c.task_type === 'SEQ_CLS' && !SEQ_CLS_MODULES.some(has)) {
    throw new UserError('lora.task_type is SEQ_CLS but the model has no classifier head (score)', 'SEQ_CLS adapters are reward models: train them with trainer: reward, load them with ajuste eval');
  }
  return { targets, trainable };
}

/** PEFT's saved key for a trainable parameter name (adds base_model.model., maps base_layer.bias to bias). */
export function peftKey(name: string): string {
  return `base_model.model.${name.replace('.base_layer.bias', '.bias')}`;
}

/** Merges (or unmerges) every LoraLinear of the model in place. */
export function setMerged(model: CausalLM, merged: boolean): void {
  for (const [, m] of model.namedModules()) if (m instanceof LoraLinear) merged ? m.merge() : m.unmerge();
}
