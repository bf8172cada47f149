/**
 * bitsandbytes' serialized 4-bit weight (`QuantState.as_dict(packed=True)` / `QuantState.from_dict`,
 * peft-spec.md §2.5). For a weight key K (e.g. `model.layers.0.self_attn.q_proj.weight`):
 *
 *   K                                   U8  [ceil(n/2), 1]   packed codes
 *   K.absmax                            U8 [nblocks] (double-quantized) | F32 [nblocks]
 *   K.quant_map                         F32 [16]
 *   K.nested_absmax                     F32 [ceil(nblocks/256)]   (double quantization only)
 *   K.nested_quant_map                  F32 [256]                 (double quantization only)
 *   K.quant_state.bitsandbytes__nf4|fp4 U8  [len]  UTF-8 of json.dumps({quant_type, blocksize, dtype, shape
 *                                                  [, nested_blocksize, nested_dtype, nested_offset]})
 *
 * The reader takes the code tables from the file (never regenerates them) and accepts packed weights
 * stored in another dtype (bitsandbytes `quant_storage`), reinterpreting their bytes.
 */
import { pyFloatRepr } from '../io/pyjson.js';
import type { DoubleQuantized, Quant4State, QuantType4, TorchFloatDtype } from './nf4.js';

/** A tensor record as safetensors holds it. */
export interface BnbTensor {
  dtype: string;
  shape: number[];
  data: ArrayBufferView;
}

export type BnbTensorRecord = { dtype: 'U8'; shape: number[]; data: Uint8Array } | { dtype: 'F32'; shape: number[]; data: Float32Array };

/** Python's repr of a float (re-exported for callers of this module). */
export { pyFloatRepr as pythonFloatRepr } from '../io/pyjson.js';

/** The quant-state JSON exactly as Python's `json.dumps` writes bitsandbytes' dict (", " and ": "). */
export function quantStateJson(state: Quant4State): string {
  const parts = [
    `"quant_type": "${state.quantType}"`,
    `"blocksize": ${state.blocksize}`,
    `"dtype": "${state.dtype}"`,
    `"shape": [${state.shape.join(', ')}]`,
  ];
  if (state.dq) {
    parts.push(`"nested_blocksize": ${state.dq.nestedBlocksize}`, '"nested_dtype": "float32"', `"nested_offset": ${pyFloatRepr(Math.fround(state.dq.offset))}`);
  }
  return `{${parts.join(', ')}}`;
}

/** The safetensors records bitsandbytes writes for a 4-bit weight under key `name` (insertion order as bnb). */
export function toBnbTensors(name: string, state: Quant4State): Record<string, BnbTensorRecord> {
  const out: Record<string, BnbTensorRecord> = {};
  out[name] = { dtype: 'U8', shape: [state.packed.length, 1], data: state.packed };
  if (state.dq) {
    out[`${name}.absmax`] = { dtype: 'U8', shape: [state.dq.qabsmax.length], data: state.dq.qabsmax };
  } else {
    if (!state.absmax) throw new Error(`toBnbTensors(${name}): the state has neither absmax nor double-quantized absmax`);
    out[`${name}.absmax`] = { dtype: 'F32', shape: [state.absmax.length], data: state.absmax };
  }
  out[`${name}.quant_map`] = { dtype: 'F32', shape: [state.quantMap.length], data: state.quantMap };
  if (state.dq) {
    out[`${name}.nested_absmax`] = { dtype: 'F32', shape: [state.dq.nestedAbsmax.length], data: state.dq.nestedAbsmax };
    out[`${name}.nested_quant_map`] = { dtype: 'F32', shape: [state.dq.nestedQuantMap.length], data: state.dq.nestedQuantMap };
  }
  const json = new TextEncoder().encode(quantStateJson(state));
  out[`${name}.quant_state.bitsandbytes__${state.quantType}`] = { dtype: 'U8', shape: [json.length], data: json };
  return out;
}

