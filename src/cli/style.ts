/**
 * Terminal colours: on only when the stream is a TTY, NO_COLOR is unset and --no-color was not given
 * (FORCE_COLOR=1 forces them on, e.g. for a CI log viewer that renders ANSI).
 */

export interface Style {
  readonly enabled: boolean;
  red(s: string): string;
  yellow(s: string): string;
  green(s: string): string;
  cyan(s: string): string;
  dim(s: string): string;
  bold(s: string): string;
}

/** Whether to colour output written to `stream`. `flag` is false for --no-color. */
export function colorEnabled(stream: { isTTY?: boolean }, flag = true, env: NodeJS.ProcessEnv = process.env): boolean {
  if (!flag) return false;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined) return env.FORCE_COLOR !== '0' && env.FORCE_COLOR !== 'false';
  return stream.isTTY === true;
}

const sgr = (open: number, close: number) => (s: string) => `\x1b[${open}m${s}\x1b[${close}m`;
const plain = (s: string) => s;

export function createStyle(enabled: boolean): Style {
  const f = (open: number, close: number) => (enabled ? sgr(open, close) : plain);
  return { enabled, red: f(31, 39), yellow: f(33, 39), green: f(32, 39), cyan: f(36, 39), dim: f(2, 22), bold: f(1, 22) };
}

/** Removes ANSI escape sequences (for width arithmetic). */
export function stripAnsi(s: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching ANSI escapes is the point
  return s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
}
