/**
 * The maths of TRL's PPOTrainer (huggingface/trl trl/experimental/ppo/ppo_trainer.py, the "PPOv2" trainer;
 * shared/reference/peft-spec.md §3.4), on a rollout batch of B responses of R tokens each, row-major [B, R]:
 *
 *   seqLen_i        index of the last response token before padding (TRL: first pad index − 1; −1 when the
 *                   response starts with a pad, which is EOS when pad = eos)
 *   paddingMask     t > seqLen_i            (logprobs and ref logprobs there are INVALID_LOGPROB = 1.0)
 *   paddingMaskP1   t > seqLen_i + 1        (values there are 0)
 *   logr = ref − logp;   kl = −logr (k1)  or  exp(logr) − 1 − logr (k3);   nonScore = −kl_coef · kl
 *   rewards = nonScore;  rewards[i, end_i] += score_i,  end_i = seqLen_i + 1 if < R else seqLen_i
 *   whiten_rewards: rewards = maskedWhiten(rewards, ~paddingMaskP1, shift_mean = false), 0 on paddingMaskP1
 *   GAE: δ_t = r_t + γ V_{t+1} − V_t (V_R = 0),  A_t = δ_t + γλ A_{t+1};  returns = A + V
 *   advantages = maskedWhiten(A, ~paddingMask), 0 on paddingMask
 *
 * and the loss of one micro-batch (masked means over its tokens):
 *
 *   ratio = exp(logp_new − logp_old)
 *   pg_loss = mean_{~paddingMask} max(−A·ratio, −A·clip(ratio, 1 − cliprange, 1 + cliprange))
 *   vf_loss = 0.5 · mean_{~paddingMaskP1} max((V − R)², (clip(V, V_old − cv, V_old + cv) − R)²)
 *   loss = pg_loss + vf_coef · vf_loss
 *
 * Whitening is TRL's masked_whiten: (x − mean) / sqrt(var + 1e-8), var Bessel-corrected (n / (n − 1), a float32
 * number in TRL: the quotient of two integer tensors).
 * Everything is f64; the loss's gradients with respect to the new log-probabilities and values are analytic
 * and follow PyTorch's conventions where the maximum or a clamp ties (max: half to each side; clamp: the
 * gradient passes at the bounds), so they equal autograd's to rounding (test/ppo.test.ts, tools/fixtures/ppo.py).
 */
import { addGradOwned, needsGrad, record } from '../tensor/autograd.js';
import { floatLike, Tensor } from '../tensor/tensor.js';

/** TRL's placeholder log-probability for positions after a response's end. */
export const INVALID_LOGPROB = 1.0;

export const KL_ESTIMATORS = ['k1', 'k3'] as const;
export type KlEstimator = (typeof KL_ESTIMATORS)[number];

/** mean of v over the positions where mask is 1. */
export function maskedMean(v: ArrayLike<number>, mask: Uint8Array): number {
  let s = 0, n = 0;
  for (let i = 0; i < v.length; i++) {
    if (mask[i]) {
      s += v[i]!;
      n++;
    }
  }
  return s / n;
}

/** Variance of v over the masked positions (Bessel-corrected unless unbiased is false), as TRL's masked_var. */
export function maskedVar(v: ArrayLike<number>, mask: Uint8Array, unbiased = true): number {
  const m = maskedMean(v, mask);
  let s = 0, n = 0;
  for (let i = 0; i < v.length; i++) {
    if (mask[i]) {
      s += (v[i]! - m) ** 2;
      n++;
    }
  }
  if (unbiased && n === 0) throw new Error('maskedVar: the mask is empty (a mini-batch of one row?); use a larger mini-batch');
  const variance = s / n;
  // TRL divides two integer tensors (mask sums): PyTorch's true division makes the factor float32.
  return unbiased ? variance * Math.fround(n / (n - 1)) : variance;
}

/** TRL's masked_whiten: (v − mean) / sqrt(var + 1e-8) on every position (mean and var over the mask); + mean back if !shiftMean. */
export function maskedWhiten(v: ArrayLike<number>, mask: Uint8Array, shiftMean = true): Float64Array {
  const m = maskedMean(v, mask), s = 1 / Math.sqrt(maskedVar(v, mask) + 1e-8);
  return Float64Array.from(v, (x) => (x - m) * s + (shiftMean ? 0 : m));
}

/** What a rollout produced: per-token arrays [B * R] and one score per response. */
export interface RolloutArrays {
  B: number;
  R: number;
  /** Policy log-probabilities of the sampled tokens at sampling time (logits / (temperature + 1e-7)). */
  logprobs: Float64Array;
  /** The reference model's, same temperature. */
  refLogprobs: Float64Array;
  /** The value model's prediction before each response token. */
  values: Float64Array;
  /** [B] reward model scores (missing_eos_penalty already subtracted). */
  scores: Float64Array;
  /** [B] index of each response's last token before padding (−1: none). */
  seqLens: Int32Array;
}

