/**
 * The Bradley–Terry loss of TRL's RewardTrainer (huggingface/trl reward_trainer.py `compute_loss`;
 * shared/reference/peft-spec.md §3.2) on a batch of P pairs whose 2P rewards are
 * [r_c0 .. r_c(P-1), r_r0 .. r_r(P-1)]:
 *
 *   per pair   −log σ(r_c − r_r − margin)  +  center_rewards_coefficient · (r_c + r_r)²
 *
 * (margin 0 when the data has none; the second term only with center_rewards_coefficient set, arXiv:2312.09244
 * eq. 2). TRL takes the mean of both over the pairs of a batch; here the loss is summed over the pairs and the
 * trainer divides by the pairs of the accumulated step, which is the same mean. Computed in f64 from the
 * rewards; the gradient is analytic.
 */
import { addGradOwned, needsGrad, record } from '../tensor/autograd.js';
import { floatLike, Tensor } from '../tensor/tensor.js';
import { logSigmoid, sigmoid } from './dpo-loss.js';

export interface RewardLossOptions {
  /** [P] margins of the pairs (the data's `margin` column), or null for none. */
  margins?: Float64Array | null;
  /** TRL RewardConfig center_rewards_coefficient (null: no centering term). */
  centerRewardsCoefficient?: number | null;
}

/** Sums over the pairs of what TRL logs (divide by the pairs for its means). */
export interface RewardMetricSums {
  accuracy: number;
  margin: number;
  'rewards/chosen': number;
  'rewards/rejected': number;
}

/** rewards: [2P], chosen then rejected. Returns the loss summed over the P pairs and the metric sums. */
export function rewardLoss(rewards: Tensor, o: RewardLossOptions = {}): { loss: Tensor; metrics: RewardMetricSums } {
  const n = rewards.size;
  if (n % 2 !== 0) throw new Error(`rewardLoss: ${n} rewards, expected chosen and rejected for each pair`);
  const P = n / 2;
  const margins = o.margins ?? null;
  if (margins && margins.length !== P) throw new Error(`rewardLoss: ${margins.length} margins for ${P} pairs`);
  const coef = o.centerRewardsCoefficient ?? 0;
  const r = rewards.f;
  const dChosen = new Float64Array(P), dRejected = new Float64Array(P);
  const m: RewardMetricSums = { accuracy: 0, margin: 0, 'rewards/chosen': 0, 'rewards/rejected': 0 };
  let total = 0;
  for (let p = 0; p < P; p++) {
    const c = r[p]!, j = r[P + p]!;
    const x = c - j - (margins ? margins[p]! : 0);
    const s = c + j;
    total += -logSigmoid(x) + coef * s * s;
    // d/dx −log σ(x) = −σ(−x); d/ds coef·s² = 2·coef·s
    const dx = -sigmoid(-x), ds = 2 * coef * s;
    dChosen[p] = dx + ds;
    dRejected[p] = -dx + ds;
    m.accuracy += c > j ? 1 : 0;
    m.margin += c - j;
    m['rewards/chosen'] += c;
    m['rewards/rejected'] += j;
  }
  const out = Tensor.empty([], rewards.dtype === 'f64' ? 'f64' : 'f32');
  out.f[0] = total;
  if (needsGrad(rewards)) {
    record('rewardLoss', [rewards], out, (g) => {
      const grad = floatLike(rewards.f, n);
      for (let p = 0; p < P; p++) {
        grad[p] = g[0]! * dChosen[p]!;
        grad[P + p] = g[0]! * dRejected[p]!;
      }
      addGradOwned(rewards, grad);
    });
  }
  return { loss: out, metrics: m };
}
