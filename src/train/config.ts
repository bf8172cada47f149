/**
 * The training config: one YAML file whose keys are the ones users already write for TRL / transformers / PEFT
 * (snake_case, same names, same defaults; see shared/reference/peft-spec.md §1.3 and §3), checked by a zod schema.
 *
 *   loadTrainConfig('train.yaml', ['--learning_rate', '1e-4', '--lora.r', '16'])
 *
 * Unknown keys are errors with a did-you-mean; type and range errors name the key, the file and the line.
 * Deliberate deviations from the Python defaults are written in the key's description (they show in
 * `ajuste config --docs`): logging_steps 10 (TRL's value, not transformers' 500), bf16 and gradient_checkpointing
 * false (TRL turns both on; ajuste trains in float32 on a CPU), bnb_4bit_quant_type nf4 (TRL's ModelConfig; plain
 * transformers BitsAndBytesConfig says fp4).
 */
import { existsSync, readFileSync } from 'node:fs';
import { isMap, isScalar, isSeq, LineCounter, type Node as YamlNode, parse as parseYaml, parseDocument } from 'yaml';
import * as z from 'zod';
import { UserError } from '../errors.js';
import { DPO_LOSS_TYPES } from './dpo-loss.js';
import { KL_ESTIMATORS } from './ppo-loss.js';

// ---------------------------------------------------------------------------------------------------------
// Schema

const nullableStrings = z.union([z.array(z.string()).min(1), z.string()]).nullable().default(null);
const SIZE_RE = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$/i;
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40 };

/** "2GB" -> 2e9, "512MiB" -> 536870912, 1000 -> 1000 (decimal units are powers of 1000, *iB of 1024). */
export function parseByteSize(v: number | string): number {
  if (typeof v === 'number') return v;
  const m = SIZE_RE.exec(v);
  if (!m) throw new Error(`not a size: ${v}`);
  return Math.round(Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()]);
}

export const LoraSection = z.strictObject({
  r: z.int().min(1).default(8).describe('LoRA rank'),
  lora_alpha: z.number().positive().default(8).describe('LoRA alpha; the update is scaled by lora_alpha / r (lora_alpha / sqrt(r) with use_rslora)'),
  lora_dropout: z.number().min(0).lt(1).default(0).describe('dropout on the LoRA input'),
  target_modules: nullableStrings.describe(
    "modules to adapt: a list of names (exact or '.'-suffix match), a regex (full match), 'all-linear' (every linear layer but the output), or null for PEFT's per-architecture default (llama: q_proj, v_proj)",
  ),
  exclude_modules: nullableStrings.describe('modules never to adapt (same matching as target_modules)'),
  bias: z.enum(['none', 'all', 'lora_only']).default('none').describe('which existing biases train (and are saved with the adapter)'),
  use_rslora: z.boolean().default(false).describe('rank-stabilised LoRA: scale by lora_alpha / sqrt(r)'),
  use_dora: z.boolean().default(false).describe('DoRA: weight-decomposed LoRA (a trained magnitude vector per output)'),
  modules_to_save: z.array(z.string()).nullable().default(null).describe("extra modules trained in full and saved with the adapter (e.g. ['lm_head'])"),
  layers_to_transform: z.union([z.int().min(0), z.array(z.int().min(0))]).nullable().default(null).describe('only these layer indices (null: all)'),
  layers_pattern: z.union([z.string(), z.array(z.string())]).nullable().default(null).describe("name of the layer list for layers_to_transform (e.g. 'layers')"),
  rank_pattern: z.record(z.string(), z.int().min(1)).default(() => ({})).describe('module name or regex -> rank, overriding r'),
  alpha_pattern: z.record(z.string(), z.number().positive()).default(() => ({})).describe('module name or regex -> alpha, overriding lora_alpha'),
  init_lora_weights: z.union([z.boolean(), z.literal('gaussian')]).default(true).describe('true: A Kaiming-uniform, B zero; gaussian: A normal(1/r); false: random B (tests only)'),
  fan_in_fan_out: z.boolean().default(false).describe('true for weights stored [in, out] (GPT-2 Conv1D)'),
  lora_bias: z.boolean().default(false).describe('a trained bias on lora_B'),
  task_type: z.enum(['CAUSAL_LM', 'SEQ_CLS']).default('CAUSAL_LM').describe("PEFT task type: CAUSAL_LM, or SEQ_CLS for a reward model (trainer reward's default: the score head trains and is saved with the adapter, as PEFT does)"),
});

export const PromptTuningSection = z.strictObject({
  num_virtual_tokens: z.int().min(1).nullable().default(null).describe('number of soft-prompt tokens (required for method prompt_tuning)'),
  prompt_tuning_init: z.enum(['RANDOM', 'TEXT', 'SAMPLE_VOCAB']).default('RANDOM').describe('how the soft prompt starts'),
  prompt_tuning_init_text: z.string().nullable().default(null).describe("text whose token embeddings start the soft prompt (prompt_tuning_init 'TEXT')"),
});

export const PrefixTuningSection = z.strictObject({
  num_virtual_tokens: z.int().min(1).nullable().default(null).describe('prefix length per layer (required for method prefix_tuning)'),
  prefix_projection: z.boolean().default(false).describe('reparametrise the prefix through a two-layer MLP'),
  encoder_hidden_size: z.int().min(1).nullable().default(null).describe('hidden size of that MLP (null: the key/value width)'),
});

export const Ia3Section = z.strictObject({
  target_modules: nullableStrings.describe('modules scaled by (IA)^3 vectors (null: per-architecture default; llama: k_proj, v_proj, down_proj)'),
  feedforward_modules: nullableStrings.describe('the target modules scaled on their input rather than output (must be among target_modules)'),
  exclude_modules: nullableStrings.describe('modules never to adapt'),
  fan_in_fan_out: z.boolean().default(false).describe('true for weights stored [in, out] (GPT-2 Conv1D)'),
  modules_to_save: z.array(z.string()).nullable().default(null).describe('extra modules trained in full and saved with the adapter'),
  init_ia3_weights: z.boolean().default(true).describe('start the vectors at 1 (identity)'),
});

const nyiBn = (what: string) => `AdapterHub BnConfig key; ${what} (other values are refused)`;

