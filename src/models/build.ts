/**
 * Builds a model from a config and a map of raw tensors (safetensors records): dtype conversion,
 * GPT-2's Conv1D transposes, tied embeddings, and random initialisation for new models.
 */
import { UserError } from '../errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16 } from '../io/dtypes.js';
import { Linear } from '../nn/layers.js';
import type { Module } from '../nn/module.js';
import { Linear4bit, type Quant4Options } from '../quant/linear4bit.js';
import { Rng } from '../tensor/rng.js';
import { Tensor } from '../tensor/tensor.js';
import type { CausalLM } from './causal-lm.js';
import type { ModelConfig } from './config.js';
import { Gpt2LMHeadModel } from './gpt2.js';
import { LlamaForCausalLM } from './llama.js';
import { SCORE_WEIGHT } from './reward.js';

/** A tensor as stored in a safetensors file. */
export interface RawTensor {
  dtype: string;
  shape: number[];
  data: ArrayBufferView;
}

export interface BuildOptions {
  /**
   * In-memory dtype of the big matrices (linear weights, embeddings): 'bfloat16' keeps 16-bit weights
   * 16-bit (frozen), 'float32' widens them (needed for full fine-tuning). 'auto' = as stored.
   * Norm weights and biases are always f32.
   */
  dtype?: 'auto' | 'float32' | 'bfloat16';
  /** Copy f32 weights out of the (possibly read-only, memory-mapped) source, so they can be trained. */
  writable?: boolean;
  /**
   * Quantize every decoder Linear (not lm_head; embeddings and norms untouched) to 4 bits while building,
   * one tensor at a time (QLoRA's load_in_4bit). Weights already saved by bitsandbytes (a `.weight.quant_state.
   * bitsandbytes__nf4|fp4` key) are always loaded as 4-bit layers, with or without this option.
   */
  load4bit?: Quant4Options | null;
}

/** The bitsandbytes quant-state key of a 4-bit weight `${prefix}.weight` in the checkpoint, or null. */
export function bnbQuantStateKey(weights: Map<string, RawTensor>, prefix: string): string | null {
  for (const t of ['nf4', 'fp4']) {
    const k = `${prefix}.weight.quant_state.bitsandbytes__${t}`;
    if (weights.has(k)) return k;
  }
  return null;
}

const BNB_SUFFIXES = ['', '.absmax', '.quant_map', '.nested_absmax', '.nested_quant_map'];

/** Names of GPT-2 Conv1D weights, stored [in, out] by transformers. */
export function isConv1dWeight(config: ModelConfig, name: string): boolean {
  return config.arch === 'gpt2' && /\.(c_attn|c_proj|c_fc)\.weight$/.test(name);
}

function widen(raw: RawTensor, name: string): Float32Array {
  const n = raw.shape.reduce((a, b) => a * b, 1);
  switch (raw.dtype) {
    case 'F32':
      return raw.data instanceof Float32Array ? raw.data : new Float32Array(raw.data.buffer, raw.data.byteOffset, n);
    case 'BF16':
      return bf16ToF32(new Uint16Array(raw.data.buffer, raw.data.byteOffset, n));
    case 'F16':
      return f16ToF32(new Uint16Array(raw.data.buffer, raw.data.byteOffset, n));
    default:
      throw new UserError(`weight ${name} has dtype ${raw.dtype}; expected F32, BF16 or F16`);
  }
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c]!;
  return out;
}

/**
 * Instantiates the architecture of `config` with weights from `weights`. A sequence-classification checkpoint
 * (a reward model: transformers' `score.weight`, and no `lm_head.weight` for an untied model) builds too: the
 * score head is left for models/reward.ts to read, and the model is marked `headless` (no token logits).
 */