export interface PpoRewardOptions {
  klCoef: number;
  klEstimator: KlEstimator;
  gamma: number;
  lam: number;
  whitenRewards: boolean;
}

/** The rollout after TRL's steps 3–6: masked arrays, rewards, advantages and returns, all [B * R]. */
export interface RolloutTargets {
  B: number;
  R: number;
  logprobs: Float64Array;
  refLogprobs: Float64Array;
  values: Float64Array;
  /** 1 where t > seqLen (policy loss ignores it). */
  paddingMask: Uint8Array;
  /** 1 where t > seqLen + 1 (value loss ignores it). */
  paddingMaskP1: Uint8Array;
  kl: Float64Array;
  nonScoreReward: Float64Array;
  rewards: Float64Array;
  advantages: Float64Array;
  returns: Float64Array;
  scores: Float64Array;
}

export function rolloutTargets(r: RolloutArrays, o: PpoRewardOptions): RolloutTargets {
  const { B, R } = r;
  const N = B * R;
  if (r.logprobs.length !== N || r.refLogprobs.length !== N || r.values.length !== N || r.scores.length !== B || r.seqLens.length !== B) {
    throw new Error(`rolloutTargets: arrays do not match B ${B} x R ${R}`);
  }
  const paddingMask = new Uint8Array(N), paddingMaskP1 = new Uint8Array(N);
  const logprobs = new Float64Array(N), refLogprobs = new Float64Array(N), values = new Float64Array(N);
  const kl = new Float64Array(N), nonScoreReward = new Float64Array(N);
  let rewards: Float64Array = new Float64Array(N);
  for (let b = 0; b < B; b++) {
    const len = r.seqLens[b]!;
    for (let t = 0; t < R; t++) {
      const i = b * R + t;
      paddingMask[i] = t > len ? 1 : 0;
      paddingMaskP1[i] = t > len + 1 ? 1 : 0;
      logprobs[i] = paddingMask[i] ? INVALID_LOGPROB : r.logprobs[i]!;
      refLogprobs[i] = paddingMask[i] ? INVALID_LOGPROB : r.refLogprobs[i]!;
      values[i] = paddingMaskP1[i] ? 0 : r.values[i]!;
      const logr = refLogprobs[i]! - logprobs[i]!;
      kl[i] = o.klEstimator === 'k1' ? -logr : Math.expm1(logr) - logr;
      nonScoreReward[i] = -o.klCoef * kl[i]!;
      rewards[i] = nonScoreReward[i]!;
    }
    const end = len + 1 < R ? len + 1 : len;
    rewards[b * R + end]! += r.scores[b]!;
  }
  if (o.whitenRewards) {
    const valid = paddingMaskP1.map((m) => 1 - m);
    rewards = maskedWhiten(rewards, valid, false);
    for (let i = 0; i < N; i++) if (paddingMaskP1[i]) rewards[i] = 0;
  }
  const adv = new Float64Array(N);
  for (let b = 0; b < B; b++) {
    let last = 0;
    for (let t = R - 1; t >= 0; t--) {
      const i = b * R + t;
      const next = t < R - 1 ? values[i + 1]! : 0;
      const delta = rewards[i]! + o.gamma * next - values[i]!;
      last = delta + o.gamma * o.lam * last;
      adv[i] = last;
    }
  }
  const returns = Float64Array.from(adv, (a, i) => a + values[i]!);
  const advantages = maskedWhiten(adv, paddingMask.map((m) => 1 - m));
  for (let i = 0; i < N; i++) if (paddingMask[i]) advantages[i] = 0;
  return { B, R, logprobs, refLogprobs, values, paddingMask, paddingMaskP1, kl, nonScoreReward, rewards, advantages, returns, scores: Float64Array.from(r.scores) };
}

/** The rows of a rollout's targets that one micro-batch trains on. */
export interface PpoMicroBatch {
  rows: number;
  R: number;
  advantages: Float64Array;
  returns: Float64Array;
  oldLogprobs: Float64Array;
  oldValues: Float64Array;
  paddingMask: Uint8Array;
  paddingMaskP1: Uint8Array;
}

/** Picks rows (indices into the rollout) out of the targets. */
export function microBatch(t: RolloutTargets, rows: readonly number[]): PpoMicroBatch {
  const R = t.R;
  const take = <A extends Float64Array | Uint8Array>(a: A): A => {
    const out = new (a.constructor as { new (n: number): A })(rows.length * R);
    for (let k = 0; k < rows.length; k++) out.set(a.subarray(rows[k]! * R, (rows[k]! + 1) * R), k * R);
    return out;
  };
  return {
    rows: rows.length, R,
    advantages: take(t.advantages), returns: take(t.returns), oldLogprobs: take(t.logprobs), oldValues: take(t.values),
    paddingMask: take(t.paddingMask), paddingMaskP1: take(t.paddingMaskP1),
  };
}

export interface PpoLossOptions {
  cliprange: number;
  cliprangeValue: number;
  vfCoef: number;
}