export const BottleneckSection = z.strictObject({
  config: z.enum(['seq_bn', 'double_seq_bn']).default('seq_bn').describe('AdapterHub preset: seq_bn (Pfeiffer: one adapter after the MLP) or double_seq_bn (Houlsby: also after attention)'),
  name: z.string().regex(/^[A-Za-z0-9_-]+$/).default('bottleneck').describe("the adapter's name (model.add_adapter(name)); part of every saved key"),
  reduction_factor: z.union([z.number().positive(), z.record(z.string(), z.number().positive())]).nullable().default(null).describe('hidden_size // reduction_factor units in the bottleneck, or {"<layer>": n, "default": n} (null: the preset\'s 16)'),
  non_linearity: z.enum(['relu', 'swish', 'silu', 'gelu', 'gelu_new', 'tanh']).nullable().default(null).describe("activation between down and up projection (null: the preset's, relu for seq_bn, swish for double_seq_bn)"),
  mh_adapter: z.boolean().nullable().default(null).describe('an adapter after the attention block (null: the preset; needs original_ln_before false)'),
  output_adapter: z.boolean().nullable().default(null).describe('an adapter after the MLP block (null: the preset)'),
  original_ln_before: z.boolean().nullable().default(null).describe("adapter input includes the block's residual sum (seq_bn true, double_seq_bn false; null: the preset)"),
  original_ln_after: z.boolean().nullable().default(null).describe('add the residual after the adapter (only true is implemented)'),
  residual_before_ln: z.union([z.boolean(), z.string()]).nullable().default(null).describe('adapter residual taken before the layer sum (only true is implemented with original_ln_before)'),
  init_weights: z.enum(['bert', 'mam_adapter', 'houlsby']).default('bert').describe('bert: weights N(0, 0.02), biases 0 (near identity); mam_adapter: up projection zero (exact identity); houlsby: truncated N(0, 0.01)'),
  scaling: z.number().default(1).describe('constant factor on the adapter output (learned / channel scaling is not implemented)'),
  leave_out: z.array(z.int().min(0)).default(() => []).describe('layer indices that get no adapters'),
  ln_before: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  ln_after: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  adapter_residual_before_ln: z.boolean().default(false).describe('AdapterHub BnConfig key; no effect without ln_after'),
  is_parallel: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  use_gating: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  dropout: z.number().min(0).lt(1).default(0).describe(nyiBn('only 0 is implemented')),
  phm_layer: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  inv_adapter: z.string().nullable().default(null).describe(nyiBn('only null is implemented')),
  cross_adapter: z.boolean().default(false).describe(nyiBn('only false is implemented')),
  stochastic_depth: z.number().min(0).default(0).describe(nyiBn('only 0 is implemented')),
});

export const METHODS = ['lora', 'qlora', 'full', 'bitfit', 'ln_tuning', 'ia3', 'prompt_tuning', 'prefix_tuning', 'bottleneck'] as const;
const OPTIMIZERS = ['adamw_torch', 'adamw_8bit', 'paged_adamw_32bit', 'paged_adamw_8bit', 'sgd'] as const;

