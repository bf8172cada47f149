/**
 * Dev-time check, not part of `npm test`: load ajuste's GGUF exports in a real llama.cpp and compare with ajuste.
 * llama.cpp comes from node-llama-cpp's prebuilt CPU build (an npm package; nothing is compiled), installed outside
 * the project:
 *
 *   npm install --prefix /tmp/nlc --ignore-scripts --no-audit --no-fund node-llama-cpp@3.22.1
 *   node --import tsx tools/llamacpp-check.ts            # NODE_LLAMA_CPP=<path to its dist/index.js> to use another
 *
 * It checks, for the bundled model (with the README's runs/lora-chat adapter when it exists) and for the tiny
 * fixture models (llama GQA, llama3 rope scaling + tied embeddings, qwen2 with biases, gpt2; each given a 128-token
 * byte-level vocabulary so llama.cpp has one) and the fixture LoRA adapters (plain and rsLoRA):
 * - llama.cpp loads the file (metadata, tensor names and shapes, vocabulary, pre-tokenizer);
 * - it tokenizes text (special tokens included) into the same ids as ajuste's tokenizer, and detokenizes back;
 * - its next-token logits at every position equal ajuste's forward pass: f32 exports with an f32 KV cache to ~1e-5
 *   (gpt2 ~4e-3, probably ggml's CPU GELU, which reads an f16 table), a q8_0 export within quantization noise, and
 *   `--lora` adapters equal to ajuste's unmerged LoRA model.
 * Results when this was written (node-llama-cpp 3.22.1): every file loaded; 4/4 texts tokenized identically; max
 * |logit difference| 6.5e-6 (bundled, f32), 6.7e-6 (+ LoRA), 7.2e-6 (merged), 7.6e-6 / 7.4e-6 / 6.8e-6 (llama-gqa /
 * llama-tied-rope3 / qwen2), 4.2e-3 (gpt2), 8.9e-6 / 7.5e-6 (LoRA / rsLoRA on llama-gqa), 0.12 (bundled, q8_0, same
 * argmax at 25 of 26 positions).
 *
 * SentencePiece vocabularies (`... llamacpp-check.ts spm` runs only these): tools/fixtures/spm.py's tokenizer on
 * llama-gqa's weights (embedding rows extended to its 404 / 403 ids), exported from a folder with tokenizer.model and
 * from tokenizer.json alone; each text of test/fixtures/gguf/spm/spm.json is tokenized by llama.cpp (no BOS) and
 * compared with sentencepiece's own ids, and the tokenizer.json export is also written with the converter's -1000
 * placeholder scores. Results (node-llama-cpp 3.22.1): tokenizer.model 7/7 texts, tokenizer.json 7/7, with -1000
 * scores 6/7 ("rare files: modelos low-rank" merges left to right into other pieces); chat special tokens parsed the
 * same as ajuste; detokenization gives the texts back; max |logit difference| 1.2e-5 over 29 positions (f32).
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { byteLevelDecodeTable } from '../src/data/byte-level.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { type GgufValue, ggufTensorBytes, gv, readGguf, writeGguf } from '../src/io/gguf.js';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import type { CausalLM } from '../src/models/causal-lm.js';
import { loadModelFolder } from '../src/models/load.js';
import { loadAdapter } from '../src/peft/adapter-io.js';
import { exportGguf, exportLoraGguf } from '../src/peft/gguf-export.js';
import { noGrad, scope } from '../src/tensor/autograd.js';
import { prepareGgufInputs } from './fixtures/gguf-export.js';

const OUT = 'runs/llamacpp-check';
mkdirSync(OUT, { recursive: true });
const nlc = process.env.NODE_LLAMA_CPP ?? '/tmp/nlc/node_modules/node-llama-cpp/dist/index.js';
if (!existsSync(nlc)) {
  console.error(`node-llama-cpp not found at ${nlc}: install it as the header of ${import.meta.url} says`);
  process.exit(1);
}
// biome-ignore lint/suspicious/noExplicitAny: an optional dev-time package, not a dependency
const { getLlama, LlamaLogLevel } = (await import(nlc)) as any;
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });

function ajusteLogits(model: CausalLM, ids: number[]): Float32Array[] {
  return noGrad(() =>
    scope(() => {
      const T = ids.length;
      const batch = { inputIds: Int32Array.from(ids), positionIds: Int32Array.from(ids.map((_, i) => i)), segIds: null, B: 1, T };
      const f = model.logits(model.forwardHidden(batch)).f as Float32Array;
      const V = model.config.vocabSize;
      return Array.from({ length: T }, (_, t) => Float32Array.from(f.subarray(t * V, (t + 1) * V)));
    }),
  );
}

async function llamaLogits(path: string, ids: number[], lora?: string): Promise<Float32Array[]> {
  const m = await llama.loadModel({ modelPath: path });
  const ctx = await m.createContext({
    contextSize: 64,
    sequences: 1,
    experimentalKvCacheKeyType: 'F32',
    experimentalKvCacheValueType: 'F32',
    flashAttention: false,
    ...(lora ? { lora: { adapters: [{ filePath: lora, scale: 1 }] } } : {}),
  });
  const res = await ctx.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: true } }]));
  const out = res.map((r: { next: { logits: Map<number, number> } }) => {
    const a = new Float32Array(r.next.logits.size);
    for (const [k, v] of r.next.logits) a[k] = v;
    return a;
  });
  await ctx.dispose();
  await m.dispose();
  return out;
}

function compare(what: string, a: Float32Array[], b: Float32Array[]): void {
  let maxd = 0;
  let agree = 0;
  for (let t = 0; t < a.length; t++) {
    const x = a[t]!;
    const y = b[t]!;
    if (x.length !== y.length) throw new Error(`${what}: vocabularies of ${x.length} and ${y.length}`);
    let ax = 0;
    let ay = 0;
    for (let i = 0; i < x.length; i++) {
      maxd = Math.max(maxd, Math.abs(x[i]! - y[i]!));
      if (x[i]! > x[ax]!) ax = i;
      if (y[i]! > y[ay]!) ay = i;
    }
    if (ax === ay) agree++;
  }
  console.log(`${what}: max |ajuste - llama.cpp| logit ${maxd.toExponential(2)} over ${a.length} positions; same argmax at ${agree}/${a.length}`);
}

// `node --import tsx tools/llamacpp-check.ts spm` runs only the SentencePiece section (the last one)
const onlySpm = process.argv[2] === 'spm';

// the bundled model: tokenizer, f32 and q8_0, and the README's adapter merged and as --lora
if (!onlySpm) {
  const dir = 'models/ajuste-base-2m';
  const tok = Tokenizer.fromFolder(dir);
  const { model } = loadModelFolder(dir);
  exportGguf(model, `${OUT}/base-f32.gguf`, { modelDir: dir, outtype: 'f32' });
  exportGguf(model, `${OUT}/base-q8_0.gguf`, { modelDir: dir, outtype: 'q8_0' });
  const m = await llama.loadModel({ modelPath: `${OUT}/base-f32.gguf` });
  const texts = [
    'The quick brown fox jumps over the lazy dog.',
    "It's 3.14159 -- isn't it?  Well,\n\n  we'll   see!",
    '<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n',
    'Ça va? naïve café 日本語 🦙 ✓',
  ];
  let same = 0;
  for (const t of texts) {
    const a = tok.encode(t);
    const b = Array.from(m.tokenize(t, true)) as number[];
    if (a.length === b.length && a.every((x, i) => x === b[i])) same++;
    else console.log(`tokenization differs for ${JSON.stringify(t)}: ajuste ${a.slice(0, 16)} llama.cpp ${b.slice(0, 16)}`);
    if (m.detokenize(a, true) !== t) console.log(`detokenization differs for ${JSON.stringify(t)}: ${JSON.stringify(m.detokenize(a, true))}`);
  }
  console.log(`tokenization: ${same}/${texts.length} texts give the same ids in llama.cpp and ajuste`);
  await m.dispose();
  const ids = tok.encode(`${texts[2]}Rome is the capital`);
  const ref = ajusteLogits(model, ids);
  compare('ajuste-base-2m f32', ref, await llamaLogits(`${OUT}/base-f32.gguf`, ids));
  compare('ajuste-base-2m q8_0', ref, await llamaLogits(`${OUT}/base-q8_0.gguf`, ids));
  if (existsSync('runs/lora-chat/adapter_config.json')) {
    const { model: withLora } = loadModelFolder(dir);
    const a = loadAdapter('runs/lora-chat', withLora);
    const refLora = ajusteLogits(withLora, ids);
    exportLoraGguf(withLora, a, `${OUT}/lora-chat.gguf`, { adapterDir: 'runs/lora-chat' });
    exportGguf(withLora, `${OUT}/merged-f32.gguf`, { modelDir: dir, outtype: 'f32' });
    compare('ajuste-base-2m f32 + --lora lora-chat.gguf', refLora, await llamaLogits(`${OUT}/base-f32.gguf`, ids, `${OUT}/lora-chat.gguf`));
    compare('ajuste-base-2m + lora-chat merged, f32', refLora, await llamaLogits(`${OUT}/merged-f32.gguf`, ids));
  } else console.log('runs/lora-chat not found (train it with the README\'s first command): adapter checks skipped');
}

// the fixture models, each with a 128-token byte-level vocabulary (bytes 0..126 and one merge)
const b2u = new Map([...byteLevelDecodeTable()].map(([ch, b]) => [b, ch]));
const vocab: Record<string, number> = {};
for (let b = 0; b < 127; b++) vocab[b2u.get(b)!] = b;
vocab.ab = 127;
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const tokenizerJson = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [],
  normalizer: null,
  pre_tokenizer: byteLevel,
  post_processor: null,
  decoder: byteLevel,
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: ['a b'] },
};
const ids = [1, 5, 17, 99, 42, 3, 64, 127, 8, 20, 33, 71, 2, 90, 11, 6];
for (const name of onlySpm ? [] : ['llama-gqa', 'llama-tied-rope3', 'qwen2', 'gpt2']) {
  const dir = `${OUT}/${name}`;
  mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) copyFileSync(`test/fixtures/models/${name}/${f}`, `${dir}/${f}`);
  writeFileSync(`${dir}/tokenizer.json`, JSON.stringify(tokenizerJson));
  const { model } = loadModelFolder(dir);
  exportGguf(model, `${OUT}/${name}-f32.gguf`, { modelDir: dir, outtype: 'f32' });
  compare(`${name} f32`, ajusteLogits(model, ids), await llamaLogits(`${OUT}/${name}-f32.gguf`, ids));
}
const inputs = prepareGgufInputs(OUT);
for (const [variant, adapterDir] of onlySpm ? [] : ([['LoRA', inputs.loraPlain], ['rsLoRA', inputs.loraRs]] as const)) {
  const { model } = loadModelFolder(`${OUT}/llama-gqa`);
  const a = loadAdapter(adapterDir, model);
  exportLoraGguf(model, a, `${OUT}/llama-gqa-${variant}.gguf`, { adapterDir });
  compare(`llama-gqa f32 + --lora (${variant})`, ajusteLogits(model, ids), await llamaLogits(`${OUT}/llama-gqa-f32.gguf`, ids, `${OUT}/llama-gqa-${variant}.gguf`));
}
// SentencePiece vocabularies (tools/fixtures/spm.py's tokenizer) on llama-gqa's weights, the embedding and lm_head
// rows extended to the vocabulary (row i = row i % 128 scaled by 1 + i/512): with tokenizer.model (404 ids), and
// with tokenizer.json alone (403 ids) once with ajuste's scores and once with the converter's -1000 placeholders
{
  const spmTexts = (JSON.parse(readFileSync('test/fixtures/gguf/spm/spm.json', 'utf8')) as { texts: { text: string; ids: number[] }[] }).texts;
  const st = readSafetensors('test/fixtures/models/llama-gqa/model.safetensors', { copy: true });
  for (const [name, dir] of [['spm-model', inputs.spmModel], ['spm-hf', inputs.spmHf]] as const) {
    const V = (JSON.parse(readFileSync(`${dir}/config.json`, 'utf8')) as { vocab_size: number }).vocab_size;
    const tensors: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
    for (const [k, t] of st.tensors) {
      if (k !== 'model.embed_tokens.weight' && k !== 'lm_head.weight') {
        tensors[k] = { dtype: t.dtype, shape: t.shape, data: t.data };
        continue;
      }
      const H = t.shape[1]!;
      const src = t.data as Float32Array;
      const w = new Float32Array(V * H);
      for (let i = 0; i < V; i++) for (let j = 0; j < H; j++) w[i * H + j] = src[(i % 128) * H + j]! * (1 + i / 512);
      tensors[k] = { dtype: 'F32', shape: [V, H], data: w };
    }
    writeSafetensors(`${dir}/model.safetensors`, tensors, { format: 'pt' });
    const tok = Tokenizer.fromFolder(dir);
    const { model } = loadModelFolder(dir);
    const files: [string, string][] = [[`${name} f32`, `${OUT}/${name}-f32.gguf`]];
    exportGguf(model, files[0]![1], { modelDir: dir, outtype: 'f32' });
    if (name === 'spm-hf') {
      // the same file with every score -1000, as convert_hf_to_gguf.py's _set_vocab_llama_hf writes it
      const f = readGguf(files[0]![1]);
      const kv: [string, GgufValue][] = [...f.kv].map(([k, v]) => [k, k === 'tokenizer.ggml.scores' ? gv.array('f32', new Float32Array(V).fill(-1000)) : v]);
      const tensorsOut = f.tensors.map((t) => ({ name: t.name, type: t.type.name as 'F32', shape: t.shape, data: () => ggufTensorBytes(f, t) }));
      writeGguf(`${OUT}/${name}-placeholder.gguf`, kv, tensorsOut);
      files.push([`${name} f32 with the converter's -1000 scores`, `${OUT}/${name}-placeholder.gguf`]);
    }
    for (const [what, path] of files) {
      const m = await llama.loadModel({ modelPath: path });
      let same = 0;
      let sameAjuste = 0;
      for (const { text, ids: want } of spmTexts) {
        const got = Array.from(m.tokenize(text, false)) as number[];
        const a = tok.encode(text, { addSpecialTokens: false });
        if (got.join() === want.join()) same++;
        else console.log(`  ${what}: ${JSON.stringify(text)}: llama.cpp ${got.slice(0, 12)} sentencepiece ${want.slice(0, 12)}`);
        if (a.join() === want.join()) sameAjuste++;
        if (m.detokenize(want, false) !== text) console.log(`  ${what}: detokenization differs for ${JSON.stringify(text)}: ${JSON.stringify(m.detokenize(want, false))}`);
      }
      const chat = '<|im_start|>user\nhola mundo<|im_end|>';
      const chatIds = Array.from(m.tokenize(chat, true)) as number[];
      console.log(`${what}: tokenization: ${same}/${spmTexts.length} texts give sentencepiece's ids in llama.cpp (ajuste ${sameAjuste}/${spmTexts.length}); ${JSON.stringify(chat)} with specials: llama.cpp ${chatIds} ajuste ${tok.encode(chat, { addSpecialTokens: false })}`);
      await m.dispose();
      const idsSpm = tok.encode(spmTexts[1]!.text);
      compare(what, ajusteLogits(model, idsSpm), await llamaLogits(path, idsSpm));
    }
  }
}
await llama.dispose();
