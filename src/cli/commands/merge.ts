/** `ajuste merge --model M --adapter A --out DIR`: fold a LoRA adapter into its base and write an HF folder. */
import type { Command } from 'commander';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { loadAdapter } from '../../peft/adapter-io.js';
import { saveMergedModel } from '../../peft/merge.js';
import { contextFor } from '../context.js';

export function register(program: Command): void {
  program
    .command('merge')
    .summary('merge a LoRA adapter into its base model')
    .description('Merge a PEFT LoRA adapter into its base model and write a Hugging Face folder (config.json, model.safetensors, tokenizer files) that transformers loads without PEFT. Weights keep the base\'s dtype.')
    .requiredOption('--model <path|org/name>', 'the base model')
    .requiredOption('--adapter <dir>', 'the adapter folder')
    .requiredOption('--out <dir>', 'where to write the merged model')
    .action(async (o: { model: string; adapter: string; out: string }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(o.model);
      const { model } = loadModelFolder(dir);
      const { applied } = loadAdapter(o.adapter, model);
      saveMergedModel(model, dir, o.out);
      ctx.info(`merged ${applied.targets.length} LoRA modules into ${o.out}`);
    });
}
