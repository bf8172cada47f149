// PPO: the maths against PyTorch (tools/fixtures/ppo.py mirrors TRL's PPOTrainer), the autograd wrapper.
import { cpSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backward, parameter } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { loadTrainConfig } from '../src/train/config.js';
import { runTraining } from '../src/train/run.js';
import { type KlEstimator, maskedWhiten, microBatch, ppoLoss, ppoLossValues, rolloutTargets } from '../src/train/ppo-loss.js';

interface Case {
  name: string;
  options: { kl_coef: number; kl_estimator: KlEstimator; gamma: number; lam: number; whiten_rewards: boolean; cliprange: number; cliprange_value: number; vf_coef: number };
  inputs: Record<'logprobs' | 'ref_logprobs' | 'values' | 'scores' | 'seq_lens' | 'new_logprobs' | 'vpred', number[]>;
  expected: Record<string, number | number[]>;
}
const FX = JSON.parse(readFileSync('test/fixtures/ppo/ppo.json', 'utf8')) as { B: number; R: number; cases: Case[] };

function close(actual: ArrayLike<number>, expected: number[] | number, tol: number, what: string) {
  const e = typeof expected === 'number' ? [expected] : expected;
  const a = typeof expected === 'number' ? [actual as unknown as number] : Array.from(actual);
  expect(a.length, what).toBe(e.length);
  for (let i = 0; i < e.length; i++) {
    if (Math.abs(a[i]! - e[i]!) > tol * Math.max(1, Math.abs(e[i]!))) throw new Error(`${what}[${i}]: ${a[i]} vs ${e[i]}`);
  }
}

describe('PPO maths (TRL PPOTrainer, PyTorch f64 fixture)', () => {
  for (const c of FX.cases) {
    const o = c.options;
    const targets = () =>
      rolloutTargets(
        {
          B: FX.B, R: FX.R,
          logprobs: Float64Array.from(c.inputs.logprobs), refLogprobs: Float64Array.from(c.inputs.ref_logprobs),
          values: Float64Array.from(c.inputs.values), scores: Float64Array.from(c.inputs.scores), seqLens: Int32Array.from(c.inputs.seq_lens),
        },
        { klCoef: o.kl_coef, klEstimator: o.kl_estimator, gamma: o.gamma, lam: o.lam, whitenRewards: o.whiten_rewards },
      );
    const lossOpts = { cliprange: o.cliprange, cliprangeValue: o.cliprange_value, vfCoef: o.vf_coef };

    it(`${c.name}: masks, kl, rewards, advantages, returns`, () => {
      const t = targets();
      close(t.paddingMask, c.expected.padding_mask as number[], 0, 'padding_mask');
      close(t.paddingMaskP1, c.expected.padding_mask_p1 as number[], 0, 'padding_mask_p1');
      for (const [k, v] of [['kl', t.kl], ['non_score_reward', t.nonScoreReward], ['rewards', t.rewards], ['advantages', t.advantages], ['returns', t.returns]] as const) {
        close(v, c.expected[k] as number[], 1e-12, k);
      }
    });

    it(`${c.name}: loss, metrics and gradients`, () => {
      const t = targets();
      const all = [...Array(FX.B).keys()];
      const r = ppoLossValues(c.inputs.new_logprobs, c.inputs.vpred, microBatch(t, all), lossOpts);
      for (const [k, v] of [['loss', r.loss], ['pg_loss', r.pgLoss], ['vf_loss', r.vfLoss], ['approxkl', r.approxkl], ['ratio_mean', r.ratio]] as const) {
        close(v as unknown as number[], c.expected[k] as number, 1e-12, k);
      }
      // TRL casts the clip indicators to float32 before the mean.
      close(r.pgClipfrac as unknown as number[], c.expected.pg_clipfrac as number, 1e-6, 'pg_clipfrac');
      close(r.vfClipfrac as unknown as number[], c.expected.vf_clipfrac as number, 1e-6, 'vf_clipfrac');
      close(r.dLogprobs, c.expected.grad_new_logprobs as number[], 1e-12, 'grad_new_logprobs');
      close(r.dValues, c.expected.grad_vpred as number[], 1e-12, 'grad_vpred');
    });

    it(`${c.name}: through autograd (f64 and f32 tensors)`, () => {
      const t = targets();
      for (const dtype of ['f64', 'f32'] as const) {
        const lp = parameter(Tensor.from(Float64Array.from(c.inputs.new_logprobs), [FX.B * FX.R], dtype), 'lp');
        const v = parameter(Tensor.from(Float64Array.from(c.inputs.vpred), [FX.B * FX.R], dtype), 'v');
        const { loss } = ppoLoss(lp, v, microBatch(t, [...Array(FX.B).keys()]), lossOpts);
        backward(loss);
        const tol = dtype === 'f64' ? 1e-12 : 1e-5;
        close(lp.grad!.f, c.expected.grad_new_logprobs as number[], tol, `${dtype} grad logprobs`);
        close(v.grad!.f, c.expected.grad_vpred as number[], tol, `${dtype} grad values`);
        close(loss.f as unknown as number[], c.expected.loss as number, dtype === 'f64' ? 1e-12 : 1e-5, `${dtype} loss`);
      }
    });
  }

  it('micro-batches pick rows; whitening keeps the mean when asked', () => {
    const w = maskedWhiten([1, 2, 3, 100], Uint8Array.of(1, 1, 1, 0), false);
    expect(w[0]! + w[1]! + w[2]!).toBeCloseTo(6, 9);
    const c = FX.cases[0]!;
    const t = rolloutTargets(
      { B: FX.B, R: FX.R, logprobs: Float64Array.from(c.inputs.logprobs), refLogprobs: Float64Array.from(c.inputs.ref_logprobs), values: Float64Array.from(c.inputs.values), scores: Float64Array.from(c.inputs.scores), seqLens: Int32Array.from(c.inputs.seq_lens) },
      { klCoef: 0.05, klEstimator: 'k1', gamma: 1, lam: 0.95, whitenRewards: false },
    );
    const mb = microBatch(t, [2, 0]);
    expect(Array.from(mb.advantages.subarray(FX.R))).toEqual(Array.from(t.advantages.subarray(0, FX.R)));
    expect(Array.from(mb.paddingMask.subarray(0, FX.R))).toEqual([1, 1, 1, 1, 1, 1]);
  });
});

