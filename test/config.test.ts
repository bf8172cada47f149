import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { UserError } from '../src/errors.js';
import {
  KEY_ALIASES,
  levenshtein,
  loadTrainConfig,
  nearest,
  parseByteSize,
  resolveTrainConfig,
  SCHEMA_DOCS,
  schemaDocsMarkdown,
  TrainConfigObject,
  UNSUPPORTED_KEYS,
} from '../src/train/config.js';

const dir = mkdtempSync(join(tmpdir(), 'ajuste-config-'));
let n = 0;
function yamlFile(text: string): string {
  const f = join(dir, `train${n++}.yaml`);
  writeFileSync(f, text);
  return f;
}
const BASE = 'model_name_or_path: HuggingFaceTB/SmolLM2-135M\ndataset_path: data/train.jsonl\noutput_dir: out\n';

/** The UserError thrown by fn (fails the test if none). */
function userError(fn: () => unknown): UserError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    return e as UserError;
  }
  throw new Error('expected a UserError');
}

describe('defaults', () => {
  it('fills the PEFT LoraConfig, SFTConfig and TrainingArguments defaults', () => {
    const c = loadTrainConfig(yamlFile(BASE));
    expect(c.method).toBe('lora');
    expect(c.lora).toEqual({
      r: 8, lora_alpha: 8, lora_dropout: 0, target_modules: null, exclude_modules: null, bias: 'none', use_rslora: false,
      use_dora: false, modules_to_save: null, layers_to_transform: null, layers_pattern: null, rank_pattern: {}, alpha_pattern: {},
      init_lora_weights: true, fan_in_fan_out: false, lora_bias: false, task_type: 'CAUSAL_LM',
    });
    expect(c).toMatchObject({
      torch_dtype: 'auto', trust_remote_code: false, load_in_4bit: false, bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: false,
      dataset_text_field: 'text', max_length: 1024, packing: false, completion_only_loss: null, assistant_only_loss: false, eval_split: 0,
      num_train_epochs: 3, max_steps: -1, per_device_train_batch_size: 8, per_device_eval_batch_size: 8, gradient_accumulation_steps: 1,
      learning_rate: 2e-5, weight_decay: 0, adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, max_grad_norm: 1,
      lr_scheduler_type: 'linear', warmup_ratio: 0, warmup_steps: 0, optim: 'adamw_torch', logging_steps: 10, eval_strategy: 'no',
      save_strategy: 'steps', save_steps: 500, save_total_limit: null, seed: 42, bf16: false, gradient_checkpointing: false,
      resume_from_checkpoint: null, report_to: 'none', dataloader_drop_last: false,
    });
  });

  it('defaults are fresh objects per load (no shared mutable state)', () => {
    const a = loadTrainConfig(yamlFile(BASE));
    a.lora.rank_pattern.x = 4;
    expect(loadTrainConfig(yamlFile(BASE)).lora.rank_pattern).toEqual({});
  });

  it('loads with no file when overrides give the required keys', () => {
    const c = loadTrainConfig(null, ['--model_name_or_path', 'm', '--dataset_path', 'd.csv', '--output_dir', 'o']);
    expect([c.model_name_or_path, c.dataset_path, c.output_dir]).toEqual(['m', 'd.csv', 'o']);
  });
});

