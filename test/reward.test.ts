// Reward modelling (src/models/reward.ts, src/train/reward.ts, reward-loss.ts): rewards, losses and every LoRA and
// score-head gradient against PyTorch (tools/fixtures/reward.py on llama-gqa), transformers' pooling rule, the
// loss gradient by finite differences, the checkpoint loader, and end-to-end runs of `trainer: reward` (the
// preference is learned; the PEFT SEQ_CLS adapter and the full AutoModelForSequenceClassification folder are
// written and load back with the same rewards; resume gives the uninterrupted run; bad input is refused).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TokenizedExample } from '../src/data/dataset.js';
import { PairLoader } from '../src/data/pairs.js';
import { parseRecords } from '../src/data/records.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { buildModel } from '../src/models/build.js';
import { loadModelFolder, readModelConfig } from '../src/models/load.js';
import { pooledRows, RewardModel, rewardPadId } from '../src/models/reward.js';
import { adapterConfigJson, loraConfig, parseAdapterConfig } from '../src/peft/config.js';
import { saveMergedModel } from '../src/peft/merge.js';
import { applyLora, peftKey } from '../src/peft/lora.js';
import { loadAdapter, loadRewardAdapter } from '../src/peft/adapter-io.js';
import { backward, noGrad, parameter, scope } from '../src/tensor/autograd.js';
import { Rng } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { loadTrainConfig } from '../src/train/config.js';
import { evaluateRewardFile, preferenceRecords, runReward, tokenizeRewardPairs } from '../src/train/reward.js';
import { rewardLoss } from '../src/train/reward-loss.js';
import { runTraining } from '../src/train/run.js';
import { makeTinyModelDir } from './e2e-helpers.js';
import { expectClose } from './helpers.js';

const FX = 'test/fixtures/reward';
const meta = JSON.parse(readFileSync(`${FX}/meta.json`, 'utf8'));
const ints = (t: { data: unknown }) => Int32Array.from(Array.from(t.data as BigInt64Array, Number));
const SCORE_KEY = 'base_model.model.score.weight';

/** The fixture's rows as a PairLoader batch (right-padded with the pad id, as training batches them). */
function fixtureBatch(fx: Map<string, { data: unknown; shape: number[] }>) {
  const ids = ints(fx.get('input_ids')!);
  const lengths = ints(fx.get('lengths')!);
  const T = meta.T as number;
  const row = (k: number): TokenizedExample => {
    const inputIds = ids.slice(k * T, k * T + lengths[k]!);
    return { inputIds, labels: Int32Array.from(inputIds), truncated: false };
  };
  const P = meta.P as number;
  const pairs = Array.from({ length: P }, (_, p) => ({ chosen: row(p), rejected: row(P + p) }));
  const b = new PairLoader(pairs, { batchSize: P, maxLength: 64, padId: meta.pad_token_id, shuffle: false }).batch([0, 1, 2]);
  expect(Array.from(b.inputIds)).toEqual(Array.from(ids));
  return b;
}