/** The config object before the cross-key rules (strict: unknown keys are errors). */
export const TrainConfigObject = z.strictObject({
  // model
  model_name_or_path: z.string().min(1).describe('Hugging Face model id (org/name) or a local model folder'),
  revision: z.string().nullable().default(null).describe('hub branch, tag or commit (null: main)'),
  torch_dtype: z.enum(['auto', 'float32', 'bfloat16']).default('auto').describe('dtype of the frozen base weights (auto: as stored); full fine-tuning always trains float32'),
  trust_remote_code: z.boolean().default(false).describe('must stay false: ajuste never runs code from a model repository'),
  init_from_scratch: z.boolean().default(false).describe('ajuste extension: random weights from config.json instead of the checkpoint (pretraining)'),
  // what training minimises
  trainer: z
    .enum(['sft', 'dpo', 'reward', 'ppo'])
    .default('sft')
    .describe(
      "sft: next-token cross-entropy (TRL's SFTTrainer); dpo: Direct Preference Optimization on {prompt, chosen, rejected} records (TRL's DPOTrainer); reward: a reward model (a score head on the model) trained on the same records with the Bradley-Terry loss (TRL's RewardTrainer); ppo: RLHF with PPO on {prompt} records against reward_model_path (TRL's PPOTrainer)",
    ),
  reward_model_path: z.string().nullable().default(null).describe('trainer ppo: the reward model (a folder saved by trainer reward: a full reward model, or its SEQ_CLS adapter); the value model starts from it too'),
  kl_coef: z.number().min(0).default(0.05).describe('PPO: weight of the per-token KL penalty against the reference in the reward (TRL PPOConfig)'),
  kl_estimator: z.enum(KL_ESTIMATORS).default('k1').describe('PPO: KL estimator, k1 (log-ratio) or k3 (exp(r) - 1 - r, lower variance)'),
  cliprange: z.number().positive().default(0.2).describe('PPO: clip range of the policy ratio'),
  vf_coef: z.number().min(0).default(0.1).describe('PPO: weight of the value loss'),
  cliprange_value: z.number().positive().default(0.2).describe('PPO: clip range of the value predictions'),
  gamma: z.number().min(0).max(1).default(1).describe('PPO: discount factor of GAE'),
  lam: z.number().min(0).max(1).default(0.95).describe('PPO: lambda of GAE'),
  num_ppo_epochs: z.int().min(1).default(4).describe('PPO: epochs of updates over each rollout batch'),
  num_mini_batches: z.int().min(1).default(1).describe('PPO: mini-batches (optimizer steps) per PPO epoch'),
  whiten_rewards: z.boolean().default(false).describe('PPO: whiten the per-token rewards (mini-batches of 8 rows at least)'),
  response_length: z.int().min(1).default(53).describe('PPO: tokens sampled per prompt (generation stops earlier at EOS)'),
  temperature: z.number().positive().default(0.7).describe('PPO: sampling temperature (the log-probabilities use it too)'),
  missing_eos_penalty: z.number().nullable().default(null).describe('PPO: subtracted from the score of responses without an EOS token (null: off)'),
  total_episodes: z.int().min(1).nullable().default(null).describe('PPO: prompts to roll out in all (null: num_train_epochs x the dataset; max_steps, in rollout batches, wins when > 0)'),
  beta: z.number().positive().default(0.1).describe('DPO: strength of the pull towards the reference model (TRL DPOConfig beta)'),
  loss_type: z.enum(DPO_LOSS_TYPES).default('sigmoid').describe('DPO loss: sigmoid (DPO), hinge (SLiC), ipo (IPO, length-averaged log-probabilities), robust (noisy labels, with label_smoothing)'),
  label_smoothing: z.number().min(0).lt(0.5).default(0).describe('DPO loss_type robust: the assumed fraction of flipped preference labels'),
  disable_dropout: z.boolean().default(true).describe('DPO and reward: train without dropout (TRL DPOConfig and RewardConfig default)'),
  precompute_ref_log_probs: z.boolean().default(true).describe('DPO: ajuste always scores the reference once before training and saves it in output_dir (false is refused: it would give the same numbers, slower)'),
  center_rewards_coefficient: z
    .number()
    .min(0)
    .nullable()
    .default(null)
    .describe('trainer reward: adds this times mean((r_chosen + r_rejected)^2) to the loss, pulling rewards towards zero mean (TRL RewardConfig; 0.01 is its suggestion; null: off)'),
  // method
  method: z.enum(METHODS).default('lora').describe('what trains: lora, qlora (LoRA over a 4-bit base), full, bitfit (biases), ln_tuning (norms), ia3, prompt_tuning, prefix_tuning, bottleneck (AdapterHub Houlsby / Pfeiffer adapters)'),
  load_in_4bit: z.boolean().default(false).describe('quantize the frozen base to 4 bits (bitsandbytes layout); with method lora this is QLoRA'),
  bnb_4bit_quant_type: z.enum(['nf4', 'fp4']).default('nf4').describe("4-bit code: nf4 (QLoRA) or fp4; nf4 as TRL's ModelConfig (transformers' BitsAndBytesConfig alone says fp4)"),
  bnb_4bit_use_double_quant: z.boolean().default(false).describe('double quantization: the per-block absmax constants are themselves 8-bit quantized (QLoRA uses true)'),
  bnb_4bit_compute_dtype: z.enum(['float32', 'bfloat16']).default('float32').describe('dtype the 4-bit weights are dequantized to for the matmul'),
  lora: LoraSection.prefault({}).describe('LoRA settings (PEFT LoraConfig keys)'),
  prompt_tuning: PromptTuningSection.prefault({}).describe('prompt tuning settings (PEFT PromptTuningConfig keys)'),
  prefix_tuning: PrefixTuningSection.prefault({}).describe('prefix tuning settings (PEFT PrefixTuningConfig keys)'),
  ia3: Ia3Section.prefault({}).describe('(IA)^3 settings (PEFT IA3Config keys)'),
  bottleneck: BottleneckSection.prefault({}).describe('bottleneck adapter settings (AdapterHub BnConfig keys; saved in the adapters library layout)'),
  // data
  dataset_path: z.string().min(1).describe('training data: a .jsonl, .json or .csv file with TRL record shapes (text / prompt+completion / messages)'),
  eval_dataset_path: z.string().nullable().default(null).describe('evaluation data file (same formats)'),
  eval_split: z.number().min(0).lt(1).default(0).describe('fraction of dataset_path held out for evaluation when there is no eval_dataset_path'),
  dataset_text_field: z.string().default('text').describe('the column holding plain text records'),
  max_length: z.int().min(1).default(1024).describe('tokens per example (longer ones are truncated, keeping the start; with trainer reward, pairs with a longer side are left out, as TRL does); the packed row length with packing'),
  packing: z.boolean().default(false).describe('pack several examples into each max_length row (best-fit decreasing, no cross-attention)'),
  completion_only_loss: z.boolean().nullable().default(null).describe('loss on the completion only for prompt/completion records (null: yes, as TRL)'),
  assistant_only_loss: z.boolean().default(false).describe('loss on assistant turns only for messages records'),
  skip_bad_records: z.boolean().default(false).describe('skip malformed records (reported) instead of stopping at the first'),
  max_train_samples: z.int().min(1).nullable().default(null).describe('use only the first N training records'),
  cache_tokenized: z.boolean().default(true).describe('ajuste extension: save the tokenized data in output_dir/tokenized.safetensors (8 bytes a token) so a resumed or repeated run skips tokenizing; it is used only for the same data files, tokenizer and options'),
  // training
  output_dir: z.string().min(1).describe('where checkpoints, metrics.jsonl and the final adapter or model go'),
  overwrite_output_dir: z.boolean().default(false).describe('allow writing into an output_dir that already holds a finished run'),
  num_train_epochs: z.number().positive().default(3).describe('passes over the training data (ignored when max_steps > 0)'),
  max_steps: z.int().min(-1).default(-1).describe('optimizer steps to run; -1: num_train_epochs decides'),
  per_device_train_batch_size: z.int().min(1).default(8).describe('examples per micro-batch'),
  per_device_eval_batch_size: z.int().min(1).default(8).describe('examples per evaluation batch'),
  gradient_accumulation_steps: z.int().min(1).default(1).describe('micro-batches per optimizer step'),
  learning_rate: z.number().min(0).default(2e-5).describe("peak learning rate (SFTConfig's 2e-5; with trainer dpo DPOConfig's 1e-6, with trainer reward RewardConfig's 1e-4, with trainer ppo PPOConfig's 3e-6); LoRA usually wants 1e-4 to 2e-4 for SFT"),
  weight_decay: z.number().min(0).default(0).describe('AdamW decoupled weight decay (not applied to biases and norms)'),
  adam_beta1: z.number().min(0).lt(1).default(0.9).describe('AdamW beta1'),
  adam_beta2: z.number().min(0).lt(1).default(0.999).describe('AdamW beta2'),
  adam_epsilon: z.number().positive().default(1e-8).describe('AdamW epsilon'),
  max_grad_norm: z.number().min(0).default(1).describe('clip the global gradient norm to this (0: no clipping)'),
  lr_scheduler_type: z.enum(['linear', 'cosine', 'constant', 'constant_with_warmup']).default('linear').describe('learning-rate schedule after warmup'),
  warmup_ratio: z.number().min(0).max(1).default(0).describe('fraction of the steps spent warming up (warmup_steps wins when > 0)'),
  warmup_steps: z.int().min(0).default(0).describe('linear warmup steps'),
  optim: z.enum(OPTIMIZERS).default('adamw_torch').describe('optimizer: AdamW with f32 states, 8-bit blockwise states, paged states (32/8-bit), or plain SGD'),
  optim_memory_budget: z
    .union([z.int().positive(), z.string().regex(SIZE_RE, 'a size like 2GB or 512MiB')])
    .transform(parseByteSize)
    .nullable()
    .default(null)
    .describe("RAM for optimizer states before paged optimizers spill to disk: bytes or a size like '2GB' / '512MiB' (null: no limit)"),
  logging_steps: z.int().min(1).default(10).describe("log every N steps (TRL's 10; transformers' 500 would be silent for most CPU runs)"),
  eval_strategy: z.enum(['no', 'steps', 'epoch']).default('no').describe('when to evaluate'),
  eval_steps: z.int().min(1).nullable().default(null).describe('evaluate every N steps with eval_strategy steps (null: logging_steps)'),
  save_strategy: z.enum(['no', 'steps', 'epoch']).default('steps').describe('when to write checkpoint-N folders'),
  save_steps: z.int().min(1).default(500).describe('checkpoint every N steps with save_strategy steps'),
  save_total_limit: z.int().min(1).nullable().default(null).describe('keep only the newest N checkpoints (null: all)'),
  seed: z.int().default(42).describe('seed for initialisation, dropout and shuffling'),
  data_seed: z.int().nullable().default(null).describe('separate seed for data shuffling (null: seed)'),
  bf16: z.boolean().default(false).describe('bfloat16 autocast for activations (TRL defaults to true on GPUs; ajuste trains float32 on CPUs)'),
  gradient_checkpointing: z.boolean().default(false).describe('recompute each decoder layer in backward to save activation memory (TRL defaults to true; on CPU it costs ~30% time)'),
  resume_from_checkpoint: z.union([z.boolean(), z.string()]).nullable().default(null).describe('true: the newest output_dir/checkpoint-N; or a checkpoint folder path'),
  report_to: z.union([z.literal('none'), z.array(z.literal('none')).max(1)]).transform(() => 'none' as const).default('none').describe("only 'none': metrics go to output_dir/metrics.jsonl (no wandb / tensorboard)"),
  dataloader_drop_last: z.boolean().default(false).describe('drop the last incomplete batch of each epoch'),
});