describe('TRL aliases and method resolution', () => {
  it('maps TRL ModelConfig flat keys into lora', () => {
    const c = loadTrainConfig(
      yamlFile(`${BASE}use_peft: true\nlora_r: 64\nlora_alpha: 16\nlora_dropout: 0.05\nlora_target_modules: [q_proj, k_proj]\nlora_modules_to_save: [lm_head]\nmax_seq_length: 512\nevaluation_strategy: "no"\n`),
    );
    expect(c.method).toBe('lora');
    expect(c.lora).toMatchObject({ r: 64, lora_alpha: 16, lora_dropout: 0.05, target_modules: ['q_proj', 'k_proj'], modules_to_save: ['lm_head'] });
    expect(c.max_length).toBe(512);
  });

  it('use_peft: false means full fine-tuning, and contradicting method is an error', () => {
    expect(loadTrainConfig(yamlFile(`${BASE}use_peft: false\n`)).method).toBe('full');
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}method: full\nuse_peft: true\n`))).message).toMatch(/line 5.*use_peft: true contradicts method: full/);
  });

  it('an alias and its canonical key together is an error at the alias line', () => {
    const e = userError(() => loadTrainConfig(yamlFile(`${BASE}lora:\n  r: 4\nlora_r: 16\n`)));
    expect(e.message).toMatch(/line 6: 'lora_r' is TRL's name for 'lora.r'/);
  });

  it('alias overrides land on the canonical key', () => {
    expect(loadTrainConfig(yamlFile(BASE), ['--lora_r', '32']).lora.r).toBe(32);
    expect(loadTrainConfig(yamlFile(`${BASE}method: full\n`), ['--use_peft', 'true']).method).toBe('lora');
  });

  it('load_in_4bit with LoRA is QLoRA; qlora implies load_in_4bit; 4-bit full fine-tuning is refused', () => {
    expect(loadTrainConfig(yamlFile(`${BASE}load_in_4bit: true\n`))).toMatchObject({ method: 'qlora', load_in_4bit: true });
    expect(loadTrainConfig(yamlFile(`${BASE}method: qlora\n`))).toMatchObject({ method: 'qlora', load_in_4bit: true });
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}method: full\nload_in_4bit: true\n`))).message).toMatch(/line 5.*method qlora/);
  });

  it('accepts transformers optimizer names for the same optimizer', () => {
    expect(loadTrainConfig(yamlFile(`${BASE}optim: adamw_torch_fused\n`)).optim).toBe('adamw_torch');
    expect(loadTrainConfig(yamlFile(`${BASE}optim: adamw_bnb_8bit\n`)).optim).toBe('adamw_8bit');
  });
});

describe('unknown keys', () => {
  it('names the key, file, line and the nearest known key', () => {
    const f = yamlFile(`${BASE}learnig_rate: 1e-4\n`);
    const e = userError(() => loadTrainConfig(f));
    expect(e.message).toBe(`unknown key 'learnig_rate' in ${f} line 4 (did you mean 'learning_rate'?)`);
  });

  it('works in nested sections', () => {
    const f = yamlFile(`${BASE}lora:\n  r: 8\n  lora_alpah: 16\n`);
    expect(userError(() => loadTrainConfig(f)).message).toBe(`unknown key 'lora.lora_alpah' in ${f} line 6 (did you mean 'lora.lora_alpha'?)`);
  });

  it('gives no suggestion when nothing is close, and lists further problems in the hint', () => {
    const e = userError(() => loadTrainConfig(yamlFile(`${BASE}zzzzzzzz: 1\nwarmup_stpes: 3\n`)));
    expect(e.message).toMatch(/^unknown key 'zzzzzzzz' in .* line 4$/);
    expect(e.hint).toMatch(/1 more problem: unknown key 'warmup_stpes' .* line 5 \(did you mean 'warmup_steps'\?\)/);
  });

  it('an override of an unknown key gets the same did-you-mean error', () => {
    expect(userError(() => loadTrainConfig(yamlFile(BASE), ['--learnig_rate', '1e-4'])).message).toBe(
      "unknown key 'learnig_rate' in override --learnig_rate (did you mean 'learning_rate'?)",
    );
    expect(userError(() => loadTrainConfig(yamlFile(BASE), ['--lora.rr', '4'])).message).toMatch(/unknown key 'lora.rr' in override --lora.rr \(did you mean 'lora.r'\?\)/);
  });

  it('the zod schema itself is strict', () => {
    expect(TrainConfigObject.safeParse({ model_name_or_path: 'm', dataset_path: 'd.jsonl', output_dir: 'o', extra: 1 }).success).toBe(false);
  });
});