describe('reward model parity with PyTorch (LlamaForSequenceClassification + PEFT SEQ_CLS LoRA, TRL loss)', () => {
  for (const variant of ['plain', 'center', 'margin'] as const) {
    it(`${variant}: pooled tokens, rewards, loss and the gradient of every LoRA tensor and of score.weight within 1e-5`, () => {
      const fx = readSafetensors(`${FX}/pairs.safetensors`, { copy: true }).tensors;
      const { model } = loadModelFolder(meta.model);
      const rm = RewardModel.attach(model, { padId: meta.pad_token_id, weight: fx.get(SCORE_KEY)! });
      const applied = applyLora(model, loraConfig({ r: meta.r, lora_alpha: meta.lora_alpha, target_modules: meta.target_modules, task_type: 'SEQ_CLS' }), new Rng(0), new Rng(0));
      expect(applied.targets.length).toBe(14);
      for (const [name, p] of applied.trainable) p.f.set(fx.get(peftKey(name))!.data as Float32Array);
      const b = fixtureBatch(fx);
      const pooled = pooledRows(b.inputIds, b.B, b.T, meta.pad_token_id);
      expect(Array.from(pooled, (v, k) => v - k * b.T)).toEqual(Array.from(ints(fx.get('pooled')!)));
      const want = readSafetensors(`${FX}/${variant}.safetensors`, { copy: true }).tensors;
      const loss = scope(() => {
        const rewards = rm.rewards(b);
        expectClose(rewards.f, fx.get('rewards')!.data as Float32Array, 1e-5, 'rewards');
        const margins = variant === 'margin' ? Float64Array.from(meta.margins as number[]) : null;
        const r = rewardLoss(rewards, { margins, centerRewardsCoefficient: variant === 'center' ? meta.center_rewards_coefficient : null });
        backward(r.loss, Float32Array.of(1 / b.pairs));
        return r.loss.item() / b.pairs;
      });
      const wantLoss = (want.get('loss')!.data as Float32Array)[0]!;
      expect(Math.abs(loss - wantLoss) / Math.abs(wantLoss)).toBeLessThan(1e-5);
      let checked = 0;
      for (const [name, p] of applied.trainable) {
        const g = want.get(`grad.${peftKey(name)}`)!.data as Float32Array;
        const scale = Math.max(...Array.from(g, Math.abs));
        const err = Math.max(...Array.from(p.grad!.f, (v, i) => Math.abs(v - g[i]!))) / scale;
        expect(err, `grad ${peftKey(name)}`).toBeLessThan(1e-5);
        checked++;
      }
      expect(checked).toBe(29);
      expect(applied.trainable.some(([n]) => n === 'score.weight')).toBe(true);
    });
  }
});

describe('pooling (transformers: the rightmost token that is not the pad id)', () => {
  it('a trailing pad-id token (EOS = pad) is skipped; a pad id inside is not; an all-pad row reads position 0', () => {
    const ids = Int32Array.from([5, 6, 2, 2, /**/ 5, 2, 7, 2, /**/ 2, 2, 2, 2, /**/ 5, 6, 7, 8]);
    expect(Array.from(pooledRows(ids, 4, 4, 2))).toEqual([1, 4 + 2, 8 + 0, 12 + 3]);
    expect(Array.from(pooledRows(Int32Array.of(2, 5, 2), 1, 3, null))).toEqual([2]);
    expect(() => pooledRows(ids, 4, 4, null)).toThrow(/without a pad token id/);
    expect(rewardPadId({ padId: null, eosId: 9 })).toBe(9);
    expect(() => rewardPadId({ padId: null, eosId: null })).toThrow(/neither pad_token nor eos_token/);
  });
});

describe('reward loss', () => {
  it('gradient by finite differences, with margins and the centering term (f64); metrics as TRL logs them', () => {
    const rng = new Rng(3);
    const x = Float64Array.from({ length: 8 }, () => 3 * (rng.uniform() - 0.5));
    const margins = Float64Array.of(0.3, -1, 0, 2);
    const o = { margins, centerRewardsCoefficient: 0.2 };
    const t = parameter(Tensor.from(Float64Array.from(x), [8]));
    backward(rewardLoss(t, o).loss);
    for (let i = 0; i < 8; i++) {
      const at = (d: number) => {
        const y = Float64Array.from(x);
        y[i]! += d;
        return noGrad(() => rewardLoss(Tensor.from(y, [8]), o).loss.item());
      };
      const fd = (at(1e-6) - at(-1e-6)) / 2e-6;
      expect(Math.abs(t.grad!.f[i]! - fd), `d/dr[${i}]`).toBeLessThan(1e-7 * (1 + Math.abs(fd)));
    }
    const r = rewardLoss(Tensor.from(Float64Array.of(1, 0, 0, 0), [4]));
    expect(r.loss.item()).toBeCloseTo(-Math.log(1 / (1 + Math.exp(-1))) + Math.log(2), 12);
    expect(r.metrics).toEqual({ accuracy: 1, margin: 1, 'rewards/chosen': 1, 'rewards/rejected': 0 });
    expect(() => rewardLoss(Tensor.from(Float64Array.of(1, 0, 0), [3]))).toThrow(/3 rewards/);
  });
});

