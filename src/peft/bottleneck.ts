/**
 * Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) as AdapterHub's `adapters` library defines
 * them (src/adapters/methods/modeling.py `Adapter`, methods/bottleneck.py `BottleneckLayer`,
 * configuration/adapter_config.py `BnConfig` / `SeqBnConfig` / `DoubleSeqBnConfig`). Hugging Face PEFT has no
 * bottleneck adapters, so the files follow the library's layout (see saveBottleneck below).
 *
 * One adapter: f(x) = up(act(down(x))) * scaling, down = Linear(d, d // reduction_factor), up = Linear(.., d);
 * the module path is <layer>.<attention_adapters|output_adapters>.adapters.<name>.adapter_down.0 / .adapter_up
 * (adapter_down is nn.Sequential(Linear, activation) in the library, hence the ".0").
 *
 * Placement in a Llama-family decoder layer (adapters/models/llama/modeling_llama.py
 * LlamaDecoderLayerWithAdapters.forward): `h = attention_adapters(self_attn(ln1(h)), residual, None)`, then
 * `h = output_adapters(mlp(ln2(h)), residual, None)`: layer_norm is None, so (BottleneckLayer.bottleneck_layer_forward
 * -> Adapter.pre_forward / forward / post_forward, with residual_before_ln true and original_ln_after true):
 *
 *   original_ln_before false (double_seq_bn = Houlsby, both sites):  out = res + sub + f(sub)
 *   original_ln_before true  (seq_bn = Pfeiffer, output site):        y = res + sub;  out = y + f(y)
 *
 * where sub is the sub-block's output (o_proj / down_proj) and res its residual input. ajuste implements the
 * first by wrapping the o_proj / down_proj output (sub -> sub + f(sub); the model then adds res), the second by
 * wrapping the decoder layer's output (y -> y + f(y); y after the MLP residual is the layer's output). Both are
 * exact; combinations that would need the residual inside a layer (original_ln_before with mh_adapter,
 * original_ln_after false, residual_before_ln false/"post_add" with original_ln_before) are refused, as are
 * the options not implemented here (ln_before/ln_after, is_parallel, use_gating, learned scaling, dropout,
 * phm_layer, inv_adapter, stochastic_depth, cross_adapter).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { bf16ToF32 } from '../io/dtypes.js';
import { pyFloat, pyJsonDumps } from '../io/pyjson.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { CausalLM } from '../models/causal-lm.js';
import { Linear } from '../nn/layers.js';
import { Module, ModuleDict, ModuleList } from '../nn/module.js';
import { geluErf, geluTanh, relu, silu } from '../nn/ops/activations.js';
import { parameter } from '../tensor/autograd.js';
import { add, linear, scale } from '../tensor/ops.js';
import { Rng } from '../tensor/rng.js';
import { Tensor } from '../tensor/tensor.js';
import { tanh } from './prefix-tuning.js';

/** adapters/utils.py: CONFIG_NAME, SAFE_WEIGHTS_NAME (the file model.load_adapter(dir, use_safetensors=True) reads). */
export const BN_CONFIG_NAME = 'adapter_config.json';
export const BN_WEIGHTS_NAME = 'adapter.safetensors';
/** The library version whose layout the files follow (adapter_config.json "version"). */
export const ADAPTERS_VERSION = 'adapters.1.2.0';

export type BnPreset = 'seq_bn' | 'double_seq_bn';
export type NonLinearity = 'relu' | 'swish' | 'silu' | 'gelu' | 'gelu_new' | 'tanh';
export const NON_LINEARITIES: readonly NonLinearity[] = ['relu', 'swish', 'silu', 'gelu', 'gelu_new', 'tanh'];
export const INIT_WEIGHTS = ['bert', 'mam_adapter', 'houlsby'] as const;

/** The `bottleneck` section of a train config: the preset and the BnConfig keys ajuste implements. */
export interface BottleneckConfig {
  /** ADAPTER_CONFIG_MAP name: seq_bn (Pfeiffer) or double_seq_bn (Houlsby). */
  config: BnPreset;
  /** The adapter's name (model.add_adapter(name)): part of every key and of adapter_config.json. */
  name: string;
  mh_adapter: boolean | null;
  output_adapter: boolean | null;
  reduction_factor: number | Record<string, number> | null;
  non_linearity: string | null;
  original_ln_before: boolean | null;
  original_ln_after: boolean | null;
  residual_before_ln: boolean | string | null;
  init_weights: string;
  scaling: number | string;
  leave_out: number[];
  /** Library options ajuste does not implement: accepted only at their defaults. */
  [other: string]: unknown;
}

