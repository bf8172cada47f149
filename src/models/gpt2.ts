/**
 * GPT-2 as transformers' modeling_gpt2.py: learned positions, pre-LayerNorm blocks with biases,
 * fused c_attn (q|k|v), GELU (tanh) MLP, final ln_f, lm_head tied to wte.
 * transformers stores GPT-2's Conv1D weights as [in, out]; ajuste keeps Linear's [out, in] in memory
 * and transposes when loading and saving (see models/load.ts), so LoRA shapes match PEFT's.
 */
import { Embedding, LayerNorm, type LinearLike } from '../nn/layers.js';
import { Module, ModuleDict, ModuleList } from '../nn/module.js';
import { geluErf, geluTanh } from '../nn/ops/activations.js';
import { attention, attentionCached } from '../nn/ops/attention.js';
import { noGrad, checkpoint } from '../tensor/autograd.js';
import { add, embedding } from '../tensor/ops.js';
import { Tensor } from '../tensor/tensor.js';
import { splitLast } from '../tensor/split.js';
import { type Batch, CausalLM, type ForwardOptions, type KvCache, type PromptHook } from './causal-lm.js';
import type { ModelConfig } from './config.js';
import type { LinearFactory, WeightGetter } from './llama.js';

class Gpt2Block extends Module {
  constructor(
    private readonly c: ModelConfig,
    weight: WeightGetter,
    makeLinear: LinearFactory,
    p: string,
  ) {
    super();
    const C = c.hidden;
    this.addModule('ln_1', new LayerNorm(weight(`${p}.ln_1.weight`, [C]), weight(`${p}.ln_1.bias`, [C]), c.normEps));
    this.addModule('attn', new ModuleDict({
      c_attn: makeLinear(`${p}.attn.c_attn`, 3 * C, C, true),
      c_proj: makeLinear(`${p}.attn.c_proj`, C, C, true),
    }));
    this.addModule('ln_2', new LayerNorm(weight(`${p}.ln_2.weight`, [C]), weight(`${p}.ln_2.bias`, [C]), c.normEps));
    this.addModule('mlp', new ModuleDict({
      c_fc: makeLinear(`${p}.mlp.c_fc`, c.intermediate, C, true),
      c_proj: makeLinear(`${p}.mlp.c_proj`, C, c.intermediate, true),
    }));
  }

  private lin(path: string): LinearLike {
    return this.getModule(path) as unknown as LinearLike;
  }

  private mlp(x: Tensor): Tensor {
    const h = this.lin('mlp.c_fc').forward(x);
    return this.lin('mlp.c_proj').forward(this.c.activation === 'gelu' ? geluErf(h) : geluTanh(h));
  }

  forward(h: Tensor, batch: Batch, hook: PromptHook | null = null, layer = 0): Tensor {
    const { B, T } = batch;
    const { heads: H, headDim: D, hidden: C } = this.c;
    const x = this.child<LayerNorm>('ln_1').forward(h);
    const [q, k, v] = splitLast(this.lin('attn.c_attn').forward(x), [C, C, C]);
    const shape = { B, T, H, Hkv: H, D, segIds: batch.segIds };
    const [q4, k4, v4] = [q!.reshape([B, T, H, D]), k!.reshape([B, T, H, D]), v!.reshape([B, T, H, D])];
    const a = hook?.attention ? hook.attention(layer, q4, k4, v4, shape) : attention(q4, k4, v4, shape);
    h = add(h, this.lin('attn.c_proj').forward(a.reshape([B, T, C])));
    return add(h, this.mlp(this.child<LayerNorm>('ln_2').forward(h)));
  }

  forwardCached(h: Tensor, cache: KvCache, layer: number): Tensor {
    const n = h.dim(1);
    const { heads: H, headDim: D, hidden: C } = this.c;
    const x = this.child<LayerNorm>('ln_1').forward(h);
    const [q, k, v] = splitLast(this.lin('attn.c_attn').forward(x), [C, C, C]);
    const off = cache.length * C;
    cache.keys[layer]!.set(k!.f, off);
    cache.values[layer]!.set(v!.f, off);
    const out = Tensor.empty([1, n, C]);
    attentionCached(q!.f as Float32Array, cache.keys[layer]!, cache.values[layer]!, cache.length, n, H, H, D, out.f as Float32Array);
    h = add(h, this.lin('attn.c_proj').forward(out));
    return add(h, this.mlp(this.child<LayerNorm>('ln_2').forward(h)));
  }
}

