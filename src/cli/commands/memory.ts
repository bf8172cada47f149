/**
 * `ajuste memory`: what a training run needs before it starts.
 *
 *   ajuste memory --model ./TinyLlama --method qlora [--r 8] [--batch 4 --max-length 512] [--optim ...]
 *                 [--gradient-checkpointing] [--json]
 *   ajuste memory --params 7e9 --method full
 *
 * Only config.json is read (never the weights), so it runs on any machine in milliseconds.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { UserError } from '../../errors.js';
import { parseModelConfig } from '../../models/config.js';
import { readJson } from '../../models/load.js';
import {
  estimateFromParams,
  estimateMemory,
  formatGB,
  formatMemoryTable,
  loadBytes,
  type MemoryEstimate,
  OPTIMIZERS,
  type OptimName,
  type TrainMethod,
} from '../../train/memory-estimate.js';

export interface MemoryCliOptions {
  model?: string;
  params?: number;
  method: TrainMethod;
  r?: number;
  targets?: 'all-linear' | string[];
  batch?: number;
  maxLength?: number;
  optim?: OptimName;
  gradientCheckpointing?: boolean;
  weightDtype?: 'float32' | 'bfloat16';
  doubleQuant?: boolean;
  json?: boolean;
}

/** The --json output: the estimate plus the bytes to load its parameters in each precision. */
export type MemoryJson = MemoryEstimate & { load: { precision: string; bytes: number }[] };

function positiveInt(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} must be a positive integer, got '${v}'`);
    return n;
  };
}

/** 1e9, 7000000000, 7b, 1.1B, 350M, 125k. */
export function parseParamCount(v: string): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt])?\s*$/i.exec(v);
  const scale = { k: 1e3, m: 1e6, b: 1e9, t: 1e12 } as const;
  const n = m ? Number(m[1]) * (m[2] ? scale[m[2].toLowerCase() as keyof typeof scale] : 1) : Number.NaN;
  if (!Number.isFinite(n) || n < 1) throw new InvalidArgumentError(`--params must be a parameter count such as 1e9, 7b or 350m, got '${v}'`);
  return Math.round(n);
}

function parseTargets(v: string): 'all-linear' | string[] {
  if (v.trim() === 'all-linear') return 'all-linear';
  const names = v.split(',').map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new InvalidArgumentError(`--targets must be 'all-linear' or a comma-separated list such as q_proj,v_proj, got '${v}'`);
  return names;
}

/** config.json of a model folder, or the file itself. */
function configFile(model: string): string {
  if (!existsSync(model)) throw new UserError(`--model ${model}: no such folder or file`, 'pass a Hugging Face model folder or its config.json');
  return statSync(model).isDirectory() ? join(model, 'config.json') : model;
}

/** Computes the estimate for parsed options (the command's action without the printing). */
export function runMemory(o: MemoryCliOptions): { json: MemoryJson; text: string } {
  if ((o.model === undefined) === (o.params === undefined)) {
    throw new UserError('ajuste memory needs exactly one of --model (a model folder or config.json) and --params (e.g. 1e9)');
  }
  let estimate: MemoryEstimate;
  if (o.model !== undefined) {
    const file = configFile(o.model);
    const config = parseModelConfig(readJson(file), file);
    estimate = estimateMemory(config, {
      method: o.method,
      r: o.r,
      targets: o.targets,
      batch: o.batch,
      maxLength: o.maxLength,
      optim: o.optim,
      gradientCheckpointing: o.gradientCheckpointing,
      weightDtype: o.weightDtype,
      doubleQuant: o.doubleQuant,
    });
  } else {
    estimate = estimateFromParams(o.params!, o.method, { optim: o.optim });
  }
  const load = loadBytes(estimate.params.total);
  const loadLine = `to load ${estimate.params.total.toLocaleString('en-US')} parameters: ` + load.map((l) => `${l.precision} ${formatGB(l.bytes)} GB`).join(', ');
  return { json: { ...estimate, load }, text: `${formatMemoryTable(estimate)}\n${loadLine}\n` };
}

export function register(program: Command): void {
  program
    .command('memory')
    .description('estimate the memory a training run needs (weights, gradients, optimizer, activations) from config.json alone')
    .option('--model <path>', 'model folder or config.json (only config.json is read)')
    .option('--params <n>', 'a parameter count instead of --model (1e9, 7b, 350m)', parseParamCount)
    .addOption(new Option('--method <method>', 'training method').choices(['full', 'lora', 'qlora']).makeOptionMandatory())
    .option('--r <n>', 'LoRA rank', positiveInt('--r'), 8)
    .option('--targets <list>', "LoRA target modules: names (q_proj,v_proj) or all-linear; default PEFT's for the architecture", parseTargets)
    .option('--batch <n>', 'sequences per micro-batch', positiveInt('--batch'), 4)
    .option('--max-length <n>', 'tokens per sequence', positiveInt('--max-length'), 512)
    .addOption(new Option('--optim <name>', 'optimizer (default adamw_torch; paged_adamw_32bit for qlora)').choices([...OPTIMIZERS]))
    .option('--gradient-checkpointing', 'recompute each decoder layer in backward')
    .addOption(new Option('--weight-dtype <dtype>', "in-memory dtype of frozen weights (default: bfloat16 when config.json's torch_dtype is bfloat16, else float32)").choices(['float32', 'bfloat16']))
    .option('--no-double-quant', 'qlora: keep the 4-bit absmax in f32 (no double quantization)')
    .option('--json', 'print the estimate as JSON')
    .action((opts: MemoryCliOptions) => {
      const { json, text } = runMemory(opts);
      process.stdout.write(opts.json ? `${JSON.stringify(json, null, 2)}\n` : text);
    });
}