export const BOTTLENECK_DEFAULTS: BottleneckConfig = {
  config: 'seq_bn',
  name: 'bottleneck',
  mh_adapter: null,
  output_adapter: null,
  reduction_factor: null,
  non_linearity: null,
  original_ln_before: null,
  original_ln_after: null,
  residual_before_ln: null,
  init_weights: 'bert',
  scaling: 1.0,
  leave_out: [],
};

/** BnConfig's fields in declaration order with the base class defaults (adapter_config.py). */
const BN_BASE: Record<string, unknown> = {
  mh_adapter: false,
  output_adapter: true,
  reduction_factor: 16,
  non_linearity: 'relu',
  original_ln_before: false,
  original_ln_after: true,
  ln_before: false,
  ln_after: false,
  init_weights: 'bert',
  is_parallel: false,
  scaling: 1.0,
  use_gating: false,
  residual_before_ln: true,
  adapter_residual_before_ln: false,
  inv_adapter: null,
  inv_adapter_reduction_factor: null,
  cross_adapter: false,
  leave_out: [],
  dropout: 0.0,
  phm_layer: false,
  phm_dim: 4,
  factorized_phm_W: true,
  shared_W_phm: false,
  shared_phm_rule: true,
  factorized_phm_rule: false,
  phm_c_init: 'normal',
  phm_init_range: 0.0001,
  learn_phm: true,
  hypercomplex_nonlinearity: 'glorot-uniform',
  phm_rank: 1,
  phm_bias: true,
  stochastic_depth: 0.0,
};

/** SeqBnConfig (Pfeiffer) and DoubleSeqBnConfig (Houlsby): what they override in BnConfig. */
export const BN_PRESETS: Record<BnPreset, Record<string, unknown>> = {
  seq_bn: { original_ln_before: true, original_ln_after: true, residual_before_ln: true, adapter_residual_before_ln: false, ln_before: false, ln_after: false, mh_adapter: false, output_adapter: true, non_linearity: 'relu', reduction_factor: 16 },
  double_seq_bn: { original_ln_before: false, original_ln_after: true, residual_before_ln: true, adapter_residual_before_ln: false, ln_before: false, ln_after: false, mh_adapter: true, output_adapter: true, non_linearity: 'swish', reduction_factor: 16 },
};

/** Options ajuste does not implement, with the only value it accepts (their BnConfig default). */
const FIXED: Record<string, unknown> = {
  ln_before: false,
  ln_after: false,
  is_parallel: false,
  use_gating: false,
  inv_adapter: null,
  inv_adapter_reduction_factor: null,
  cross_adapter: false,
  dropout: 0.0,
  phm_layer: false,
  stochastic_depth: 0.0,
};
/** PHM keys: only read when phm_layer is true (refused), so any value is harmless. */
const PHM_KEYS = new Set(['phm_dim', 'factorized_phm_W', 'shared_W_phm', 'shared_phm_rule', 'factorized_phm_rule', 'phm_c_init', 'phm_init_range', 'learn_phm', 'hypercomplex_nonlinearity', 'phm_rank', 'phm_bias']);

/** A resolved BnConfig (every field), as the library's `to_dict()` has it. */
export type BnConfigDict = Record<string, unknown> & {
  mh_adapter: boolean;
  output_adapter: boolean;
  reduction_factor: number | Record<string, number>;
  non_linearity: string;
  original_ln_before: boolean;
  original_ln_after: boolean;
  residual_before_ln: boolean | string;
  adapter_residual_before_ln: boolean;
  init_weights: string;
  scaling: number | string;
  leave_out: number[];
};

