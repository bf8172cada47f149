/** Learning-rate schedules with warmup, as transformers' get_scheduler (lr at optimizer step k, 0-based). */
export type ScheduleType = 'linear' | 'cosine' | 'constant' | 'constant_with_warmup';

export function learningRate(type: ScheduleType, base: number, step: number, total: number, warmup: number): number {
  if (type === 'constant') return base;
  if (step < warmup) return (base * step) / Math.max(1, warmup);
  if (type === 'constant_with_warmup') return base;
  const progress = (step - warmup) / Math.max(1, total - warmup);
  if (type === 'linear') return base * Math.max(0, (total - step) / Math.max(1, total - warmup));
  return base * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/** warmup_steps if set, else ceil(warmup_ratio * total), as TrainingArguments.get_warmup_steps. */
export function warmupSteps(total: number, warmupSteps: number, warmupRatio: number): number {
  return warmupSteps > 0 ? warmupSteps : Math.ceil(total * warmupRatio);
}