const DATA_EXT = /\.(jsonl|json|csv)$/i;
const PEFT_METHODS = new Set(['lora', 'qlora', 'ia3', 'prompt_tuning', 'prefix_tuning', 'ln_tuning', 'bottleneck']);

/** The validated, fully resolved training config (all defaults filled). */
export const TrainConfig = TrainConfigObject.superRefine((c, ctx) => {
  const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
  if (c.trust_remote_code) {
    issue(['trust_remote_code'], 'trust_remote_code must be false: ajuste never runs Python code shipped with a model; use a model whose architecture ajuste knows (llama, mistral, qwen2, gpt2)');
  }
  if (c.load_in_4bit && c.method === 'full') issue(['load_in_4bit'], 'load_in_4bit cannot be combined with method full: 4-bit weights are frozen; use method qlora (LoRA over the 4-bit base)');
  if (!DATA_EXT.test(c.dataset_path)) issue(['dataset_path'], `dataset_path must be a .jsonl, .json or .csv file, got '${c.dataset_path}'`);
  if (c.eval_dataset_path !== null && !DATA_EXT.test(c.eval_dataset_path)) issue(['eval_dataset_path'], `eval_dataset_path must be a .jsonl, .json or .csv file, got '${c.eval_dataset_path}'`);
  if (c.eval_strategy !== 'no' && c.eval_dataset_path === null && c.eval_split === 0) {
    issue(['eval_strategy'], `eval_strategy is '${c.eval_strategy}' but there is no evaluation data: set eval_dataset_path or eval_split`);
  }
  if (c.trainer === 'dpo' && c.packing) issue(['packing'], 'packing does not apply to trainer dpo: each pair is scored as whole rows (TRL padding_free is not implemented)');
  if (c.trainer === 'dpo' && c.completion_only_loss === false) issue(['completion_only_loss'], 'trainer dpo scores the completions only (the log-probability of chosen and rejected given the prompt); remove completion_only_loss');
  if (!c.precompute_ref_log_probs) issue(['precompute_ref_log_probs'], 'ajuste always precomputes the reference log-probabilities (the same values TRL computes per batch, as the reference is frozen); remove the key or set it to true');
  if (c.trainer === 'reward' && c.packing) issue(['packing'], 'packing does not apply to trainer reward: each side of a pair is scored as a whole row (its last token gives the reward)');
  if (c.trainer === 'reward' && (c.method === 'ia3' || c.method === 'prompt_tuning' || c.method === 'prefix_tuning' || c.method === 'bottleneck')) {
    issue(['method'], `method ${c.method} is not available with trainer reward; use lora or qlora (PEFT adapter with the score head), or full, bitfit, ln_tuning (a full reward model)`);
  }
  if (c.trainer === 'reward' && c.lora.task_type !== 'SEQ_CLS') issue(['lora', 'task_type'], "trainer reward trains a sequence classifier: lora.task_type must be SEQ_CLS (its default with trainer reward)");
  if (c.trainer !== 'reward' && c.lora.task_type === 'SEQ_CLS') issue(['lora', 'task_type'], `lora.task_type SEQ_CLS is for reward models (trainer: reward); trainer ${c.trainer} trains a causal LM (CAUSAL_LM)`);
  if (c.trainer === 'ppo') {
    if (c.reward_model_path === null) issue(['reward_model_path'], 'trainer ppo needs reward_model_path: set it to the output_dir of a trainer: reward run (a full reward model folder or its SEQ_CLS adapter)');
    if (c.method !== 'lora' && c.method !== 'qlora') issue(['method'], `method ${c.method} is not available with trainer ppo; use lora or qlora (the reference is the base with the adapters switched off)`);
    if (c.lora.use_dora) issue(['lora', 'use_dora'], 'lora.use_dora is not available with trainer ppo (the reference switches adapters off by their scaling, which DoRA does not follow); set lora.use_dora to false');
    if (c.packing) issue(['packing'], 'packing does not apply to trainer ppo: each prompt and its sampled response is one row; remove packing');
    if (c.eval_dataset_path !== null) issue(['eval_dataset_path'], 'trainer ppo has no evaluation loss; remove eval_dataset_path');
    if (c.eval_split > 0) issue(['eval_split'], 'trainer ppo has no evaluation loss; remove eval_split');
    // One rollout batch is per_device_train_batch_size × gradient_accumulation_steps prompts, split into
    // num_mini_batches mini-batches, each a whole number of micro-batches of per_device_train_batch_size rows.
    const micro = c.per_device_train_batch_size;
    const rollout = micro * c.gradient_accumulation_steps;
    if (rollout % c.num_mini_batches !== 0) {
      issue(['num_mini_batches'], `num_mini_batches (${c.num_mini_batches}) must divide the rollout batch, per_device_train_batch_size × gradient_accumulation_steps = ${micro} × ${c.gradient_accumulation_steps} = ${rollout} rows; make gradient_accumulation_steps a multiple of num_mini_batches`);
    } else if ((rollout / c.num_mini_batches) % micro !== 0) {
      issue(['num_mini_batches'], `a mini-batch (${rollout} / num_mini_batches ${c.num_mini_batches} = ${rollout / c.num_mini_batches} rows) must be a whole number of micro-batches of per_device_train_batch_size ${micro}; make gradient_accumulation_steps a multiple of num_mini_batches`);
    } else if (c.whiten_rewards && rollout / c.num_mini_batches < 8) {
      issue(['whiten_rewards'], `whiten_rewards needs mini-batches of at least 8 rows (TRL's check), got per_device_train_batch_size × gradient_accumulation_steps / num_mini_batches = ${micro} × ${c.gradient_accumulation_steps} / ${c.num_mini_batches} = ${rollout / c.num_mini_batches}; raise gradient_accumulation_steps (or lower num_mini_batches), or set whiten_rewards to false`);
    }
  } else {
    if (c.reward_model_path !== null) issue(['reward_model_path'], `reward_model_path is used by trainer ppo only; trainer is '${c.trainer}': remove reward_model_path (or set trainer: ppo)`);
  }
  if (c.trainer !== 'reward' && c.center_rewards_coefficient !== null) issue(['center_rewards_coefficient'], `center_rewards_coefficient is used by trainer reward only; trainer is '${c.trainer}'`);
  if (c.label_smoothing > 0 && c.loss_type !== 'robust') issue(['label_smoothing'], `label_smoothing is used by loss_type robust only (TRL dropped it from sigmoid in v0.29); loss_type is '${c.loss_type}'`);
  if (c.method === 'prompt_tuning' && c.prompt_tuning.num_virtual_tokens === null) issue(['prompt_tuning', 'num_virtual_tokens'], 'method prompt_tuning needs prompt_tuning.num_virtual_tokens');
  if (c.method === 'prompt_tuning' && c.prompt_tuning.prompt_tuning_init === 'TEXT' && !c.prompt_tuning.prompt_tuning_init_text) {
    issue(['prompt_tuning', 'prompt_tuning_init_text'], "prompt_tuning_init 'TEXT' needs prompt_tuning.prompt_tuning_init_text");
  }
  if (c.method === 'prefix_tuning' && c.prefix_tuning.num_virtual_tokens === null) issue(['prefix_tuning', 'num_virtual_tokens'], 'method prefix_tuning needs prefix_tuning.num_virtual_tokens');
  for (const key of ['target_modules', 'exclude_modules'] as const) {
    const v = c.lora[key];
    if (typeof v === 'string' && v !== 'all-linear') {
      try {
        new RegExp(`^(?:${v})$`);
      } catch {
        issue(['lora', key], `lora.${key} '${v}' is not a valid regular expression (a string is matched as a regex; use a list for plain names)`);
      }
    }
  }
}).transform((c) => {
  // load_in_4bit with LoRA is QLoRA; method qlora implies load_in_4bit.
  const method = c.method === 'lora' && c.load_in_4bit ? 'qlora' : c.method;
  return { ...c, method, load_in_4bit: method === 'qlora' ? true : c.load_in_4bit };
});
export type TrainConfig = z.output<typeof TrainConfig>;
export type TrainConfigInput = z.input<typeof TrainConfigObject>;