/** The preset with the section's overrides: the full BnConfig dict (as SeqBnConfig(**overrides).to_dict()). */
export function resolveBnConfig(c: Partial<BottleneckConfig>): BnConfigDict {
  const preset = c.config ?? 'seq_bn';
  if (!(preset in BN_PRESETS)) throw new UserError(`bottleneck.config '${preset}' is not available`, 'use seq_bn (Pfeiffer) or double_seq_bn (Houlsby)');
  const out: Record<string, unknown> = { ...BN_BASE, ...BN_PRESETS[preset] };
  for (const [k, v] of Object.entries(c)) {
    if (k === 'config' || k === 'name' || v === null || v === undefined) continue;
    if (!(k in BN_BASE)) throw new UserError(`bottleneck.${k} is not a BnConfig key`, `keys: config, name, ${Object.keys(BN_BASE).join(', ')}`);
    out[k] = v;
  }
  checkBnConfig(out, 'bottleneck');
  return out as BnConfigDict;
}

/** Refuses values ajuste does not implement (never silently ignores a library option). */
export function checkBnConfig(c: Record<string, unknown>, where: string): void {
  for (const [k, v] of Object.entries(c)) {
    if (k === 'architecture') {
      if (v !== null && v !== 'bottleneck') throw new UserError(`${where}: architecture '${String(v)}' is not a bottleneck adapter`);
      continue;
    }
    if (!(k in BN_BASE)) throw new UserError(`${where}: unknown BnConfig key '${k}'`);
    if (k in FIXED && JSON.stringify(v) !== JSON.stringify(FIXED[k]) && !(k === 'dropout' && v === 0) && !(k === 'stochastic_depth' && v === 0)) {
      throw new UserError(`${where}.${k} = ${JSON.stringify(v)} is not supported by ajuste's bottleneck adapters`, `only ${JSON.stringify(FIXED[k])} (the BnConfig default) is implemented`);
    }
    if (PHM_KEYS.has(k)) continue; // read only with phm_layer true, which is refused above
  }
  const nl = String(c.non_linearity).toLowerCase();
  if (!NON_LINEARITIES.includes(nl as NonLinearity)) throw new UserError(`${where}.non_linearity '${String(c.non_linearity)}' is not available`, `use one of: ${NON_LINEARITIES.join(', ')}`);
  if (!INIT_WEIGHTS.includes(c.init_weights as (typeof INIT_WEIGHTS)[number])) throw new UserError(`${where}.init_weights '${String(c.init_weights)}' is not available`, `use one of: ${INIT_WEIGHTS.join(', ')}`);
  if (typeof c.scaling !== 'number') throw new UserError(`${where}.scaling ${JSON.stringify(c.scaling)} is not supported (learned / channel scaling is not implemented)`, 'use a number (1.0 is the default)');
  if (c.original_ln_after !== true) throw new UserError(`${where}.original_ln_after false is not supported: it drops the layer's residual, which ajuste's wrapping cannot reach`, 'keep original_ln_after true (both presets)');
  if (c.original_ln_before === true && c.residual_before_ln !== true) {
    throw new UserError(`${where}.residual_before_ln ${JSON.stringify(c.residual_before_ln)} with original_ln_before true is not supported`, 'keep residual_before_ln true (both presets)');
  }
  if (c.original_ln_before === true && c.mh_adapter === true) {
    throw new UserError(`${where}: mh_adapter with original_ln_before true is not supported (the adapter would sit between the attention residual and the MLP)`, 'use config double_seq_bn (original_ln_before false) for adapters after attention');
  }
  if (c.residual_before_ln !== true && c.residual_before_ln !== false) throw new UserError(`${where}.residual_before_ln ${JSON.stringify(c.residual_before_ln)} is not supported`, 'use true');
  if (!c.mh_adapter && !c.output_adapter) throw new UserError(`${where}: mh_adapter and output_adapter are both false: no adapter would be added`);
  const rf = c.reduction_factor;
  const rfOk = (v: unknown) => typeof v === 'number' && v > 0;
  if (!(rfOk(rf) || (rf !== null && typeof rf === 'object' && !Array.isArray(rf) && Object.values(rf as object).every(rfOk)))) {
    throw new UserError(`${where}.reduction_factor must be a positive number or a mapping {"<layer>": n, "default": n}, got ${JSON.stringify(rf)}`);
  }
  if (!Array.isArray(c.leave_out) || !c.leave_out.every((v) => Number.isInteger(v) && v >= 0)) throw new UserError(`${where}.leave_out must be a list of layer indices`);
}

