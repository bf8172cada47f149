/** `ajuste eval --model M [--adapter A] --data FILE [--max-length N] [--json]`: loss and perplexity. */
import type { Command } from 'commander';
import { Tokenizer } from '../../data/tokenizer.js';
import { evaluateFile } from '../../eval/perplexity.js';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { loadAdapter } from '../../peft/adapter-io.js';
import { contextFor } from '../context.js';

export function register(program: Command): void {
  program
    .command('eval')
    .summary('mean token cross-entropy and perplexity on a dataset')
    .description('Mean token cross-entropy and perplexity of a model (and adapter) on a JSONL/JSON/CSV file. {"text"} records score every next token after the first; {"prompt","completion"} records only the completion.')
    .requiredOption('--model <path|org/name>', 'model folder or Hugging Face id')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder')
    .requiredOption('--data <file>', 'dataset file (.jsonl, .json or .csv)')
    .option('--max-length <n>', 'truncate records to this many tokens', '1024')
    .option('--batch-size <n>', 'records per forward pass', '4')
    .option('--json', 'print one JSON object {"loss", "perplexity", "tokens"}')
    .action(async (o: { model: string; adapter?: string; data: string; maxLength: string; batchSize: string; json?: boolean }, cmd: Command) => {
      const ctx = contextFor(cmd);
      const dir = await resolveModel(o.model);
      const { model } = loadModelFolder(dir);
      if (o.adapter) loadAdapter(o.adapter, model);
      const r = evaluateFile(model, Tokenizer.fromFolder(dir), o.data, { maxLength: Number(o.maxLength), batchSize: Number(o.batchSize) });
      if (o.json) ctx.print(JSON.stringify({ loss: r.loss, perplexity: r.perplexity, tokens: r.tokens }));
      else ctx.print(`loss ${r.loss.toFixed(4)}  perplexity ${r.perplexity.toFixed(2)}  (${r.tokens} tokens in ${r.examples} records${r.truncated ? `, ${r.truncated} truncated` : ''})`);
    });
}