export function buildModel(config: ModelConfig, weights: Map<string, RawTensor>, opts: BuildOptions = {}): CausalLM {
  const headless = weights.has(SCORE_WEIGHT) && !config.tieEmbeddings && !weights.has('lm_head.weight') && !bnbQuantStateKey(weights, 'lm_head');
  // The decoder code builds an lm_head unless the embedding is tied; a headless checkpoint has none to build.
  if (headless) config = { ...config, tieEmbeddings: true };
  const want = opts.dtype ?? 'auto';
  const used = new Set<string>();
  const tensor = (name: string, shape: number[], big: boolean): Tensor => {
    const raw = weights.get(name);
    if (!raw) throw new UserError(`the checkpoint has no tensor '${name}'`, 'is the config.json from the same model as the weights?');
    used.add(name);
    const conv = isConv1dWeight(config, name);
    const stored = conv ? [shape[1]!, shape[0]!] : shape;
    if (raw.shape.length !== stored.length || raw.shape.some((s, i) => s !== stored[i])) {
      throw new UserError(`tensor '${name}' has shape [${raw.shape}] but the config implies [${stored}]`);
    }
    const keep16 = big && raw.dtype === 'BF16' && want !== 'float32' && !conv;
    // Views over the source (possibly a read-only memory mapping) are marked readOnly: parameter() copies them.
    if (keep16) {
      const t = Tensor.from(new Uint16Array(raw.data.buffer, raw.data.byteOffset, raw.shape.reduce((a, b) => a * b, 1)), shape, 'bf16');
      t.readOnly = true;
      return t;
    }
    let f = widen(raw, name);
    if (conv) f = transpose(f, stored[0]!, stored[1]!);
    else if (opts.writable && f.buffer === raw.data.buffer) f = f.slice();
    if (big && want === 'bfloat16') return Tensor.from(f32ToBf16(f), shape, 'bf16');
    const t = Tensor.from(f, shape, 'f32');
    t.readOnly = f.buffer === raw.data.buffer;
    return t;
  };
  const weight = (name: string, shape: number[]) => tensor(name, shape, /embed_tokens|wte|wpe/.test(name));
  const makeLinear = (name: string, outF: number, inF: number, bias: boolean): (Linear | Linear4bit) & Module => {
    const qsKey = bnbQuantStateKey(weights, name);
    if (qsKey) {
      // A bitsandbytes 4-bit checkpoint: read the packed weight as saved.
      for (const s of BNB_SUFFIXES) if (weights.has(`${name}.weight${s}`)) used.add(`${name}.weight${s}`);
      used.add(qsKey);
      const b = bias ? tensor(`${name}.bias`, [outF], false) : null;
      const lin = Linear4bit.fromBnb(name, weights, b, opts.load4bit?.computeDtype ?? bnbComputeDtype(config.raw));
      if (lin.outFeatures !== outF || lin.inFeatures !== inF) {
        throw new UserError(`4-bit weight '${name}.weight' has shape [${lin.state.shape}] but the config implies [${outF}, ${inF}]`);
      }
      return lin;
    }
    if (opts.load4bit && name !== 'lm_head') {
      const raw = weights.get(`${name}.weight`);
      if (!raw) throw new UserError(`the checkpoint has no tensor '${name}.weight'`, 'is the config.json from the same model as the weights?');
      const conv = isConv1dWeight(config, `${name}.weight`);
      const stored = conv ? [inF, outF] : [outF, inF];
      if (raw.shape.length !== 2 || raw.shape[0] !== stored[0] || raw.shape[1] !== stored[1]) {
        throw new UserError(`tensor '${name}.weight' has shape [${raw.shape}] but the config implies [${stored}]`);
      }
      used.add(`${name}.weight`);
      // Only this one tensor is widened to f32 (temporarily); the 4-bit state is what stays.
      let f = widen(raw, `${name}.weight`);
      if (conv) f = transpose(f, inF, outF);
      const storageDtype = raw.dtype === 'BF16' ? 'bfloat16' : raw.dtype === 'F16' ? 'float16' : 'float32';
      return Linear4bit.fromWeight(f, outF, inF, bias ? tensor(`${name}.bias`, [outF], false) : null, { ...opts.load4bit, storageDtype });
    }
    return new Linear(tensor(`${name}.weight`, [outF, inF], true), bias ? tensor(`${name}.bias`, [outF], false) : null);
  };
  const model = config.arch === 'gpt2' ? new Gpt2LMHeadModel(config, weight, makeLinear) : new LlamaForCausalLM(config, weight, makeLinear);
  for (const [, p] of model.namedParameters()) p.persistent = true;
  model.headless = headless;
  const unused = [...weights.keys()].filter((k) => !used.has(k) && k !== SCORE_WEIGHT && !/\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$/.test(k));
  if (unused.length) throw new UserError(`the checkpoint has tensors this architecture does not use: ${unused.slice(0, 5).join(', ')}${unused.length > 5 ? ', ...' : ''}`);
  return model;
}