describe('type and range errors', () => {
  it('name the key, file and line, the expected type and the value', () => {
    const f = yamlFile(`${BASE}learning_rate: fast\n`);
    expect(userError(() => loadTrainConfig(f)).message).toBe(`${f} line 4: 'learning_rate' expects number >= 0, got 'fast'`);
    const g = yamlFile(`${BASE}\n# comment\nlora:\n  r: -3\n`);
    expect(userError(() => loadTrainConfig(g)).message).toBe(`${g} line 7: 'lora.r' expects integer >= 1, got -3`);
    const h = yamlFile(`${BASE}lora:\n  target_modules:\n    - q_proj\n    - 3\n`);
    expect(userError(() => loadTrainConfig(h)).message).toMatch(/line 5: 'lora.target_modules' expects list of string \| string \| null, got \["q_proj",3\]/);
    const i = yamlFile(`${BASE}lr_scheduler_type: cosine_annealing\n`);
    expect(userError(() => loadTrainConfig(i)).message).toMatch(/line 4: 'lr_scheduler_type' expects 'linear' \| 'cosine' \| 'constant' \| 'constant_with_warmup'/);
  });

  it('missing required keys are named', () => {
    const f = yamlFile('model_name_or_path: m\noutput_dir: o\n');
    expect(userError(() => loadTrainConfig(f)).message).toBe(`missing required key 'dataset_path' in ${f}`);
  });

  it('cross-key rules point at the key', () => {
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}trust_remote_code: true\n`))).message).toMatch(/line 4: trust_remote_code must be false/);
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}eval_strategy: steps\n`))).message).toMatch(/line 4: eval_strategy is 'steps' but there is no evaluation data/);
    expect(userError(() => loadTrainConfig(yamlFile(BASE.replace('train.jsonl', 'train.parquet')))).message).toMatch(/line 2: dataset_path must be a \.jsonl, \.json or \.csv file/);
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}method: prompt_tuning\n`))).message).toMatch(/prompt_tuning.num_virtual_tokens/);
  });

  it('report_to accepts only none, with a hint why', () => {
    expect(loadTrainConfig(yamlFile(`${BASE}report_to: []\n`)).report_to).toBe('none');
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}report_to: wandb\n`))).message).toMatch(/line 4: 'report_to' .*got 'wandb' \(ajuste has no experiment-tracker/);
  });

  it('YAML syntax errors and non-mapping files say where', () => {
    expect(userError(() => loadTrainConfig(yamlFile(`${BASE}lora: [1, 2\n`))).message).toMatch(/line \d+: invalid YAML/);
    expect(userError(() => loadTrainConfig(yamlFile('- a\n- b\n'))).message).toMatch(/must be a mapping/);
    expect(userError(() => loadTrainConfig(join(dir, 'nope.yaml'))).message).toMatch(/config file not found/);
  });
});

describe('GPU / distributed keys', () => {
  it('are refused as not supported, not as unknown', () => {
    const e = userError(() => loadTrainConfig(yamlFile(`${BASE}deepspeed: ds_config.json\n`)));
    expect(e.message).toMatch(/^key 'deepspeed' in .* line 4 is not supported: .*distributed/);
    expect(userError(() => loadTrainConfig(yamlFile(BASE), ['--fp16', 'true'])).message).toMatch(/key 'fp16' in override --fp16 is not supported: it needs a GPU/);
    for (const k of ['fsdp', 'local_rank', 'tf32', 'use_liger_kernel', 'push_to_hub']) expect(UNSUPPORTED_KEYS[k]).toBeTruthy();
  });
});

describe('overrides', () => {
  it('are typed by the schema and applied after the file', () => {
    const f = yamlFile(`${BASE}learning_rate: 2e-4\nlora:\n  r: 8\n`);
    const c = loadTrainConfig(f, [
      '--learning_rate', '1e-4', '--lora.r=16', '--output_dir', '123', '--revision', '2024', '--packing', '--max_steps', '-1',
      '--lora.target_modules', '[q_proj, v_proj]', '--lora.modules_to_save', 'lm_head,embed_tokens', '--resume_from_checkpoint', 'true',
      '--optim_memory_budget', '2GB', '--lora.rank_pattern', '{q_proj: 4}',
    ]);
    expect(c.learning_rate).toBe(1e-4);
    expect(c.lora.r).toBe(16);
    expect(c.output_dir).toBe('123');
    expect(c.revision).toBe('2024');
    expect(c.packing).toBe(true);
    expect(c.max_steps).toBe(-1);
    expect(c.lora.target_modules).toEqual(['q_proj', 'v_proj']);
    expect(c.lora.modules_to_save).toEqual(['lm_head', 'embed_tokens']);
    expect(c.resume_from_checkpoint).toBe(true);
    expect(c.optim_memory_budget).toBe(2e9);
    expect(c.lora.rank_pattern).toEqual({ q_proj: 4 });
    expect(loadTrainConfig(f, ['--resume_from_checkpoint', 'out/checkpoint-10']).resume_from_checkpoint).toBe('out/checkpoint-10');
  });

  it('a badly typed override names the flag', () => {
    expect(userError(() => loadTrainConfig(yamlFile(BASE), ['--eval_split', 'abc'])).message).toBe("override --eval_split: 'eval_split' expects number in [0, 1), got 'abc'");
    expect(userError(() => loadTrainConfig(yamlFile(BASE), ['oops'])).message).toMatch(/unexpected argument 'oops'/);
  });
});

