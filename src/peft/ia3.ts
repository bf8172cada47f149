/**
 * (IA)^3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
 * Learning") as Hugging Face PEFT does it (peft/tuners/ia3/layer.py): one learned vector per targeted Linear.
 *
 *   attention-type target (k_proj, v_proj):  y = (x W^T + b) * l      l: ia3_l [out, 1]
 *   feedforward target (down_proj):          y = (x * l) W^T + b      l: ia3_l [1, in]
 *
 * l starts at ones (init_ia3_weights) so the adapted model equals the base model. The module path of the
 * vector is <target>.ia3_l, so the saved key is base_model.model.<target>.ia3_l, as PEFT writes it.
 */
import { UserError } from '../errors.js';
import { Linear, type FrozenWeight, type LinearLike } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import type { CausalLM } from '../models/causal-lm.js';
import { Linear4bit } from '../quant/linear4bit.js';
import { addGradOwned, needsGrad, parameter, record } from '../tensor/autograd.js';
import { Rng } from '../tensor/rng.js';
import { floatLike, releaseFloat, Tensor } from '../tensor/tensor.js';
import { ia3ConfigJson, type PeftMethodHandle, readAdapterConfigJson, readAdapterTensors, writeAdapterFolder } from './adapter-formats.js';

/** PEFT's IA3Config keys (the `ia3` section of a train config). */
export interface Ia3Config {
  target_modules: string[] | string | null;
  feedforward_modules: string[] | string | null;
  exclude_modules: string[] | string | null;
  fan_in_fan_out: boolean;
  modules_to_save: string[] | null;
  init_ia3_weights: boolean;
}

export const IA3_DEFAULTS: Ia3Config = {
  target_modules: null,
  feedforward_modules: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  modules_to_save: null,
  init_ia3_weights: true,
};

/** PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING. */
export const IA3_DEFAULT_TARGETS: Record<string, { target: string[]; feedforward: string[] }> = {
  llama: { target: ['k_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  mistral: { target: ['k_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  qwen2: { target: ['q_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  qwen3: { target: ['q_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  gpt2: { target: ['c_attn', 'mlp.c_proj'], feedforward: ['mlp.c_proj'] },
};

/**
 * The fused (IA)^3 linear op with its backward. W is frozen (plain or 4-bit); l (and a trainable bias,
 * if any) get gradients. Non-feedforward keeps z = x W^T + b for dl; feedforward needs only x.
 */
export function ia3Linear(x: Tensor, base: FrozenWeight, l: Tensor, feedforward: boolean): Tensor {
  const [outF, inF] = [base.outFeatures, base.inFeatures];
  if (x.dim(-1) !== inF) throw new Error(`ia3: input ${x.describe()} does not match a [${outF}, ${inF}] weight`);
  if (l.size !== (feedforward ? inF : outF)) throw new Error(`ia3: vector ${l.describe()} does not fit a ${feedforward ? 'feedforward' : 'non-feedforward'} [${outF}, ${inF}] layer`);
  const rows = x.size / inF;
  const X = x.f, L = l.f;
  const bias = base.bias;
  const out = Tensor.empty([...x.shape.slice(0, -1), outF], x.dtype);
  const Y = out.f;
  const grad = needsGrad(x, l, bias);
  let saved: ReturnType<typeof floatLike> | null = null;
  if (feedforward) {
    const xs = floatLike(X, x.size, false);
    for (let i = 0; i < rows; i++) for (let k = 0; k < inF; k++) xs[i * inF + k] = X[i * inF + k]! * L[k]!;
    base.mulWt(xs, rows, Y, 0);
    if (bias) for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) Y[i * outF + j]! += bias.f[j]!;
    releaseFloat(xs);
  } else {
    base.mulWt(X, rows, Y, 0);
    if (bias) for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) Y[i * outF + j]! += bias.f[j]!;
    if (grad && l.requiresGrad) {
      saved = floatLike(X, Y.length, false);
      saved.set(Y);
    }
    for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) Y[i * outF + j]! *= L[j]!;
  }
  if (!grad) return out;
  record(
    'ia3',
    [x, l, bias],
    out,
    (g) => {
      if (feedforward) {
        if (bias?.requiresGrad) {
          const gb = floatLike(g, outF);
          for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gb[j]! += g[i * outF + j]!;
          addGradOwned(bias, gb);
        }
        const gxs = floatLike(g, x.size, false);
        base.mulW(g, rows, gxs, 0);
        if (l.requiresGrad) {
          const gl = floatLike(g, inF);
          for (let i = 0; i < rows; i++) for (let k = 0; k < inF; k++) gl[k]! += gxs[i * inF + k]! * X[i * inF + k]!;
          addGradOwned(l, gl);
        }
        if (x.requiresGrad) {
          for (let i = 0; i < rows; i++) for (let k = 0; k < inF; k++) gxs[i * inF + k]! *= L[k]!;
          addGradOwned(x, gxs);
        } else releaseFloat(gxs);
      } else {
        const gz = floatLike(g, g.length, false);
        for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gz[i * outF + j] = g[i * outF + j]! * L[j]!;
        if (l.requiresGrad && saved) {
          const gl = floatLike(g, outF);
          for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gl[j]! += g[i * outF + j]! * saved[i * outF + j]!;
          addGradOwned(l, gl);
        }
        if (bias?.requiresGrad) {
          const gb = floatLike(g, outF);
          for (let i = 0; i < rows; i++) for (let j = 0; j < outF; j++) gb[j]! += gz[i * outF + j]!;
          addGradOwned(bias, gb);
        }
        if (x.requiresGrad) {
          const gx = floatLike(g, x.size, false);
          base.mulW(gz, rows, gx, 0);
          addGradOwned(x, gx);
        }
        releaseFloat(gz);
      }
    },
    () => {
      if (saved) releaseFloat(saved);
    },
  );
  return out;
}

/** A frozen Linear (or Linear4bit) with an (IA)^3 vector; paths base_layer and ia3_l as in PEFT. */
export class Ia3Linear extends Module implements LinearLike {
  constructor(
    base: Linear | Linear4bit,
    readonly feedforward: boolean,
    init: boolean,
    rng: Rng,
  ) {
    super();
    this.addModule('base_layer', base);
    const shape = feedforward ? [1, base.inFeatures] : [base.outFeatures, 1];
    const l = Tensor.zeros(shape);
    // PEFT: torch.randn, then constant_(1.0) when init_ia3_weights.
    if (init) l.f.fill(1);
    else rng.fillNormal(l.f as Float32Array, 0, 1);
    this.params.ia3_l = l;
  }
  get base(): Linear | Linear4bit {
    return this.child<Linear | Linear4bit>('base_layer');
  }
  get l(): Tensor {
    return this.params.ia3_l!;
  }
  get inFeatures(): number {
    return this.base.inFeatures;
  }
  get outFeatures(): number {
    return this.base.outFeatures;
  }
  forward(x: Tensor): Tensor {
    return ia3Linear(x, this.base, this.l, this.feedforward);
  }
}

function matchesList(path: string, names: string[]): boolean {
  return names.some((t) => path === t || path.endsWith(`.${t}`));
}

/**
 * target_modules / feedforward_modules after PEFT's IA3Model._prepare_adapter_config: each null one is
 * filled from the per-architecture defaults (feedforward even when target_modules was given).
 */
export function resolveIa3Modules(model: CausalLM, c: Ia3Config): { target: string[] | string; feedforward: string[] | string } {
  const defaults = IA3_DEFAULT_TARGETS[model.config.modelType] ?? IA3_DEFAULT_TARGETS[model.config.arch];
  const target = c.target_modules ?? defaults?.target;
  if (!target) throw new UserError(`ia3.target_modules is not set and there is no default for model_type '${model.config.modelType}'`, 'set ia3.target_modules (and ia3.feedforward_modules)');
  const feedforward = c.feedforward_modules ?? defaults?.feedforward;
  if (!feedforward) throw new UserError(`ia3.feedforward_modules is not set and there is no default for model_type '${model.config.modelType}'`, 'set ia3.feedforward_modules ([] for none)');
  if (Array.isArray(c.target_modules) && Array.isArray(c.feedforward_modules)) {
    const bad = c.feedforward_modules.filter((f) => !c.target_modules!.includes(f));
    if (bad.length) throw new UserError(`ia3.feedforward_modules ${JSON.stringify(bad)} are not in ia3.target_modules ${JSON.stringify(c.target_modules)}`, 'feedforward_modules must be a subset of target_modules (as in PEFT)');
  }
  return { target, feedforward };
}

/** Targeted Linear paths and which of them are feedforward, as PEFT's IA3Model decides. */
export function selectIa3Targets(model: CausalLM, c: Ia3Config): { path: string; feedforward: boolean }[] {
  const linears = model.namedModules().filter(([, m]) => m instanceof Linear || m instanceof Linear4bit).map(([p]) => p);
  const { target: t, feedforward: ff } = resolveIa3Modules(model, c);
  let targets: string[];
  if (t === 'all-linear') targets = linears.filter((p) => p !== 'lm_head');
  else if (typeof t === 'string') {
    const re = new RegExp(`^(?:${t})$`);
    targets = linears.filter((p) => re.test(p));
  } else targets = linears.filter((p) => matchesList(p, t));
  const ex = c.exclude_modules;
  if (ex) targets = targets.filter((p) => (typeof ex === 'string' ? !new RegExp(`^(?:${ex})$`).test(p) : !matchesList(p, ex)));
  if (targets.length === 0) {
    const names = [...new Set(linears.map((p) => p.split('.').pop()))].join(', ');
    throw new UserError(`ia3.target_modules ${JSON.stringify(t)} matches no Linear module of this model`, `its Linear modules are named: ${names}`);
  }
  // PEFT's _check_target_module_feedforward: regex full match, or a plain endswith (no '.' boundary).
  const isFf = (p: string) => (typeof ff === 'string' ? new RegExp(`^(?:${ff})$`).test(p) : ff.some((f) => p.endsWith(f)));
  return targets.map((path) => ({ path, feedforward: isFf(path) }));
}

export interface Ia3Applied {
  targets: { path: string; feedforward: boolean }[];
  /** Trainable parameters with their PEFT state-dict names (without the base_model.model. prefix). */
  trainable: [string, Tensor][];
}

/** Wraps the targeted Linears in Ia3Linear, freezes everything else; modules_to_save train in full. */
export function wrapIa3(model: CausalLM, c: Ia3Config, rng: Rng): Ia3Applied {
  if (c.fan_in_fan_out && model.config.arch !== 'gpt2') throw new UserError('ia3.fan_in_fan_out is only for GPT-2 Conv1D layers; set it to false');
  for (const p of model.parameters()) p.requiresGrad = false;
  const targets = selectIa3Targets(model, c);
  for (const { path, feedforward } of targets) {
    const base = model.getModule(path) as Linear | Linear4bit;
    model.replaceModule(path, new Ia3Linear(base, feedforward, c.init_ia3_weights, rng));
  }
  const trainable: [string, Tensor][] = [];
  for (const [name, p] of model.namedParameters()) {
    const moduleName = name.replace(/\.(weight|bias)$/, '');
    const isSaved = c.modules_to_save !== null && matchesList(moduleName, c.modules_to_save);
    if (name.endsWith('.ia3_l') || isSaved) {
      if (p.dtype !== 'f32') throw new UserError(`${name} is ${p.dtype}; trainable parameters must be f32 (load the model with torch_dtype float32 to train it)`);
      parameter(p, name);
      trainable.push([name, p]);
    }
  }
  for (const m of c.modules_to_save ?? []) {
    if (!trainable.some(([n]) => n.replace(/\.(weight|bias)$/, '').endsWith(m))) throw new UserError(`ia3.modules_to_save: no module named '${m}' in this model`);
  }
  return { targets, trainable };
}

/** Folds every (IA)^3 vector into its base weight (f32 copies; W *= l by rows or columns) and unwraps the layers. */
export function mergeIa3(model: CausalLM): void {
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof Ia3Linear)) continue;
    const base = m.base;
    if (!(base instanceof Linear)) throw new UserError(`${path}: merging (IA)^3 into a 4-bit layer is not supported`, 'load the base model unquantized to merge');
    const [o, i] = [base.outFeatures, base.inFeatures];
    const w = base.denseWeight();
    const L = m.l.f;
    for (let j = 0; j < o; j++) for (let k = 0; k < i; k++) w[j * i + k]! *= m.feedforward ? L[k]! : L[j]!;
    let bias = base.bias;
    if (bias && !m.feedforward) {
      const b = Float32Array.from(bias.f, (v, j) => v * L[j]!);
      bias = Tensor.from(b, [o], 'f32').keep();
    }
    model.replaceModule(path, new Linear(Tensor.from(w, [o, i], w instanceof Float64Array ? 'f64' : 'f32').keep(), bias));
  }
}

