/**
 * JSON exactly as Python's `json.dumps(obj, indent=2, sort_keys=True)` writes it (PEFT's
 * adapter_config.json): sorted keys, 2-space indent, ", " never used, non-ASCII escaped, floats in
 * Python's repr. Numbers that must print as Python floats are wrapped with `pyFloat`.
 */
export class PyFloat {
  constructor(readonly value: number) {}
}

export function pyFloat(v: number): PyFloat {
  return new PyFloat(v);
}

/** Python's repr of a float: shortest round-trip digits, exponent form when exp < -4 or >= 16. */
export function pyFloatRepr(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? 'Infinity' : '-Infinity';
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0';
  const [mant, expStr] = v.toExponential().split('e') as [string, string];
  const exp = Number(expStr);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : String(Math.abs(exp));
    return `${neg ? '-' : ''}${m}e${exp < 0 ? '-' : '+'}${e}`;
  }
  let s: string;
  if (exp >= 0) {
    s = digits.length <= exp + 1 ? digits + '0'.repeat(exp + 1 - digits.length) + '.0' : `${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
  } else {
    s = `0.${'0'.repeat(-exp - 1)}${digits}`;
  }
  return (neg ? '-' : '') + s;
}

function pyString(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function pyJsonDumps(v: unknown, indent = 2, level = 0): string {
  const pad = ' '.repeat(indent * (level + 1));
  const end = ' '.repeat(indent * level);
  if (v === null || v === undefined) return 'null';
  if (v instanceof PyFloat) return pyFloatRepr(v.value);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : pyFloatRepr(v);
  if (typeof v === 'string') return pyString(v);
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return `[\n${v.map((x) => pad + pyJsonDumps(x, indent, level + 1)).join(',\n')}\n${end}]`;
  }
  if (typeof v === 'object') {
    const keys = Object.keys(v as object).sort();
    if (keys.length === 0) return '{}';
    const o = v as Record<string, unknown>;
    return `{\n${keys.map((k) => `${pad}${pyString(k)}: ${pyJsonDumps(o[k], indent, level + 1)}`).join(',\n')}\n${end}}`;
  }
  throw new Error(`pyJsonDumps: cannot serialise ${typeof v}`);
}