// ---------------------------------------------------------------------------------------------------------
// Aliases and keys that are known but refused

/** TRL ModelConfig (flat) and renamed transformers/TRL keys -> the canonical key path here. */
export const KEY_ALIASES: Record<string, string[]> = {
  lora_r: ['lora', 'r'],
  lora_alpha: ['lora', 'lora_alpha'],
  lora_dropout: ['lora', 'lora_dropout'],
  lora_target_modules: ['lora', 'target_modules'],
  lora_modules_to_save: ['lora', 'modules_to_save'],
  lora_task_type: ['lora', 'task_type'],
  use_rslora: ['lora', 'use_rslora'],
  use_dora: ['lora', 'use_dora'],
  use_bnb_nested_quant: ['bnb_4bit_use_double_quant'],
  model_revision: ['revision'],
  dtype: ['torch_dtype'],
  evaluation_strategy: ['eval_strategy'],
  max_seq_length: ['max_length'],
};

/** Values accepted for a key under another name (what transformers writes) -> ours. */
const VALUE_ALIASES: Record<string, Record<string, string>> = {
  optim: { adamw_torch_fused: 'adamw_torch', adamw_hf: 'adamw_torch', adamw: 'adamw_torch', adamw_bnb_8bit: 'adamw_8bit' },
};

const DISTRIBUTED = 'it configures multi-GPU / distributed training; ajuste trains on one machine, on the CPU';
const GPU_ONLY = 'it needs a GPU; ajuste trains on the CPU';
/** transformers / TRL keys that ajuste knows and refuses, with the reason. */
export const UNSUPPORTED_KEYS: Record<string, string> = {
  deepspeed: DISTRIBUTED,
  fsdp: DISTRIBUTED,
  fsdp_config: DISTRIBUTED,
  fsdp_min_num_params: DISTRIBUTED,
  fsdp_transformer_layer_cls_to_wrap: DISTRIBUTED,
  local_rank: DISTRIBUTED,
  ddp_backend: DISTRIBUTED,
  ddp_find_unused_parameters: DISTRIBUTED,
  ddp_bucket_cap_mb: DISTRIBUTED,
  ddp_broadcast_buffers: DISTRIBUTED,
  ddp_timeout: DISTRIBUTED,
  tpu_num_cores: DISTRIBUTED,
  accelerator_config: DISTRIBUTED,
  parallelism_config: DISTRIBUTED,
  device_map: DISTRIBUTED,
  fp16: `${GPU_ONLY} (float16 autocast); remove it (bf16 exists but defaults to false)`,
  fp16_full_eval: GPU_ONLY,
  fp16_opt_level: GPU_ONLY,
  half_precision_backend: GPU_ONLY,
  tf32: GPU_ONLY,
  torch_compile: 'ajuste has no torch.compile; its kernels are native C++ already',
  torch_compile_backend: 'ajuste has no torch.compile',
  torch_compile_mode: 'ajuste has no torch.compile',
  use_liger_kernel: `${GPU_ONLY} (Triton kernels); ajuste's cross-entropy is chunked already`,
  attn_implementation: `${GPU_ONLY} (flash / sdpa choices); ajuste has one fused CPU attention kernel`,
  use_flash_attention_2: GPU_ONLY,
  load_in_8bit: 'LLM.int8 loading is not implemented; use load_in_4bit (QLoRA)',
  bnb_4bit_quant_storage: 'the 4-bit storage is always uint8 (the bitsandbytes default)',
  use_mps_device: GPU_ONLY,
  use_cpu: 'ajuste always trains on the CPU; remove the key',
  no_cuda: 'ajuste always trains on the CPU; remove the key',
  use_ipex: 'Intel Extension for PyTorch does not apply to ajuste',
  activation_offloading: `${GPU_ONLY} (offloads activations to host memory)`,
  push_to_hub: 'ajuste does not upload; push output_dir with huggingface-cli upload',
  hub_model_id: 'ajuste does not upload; push output_dir with huggingface-cli upload',
  hub_strategy: 'ajuste does not upload',
  hub_token: 'ajuste does not upload',
  hub_private_repo: 'ajuste does not upload',
};

