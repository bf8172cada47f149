/**
 * Saving and loading the non-LoRA PEFT adapters ((IA)^3, prompt tuning, prefix tuning) in Hugging Face
 * PEFT's layout: adapter_config.json (sorted keys, indent 2, no final newline, as PEFT's
 * `json.dumps(..., indent=2, sort_keys=True)`) + adapter_model.safetensors with metadata {"format": "pt"}.
 * Keys: (IA)^3 `base_model.model.<module>.ia3_l`; prompt learning the single key `prompt_embeddings`
 * (see shared/reference/peft-spec.md §1.4, §1.6, §1.9-1.11).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { bf16ToF32 } from '../io/dtypes.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { ModelConfig } from '../models/config.js';
import type { Tensor } from '../tensor/tensor.js';
import { pyJsonDumps } from '../io/pyjson.js';

export const PEFT_VERSION = '0.20.0';

/** What applyIa3 / applyPromptTuning / applyPrefixTuning give the training recipe. */
export interface PeftMethodHandle {
  /** Trainable parameters with their names (PEFT state-dict names without base_model.model.). */
  trainable: [string, Tensor][];
  /** Writes adapter_config.json + adapter_model.safetensors in PEFT's layout. */
  save(dir: string, baseModelName: string | null): void;
  /** Reads a saved adapter's tensors into the trainable parameters (keys and shapes must match). */
  load(dir: string): void;
}

/** Writes adapter_model.safetensors (f32 tensors by key) and adapter_config.json into dir. */
export function writeAdapterFolder(dir: string, tensors: Map<string, Tensor>, config: Record<string, unknown>): void {
  mkdirSync(dir, { recursive: true });
  const out: Record<string, { dtype: string; shape: number[]; data: Float32Array }> = {};
  for (const [key, t] of tensors) {
    const data = t.dtype === 'f32' ? (t.f as Float32Array) : Float32Array.from(t.f);
    out[key] = { dtype: 'F32', shape: [...t.shape], data };
  }
  writeSafetensors(join(dir, 'adapter_model.safetensors'), out, { format: 'pt' });
  writeFileAtomic(join(dir, 'adapter_config.json'), pyJsonDumps(config));
}

/** Reads adapter_config.json and checks its peft_type. */
export function readAdapterConfigJson(dir: string, peftType: string): Record<string, unknown> {
  const file = join(dir, 'adapter_config.json');
  if (!existsSync(file)) throw new UserError(`${dir} has no adapter_config.json`, 'pass the folder a PEFT adapter was saved to (save_pretrained)');
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (json.peft_type !== peftType) throw new UserError(`${file}: peft_type is ${JSON.stringify(json.peft_type)}, expected "${peftType}"`, 'load it with the method it was trained with');
  return json;
}

/**
 * Copies adapter tensors from dir/adapter_model.safetensors into `expected` (PEFT key -> tensor).
 * `normalize` maps a stored key to the expected key (e.g. strips an adapter name); every expected key
 * must be present with its exact shape (a 2-D [n,1] vs [1,n] mismatch is an error, as in PEFT).
 */
export function readAdapterTensors(dir: string, expected: Map<string, Tensor>, normalize: (key: string) => string = (k) => k): void {
  const file = join(dir, 'adapter_model.safetensors');
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'adapter_model.bin'))) {
      throw new UserError(`${dir} holds adapter_model.bin (a pickle, which can run code); ajuste reads only safetensors`, 'convert it in Python: PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)');
    }
    throw new UserError(`${dir} has no adapter_model.safetensors`);
  }
  const f = readSafetensors(file, { copy: true });
  const seen = new Set<string>();
  for (const [rawKey, t] of f.tensors) {
    const key = normalize(rawKey);
    const p = expected.get(key);
    if (!p) throw new UserError(`${file}: tensor '${rawKey}' matches no adapted module of this model`, 'was this adapter trained on a different base model or with other target_modules?');
    if (t.shape.length !== p.shape.length || t.shape.some((s, i) => s !== p.shape[i])) {
      throw new UserError(`${file}: tensor '${rawKey}' has shape [${t.shape}], the model expects [${p.shape}]`, 'was this adapter trained on a different base model or configuration?');
    }
    if (t.dtype !== 'F32' && t.dtype !== 'BF16') throw new UserError(`${file}: tensor '${rawKey}' has dtype ${t.dtype}; expected F32 or BF16`);
    p.f.set(t.dtype === 'F32' ? (t.data as Float32Array) : bf16ToF32(t.data as Uint16Array));
    seen.add(key);
  }
  const missing = [...expected.keys()].filter((k) => !seen.has(k));
  if (missing.length) throw new UserError(`${file} lacks ${missing.length} adapter tensors, e.g. '${missing[0]}'`);
}

