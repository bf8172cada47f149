/**
 * The Llama family (Llama 2/3, TinyLlama, SmolLM, Mistral, Qwen2) as transformers' modeling_llama.py:
 * pre-norm decoder layers of RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm ->
 * SwiGLU MLP -> residual; final RMSNorm; lm_head (or the tied embedding).
 * Module paths equal the Hugging Face state-dict names (model.layers.0.self_attn.q_proj, ...).
 */
import { type LinearLike, Embedding, RMSNorm } from '../nn/layers.js';
import { Module, ModuleList } from '../nn/module.js';
import { geluErf, geluTanh, swiglu } from '../nn/ops/activations.js';
import { attention, attentionCached } from '../nn/ops/attention.js';
import { type RopeTables, rope, ropeTables } from '../nn/ops/rope.js';
import { checkpoint, noGrad } from '../tensor/autograd.js';
import { add, mul } from '../tensor/ops.js';
import { Tensor } from '../tensor/tensor.js';
import { type Batch, CausalLM, type ForwardOptions, type KvCache, type PromptHook } from './causal-lm.js';
import { type ModelConfig, ropeInvFreq } from './config.js';

/** Per-forward context shared by the layers. */
interface Ctx {
  batch: Batch;
  rope: RopeTables;
  /** Prompt-learning hook of this forward (prefix tuning replaces the attention), and the layer index. */
  hook?: PromptHook | null;
  layer?: number;
}

class LlamaAttention extends Module {
  constructor(
    private readonly c: ModelConfig,
    m: Record<string, LinearLike & Module>,
  ) {
    super();
    for (const n of ['q_proj', 'k_proj', 'v_proj', 'o_proj']) this.addModule(n, m[n]!);
  }

  forward(x: Tensor, ctx: Ctx): Tensor {
    const { B, T } = ctx.batch;
    const { heads: H, kvHeads: Hkv, headDim: D } = this.c;
    let q = this.child<LinearLike>('q_proj').forward(x).reshape([B, T, H, D]);
    let k = this.child<LinearLike>('k_proj').forward(x).reshape([B, T, Hkv, D]);
    const v = this.child<LinearLike>('v_proj').forward(x).reshape([B, T, Hkv, D]);
    q = rope(q, ctx.batch.positionIds, ctx.rope);
    k = rope(k, ctx.batch.positionIds, ctx.rope);
    const shape = { B, T, H, Hkv, D, segIds: ctx.batch.segIds };
    const a = ctx.hook?.attention ? ctx.hook.attention(ctx.layer ?? 0, q, k, v, shape) : attention(q, k, v, shape);
    return this.child<LinearLike>('o_proj').forward(a.reshape([B, T, H * D]));
  }

  forwardCached(x: Tensor, positions: Int32Array, tables: RopeTables, cache: KvCache, layer: number): Tensor {
    const n = positions.length;
    const { heads: H, kvHeads: Hkv, headDim: D } = this.c;
    const q = rope(this.child<LinearLike>('q_proj').forward(x).reshape([1, n, H, D]), positions, tables);
    const k = rope(this.child<LinearLike>('k_proj').forward(x).reshape([1, n, Hkv, D]), positions, tables);
    const v = this.child<LinearLike>('v_proj').forward(x);
    const off = cache.length * Hkv * D;
    cache.keys[layer]!.set(k.f, off);
    cache.values[layer]!.set(v.f, off);
    const out = Tensor.empty([1, n, H * D]);
    attentionCached(q.f as Float32Array, cache.keys[layer]!, cache.values[layer]!, cache.length, n, H, Hkv, D, out.f as Float32Array);
    return this.child<LinearLike>('o_proj').forward(out);
  }
}

class LlamaMlp extends Module {
  constructor(
    private readonly c: ModelConfig,
    m: Record<string, LinearLike & Module>,
  ) {
    super();
    for (const n of ['gate_proj', 'up_proj', 'down_proj']) this.addModule(n, m[n]!);
  }

  forward(x: Tensor): Tensor {
    const gate = this.child<LinearLike>('gate_proj').forward(x);
    const up = this.child<LinearLike>('up_proj').forward(x);
    const act =
      this.c.activation === 'silu'
        ? swiglu(gate, up)
        : mul(this.c.activation === 'gelu_tanh' ? geluTanh(gate) : geluErf(gate), up);
    return this.child<LinearLike>('down_proj').forward(act);
  }
}

class LlamaDecoderLayer extends Module {
  constructor(attn: LlamaAttention, mlp: LlamaMlp, inputNorm: RMSNorm, postNorm: RMSNorm) {
    super();
    this.addModule('self_attn', attn);
    this.addModule('mlp', mlp);
    this.addModule('input_layernorm', inputNorm);
    this.addModule('post_attention_layernorm', postNorm);
  }

  forward(h: Tensor, ctx: Ctx): Tensor {
    const a = this.child<LlamaAttention>('self_attn').forward(this.child<RMSNorm>('input_layernorm').forward(h), ctx);
    h = add(h, a);
    const m = this.child<LlamaMlp>('mlp').forward(this.child<RMSNorm>('post_attention_layernorm').forward(h));
    return add(h, m);
  }

  forwardCached(h: Tensor, positions: Int32Array, tables: RopeTables, cache: KvCache, layer: number): Tensor {
    const x = this.child<RMSNorm>('input_layernorm').forward(h);
    h = add(h, this.child<LlamaAttention>('self_attn').forwardCached(x, positions, tables, cache, layer));
    const m = this.child<LlamaMlp>('mlp').forward(this.child<RMSNorm>('post_attention_layernorm').forward(h));
    return add(h, m);
  }
}