describe('helpers and docs', () => {
  it('levenshtein / nearest / sizes', () => {
    expect(levenshtein('learnig_rate', 'learning_rate')).toBe(1);
    expect(levenshtein('kitten', 'sitting')).toBe(3);
    expect(levenshtein('ab', 'ba')).toBe(1);
    expect(nearest('lora_alhpa', ['lora_alpha', 'lora_dropout'])).toBe('lora_alpha');
    expect(nearest('qqqqqq', ['lora_alpha'])).toBeNull();
    expect(parseByteSize('512MiB')).toBe(512 * 2 ** 20);
    expect(parseByteSize('1.5 GB')).toBe(1.5e9);
  });

  it('SCHEMA_DOCS covers every key of the schema with its default', () => {
    const keys = SCHEMA_DOCS.map((d) => d.key);
    for (const k of Object.keys(TrainConfigObject.shape)) {
      if (['lora', 'prompt_tuning', 'prefix_tuning', 'ia3', 'bottleneck'].includes(k)) expect(keys.some((x) => x.startsWith(`${k}.`))).toBe(true);
      else expect(keys).toContain(k);
    }
    const doc = (k: string) => SCHEMA_DOCS.find((d) => d.key === k)!;
    expect(doc('lora.r')).toMatchObject({ type: 'integer >= 1', default: '8' });
    expect(doc('learning_rate').default).toBe('2e-5');
    expect(doc('output_dir').default).toBe('(required)');
    expect(doc('logging_steps').description).toMatch(/500/);
    for (const d of SCHEMA_DOCS) expect(d.description.length).toBeGreaterThan(5);
    const md = schemaDocsMarkdown();
    expect(md.split('\n').filter((l) => l.startsWith('| `')).length).toBe(SCHEMA_DOCS.length);
    for (const a of Object.keys(KEY_ALIASES)) expect(md).toContain(`\`${a}\``);
  });

  it('a printed config loads back to the same config', () => {
    const c = loadTrainConfig(yamlFile(`${BASE}load_in_4bit: true\nlora:\n  target_modules: all-linear\n  rank_pattern: {q_proj: 4}\noptim_memory_budget: 1GiB\n`));
    expect(loadTrainConfig(yamlFile(stringify(c)))).toEqual(c);
  });

  it('resolveTrainConfig validates objects with the same rules', () => {
    expect(resolveTrainConfig({ model_name_or_path: 'm', dataset_path: 'd.json', output_dir: 'o', lora_r: 4 }).lora.r).toBe(4);
    expect(userError(() => resolveTrainConfig({ model_name_or_path: 'm', dataset_path: 'd.json', output_dir: 'o', lora: { r: 0 } }, 'my config')).message).toBe(
      "my config: 'lora.r' expects integer >= 1, got 0",
    );
  });
});

