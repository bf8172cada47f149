/**
 * `ajuste merge --model M --adapter A --out DIR`: fold a LoRA adapter into its base and write an HF folder.
 * A reward model's adapter (task_type SEQ_CLS) gives a folder AutoModelForSequenceClassification loads.
 */
import type { Command } from 'commander';
import { Tokenizer } from '../../data/tokenizer.js';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { rewardPadId } from '../../models/reward.js';
import { UserError } from '../../errors.js';
import { loadAdapter, loadRewardAdapter, readAdapterConfig } from '../../peft/adapter-io.js';
import { isBottleneckAdapter } from '../../peft/bottleneck.js';
import { saveMergedModel } from '../../peft/merge.js';
import { contextFor } from '../context.js';

export function register(program: Command): void {
  program
    .command('merge')
    .summary('merge a LoRA adapter into its base model')
    .description('Merge a PEFT LoRA adapter into its base model and write a Hugging Face folder (config.json, model.safetensors, tokenizer files) that transformers loads without PEFT. Weights keep the base\'s dtype. A reward model\'s adapter (task_type SEQ_CLS, trainer: reward) gives a *ForSequenceClassification folder with its score head.')
    .requiredOption('--model <path|org/name>', 'the base model')
    .requiredOption('--adapter <dir>', 'the adapter folder')
    .requiredOption('--out <dir>', 'where to write the merged model')
    .action(async (o: { model: string; adapter: string; out: string }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(o.model);
      if (isBottleneckAdapter(o.adapter)) {
        throw new UserError(
          `${o.adapter} holds bottleneck adapters: they add a non-linear block (up(act(down(x)))) to each layer, which no weight of the base model can absorb, so they cannot be merged`,
          'use the adapter as it is: ajuste generate / eval --adapter DIR, or model.load_adapter(DIR) in Python (AdapterHub adapters)',
        );
      }
      const { model } = loadModelFolder(dir);
      if (readAdapterConfig(o.adapter).task_type === 'SEQ_CLS') {
        const padTokenId = rewardPadId(Tokenizer.fromFolder(dir));
        const { applied } = loadRewardAdapter(o.adapter, model, padTokenId);
        saveMergedModel(model, dir, o.out, { reward: { padTokenId } });
        ctx.info(`merged ${applied.targets.length} LoRA modules and the score head into ${o.out} (a reward model: AutoModelForSequenceClassification)`);
        return;
      }
      const { applied } = loadAdapter(o.adapter, model);
      saveMergedModel(model, dir, o.out);
      ctx.info(`merged ${applied.targets.length} LoRA modules into ${o.out}`);
    });
}
