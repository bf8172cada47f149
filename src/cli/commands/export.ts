/**
 * `ajuste export`: GGUF files for llama.cpp.
 *
 *   ajuste export --model M [--adapter A] --out model.gguf [--outtype f32|f16|bf16|q8_0]   a model (adapter merged)
 *   ajuste export --model M --adapter A --lora-only --out adapter.gguf                    a GGUF LoRA adapter
 *   ajuste export --model M --vocab-only --out vocab.gguf                                 the vocabulary alone
 *   ajuste export --inspect FILE.gguf                                                     print a GGUF file's header
 */
import { existsSync, statSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { UserError } from '../../errors.js';
import { describeGgufValue, type GgufFile, readGguf } from '../../io/gguf.js';
import { resolveModel } from '../../io/hub.js';
import { loadModelFolder } from '../../models/load.js';
import { loadAdapter } from '../../peft/adapter-io.js';
import { exportGguf, exportGgufVocab, exportLoraGguf, GGUF_OUTTYPES, type GgufOutType } from '../../peft/gguf-export.js';
import { Linear4bit } from '../../quant/linear4bit.js';
import { type CliContext, contextFor } from '../context.js';

interface ExportCliOptions {
  model?: string;
  adapter?: string;
  out?: string;
  outtype?: GgufOutType;
  loraOnly?: boolean;
  vocabOnly?: boolean;
  tokenizer: boolean;
  tokenizerPre?: string;
  name?: string;
  inspect?: string;
}

const USAGE = "run 'ajuste export --help' for the forms of the command";

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** One line per type: "Q8_0 x 29, F32 x 9". */
function typeCounts(f: GgufFile): string {
  const n = new Map<string, number>();
  for (const t of f.tensors) n.set(t.type.name, (n.get(t.type.name) ?? 0) + 1);
  return [...n].map(([t, k]) => `${t} x ${k}`).join(', ');
}

function printInspect(ctx: CliContext, path: string): void {
  const f = readGguf(path);
  const lines = [`${path}: GGUF v${f.version}, ${f.kv.size} keys, ${f.tensors.length} tensors (${typeCounts(f) || 'none'}), alignment ${f.alignment}, ${mib(f.size)}`];
  const width = Math.max(...[...f.kv.keys()].map((k) => k.length), 0);
  for (const [k, v] of f.kv) lines.push(`  ${k.padEnd(width)}  ${describeGgufValue(v)}`);
  const tw = Math.max(...f.tensors.map((t) => t.name.length), 0);
  for (const t of f.tensors) lines.push(`  ${t.name.padEnd(tw)}  ${t.type.name.padEnd(5)}  ne=[${t.ne.join(', ')}]  ${t.nbytes} bytes`);
  ctx.print(lines.join('\n'));
}

/** After writing: read the file back with the hardened reader and print what it holds. */
function summary(ctx: CliContext, path: string, what: string): void {
  const f = readGguf(path);
  ctx.print(`${path}: ${what}, ${f.tensors.length} tensors (${typeCounts(f) || 'none'}), ${mib(f.size)}`);
}

function checkOut(out: string | undefined): string {
  if (!out) throw new UserError('--out is required: the .gguf file to write', USAGE);
  if (existsSync(out) && statSync(out).isDirectory()) throw new UserError(`--out ${out} is a folder; GGUF is a single file`, `pass a file name, e.g. --out ${out.replace(/\/$/, '')}/model.gguf`);
  return out;
}

export function register(program: Command): void {
  program
    .command('export')
    .summary('write a GGUF file for llama.cpp (model, LoRA adapter or vocabulary)')
    .description(
      "Write a GGUF file for llama.cpp, as its convert_hf_to_gguf.py and\n" +
        'convert_lora_to_gguf.py do:\n' +
        '  model:       --model M [--adapter A] --out model.gguf\n' +
        '  LoRA:        --model M --adapter A --lora-only --out adapter.gguf\n' +
        '  vocabulary:  --model M --vocab-only --out vocab.gguf\n' +
        '  inspect:     --inspect FILE.gguf\n' +
        "With --adapter alone the adapter is merged in; a --lora-only file is for\n" +
        "llama.cpp's --lora. Architectures: llama (Llama 2/3, SmolLM, TinyLlama),\n" +
        "mistral, qwen2, gpt2. Vocabularies: byte-level BPE (GPT-2, Llama 3, Qwen,\n" +
        "SmolLM, ajuste's own).",
    )
    .option('--model <path|org/name>', 'the model folder (or Hub id in the local cache)')
    .option('--adapter <dir>', 'a PEFT LoRA adapter: merged into the model, or exported alone with --lora-only')
    .option('--out <file>', 'the .gguf file to write')
    .addOption(new Option('--outtype <type>', 'tensor type of the matrices; norms, biases and 1-D tensors stay f32 (default: f16 for a model, f32 for --lora-only, as llama.cpp\'s converters)').choices([...GGUF_OUTTYPES]))
    .option('--lora-only', 'write the adapter as a GGUF LoRA file instead of merging it')
    .option('--vocab-only', 'write only the metadata and the vocabulary, no tensors')
    .option('--no-tokenizer', 'write no vocabulary (tokenizer.ggml.model "none"): for models whose tokenizer ajuste cannot export')
    .option('--tokenizer-pre <name>', "tokenizer.ggml.pre to write (a name llama.cpp's llama-vocab.cpp accepts) when ajuste cannot tell it")
    .option('--name <text>', 'general.name (default: the folder name)')
    .option('--inspect <file>', 'print the metadata and tensor list of a GGUF file, and exit')
    .action(async (o: ExportCliOptions, cmd: Command) => {
      const ctx = contextFor(cmd);
      if (o.inspect) {
        printInspect(ctx, o.inspect);
        return;
      }
      if (!o.model) throw new UserError('--model is required: the model folder (or Hub id) to export', USAGE);
      const out = checkOut(o.out);
      if (o.loraOnly && !o.adapter) throw new UserError('--lora-only exports an adapter: pass it with --adapter DIR', USAGE);
      if (o.loraOnly && o.vocabOnly) throw new UserError('--lora-only and --vocab-only cannot be combined', USAGE);
      if (o.vocabOnly && o.adapter) throw new UserError('--vocab-only writes no weights, so --adapter has nothing to do', 'leave out --adapter');
      if (o.vocabOnly && !o.tokenizer) throw new UserError('--vocab-only with --no-tokenizer would write nothing useful', USAGE);
      const dir = await resolveModel(o.model);
      const t0 = performance.now();
      const secs = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
      if (o.vocabOnly) {
        const r = exportGgufVocab(dir, out, { outtype: o.outtype, name: o.name, tokenizerPre: o.tokenizerPre });
        if (r.pre) ctx.info(`tokenizer.ggml.pre = ${r.pre.name}: ${r.pre.reason}`);
        summary(ctx, out, `${r.arch} vocabulary`);
        return;
      }
      const { model } = loadModelFolder(dir);
      if (model.namedModules().some(([, m]) => m instanceof Linear4bit)) ctx.info('the model is 4-bit (bitsandbytes): its linear weights are dequantized for GGUF');
      if (o.loraOnly) {
        const adapter = loadAdapter(o.adapter!, model);
        const r = exportLoraGguf(model, adapter, out, { outtype: o.outtype, name: o.name, adapterDir: o.adapter });
        if (r.rescaled.length) ctx.info(`${r.rescaled.length} modules scale by other than lora_alpha/r (rsLoRA, rank_pattern or alpha_pattern): folded into lora_b, since llama.cpp scales by alpha/r`);
        if (r.fallbacks.length) ctx.info(`${r.fallbacks.length} tensors written F16: their rows (r values) are not whole Q8_0 blocks of 32`);
        ctx.info(`exported ${r.modules} LoRA modules (alpha ${r.alpha}) in ${secs()}; use it with: llama-cli -m <base model>.gguf --lora ${out}`);
        summary(ctx, out, `${r.arch} LoRA adapter`);
        return;
      }
      if (o.adapter) {
        const { applied } = loadAdapter(o.adapter, model);
        ctx.info(`merging ${applied.targets.length} LoRA modules of ${o.adapter}`);
      }
      const r = exportGguf(model, out, { modelDir: dir, outtype: o.outtype, name: o.name, tokenizer: o.tokenizer, tokenizerPre: o.tokenizerPre });
      if (r.pre) ctx.info(`tokenizer.ggml.pre = ${r.pre.name}: ${r.pre.reason}`);
      if (r.fallbacks.length) ctx.info(`${r.fallbacks.length} tensors written F16 (rows not whole Q8_0 blocks of 32): ${r.fallbacks.slice(0, 3).join(', ')}${r.fallbacks.length > 3 ? ', ...' : ''}`);
      ctx.info(`exported in ${secs()}`);
      summary(ctx, out, `${r.arch} model, ${o.outtype ?? 'f16'}`);
    });
}
