/**
 * Writing a 4-bit model folder as transformers + bitsandbytes save one (`model.save_pretrained` after
 * `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))`):
 * - model.safetensors: every decoder Linear weight in bitsandbytes' layout (bnb-format.ts: packed U8,
 *   absmax, quant_map, nested_absmax, nested_quant_map, quant_state.bitsandbytes__nf4|fp4); everything
 *   else (embeddings, lm_head, norms, biases) copied byte for byte in its stored dtype;
 * - config.json: the source text with `quantization_config` inserted exactly as BitsAndBytesConfig.to_dict()
 *   serializes (sorted keys, Python floats), so the rest of the file is untouched;
 * - tokenizer and generation files copied.
 * Layers are quantized one at a time from the (memory-mapped) source, so peak memory stays near the size
 * of the result.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { UserError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readSafetensorsFolder, writeSafetensors } from '../io/safetensors.js';
import { buildModel } from '../models/build.js';
import { readModelConfig } from '../models/load.js';
import { pyFloat, pyJsonDumps } from '../io/pyjson.js';
import { Linear4bit } from './linear4bit.js';
import { checkBlocksize4, type QuantType4 } from './nf4.js';

const COPIED = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'chat_template.jinja',
  'chat_template.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'added_tokens.json',
];

export interface QuantizeModelOptions {
  quantType: QuantType4;
  /** Default false (transformers' BitsAndBytesConfig default; QLoRA uses true). */
  doubleQuant?: boolean;
  /** Default 64. */
  blocksize?: number;
  /** bnb_4bit_compute_dtype written to the config; default 'float32' (transformers' default). */
  computeDtype?: 'float32' | 'bfloat16' | 'float16';
}

export interface QuantizeModelResult {
  layers: number;
  /** Values in the quantized weights. */
  numel: number;
  /** Bytes of the quantized weights (packed codes + absmax + nested absmax; code tables not counted). */
  bytes: number;
  /** Bytes of the per-tensor code tables (quant_map, nested_quant_map). */
  tableBytes: number;
  outDir: string;
}

/** `quantization_config` as transformers' BitsAndBytesConfig(load_in_4bit=True, ...).to_dict() gives it. */
export function bnbQuantizationConfig(o: QuantizeModelOptions): Record<string, unknown> {
  return {
    _load_in_4bit: true,
    _load_in_8bit: false,
    bnb_4bit_compute_dtype: o.computeDtype ?? 'float32',
    bnb_4bit_quant_storage: 'uint8',
    bnb_4bit_quant_type: o.quantType,
    bnb_4bit_use_double_quant: o.doubleQuant ?? false,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    llm_int8_skip_modules: null,
    llm_int8_threshold: pyFloat(6.0),
    load_in_4bit: true,
    load_in_8bit: false,
    quant_method: 'bitsandbytes',
  };
}

/**
 * Inserts `"quantization_config": {...}` into config.json text as transformers writes it (indent 2, keys
 * sorted): before the first top-level key that sorts after it, else last. Other bytes stay as they were.
 */
export function insertQuantizationConfig(text: string, qc: Record<string, unknown>, file = 'config.json'): string {
  const block = `  "quantization_config": ${pyJsonDumps(qc, 2, 1)}`;
  const lines = text.split('\n');
  const top = lines.map((l, i) => [i, /^ {2}"((?:[^"\\]|\\.)*)":/.exec(l)?.[1]] as const).filter((x): x is readonly [number, string] => x[1] !== undefined);
  const closing = lines.lastIndexOf('}');
  if (top.length === 0 || closing < 0) {
    const obj = JSON.parse(text) as Record<string, unknown>;
    return `${pyJsonDumps({ ...obj, quantization_config: qc })}\n`;
  }
  if (top.some(([, k]) => k === 'quantization_config')) throw new UserError(`${file} already has a quantization_config`, 'this model is already quantized');
  const after = top.find(([, k]) => k > 'quantization_config');
  if (after) {
    lines.splice(after[0], 0, `${block},`);
  } else {
    let last = closing - 1;
    while (last > 0 && lines[last]!.trim() === '') last--;
    lines[last] = `${lines[last]},`;
    lines.splice(last + 1, 0, block);
  }
  return lines.join('\n');
}

/** Quantizes the decoder Linear layers of the model folder srcDir to 4 bits and writes a bitsandbytes folder to outDir. */
export function quantizeModelFolder(srcDir: string, outDir: string, o: QuantizeModelOptions): QuantizeModelResult {
  if (o.quantType !== 'nf4' && o.quantType !== 'fp4') throw new UserError(`--quant must be nf4 or fp4, got '${String(o.quantType)}'`);
  const blocksize = o.blocksize ?? 64;
  try {
    checkBlocksize4(blocksize, '--blocksize');
  } catch (e) {
    throw new UserError((e as Error).message);
  }
  if (resolve(srcDir) === resolve(outDir)) throw new UserError(`--out ${outDir} is the source folder; write the quantized model to a new folder`);
  const config = readModelConfig(srcDir);
  const cfgFile = join(srcDir, 'config.json');
  const cfgText = readFileSync(cfgFile, 'utf8');
  const qc0 = config.raw.quantization_config as Record<string, unknown> | undefined;
  if (qc0) throw new UserError(`${cfgFile} already has a quantization_config (${String(qc0.quant_method ?? 'unknown method')})`, 'quantize the original 16/32-bit model instead');
  const src = readSafetensorsFolder(srcDir);
  // Building the model with load4bit quantizes one Linear at a time; other weights stay views of the source.
  const model = buildModel(config, src.tensors, { load4bit: { quantType: o.quantType, blocksize, doubleQuant: o.doubleQuant ?? false, computeDtype: o.computeDtype ?? 'float32' } });
  const q4 = new Map<string, Linear4bit>();
  for (const [path, m] of model.namedModules()) if (m instanceof Linear4bit) q4.set(`${path}.weight`, m);
  const out: Record<string, { dtype: string; shape: number[]; data: ArrayBufferView }> = {};
  let numel = 0;
  let bytes = 0;
  let tableBytes = 0;
  for (const [name, raw] of src.tensors) {
    const lin = q4.get(name);
    if (lin) {
      Object.assign(out, lin.bnbTensors(name.slice(0, -'.weight'.length)));
      numel += lin.state.numel;
      bytes += lin.weightBytes(false);
      tableBytes += lin.weightBytes() - lin.weightBytes(false);
    } else out[name] = { dtype: raw.dtype, shape: [...raw.shape], data: raw.data };
  }
  mkdirSync(outDir, { recursive: true });
  writeSafetensors(join(outDir, 'model.safetensors'), out, { format: 'pt' });
  writeFileAtomic(join(outDir, 'config.json'), insertQuantizationConfig(cfgText, bnbQuantizationConfig({ ...o, blocksize }), cfgFile));
  for (const f of COPIED) if (existsSync(join(srcDir, f))) copyFileSync(join(srcDir, f), join(outDir, f));
  return { layers: q4.size, numel, bytes, tableBytes, outDir };
}
