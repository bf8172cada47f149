import { describe, expect, it } from 'vitest';
import { generate, pickToken } from '../src/eval/generate.js';
import { buildModel, randomWeights } from '../src/models/build.js';
import { parseModelConfig } from '../src/models/config.js';
import { Rng } from '../src/tensor/rng.js';

const llama = parseModelConfig({
  model_type: 'llama', vocab_size: 50, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
  num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-6, rope_theta: 10000, max_position_embeddings: 128,
});
const gpt2 = parseModelConfig({ model_type: 'gpt2', vocab_size: 50, n_embd: 32, n_layer: 2, n_head: 4, n_positions: 64 });

describe('generation', () => {
  for (const [name, cfg] of [['llama', llama], ['gpt2', gpt2]] as const) {
    it(`${name}: greedy decoding with the KV cache equals decoding without it`, () => {
      const model = buildModel(cfg, randomWeights(cfg, 1, 0.2));
      const prompt = [3, 14, 15, 9, 2, 6];
      const a = generate(model, prompt, { maxNewTokens: 12, useCache: true });
      const b = generate(model, prompt, { maxNewTokens: 12, useCache: false });
      expect(a.tokens).toEqual(b.tokens);
      expect(a.tokens.length).toBe(12);
      expect(new Set(a.tokens).size).toBeGreaterThan(1);
    });
  }
  it('stops at EOS and samples reproducibly with a seed', () => {
    const model = buildModel(llama, randomWeights(llama, 2, 0.2));
    const first = generate(model, [1, 2, 3], { maxNewTokens: 5 }).tokens[0]!;
    const r = generate(model, [1, 2, 3], { maxNewTokens: 5, eosTokenIds: [first] });
    expect(r).toEqual({ tokens: [first], finishReason: 'eos' });
    const s1 = generate(model, [1, 2, 3], { maxNewTokens: 8, doSample: true, temperature: 1.5, topK: 20, topP: 0.9, seed: 7 });
    const s2 = generate(model, [1, 2, 3], { maxNewTokens: 8, doSample: true, temperature: 1.5, topK: 20, topP: 0.9, seed: 7 });
    expect(s1.tokens).toEqual(s2.tokens);
  });
  it('top-k 1 equals greedy; repetition penalty demotes seen tokens', () => {
    const logits = Float32Array.from([1, 3, 2, 0.5]);
    expect(pickToken(logits, [], { doSample: true, topK: 1 }, new Rng(1))).toBe(1);
    expect(pickToken(logits, [1], { repetitionPenalty: 2 }, new Rng(1))).toBe(2);
    const counts = [0, 0, 0, 0];
    const rng = new Rng(3);
    for (let i = 0; i < 2000; i++) counts[pickToken(logits, [], { doSample: true, topP: 0.5 }, rng)]!++;
    expect(counts[1]).toBe(2000); // token 1 alone holds > 50% of the mass
  });
});