/** The fields every PeftConfig writes. */
function common(peftType: string, baseModel: string | null): Record<string, unknown> {
  return {
    auto_mapping: null,
    base_model_name_or_path: baseModel,
    inference_mode: true,
    peft_type: peftType,
    peft_version: PEFT_VERSION,
    revision: null,
    task_type: 'CAUSAL_LM',
  };
}

/** IA3Config as PEFT writes it (target/feedforward/exclude lists are sets in PEFT: any order is valid). */
export function ia3ConfigJson(
  c: { target_modules: string[] | string; feedforward_modules: string[] | string; exclude_modules: string[] | string | null; fan_in_fan_out: boolean; modules_to_save: string[] | null; init_ia3_weights: boolean },
  baseModel: string | null,
): Record<string, unknown> {
  return {
    ...common('IA3', baseModel),
    exclude_modules: c.exclude_modules,
    fan_in_fan_out: c.fan_in_fan_out,
    feedforward_modules: c.feedforward_modules,
    init_ia3_weights: c.init_ia3_weights,
    modules_to_save: c.modules_to_save,
    target_modules: c.target_modules,
  };
}

/** PromptLearningConfig fields PEFT fills from the model config (token_dim, num_layers, num_attention_heads). */
function promptLearning(nvt: number, tokenDim: number, layers: number, heads: number): Record<string, unknown> {
  return {
    modules_to_save: null,
    num_attention_heads: heads,
    num_layers: layers,
    num_transformer_submodules: 1,
    num_virtual_tokens: nvt,
    token_dim: tokenDim,
  };
}

export function promptTuningConfigJson(
  c: { num_virtual_tokens: number; prompt_tuning_init: string; prompt_tuning_init_text: string | null; tokenizer_name_or_path?: string | null },
  model: ModelConfig,
  baseModel: string | null,
): Record<string, unknown> {
  return {
    ...common('PROMPT_TUNING', baseModel),
    ...promptLearning(c.num_virtual_tokens, model.hidden, model.layers, model.heads),
    prompt_tuning_init: c.prompt_tuning_init,
    prompt_tuning_init_text: c.prompt_tuning_init_text,
    tokenizer_kwargs: null,
    tokenizer_name_or_path: c.tokenizer_name_or_path ?? (c.prompt_tuning_init === 'TEXT' ? baseModel : null),
  };
}

/** PrefixTuningConfig; under GQA PEFT rewrites token_dim = head_dim * kv heads and num_attention_heads = kv heads. */
export function prefixTuningConfigJson(
  c: { num_virtual_tokens: number; prefix_projection: boolean; encoder_hidden_size: number | null },
  model: ModelConfig,
  baseModel: string | null,
): Record<string, unknown> {
  const tokenDim = prefixTokenDim(model);
  return {
    ...common('PREFIX_TUNING', baseModel),
    ...promptLearning(c.num_virtual_tokens, tokenDim, model.layers, model.kvHeads),
    encoder_hidden_size: c.encoder_hidden_size ?? tokenDim,
    init_weights: null,
    prefix_projection: c.prefix_projection,
  };
}

/** Width of one layer's key (or value) prefix row: head_dim * num_key_value_heads (PEFT's GQA rule). */
export function prefixTokenDim(model: ModelConfig): number {
  return model.headDim * model.kvHeads;
}