describe('trainer ppo refusals name the key, where it is set and what to do', () => {
  const PPO = `${BASE}trainer: ppo\nreward_model_path: runs/reward\n`;
  const refusal = (yaml: string, overrides: string[] = []) => userError(() => loadTrainConfig(yamlFile(yaml), overrides)).message;

  it('a valid PPO config loads (defaults: 8 rows per rollout, one mini-batch)', () => {
    const c = loadTrainConfig(yamlFile(PPO));
    expect([c.trainer, c.reward_model_path, c.learning_rate, c.num_mini_batches]).toEqual(['ppo', 'runs/reward', 3e-6, 1]);
  });

  it('reward_model_path: missing with trainer ppo, or set with another trainer', () => {
    expect(refusal(`${BASE}trainer: ppo\n`)).toMatch(/train\d+\.yaml: trainer ppo needs reward_model_path: set it to the output_dir of a trainer: reward run/);
    expect(refusal(`${BASE}trainer: dpo\nreward_model_path: runs/reward\n`)).toMatch(
      /train\d+\.yaml line 5: reward_model_path is used by trainer ppo only; trainer is 'dpo': remove reward_model_path \(or set trainer: ppo\)/,
    );
    expect(refusal(BASE, ['--reward_model_path', 'runs/reward'])).toMatch(/^override --reward_model_path: reward_model_path is used by trainer ppo only; trainer is 'sft'/);
  });

  it('methods other than lora / qlora', () => {
    for (const method of ['full', 'ia3', 'bottleneck', 'ln_tuning', 'bitfit']) {
      expect(refusal(`${PPO}method: ${method}\n`)).toMatch(new RegExp(`line 6: method ${method} is not available with trainer ppo; use lora or qlora`));
    }
    expect(() => loadTrainConfig(yamlFile(`${PPO}method: qlora\n`))).not.toThrow();
    expect(loadTrainConfig(yamlFile(`${PPO}load_in_4bit: true\n`)).method).toBe('qlora');
  });

  it('lora.use_dora, packing, eval data', () => {
    expect(refusal(`${PPO}lora:\n  use_dora: true\n`)).toMatch(/line 7: lora\.use_dora is not available with trainer ppo .*; set lora\.use_dora to false/);
    expect(refusal(PPO, ['--use_dora', 'true'])).toMatch(/^override --use_dora: lora\.use_dora is not available with trainer ppo/);
    expect(refusal(`${PPO}packing: true\n`)).toMatch(/line 6: packing does not apply to trainer ppo: .*; remove packing/);
    expect(refusal(`${PPO}eval_dataset_path: data/eval.jsonl\n`)).toMatch(/line 6: trainer ppo has no evaluation loss; remove eval_dataset_path$/m);
    expect(refusal(`${PPO}eval_split: 0.1\n`)).toMatch(/line 6: trainer ppo has no evaluation loss; remove eval_split$/m);
  });

  it('batch sizes that do not split into mini-batches of whole micro-batches', () => {
    // 4 × 3 = 12 rows do not split into 5 mini-batches.
    expect(refusal(`${PPO}per_device_train_batch_size: 4\ngradient_accumulation_steps: 3\nnum_mini_batches: 5\n`)).toMatch(
      /line 8: num_mini_batches \(5\) must divide the rollout batch, per_device_train_batch_size × gradient_accumulation_steps = 4 × 3 = 12 rows; make gradient_accumulation_steps a multiple of num_mini_batches/,
    );
    // 4 × 1 = 4 rows in 2 mini-batches of 2 rows: not a whole micro-batch of 4.
    expect(refusal(`${PPO}per_device_train_batch_size: 4\nnum_mini_batches: 2\n`)).toMatch(
      /line 7: a mini-batch \(4 \/ num_mini_batches 2 = 2 rows\) must be a whole number of micro-batches of per_device_train_batch_size 4/,
    );
    expect(loadTrainConfig(yamlFile(`${PPO}per_device_train_batch_size: 4\ngradient_accumulation_steps: 4\nnum_mini_batches: 2\n`)).num_mini_batches).toBe(2);
  });

  it('whiten_rewards with mini-batches under 8 rows', () => {
    expect(refusal(`${PPO}whiten_rewards: true\nper_device_train_batch_size: 4\n`)).toMatch(
      /line 6: whiten_rewards needs mini-batches of at least 8 rows \(TRL's check\), got .* = 4 × 1 \/ 1 = 4; raise gradient_accumulation_steps \(or lower num_mini_batches\), or set whiten_rewards to false/,
    );
    expect(refusal(PPO, ['--whiten_rewards', 'true', '--per_device_train_batch_size', '2', '--gradient_accumulation_steps', '2', '--num_mini_batches', '2'])).toMatch(/^override --whiten_rewards: whiten_rewards needs mini-batches of at least 8 rows/);
    expect(loadTrainConfig(yamlFile(`${PPO}whiten_rewards: true\n`)).whiten_rewards).toBe(true);
  });
});
