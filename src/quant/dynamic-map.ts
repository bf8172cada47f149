/**
 * bitsandbytes' dynamic 8-bit code (`create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`),
 * reproduced bit-for-bit as Debian's torch 1.13 (x86-64, AVX2) produces it (peft-spec.md §2.4, Appendix A).
 *
 * For i in 0..6, `b = torch.linspace(0.1, 1, 2^i + 1 (signed) | 2^(i+1) + 1 (unsigned))` in float32,
 * `means = (b[:-1] + b[1:]) / 2`, and `10^(i-6) * means` (plus the negatives if signed) are collected;
 * 0 and 1 are appended and the list sorted. The values depend at the 1-ulp level on how torch's CPU
 * linspace kernel rounds, so `linspaceF32` emulates its AVX2 build: 16-element chunks of two 8-lane
 * `Vectorized::arange(base, step)` calls whose base term is a fused multiply-add and whose lanes are
 * `base + k*step` (multiply, then add), and a scalar tail computed with a fused multiply-add.
 *
 * Loaders must use the map stored in a checkpoint (`nested_quant_map`, optimizer `qmap`), never this one;
 * this one is for writing, where it must equal what torch would have written.
 */

const f32 = Math.fround;
const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** The float32 neighbours of a finite float32 value x: [next below, next above]. */
function neighbours(x: number): [number, number] {
  scratch[0] = x;
  const bits = scratchBits[0]!;
  if (x === 0) return [-1.401298464324817e-45, 1.401298464324817e-45];
  scratchBits[0] = bits + 1;
  const away = scratch[0]!;
  scratchBits[0] = bits - 1;
  const toward = scratch[0]!;
  return x > 0 ? [toward, away] : [away, toward];
}

/**
 * float32 fused multiply-add: round(a*b + c) rounded once to float32. a, b, c must be float32 values and
 * a*b must be exact in float64 (true for any two float32 values).
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  // TwoSum: the exact sum is s + err.
  const bv = s - p;
  const err = p - (s - bv) + (c - bv);
  const r = f32(s);
  if (err === 0 || r === s) return r;
  // Rounding s (the nearest double to the exact sum) to float32 can only go wrong when s is exactly a
  // float32 midpoint; then the sign of err says on which side the exact sum lies.
  const [below, above] = neighbours(r);
  const lo = r < s ? r : below;
  const hi = r < s ? above : r;
  if (s - lo !== hi - s) return r;
  return err > 0 ? hi : lo;
}

/** `torch.linspace(start, end, steps)` in float32 as torch 1.13's AVX2 CPU kernel computes it. */
export function linspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = start;
    return out;
  }
  const s0 = f32(start);
  const e0 = f32(end);
  const step = f32(f32(e0 - s0) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const point = (idx: number): number => (idx < halfway ? fmaF32(step, idx, s0) : fmaF32(-step, steps - idx - 1, e0));
  let i = 0;
  for (; i <= steps - 16; i += 16) {
    for (const half of [0, 8]) {
      const base = point(i + half);
      for (let k = 0; k < 8; k++) out[i + half + k] = k === 0 ? base : f32(base + f32(k * step));
    }
  }
  for (; i < steps; i++) out[i] = point(i);
  return out;
}

/** 10^(i-6) for i = 0..6, as Python evaluates `10 ** (i - 6)`, then cast to float32 by torch's scalar multiply. */
const DECADES = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1].map(f32);

/** The 256-entry dynamic map, sorted ascending (signed: 0 at index 127, 1 at 255; unsigned: 0 at 0, 1 at 255). */
export function createDynamicMap(signed: boolean): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
    const b = linspaceF32(0.1, 1, items);
    for (let j = 0; j + 1 < items; j++) {
      const mean = f32(f32(b[j]! + b[j + 1]!) / 2);
      const v = f32(DECADES[i]! * mean);
      data.push(v);
      if (signed) data.push(-v);
    }
  }
  data.push(0, 1);
  data.sort((a, b) => a - b);
  return Float32Array.from(data);
}

let signedMap: Float32Array | null = null;
let unsignedMap: Float32Array | null = null;

/** A fresh copy of the signed (true) or unsigned (false) dynamic map (cached computation). */
export function dynamicMap(signed: boolean): Float32Array {
  if (signed) return (signedMap ??= createDynamicMap(true)).slice();
  return (unsignedMap ??= createDynamicMap(false)).slice();
}