/** The PEFT key of an (IA)^3 / modules_to_save parameter. */
export function ia3Key(name: string): string {
  return `base_model.model.${name}`;
}

/**
 * Applies (IA)^3 to `model` (cfg: PEFT's IA3Config keys, e.g. the train config's `ia3` section).
 * `rng` only matters for init_ia3_weights false (PEFT's torch.randn).
 */
export function applyIa3(model: CausalLM, cfg: Partial<Ia3Config>, rng: Rng): PeftMethodHandle & Ia3Applied {
  const c: Ia3Config = { ...IA3_DEFAULTS, ...cfg };
  const applied = wrapIa3(model, c, rng);
  const { target, feedforward } = resolveIa3Modules(model, c);
  return {
    ...applied,
    save(dir, baseModelName) {
      const tensors = new Map(applied.trainable.map(([n, p]) => [ia3Key(n), p] as [string, Tensor]));
      // PEFT writes its sets as lists (any order is valid); sorted here so files are reproducible.
      const asWritten = (v: string[] | string) => (typeof v === 'string' ? v : [...v].sort());
      writeAdapterFolder(dir, tensors, ia3ConfigJson({ ...c, target_modules: asWritten(target), feedforward_modules: asWritten(feedforward) }, baseModelName));
    },
    load(dir) {
      readAdapterConfigJson(dir, 'IA3');
      const expected = new Map(applied.trainable.map(([n, p]) => [ia3Key(n), p] as [string, Tensor]));
      // PEFT in memory: '...k_proj.ia3_l.default'; on disk without the adapter name.
      readAdapterTensors(dir, expected, (k) => k.replace(/\.ia3_l\.[^.]+$/, '.ia3_l'));
    },
  };
}

/** Reads an (IA)^3 adapter folder written by PEFT or ajuste and applies it to a loaded base model. */
export function loadIa3Adapter(dir: string, model: CausalLM): PeftMethodHandle & Ia3Applied {
  const json = readAdapterConfigJson(dir, 'IA3');
  const pick = <K extends keyof Ia3Config>(k: K): Ia3Config[K] => (json[k] ?? IA3_DEFAULTS[k]) as Ia3Config[K];
  const cfg: Ia3Config = {
    target_modules: pick('target_modules'),
    feedforward_modules: pick('feedforward_modules'),
    exclude_modules: pick('exclude_modules'),
    fan_in_fan_out: pick('fan_in_fan_out'),
    modules_to_save: pick('modules_to_save'),
    init_ia3_weights: true,
  };
  const handle = applyIa3(model, cfg, new Rng(0));
  handle.load(dir);
  return handle;
}
