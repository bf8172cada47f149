/**
 * A progress line for long loops. On a TTY it redraws one line in place:
 *   [########------------]  40/100  40%  eta 1m12s  loss=2.314 lr=2.0e-4 tok/s=1,234
 * On anything else (CI logs, a pipe) it prints a plain line every `every` updates and at the end:
 *   step 40/100 (40%) eta 1m12s loss=2.314 lr=2.0e-4 tok/s=1,234
 * Lines written through log() appear above the bar without garbling it.
 */

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Total steps, or null when unknown (no percentage or ETA). */
  total: number | null;
  stream?: ProgressStream;
  /** Redraw in place (default: stream.isTTY). */
  tty?: boolean;
  /** Non-TTY: print every N-th update (default 1). */
  every?: number;
  /** Clock in milliseconds (tests). */
  now?: () => number;
}

/** 75 -> "1m15s", 3725 -> "1h02m", 9 -> "9s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** A metric value short enough for a status line: 4 significant digits, exponent for tiny values, thousands separators for big ones. */
export function formatMetric(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const a = Math.abs(value);
  if (a !== 0 && a < 1e-3) return value.toExponential(1);
  if (a >= 1000) return Math.round(value).toLocaleString('en-US');
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(4)));
}

export class ProgressBar {
  private readonly stream: ProgressStream;
  private readonly tty: boolean;
  private readonly every: number;
  private readonly now: () => number;
  private startTime: number | null = null;
  private startStep = 0;
  private updates = 0;
  private lastLine = '';
  private drawn = false;
  private step = 0;

  constructor(private total: number | null, opts: Omit<ProgressOptions, 'total'> = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? this.stream.isTTY === true;
    this.every = Math.max(1, opts.every ?? 1);
    this.now = opts.now ?? (() => performance.now());
  }

  setTotal(total: number | null): void {
    this.total = total;
  }

  /** Seconds left, from the rate between the first update and now (a resumed run is not counted from 0), or null. */
  eta(step: number): number | null {
    if (this.total === null || this.startTime === null || step <= this.startStep) return null;
    const perStep = (this.now() - this.startTime) / 1000 / (step - this.startStep);
    return perStep * Math.max(0, this.total - step);
  }

  /** The status text for `step` with the given named fields (e.g. { loss, lr, 'tok/s' }). */
  format(step: number, fields: Record<string, number> = {}, bar = this.tty): string {
    const parts: string[] = [];
    const pct = this.total ? Math.min(100, Math.floor((100 * step) / this.total)) : null;
    if (bar && this.total) {
      const width = 20;
      const filled = Math.round((width * Math.min(step, this.total)) / this.total);
      parts.push(`[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`, `${step}/${this.total}`, `${pct}%`);
    } else if (this.total) parts.push(`step ${step}/${this.total} (${pct}%)`);
    else parts.push(`step ${step}`);
    const eta = this.eta(step);
    if (eta !== null) parts.push(`eta ${formatDuration(eta)}`);
    const metrics = Object.entries(fields).map(([k, v]) => `${k}=${formatMetric(v)}`);
    return [...parts, ...metrics].join(' ');
  }

  update(step: number, fields: Record<string, number> = {}): void {
    if (this.startTime === null) {
      this.startTime = this.now();
      this.startStep = step;
    }
    this.step = step;
    this.updates++;
    this.lastLine = this.format(step, fields);
    if (this.tty) this.redraw();
    else if ((this.updates - 1) % this.every === 0) this.stream.write(`${this.lastLine}\n`);
  }

  /** Writes a whole line (a message, an eval result) above the bar. */
  log(line: string): void {
    if (this.tty && this.drawn) this.stream.write('\r\x1b[2K');
    this.stream.write(`${line}\n`);
    if (this.tty && this.drawn) this.redraw();
  }

  /** Ends the bar: a final newline on a TTY; on a non-TTY the last state if it was not printed. */
  done(): void {
    if (this.tty) {
      if (this.drawn) this.stream.write('\n');
    } else if (this.updates > 0 && (this.updates - 1) % this.every !== 0) this.stream.write(`${this.lastLine}\n`);
    this.drawn = false;
  }

  get currentStep(): number {
    return this.step;
  }

  private redraw(): void {
    const cols = this.stream.columns ?? 120;
    const line = this.lastLine.length > cols - 1 ? this.lastLine.slice(0, cols - 1) : this.lastLine;
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }
}
