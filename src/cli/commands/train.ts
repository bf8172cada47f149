/** `ajuste train CONFIG.yaml [--key value ...]`: fine-tune as the config says, with a progress line. */
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { loadTrainConfig, SCHEMA_DOCS } from '../../train/config.js';
import { runTraining } from '../../train/run.js';
import { contextFor } from '../context.js';
import { EXIT_INTERRUPTED } from '../errors.js';
import { formatMetric, ProgressBar } from '../progress.js';

/** Log-row keys shown on the progress line, with their short names. */
const SHOWN: [string, string][] = [
  ['loss', 'loss'],
  ['learning_rate', 'lr'],
  ['grad_norm', 'gnorm'],
  ['rewards/accuracies', 'acc'],
  ['rewards/margins', 'margin'],
  ['accuracy', 'acc'],
  ['margin', 'margin'],
  ['tokens_per_second', 'tok/s'],
  ['peak_rss_mb', 'rss_mb'],
];

function keysHelp(): string {
  const width = Math.max(...SCHEMA_DOCS.map((d) => d.key.length)) + 4;
  const rows = SCHEMA_DOCS.map((d) => `  --${d.key.padEnd(width)}${d.type}  ${d.default === '(required)' ? '(required)' : `(default: ${d.default})`}`);
  return `\nConfig keys (each can be overridden on the command line, after the file):\n${rows.join('\n')}\n\nExamples:\n  ajuste train train.yaml\n  ajuste train train.yaml --learning_rate 1e-4 --lora.r 16 --max_steps 200\n\nFull descriptions: ajuste config --docs\n`;
}

export function register(program: Command): void {
  program
    .command('train')
    .summary('fine-tune a model as a YAML config says')
    .description('Fine-tune a model (LoRA, QLoRA, full, BitFit, ...) as a YAML config says. Keys use TRL / transformers / PEFT names and defaults; any key can be overridden with --key value (dotted for nested: --lora.r 16). Ctrl-C stops after the current step and saves a checkpoint; a second Ctrl-C quits at once.')
    .argument('[config]', 'training config (YAML); optional when every required key is given as an override')
    .allowUnknownOption()
    .allowExcessArguments()
    .addHelpText('after', keysHelp)
    .action(async (configPath: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = contextFor(cmd);
      const hasFile = configPath !== undefined && !configPath.startsWith('--');
      const overrides = cmd.args.slice(hasFile ? 1 : 0);
      if (!hasFile && overrides.length === 0) throw new UserError('ajuste train needs a training config', 'ajuste train train.yaml [--key value ...]; see ajuste train --help');
      const config = loadTrainConfig(hasFile ? configPath : null, overrides);
      ctx.info(`${ctx.err.bold('ajuste train')}: ${config.trainer === 'sft' ? '' : `${config.trainer}, `}${config.method} on ${config.model_name_or_path} -> ${config.output_dir}`);
      ctx.debug(`resolved config: ${JSON.stringify(config)}`);
      const bar = new ProgressBar(config.max_steps > 0 ? config.max_steps : null, { stream: process.stderr });
      await runTraining(config, {
        signal: ctx.signal,
        onInfo: (message) => {
          if (!ctx.quiet) bar.log(message);
        },
        onLog(row) {
          if (ctx.quiet) return;
          if (typeof row.max_steps === 'number') bar.setTotal(row.max_steps);
          if (typeof row.eval_loss === 'number') {
            const extra = Object.entries(row)
              .filter(([k]) => k.startsWith('eval_'))
              .map(([k, v]) => `${k}=${formatMetric(v)}`);
            bar.log(`step ${row.step}: ${extra.join(' ')}`);
            return;
          }
          const fields: Record<string, number> = {};
          for (const [key, name] of SHOWN) if (typeof row[key] === 'number') fields[name] = row[key];
          bar.update(row.step ?? bar.currentStep, fields);
        },
      });
      bar.done();
      if (ctx.signal.aborted) {
        ctx.info(`interrupted: the last checkpoint is in ${config.output_dir}; continue with --resume_from_checkpoint true`);
        process.exitCode = EXIT_INTERRUPTED;
        return;
      }
      ctx.info(`${ctx.err.green('done')}: results in ${config.output_dir}`);
    });
}
