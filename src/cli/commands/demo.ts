/** `ajuste demo [--quick]` (what `npm start` runs): fine-tune the bundled model to tell spam from ham. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { formatResults, runSpamDemo } from '../../demo/spam.js';
import { packageRoot } from '../../io/addon.js';
import { contextFor } from '../context.js';

export const BUNDLED_MODEL = 'models/ajuste-base-2m';

export function register(program: Command): void {
  program
    .command('demo')
    .summary('fine-tune the bundled model on SpamAssassin emails (npm start)')
    .description('Single-task fine-tuning on real data, offline: measure the bundled base model on spam vs ham emails, LoRA fine-tune it, measure again. Writes results.json and loss.png into --out.')
    .option('--quick', 'fewer emails and steps (used by CI)')
    .option('--model <dir>', 'base model folder', '')
    .option('--out <dir>', 'run folder', 'runs/spam-demo')
    .option('--json', 'print results.json instead of the table')
    .action(async (o: { quick?: boolean; model: string; out: string; json?: boolean }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const modelDir = o.model || join(packageRoot(), BUNDLED_MODEL);
      if (!existsSync(join(modelDir, 'model.safetensors'))) throw new UserError(`no model at ${modelDir}`, 'rebuild it with: node --import tsx tools/make-base-model.ts');
      const r = await runSpamDemo({ modelDir, outDir: o.out, quick: o.quick, log: (l) => ctx.info(l) });
      ctx.print(o.json ? JSON.stringify(r, null, 2) : `\n${formatResults(r)}\n\nresults: ${join(o.out, 'results.json')}, loss curves: ${join(o.out, 'loss.png')}`);
    });
}