/** down_sample of layer i: int(hidden // reduction_factor), at least 1 (BottleneckLayer.add_adapter, Adapter.__init__). */
export function bottleneckSize(hidden: number, c: BnConfigDict, layer: number): number {
  let rf = c.reduction_factor;
  if (typeof rf === 'object') {
    const m = rf as Record<string, number>;
    if (String(layer) in m) rf = m[String(layer)]!;
    else if ('default' in m) rf = m.default!;
    else throw new UserError('bottleneck.reduction_factor mapping has no entry for layer ' + layer + ' and no "default"', 'add "default": 16');
  }
  return Math.max(1, Math.floor(hidden / (rf as number)));
}

function activate(x: Tensor, nl: string): Tensor {
  switch (nl.toLowerCase()) {
    case 'relu':
      return relu(x);
    case 'swish':
    case 'silu':
      return silu(x);
    case 'gelu':
      return geluErf(x);
    case 'gelu_new':
      return geluTanh(x);
    case 'tanh':
      return tanh(x);
    default:
      throw new UserError(`non_linearity '${nl}' is not available`);
  }
}

/** The library's `Adapter` (sequential, no layer norms, no gating): adapter_down.0, adapter_up. */
export class BottleneckAdapter extends Module {
  constructor(
    hidden: number,
    down: number,
    readonly nonLinearity: string,
    readonly scaling: number,
    init: string,
    rng: Rng,
  ) {
    super();
    const wd = Tensor.zeros([down, hidden]), bd = Tensor.zeros([down]);
    const wu = Tensor.zeros([hidden, down]), bu = Tensor.zeros([hidden]);
    if (init === 'bert') {
      // init_bert_weights: weight ~ N(0, 0.02), bias 0 (down first, then up, as .apply() visits them).
      rng.fillNormal(wd.f as Float32Array, 0, 0.02);
      rng.fillNormal(wu.f as Float32Array, 0, 0.02);
    } else if (init === 'mam_adapter') {
      // kaiming_uniform_(a=sqrt(5)) on the down weight; up weight and both biases zero.
      const bound = 1 / Math.sqrt(hidden);
      rng.fillUniform(wd.f as Float32Array, -bound, bound);
    } else if (init === 'houlsby') {
      // trunc_normal_(std=1e-2, a=-2e-2, b=2e-2) on both weights, zero biases.
      for (const w of [wd, wu]) {
        const f = w.f;
        for (let i = 0; i < f.length; i++) {
          let v: number;
          do v = 0.01 * rng.normal();
          while (v < -0.02 || v > 0.02);
          f[i] = v;
        }
      }
    } else throw new UserError(`init_weights '${init}' is not available`);
    this.addModule('adapter_down', new ModuleList([new Linear(wd, bd)]));
    this.addModule('adapter_up', new Linear(wu, bu));
  }

  private lin(path: 'down' | 'up'): Linear {
    return path === 'up' ? this.child<Linear>('adapter_up') : this.child<ModuleList<Linear>>('adapter_down').at(0);
  }

  /** f(x) + residual, f(x) = up(act(down(x))) * scaling. */
  forward(x: Tensor, residual: Tensor): Tensor {
    const d = this.lin('down');
    const u = this.lin('up');
    let up = linear(activate(linear(x, d.weight, d.bias), this.nonLinearity), u.weight, u.bias);
    if (this.scaling !== 1) up = scale(up, this.scaling);
    return add(up, residual);
  }
}

/** The library's BottleneckLayer: a ModuleDict `adapters` holding the named adapter. */
class BottleneckLayer extends Module {
  constructor(name: string, adapter: BottleneckAdapter) {
    super();
    this.addModule('adapters', new ModuleDict({ [name]: adapter }));
  }
}

/** Where the adapters of each decoder layer go (Llama family only, as adapters/models/llama). */
function sites(model: CausalLM, i: number): { layer: string; attnOut: string; mlpOut: string } {
  if (model.config.arch !== 'llama') {
    throw new UserError(`bottleneck adapters are implemented for the Llama family (llama, mistral, qwen2, ...), not '${model.config.modelType}'`, 'use method lora or ia3 for this model');
  }
  const layer = `model.layers.${i}`;
  return { layer, attnOut: `${layer}.self_attn.o_proj`, mlpOut: `${layer}.mlp.down_proj` };
}

