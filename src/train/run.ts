/**
 * Placeholder so the CLI typechecks: the real runTraining (config -> recipe) replaces this file.
 */
import type { TrainConfig } from './config.js';

export async function runTraining(_config: TrainConfig, _hooks: { onLog?(row: Record<string, number>): void; signal?: AbortSignal }): Promise<unknown> {
  throw new Error('runTraining is not implemented yet');
}
