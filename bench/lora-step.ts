/** The LoRA training step the train, qlora and profile benches time: r=8, alpha=16, all-linear, AdamW, batch 4 x 256. */
import { readFileSync } from 'node:fs';
import type { CausalLM } from '../src/models/causal-lm.js';
import { AdamW } from '../src/optim/adamw.js';
import { loraConfig } from '../src/peft/config.js';
import { applyLora } from '../src/peft/lora.js';
import { backward, scope } from '../src/tensor/autograd.js';
import type { Rng } from '../src/tensor/rng.js';
import type { Tensor } from '../src/tensor/tensor.js';

export const [BENCH_B, BENCH_T] = [4, 256];

/** A random batch of BENCH_B x BENCH_T token ids (labels = the ids). */
export function benchBatch(vocabSize: number, rng: Rng) {
  const [B, T] = [BENCH_B, BENCH_T];
  const ids = Int32Array.from({ length: B * T }, () => rng.int(vocabSize));
  return { ids, batch: { inputIds: ids, positionIds: Int32Array.from({ length: B * T }, (_, i) => i % T), segIds: null, B, T } };
}

/** Wraps the model's linears in LoRA and returns one training step (forward, backward, AdamW) and the LoRA parameters. */
export function loraTrainStep(model: CausalLM, vocabSize: number, rng: Rng): { step: () => void; params: Tensor[] } {
  const applied = applyLora(model, loraConfig({ r: 8, lora_alpha: 16, target_modules: 'all-linear' }), rng, rng);
  const params = applied.trainable.map(([, p]) => p);
  const opt = new AdamW([{ params, weightDecay: 0 }], { lr: 1e-4 });
  const { ids, batch } = benchBatch(vocabSize, rng);
  model.train(true);
  const step = () => {
    scope(() => {
      backward(model.loss(model.forwardHidden(batch), ids, batch));
      return null;
    });
    opt.step();
    opt.zeroGrad();
  };
  return { step, params };
}

/** Runs `step` once to warm up, then `steps` times; the median and the best seconds of one step. */
export function timeSteps(step: () => void, steps: number): { median: number; best: number } {
  step();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t = performance.now();
    step();
    times.push((performance.now() - t) / 1000);
  }
  times.sort((a, b) => a - b);
  return { median: times[Math.floor(times.length / 2)]!, best: times[0]! };
}

/** Peak resident set of this process (VmHWM), MB. */
export function peakRssMb(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}
