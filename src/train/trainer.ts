/**
 * The training loop: gradient accumulation, clipping, LR schedule, logging, evaluation, checkpoints,
 * resume, Ctrl-C and NaN handling. It knows nothing about LoRA or full fine-tuning: the recipe hands it
 * a model, the trainable parameters, an optimizer, batches, and how to save the trainable state.
 *
 *   for step in start..total:
 *     for each micro-batch: loss = sum CE / targets in the whole accumulated batch; backward
 *     clip; optimizer.step; log / eval / checkpoint
 */
import { readFileSync } from 'node:fs';
import { UserError } from '../errors.js';
import { backward, noGrad, scope } from '../tensor/autograd.js';
import { memoryStats } from '../tensor/memory.js';
import type { CausalLM } from '../models/causal-lm.js';
import { clipGradNorm, type Optimizer } from '../optim/adamw.js';
import { learningRate, type ScheduleType } from '../optim/schedule.js';
import type { Tensor } from '../tensor/tensor.js';
import type { BatchLoader, DataBatch } from '../data/packing.js';
import { countTargets } from '../nn/ops/loss.js';
import { shiftLabels } from '../models/causal-lm.js';
import { type CheckpointIO, latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { MetricsLog } from './metrics.js';

export interface TrainerOptions {
  model: CausalLM;
  trainable: [string, Tensor][];
  optimizer: Optimizer;
  train: BatchLoader;
  /** Evaluation batches (re-created for each evaluation). */
  evalBatches?: () => Iterable<DataBatch>;
  outputDir: string;
  maxSteps: number;
  learningRate: number;
  scheduler: ScheduleType;
  warmupSteps: number;
  gradientAccumulationSteps: number;
  maxGradNorm: number;
  gradientCheckpointing: boolean;
  loggingSteps: number;
  evalSteps: number;
  saveSteps: number;
  saveTotalLimit: number | null;
  /** Saves and restores what trains (adapter or full weights) and any RNG the model uses. */
  io: CheckpointIO;
  resumeFrom?: string | null;
  signal?: AbortSignal;
  onLog?: (row: Record<string, number>) => void;
}

export interface TrainResult {
  globalStep: number;
  stoppedEarly: 'interrupted' | null;
  finalLoss: number;
  peakRssMb: number;
  tokensPerSecond: number;
  seconds: number;
  history: Record<string, number>[];
}

/** The loss became NaN or infinite: a problem of the run's settings or data, reported as a user error. */
export class NonFiniteLossError extends UserError {}

/** Tokens whose next-token prediction a batch scores (the denominator of the mean loss). */
export function scoredTokens(b: DataBatch): number {
  return countTargets(shiftLabels(b.labels, b));
}

/** Mean loss and perplexity over evaluation batches. */
export function evaluate(model: CausalLM, batches: Iterable<DataBatch>): { loss: number; perplexity: number; tokens: number } {
  let total = 0, tokens = 0;
  const was = model.training;
  model.train(false);
  noGrad(() => {
    for (const b of batches) {
      scope(() => {
        total += model.loss(model.forwardHidden(b), b.labels, b, 'sum').item();
        tokens += scoredTokens(b);
      });
    }
  });
  model.train(was);
  const loss = total / Math.max(tokens, 1);
  return { loss, perplexity: Math.exp(loss), tokens };
}

export async function runTrainer(o: TrainerOptions): Promise<TrainResult> {
  const params = o.trainable.map(([, p]) => p);
  const log = new MetricsLog(o.outputDir, o.onLog);
  let step = 0;
  if (o.resumeFrom) {
    const dir = o.resumeFrom;
    const state = loadCheckpoint(dir, o.optimizer, o.io);
    step = state.globalStep;
    o.train.restore(state.dataPosition);
    log.restore(state.logHistory);
  }
  const t0 = performance.now();
  let tokensSeen = 0;
  let windowLoss = 0, windowSteps = 0, windowTokens = 0, windowStart = performance.now();
  let lastLoss = Number.NaN;
  let stopped: TrainResult['stoppedEarly'] = null;
  o.model.train(true);

  while (step < o.maxSteps) {
    if (o.signal?.aborted) {
      stopped = 'interrupted';
      break;
    }
    const lr = learningRate(o.scheduler, o.learningRate, step, o.maxSteps, o.warmupSteps);
    o.optimizer.lr = lr;
    const micro: DataBatch[] = [];
    for (let i = 0; i < o.gradientAccumulationSteps; i++) micro.push(o.train.next());
    const targets = micro.reduce((s, b) => s + scoredTokens(b), 0);
    let stepLoss = 0;
    for (const b of micro) {
      stepLoss += scope(() => {
        const h = o.model.forwardHidden(b, { gradientCheckpointing: o.gradientCheckpointing });
        const loss = o.model.loss(h, b.labels, b, 'sum');
        const value = loss.item();
        if (targets > 0) backward(loss, Float32Array.of(1 / targets));
        return value;
      });
      tokensSeen += b.B * b.T;
      windowTokens += b.B * b.T;
    }
    stepLoss /= Math.max(targets, 1);
    if (!Number.isFinite(stepLoss)) {
      o.optimizer.zeroGrad();
      throw new NonFiniteLossError(
        `the loss became ${stepLoss} at step ${step + 1}; the weights were not updated and the last checkpoint in ${o.outputDir} is intact`,
        'lower the learning rate (or max_grad_norm), check the data, then resume with --resume_from_checkpoint true',
      );
    }
    const gradNorm = clipGradNorm(params, o.maxGradNorm);
    o.optimizer.step();
    o.optimizer.zeroGrad();
    step++;
    lastLoss = stepLoss;
    windowLoss += stepLoss;
    windowSteps++;

    if (step % o.loggingSteps === 0 || step === o.maxSteps) {
      const secs = (performance.now() - windowStart) / 1000;
      log.write({
        step,
        loss: windowLoss / windowSteps,
        learning_rate: lr,
        grad_norm: gradNorm,
        tokens_per_second: windowTokens / Math.max(secs, 1e-9),
        peak_rss_mb: peakRssMb(),
        epoch: o.train.position.epoch + o.train.position.offset / o.train.batchesPerEpoch,
      });
      windowLoss = 0;
      windowSteps = 0;
      windowTokens = 0;
      windowStart = performance.now();
    }
    if (o.evalBatches && o.evalSteps > 0 && (step % o.evalSteps === 0 || step === o.maxSteps)) {
      const e = evaluate(o.model, o.evalBatches());
      log.write({ step, eval_loss: e.loss, eval_perplexity: e.perplexity, eval_tokens: e.tokens });
    }
    if ((o.saveSteps > 0 && step % o.saveSteps === 0) || step === o.maxSteps) {
      saveCheckpoint(o.outputDir, step, { optimizer: o.optimizer, io: o.io, dataPosition: o.train.position, logHistory: log.history, saveTotalLimit: o.saveTotalLimit });
    }
    // Let Ctrl-C and other events in between steps.
    await new Promise((r) => setImmediate(r));
  }
  if (stopped === 'interrupted' && !latestCheckpointIs(o.outputDir, step)) {
    saveCheckpoint(o.outputDir, step, { optimizer: o.optimizer, io: o.io, dataPosition: o.train.position, logHistory: log.history, saveTotalLimit: o.saveTotalLimit });
  }
  o.model.train(false);
  const seconds = (performance.now() - t0) / 1000;
  return {
    globalStep: step,
    stoppedEarly: stopped,
    finalLoss: lastLoss,
    peakRssMb: peakRssMb(),
    tokensPerSecond: tokensSeen / Math.max(seconds, 1e-9),
    seconds,
    history: log.history,
  };
}

function latestCheckpointIs(dir: string, step: number): boolean {
  const latest = latestCheckpoint(dir);
  return latest?.endsWith(`checkpoint-${step}`) ?? false;
}

/** Peak resident set size of this process so far, in MB (from the kernel's VmHWM). */
export function peakRssMb(): number {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const m = /VmHWM:\s+(\d+) kB/.exec(status);
    if (m) return Number(m[1]) / 1024;
  } catch {
    // not Linux
  }
  return Math.max(process.memoryUsage().rss, memoryStats().peakBytes) / 1024 / 1024;
}
