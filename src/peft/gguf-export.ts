/**
 * Export to llama.cpp: a model as ajuste loaded it (a LoRA adapter merged in, if one is applied) to a GGUF model
 * file, and a LoRA adapter on its own to a GGUF LoRA file (`llama-cli -m model.gguf --lora adapter.gguf`).
 * It lives in peft/ next to merge.ts because it needs the merged weights and the LoRA modules; the file format is
 * io/gguf.ts and the vocabulary data/gguf-vocab.ts.
 *
 * What is written mirrors llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py):
 * - arch: llama for llama / mistral / smollm (LlamaModel), qwen2 (Qwen2Model), gpt2 (GPT2Model);
 * - metadata in the converter's order: general.architecture, general.type, general.name, the hyperparameters of
 *   TextModel.set_gguf_parameters (+ LlamaModel's vocab_size and rope.dimension_count), general.file_type,
 *   general.quantization_version, then the tokenizer (data/gguf-vocab.ts: byte-level BPE, or SentencePiece for llama);
 * - tensors under gguf-py's names (token_embd, blk.N.attn_q, ..., output_norm, output), shapes as PyTorch's
 *   (GGUF stores them reversed), Q and K rows of llama permuted for llama.cpp's interleaved rotary layout
 *   (LlamaModel.permute; qwen2 and gpt2 keep HF's layout), GPT-2's Conv1D weights as [out, in];
 * - tied embeddings: no output.weight (llama.cpp then uses token_embd);
 * - llama3 rope scaling: the rope_freqs.weight tensor of per-frequency divisors (LlamaModel.generate_extra_tensors);
 * - types by --outtype with prepare_tensors' rules: 1-D tensors, biases, norms and GPT-2's position_embd stay F32;
 *   a Q8_0 tensor whose rows are not whole 32-value blocks falls back to F16, as the converter does.
 * Tensors are produced one at a time while the file is written, so memory stays near one f32 tensor.
 */
import { basename, resolve } from 'node:path';
import { ggufVocab } from '../data/gguf-vocab.js';
import { UserError } from '../errors.js';
import { encodeTensor, type GgufTensorSpec, type GgufTensorType, type GgufValue, gv, writeGguf } from '../io/gguf.js';
import type { CausalLM } from '../models/causal-lm.js';
import type { ModelConfig } from '../models/config.js';
import { readModelConfig } from '../models/load.js';
import { SCORE_WEIGHT } from '../models/reward.js';
import type { LoraConfig } from './config.js';
import type { LoraApplied } from './lora.js';
import { LoraLinear } from './lora.js';
import { mergedTensors } from './merge.js';

export const GGUF_OUTTYPES = ['f32', 'f16', 'bf16', 'q8_0'] as const;
export type GgufOutType = (typeof GGUF_OUTTYPES)[number];

/** llama.cpp's llama_ftype (gguf.LlamaFileType) for general.file_type. */
const FILE_TYPE: Record<GgufOutType, number> = { f32: 0, f16: 1, q8_0: 7, bf16: 32 };
const TENSOR_TYPE: Record<GgufOutType, GgufTensorType> = { f32: 'F32', f16: 'F16', bf16: 'BF16', q8_0: 'Q8_0' };
/** gguf.GGML_QUANT_VERSION. */
const QUANT_VERSION = 2;

export type GgufArch = 'llama' | 'qwen2' | 'gpt2';

/** The llama.cpp architecture convert_hf_to_gguf.py picks for a config, or a UserError saying why none fits. */
export function ggufArch(c: ModelConfig, file = 'config.json'): GgufArch {
  if (c.arch === 'gpt2') return 'gpt2';
  const arch: GgufArch = c.modelType === 'qwen2' ? 'qwen2' : 'llama';
  if (c.partialRotaryFactor !== 1) throw new UserError(`${file}: partial_rotary_factor ${c.partialRotaryFactor}: llama.cpp's ${arch} rotates whole heads`, 'this model cannot be exported to GGUF by ajuste');
  if (arch === 'qwen2' && c.ropeScaling && c.ropeScaling.rope_type !== 'default') {
    throw new UserError(`${file}: rope_scaling ${c.ropeScaling.rope_type} on a qwen2 model: llama.cpp's qwen2 has no rope_freqs and convert_hf_to_gguf.py does not write them`, 'export the model without rope_scaling');
  }
  return arch;
}

