/**
 * Saving and loading LoRA adapters in Hugging Face PEFT's layout: adapter_config.json +
 * adapter_model.safetensors with keys base_model.model.<module path>.lora_A.weight etc. (no adapter
 * name), metadata {"format": "pt"}. Loading accepts keys with an adapter name (".lora_A.default.weight",
 * ".modules_to_save.default.weight") too, as PEFT has them in memory.
 *
 * A reward model's adapter (task_type SEQ_CLS) also holds its score head, saved as PEFT saves a
 * modules_to_save classifier: base_model.model.score.weight [1, hidden]; loadRewardAdapter reads it.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { bf16ToF32 } from '../io/dtypes.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { isConv1dWeight } from '../models/build.js';
import type { CausalLM } from '../models/causal-lm.js';
import { RewardModel, SCORE_WEIGHT } from '../models/reward.js';
import { Rng } from '../tensor/rng.js';
import type { Tensor } from '../tensor/tensor.js';
import { adapterConfigJson, type LoraConfig, parseAdapterConfig } from './config.js';
import { applyLora, type LoraApplied, peftKey } from './lora.js';

/** Writes adapter_config.json and adapter_model.safetensors into dir. */
export function saveAdapter(dir: string, config: LoraConfig, applied: LoraApplied, baseModel: string | null): void {
  mkdirSync(dir, { recursive: true });
  const tensors: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
  for (const [name, p] of applied.trainable) {
    tensors[peftKey(name)] = { dtype: 'F32', shape: [...p.shape], data: p.f as Float32Array };
  }
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  const moduleNames = [...new Set(applied.targets.map((t) => t.split('.').pop()!))].sort();
  writeFileAtomic(join(dir, 'adapter_config.json'), adapterConfigJson(config, { baseModel, targetModules: moduleNames }));
}

/** Reads adapter_config.json of an adapter folder. */
export function readAdapterConfig(dir: string): LoraConfig {
  const file = join(dir, 'adapter_config.json');
  if (!existsSync(file)) throw new UserError(`${dir} has no adapter_config.json`, 'pass the folder a PEFT adapter was saved to (save_pretrained)');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  const c = parseAdapterConfig(json, file);
  // target_modules in a file is the resolved set; use it as an exact-name list.
  return c;
}

/** Copies adapter weights from a safetensors file into the trainable parameters (by PEFT key). */
export function loadAdapterWeights(dir: string, model: CausalLM, applied: LoraApplied): void {
  const file = join(dir, 'adapter_model.safetensors');
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'adapter_model.bin'))) {
      throw new UserError(`${dir} holds adapter_model.bin (a pickle, which can run code); ajuste reads only safetensors`, 'convert it in Python: PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)');
    }
    throw new UserError(`${dir} has no adapter_model.safetensors`);
  }
  const f = readSafetensors(file, { copy: true });
  const byKey = new Map<string, Tensor>();
  for (const [name, p] of applied.trainable) byKey.set(peftKey(name), p);
  const seen = new Set<string>();
  for (const [rawKey, t] of f.tensors) {
    // Strip an adapter name PEFT may leave in ('.lora_A.default.weight', '.lora_magnitude_vector.default.weight').
    const key = rawKey
      .replace(/\.(lora_[AB])\.[^.]+\.weight$/, '.$1.weight')
      .replace(/\.modules_to_save\.[^.]+\.(weight|bias)$/, '.$1')
      .replace(/\.lora_magnitude_vector\.[^.]+(\.weight)?$/, '.lora_magnitude_vector')
      .replace(/\.lora_magnitude_vector\.weight$/, '.lora_magnitude_vector');
    const p = byKey.get(key);
    if (!p) throw new UserError(`${file}: tensor '${rawKey}' matches no adapted module of this model`, 'was this adapter trained on a different base model?');
    if (t.shape.length !== p.shape.length || t.shape.some((s, i) => s !== p.shape[i])) {
      throw new UserError(`${file}: tensor '${rawKey}' has shape [${t.shape}], the model expects [${p.shape}] (check r / rank_pattern)`);
    }
    const name = key.replace(/^base_model\.model\./, '');
    if (t.dtype !== 'F32' && t.dtype !== 'BF16') throw new UserError(`${file}: tensor '${rawKey}' has dtype ${t.dtype}; expected F32 or BF16`);
    const src = t.dtype === 'F32' ? (t.data as Float32Array) : bf16ToF32(t.data as Uint16Array);
    // PEFT stores modules_to_save of GPT-2 Conv1D in [in, out]; our Linear is [out, in].
    if (isConv1dWeight(model.config, name) && !/lora_/.test(name)) throw new UserError(`${file}: modules_to_save on a GPT-2 Conv1D layer is not supported`);
    p.f.set(src);
    seen.add(key);
  }
  const missing = [...byKey.keys()].filter((k) => !seen.has(k));
  if (missing.length) throw new UserError(`${file} lacks ${missing.length} adapter tensors, e.g. '${missing[0]}'`);
}

/** Applies the adapter in dir to a loaded base model (for generation, evaluation, merging or more training). */
export function loadAdapter(dir: string, model: CausalLM): { config: LoraConfig; applied: LoraApplied } {
  const config = readAdapterConfig(dir);
  if (config.task_type === 'SEQ_CLS' && !model.namedModules().some(([p]) => p === 'score')) {
    throw new UserError(`${dir} is a reward model's adapter (task_type SEQ_CLS, with a score head): it scores sequences, it does not generate`, 'score preference pairs with: ajuste eval --model BASE --adapter DIR --data pairs.jsonl');
  }
  const rng = new Rng(0);
  const applied = applyLora(model, config, rng, rng);
  loadAdapterWeights(dir, model, applied);
  return { config, applied };
}

/**
 * Loads a reward model's adapter (task_type SEQ_CLS) onto its base: the saved score head
 * (base_model.model.score.weight) is attached first, then LoRA is applied and every tensor read.
 */
export function loadRewardAdapter(dir: string, model: CausalLM, padId: number | null): { config: LoraConfig; applied: LoraApplied; reward: RewardModel } {
  const config = readAdapterConfig(dir);
  if (config.task_type !== 'SEQ_CLS') {
    throw new UserError(`${dir} is not a reward model's adapter: its task_type is ${config.task_type}, a reward model's is SEQ_CLS`, 'train one with trainer: reward');
  }
  const file = join(dir, 'adapter_model.safetensors');
  if (!existsSync(file)) throw new UserError(`${dir} has no adapter_model.safetensors`);
  const f = readSafetensors(file, { copy: true });
  const key = [...f.tensors.keys()].find((k) => k.replace(/\.modules_to_save\.[^.]+\.weight$/, '.weight') === `base_model.model.${SCORE_WEIGHT}`);
  if (!key) throw new UserError(`${file} has no score head (base_model.model.${SCORE_WEIGHT})`, 'was it saved with task_type SEQ_CLS by PEFT or ajuste?');
  const reward = RewardModel.attach(model, { padId, weight: f.tensors.get(key)!, source: file });
  const { applied } = loadAdapter(dir, model);
  return { config, applied, reward };
}