describe('loading reward checkpoints', () => {
  const cfg = readModelConfig('test/fixtures/models/llama-gqa');
  const weights = () => readSafetensors('test/fixtures/models/llama-gqa/model.safetensors', { copy: true }).tensors;
  it('score.weight is accepted (and no lm_head: a headless model that refuses token logits); other strays are still refused', () => {
    const w = weights();
    w.set('score.weight', { dtype: 'F32', shape: [1, 64], data: new Float32Array(64) });
    expect(buildModel(cfg, w).headless).toBe(false);
    w.delete('lm_head.weight');
    const m = buildModel(cfg, w);
    expect(m.headless).toBe(true);
    expect(() => m.lmHead()).toThrow(/reward model/);
    w.set('classifier.weight', { dtype: 'F32', shape: [1, 64], data: new Float32Array(64) });
    expect(() => buildModel(cfg, w)).toThrow(/tensors this architecture does not use: classifier.weight/);
    const noHead = weights();
    noHead.delete('lm_head.weight');
    expect(() => buildModel(cfg, noHead)).toThrow(/no tensor 'lm_head.weight'/);
  });
  it('GPT-2: saved as GPT2ForSequenceClassification (transformer.* + score.weight) and read back with the same rewards', () => {
    const { model } = loadModelFolder('test/fixtures/models/gpt2');
    const rm = RewardModel.attach(model, { padId: 0, seed: 1 });
    const b = { inputIds: Int32Array.of(5, 6, 7, 0, 8, 9, 0, 0), positionIds: Int32Array.of(0, 1, 2, 3, 0, 1, 0, 0), segIds: null, B: 2, T: 4 };
    const want = noGrad(() => Array.from(rm.rewards(b).f));
    const out = mkdtempSync(join(tmpdir(), 'ajuste-gpt2-reward-'));
    saveMergedModel(model, 'test/fixtures/models/gpt2', out, { reward: { padTokenId: 0 } });
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toMatchObject({ architectures: ['GPT2ForSequenceClassification'], pad_token_id: 0 });
    const l = loadModelFolder(out);
    expect([...readSafetensors(join(out, 'model.safetensors')).tensors.keys()].every((k) => k.startsWith('transformer.') || k === 'score.weight')).toBe(true);
    expect(noGrad(() => Array.from(RewardModel.attach(l.model, { padId: 0, weight: l.scoreWeight }).rewards(b).f))).toEqual(want);
  });
  it("SEQ_CLS adapter_config.json: modules_to_save as PEFT extends it, read back without PEFT's additions", () => {
    const c = loraConfig({ task_type: 'SEQ_CLS', modules_to_save: ['embed_tokens'] });
    const json = JSON.parse(adapterConfigJson(c, { baseModel: null, targetModules: ['q_proj'] }));
    expect(json).toMatchObject({ task_type: 'SEQ_CLS', modules_to_save: ['embed_tokens', 'classifier', 'score'] });
    expect(parseAdapterConfig(json, 'a.json')).toMatchObject({ task_type: 'SEQ_CLS', modules_to_save: ['embed_tokens'] });
    expect(parseAdapterConfig({ ...json, modules_to_save: ['score', 'classifier', 'score'] }, 'a.json').modules_to_save).toBeNull();
    expect(parseAdapterConfig({ ...json, task_type: null }, 'a.json').task_type).toBe('CAUSAL_LM');
  });
  it('a classifier with several labels is not a reward model', () => {
    const m = buildModel(cfg, weights());
    expect(() => RewardModel.attach(m, { padId: 0, weight: { dtype: 'F32', shape: [3, 64], data: new Float32Array(192) }, source: 'x' })).toThrow(/3 rows: a classifier with 3 labels/);
  });
});

