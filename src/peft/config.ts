/**
 * PEFT's LoraConfig: the keys, defaults and adapter_config.json layout of huggingface/peft
 * (see shared/reference/peft-spec.md §1.2-1.3), so adapters move between ajuste and Python PEFT.
 */
import { UserError } from '../errors.js';
import { pyFloat, pyJsonDumps } from '../io/pyjson.js';

export interface LoraConfig {
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  /** Names (exact or '.'-suffix match), a regex (full match), 'all-linear', or null (per-architecture default). */
  target_modules: string[] | string | null;
  exclude_modules: string[] | string | null;
  bias: 'none' | 'all' | 'lora_only';
  use_rslora: boolean;
  use_dora: boolean;
  modules_to_save: string[] | null;
  layers_to_transform: number | number[] | null;
  layers_pattern: string | string[] | null;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  init_lora_weights: boolean | 'gaussian';
  fan_in_fan_out: boolean;
  lora_bias: boolean;
  /** CAUSAL_LM, or SEQ_CLS for a reward model (PEFT's PeftModelForSequenceClassification: the score head trains and is saved). */
  task_type: TaskType;
}

export type TaskType = 'CAUSAL_LM' | 'SEQ_CLS';

/**
 * The classifier heads PEFT's PeftModelForSequenceClassification adds to modules_to_save (whichever the model
 * has: transformers' causal LMs name it `score`), in this order (huggingface/peft peft_model.py).
 */
export const SEQ_CLS_MODULES = ['classifier', 'score'] as const;

/** modules_to_save as PEFT has it after wrapping the model: for SEQ_CLS the user's list + classifier, score. */
export function peftModulesToSave(c: Pick<LoraConfig, 'modules_to_save' | 'task_type'>): string[] | null {
  if (c.task_type !== 'SEQ_CLS') return c.modules_to_save;
  return [...(c.modules_to_save ?? []), ...SEQ_CLS_MODULES];
}

export const LORA_DEFAULTS: LoraConfig = {
  r: 8,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: null,
  exclude_modules: null,
  bias: 'none',
  use_rslora: false,
  use_dora: false,
  modules_to_save: null,
  layers_to_transform: null,
  layers_pattern: null,
  rank_pattern: {},
  alpha_pattern: {},
  init_lora_weights: true,
  fan_in_fan_out: false,
  lora_bias: false,
  task_type: 'CAUSAL_LM',
};

/** PEFT's default target modules per model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING). */
export const DEFAULT_TARGETS: Record<string, string[]> = {
  llama: ['q_proj', 'v_proj'],
  mistral: ['q_proj', 'v_proj'],
  qwen2: ['q_proj', 'v_proj'],
  gpt2: ['c_attn'],
};

export function loraConfig(partial: Partial<LoraConfig> = {}): LoraConfig {
  const c = { ...LORA_DEFAULTS, ...partial };
  if (!Number.isInteger(c.r) || c.r <= 0) throw new UserError(`lora.r must be a positive integer, got ${c.r}`);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) throw new UserError(`lora.lora_dropout must be in [0, 1), got ${c.lora_dropout}`);
  if (c.lora_bias) throw new UserError('lora.lora_bias (a bias on lora_B) is not supported yet');
  if (c.task_type !== 'CAUSAL_LM' && c.task_type !== 'SEQ_CLS') throw new UserError(`lora.task_type must be CAUSAL_LM or SEQ_CLS, got ${JSON.stringify(c.task_type)}`);
  return c;
}

/** Scaling of the LoRA product for a module with rank r and alpha. */
export function loraScaling(alpha: number, r: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** adapter_config.json as PEFT writes it: all 41 keys of a current LoraConfig, sorted, indent 2, no final newline. */
export function adapterConfigJson(
  c: LoraConfig,
  meta: { baseModel: string | null; targetModules: string[]; peftVersion?: string; taskType?: string },
): string {
  const obj: Record<string, unknown> = {
    alora_invocation_tokens: null,
    alpha_pattern: c.alpha_pattern,
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: meta.baseModel,
    bias: c.bias,
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: c.exclude_modules,
    fan_in_fan_out: c.fan_in_fan_out,
    inference_mode: true,
    init_lora_weights: c.init_lora_weights,
    kasa_config: null,
    layer_replication: null,
    layers_pattern: c.layers_pattern,
    layers_to_transform: c.layers_to_transform,
    loftq_config: {},
    lora_alpha: c.lora_alpha,
    lora_bias: c.lora_bias,
    lora_dropout: pyFloat(c.lora_dropout),
    lora_ga_config: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: peftModulesToSave(c),
    monteclora_config: null,
    peft_type: 'LORA',
    peft_version: meta.peftVersion ?? '0.20.0',
    qalora_group_size: 16,
    r: c.r,
    rank_pattern: c.rank_pattern,
    revision: null,
    // A regex stays a string; a list is written as the set of modules PEFT would match.
    target_modules: typeof c.target_modules === 'string' && c.target_modules !== 'all-linear' ? c.target_modules : meta.targetModules,
    target_parameters: null,
    task_type: meta.taskType ?? c.task_type,
    trainable_token_indices: null,
    use_bdlora: null,
    use_dora: c.use_dora,
    use_qalora: false,
    use_rslora: c.use_rslora,
    velora_config: null,
  };
  return pyJsonDumps(obj);
}

/** Reads an adapter_config.json (written by PEFT or ajuste) into a LoraConfig. */
export function parseAdapterConfig(json: Record<string, unknown>, file: string): LoraConfig {
  if (json.peft_type !== 'LORA') {
    throw new UserError(`${file}: peft_type is ${JSON.stringify(json.peft_type)}; only LORA adapters are supported here`);
  }
  const pick = <K extends keyof LoraConfig>(k: K): LoraConfig[K] => (json[k] ?? LORA_DEFAULTS[k]) as LoraConfig[K];
  const keys = Object.keys(LORA_DEFAULTS) as (keyof LoraConfig)[];
  const out = {} as Record<string, unknown>;
  for (const k of keys) out[k] = pick(k);
  const c = out as unknown as LoraConfig;
  if (json.init_lora_weights !== undefined && typeof json.init_lora_weights === 'string' && json.init_lora_weights !== 'gaussian') {
    c.init_lora_weights = true; // initialisation does not matter when loading trained weights
  }
  // Causal LM adapters may say null or CAUSAL_LM; SEQ_CLS is a reward model (or classifier) with its head saved.
  c.task_type = json.task_type === 'SEQ_CLS' ? 'SEQ_CLS' : 'CAUSAL_LM';
  if (c.task_type === 'SEQ_CLS' && c.modules_to_save) {
    // The heads PEFT added on wrapping are implied by SEQ_CLS (written once again on saving).
    const own = c.modules_to_save.filter((m) => !(SEQ_CLS_MODULES as readonly string[]).includes(m));
    c.modules_to_save = own.length ? own : null;
  }
  return c;
}