/** bnb_4bit_compute_dtype of a config.json's quantization_config (float32 when unset, as transformers). */
function bnbComputeDtype(raw: Record<string, unknown>): 'float32' | 'bfloat16' | 'float16' {
  const q = raw.quantization_config as Record<string, unknown> | undefined;
  const d = q?.bnb_4bit_compute_dtype;
  return d === 'bfloat16' || d === 'float16' ? d : 'float32';
}

/** Random weights in the checkpoint layout of `config` (normal(0, std) for matrices, ones for norms, zeros for biases). */
export function randomWeights(config: ModelConfig, seed = 0, std = 0.02): Map<string, RawTensor> {
  const rng = new Rng(seed);
  const out = new Map<string, RawTensor>();
  const shapes = weightShapes(config);
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (/norm|ln_/.test(name) && name.endsWith('.weight')) data.fill(1);
    else if (!name.endsWith('.bias')) rng.fillNormal(data, 0, std);
    out.set(name, { dtype: 'F32', shape, data });
  }
  return out;
}

/** Every tensor name and stored shape of a checkpoint of this config (transformers' names). */
export function weightShapes(c: ModelConfig): [string, number[]][] {
  const s: [string, number[]][] = [];
  const C = c.hidden;
  if (c.arch === 'gpt2') {
    s.push(['transformer.wte.weight', [c.vocabSize, C]], ['transformer.wpe.weight', [c.maxPositions, C]]);
    for (let i = 0; i < c.layers; i++) {
      const p = `transformer.h.${i}`;
      s.push([`${p}.ln_1.weight`, [C]], [`${p}.ln_1.bias`, [C]], [`${p}.attn.c_attn.weight`, [C, 3 * C]], [`${p}.attn.c_attn.bias`, [3 * C]]);
      s.push([`${p}.attn.c_proj.weight`, [C, C]], [`${p}.attn.c_proj.bias`, [C]], [`${p}.ln_2.weight`, [C]], [`${p}.ln_2.bias`, [C]]);
      s.push([`${p}.mlp.c_fc.weight`, [C, c.intermediate]], [`${p}.mlp.c_fc.bias`, [c.intermediate]], [`${p}.mlp.c_proj.weight`, [c.intermediate, C]], [`${p}.mlp.c_proj.bias`, [C]]);
    }
    s.push(['transformer.ln_f.weight', [C]], ['transformer.ln_f.bias', [C]]);
    if (!c.tieEmbeddings) s.push(['lm_head.weight', [c.vocabSize, C]]);
    return s;
  }
  const { heads: H, kvHeads: Hkv, headDim: D, intermediate: I } = c;
  s.push(['model.embed_tokens.weight', [c.vocabSize, C]]);
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    const lin = (n: string, o: number, inF: number, bias: boolean) => {
      s.push([`${p}.${n}.weight`, [o, inF]]);
      if (bias) s.push([`${p}.${n}.bias`, [o]]);
    };
    lin('self_attn.q_proj', H * D, C, c.qkvBias);
    lin('self_attn.k_proj', Hkv * D, C, c.qkvBias);
    lin('self_attn.v_proj', Hkv * D, C, c.qkvBias);
    lin('self_attn.o_proj', C, H * D, c.oBias);
    lin('mlp.gate_proj', I, C, c.mlpBias);
    lin('mlp.up_proj', I, C, c.mlpBias);
    lin('mlp.down_proj', C, I, c.mlpBias);
    s.push([`${p}.input_layernorm.weight`, [C]], [`${p}.post_attention_layernorm.weight`, [C]]);
  }
  s.push(['model.norm.weight', [C]]);
  if (!c.tieEmbeddings) s.push(['lm_head.weight', [c.vocabSize, C]]);
  return s;
}
