/**
 * The DPO losses of TRL's DPOTrainer (huggingface/trl dpo_trainer.py; shared/reference/peft-spec.md §3.3) on
 * a batch of P pairs whose 2P sequences are [chosen_0 .. chosen_P-1, rejected_0 .. rejected_P-1]:
 *
 *   Δ = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)),   x = β Δ
 *   sigmoid  −log σ(x)                                   (DPO)
 *   hinge    max(0, 1 − x)                               (SLiC)
 *   ipo      (Δ̄ − 1/(2β))²   with every log-probability divided by its completion length first (IPO)
 *   robust   (−(1−ε) log σ(x) + ε log σ(−x)) / (1 − 2ε)   (ε = label_smoothing: noisy preference labels)
 *
 * The loss is returned summed over the pairs (the trainer divides by the pairs of the accumulated step, so a
 * step's loss is TRL's mean). Computed in f64 from the policy's log-probabilities; the gradient is analytic.
 */
import { addGradOwned, needsGrad, record } from '../tensor/autograd.js';
import { floatLike, Tensor } from '../tensor/tensor.js';

export const DPO_LOSS_TYPES = ['sigmoid', 'hinge', 'ipo', 'robust'] as const;
export type DpoLossType = (typeof DPO_LOSS_TYPES)[number];

export interface DpoOptions {
  beta: number;
  lossType: DpoLossType;
  /** ε of the robust loss, in [0, 0.5). */
  labelSmoothing: number;
}

/** Sums over the pairs of what TRL logs (divide by the pairs for its means). */
export interface DpoMetricSums {
  'rewards/chosen': number;
  'rewards/rejected': number;
  'rewards/accuracies': number;
  'rewards/margins': number;
  'logps/chosen': number;
  'logps/rejected': number;
}

/** log σ(x), stable for large |x|. */
export const logSigmoid = (x: number): number => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x)));
/** σ(x), stable for large |x|. */
export const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

/** Loss of one pair at x = βΔ (Δ for ipo), and its derivative with respect to Δ. */
function pairLoss(delta: number, o: DpoOptions): [number, number] {
  const { beta: b, labelSmoothing: e } = o;
  const x = b * delta;
  switch (o.lossType) {
    case 'sigmoid':
      return [-logSigmoid(x), -b * sigmoid(-x)];
    case 'hinge':
      return x < 1 ? [1 - x, -b] : [0, 0];
    case 'ipo': {
      const d = delta - 1 / (2 * b);
      return [d * d, 2 * d];
    }
    case 'robust':
      return [(-(1 - e) * logSigmoid(x) + e * logSigmoid(-x)) / (1 - 2 * e), (b * (-(1 - e) * sigmoid(-x) - e * sigmoid(x))) / (1 - 2 * e)];
  }
}

/**
 * logps: the policy's [2P] summed log-probabilities (linearSequenceLogProbs); ref: the reference's [2P];
 * completionTokens: [2P] (used by ipo). Returns the loss summed over the P pairs and the metric sums.
 */
export function dpoLoss(logps: Tensor, ref: Float64Array, completionTokens: Int32Array, o: DpoOptions): { loss: Tensor; metrics: DpoMetricSums } {
  const n = logps.size;
  if (n % 2 !== 0 || ref.length !== n || completionTokens.length !== n) throw new Error(`dpoLoss: ${n} log-probabilities, ${ref.length} reference values, ${completionTokens.length} lengths`);
  const P = n / 2;
  const per = (k: number) => (o.lossType === 'ipo' ? 1 / Math.max(1, completionTokens[k]!) : 1);
  const dDelta = new Float64Array(P);
  const m: DpoMetricSums = { 'rewards/chosen': 0, 'rewards/rejected': 0, 'rewards/accuracies': 0, 'rewards/margins': 0, 'logps/chosen': 0, 'logps/rejected': 0 };
  let total = 0;
  for (let p = 0; p < P; p++) {
    const [c, r] = [p, P + p];
    const pc = logps.f[c]! * per(c), pr = logps.f[r]! * per(r);
    const rc = ref[c]! * per(c), rr = ref[r]! * per(r);
    const [loss, d] = pairLoss(pc - rc - (pr - rr), o);
    total += loss;
    dDelta[p] = d;
    const chosenReward = o.beta * (pc - rc), rejectedReward = o.beta * (pr - rr);
    m['rewards/chosen'] += chosenReward;
    m['rewards/rejected'] += rejectedReward;
    m['rewards/accuracies'] += chosenReward > rejectedReward ? 1 : 0;
    m['rewards/margins'] += chosenReward - rejectedReward;
    m['logps/chosen'] += pc;
    m['logps/rejected'] += pr;
  }
  const out = Tensor.empty([], logps.dtype === 'f64' ? 'f64' : 'f32');
  out.f[0] = total;
  if (needsGrad(logps)) {
    record('dpoLoss', [logps], out, (g) => {
      const grad = floatLike(logps.f, n);
      for (let p = 0; p < P; p++) {
        grad[p] = g[0]! * dDelta[p]! * per(p);
        grad[P + p] = -g[0]! * dDelta[p]! * per(P + p);
      }
      addGradOwned(logps, grad);
    });
  }
  return { loss: out, metrics: m };
}
