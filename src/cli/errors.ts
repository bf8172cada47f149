/**
 * What the CLI prints for an error and its exit code: 1 for a user mistake (UserError, bad arguments) as one
 * red "error:" line plus a dim "hint:" line; 2 for anything else (a bug), with the stack only under --verbose.
 */
import { CommanderError } from 'commander';
import { UserError } from '../errors.js';
import type { Style } from './style.js';

export const EXIT_OK = 0;
export const EXIT_USER = 1;
export const EXIT_INTERNAL = 2;
export const EXIT_INTERRUPTED = 130;

export interface ErrorReport {
  /** Text for stderr, ending with a newline ('' when nothing should be printed). */
  text: string;
  exitCode: number;
}

/** Commander's own exits that are not errors (help, version). */
const SILENT_CODES = new Set(['commander.help', 'commander.helpDisplayed', 'commander.version', 'commander.executeSubCommandAsync']);

export function formatError(err: unknown, opts: { verbose: boolean; style: Style }): ErrorReport {
  const { style } = opts;
  const lines = (message: string, hint?: string) => `${style.red('error:')} ${message}\n${hint ? `${style.dim(`hint: ${hint}`)}\n` : ''}`;
  if (err instanceof UserError) return { text: lines(err.message, err.hint), exitCode: EXIT_USER };
  if (err instanceof CommanderError) {
    if (SILENT_CODES.has(err.code) || err.exitCode === 0) return { text: '', exitCode: err.exitCode };
    const [first, ...rest] = err.message.replace(/^error: /, '').split('\n');
    const suggestion = /\(Did you mean (.+)\?\)/.exec(rest.join(' '));
    const help = "run 'ajuste --help' for the commands and options";
    const hint = suggestion ? `did you mean ${suggestion[1]}? ${help}` : help;
    return { text: lines(first, hint), exitCode: EXIT_USER };
  }
  const e = err instanceof Error ? err : new Error(String(err));
  const detail = opts.verbose && e.stack ? `${style.dim(e.stack)}\n` : `${style.dim('hint: run with --verbose for the stack trace')}\n`;
  return { text: `${style.red('error:')} internal error: ${e.message}\n${detail}`, exitCode: EXIT_INTERNAL };
}