function bytesOf(t: BnbTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function f32Of(name: string, key: string, t: BnbTensor | undefined, expectLen?: number): Float32Array {
  if (!t) throw new Error(`fromBnbTensors(${name}): missing tensor '${key}'; the 4-bit weight needs it (was it saved by bitsandbytes >= 0.41.3?)`);
  if (t.dtype !== 'F32') throw new Error(`fromBnbTensors(${name}): '${key}' has dtype ${t.dtype}, expected F32`);
  const b = bytesOf(t);
  const v = b.byteOffset % 4 === 0 ? new Float32Array(b.buffer, b.byteOffset, b.byteLength >> 2) : new Float32Array(b.slice().buffer);
  if (expectLen !== undefined && v.length !== expectLen) {
    throw new Error(`fromBnbTensors(${name}): '${key}' has ${v.length} values, expected ${expectLen}`);
  }
  return v;
}

function u8Of(name: string, key: string, t: BnbTensor): Uint8Array {
  if (t.dtype !== 'U8') throw new Error(`fromBnbTensors(${name}): '${key}' has dtype ${t.dtype}, expected U8`);
  return bytesOf(t);
}

const DTYPES: readonly string[] = ['float32', 'bfloat16', 'float16'];

/**
 * Reads the 4-bit state of weight `name` from safetensors records (a Map or a plain object of
 * {dtype, shape, data}). Code tables come from the file.
 */
export function fromBnbTensors(name: string, tensors: Map<string, BnbTensor> | Record<string, BnbTensor>): Quant4State {
  const get = (k: string): BnbTensor | undefined => (tensors instanceof Map ? tensors.get(k) : Object.hasOwn(tensors, k) ? tensors[k] : undefined);
  const keys = tensors instanceof Map ? [...tensors.keys()] : Object.keys(tensors);
  const qsKeys = keys.filter((k) => k.startsWith(`${name}.quant_state.bitsandbytes__`));
  if (qsKeys.length !== 1) {
    throw new Error(
      `fromBnbTensors(${name}): expected exactly one '${name}.quant_state.bitsandbytes__nf4' or '__fp4' tensor, found ${qsKeys.length}${qsKeys.length ? ` (${qsKeys.join(', ')})` : ''}; is this a bitsandbytes 4-bit checkpoint?`,
    );
  }
  const qsKey = qsKeys[0]!;
  const keyType = qsKey.slice(qsKey.lastIndexOf('__') + 2);
  let meta: Record<string, unknown>;
  try {
    meta = JSON.parse(new TextDecoder().decode(u8Of(name, qsKey, get(qsKey)!))) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`fromBnbTensors(${name}): '${qsKey}' is not valid JSON (${(e as Error).message})`);
  }
  const quantType = meta.quant_type;
  if (quantType !== 'nf4' && quantType !== 'fp4') throw new Error(`fromBnbTensors(${name}): quant_type ${JSON.stringify(quantType)} in '${qsKey}' is not 'nf4' or 'fp4'`);
  if (quantType !== keyType) throw new Error(`fromBnbTensors(${name}): key '${qsKey}' says ${keyType} but its JSON says ${quantType}`);
  const blocksize = meta.blocksize;
  if (typeof blocksize !== 'number' || !Number.isInteger(blocksize) || blocksize < 2 || blocksize % 2) {
    throw new Error(`fromBnbTensors(${name}): blocksize ${JSON.stringify(blocksize)} in '${qsKey}' is not an even positive integer`);
  }
  const dtype = meta.dtype;
  if (typeof dtype !== 'string' || !DTYPES.includes(dtype)) throw new Error(`fromBnbTensors(${name}): dtype ${JSON.stringify(dtype)} in '${qsKey}' is not one of ${DTYPES.join(', ')}`);
  const shape = meta.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`fromBnbTensors(${name}): shape ${JSON.stringify(shape)} in '${qsKey}' is not a list of sizes`);
  }
  const numel = (shape as number[]).reduce((a, b) => a * b, 1);
  const nblocks = Math.ceil(numel / blocksize);

  const w = get(name);
  if (!w) throw new Error(`fromBnbTensors(${name}): missing the packed weight tensor '${name}'`);
  const packed = bytesOf(w); // any quant_storage dtype: the same bytes
  if (packed.length !== Math.ceil(numel / 2)) {
    throw new Error(`fromBnbTensors(${name}): packed weight has ${packed.length} bytes, expected ${Math.ceil(numel / 2)} for shape [${shape.join(', ')}]`);
  }
  const quantMap = f32Of(name, `${name}.quant_map`, get(`${name}.quant_map`), 16);
  const absT = get(`${name}.absmax`);
  if (!absT) throw new Error(`fromBnbTensors(${name}): missing tensor '${name}.absmax'`);
  const nested = get(`${name}.nested_absmax`) !== undefined || meta.nested_offset !== undefined;
  let absmax: Float32Array | null = null;
  let dq: DoubleQuantized | null = null;
  if (nested) {
    const qabsmax = u8Of(name, `${name}.absmax`, absT);
    if (qabsmax.length !== nblocks) throw new Error(`fromBnbTensors(${name}): '${name}.absmax' has ${qabsmax.length} values, expected ${nblocks}`);
    const nb = meta.nested_blocksize;
    if (nb !== 256) throw new Error(`fromBnbTensors(${name}): nested_blocksize ${JSON.stringify(nb)} in '${qsKey}' is not supported (bitsandbytes writes 256)`);
    if (meta.nested_dtype !== undefined && meta.nested_dtype !== 'float32') throw new Error(`fromBnbTensors(${name}): nested_dtype ${JSON.stringify(meta.nested_dtype)} is not float32`);
    const off = Number(meta.nested_offset);
    if (!Number.isFinite(off)) throw new Error(`fromBnbTensors(${name}): nested_offset ${JSON.stringify(meta.nested_offset)} in '${qsKey}' is not a number`);
    dq = {
      qabsmax,
      offset: Math.fround(off),
      nestedAbsmax: f32Of(name, `${name}.nested_absmax`, get(`${name}.nested_absmax`), Math.ceil(nblocks / 256)),
      nestedBlocksize: 256,
      nestedQuantMap: f32Of(name, `${name}.nested_quant_map`, get(`${name}.nested_quant_map`), 256),
    };
  } else {
    absmax = f32Of(name, `${name}.absmax`, absT, nblocks);
  }
  return {
    quantType: quantType as QuantType4,
    blocksize,
    numel,
    shape: shape as number[],
    dtype: dtype as TorchFloatDtype,
    packed,
    quantMap,
    absmax,
    dq,
  };
}