/** Extra help for a key whose value was wrong. */
const VALUE_HINTS: Record<string, string> = {
  report_to: 'ajuste has no experiment-tracker integrations: metrics go to output_dir/metrics.jsonl; set report_to: none or remove the key',
  torch_dtype: 'float16 needs a GPU; use bfloat16 (frozen weights) or float32',
  'lora.init_lora_weights': 'PiSSA, OLoRA, EVA, LoftQ and CorDA initialisations are not implemented',
  optim: 'ajuste implements adamw_torch, adamw_8bit, paged_adamw_32bit, paged_adamw_8bit and sgd',
};

// ---------------------------------------------------------------------------------------------------------
// Schema introspection (docs, override typing, error messages)

type Schema = z.ZodType;

function unwrap(s: Schema): Schema {
  for (;;) {
    if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional || s instanceof z.ZodNullable) s = s.unwrap() as Schema;
    else if (s instanceof z.ZodPipe) s = s.in as Schema;
    else return s;
  }
}

/** The sub-schema at a key path (array indices and record keys step into elements/values), or null. */
export function schemaAt(path: readonly (string | number)[], root: Schema = TrainConfigObject): Schema | null {
  let s: Schema = root;
  for (const seg of path) {
    const u = unwrap(s);
    if (u instanceof z.ZodObject && typeof seg === 'string') {
      const next = (u.shape as Record<string, Schema>)[seg];
      if (!next) return null;
      s = next;
    } else if (u instanceof z.ZodArray) s = u.element as Schema;
    else if (u instanceof z.ZodRecord) s = u.valueType as Schema;
    else if (u instanceof z.ZodUnion) {
      const options = u.options as readonly Schema[];
      const arr = options.map(unwrap).find((o) => o instanceof z.ZodArray) as z.ZodArray | undefined;
      if (!arr || typeof seg !== 'number') return null;
      s = arr.element as Schema;
    } else return null;
  }
  return s;
}

function fmtNumber(n: number): string {
  if (n !== 0 && Math.abs(n) < 1e-3) return n.toExponential().replace(/\.?0+e/, 'e').replace('e+', 'e');
  return String(n);
}

function numberType(s: z.ZodNumber): string {
  const base = s.isInt ? 'integer' : 'number';
  let lo: string | null = null;
  let hi: string | null = null;
  for (const c of s.def.checks ?? []) {
    const d = c._zod.def as { check: string; value?: number | bigint; inclusive?: boolean };
    if (d.check === 'greater_than') lo = `${d.inclusive ? '>=' : '>'} ${fmtNumber(Number(d.value))}`;
    if (d.check === 'less_than') hi = `${d.inclusive ? '<=' : '<'} ${fmtNumber(Number(d.value))}`;
  }
  if (lo && hi) {
    const [l, h] = [lo.split(' '), hi.split(' ')];
    return `${base} in ${l[0] === '>=' ? '[' : '('}${l[1]}, ${h[1]}${h[0] === '<=' ? ']' : ')'}`;
  }
  if (lo === '> 0') return `${base} > 0`;
  return [base, lo ?? hi].filter(Boolean).join(' ');
}

/** A short human description of what a schema accepts: "integer >= 1", "'none' | 'all' | 'lora_only'", ... */
export function describeType(s: Schema): string {
  if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional) return describeType(s.unwrap() as Schema);
  if (s instanceof z.ZodPipe) return describeType(s.in as Schema);
  if (s instanceof z.ZodNullable) return `${describeType(s.unwrap() as Schema)} | null`;
  if (s instanceof z.ZodString) return 'string';
  if (s instanceof z.ZodBoolean) return 'boolean';
  if (s instanceof z.ZodNumber) return numberType(s);
  if (s instanceof z.ZodLiteral) return [...s.values].map((v) => (typeof v === 'string' ? `'${v}'` : String(v))).join(' | ');
  if (s instanceof z.ZodEnum) return (s.options as (string | number)[]).map((v) => `'${v}'`).join(' | ');
  if (s instanceof z.ZodUnion) return (s.options as readonly Schema[]).map(describeType).join(' | ');
  if (s instanceof z.ZodArray) {
    const e = describeType(s.element as Schema);
    return `list of ${e.includes(' | ') ? `(${e})` : e}`;
  }
  if (s instanceof z.ZodRecord) return `map of name -> ${describeType(s.valueType as Schema)}`;
  if (s instanceof z.ZodObject) return 'mapping';
  return 'value';
}

function defaultOf(s: Schema): { has: boolean; value: unknown } {
  for (;;) {
    if (s instanceof z.ZodDefault) return { has: true, value: s.def.defaultValue };
    if (s instanceof z.ZodPrefault || s instanceof z.ZodOptional || s instanceof z.ZodNullable) s = s.unwrap() as Schema;
    else if (s instanceof z.ZodPipe) s = s.in as Schema;
    else return { has: false, value: undefined };
  }
}

/** A value written the way a YAML user would: null, true, 2e-5, [], {}, 'text' without quotes. */
export function formatValue(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number') return fmtNumber(v);
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

export interface SchemaDoc {
  /** Dotted key path (`lora.r`). */
  key: string;
  type: string;
  /** The default as YAML would show it, or '(required)'. */
  default: string;
  description: string;
}

function buildDocs(obj: z.ZodObject, prefix: string): SchemaDoc[] {
  const out: SchemaDoc[] = [];
  for (const [name, field] of Object.entries(obj.shape as Record<string, Schema>)) {
    const u = unwrap(field);
    if (u instanceof z.ZodObject) {
      out.push(...buildDocs(u, `${prefix}${name}.`));
      continue;
    }
    const d = defaultOf(field);
    out.push({ key: prefix + name, type: describeType(field), default: d.has ? formatValue(d.value) : '(required)', description: field.description ?? '' });
  }
  return out;
}

/** Every config key with its type, default and description, generated from the schema (CLI help, README). */
export const SCHEMA_DOCS: readonly SchemaDoc[] = buildDocs(TrainConfigObject, '');

/** SCHEMA_DOCS as a markdown reference (key table, then the accepted aliases and refused keys). */
export function schemaDocsMarkdown(): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = ['| key | type | default | description |', '|---|---|---|---|'];
  for (const d of SCHEMA_DOCS) lines.push(`| \`${d.key}\` | ${esc(d.type)} | \`${esc(d.default)}\` | ${esc(d.description)} |`);
  lines.push('', 'Also accepted (TRL ModelConfig and renamed keys): ' + Object.entries(KEY_ALIASES).map(([a, p]) => `\`${a}\` = \`${p.join('.')}\``).join(', ') + ', and `use_peft` (true: method lora; false: method full).');
  lines.push('', 'Refused (GPU / distributed / upload): ' + Object.keys(UNSUPPORTED_KEYS).map((k) => `\`${k}\``).join(', ') + '.');
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------------------
// Loading: YAML file + overrides -> aliases -> unknown keys -> zod, with file:line in every error

type Path = (string | number)[];
type Raw = Record<string, unknown>;

/** Edit distance (insert, delete, substitute, adjacent swap). */
export function levenshtein(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 0; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The nearest candidate when it is close enough to be a typo, else null. */
export function nearest(word: string, candidates: Iterable<string>): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of candidates) {
    const dist = levenshtein(word.toLowerCase(), c.toLowerCase());
    if (dist < bestD) [best, bestD] = [c, dist];
  }
  return best !== null && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null;
}