class Gpt2Model extends Module {
  constructor(c: ModelConfig, weight: WeightGetter, makeLinear: LinearFactory) {
    super();
    this.addModule('wte', new Embedding(weight('transformer.wte.weight', [c.vocabSize, c.hidden])));
    this.addModule('wpe', new Embedding(weight('transformer.wpe.weight', [c.maxPositions, c.hidden])));
    this.addModule('h', new ModuleList(Array.from({ length: c.layers }, (_, i) => new Gpt2Block(c, weight, makeLinear, `transformer.h.${i}`))));
    this.addModule('ln_f', new LayerNorm(weight('transformer.ln_f.weight', [c.hidden]), weight('transformer.ln_f.bias', [c.hidden]), c.normEps));
  }
}

export class Gpt2LMHeadModel extends CausalLM {
  constructor(config: ModelConfig, weight: WeightGetter, makeLinear: LinearFactory) {
    super(config);
    this.addModule('transformer', new Gpt2Model(config, weight, makeLinear));
    if (!config.tieEmbeddings) this.addModule('lm_head', makeLinear('lm_head', config.vocabSize, config.hidden, false));
  }

  private get tr(): Gpt2Model {
    return this.child<Gpt2Model>('transformer');
  }

  lmHeadWeight(): Tensor {
    if (this.config.tieEmbeddings) return (this.tr.getModule('wte') as Embedding).weight;
    return (this.child<Module>('lm_head') as unknown as { weight: Tensor }).weight;
  }

  private embed(ids: Int32Array, positions: Int32Array, shape: number[]): Tensor {
    const wte = this.tr.getModule('wte') as Embedding;
    const wpe = this.tr.getModule('wpe') as Embedding;
    for (const p of positions) {
      if (p >= this.config.maxPositions) throw new Error(`position ${p} exceeds GPT-2's n_positions ${this.config.maxPositions}`);
    }
    return add(wte.forward(ids, shape), embedding(positions, wpe.weight, shape));
  }

  forwardHidden(batch: Batch, opts: ForwardOptions = {}): Tensor {
    const hook = this.promptHook;
    let h: Tensor;
    let run = batch;
    if (hook) {
      // Virtual tokens go in front of the token embeddings; position embeddings are added after (as transformers does for inputs_embeds).
      ({ h, batch: run } = hook.begin((this.tr.getModule('wte') as Embedding).forward(batch.inputIds, [batch.B, batch.T]), batch));
      for (const p of run.positionIds) {
        if (p >= this.config.maxPositions) throw new Error(`position ${p} exceeds GPT-2's n_positions ${this.config.maxPositions}`);
      }
      h = add(h, embedding(run.positionIds, (this.tr.getModule('wpe') as Embedding).weight, [run.B, run.T]));
    } else h = this.embed(batch.inputIds, batch.positionIds, [batch.B, batch.T]);
    const blocks = this.tr.getModule('h') as ModuleList<Gpt2Block>;
    for (let i = 0; i < this.config.layers; i++) {
      const block = blocks.at(i);
      h = opts.gradientCheckpointing ? checkpoint(h, (x) => block.forward(x, run, hook, i)) : block.forward(h, run, hook, i);
    }
    const out = (this.tr.getModule('ln_f') as LayerNorm).forward(h);
    return hook ? hook.end(out, batch) : out;
  }

  forwardCached(ids: Int32Array, cache: KvCache): Tensor {
    return noGrad(() => {
      if (cache.length === 0 && this.promptHook?.prefill) {
        const pre = this.promptHook.prefill(cache);
        if (pre) this.runCached(pre, null, cache);
      }
      return this.runCached(null, ids, cache);
    });
  }

  /** Runs token ids, or [1, n, C] token embeddings (prompt tuning), through the blocks, appending to the cache. */
  private runCached(embeds: Tensor | null, ids: Int32Array | null, cache: KvCache): Tensor {
    const n = embeds ? embeds.dim(1) : ids!.length;
    if (cache.length + n > cache.capacity) throw new Error(`KV cache full (${cache.capacity} tokens)`);
    const positions = Int32Array.from({ length: n }, (_, i) => cache.length + i);
    let h = embeds ? add(embeds, embedding(positions, (this.tr.getModule('wpe') as Embedding).weight, [1, n])) : this.embed(ids!, positions, [1, n]);
    const blocks = this.tr.getModule('h') as ModuleList<Gpt2Block>;
    for (let i = 0; i < this.config.layers; i++) h = blocks.at(i).forwardCached(h, cache, i);
    cache.length += n;
    return (this.tr.getModule('ln_f') as LayerNorm).forward(h);
  }
}