type Forward = (...args: never[]) => Tensor;

/** Replaces an instance's forward (and forwardCached) by `wrap(original output)`; the module keeps its name. */
function wrapOutput(m: Module, wrap: (y: Tensor) => Tensor): void {
  const target = m as unknown as Record<string, Forward>;
  for (const k of ['forward', 'forwardCached']) {
    const orig = target[k];
    if (typeof orig !== 'function') continue;
    const bound = orig.bind(m) as (...args: unknown[]) => Tensor;
    target[k] = ((...args: unknown[]) => wrap(bound(...args))) as Forward;
  }
}

export interface BottleneckApplied {
  config: BnConfigDict;
  name: string;
  /** Trainable parameters with the library's state-dict names (model.layers.0.output_adapters.adapters.<name>...). */
  trainable: [string, Tensor][];
  save(dir: string, baseModelName: string | null): void;
  load(dir: string): void;
}

/** Adds the adapters to `model` (frozen base); `rng` draws the initial weights. */
export function applyBottleneck(model: CausalLM, section: Partial<BottleneckConfig>, rng: Rng): BottleneckApplied {
  const c = resolveBnConfig(section);
  const name = section.name ?? BOTTLENECK_DEFAULTS.name;
  return attach(model, c, name, rng);
}

function attach(model: CausalLM, c: BnConfigDict, name: string, rng: Rng): BottleneckApplied {
  if (!/^[A-Za-z0-9_-]+$/.test(name)) throw new UserError(`bottleneck.name '${name}' must be letters, digits, '_' or '-' (it is part of every parameter name)`);
  for (const p of model.parameters()) p.requiresGrad = false;
  const H = model.config.hidden;
  const nl = c.non_linearity.toLowerCase();
  const s = c.scaling as number;
  for (let i = 0; i < model.config.layers; i++) {
    if (c.leave_out.includes(i)) continue;
    const site = sites(model, i);
    const layer = model.getModule(site.layer);
    const down = bottleneckSize(H, c, i);
    // The library adds mh_adapter before output_adapter in each layer (BottleneckLayer("mh_adapter") first).
    if (c.mh_adapter) {
      const a = new BottleneckAdapter(H, down, nl, s, c.init_weights, rng);
      layer.attachModule('attention_adapters', new BottleneckLayer(name, a));
      wrapOutput(model.getModule(site.attnOut), (y) => a.forward(y, y));
    }
    if (c.output_adapter) {
      const a = new BottleneckAdapter(H, down, nl, s, c.init_weights, rng);
      layer.attachModule('output_adapters', new BottleneckLayer(name, a));
      if (c.original_ln_before) wrapOutput(layer, (y) => a.forward(y, y));
      else wrapOutput(model.getModule(site.mlpOut), (y) => a.forward(y, y));
    }
  }
  const trainable: [string, Tensor][] = [];
  for (const [n, p] of model.namedParameters()) {
    if (n.includes(`_adapters.adapters.${name}.`)) trainable.push([n, parameter(p, n)]);
  }
  if (trainable.length === 0) throw new UserError('bottleneck: no adapter was added (leave_out lists every layer?)');
  const expected = () => new Map(trainable);
  return {
    config: c,
    name,
    trainable,
    save: (dir, base) => saveBottleneck(dir, model, c, name, trainable, base),
    load: (dir) => readBottleneckWeights(dir, expected()),
  };
}

/** adapter_config.json as the library's AdapterLoader.save writes it (build_full_config + json.dump(indent=2, sort_keys=True)). */
export function bottleneckConfigJson(model: CausalLM, c: BnConfigDict, name: string, baseModel: string | null): Record<string, unknown> {
  const config: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(c)) {
    if (k === 'architecture') continue;
    // Python floats: scaling, dropout, phm_init_range, stochastic_depth; reduction_factor as given.
    config[k] = typeof v === 'number' && ['scaling', 'dropout', 'phm_init_range', 'stochastic_depth'].includes(k) ? pyFloat(v) : v;
  }
  const archs = model.config.raw.architectures;
  return {
    config,
    hidden_size: model.config.hidden,
    model_class: Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : 'LlamaForCausalLM',
    model_name: baseModel,
    model_type: model.config.modelType,
    name,
    version: ADAPTERS_VERSION,
  };
}

