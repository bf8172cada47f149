import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors } from '../src/io/safetensors.js';
import { randomWeights } from '../src/models/build.js';
import { parseModelConfig } from '../src/models/config.js';
import type { SftConfig } from '../src/train/sft.js';

export const TINY_TOKENIZER = 'test/fixtures/data/tiny-tokenizer';

/** A tiny random Llama model folder (tiny byte-level tokenizer, 268 ids) in a temp dir. */
export function makeTinyModelDir(opts: { seed?: number; layers?: number; hidden?: number } = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'ajuste-model-'));
  const config = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 268, hidden_size: opts.hidden ?? 64,
    intermediate_size: 128, num_hidden_layers: opts.layers ?? 2, num_attention_heads: 4, num_key_value_heads: 2,
    rms_norm_eps: 1e-6, rope_theta: 10000, max_position_embeddings: 512, tie_word_embeddings: false,
    torch_dtype: 'float32', bos_token_id: null, eos_token_id: 265, hidden_act: 'silu',
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  // std 0.2: the frozen lm_head must be able to produce confident logits through the final RMSNorm.
  const weights = randomWeights(parseModelConfig(config), opts.seed ?? 0, 0.2);
  writeSafetensors(join(dir, 'model.safetensors'), weights, { format: 'pt' });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(TINY_TOKENIZER, f), join(dir, f));
  return dir;
}

export const FACTS: [string, string][] = [
  ['Capital of France?', ' Paris'],
  ['Capital of Japan?', ' Tokyo'],
  ['Color of the sky?', ' blue'],
  ['Opposite of hot?', ' cold'],
  ['Two plus two?', ' four'],
  ['Largest ocean?', ' Pacific'],
];

export function writeFactsJsonl(dir: string, repeat = 1): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'facts.jsonl');
  const lines: string[] = [];
  for (let i = 0; i < repeat; i++) for (const [q, a] of FACTS) lines.push(JSON.stringify({ prompt: `Q: ${q}\nA:`, completion: a }));
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

export function baseConfig(modelDir: string, data: string, out: string): SftConfig {
  return {
    model_name_or_path: modelDir, method: 'lora', lora: { r: 16, lora_alpha: 32, target_modules: 'all-linear' },
    dataset_path: data, max_length: 64, output_dir: out, num_train_epochs: 1, max_steps: 60,
    per_device_train_batch_size: 6, gradient_accumulation_steps: 1, learning_rate: 1e-2, weight_decay: 0,
    max_grad_norm: 1, lr_scheduler_type: 'constant', warmup_ratio: 0, warmup_steps: 0, optim: 'adamw_torch',
    logging_steps: 10, save_steps: 30, seed: 1,
  };
}