interface Located {
  message: string;
}

class ConfigSource {
  /** Canonical path (dotted) -> the override flag that set it. */
  readonly overrides = new Map<string, string>();
  /** Canonical path (dotted) -> the path of the alias key in the file. */
  readonly aliases = new Map<string, Path>();
  private readonly lc = new LineCounter();
  readonly doc: ReturnType<typeof parseDocument> | null = null;

  constructor(
    readonly file: string | null,
    text: string | null,
    private readonly label = 'the command line',
  ) {
    if (file !== null && text !== null) this.doc = parseDocument(text, { lineCounter: this.lc, prettyErrors: true });
  }

  /** "train.yaml line 7", "override --lora.r", or "train.yaml" / "the command line" when no line is known. */
  where(path: Path): string {
    for (let n = path.length; n > 0; n--) {
      const flag = this.overrides.get(path.slice(0, n).join('.'));
      if (flag) return `override ${flag}`;
    }
    let filePath = path;
    for (let n = path.length; n > 0; n--) {
      const alias = this.aliases.get(path.slice(0, n).join('.'));
      if (alias) {
        filePath = [...alias, ...path.slice(n)];
        break;
      }
    }
    const line = this.lineOf(filePath);
    if (this.file === null) return this.label;
    return line === null ? this.file : `${this.file} line ${line}`;
  }

  /** 1-based line of the deepest node of `path` that exists in the YAML file. */
  lineOf(path: Path): number | null {
    if (!this.doc) return null;
    let node: unknown = this.doc.contents;
    let offset: number | null = null;
    for (const seg of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) break;
        const key = pair.key as YamlNode;
        if (key.range) offset = key.range[0];
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number' && node.items[seg]) {
        node = node.items[seg];
        const r = (node as YamlNode).range;
        if (r) offset = r[0];
      } else break;
    }
    return offset === null ? null : this.lc.linePos(offset).line;
  }
}