/** The inner `model` module (embed_tokens, layers, norm). */
class LlamaModel extends Module {
  constructor(embed: Embedding, layers: LlamaDecoderLayer[], norm: RMSNorm) {
    super();
    this.addModule('embed_tokens', embed);
    this.addModule('layers', new ModuleList(layers));
    this.addModule('norm', norm);
  }
  get embed(): Embedding {
    return this.child<Embedding>('embed_tokens');
  }
  get norm(): RMSNorm {
    return this.child<RMSNorm>('norm');
  }
  layer(i: number): LlamaDecoderLayer {
    return this.child<ModuleList<LlamaDecoderLayer>>('layers').at(i);
  }
}

export type WeightGetter = (name: string, shape: number[]) => Tensor;
export type LinearFactory = (name: string, outF: number, inF: number, bias: boolean) => LinearLike & Module;

export class LlamaForCausalLM extends CausalLM {
  private ropeCache: RopeTables | null = null;
  private readonly invFreq: Float64Array;

  constructor(config: ModelConfig, weight: WeightGetter, makeLinear: LinearFactory) {
    super(config);
    const c = config;
    const { hidden: C, heads: H, kvHeads: Hkv, headDim: D, intermediate: I } = c;
    const layers: LlamaDecoderLayer[] = [];
    for (let i = 0; i < c.layers; i++) {
      const p = `model.layers.${i}`;
      const attn = new LlamaAttention(c, {
        q_proj: makeLinear(`${p}.self_attn.q_proj`, H * D, C, c.qkvBias),
        k_proj: makeLinear(`${p}.self_attn.k_proj`, Hkv * D, C, c.qkvBias),
        v_proj: makeLinear(`${p}.self_attn.v_proj`, Hkv * D, C, c.qkvBias),
        o_proj: makeLinear(`${p}.self_attn.o_proj`, C, H * D, c.oBias),
      });
      const mlp = new LlamaMlp(c, {
        gate_proj: makeLinear(`${p}.mlp.gate_proj`, I, C, c.mlpBias),
        up_proj: makeLinear(`${p}.mlp.up_proj`, I, C, c.mlpBias),
        down_proj: makeLinear(`${p}.mlp.down_proj`, C, I, c.mlpBias),
      });
      const n1 = new RMSNorm(weight(`${p}.input_layernorm.weight`, [C]), c.normEps);
      const n2 = new RMSNorm(weight(`${p}.post_attention_layernorm.weight`, [C]), c.normEps);
      layers.push(new LlamaDecoderLayer(attn, mlp, n1, n2));
    }
    const embed = new Embedding(weight('model.embed_tokens.weight', [c.vocabSize, C]));
    this.addModule('model', new LlamaModel(embed, layers, new RMSNorm(weight('model.norm.weight', [C]), c.normEps)));
    if (!c.tieEmbeddings) this.addModule('lm_head', makeLinear('lm_head', c.vocabSize, C, false));
    this.invFreq = ropeInvFreq(c);
  }

  private get inner(): LlamaModel {
    return this.child<LlamaModel>('model');
  }

  lmHeadWeight(): Tensor {
    if (this.config.tieEmbeddings) return this.inner.embed.weight;
    const head = this.child<Module>('lm_head') as unknown as { weight?: Tensor };
    if (!head.weight) throw new Error('lm_head has no plain weight (adapters on lm_head are applied through modules_to_save)');
    return head.weight;
  }

  private tables(maxPos: number): RopeTables {
    if (!this.ropeCache || this.ropeCache.cos.length / this.ropeCache.half < maxPos) {
      const n = Math.max(maxPos, Math.min(this.config.maxPositions, 4096));
      this.ropeCache = ropeTables(this.invFreq, n, 1);
    }
    return this.ropeCache;
  }

  forwardHidden(batch: Batch, opts: ForwardOptions = {}): Tensor {
    const { B, T } = batch;
    const hook = this.promptHook;
    let h = this.inner.embed.forward(batch.inputIds, [B, T]);
    let run = batch;
    if (hook) ({ h, batch: run } = hook.begin(h, batch));
    let maxPos = 0;
    for (const p of run.positionIds) if (p > maxPos) maxPos = p;
    const rope = this.tables(maxPos + 1);
    for (let i = 0; i < this.config.layers; i++) {
      const layer = this.inner.layer(i);
      const ctx: Ctx = { batch: run, rope, hook, layer: i };
      h = opts.gradientCheckpointing ? checkpoint(h, (x) => layer.forward(x, ctx)) : layer.forward(h, ctx);
    }
    const out = this.inner.norm.forward(h);
    return hook ? hook.end(out, batch) : out;
  }

  forwardCached(ids: Int32Array, cache: KvCache): Tensor {
    return noGrad(() => {
      if (cache.length === 0 && this.promptHook?.prefill) {
        const pre = this.promptHook.prefill(cache);
        if (pre) this.runCached(pre, cache);
      }
      return this.runCached(this.inner.embed.forward(ids, [1, ids.length]), cache);
    });
  }

  /** Runs [1, n, C] input embeddings through the layers, appending to the cache. */
  private runCached(h: Tensor, cache: KvCache): Tensor {
    const n = h.dim(1);
    if (cache.length + n > cache.capacity) throw new Error(`KV cache full (${cache.capacity} tokens)`);
    const positions = Int32Array.from({ length: n }, (_, i) => cache.length + i);
    const tables = this.tables(cache.length + n);
    for (let i = 0; i < this.config.layers; i++) h = this.inner.layer(i).forwardCached(h, positions, tables, cache, i);
    cache.length += n;
    return this.inner.norm.forward(h);
  }
}
