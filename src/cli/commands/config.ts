/** `ajuste config --print CONFIG.yaml [--key value ...]` and `ajuste config --docs`. */
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { UserError } from '../../errors.js';
import { loadTrainConfig, schemaDocsMarkdown } from '../../train/config.js';
import { contextFor } from '../context.js';

export function register(program: Command): void {
  program
    .command('config')
    .summary('show a resolved training config, or the reference of every key')
    .description('Show the training config as ajuste reads it (defaults filled, aliases mapped, overrides applied), or the reference of every key.')
    .argument('[config]', 'training config (YAML)')
    .option('--print', 'print the fully resolved config as YAML')
    .option('--docs', 'print the reference of every config key (markdown table)')
    .allowUnknownOption()
    .allowExcessArguments()
    .addHelpText('after', '\nExamples:\n  ajuste config --print train.yaml --learning_rate 1e-4\n  ajuste config --docs > CONFIG.md\n')
    .action((configPath: string | undefined, opts: { print?: boolean; docs?: boolean }, cmd: Command) => {
      const ctx = contextFor(cmd);
      if (opts.docs) {
        ctx.print(schemaDocsMarkdown());
        return;
      }
      if (!opts.print) throw new UserError('nothing to do: say --print CONFIG.yaml or --docs', "run 'ajuste config --help'");
      const rest = cmd.args.slice(configPath && !configPath.startsWith('--') ? 1 : 0);
      const path = configPath && !configPath.startsWith('--') ? configPath : null;
      const config = loadTrainConfig(path, rest);
      ctx.print(`# resolved by ajuste from ${path ?? 'the command line'}\n${stringify(config)}`);
    });
}