describe('reward data as TRL prepares it', () => {
  it('prompt + side, EOS appended to standard sides; pairs with a side longer than max_length left out, not truncated', () => {
    const tok = Tokenizer.fromFolder('models/ajuste-base-2m');
    const records = preferenceRecords(parseRecords([{ prompt: 'Q: sky? A:', chosen: ' blue', rejected: ' green' }, { prompt: 'Q: sea? A:', chosen: ' wet', rejected: ' a very long and winding answer about water' }], 'p.jsonl').records);
    const all = tokenizeRewardPairs(records, tok, 1024);
    expect(all.filtered).toBe(0);
    expect(Array.from(all.pairs[0]!.chosen.inputIds)).toEqual(tok.encode('Q: sky? A: blue<|endoftext|>'));
    const n = all.pairs[1]!.rejected.inputIds.length;
    const cut = tokenizeRewardPairs(records, tok, n - 1);
    expect([cut.pairs.length, cut.filtered]).toEqual([1, 1]);
    expect(cut.pairs[0]!.chosen.truncated).toBe(false);
    expect(tokenizeRewardPairs(records, tok, n).filtered).toBe(0);
  });
});

describe('preference records with a margin', () => {
  it('a numeric margin (also from a CSV cell) is kept; anything else is an error naming file:line', () => {
    const r = parseRecords([{ chosen: 'a', rejected: 'b', margin: 0.5 }, { prompt: 'p', chosen: 'a', rejected: 'b', margin: '2' }], 'm.jsonl').records;
    expect(r.map((x) => (x.kind === 'preference' ? x.margin : null))).toEqual([0.5, 2]);
    expect(() => parseRecords([{ chosen: 'a', rejected: 'b' }, { chosen: 'a', rejected: 'b', margin: 'big' }], 'm.jsonl')).toThrow(/m.jsonl:2: "margin" must be a finite number, got "big"/);
  });
});

