/**
 * Writing a merged model: every LoRA update folded into its base weight, saved as a normal Hugging Face
 * folder (config.json, model.safetensors, tokenizer and generation files copied) that transformers loads
 * without PEFT. Weights keep the dtype they were stored in (a bf16 base stays bf16).
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import { bf16ToF32, f32ToBf16 } from '../io/dtypes.js';
import { writeSafetensors } from '../io/safetensors.js';
import { isConv1dWeight } from '../models/build.js';
import type { CausalLM } from '../models/causal-lm.js';
import { LoraLinear } from './lora.js';

const COPIED = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja', 'chat_template.json', 'vocab.json', 'merges.txt'];

/**
 * The model's state dict under transformers' names, LoRA merged; `dtype` 'bf16' stores matrices
 * in BF16 (norms and biases too, as transformers saves a bf16 model), else F32.
 */
export function mergedStateDict(model: CausalLM, dtype: 'F32' | 'BF16'): Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> {
  const out: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
  const mergedWeights = new Map<string, Float32Array>();
  for (const [path, m] of model.namedModules()) if (m instanceof LoraLinear) mergedWeights.set(`${path}.weight`, m.mergedWeight());
  for (const [name0, p] of model.namedParameters()) {
    if (/\.lora_(A|B)\.weight$|\.lora_magnitude_vector$/.test(name0)) continue;
    const name = name0.replace('.base_layer.', '.');
    let data: Float32Array;
    let shape = [...p.shape];
    const merged = mergedWeights.get(name0.replace('.base_layer.weight', '.weight'));
    if (merged && name0.endsWith('.base_layer.weight')) data = merged;
    else if (p.dtype === 'bf16') data = bf16ToF32(p.data as Uint16Array);
    else data = p.f as Float32Array;
    if (isConv1dWeight(model.config, name)) {
      const [o, i] = shape as [number, number];
      const t = new Float32Array(data.length);
      for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) t[c * o + r] = data[r * i + c]!;
      data = t;
      shape = [i, o];
    }
    out[name] = dtype === 'BF16' ? { dtype: 'BF16', shape, data: f32ToBf16(data) } : { dtype: 'F32', shape, data };
  }
  return out;
}

/** Writes a merged Hugging Face folder to outDir, copying config and tokenizer files from baseDir. */
export function saveMergedModel(model: CausalLM, baseDir: string, outDir: string): void {
  mkdirSync(outDir, { recursive: true });
  const dtype = model.config.torchDtype === 'bfloat16' ? 'BF16' : 'F32';
  writeSafetensors(join(outDir, 'model.safetensors'), mergedStateDict(model, dtype), { format: 'pt' });
  writeFileAtomic(join(outDir, 'config.json'), JSON.stringify(model.config.raw, null, 2) + '\n');
  for (const f of COPIED) if (existsSync(join(baseDir, f))) copyFileSync(join(baseDir, f), join(outDir, f));
}
