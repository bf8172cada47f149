/**
 * `ajuste quantize`: writes a 4-bit copy of a model folder in transformers + bitsandbytes' layout
 * (loadable by `AutoModelForCausalLM.from_pretrained` with bitsandbytes installed, and by ajuste for QLoRA).
 *
 *   ajuste quantize --model ./SmolLM2-135M --out ./SmolLM2-135M-nf4 --quant nf4 [--double-quant] [--blocksize 64]
 *                   [--compute-dtype float32|bfloat16|float16]
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { resolveModel } from '../../io/hub.js';
import { quantizeModelFolder } from '../../quant/quantize-model.js';
import { contextFor } from '../context.js';

export interface QuantizeCliOptions {
  model: string;
  out: string;
  quant: 'nf4' | 'fp4';
  doubleQuant?: boolean;
  blocksize: number;
  computeDtype: 'float32' | 'bfloat16' | 'float16';
}

function blocksizeArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 32 || n > 4096 || (n & (n - 1)) !== 0) {
    throw new InvalidArgumentError(`--blocksize must be a power of two between 32 and 4096, got '${v}'`);
  }
  return n;
}

export function register(program: Command): void {
  program
    .command('quantize')
    .description('write a 4-bit (NF4/FP4) copy of a model in the bitsandbytes layout, for QLoRA')
    .requiredOption('--model <path>', 'model folder (or Hub id in the local cache)')
    .requiredOption('--out <dir>', 'output folder')
    .addOption(new Option('--quant <type>', '4-bit code').choices(['nf4', 'fp4']).default('nf4'))
    .option('--double-quant', 'double quantization: 8-bit block scales (QLoRA)')
    .option('--blocksize <n>', 'values per 4-bit block', blocksizeArg, 64)
    .addOption(new Option('--compute-dtype <dtype>', 'bnb_4bit_compute_dtype recorded in config.json').choices(['float32', 'bfloat16', 'float16']).default('float32'))
    .action(async (opts: QuantizeCliOptions, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(opts.model);
      const t0 = performance.now();
      const r = quantizeModelFolder(dir, opts.out, { quantType: opts.quant, doubleQuant: opts.doubleQuant === true, blocksize: opts.blocksize, computeDtype: opts.computeDtype });
      ctx.info(`quantized ${r.layers} linear layers (${r.numel.toLocaleString('en-US')} weights) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      ctx.print(`${r.outDir}: ${opts.quant}${opts.doubleQuant ? ' + double quant' : ''}, blocksize ${opts.blocksize}, ${(r.bytes / r.numel).toFixed(4)} bytes/param for the linear weights (+ ${(r.tableBytes / 1024).toFixed(1)} KiB of code tables)\n`);
    });
}
