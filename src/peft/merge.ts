/**
 * Writing a merged model: every LoRA update folded into its base weight, saved as a normal Hugging Face
 * folder (config.json, model.safetensors, tokenizer and generation files copied) that transformers loads
 * without PEFT. Weights keep the dtype they were stored in (a bf16 base stays bf16).
 * A 4-bit (QLoRA) base is dequantized, never re-quantized: the merged model is written in the dtype the
 * weights had before quantization (bf16/f16 for a 16-bit model, f32 for an f32 one) and config.json loses
 * its quantization_config; a log line says so.
 * A reward model (a `score` head, models/reward.ts) is written as transformers' *ForSequenceClassification:
 * the body and score.weight, no lm_head, config.json with that architecture, one label and the pad token id.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import { bf16ToF32, f32ToBf16, f32ToF16 } from '../io/dtypes.js';
import { writeSafetensors } from '../io/safetensors.js';
import { isConv1dWeight } from '../models/build.js';
import type { CausalLM } from '../models/causal-lm.js';
import { rewardModelConfig } from '../models/reward.js';
import { Linear4bit } from '../quant/linear4bit.js';
import type { Tensor } from '../tensor/tensor.js';
import { LoraLinear } from './lora.js';

// tokenizer.model and added_tokens.json: a SentencePiece model's vocabulary for GGUF export (data/gguf-vocab.ts)
const COPIED = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja', 'chat_template.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'added_tokens.json'];

/** One weight of the merged model; `data()` computes it (so a caller can convert and drop it before the next one). */
export interface MergedTensor {
  /** transformers' parameter name. */
  name: string;
  /** Shape in ajuste's orientation: Linear weights [out, in], GPT-2's Conv1D weights included. */
  shape: number[];
  /** A GPT-2 Conv1D weight (stored transposed, [in, out], in a transformers checkpoint). */
  conv1d: boolean;
  /** f32 values (may be a view of the model's own weights: do not write into it). */
  data(): Float32Array;
}

/**
 * The model's weights under transformers' names with every LoRA update merged (W + s·B·A, DoRA rescaled) and
 * 4-bit layers dequantized, one tensor at a time. Adapter tensors and bitsandbytes side tensors are left out.
 */
export function* mergedTensors(model: CausalLM): Generator<MergedTensor> {
  const loras = new Map<string, LoraLinear>();
  for (const [path, m] of model.namedModules()) if (m instanceof LoraLinear) loras.set(`${path}.base_layer.weight`, m);
  // 4-bit layers: their packed weight param stands for the dequantized weight; the bnb side tensors are dropped.
  const quant = new Map<Tensor, Linear4bit>();
  const bnbSide = new Set<Tensor>();
  for (const [, m] of model.namedModules()) {
    if (!(m instanceof Linear4bit)) continue;
    for (const [n, p] of m.namedParameters()) {
      if (n === 'weight') quant.set(p, m);
      else if (n !== 'bias') bnbSide.add(p);
    }
  }
  for (const [name0, p] of model.namedParameters()) {
    if (/\.lora_(A|B)\.weight$|\.lora_magnitude_vector$/.test(name0) || bnbSide.has(p)) continue;
    const name = name0.replace('.base_layer.', '.');
    const lora = loras.get(name0);
    const q4 = quant.get(p);
    const shape = q4 ? [q4.outFeatures, q4.inFeatures] : lora ? [lora.outFeatures, lora.inFeatures] : [...p.shape];
    const data = (): Float32Array => {
      if (lora) return lora.mergedWeight();
      if (q4) return q4.denseWeight();
      return p.dtype === 'bf16' ? bf16ToF32(p.data as Uint16Array) : (p.f as Float32Array);
    };
    yield { name, shape, conv1d: isConv1dWeight(model.config, name), data };
  }
}

/**
 * The model's state dict under transformers' names, LoRA merged; `dtype` 'bf16' stores matrices
 * in BF16 (norms and biases too, as transformers saves a bf16 model), else F32.
 */
export function mergedStateDict(model: CausalLM, dtype: 'F32' | 'BF16' | 'F16'): Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> {
  const out: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
  for (const t of mergedTensors(model)) {
    let data = t.data();
    let shape = t.shape;
    if (t.conv1d) {
      const [o, i] = shape as [number, number];
      const tr = new Float32Array(data.length);
      for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) tr[c * o + r] = data[r * i + c]!;
      data = tr;
      shape = [i, o];
    }
    out[t.name] = dtype === 'BF16' ? { dtype: 'BF16', shape, data: f32ToBf16(data) } : dtype === 'F16' ? { dtype: 'F16', shape, data: f32ToF16(data) } : { dtype: 'F32', shape, data };
  }
  return out;
}

export interface SaveMergedOptions {
  onInfo?: (message: string) => void;
  /** Write a reward model (AutoModelForSequenceClassification, num_labels 1) that pools at this pad id. */
  reward?: { padTokenId: number };
}

/** Writes a merged Hugging Face folder to outDir, copying config and tokenizer files from baseDir. */
export function saveMergedModel(model: CausalLM, baseDir: string, outDir: string, opts: SaveMergedOptions = {}): void {
  mkdirSync(outDir, { recursive: true });
  const q4 = model.namedModules().map(([, m]) => m).filter((m): m is Linear4bit => m instanceof Linear4bit);
  for (const [, m] of model.namedModules()) if (m instanceof LoraLinear && m.merged && m.base4bit) q4.push(m.base4bit);
  let dtype: 'F32' | 'BF16' | 'F16' = model.config.torchDtype === 'bfloat16' ? 'BF16' : 'F32';
  const raw: Record<string, unknown> = opts.reward ? rewardModelConfig(model.config, opts.reward.padTokenId) : { ...model.config.raw };
  if (q4.length) {
    // Dequantize, never re-quantize: the dtype the weights had before quantization.
    const orig = q4[0]!.state.dtype;
    dtype = orig === 'bfloat16' ? 'BF16' : orig === 'float16' ? 'F16' : 'F32';
    delete raw.quantization_config;
    raw.torch_dtype = orig;
    const info = opts.onInfo ?? ((m: string) => process.stderr.write(`ajuste: ${m}\n`));
    info(`merging into a 4-bit base: ${q4.length} 4-bit layers dequantized; writing a ${orig} model without quantization_config (not re-quantized) to ${outDir}`);
  }
  const tensors = mergedStateDict(model, dtype);
  if (opts.reward) {
    // A sequence classifier has no lm_head (transformers' *ForSequenceClassification); its head is score.
    if (!tensors['score.weight']) throw new Error('saveMergedModel: reward requested but the model has no score head');
    for (const k of Object.keys(tensors)) if (k.startsWith('lm_head.')) delete tensors[k];
  }
  writeSafetensors(join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  writeFileAtomic(join(outDir, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  for (const f of COPIED) if (existsSync(join(baseDir, f))) copyFileSync(join(baseDir, f), join(outDir, f));
}
