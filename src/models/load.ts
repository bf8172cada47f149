/**
 * Loading a Hugging Face model folder: config.json -> architecture, safetensors weights (memory-mapped
 * when the addon is built, so frozen weights are not copied), generation_config.json defaults.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { readSafetensorsFolder } from '../io/safetensors.js';
import { type BuildOptions, buildModel, type RawTensor } from './build.js';
import type { CausalLM } from './causal-lm.js';
import { type ModelConfig, parseModelConfig } from './config.js';
import { SCORE_WEIGHT } from './reward.js';

export function readJson(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UserError(`cannot read ${file}`, 'is this a Hugging Face model folder?');
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`);
  }
}

export function readModelConfig(dir: string): ModelConfig {
  const file = join(dir, 'config.json');
  return parseModelConfig(readJson(file), file);
}

/** generation_config.json of the folder, or {} when absent. */
export function readGenerationConfig(dir: string): Record<string, unknown> {
  const file = join(dir, 'generation_config.json');
  return existsSync(file) ? readJson(file) : {};
}

export interface LoadedModel {
  model: CausalLM;
  config: ModelConfig;
  dir: string;
  generationConfig: Record<string, unknown>;
  /** `score.weight` when the folder is a reward model (transformers' *ForSequenceClassification), else null. */
  scoreWeight: RawTensor | null;
}

/** Loads a local model folder. `dtype` 'auto' keeps bf16 weights bf16 in memory (as torch_dtype says). */
export function loadModelFolder(dir: string, opts: BuildOptions = {}): LoadedModel {
  const config = readModelConfig(dir);
  const weights = readSafetensorsFolder(dir, { copy: opts.writable ?? false });
  const model = buildModel(config, weights.tensors, opts);
  return { model, config, dir, generationConfig: readGenerationConfig(dir), scoreWeight: weights.tensors.get(SCORE_WEIGHT) ?? null };
}