/** gguf-py's tensor name (gguf.get_tensor_name_map) for a transformers parameter name. */
export function ggufTensorName(arch: GgufArch, hf: string): string {
  const m = /^(.*?)\.(weight|bias)$/.exec(hf);
  if (m) {
    const [, mod, kind] = m as unknown as [string, string, string];
    const layer = /^(?:model\.layers|transformer\.h)\.(\d+)\.(.+)$/.exec(mod);
    const blockNames: Record<string, string> =
      arch === 'gpt2'
        ? { ln_1: 'attn_norm', 'attn.c_attn': 'attn_qkv', 'attn.c_proj': 'attn_output', ln_2: 'ffn_norm', 'mlp.c_fc': 'ffn_up', 'mlp.c_proj': 'ffn_down' }
        : {
            input_layernorm: 'attn_norm',
            'self_attn.q_proj': 'attn_q',
            'self_attn.k_proj': 'attn_k',
            'self_attn.v_proj': 'attn_v',
            'self_attn.o_proj': 'attn_output',
            post_attention_layernorm: 'ffn_norm',
            'mlp.gate_proj': 'ffn_gate',
            'mlp.up_proj': 'ffn_up',
            'mlp.down_proj': 'ffn_down',
          };
    const topNames: Record<string, string> =
      arch === 'gpt2'
        ? { 'transformer.wte': 'token_embd', 'transformer.wpe': 'position_embd', 'transformer.ln_f': 'output_norm', lm_head: 'output' }
        : { 'model.embed_tokens': 'token_embd', 'model.norm': 'output_norm', lm_head: 'output' };
    const name = layer ? (blockNames[layer[2]!] ? `blk.${layer[1]}.${blockNames[layer[2]!]}` : undefined) : topNames[mod];
    if (name) return `${name}.${kind}`;
  }
  throw new Error(`ggufTensorName: no ${arch} tensor for '${hf}'`);
}

/**
 * LlamaModel.permute: HF's Q/K rows put the two halves of each head's rotary pairs apart (rotate_half);
 * llama.cpp's llama rotates adjacent pairs. Row h*D + 2j + i of the result is row h*D + i*D/2 + j of `w`
 * (D = rows / nHead). `cols` = 1 for a bias.
 */
export function permuteQK(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const D = rows / nHead;
  if (!Number.isInteger(D) || D % 2 !== 0) throw new Error(`permuteQK: ${rows} rows do not split into ${nHead} heads of even size`);
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < D / 2; j++) {
        const src = (h * D + i * (D / 2) + j) * cols;
        out.set(w.subarray(src, src + cols), (h * D + 2 * j + i) * cols);
      }
    }
  }
  return out;
}

/** The inverse of permuteQK (for tests and readers). */
export function unpermuteQK(w: Float32Array, rows: number, cols: number, nHead: number): Float32Array {
  const D = rows / nHead;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < D / 2; j++) {
        const src = (h * D + 2 * j + i) * cols;
        out.set(w.subarray(src, src + cols), (h * D + i * (D / 2) + j) * cols);
      }
    }
  }
  return out;
}

/** Heads to permute a llama Q/K weight or bias by, or 0 for any other tensor. */
function qkHeads(arch: GgufArch, c: ModelConfig, hf: string): number {
  if (arch !== 'llama') return 0;
  if (/\.q_proj\.(weight|bias)$/.test(hf)) return c.heads;
  if (/\.k_proj\.(weight|bias)$/.test(hf)) return c.kvHeads;
  return 0;
}

/**
 * rope_freqs for llama3 rope scaling: per rotary frequency the divisor llama.cpp applies (1 for high frequencies,
 * `factor` for low ones, a smooth blend between), LlamaModel.generate_extra_tensors' formula. The original context
 * is rope_scaling.original_max_position_embeddings, as transformers computes the scaled frequencies (the converter
 * reads a top-level key of that name, absent in Llama 3.x configs, and so uses 8192, the value they all have).
 */