function saveBottleneck(dir: string, model: CausalLM, c: BnConfigDict, name: string, trainable: [string, Tensor][], baseModel: string | null): void {
  mkdirSync(dir, { recursive: true });
  const out: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
  for (const [key, t] of trainable) out[key] = { dtype: 'F32', shape: [...t.shape], data: t.f as Float32Array };
  // safetensors.torch.save_file writes no metadata by default; {"format": "pt"} is what transformers adds and is harmless.
  writeSafetensors(join(dir, BN_WEIGHTS_NAME), out, { format: 'pt' });
  writeFileAtomic(join(dir, BN_CONFIG_NAME), pyJsonDumps(bottleneckConfigJson(model, c, name, baseModel)));
}

function readBottleneckWeights(dir: string, expected: Map<string, Tensor>): void {
  const file = join(dir, BN_WEIGHTS_NAME);
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'pytorch_adapter.bin'))) {
      throw new UserError(`${dir} holds pytorch_adapter.bin (a pickle, which can run code); ajuste reads only safetensors`, 'save it in Python with model.save_adapter(dir, name, use_safetensors=True)');
    }
    throw new UserError(`${dir} has no ${BN_WEIGHTS_NAME}`);
  }
  const f = readSafetensors(file, { copy: true });
  const seen = new Set<string>();
  for (const [key, t] of f.tensors) {
    const p = expected.get(key);
    if (!p) throw new UserError(`${file}: tensor '${key}' matches no adapter of this model`, 'was it trained on a different base model, with another name or config?');
    if (t.shape.length !== p.shape.length || t.shape.some((v, i) => v !== p.shape[i])) throw new UserError(`${file}: tensor '${key}' has shape [${t.shape}], the model expects [${p.shape}] (check reduction_factor)`);
    if (t.dtype !== 'F32' && t.dtype !== 'BF16') throw new UserError(`${file}: tensor '${key}' has dtype ${t.dtype}; expected F32 or BF16`);
    p.f.set(t.dtype === 'F32' ? (t.data as Float32Array) : bf16ToF32(t.data as Uint16Array));
    seen.add(key);
  }
  const missing = [...expected.keys()].filter((k) => !seen.has(k));
  if (missing.length) throw new UserError(`${file} lacks ${missing.length} adapter tensors, e.g. '${missing[0]}'`);
}

/** Whether dir holds an adapter saved by AdapterHub's library (or ajuste's bottleneck method) rather than a PEFT one. */
export function isBottleneckAdapter(dir: string): boolean {
  const file = join(dir, BN_CONFIG_NAME);
  if (!existsSync(file)) return false;
  try {
    const j = JSON.parse(readFileSync(file, 'utf8'));
    return j.peft_type === undefined && typeof j.config === 'object' && j.config !== null && typeof j.name === 'string';
  } catch {
    return false;
  }
}

/** Reads an adapter folder written by the library's save_adapter (safetensors) or ajuste, and applies it. */
export function loadBottleneckAdapter(dir: string, model: CausalLM): BottleneckApplied {
  const file = join(dir, BN_CONFIG_NAME);
  if (!existsSync(file)) throw new UserError(`${dir} has no ${BN_CONFIG_NAME}`);
  const json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const raw = json.config as Record<string, unknown> | null;
  if (!raw || typeof raw !== 'object') throw new UserError(`${file} has no "config" object`, 'is this an AdapterHub adapter folder?');
  if (typeof json.name !== 'string') throw new UserError(`${file} has no "name"`);
  if (typeof json.hidden_size === 'number' && json.hidden_size !== model.config.hidden) {
    throw new UserError(`${file}: hidden_size ${json.hidden_size} does not match the model's ${model.config.hidden}`, 'load it onto the base model it was trained on');
  }
  const c = { ...BN_BASE, ...raw } as Record<string, unknown>;
  checkBnConfig(c, file);
  const applied = attach(model, c as BnConfigDict, json.name, new Rng(0));
  applied.load(dir);
  return applied;
}