function isPlainObject(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function setPath(obj: Raw, path: Path, value: unknown): void {
  let cur = obj;
  for (const seg of path.slice(0, -1)) {
    const k = String(seg);
    if (!isPlainObject(cur[k])) cur[k] = {};
    cur = cur[k] as Raw;
  }
  cur[String(path[path.length - 1])] = value;
}

function getPath(obj: Raw, path: Path): unknown {
  let cur: unknown = obj;
  for (const seg of path) {
    if (!isPlainObject(cur)) return undefined;
    cur = cur[String(seg)];
  }
  return cur;
}

function fail(problems: Located[]): never {
  const [first, ...rest] = problems;
  const hint = rest.length ? `${rest.length} more problem${rest.length > 1 ? 's' : ''}: ${rest.map((p) => p.message).join('; ')}` : 'see `ajuste config --docs` for every key, its type and default';
  throw new UserError(first.message, hint);
}

/** Moves TRL/renamed alias keys of the file to their canonical place, recording where they came from. */
function applyAliases(raw: Raw, src: ConfigSource): void {
  for (const [alias, target] of Object.entries(KEY_ALIASES)) {
    if (!(alias in raw)) continue;
    const value = raw[alias];
    delete raw[alias];
    if (getPath(raw, target) !== undefined) {
      fail([{ message: `${src.where([alias])}: '${alias}' is TRL's name for '${target.join('.')}', which is also set; keep one of them` }]);
    }
    setPath(raw, target, value);
    src.aliases.set(target.join('.'), [alias]);
  }
  if ('use_peft' in raw) {
    const usePeft = raw.use_peft;
    delete raw.use_peft;
    const method = raw.method;
    if (typeof usePeft !== 'boolean') fail([{ message: `${src.where(['use_peft'])}: 'use_peft' expects boolean, got ${show(usePeft)}` }]);
    if (method === undefined) {
      raw.method = usePeft ? 'lora' : 'full';
      src.aliases.set('method', ['use_peft']);
    } else if (typeof method === 'string' && PEFT_METHODS.has(method) !== usePeft) {
      fail([{ message: `${src.where(['use_peft'])}: use_peft: ${usePeft} contradicts method: ${method}; remove use_peft` }]);
    }
  }
}

function applyValueAliases(raw: Raw): void {
  for (const [key, map] of Object.entries(VALUE_ALIASES)) {
    const v = raw[key];
    if (typeof v === 'string' && map[v]) raw[key] = map[v];
  }
  if (raw.resume_from_checkpoint === false) raw.resume_from_checkpoint = null;
}

/** Unknown and refused keys, at every level of the schema. */
function checkKeys(raw: Raw, obj: z.ZodObject, prefix: Path, src: ConfigSource, out: Located[]): void {
  const shape = obj.shape as Record<string, Schema>;
  for (const key of Object.keys(raw)) {
    const path = [...prefix, key];
    const field = shape[key];
    if (field) {
      const u = unwrap(field);
      if (u instanceof z.ZodObject && isPlainObject(raw[key])) checkKeys(raw[key] as Raw, u, path, src, out);
      continue;
    }
    const dotted = path.join('.');
    if (prefix.length === 0 && UNSUPPORTED_KEYS[key]) {
      out.push({ message: `key '${key}' in ${src.where(path)} is not supported: ${UNSUPPORTED_KEYS[key]}` });
      continue;
    }
    const candidates = [...Object.keys(shape), ...(prefix.length === 0 ? [...Object.keys(KEY_ALIASES), 'use_peft'] : [])];
    const guess = nearest(key, candidates);
    const suggestion = guess ? ` (did you mean '${[...prefix, guess].join('.')}'?)` : '';
    out.push({ message: `unknown key '${dotted}' in ${src.where(path)}${suggestion}` });
  }
}

function show(v: unknown): string {
  if (v === undefined) return 'nothing';
  const s = typeof v === 'string' ? `'${v}'` : JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function zodProblems(issues: z.core.$ZodIssue[], raw: Raw, src: ConfigSource): Located[] {
  return issues.map((iss) => {
    const path = iss.path.filter((p): p is string | number => typeof p !== 'symbol');
    const where = src.where(path);
    if (iss.code === 'custom') return { message: `${where}: ${iss.message}` };
    // Report at the config key (an element of a list is reported at the list).
    let keyPath = path;
    while (keyPath.length > 0 && typeof keyPath[keyPath.length - 1] === 'number') keyPath = keyPath.slice(0, -1);
    const key = keyPath.join('.');
    const value = getPath(raw, keyPath);
    const field = schemaAt(keyPath);
    const hint = VALUE_HINTS[key] ? ` (${VALUE_HINTS[key]})` : '';
    if (value === undefined && keyPath.length === path.length) return { message: `missing required key '${key}' in ${where}` };
    const expected = field ? describeType(field) : 'another value';
    return { message: `${where}: '${key}' expects ${expected}, got ${show(value)}${hint}` };
  });
}

function validate(raw: Raw, src: ConfigSource): TrainConfig {
  applyValueAliases(raw);
  const keyProblems: Located[] = [];
  checkKeys(raw, TrainConfigObject, [], src, keyProblems);
  if (keyProblems.length) fail(keyProblems);
  // DPOConfig's and RewardConfig's learning-rate defaults differ from SFTConfig's (the schema's).
  if (raw.trainer === 'dpo' && raw.learning_rate === undefined) raw.learning_rate = 1e-6;
  if (raw.trainer === 'reward' && raw.learning_rate === undefined) raw.learning_rate = 1e-4;
  if (raw.trainer === 'ppo' && raw.learning_rate === undefined) raw.learning_rate = 3e-6;
  // A reward model's adapter is PEFT's SEQ_CLS (the score head is saved with it).
  if (raw.trainer === 'reward' && isPlainObject(raw.lora ?? {}) && (raw.lora as Raw | undefined)?.task_type === undefined) raw.lora = { ...((raw.lora as Raw | undefined) ?? {}), task_type: 'SEQ_CLS' };
  const parsed = TrainConfig.safeParse(raw);
  if (!parsed.success) fail(zodProblems(parsed.error.issues, raw, src));
  return parsed.data;
}

/** Types one override value by the key's schema: YAML scalar parsing, falling back to the raw string. */
function typeOverride(path: Path, text: string): unknown {
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch {
    parsed = text;
  }
  const field = schemaAt(path);
  if (!field) return parsed;
  if (field.safeParse(parsed).success) return parsed;
  if (field.safeParse(text).success) return text;
  if (text.includes(',')) {
    const list = text.split(',').map((s) => s.trim());
    if (field.safeParse(list).success) return list;
  }
  return parsed;
}

/** Parses ["--key", "value", "--flag", "--k=v", ...] into (path, value text, flag) triples. */
export function parseOverrides(args: readonly string[]): { path: string[]; text: string; flag: string }[] {
  const out: { path: string[]; text: string; flag: string }[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--') || a.length === 2) {
      throw new UserError(`unexpected argument '${a}': config overrides are --key value pairs`, 'e.g. --learning_rate 1e-4 --lora.r 16');
    }
    const eq = a.indexOf('=');
    const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    let text: string;
    if (eq >= 0) text = a.slice(eq + 1);
    else if (i + 1 < args.length && !args[i + 1].startsWith('--')) text = args[++i];
    else text = 'true';
    const path = name.split('.');
    if (path.some((p) => p === '')) throw new UserError(`override '--${name}' is not a key path`, 'use --key value or --section.key value');
    out.push({ path, text, flag: `--${name}` });
  }
  return out;
}

function applyOverrides(raw: Raw, overrides: readonly string[], src: ConfigSource): void {
  for (const { path: given, text, flag } of parseOverrides(overrides)) {
    if (given.length === 1 && given[0] === 'use_peft') {
      const v = typeOverride(['trust_remote_code'], text); // a boolean key: same parsing
      if (typeof v !== 'boolean') fail([{ message: `override ${flag}: 'use_peft' expects boolean, got ${show(v)}` }]);
      const current = typeof raw.method === 'string' ? raw.method : 'lora';
      raw.method = v ? (PEFT_METHODS.has(current) ? current : 'lora') : 'full';
      src.overrides.set('method', flag);
      continue;
    }
    const path: Path = given.length === 1 && KEY_ALIASES[given[0]] ? KEY_ALIASES[given[0]] : given;
    setPath(raw, path, typeOverride(path, text));
    src.overrides.set(path.join('.'), flag);
  }
}

/**
 * Reads a training config: the YAML file (or none), then `--key value` overrides (dotted for nested keys),
 * TRL aliases mapped, every key checked, defaults filled. Mistakes throw UserError naming the key, the file
 * and line (or the override flag) and the expected type.
 */
export function loadTrainConfig(yamlPath: string | null, overrides: string[] = []): TrainConfig {
  let text: string | null = null;
  if (yamlPath !== null) {
    if (!existsSync(yamlPath)) throw new UserError(`config file not found: ${yamlPath}`, 'pass the path of a YAML training config, e.g. ajuste train train.yaml');
    text = readFileSync(yamlPath, 'utf8');
  }
  const src = new ConfigSource(yamlPath, text);
  let raw: Raw = {};
  if (src.doc) {
    const err = src.doc.errors[0];
    if (err) {
      const line = err.linePos?.[0].line;
      throw new UserError(`${yamlPath}${line ? ` line ${line}` : ''}: invalid YAML: ${err.message.split('\n')[0]}`);
    }
    const js: unknown = src.doc.toJS();
    if (js !== null && js !== undefined) {
      if (!isPlainObject(js)) throw new UserError(`${yamlPath}: a training config must be a mapping of key: value lines, got ${Array.isArray(js) ? 'a list' : typeof js}`);
      raw = js;
    }
  }
  applyAliases(raw, src);
  applyOverrides(raw, overrides, src);
  return validate(raw, src);
}

/** Validates a config given as an object (same aliases and messages as a file; `source` names it in errors). */
export function resolveTrainConfig(input: Record<string, unknown>, source = 'the config'): TrainConfig {
  const raw = structuredClone(input);
  const src = new ConfigSource(null, null, source);
  applyAliases(raw, src);
  return validate(raw, src);
}
