/**
 * What a command needs from the CLI around it: the global flags, styled output streams, and the AbortSignal
 * that Ctrl-C trips (main.ts owns the controller).
 */
import type { Command } from 'commander';
import { colorEnabled, createStyle, type Style } from './style.js';

export interface CliContext {
  verbose: boolean;
  quiet: boolean;
  /** Aborted by the first Ctrl-C: stop at the next safe point (the trainer checkpoints) and return. */
  signal: AbortSignal;
  /** Styles for stdout and for stderr (each coloured only when that stream is a TTY). */
  out: Style;
  err: Style;
  /** Results: stdout. */
  print(text: string): void;
  /** Progress and status messages: stderr, silenced by --quiet. */
  info(message: string): void;
  /** Details: stderr, only with --verbose. */
  debug(message: string): void;
  /** Warnings: stderr, always. */
  warn(message: string): void;
}

let controller = new AbortController();

/** Called by main before running a command. */
export function resetAbortController(): AbortController {
  controller = new AbortController();
  return controller;
}

/** The context for a command's action (reads the global flags from the command tree). */
export function contextFor(cmd: Command): CliContext {
  const g = cmd.optsWithGlobals() as { verbose?: boolean; quiet?: boolean; color?: boolean };
  const verbose = g.verbose === true;
  const quiet = g.quiet === true && !verbose;
  const out = createStyle(colorEnabled(process.stdout, g.color !== false));
  const err = createStyle(colorEnabled(process.stderr, g.color !== false));
  return {
    verbose,
    quiet,
    signal: controller.signal,
    out,
    err,
    print: (text) => {
      process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
    },
    info: (m) => {
      if (!quiet) process.stderr.write(`${m}\n`);
    },
    debug: (m) => {
      if (verbose) process.stderr.write(`${err.dim(m)}\n`);
    },
    warn: (m) => {
      process.stderr.write(`${err.yellow('warning:')} ${m}\n`);
    },
  };
}
