/**
 * A mistake in what the user gave ajuste (a file, a config key, a flag), as opposed to a bug in ajuste.
 * The CLI prints its message on one line (plus the hint) and exits with code 1; any other error exits 2.
 * Messages say what was wrong, where (file, line, key) and what to do.
 */
export class UserError extends Error {
  constructor(
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'UserError';
  }
}
