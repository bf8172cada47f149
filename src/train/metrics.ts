/** Training metrics: OUTPUT_DIR/metrics.jsonl (one JSON row per log or eval) and the in-memory history. */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export class MetricsLog {
  history: Record<string, number>[] = [];
  private readonly file: string;

  constructor(
    outputDir: string,
    private readonly onLog?: (row: Record<string, number>) => void,
  ) {
    mkdirSync(outputDir, { recursive: true });
    this.file = join(outputDir, 'metrics.jsonl');
  }

  write(row: Record<string, number>): void {
    this.history.push(row);
    appendFileSync(this.file, JSON.stringify(row) + '\n');
    this.onLog?.(row);
  }

  /** After a resume: the file holds exactly the rows up to the checkpoint. */
  restore(history: Record<string, number>[]): void {
    this.history = [...history];
    writeFileSync(this.file, history.map((r) => JSON.stringify(r) + '\n').join(''));
  }
}