describe('trainer ppo end to end (bundled model, reward model trained here)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ajuste-ppo-'));
  const rm = join(dir, 'rm');
  const ppo = (out: string, extra: string[] = []) => loadTrainConfig('examples/ppo.yaml', ['--output_dir', out, '--reward_model_path', rm, ...extra]);
  const scores = (h: Record<string, number>[]) => h.filter((r) => r['objective/scores'] !== undefined).map((r) => r['objective/scores']!);

  it('config: TRL PPOConfig defaults and errors', () => {
    const c = loadTrainConfig('examples/ppo.yaml', ['--output_dir', join(dir, 'x')]);
    expect(c.trainer).toBe('ppo');
    const d = loadTrainConfig('examples/ppo.yaml', ['--output_dir', join(dir, 'x'), '--learning_rate', '3e-6']);
    expect([d.cliprange, d.vf_coef, d.cliprange_value, d.gamma, d.lam, d.whiten_rewards, d.missing_eos_penalty, d.kl_estimator]).toEqual([0.2, 0.1, 0.2, 1, 0.95, false, null, 'k1']);
    expect(() => loadTrainConfig('examples/ppo.yaml', ['--output_dir', join(dir, 'x'), '--method', 'full'])).toThrow(/not available with trainer ppo/);
    expect(() => loadTrainConfig('examples/dpo.yaml', ['--output_dir', join(dir, 'x'), '--reward_model_path', rm])).toThrow(/trainer ppo only/);
  });

  it('raises the reward model score, saves a PEFT adapter, resumes identically', async () => {
    await runTraining(loadTrainConfig('examples/reward.yaml', ['--output_dir', rm, '--logging_steps', '20', '--save_steps', '100']));
    const out = join(dir, 'run');
    const r = await runTraining(ppo(out, ['--max_steps', '12', '--save_steps', '6']));
    const s = scores(r.history);
    expect(s).toHaveLength(12);
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    expect(mean(s.slice(-4))).toBeGreaterThan(mean(s.slice(0, 4)));
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg.peft_type).toBe('LORA');
    expect(cfg.task_type).toBe('CAUSAL_LM');
    expect(readSafetensors(join(out, 'adapter_model.safetensors')).tensors.size).toBeGreaterThan(0);
    expect(readSafetensors(join(out, 'checkpoint-6', 'value_model.safetensors')).tensors.has('score.weight')).toBe(true);

    // Resume from checkpoint-6 in a copy: the same rollouts (sampling RNG restored), the same adapter.
    const resumed = join(dir, 'resumed');
    cpSync(join(out, 'checkpoint-6'), join(resumed, 'checkpoint-6'), { recursive: true });
    const r2 = await runTraining(ppo(resumed, ['--max_steps', '12', '--save_steps', '6', '--resume_from_checkpoint', 'true']));
    expect(r2.history.map((h) => h['objective/scores'])).toEqual(r.history.map((h) => h['objective/scores']));
    expect(r2.history.map((h) => h.loss)).toEqual(r.history.map((h) => h.loss));
    const a = readSafetensors(join(out, 'adapter_model.safetensors')).tensors, b = readSafetensors(join(resumed, 'adapter_model.safetensors')).tensors;
    for (const [k, t] of a) expect(Buffer.from(b.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer)), k).toBe(true);
  }, 120_000);

  it('a full reward model folder as reward_model_path: 2 steps run and log objective/scores; the value model trains LoRA + its score head', async () => {
    const rmFull = join(dir, 'rm-full');
    await runTraining(loadTrainConfig('examples/reward.yaml', ['--output_dir', rmFull, '--method', 'full', '--max_steps', '2', '--save_steps', '100', '--logging_steps', '1']));
    expect(existsSync(join(rmFull, 'adapter_config.json'))).toBe(false);
    expect(readSafetensors(join(rmFull, 'model.safetensors')).tensors.has('score.weight')).toBe(true);
    const out = join(dir, 'ppo-full-rm');
    const info: string[] = [];
    const r = await runTraining(loadTrainConfig('examples/ppo.yaml', ['--output_dir', out, '--reward_model_path', rmFull, '--max_steps', '2']), { onInfo: (m) => info.push(m) });
    expect(r.globalStep).toBe(2);
    const s = scores(r.history);
    expect(s).toHaveLength(2);
    for (const x of s) expect(Number.isFinite(x)).toBe(true);
    expect(info.join('\n')).toMatch(/reward model and value model from .*rm-full/);
    // The estimate before the run counts the three models, at PPO's row length (longest prompt + response_length 12).
    const est = info.find((m) => m.startsWith('memory estimate'))!;
    expect(est).toMatch(/^memory estimate \(ppo: policy \+ reward model \+ value model\): [\d.]+ MB \(weights [\d.]+ = policy [\d.]+ \+ reward [\d.]+ \+ value [\d.]+, /);
    expect(est).toMatch(/rollout [\d.]+ at 8 x \d+, update [\d.]+ at 4 x \d+; not counted: the sampling KV cache and rollout buffers\)$/);
    expect(est).not.toMatch(/x 1024/);
    const value = readSafetensors(join(out, 'checkpoint-2', 'value_model.safetensors')).tensors;
    expect(value.has('score.weight')).toBe(true);
    expect([...value.keys()].some((k) => k.includes('lora_A'))).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).task_type).toBe('CAUSAL_LM');
  }, 60_000);

  it('method qlora: the policy is a 4-bit base with LoRA; 2 steps run and the adapter is saved', async () => {
    const rmLora = join(dir, 'rm-lora');
    await runTraining(loadTrainConfig('examples/reward.yaml', ['--output_dir', rmLora, '--max_steps', '2', '--save_steps', '100']));
    const out = join(dir, 'ppo-qlora');
    const info: string[] = [];
    const c = loadTrainConfig('examples/ppo.yaml', ['--output_dir', out, '--reward_model_path', rmLora, '--max_steps', '2', '--method', 'qlora']);
    expect([c.method, c.load_in_4bit]).toEqual(['qlora', true]);
    const r = await runTraining(c, { onInfo: (m) => info.push(m) });
    expect(r.globalStep).toBe(2);
    expect(scores(r.history)).toHaveLength(2);
    expect(info.join('\n')).toMatch(/quantized 28 linear layers to nf4/);
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect([cfg.peft_type, cfg.task_type]).toEqual(['LORA', 'CAUSAL_LM']);
    const adapter = readSafetensors(join(out, 'adapter_model.safetensors')).tensors;
    expect(adapter.size).toBeGreaterThan(0);
    expect([...adapter.keys()].every((k) => k.includes('lora_'))).toBe(true);
    // LoRA B starts at zero: trained, it is not.
    const b = [...adapter.entries()].find(([k]) => k.includes('lora_B'))![1];
    expect(Array.from(b.data as Float32Array).some((x) => x !== 0)).toBe(true);
  }, 60_000);
});
