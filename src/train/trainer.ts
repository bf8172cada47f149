/**
 * The training loop: gradient accumulation, clipping, LR schedule, logging, evaluation, checkpoints,
 * resume, Ctrl-C and NaN handling. It knows nothing about LoRA or full fine-tuning: the recipe hands it
 * a model, the trainable parameters, an optimizer, batches, what to minimise (an Objective: next-token
 * cross-entropy for SFT, train/dpo.ts for DPO), and how to save the trainable state.
 *
 *   for step in start..total:
 *     for each micro-batch: loss = objective summed over the micro-batch / units in the whole accumulated
 *                           batch (scored tokens for SFT, pairs for DPO); backward
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
import type { DataBatch, LoaderPosition } from '../data/packing.js';
import type { ForwardOptions } from '../models/causal-lm.js';
import { countTargets } from '../nn/ops/loss.js';
import { shiftLabels } from '../models/causal-lm.js';
import { type CheckpointIO, latestCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { MetricsLog } from './metrics.js';

/** Where the training batches come from: endless epochs, with a position saved in checkpoints. */
export interface Loader<B extends DataBatch = DataBatch> {
  next(): B;
  readonly position: LoaderPosition;
  restore(p: LoaderPosition): void;
  readonly batchesPerEpoch: number;
}

/** What training minimises. */
export interface Objective<B extends DataBatch = DataBatch> {
  /** What one micro-batch adds to the step's divisor: scored tokens (SFT), pairs (DPO). */
  units(b: B): number;
  /**
   * Forward and backward of one micro-batch, the gradient scaled by 1 / total (the units of the whole
   * accumulated step). Returns the loss summed over the micro-batch's units, and sums of metrics over them.
   */
  step(b: B, total: number, opts: ForwardOptions): { loss: number; metrics?: Record<string, number> };
  /** Metrics over evaluation batches (the trainer logs them with an eval_ prefix). */
  evaluate(batches: Iterable<B>): Record<string, number>;
  /** Train the model with dropout (default true; DPO turns it off, as TRL's disable_dropout). */
  readonly dropout?: boolean;
}

/** Supervised fine-tuning: the mean next-token cross-entropy over the scored tokens of the step. */
export function sftObjective(model: CausalLM): Objective {
  return {
    units: scoredTokens,
    step(b, total, opts) {
      return {
        loss: scope(() => {
          const loss = model.loss(model.forwardHidden(b, opts), b.labels, b, 'sum');
          const value = loss.item();
          if (total > 0) backward(loss, Float32Array.of(1 / total));
          return value;
        }),
      };
    },
    evaluate: (batches) => evaluate(model, batches),
  };
}

export interface TrainerOptions<B extends DataBatch = DataBatch> {
  model: CausalLM;
  trainable: [string, Tensor][];
  optimizer: Optimizer;
  train: Loader<B>;
  /** Default: sftObjective(model). */
  objective?: Objective<B>;
  /** Evaluation batches (re-created for each evaluation). */
  evalBatches?: () => Iterable<B>;
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

export async function runTrainer<B extends DataBatch>(o: TrainerOptions<B>): Promise<TrainResult> {
  const params = o.trainable.map(([, p]) => p);
  const objective = o.objective ?? (sftObjective(o.model) as unknown as Objective<B>);
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
  let windowMetrics: Record<string, number> = {}, windowUnits = 0;
  let lastLoss = Number.NaN;
  let stopped: TrainResult['stoppedEarly'] = null;
  o.model.train(objective.dropout ?? true);

  while (step < o.maxSteps) {
    if (o.signal?.aborted) {
      stopped = 'interrupted';
      break;
    }
    const lr = learningRate(o.scheduler, o.learningRate, step, o.maxSteps, o.warmupSteps);
    o.optimizer.lr = lr;
    const micro: B[] = [];
    for (let i = 0; i < o.gradientAccumulationSteps; i++) micro.push(o.train.next());
    const units = micro.reduce((s, b) => s + objective.units(b), 0);
    let stepLoss = 0;
    for (const b of micro) {
      const r = objective.step(b, units, { gradientCheckpointing: o.gradientCheckpointing });
      stepLoss += r.loss;
      for (const [k, v] of Object.entries(r.metrics ?? {})) windowMetrics[k] = (windowMetrics[k] ?? 0) + v;
      tokensSeen += b.B * b.T;
      windowTokens += b.B * b.T;
    }
    windowUnits += units;
    stepLoss /= Math.max(units, 1);
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
        ...Object.fromEntries(Object.entries(windowMetrics).map(([k, v]) => [k, v / Math.max(windowUnits, 1)])),
      });
      windowLoss = 0;
      windowSteps = 0;
      windowMetrics = {};
      windowUnits = 0;
      windowTokens = 0;
      windowStart = performance.now();
    }
    if (o.evalBatches && o.evalSteps > 0 && (step % o.evalSteps === 0 || step === o.maxSteps)) {
      const was = o.model.training;
      o.model.train(false);
      const e = objective.evaluate(o.evalBatches());
      o.model.train(was);
      log.write({ step, ...Object.fromEntries(Object.entries(e).map(([k, v]) => [`eval_${k}`, v])) });
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
