import { describe, expect, it } from 'vitest';
import { adapterConfigJson, loraConfig } from '../src/peft/config.js';
import { pyFloat, pyFloatRepr, pyJsonDumps } from '../src/io/pyjson.js';

describe("Python's json.dumps(indent=2, sort_keys=True)", () => {
  it('formats floats as Python repr does (values from CPython)', () => {
    const vals = [0.05, 1e-5, 16.0, 0.0001, 1e-4, 123456789.0, 1e16, 1.5e-7, 0.1 + 0.2, -2.5, 3e20, 100.0, 5e-324];
    const expected = ['0.05', '1e-05', '16.0', '0.0001', '0.0001', '123456789.0', '1e+16', '1.5e-07', '0.30000000000000004', '-2.5', '3e+20', '100.0', '5e-324'];
    expect(vals.map(pyFloatRepr)).toEqual(expected);
  });
  it('lays out nested objects and lists, sorts keys, escapes non-ASCII (output of CPython)', () => {
    const got = pyJsonDumps({ b: [1, 2], a: { x: pyFloat(0), é: 'ü' }, c: [], d: {}, e: null, f: true });
    expect(got).toBe('{\n  "a": {\n    "x": 0.0,\n    "\\u00e9": "\\u00fc"\n  },\n  "b": [\n    1,\n    2\n  ],\n  "c": [],\n  "d": {},\n  "e": null,\n  "f": true\n}');
  });
  it('adapter_config.json has the 41 keys of a current PEFT LoraConfig, sorted, with no final newline', () => {
    const text = adapterConfigJson(loraConfig({ r: 16, lora_alpha: 32, lora_dropout: 0.05 }), { baseModel: 'org/model', targetModules: ['q_proj', 'v_proj'] });
    const obj = JSON.parse(text);
    const keys = 'alora_invocation_tokens, alpha_pattern, arrow_config, auto_mapping, base_model_name_or_path, bias, corda_config, ensure_weight_tying, eva_config, exclude_modules, fan_in_fan_out, inference_mode, init_lora_weights, kasa_config, layer_replication, layers_pattern, layers_to_transform, loftq_config, lora_alpha, lora_bias, lora_dropout, lora_ga_config, megatron_config, megatron_core, modules_to_save, monteclora_config, peft_type, peft_version, qalora_group_size, r, rank_pattern, revision, target_modules, target_parameters, task_type, trainable_token_indices, use_bdlora, use_dora, use_qalora, use_rslora, velora_config'.split(', ');
    expect(Object.keys(obj)).toEqual(keys);
    expect(text.endsWith('}')).toBe(true);
    expect(text).toContain('"lora_dropout": 0.05,\n');
    expect(text).toContain('"target_modules": [\n    "q_proj",\n    "v_proj"\n  ],');
    expect(obj.peft_type).toBe('LORA');
    expect(obj.inference_mode).toBe(true);
  });
});