export interface PpoLossResult {
  loss: number;
  pgLoss: number;
  vfLoss: number;
  pgClipfrac: number;
  vfClipfrac: number;
  /** 0.5 · mean((logp_new − logp_old)²) over every position (masked ones contribute 0). */
  approxkl: number;
  /** mean ratio over every position (masked ones are 1). */
  ratio: number;
  /** d loss / d new log-probabilities (0 on padding). */
  dLogprobs: Float64Array;
  /** d loss / d values (0 on padding + 1). */
  dValues: Float64Array;
}

/** d max(a, b) / d(a, b) as PyTorch's maximum: [1, 0], [0, 1], or [0.5, 0.5] on a tie. */
const maxGrad = (a: number, b: number): [number, number] => (a > b ? [1, 0] : a < b ? [0, 1] : [0.5, 0.5]);

/** The PPO loss of a micro-batch and its gradients, from raw (unmasked) new log-probabilities and values. */
export function ppoLossValues(newLogprobsRaw: ArrayLike<number>, vpredRaw: ArrayLike<number>, mb: PpoMicroBatch, o: PpoLossOptions): PpoLossResult {
  const N = mb.rows * mb.R;
  if (newLogprobsRaw.length !== N || vpredRaw.length !== N) throw new Error(`ppoLoss: ${newLogprobsRaw.length} log-probabilities and ${vpredRaw.length} values for ${N} positions`);
  let nPg = 0, nVf = 0;
  for (let i = 0; i < N; i++) {
    if (!mb.paddingMask[i]) nPg++;
    if (!mb.paddingMaskP1[i]) nVf++;
  }
  const dLogprobs = new Float64Array(N), dValues = new Float64Array(N);
  let pg = 0, vf = 0, pgClip = 0, vfClip = 0, kl = 0, ratioSum = 0;
  const lo = 1 - o.cliprange, hi = 1 + o.cliprange;
  for (let i = 0; i < N; i++) {
    const logp = mb.paddingMask[i] ? INVALID_LOGPROB : newLogprobsRaw[i]!;
    const diff = logp - mb.oldLogprobs[i]!;
    const ratio = Math.exp(diff);
    kl += diff * diff;
    ratioSum += ratio;
    if (!mb.paddingMask[i]) {
      const A = mb.advantages[i]!;
      const clipped = Math.min(Math.max(ratio, lo), hi);
      const l1 = -A * ratio, l2 = -A * clipped;
      pg += Math.max(l1, l2);
      if (l2 > l1) pgClip++;
      const [g1, g2] = maxGrad(l1, l2);
      const dClamp = ratio >= lo && ratio <= hi ? 1 : 0;
      dLogprobs[i] = ((g1 * -A + g2 * -A * dClamp) * ratio) / nPg;
    }
    if (!mb.paddingMaskP1[i]) {
      const v = vpredRaw[i]!, ret = mb.returns[i]!, old = mb.oldValues[i]!;
      const vlo = old - o.cliprangeValue, vhi = old + o.cliprangeValue;
      const vc = Math.min(Math.max(v, vlo), vhi);
      const l1 = (v - ret) ** 2, l2 = (vc - ret) ** 2;
      vf += Math.max(l1, l2);
      if (l2 > l1) vfClip++;
      const [g1, g2] = maxGrad(l1, l2);
      const dClamp = v >= vlo && v <= vhi ? 1 : 0;
      dValues[i] = (o.vfCoef * 0.5 * (g1 * 2 * (v - ret) + g2 * 2 * (vc - ret) * dClamp)) / nVf;
    }
  }
  const pgLoss = pg / nPg, vfLoss = (0.5 * vf) / nVf;
  return {
    loss: pgLoss + o.vfCoef * vfLoss, pgLoss, vfLoss, pgClipfrac: pgClip / nPg, vfClipfrac: vfClip / nVf,
    approxkl: (0.5 * kl) / N, ratio: ratioSum / N, dLogprobs, dValues,
  };
}

/**
 * The PPO loss as a scalar tensor of the new log-probabilities [rows * R] and values [rows * R] (both from
 * autograd); backward sends ppoLossValues' analytic gradients to them. Returns the metrics too.
 */
export function ppoLoss(newLogprobs: Tensor, vpred: Tensor, mb: PpoMicroBatch, o: PpoLossOptions): { loss: Tensor; metrics: PpoLossResult } {
  const r = ppoLossValues(newLogprobs.f, vpred.f, mb, o);
  const out = Tensor.empty([], newLogprobs.dtype === 'f64' ? 'f64' : 'f32');
  out.f[0] = r.loss;
  if (needsGrad(newLogprobs, vpred)) {
    record('ppoLoss', [newLogprobs, vpred], out, (g) => {
      for (const [t, d] of [[newLogprobs, r.dLogprobs], [vpred, r.dValues]] as const) {
        if (!t.requiresGrad) continue;
        const grad = floatLike(t.f, t.size);
        for (let i = 0; i < d.length; i++) grad[i] = g[0]! * d[i]!;
        addGradOwned(t, grad);
      }
    });
  }
  return { loss: out, metrics: r };
}