describe('trainer: reward end to end (bundled model, examples/preference.jsonl)', () => {
  const work = mkdtempSync(join(tmpdir(), 'ajuste-reward-'));
  const cfg = (out: string, extra: string[] = []) => loadTrainConfig('examples/reward.yaml', ['--output_dir', out, '--logging_steps', '1', ...extra]);

  it('learns the preference (accuracy and margin up, loss down) and saves a PEFT SEQ_CLS adapter with its score head', async () => {
    const out = join(work, 'run');
    const r = await runTraining(cfg(out, ['--eval_dataset_path', 'examples/preference.jsonl', '--eval_strategy', 'steps', '--eval_steps', '20']));
    const rows = r.history.filter((h) => h.loss !== undefined);
    expect(rows.length).toBe(20);
    const first = rows.slice(0, 5), last = rows.slice(-5);
    const avg = (xs: typeof rows, k: string) => xs.reduce((s, h) => s + h[k]!, 0) / xs.length;
    expect(avg(first, 'loss')).toBeGreaterThan(0.6);
    expect(avg(last, 'loss')).toBeLessThan(avg(first, 'loss') - 0.2);
    expect(avg(last, 'accuracy')).toBeGreaterThan(avg(first, 'accuracy') + 0.1);
    expect(avg(last, 'accuracy')).toBeGreaterThanOrEqual(0.8);
    expect(avg(last, 'margin')).toBeGreaterThan(1);
    expect(Object.keys(rows[0]!)).toEqual(expect.arrayContaining(['accuracy', 'margin', 'rewards/chosen', 'rewards/rejected']));

    // PEFT's layout: task_type SEQ_CLS, modules_to_save as PeftModelForSequenceClassification extends it, the head
    // under its modules_to_save key.
    const adapter = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(adapter).toMatchObject({ peft_type: 'LORA', task_type: 'SEQ_CLS', modules_to_save: ['classifier', 'score'], r: 16 });
    const t = readSafetensors(join(out, 'adapter_model.safetensors'), { copy: true }).tensors;
    expect(t.get(SCORE_KEY)).toMatchObject({ dtype: 'F32', shape: [1, 192] });
    expect([...t.keys()].filter((k) => k.includes('.lora_')).length).toBe(4 * 7 * 2);
    expect(t.size).toBe(4 * 7 * 2 + 1);

    // Loaded back (base + adapter), the model scores the pairs as the run's last evaluation did.
    const final = r.history.filter((h) => h.eval_loss !== undefined).at(-1)!;
    expect(final).toMatchObject({ step: 20, eval_pairs: 20 });
    const { model } = loadModelFolder('models/ajuste-base-2m');
    const tok = Tokenizer.fromFolder('models/ajuste-base-2m');
    const { reward } = loadRewardAdapter(out, model, rewardPadId(tok));
    const e = evaluateRewardFile(reward, tok, 'examples/preference.jsonl', { maxLength: 128, batchSize: 8 });
    expect(e.pairs).toBe(20);
    expect(e.loss).toBeCloseTo(final.eval_loss!, 5);
    expect(e.accuracy).toBe(final.eval_accuracy);
    expect(e.margin).toBeCloseTo(final.eval_margin!, 5);
    // A reward adapter does not generate.
    expect(() => loadAdapter(out, loadModelFolder('models/ajuste-base-2m').model)).toThrow(/reward model's adapter \(task_type SEQ_CLS/);
  });

  it('resumed from its step-10 checkpoint, a run ends with the adapter (and head) of the uninterrupted one', async () => {
    const straight = join(work, 'straight'), resumed = join(work, 'resumed');
    const ev = ['--eval_split', '0.2', '--eval_strategy', 'steps', '--eval_steps', '10'];
    await runTraining(cfg(straight, ev));
    await runTraining(cfg(resumed, [...ev, '--max_steps', '10']));
    const r = await runTraining(cfg(resumed, [...ev, '--resume_from_checkpoint', join(resumed, 'checkpoint-10')]));
    const a = readSafetensors(join(straight, 'adapter_model.safetensors'), { copy: true }).tensors;
    const b = readSafetensors(join(resumed, 'adapter_model.safetensors'), { copy: true }).tensors;
    expect(a.has(SCORE_KEY)).toBe(true);
    for (const [k, t] of a) expect(Array.from(b.get(k)!.data as Float32Array), k).toEqual(Array.from(t.data as Float32Array));
    const evals = r.history.filter((h) => h.eval_loss !== undefined);
    expect(evals.at(-1)).toMatchObject({ step: 20, eval_pairs: 4 });
  });

  it('refuses SFT records, packing, PEFT methods without a head, and misplaced keys, saying where', async () => {
    await expect(runTraining(cfg(join(work, 'bad'), ['--dataset_path', 'examples/chat.jsonl']))).rejects.toThrow(
      /examples\/chat.jsonl:1: trainer reward needs preference records \{prompt\?, chosen, rejected\}, this one is a messages record/,
    );
    expect(() => cfg(join(work, 'bad2'), ['--packing', 'true'])).toThrow(/override --packing: packing does not apply to trainer reward/);
    expect(() => cfg(join(work, 'bad3'), ['--method', 'prompt_tuning', '--prompt_tuning.num_virtual_tokens', '4'])).toThrow(/method prompt_tuning is not available with trainer reward/);
    expect(() => cfg(join(work, 'bad4'), ['--lora.task_type', 'CAUSAL_LM'])).toThrow(/lora.task_type must be SEQ_CLS/);
    const base = ['--model_name_or_path', 'm', '--dataset_path', 'd.jsonl', '--output_dir', 'o'];
    expect(() => loadTrainConfig(null, [...base, '--center_rewards_coefficient', '0.01'])).toThrow(/center_rewards_coefficient is used by trainer reward only/);
    expect(() => loadTrainConfig(null, [...base, '--lora.task_type', 'SEQ_CLS'])).toThrow(/SEQ_CLS is for reward models/);
    const c = loadTrainConfig(null, [...base, '--trainer', 'reward']);
    expect([c.learning_rate, c.lora.task_type, c.center_rewards_coefficient]).toEqual([1e-4, 'SEQ_CLS', null]);
    expect(cfg(join(work, 'lr')).learning_rate).toBe(2e-3);
    const mixed = join(work, 'mixed.jsonl');
    writeFileSync(mixed, `${JSON.stringify({ chosen: 'a', rejected: 'b', margin: 1 })}\n${JSON.stringify({ chosen: 'c', rejected: 'd' })}\n`);
    await expect(runTraining(cfg(join(work, 'bad5'), ['--dataset_path', mixed]))).rejects.toThrow(/mixed.jsonl:2: this record has no "margin" but 1 of 2 records have one/);
  });
});

describe('trainer: reward, full fine-tuning (tiny f32 model)', () => {
  it('writes an AutoModelForSequenceClassification folder (config, model.* + score.weight, no lm_head) that reloads with the same rewards', async () => {
    const modelDir = makeTinyModelDir({ seed: 4 });
    const work = mkdtempSync(join(tmpdir(), 'ajuste-reward-full-'));
    const data = join(work, 'pairs.jsonl');
    const pairs = [
      ['Sky?', ' blue', ' green'], ['Grass?', ' green', ' pink'], ['Snow?', ' white', ' black'], ['Sun?', ' hot', ' cold'],
      ['Fire?', ' hot', ' wet'], ['Ice?', ' cold', ' warm'], ['Night?', ' dark', ' bright'], ['Sea?', ' wet', ' dry'],
    ];
    // Standard records with a margin: EOS is appended to each side (and, EOS being the pad id, read before it).
    writeFileSync(data, pairs.map(([p, c, r], i) => JSON.stringify({ prompt: `Q: ${p}\nA:`, chosen: c, rejected: r, margin: i % 2 ? 0.5 : 0 })).join('\n') + '\n');
    const out = join(work, 'out');
    const base = {
      model_name_or_path: modelDir, method: 'full', dataset_path: data, eval_dataset_path: data, eval_strategy: 'steps' as const, eval_steps: 12,
      max_length: 64, output_dir: out, num_train_epochs: 1, max_steps: 12, per_device_train_batch_size: 4, per_device_eval_batch_size: 3,
      gradient_accumulation_steps: 1, learning_rate: 1e-3, weight_decay: 0, max_grad_norm: 1, lr_scheduler_type: 'constant' as const,
      warmup_ratio: 0, warmup_steps: 0, optim: 'adamw_torch', logging_steps: 1, save_steps: 100, seed: 3,
    };
    const r = await runReward(base);
    expect([r.filtered, r.trainExamples]).toEqual([0, 8]);
    const rows = r.history.filter((h) => h.loss !== undefined);
    expect(rows.at(-1)!.loss!).toBeLessThan(rows[0]!.loss!);

    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(config).toMatchObject({ architectures: ['LlamaForSequenceClassification'], id2label: { '0': 'LABEL_0' }, label2id: { LABEL_0: 0 }, pad_token_id: 265, model_type: 'llama' });
    expect(config.num_labels).toBeUndefined();
    const t = readSafetensors(join(out, 'model.safetensors'), { copy: true }).tensors;
    expect(t.get('score.weight')).toMatchObject({ dtype: 'F32', shape: [1, 64] });
    expect(t.has('lm_head.weight')).toBe(false);
    expect([...t.keys()].every((k) => k.startsWith('model.') || k === 'score.weight')).toBe(true);

    // Reloaded, it scores the pairs exactly as the trained model did at its last evaluation.
    const final = r.history.filter((h) => h.eval_loss !== undefined).at(-1)!;
    const loaded = loadModelFolder(out);
    expect(loaded.model.headless).toBe(true);
    const tok = Tokenizer.fromFolder(out);
    const rm = RewardModel.attach(loaded.model, { padId: rewardPadId(tok), weight: loaded.scoreWeight });
    const e = evaluateRewardFile(rm, tok, data, { maxLength: 64, batchSize: 3 });
    expect(e.loss).toBeCloseTo(final.eval_loss!, 6);
    expect(e.margin).toBeCloseTo(final.eval_margin!, 6);
    expect(e['rewards/chosen']).toBeCloseTo(final['eval_rewards/chosen']!, 6);

    // Training goes on from the saved reward model: its head is read, not made anew.
    const info: string[] = [];
    await runReward({ ...base, model_name_or_path: out, output_dir: join(work, 'again'), max_steps: 1, eval_strategy: 'no' }, { onInfo: (m) => info.push(m) });
    expect(info).toContain(`score head read from ${out}`);
  });
});