export function llama3RopeFreqs(c: ModelConfig): Float32Array {
  const s = c.ropeScaling!;
  const dim = c.headDim;
  const factor = s.factor ?? 8;
  const low = s.low_freq_factor ?? 1;
  const high = s.high_freq_factor ?? 4;
  const oldCtx = s.original_max_position_embeddings ?? (c.raw.original_max_position_embeddings as number | undefined) ?? 8192;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = Math.fround(1 / Math.fround(c.ropeTheta ** Math.fround((2 * i) / dim)));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < oldCtx / high) out[i] = 1;
    else if (wavelen > oldCtx / low) out[i] = factor;
    else {
      const smooth = (oldCtx / wavelen - low) / (high - low);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/** prepare_tensors' choice: F32 for 1-D tensors, norms, non-weights and position embeddings; else the outtype. */
function tensorType(ggufName: string, ndim: number, outtype: GgufOutType): GgufTensorType {
  if (ndim <= 1 || ggufName.endsWith('_norm.weight') || ggufName === 'position_embd.weight') return 'F32';
  if (!/\.(weight|lora_a|lora_b)$/.test(ggufName)) return 'F32';
  return TENSOR_TYPE[outtype];
}

/** A tensor spec that converts `values()` when the writer reaches it; Q8_0 with ragged rows becomes F16. */
function spec(name: string, shape: number[], type: GgufTensorType, values: () => Float32Array, fallbacks: string[]): GgufTensorSpec {
  const row = shape[shape.length - 1] ?? 1;
  if (type === 'Q8_0' && row % 32 !== 0) {
    fallbacks.push(name);
    type = 'F16';
  }
  return { name, type, shape, data: () => encodeTensor(values(), type) };
}

/** TextModel / LlamaModel / GPT2Model.set_gguf_parameters (without general.file_type). */
function hyperparameters(arch: GgufArch, c: ModelConfig): [string, GgufValue][] {
  const k = (key: string) => `${arch}.${key}`;
  if (arch === 'gpt2') {
    // GPT2Model writes n_ctx and 4 * n_embd; n_positions and n_inner (or 4 * n_embd) are what the tensors have
    // (n_ctx equals n_positions in GPT-2's configs, and recent transformers no longer writes it)
    return [
      [k('block_count'), gv.u32(c.layers)],
      [k('context_length'), gv.u32(c.maxPositions)],
      [k('embedding_length'), gv.u32(c.hidden)],
      [k('feed_forward_length'), gv.u32(c.intermediate)],
      [k('attention.head_count'), gv.u32(c.heads)],
      [k('attention.layer_norm_epsilon'), gv.f32(c.normEps)],
    ];
  }
  const kv: [string, GgufValue][] = [
    [k('block_count'), gv.u32(c.layers)],
    [k('context_length'), gv.u32(c.maxPositions)],
    [k('embedding_length'), gv.u32(c.hidden)],
    [k('feed_forward_length'), gv.u32(c.intermediate)],
    [k('attention.head_count'), gv.u32(c.heads)],
    [k('attention.head_count_kv'), gv.u32(c.kvHeads)],
  ];
  if (c.ropeScaling?.rope_type === 'linear' && c.ropeScaling.factor !== undefined) {
    kv.push([k('rope.scaling.type'), gv.str('linear')], [k('rope.scaling.factor'), gv.f32(c.ropeScaling.factor)]);
  }
  kv.push([k('rope.freq_base'), gv.f32(c.ropeTheta)], [k('attention.layer_norm_rms_epsilon'), gv.f32(c.normEps)]);
  // transformers' LlamaConfig and MistralConfig always carry head_dim (AutoConfig.to_dict has it); Qwen2Config only
  // when config.json names it
  if (c.modelType === 'llama' || c.modelType === 'mistral' || c.raw.head_dim !== undefined) {
    kv.push([k('attention.key_length'), gv.u32(c.headDim)], [k('attention.value_length'), gv.u32(c.headDim)]);
  }
  return kv;
}

export interface GgufExportOptions {
  /** Tensor type of the matrices (default f16, as convert_hf_to_gguf.py). */
  outtype?: GgufOutType;
  /** The Hugging Face folder the model was loaded from (tokenizer files, config.json, the default name). */
  modelDir: string;
  /** general.name (default: the folder's name). */
  name?: string;
  /** Write the tokenizer (default true); without it tokenizer.ggml.model is "none". */
  tokenizer?: boolean;
  /** tokenizer.ggml.pre to write instead of the one chosen (data/gguf-vocab.ts). */
  tokenizerPre?: string;
}

export interface GgufExportResult {
  path: string;
  arch: GgufArch;
  bytes: number;
  tensors: number;
  /** Tensors written F16 instead of Q8_0 (rows not whole 32-value blocks). */
  fallbacks: string[];
  /** tokenizer.ggml.pre and why, when a tokenizer was written. */
  pre: { name: string; reason: string } | null;
}

/** Writes `model` (any applied LoRA merged) to `outPath` as a GGUF model for llama.cpp. */
export function exportGguf(model: CausalLM, outPath: string, opts: GgufExportOptions): GgufExportResult {
  const c = model.config;
  const arch = ggufArch(c, `${opts.modelDir}/config.json`);
  if (model.headless || model.namedParameters().some(([n]) => n === SCORE_WEIGHT)) {
    throw new UserError(`${opts.modelDir} is a reward model (a score head${model.headless ? ' and no lm_head' : ''}); GGUF export writes causal language models`, 'export the causal LM the reward model was trained from');
  }
  const outtype = opts.outtype ?? 'f16';
  const fallbacks: string[] = [];
  const tensors: GgufTensorSpec[] = [];
  if (arch === 'llama' && c.ropeScaling?.rope_type === 'llama3') {
    const freqs = llama3RopeFreqs(c);
    tensors.push(spec('rope_freqs.weight', [freqs.length], 'F32', () => freqs, fallbacks));
  }
  for (const t of mergedTensors(model)) {
    const name = ggufTensorName(arch, t.name);
    const heads = qkHeads(arch, c, t.name);
    const rows = t.shape[0]!;
    const cols = t.shape.length > 1 ? t.shape[1]! : 1;
    const values = heads ? () => permuteQK(t.data(), rows, cols, heads) : () => t.data();
    tensors.push(spec(name, t.shape, tensorType(name, t.shape.length, outtype), values, fallbacks));
  }
  const { kv, pre } = modelMetadata(c, arch, outtype, opts);
  const bytes = writeGguf(outPath, kv, tensors);
  return { path: outPath, arch, bytes, tensors: tensors.length, fallbacks, pre };
}

/** The metadata of a model file: general.*, hyperparameters, file type, quantization version, tokenizer. */
function modelMetadata(c: ModelConfig, arch: GgufArch, outtype: GgufOutType, opts: GgufExportOptions): { kv: [string, GgufValue][]; pre: GgufExportResult['pre'] } {
  const kv: [string, GgufValue][] = [
    ['general.architecture', gv.str(arch)],
    ['general.type', gv.str('model')],
    ['general.name', gv.str(opts.name ?? basename(resolve(opts.modelDir)))],
    ...hyperparameters(arch, c),
    ['general.file_type', gv.u32(FILE_TYPE[outtype])],
  ];
  if (arch === 'llama') kv.push(['llama.vocab_size', gv.u32(c.vocabSize)], ['llama.rope.dimension_count', gv.u32(c.headDim)]);
  if (opts.tokenizer === false) {
    // convert_hf_to_gguf's _set_vocab_none; llama.cpp sizes a "none" vocabulary by {arch}.vocab_size, which only
    // LlamaModel writes, so add it for the others
    if (arch !== 'llama') kv.push([`${arch}.vocab_size`, gv.u32(c.vocabSize)]);
    kv.push(['general.quantization_version', gv.u32(QUANT_VERSION)], ['tokenizer.ggml.model', gv.str('none')]);
    return { kv, pre: null };
  }
  const vocab = ggufVocab(opts.modelDir, { vocabSize: c.vocabSize, config: c.raw, addSpacePrefix: arch === 'llama', pre: opts.tokenizerPre, arch });
  kv.push(['general.quantization_version', gv.u32(QUANT_VERSION)], ...vocab.kv);
  return { kv, pre: { name: vocab.pre, reason: vocab.preReason } };
}

/**
 * The vocabulary alone (convert_hf_to_gguf.py --vocab-only): a model file's metadata with no tensors, from
 * `modelDir`'s config.json and tokenizer; llama.cpp's tokenizer tools load such files.
 */
export function exportGgufVocab(modelDir: string, outPath: string, opts: Omit<GgufExportOptions, 'modelDir' | 'tokenizer'> = {}): GgufExportResult {
  const c = readModelConfig(modelDir);
  const arch = ggufArch(c, `${modelDir}/config.json`);
  const { kv, pre } = modelMetadata(c, arch, opts.outtype ?? 'f16', { ...opts, modelDir });
  const bytes = writeGguf(outPath, kv, []);
  return { path: outPath, arch, bytes, tensors: 0, fallbacks: [], pre };
}

export interface GgufLoraExportOptions {
  /** Tensor type of lora_a / lora_b (default f32, as convert_lora_to_gguf.py). */
  outtype?: GgufOutType;
  /** general.name (default: the adapter folder's name). */
  name?: string;
  adapterDir?: string;
}

export interface GgufLoraExportResult {
  path: string;
  arch: GgufArch;
  bytes: number;
  modules: number;
  alpha: number;
  fallbacks: string[];
  /** Modules whose scaling is not alpha/r (rsLoRA, rank_pattern, alpha_pattern): folded into lora_b. */
  rescaled: string[];
}

/**
 * Writes the LoRA adapter applied to `model` (loaded by peft/adapter-io's loadAdapter) as a GGUF LoRA file, as
 * convert_lora_to_gguf.py does: general.type "adapter", adapter.type "lora", adapter.lora.alpha; per target
 * `<base tensor>.lora_a` = A [r, in] and `<base tensor>.lora_b` = B [out, r] (PEFT's orientation, so ne = [in, r]
 * and [r, out]), B's rows permuted like the base weight for llama's Q and K. llama.cpp adds
 * (alpha / r) · lora_b · lora_a: where PEFT's scaling differs (rsLoRA's alpha/√r, rank_pattern, alpha_pattern),
 * the difference is folded into lora_b, which the converter does not do (its file would scale those wrongly).
 */
export function exportLoraGguf(model: CausalLM, adapter: { config: LoraConfig; applied: LoraApplied }, outPath: string, opts: GgufLoraExportOptions = {}): GgufLoraExportResult {
  const c = model.config;
  const arch = ggufArch(c);
  const { config } = adapter;
  const where = opts.adapterDir ?? 'the adapter';
  const other = adapter.applied.trainable.map(([n]) => n).filter((n) => !/\.lora_[AB]\.weight$/.test(n));
  if (other.some((n) => n.endsWith('.lora_magnitude_vector'))) {
    throw new UserError(`${where} is a DoRA adapter; llama.cpp's LoRA files hold only lora_a / lora_b pairs`, 'export the merged model instead: ajuste export --model M --adapter A --out model.gguf');
  }
  if (other.length) {
    throw new UserError(`${where} also trains ${other.slice(0, 3).join(', ')}${other.length > 3 ? ', ...' : ''} (modules_to_save or bias); llama.cpp's LoRA files hold only lora_a / lora_b pairs`, 'export the merged model instead: ajuste export --model M --adapter A --out model.gguf');
  }
  const outtype = opts.outtype ?? 'f32';
  const alpha = config.lora_alpha;
  const fallbacks: string[] = [];
  const rescaled: string[] = [];
  const tensors: GgufTensorSpec[] = [];
  let modules = 0;
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof LoraLinear)) continue;
    modules++;
    const base = ggufTensorName(arch, `${path}.weight`);
    const { r } = m;
    const inF = m.inFeatures;
    const outF = m.outFeatures;
    // llama.cpp scales by alpha / r (by 1 when alpha is 0); make lora_b carry whatever PEFT's scaling adds to that
    const llamaScale = alpha ? alpha / r : 1;
    const fold = m.scaling / llamaScale;
    if (Math.abs(fold - 1) > 1e-12) rescaled.push(path);
    const heads = qkHeads(arch, c, `${path}.weight`);
    const A = () => Float32Array.from(m.A.f);
    const B = () => {
      let b: Float32Array = Float32Array.from(m.B.f);
      if (fold !== 1) for (let i = 0; i < b.length; i++) b[i] = b[i]! * fold;
      if (heads) b = permuteQK(b, outF, r, heads);
      return b;
    };
    tensors.push(spec(`${base}.lora_a`, [r, inF], tensorType(`${base}.lora_a`, 2, outtype), A, fallbacks));
    tensors.push(spec(`${base}.lora_b`, [outF, r], tensorType(`${base}.lora_b`, 2, outtype), B, fallbacks));
  }
  if (modules === 0) throw new UserError(`${where}: the model has no LoRA modules applied`, 'load the adapter first (peft/adapter-io.ts loadAdapter)');
  const kv: [string, GgufValue][] = [
    ['general.architecture', gv.str(arch)],
    ['general.type', gv.str('adapter')],
    ['adapter.type', gv.str('lora')],
    ['general.name', gv.str(opts.name ?? (opts.adapterDir ? basename(resolve(opts.adapterDir)) : 'lora'))],
    ['adapter.lora.alpha', gv.f32(alpha)],
    ['general.quantization_version', gv.u32(QUANT_VERSION)],
  ];
  const bytes = writeGguf(outPath, kv, tensors);
  return { path: outPath, arch, bytes, modules, alpha, fallbacks, rescaled };
}
